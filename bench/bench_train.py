"""Training throughput: `raycls.train.trainer.fit` on one Ray Train worker vs a plain PyTorch loop.

Both train the same model (resnet18 image-only by default) on the same generated images with the
same batch size and one torch thread each; the plain loop gets its images decoded up front (no
data cost at all), fit decodes and augments them in Ray Data tasks while it trains. Figures are
training-phase samples/s per epoch; the ratio compares the best epoch after the first (warm-up)
of fit with the mean of the plain loop's, which runs before and after fit.

    .venv/bin/python bench/bench_train.py [--images 900] [--epochs 3]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from raycls.config import load_config
from raycls.demo.datasets import make_dataset
from raycls.io.images import decode_batch
from raycls.io.inputs import load_labeled
from raycls.io.shards import read_shard
from raycls.models import build_model


def plain_loop(config, data: str, epochs: int) -> list[float]:
    """Samples/s per epoch of a single-process loop over images decoded beforehand."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    shards, classes = load_labeled(data)
    index = {name: i for i, name in enumerate(classes)}
    pixels, labels, texts = [], [], []
    for shard in shards:
        rows = read_shard(shard, labeled_root=data).to_pydict()
        batch = {k: np.array(v, dtype=object) for k, v in rows.items()}
        out = decode_batch(batch, size=config.model.image_size)
        pixels.append(out["pixels"])
        labels += [index[lab] for lab in out["label"]]
        texts += list(out["text"])
    x, y = torch.from_numpy(np.concatenate(pixels)), torch.tensor(labels)
    t = config.train
    model = build_model(config.model, classes)
    optimizer = torch.optim.AdamW(model.param_groups(t.lr, t.encoder_lr_scale, t.weight_decay))
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=t.label_smoothing)
    rates = []
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(y))
        start = time.perf_counter()
        for i in range(0, len(y), t.batch_size):
            rows = order[i : i + t.batch_size]
            inputs = model.tokenize([texts[j] for j in rows.tolist()])
            loss = loss_fn(model(x[rows], **inputs), y[rows])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        rates.append(len(y) / (time.perf_counter() - start))
    return rates


def ray_fit(config, data: str, val: str, out: str) -> tuple[list[float], float]:
    """Samples/s per epoch as fit's loop measured them, and fit's wall time."""
    from raycls.train.trainer import fit

    start = time.perf_counter()
    fit(config, data, out, val_data=val)
    wall = time.perf_counter() - start
    history = json.loads((Path(out) / "history.json").read_text())
    return [h["train_samples_per_s"] for h in history], wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=900, help="training images (shapes)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--fusion", default="image_only")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    config = load_config(
        None,
        model={"fusion": args.fusion, "image_size": args.image_size},
        train={
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "num_workers": 1,
            "cpus_per_worker": 1.0,
            "patience": args.epochs,
        },
    )
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        make_dataset("shapes", tmp, per_class=math.ceil(args.images / 9), size=64)
        train, val = f"{tmp}/train", f"{tmp}/val"
        # The plain loop runs before and after fit, so that load from elsewhere on a shared
        # machine shows up as a spread rather than as a bias against one side.
        plain = plain_loop(config, train, args.epochs)
        fitted, wall = ray_fit(config, train, val, f"{tmp}/model")
        plain_after = plain_loop(config, train, args.epochs)
    steady_plain = np.mean([max(plain[1:] or plain), max(plain_after[1:] or plain_after)])
    steady_fit = max(fitted[1:] or fitted)
    print(
        f"model: {args.fusion}, resnet18 at {args.image_size}px, batch {args.batch_size}, "
        f"{args.images} images, {args.epochs} epochs, 1 torch thread each; load average "
        f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after on {os.cpu_count()} CPUs"
    )
    print(f"plain PyTorch loop, before: {_rates(plain)} samples/s")
    print(
        f"raycls.train.trainer.fit, 1 worker: {_rates(fitted)} samples/s (wall {wall:.0f}s with "
        "start-up, data checks, validation)"
    )
    print(f"plain PyTorch loop, after:  {_rates(plain_after)} samples/s")
    print(f"steady-state ratio fit/plain: {steady_fit / steady_plain:.2f} (target >= 0.85)")


def _rates(rates: list[float]) -> str:
    return ", ".join(f"{r:.0f}" for r in rates)


if __name__ == "__main__":
    main()
