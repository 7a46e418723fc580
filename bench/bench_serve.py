"""Throughput and latency of `raycls serve` against the model's batched forward bound.

    .venv/bin/python bench/bench_serve.py
    .venv/bin/python bench/bench_serve.py --images-dir /work/shared/data/cifar10-dev/test

One run, one model (resnet18 image-only, random weights, --model-size px), one image per
request. Prints (1) the bound: the served model's forward pass alone on pre-decoded pixels in
batches of --max-batch-size, loaded as the replica loads it and with as many torch threads as
the replica reserves CPUs; (2) for each concurrency (closed-loop asyncio clients over
keep-alive connections, --seconds each after a warm-up): images/s, p50 and p99 latency, and
images/s as a fraction of the bound. The clients run in this process, on the same machine.
Then one JSON line with every figure. Figures only, no assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

LABELS = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def make_model(root: Path, size: int) -> str:
    import torch

    from raycls.config import ModelConfig
    from raycls.models import build_model, save_model

    torch.manual_seed(0)
    config = ModelConfig(backbone="resnet18", text_encoder=None, fusion="image_only",
                         image_size=size, hidden_dim=256)  # fmt: skip
    save_model(build_model(config, LABELS), root / "model")
    return str(root / "model")


def load_images(args: argparse.Namespace) -> list[bytes]:
    if args.images_dir:
        files = sorted(p for p in Path(args.images_dir).rglob("*.jpg"))[: args.images]
        return [f.read_bytes() for f in files]
    rng = np.random.default_rng(0)
    images = []
    for _ in range(args.images):
        array = rng.integers(0, 255, (args.image_px, args.image_px, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(array).save(buf, format="JPEG", quality=90)
        images.append(buf.getvalue())
    return images


def forward_bound(predictor, images: list[bytes], seconds: float) -> float:
    """Images/s of the replica's forward pass alone, on pixels decoded beforehand."""
    n = predictor.settings.max_batch_size
    items = predictor.decode(images[:n], [None] * n)
    predictor.predict(items)  # warm-up
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        predictor.predict(items)
        done += len(items)
    return done / (time.perf_counter() - started)


async def load(url: str, images: list[bytes], concurrency: int, seconds: float) -> dict:
    """Closed-loop clients: each sends its next image when the last answer arrives."""
    import aiohttp

    latencies: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def client(k: int, until: float, record: bool) -> None:
            nonlocal errors
            i = k
            while time.perf_counter() < until:
                sent = time.perf_counter()
                async with session.post(url, data=images[i % len(images)]) as response:
                    await response.read()
                    if response.status != 200:
                        errors += 1
                if record:
                    latencies.append(time.perf_counter() - sent)
                i += concurrency

        warm = time.perf_counter() + min(3.0, seconds / 3)
        await asyncio.gather(*(client(k, warm, False) for k in range(concurrency)))
        started = time.perf_counter()
        await asyncio.gather(*(client(k, started + seconds, True) for k in range(concurrency)))
        elapsed = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return {"concurrency": concurrency, "requests": len(latencies), "errors": errors,
            "images_per_s": round(len(latencies) / elapsed, 1),
            "p50_ms": round(float(np.percentile(ms, 50)), 1),
            "p99_ms": round(float(np.percentile(ms, 99)), 1)}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=256, help="distinct images sent in turn")
    parser.add_argument("--images-dir", default=None, help="JPEGs to send instead of noise")
    parser.add_argument("--image-px", type=int, default=128, help="side of generated JPEGs")
    parser.add_argument("--model-size", type=int, default=128, help="model input side")
    parser.add_argument("--replica-cpus", type=float, default=1.0)
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--batch-wait-ms", type=float, default=10.0)
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--seconds", type=float, default=15.0, help="per concurrency level")
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from raycls.cluster.runtime import init_ray
    from raycls.serve.app import start_server
    from raycls.serve.settings import ServeSettings

    settings = ServeSettings(port=args.port, num_cpus=args.replica_cpus,
                             max_batch_size=args.max_batch_size, batch_wait_ms=args.batch_wait_ms,
                             max_ongoing_requests=max(64, args.max_batch_size))  # fmt: skip
    images = load_images(args)
    with tempfile.TemporaryDirectory(prefix="raycls-bench-serve-") as root:
        model_dir = make_model(Path(root), args.model_size)
        from raycls.serve.predictor import Predictor

        predictor = Predictor(model_dir, settings)
        bound_before = forward_bound(predictor, images, args.seconds)
        init_ray(num_cpus=os.cpu_count())
        from ray import serve

        url = start_server(model_dir, settings) + "/v1/classify"
        try:
            rows = [asyncio.run(load(url, images, int(c), args.seconds))
                    for c in args.concurrency.split(",")]  # fmt: skip
        finally:
            serve.shutdown()
        bound_after = forward_bound(predictor, images, args.seconds)
    bound = max(bound_before, bound_after)
    print(f"\nforward bound (batch {args.max_batch_size}, {args.replica_cpus:g} CPU): "
          f"{bound:.1f} images/s (before {bound_before:.1f}, after {bound_after:.1f}); "
          f"load average {os.getloadavg()[0]:.2f}")  # fmt: skip
    print(f"{'clients':>8} {'images/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'x bound':>8} errors")
    for row in rows:
        row["x_bound"] = round(row["images_per_s"] / bound, 3)
        print(f"{row['concurrency']:>8} {row['images_per_s']:>10.1f} {row['p50_ms']:>8.1f} "
              f"{row['p99_ms']:>8.1f} {row['x_bound']:>8.3f} {row['errors']}")  # fmt: skip
    print(json.dumps({"bench": "serve", "forward_bound_images_per_s": round(bound, 1),
                      "bound_before": round(bound_before, 1), "bound_after": round(bound_after, 1),
                      "model_size": args.model_size, "replica_cpus": args.replica_cpus,
                      "max_batch_size": args.max_batch_size, "images_dir": args.images_dir,
                      "cpus": os.cpu_count(), "loadavg_1m": round(os.getloadavg()[0], 2),
                      "levels": rows}))  # fmt: skip


if __name__ == "__main__":
    main()
