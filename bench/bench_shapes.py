"""The quick start's model on `shapes` beside its image-only and text-only baselines.

Trains each fusion with the quick start's settings (raycls/demo/configs/quickstart.yaml) on the
same `shapes` data and scores it on the test split: what fusion adds over either modality, and
whether the image branch learnt shape (accuracy on grey images, whose colour is gone, and the
share of test images whose shape was right).

    python bench/bench_shapes.py [--fusions concat image_only text_only] [key=value ...]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fusions", nargs="+", default=["concat", "image_only", "text_only"])
    parser.add_argument("overrides", nargs="*", help="section.key=value for every run")
    args = parser.parse_args()

    from raycls.config import load_config
    from raycls.demo.datasets import make_dataset
    from raycls.demo.quickstart import QUICKSTART_CONFIG
    from raycls.models import load_model
    from raycls.train.trainer import fit

    load = [os.getloadavg()[0]]
    figures: dict = {"overrides": args.overrides, "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "shapes"
        make_dataset("shapes", data)
        meta = pq.read_table(data / "test" / "metadata.parquet").to_pylist()
        for fusion in args.fusions:
            settings = {"fusion": fusion}
            if fusion == "image_only":
                settings["text_encoder"] = "none"
            config = load_config(QUICKSTART_CONFIG, args.overrides, model=settings)
            started = time.perf_counter()
            fit(config, str(data / "train"), f"{tmp}/{fusion}", val_data=str(data / "val"))
            seconds = time.perf_counter() - started
            model = load_model(f"{tmp}/{fusion}")
            figures["runs"][fusion] = {"train_s": seconds, **_score(model, data / "test", meta)}
            load.append(os.getloadavg()[0])
    figures["load_average"] = load
    print(f"shapes, quick-start settings {' '.join(args.overrides)}; 1-min load average "
          f"{', '.join(f'{x:.1f}' for x in load)} (start, after each run)")  # fmt: skip
    print(f"{'fusion':<12}{'test acc':>10}{'grey acc':>10}{'shape acc':>11}{'train s':>9}")
    for fusion, run in figures["runs"].items():
        print(f"{fusion:<12}{run['accuracy']:>10.3f}{run['grey_accuracy']:>10.3f}"
              f"{run['shape_accuracy']:>11.3f}{run['train_s']:>9.0f}")  # fmt: skip
    print(json.dumps(figures))


def _score(model, folder: Path, meta: list[dict]) -> dict[str, float]:
    import numpy as np
    import torch

    from raycls.io.images import decode_image, preprocess

    size = model.config.image_size
    pixels = np.stack(
        [preprocess(decode_image((folder / r["path"]).read_bytes()), size) for r in meta]
    )
    with torch.no_grad():
        inputs = model.tokenize([r["text"] for r in meta])
        preds = model(torch.from_numpy(pixels), **inputs).argmax(1).tolist()
    names = [model.labels[p] for p in preds]
    right = np.array([n == r["label"] for n, r in zip(names, meta, strict=True)])
    grey = np.array([r["grey"] for r in meta])
    shape = [n.split("_")[1] == r["label"].split("_")[1] for n, r in zip(names, meta, strict=True)]
    return {
        "accuracy": float(right.mean()),
        "grey_accuracy": float(right[grey].mean()),
        "shape_accuracy": float(np.mean(shape)),
    }


if __name__ == "__main__":
    main()
