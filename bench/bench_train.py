"""`raycls train` against a plain 25-line PyTorch loop on the same ImageFolder photos.

Both are timed as whole processes (imports, start-up, data checks and validation included) and
scored on the same test split with the same code. The plain loop is the recipe of issue 13:
torchvision ImageFolder, Resize + RandomHorizontalFlip, batch 64, AdamW lr 2e-3 weight decay
0.05, OneCycle, label smoothing 0.1, one DataLoader worker, torch's default threads, resnet18
from scratch. `raycls train` runs with its defaults (image-only resnet18 from scratch; it holds
out data.val_fraction of the training images for validation, the plain loop trains on all).

    python bench/bench_train.py [--data DIR] [--epochs 10] [--workers 1 2] [--seeds 0 1 2]

DIR holds train/ and test/ ImageFolder splits (default: /work/shared/data/cifar10-dev). Each
side runs once per seed (the plain loop's torch seed; raycls's train.seed, its data order
stays unseeded): on 5,000 photos one run's test accuracy moves by a few points from seed to
seed, more than most differences between recipes, so the comparison is of means over seeds.
Prints a table, then where each side's wall time goes (fixed seconds outside the epochs, the
first epoch, a later epoch: Ray's start-up is a fixed cost, so the whole-run ratio depends on
the number of epochs and the machine's speed), then one JSON line with every figure.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_DATA = "/work/shared/data/cifar10-dev"


def plain_loop(data: str, epochs: int, size: int, seed: int) -> dict:
    """The plain loop, in this process; returns its figures."""
    import torch
    import torchvision
    from torchvision import transforms as T

    torch.manual_seed(seed)
    norm = T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    tf = T.Compose([T.Resize(size), T.RandomHorizontalFlip(), T.ToTensor(), norm])
    train = torchvision.datasets.ImageFolder(f"{data}/train", tf)
    loader = torch.utils.data.DataLoader(train, batch_size=64, shuffle=True, num_workers=1)
    model = torchvision.models.resnet18(num_classes=len(train.classes))
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=epochs * len(loader))
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    started, epoch_s = time.perf_counter(), []
    for _ in range(epochs):
        model.train()
        for x, y in loader:
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()
            sched.step()
        epoch_s.append(time.perf_counter() - started - sum(epoch_s))
    train_s = time.perf_counter() - started
    model.eval()
    predict = _predictor(model, size)
    return {"train_rows": len(train), "train_s": train_s, "epoch_s": epoch_s, "predict": predict}


def _predictor(model, size: int):
    import numpy as np
    import torch

    from raycls.io.images import decode_image, preprocess

    @torch.no_grad()
    def predict(paths: list[str]) -> list[int]:
        out = []
        for i in range(0, len(paths), 256):
            chunk = [
                preprocess(decode_image(Path(p).read_bytes()), size) for p in paths[i : i + 256]
            ]
            logits = model(torch.from_numpy(np.stack(chunk)))
            out += logits.argmax(1).tolist()
        return out

    return predict


def test_accuracy(predict, data: str, classes: list[str]) -> float:
    paths, labels = [], []
    for index, name in enumerate(classes):
        for path in sorted(Path(data, "test", name).iterdir()):
            paths.append(str(path))
            labels.append(index)
    preds = predict(paths)
    return sum(p == y for p, y in zip(preds, labels, strict=True)) / len(labels)


def run_plain(args) -> dict:
    """`--plain`: the loop as its own process, printing one JSON line."""
    result = plain_loop(args.data, args.epochs, args.image_size, args.seeds[0])
    classes = sorted(p.name for p in Path(args.data, "train").iterdir() if p.is_dir())
    started = time.perf_counter()
    accuracy = test_accuracy(result.pop("predict"), args.data, classes)
    return {**result, "test_accuracy": accuracy, "score_s": time.perf_counter() - started}


def run_raycls(data: str, epochs: int, workers: int, out: str, overrides: list[str]) -> dict:
    """`raycls train` as a user runs it, then the saved model scored here."""
    env = {**os.environ, "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    command = [
        sys.executable, "-m", "raycls", "train", f"{data}/train", "--out", out,
        "--epochs", str(epochs), "--num-workers", str(workers), "train.patience=100", *overrides,
    ]  # fmt: skip
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"raycls train failed:\n{done.stdout}\n{done.stderr[-4000:]}")
    from raycls.models import load_model

    model = load_model(out)
    metrics = json.loads(Path(out, "metrics.json").read_text())
    history = json.loads(Path(out, "history.json").read_text())
    accuracy = test_accuracy(_predictor(model, model.config.image_size), data, model.labels)
    rows = metrics["data"]["train"]["rows"]
    return {
        "wall_s": wall,
        **_split_wall(wall, [h["epoch_time_s"] for h in history]),
        "fusion": model.config.fusion,
        "train_rows": rows,
        "samples_per_s": rows * epochs / wall,
        "steady_samples_per_s": max(h["train_samples_per_s"] for h in history[1:] or history),
        "test_accuracy": accuracy,
        "image_size": model.config.image_size,
        "held_out": metrics["data"]["held_out"],
    }


def _plain_process(args, seed: int) -> dict:
    """The plain loop as its own process (imports included in its wall time)."""
    started = time.perf_counter()
    command = [sys.executable, __file__, "--plain", "--data", args.data, "--epochs",
               str(args.epochs), "--image-size", str(args.image_size),
               "--seeds", str(seed)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    run = json.loads(done.stdout.strip().splitlines()[-1])
    # Its wall time without the test scoring, which raycls's side does outside its command.
    run["wall_s"] = time.perf_counter() - started - run["score_s"]
    run["samples_per_s"] = run["train_rows"] * args.epochs / run["wall_s"]
    return {**run, **_split_wall(run["wall_s"], run["epoch_s"])}


def _split_wall(wall: float, epoch_s: list[float]) -> dict:
    """Wall time split: fixed seconds (outside the epochs: imports, start-up, data checks, the
    end), the first epoch (pipelines and workers warming up) and the median later epoch
    (raycls's epochs include their validation and checkpoint)."""
    later = sorted(epoch_s[1:] or epoch_s)
    return {
        "fixed_s": wall - sum(epoch_s),
        "first_epoch_s": epoch_s[0],
        "epoch_s_median": later[len(later) // 2],
    }


def _mean(runs: list[dict], key: str) -> float:
    return sum(r[key] for r in runs) / len(runs)


def _row(name: str, runs: list[dict], plain_wall: float | None) -> str:
    accs = [r["test_accuracy"] for r in runs]
    ratio = _mean(runs, "wall_s") / plain_wall if plain_wall else math.nan
    spread = f"{min(accs):.3f}-{max(accs):.3f}"
    return (f"{name:<24}{_mean(runs, 'wall_s'):>9.0f}{_mean(runs, 'samples_per_s'):>11.1f}"
            f"{sum(accs) / len(accs):>10.3f}  {spread}{ratio:>10.2f}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=32, help="the plain loop's Resize")
    parser.add_argument("--workers", type=int, nargs="+", default=[1])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--override",
        nargs="*",
        default=[],
        help="raycls settings, e.g. data.crop=resized",
    )
    parser.add_argument("--no-plain", action="store_true", help="raycls only (no ratios)")
    parser.add_argument("--plain", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plain:
        print(json.dumps(run_plain(args)))
        return
    load = [os.getloadavg()[0]]
    plain: list[dict] = []
    runs: dict[int, list[dict]] = {w: [] for w in args.workers}
    for seed in args.seeds:  # one run at a time: runs that share the cores slow each other
        if not args.no_plain:
            plain.append({**_plain_process(args, seed), "seed": seed})
            load.append(os.getloadavg()[0])
        for workers in args.workers:
            with tempfile.TemporaryDirectory() as tmp:
                overrides = [f"train.seed={seed}", *args.override]
                run = run_raycls(args.data, args.epochs, workers, f"{tmp}/model", overrides)
            runs[workers].append({**run, "seed": seed})
            load.append(os.getloadavg()[0])
    print(
        f"{args.epochs} epochs, resnet18 from scratch, {os.cpu_count()} CPUs, seeds "
        f"{' '.join(map(str, args.seeds))}; 1-min load average "
        f"{', '.join(f'{x:.1f}' for x in load)} (start, after each run)"
    )
    print(f"{'run (mean over seeds)':<24}{'wall s':>9}{'samples/s':>11}{'test acc':>10}"
          f"{'  (range)':<13}{'wall ratio':>10}")  # fmt: skip
    plain_wall = _mean(plain, "wall_s") if plain else None
    if plain:
        print(_row("plain loop", plain, plain_wall))
    figures = {
        "plain": plain,
        "load_average": load,
        "epochs": args.epochs,
        "seeds": args.seeds,
        "overrides": args.override,
    }
    for workers, done in runs.items():
        name = f"raycls --num-workers {workers}" + (" *" if args.override else "")
        print(_row(name, done, plain_wall))
        accuracy = _mean(done, "test_accuracy")
        figures[f"raycls_{workers}"] = {
            "runs": done,
            "test_accuracy": accuracy,
            "wall_s": _mean(done, "wall_s"),
            "wall_ratio": _mean(done, "wall_s") / plain_wall if plain else None,
            "accuracy_gain": accuracy - _mean(plain, "test_accuracy") if plain else None,
        }
    if args.override:
        print(f"* with {' '.join(args.override)}")
    print(f"\n{'where the wall time goes':<24}{'fixed s':>9}{'first epoch s':>15}"
          f"{'later epochs s (median)':>25}")  # fmt: skip
    sides = ([("plain loop", plain)] if plain else []) + [
        (f"raycls --num-workers {w}", done) for w, done in runs.items()
    ]
    for name, done in sides:
        print(f"{name:<24}{_mean(done, 'fixed_s'):>9.1f}{_mean(done, 'first_epoch_s'):>15.1f}"
              f"{_mean(done, 'epoch_s_median'):>25.2f}")  # fmt: skip
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
