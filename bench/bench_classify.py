"""Throughput of `raycls classify` against a plain PyTorch DataLoader loop and the model alone.

    .venv/bin/python bench/bench_classify.py --images 2000
    .venv/bin/python bench/bench_classify.py --images 20000 --skip-dataloader

One run on generated 128 px JPEGs and one model prints images/s for (1) the library call
`raycls.classify` on a local Ray (read, decode, classify, Parquet), (2) the loop a user
would write (Dataset decoding JPEGs with PIL, DataLoader workers, forward, results kept), (3) the
forward pass alone on pre-decoded tensors (the compute bound), and (4) that forward pass after
the rewrites raycls's actors apply (`optimize_for_inference`: BatchNorm folded, channels-last),
the bound raycls itself works against; the ratios, and the peak memory of each phase: the RSS
sum of this process and all its children (Ray's processes included), sampled every 0.2 s.
Figures only, no assertions.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import psutil
import torch
from PIL import Image

LABELS = ["circle", "square", "triangle", "star", "cross", "ring", "bar", "dot"]


class MemorySampler:
    """Peak RSS summed over this process tree, sampled on a thread."""

    def __init__(self, every_s: float = 0.2) -> None:
        self.every_s = every_s
        self.peak = 0
        self._stop = threading.Event()

    def _sample(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for proc in [me, *me.children(recursive=True)]:
                try:
                    total += proc.memory_info().rss
                except psutil.Error:
                    pass  # a worker that just exited
            self.peak = max(self.peak, total)
            self._stop.wait(self.every_s)

    @contextmanager
    def measure(self):
        self.peak, self._stop = 0, threading.Event()
        thread = threading.Thread(target=self._sample, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join()


def make_jpegs(folder: Path, n: int, size: int) -> list[Path]:
    """Smooth random pictures (like photos, unlike noise, they compress): reused across runs."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{i // 1000:03d}" / f"img{i:06d}.jpg" for i in range(n)]
    rng = np.random.default_rng(0)
    for i, path in enumerate(paths):
        if path.exists():
            continue
        path.parent.mkdir(exist_ok=True)
        small = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC)
        img.save(path, quality=90)
        if i and i % 5000 == 0:
            print(f"  generated {i} images", flush=True)
    return paths


def make_model(folder: Path, image_size: int) -> str:
    from raycls.config import ModelConfig
    from raycls.models import build_model, save_model

    if not (folder / "config.json").exists():
        torch.manual_seed(0)
        config = ModelConfig(
            backbone="resnet18", text_encoder=None, fusion="image_only", image_size=image_size
        )
        save_model(build_model(config, LABELS), folder)
    return str(folder)


def _forward(
    model_dir: str,
    paths: list[Path],
    batch_size: int,
    threads: int,
    optimized: bool,
    barrier=None,
):
    """Seconds for the forward pass over `paths`, decoded beforehand (untimed)."""
    from raycls.io.images import decode_image, preprocess
    from raycls.models import load_model, optimize_for_inference

    torch.set_num_threads(threads)
    model = load_model(model_dir)
    if optimized:
        model = optimize_for_inference(model)
    size = model.config.image_size
    pixels = torch.from_numpy(
        np.stack([preprocess(decode_image(p.read_bytes()), size) for p in paths])
    )
    with torch.inference_mode():
        model(pixels[:batch_size])  # warm-up
        if barrier is not None:
            barrier.wait()
        started = time.perf_counter()
        for i in range(0, len(pixels), batch_size):
            model(pixels[i : i + batch_size]).softmax(-1).topk(5)
    return time.perf_counter() - started


def _forward_worker(args: tuple, barrier, results) -> None:
    results.put(_forward(*args, barrier=barrier))


def bench_compute(
    model_dir: str, paths: list[Path], batch_size: int, max_images: int, optimized: bool = False
) -> tuple[float, float]:
    """Forward alone on pre-decoded tensors: one process on all cores, and one 1-thread process
    per core (what the pipeline's actors do); the better one is the compute bound."""
    import multiprocessing as mp

    cpus = os.cpu_count() or 1
    subset = paths[: min(len(paths), max_images)]
    what = "optimized forward" if optimized else "forward alone"
    one = len(subset) / _forward(model_dir, subset, batch_size, cpus, optimized)
    print(f"  {what}, 1 process x {cpus} threads: {one:.1f} images/s", flush=True)
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(cpus), ctx.Queue()
    parts = [subset[i::cpus] for i in range(cpus)]
    procs = [
        ctx.Process(
            target=_forward_worker,
            args=((model_dir, p, batch_size, 1, optimized), barrier, results),
        )
        for p in parts
    ]
    for proc in procs:
        proc.start()
    elapsed = max(results.get() for _ in procs)
    for proc in procs:
        proc.join()
    per_core = len(subset) / elapsed
    print(f"  {what}, {cpus} processes x 1 thread: {per_core:.1f} images/s", flush=True)
    return one, per_core


class JpegDataset(torch.utils.data.Dataset):
    """What a user writes: PIL decode, resize, centre crop, normalise."""

    def __init__(self, paths: list[Path], size: int) -> None:
        from torchvision import transforms

        self.paths = paths
        self.transform = transforms.Compose(
            [
                transforms.Resize(size),
                transforms.CenterCrop(size),
                transforms.ToTensor(),
                transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
            ]
        )

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        with Image.open(self.paths[i]) as img:
            return self.transform(img.convert("RGB"))


def bench_dataloader(model_dir: str, paths: list[Path], batch_size: int, workers: int) -> float:
    from raycls.models import load_model

    torch.set_num_threads(os.cpu_count() or 1)
    model = load_model(model_dir)
    loader = torch.utils.data.DataLoader(
        JpegDataset(paths, model.config.image_size), batch_size=batch_size, num_workers=workers
    )
    results = []
    started = time.perf_counter()
    with torch.inference_mode():
        for pixels in loader:
            top = model(pixels).softmax(-1).topk(5)
            results.extend(zip(top.indices.tolist(), top.values.tolist(), strict=True))
    elapsed = time.perf_counter() - started
    assert len(results) == len(paths)
    return len(paths) / elapsed


def bench_raycls(model_dir: str, folder: Path, out: Path, args: argparse.Namespace) -> dict:
    from raycls.bulk.pipeline import PIECE_BATCHES, classify
    from raycls.config import ClassifyConfig

    config = ClassifyConfig(
        batch_size=args.batch_size,
        classify_actors=args.classify_actors,
        cpus_per_classify_actor=args.cpus_per_actor,
        shard_size=args.shard_size,
    )
    print(f"  raycls config: {config}", flush=True)
    summary = classify(str(folder), model_dir, str(out), config, overwrite=True)
    assert summary["total_rows"] == summary["rows"] == args.images, summary
    print(
        f"  raycls: {summary['images_per_s']:.1f} images/s in {summary['seconds']:.1f} s; the "
        f"first results came after {summary['first_rows_s']:.1f} s (Ray Data and actor "
        f"start-up, imports, model load, then each actor's first read task of "
        f"{PIECE_BATCHES} x {args.batch_size} images)",
        flush=True,
    )
    return summary


def _best_of(repeat: int, sampler: MemorySampler, run) -> tuple[float, int]:
    """Highest images/s of `repeat` runs (the least disturbed by other load), and peak RSS."""
    rates, peak = [], 0
    for _ in range(repeat):
        with sampler.measure():
            rates.append(run())
        peak = max(peak, sampler.peak)
    if repeat > 1:
        print(f"  runs: {', '.join(f'{r:.1f}' for r in rates)} images/s")
    return max(rates), peak


def main(argv: list[str] | None = None) -> None:
    cpus = os.cpu_count() or 1
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--image-px", type=int, default=128, help="side of the generated JPEGs")
    parser.add_argument("--model-size", type=int, default=128, help="model input side")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--classify-actors", type=int, default=cpus)
    parser.add_argument("--cpus-per-actor", type=float, default=1.0)
    parser.add_argument("--shard-size", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=cpus, help="DataLoader workers")
    parser.add_argument("--compute-images", type=int, default=2000)
    parser.add_argument("--skip-dataloader", action="store_true")
    parser.add_argument("--repeat", type=int, default=1, help="best of N runs per phase")
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "raycls-bench"))
    args = parser.parse_args(argv)

    work = Path(args.workdir)
    folder = work / f"jpegs-{args.images}-{args.image_px}px"
    print(f"{cpus} CPUs, load average {os.getloadavg()[0]:.1f}; generating {args.images} JPEGs")
    paths = make_jpegs(folder, args.images, args.image_px)
    model_dir = make_model(work / f"model-{args.model_size}", args.model_size)
    print(
        f"model: resnet18 image_only, {len(LABELS)} classes, input {args.model_size} px "
        f"(random weights; a fused model skips its text encoder on text-free inputs)"
    )
    sampler = MemorySampler()
    rows = []
    best = _best_of(args.repeat, sampler, lambda: max(bench_compute(
        model_dir, paths, args.batch_size, args.compute_images)))  # fmt: skip
    rows.append(("model forward alone (compute bound)", *best))
    best = _best_of(args.repeat, sampler, lambda: max(bench_compute(
        model_dir, paths, args.batch_size, args.compute_images, optimized=True)))  # fmt: skip
    rows.append(("optimized forward (raycls's own bound)", *best))
    if not args.skip_dataloader:
        best = _best_of(args.repeat, sampler, lambda: bench_dataloader(
            model_dir, paths, args.batch_size, args.workers))  # fmt: skip
        rows.append((f"plain DataLoader loop ({args.workers} workers)", *best))

    from raycls.cluster.runtime import init_ray

    started = time.perf_counter()
    init_ray(None)
    print(f"  local Ray started in {time.perf_counter() - started:.1f} s (not timed below)")
    best = _best_of(args.repeat, sampler, lambda: bench_raycls(
        model_dir, folder, work / "out", args)["images_per_s"])  # fmt: skip
    rows.append(("raycls classify (Ray Data, Parquet)", *best))

    compute, optimized = rows[0][1], rows[1][1]
    loop = rows[2][1] if not args.skip_dataloader else None
    print(f"\n{args.images} images, load average {os.getloadavg()[0]:.1f}")
    print(f"{'':40} {'images/s':>9} {'x compute':>10} {'x optimized':>12} {'x loop':>7} "
          f"{'peak RSS':>9}")  # fmt: skip
    for name, rate, peak in rows:
        vs_loop = f"{rate / loop:7.2f}" if loop else f"{'-':>7}"
        print(f"{name:40} {rate:9.1f} {rate / compute:10.2f} {rate / optimized:12.2f} "
              f"{vs_loop} {peak / 2**30:7.2f}G")  # fmt: skip


if __name__ == "__main__":
    main()
