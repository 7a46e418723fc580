"""Accuracy of caption zero-shot with the real bundled MiniLM on the `shapes` alt-text:
label names alone vs hand-written descriptions vs prompt templates (vs both). Chance is 1/9.

    .venv/bin/python bench/bench_caption_zeroshot.py
    .venv/bin/python bench/bench_caption_zeroshot.py --per-class 300   # test split: 100/class

The alt-text plays the caption (`--text-column`). Each label set runs through the caption
predictor (`raycls.models.predictor.load_predictor`, kind caption) on the test split's texts.
Rows without alt-text (a quarter by design) cannot be classified from text: "all rows" counts
them wrong, "rows with text" leaves them out. `shapes` text is often partial (a colour or a
shape only) or names the wrong class (see raycls.demo.datasets), so the ceiling is far below 1;
the per-kind columns show where each label set wins. Figures only, no assertions.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from raycls.config import DEFAULT_TEXT_ENCODER
from raycls.demo.datasets import make_dataset
from raycls.models.labels import LabelSet
from raycls.models.predictor import load_predictor, resolve_model

# Written by hand from the class names alone ("{}" is the colour), not from the data's text.
DESCRIPTIONS = {
    "circle": ["a round {} shape", "a {} disc", "a {} dot"],
    "square": ["a {} shape with four equal sides", "a {} box", "a {} block with four corners"],
    "triangle": ["a {} shape with three corners", "a pointed {} shape", "a {} wedge"],
}
# Generic templates in the style of CLIP's ImageNet prompts, not tuned to this data.
TEMPLATES = ["a photo of a {}.", "a drawing of a {}.", "a picture of a {}.", "an image of a {}."]


def label_sets(classes: list[str]) -> dict[str, LabelSet]:
    def described(name: str) -> list[str]:
        colour, shape = name.split("_")
        return [d.format(colour) for d in DESCRIPTIONS[shape]]

    names = {"labels": classes}
    descriptions = {"labels": {name: described(name) for name in classes}}
    return {
        "label names alone": LabelSet.from_dict(names),
        "hand-written descriptions": LabelSet.from_dict(descriptions),
        "prompt templates": LabelSet.from_dict({**names, "templates": TEMPLATES}),
        "templates + descriptions": LabelSet.from_dict({**descriptions, "templates": TEMPLATES}),
    }


def score(labels: LabelSet, texts: list[str | None], truth: np.ndarray) -> tuple[float, np.ndarray]:
    """(seconds, predicted class index per row, -1 where the row has no text)."""
    spec = resolve_model(DEFAULT_TEXT_ENCODER, kind="caption", labels=labels)
    started = time.perf_counter()
    predictor = load_predictor(spec)
    pixels = np.zeros((len(texts), 3, spec.image.size, spec.image.size), np.float32)
    preds = []
    for i in range(0, len(texts), 256):
        scores, errors = predictor(pixels[i : i + 256], texts[i : i + 256])
        preds += [-1 if e else int(np.argmax(s)) for s, e in zip(scores, errors, strict=True)]
    return time.perf_counter() - started, np.array(preds)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-class", type=int, default=300, help="train per class; test = 1/3")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "raycls-bench"))
    args = parser.parse_args(argv)

    folder = Path(args.workdir) / f"shapes-{args.per_class}-{args.seed}"
    if not (folder / "test" / "metadata.parquet").exists():
        make_dataset("shapes", folder, per_class=args.per_class, size=16, seed=args.seed,
                     overwrite=True)  # fmt: skip
    rows = pq.read_table(folder / "test" / "metadata.parquet").to_pylist()
    classes = sorted({r["label"] for r in rows})
    truth = np.array([classes.index(r["label"]) for r in rows])
    texts = [r["text"] for r in rows]
    kinds = np.array([r["text_kind"] for r in rows])
    print(f"{len(rows)} test rows, {len(classes)} classes (chance {1 / len(classes):.3f}), "
          f"load average {os.getloadavg()[0]:.1f}; text kinds: "
          f"{ {k: int((kinds == k).sum()) for k in sorted(set(kinds))} }")  # fmt: skip
    results = {}
    print(f"\n{'label set':28} {'all rows':>9} {'with text':>10} {'full':>6} {'partial':>8} "
          f"{'wrong':>6} {'seconds':>8}")  # fmt: skip
    for name, labels in label_sets(classes).items():
        seconds, preds = score(labels, texts, truth)
        right = preds == truth
        has = preds >= 0
        figures = {
            "all_rows": float(right.mean()),
            "with_text": float(right[has].mean()),
            **{kind: float(right[kinds == kind].mean()) for kind in ("full", "partial", "wrong")},
        }
        results[name] = {k: round(v, 4) for k, v in figures.items()}
        print(f"{name:28} {figures['all_rows']:9.3f} {figures['with_text']:10.3f} "
              f"{figures['full']:6.3f} {figures['partial']:8.3f} {figures['wrong']:6.3f} "
              f"{seconds:8.1f}")  # fmt: skip
    print(json.dumps({"bench": "caption_zeroshot", "rows": len(rows), "chance": 1 / len(classes),
                      "encoder": DEFAULT_TEXT_ENCODER, "accuracy": results,
                      "load_average": os.getloadavg()[0]}))  # fmt: skip


if __name__ == "__main__":
    main()
