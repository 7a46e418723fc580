"""Do the explanations say the right thing? Two checks on small trained models.

shapes (a fused model): the text share of grey images (colour gone, so the caption must tell
the colour) against coloured images; digits (image-only): the share of Grad-CAM and occlusion
heat that lies on the strokes, against the share of pixels the strokes cover.

    raycls make-dataset shapes /tmp/shapes && raycls make-dataset digits /tmp/digits
    raycls train /tmp/shapes/train --val /tmp/shapes/val --out /tmp/m-shapes \\
        --config raycls/demo/configs/quickstart.yaml --fusion gated
    raycls train /tmp/digits/train --val /tmp/digits/val --out /tmp/m-digits \\
        --fusion image_only --text-encoder none model.image_size=128
    flock /tmp/raycls-bench.lock python bench/bench_explain.py --shapes /tmp/shapes/test \\
        --shapes-model /tmp/m-shapes --digits /tmp/digits/test --digits-model /tmp/m-digits

Prints a table, then one JSON line.
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
import torch

from raycls.inspect.attribution import heat_inside, image_heatmaps
from raycls.inspect.explain import EXPLANATIONS_FILE, _denormalise, explain
from raycls.io.images import decode_image, preprocess
from raycls.models import load_model

# A pixel of the model's view brighter than this (of 255) is part of a stroke; the digits are
# 8x8 scans upscaled, so their edges are soft and two thresholds are reported.
INK = (64, 128)


def shapes(data: str, model_dir: str, n: int) -> dict:
    """Average text shares per group of the shapes test split (grey / coloured x text / none)."""
    with tempfile.TemporaryDirectory() as out:
        explain(model_dir, data, out, n=n)
        rows = pq.read_table(Path(out) / EXPLANATIONS_FILE).to_pylist()
    meta = {r["path"]: r for r in pq.read_table(Path(data) / "metadata.parquet").to_pylist()}
    groups: dict[str, dict[str, list]] = {}
    for r in rows:
        if r["status"] != "ok":
            continue
        m = meta[os.path.relpath(r["path"], data)]
        name = f"{'grey' if m['grey'] else 'coloured'} {'no text' if m['text'] is None else 'text'}"
        for g in (name, "grey (all)" if m["grey"] else "coloured (all)"):
            entry = groups.setdefault(g, {"ablation": [], "gate": [], "correct": []})
            entry["ablation"].append(r["text_share"])
            entry["gate"].append(1 - r["gate_image"] if r["gate_image"] is not None else np.nan)
            entry["correct"].append(r["label"] == m["label"])
    return {
        g: {
            "n": len(v["ablation"]),
            "text_share": float(np.nanmean(v["ablation"])),
            "gate_text_share": float(np.nanmean(v["gate"])),
            "accuracy": float(np.mean(v["correct"])),
        }
        for g, v in sorted(groups.items())
    }


def digits(data: str, model_dir: str, n: int, n_occlusion: int, batch: int = 16) -> dict:
    """Share of heat on the strokes (Grad-CAM on `n` images, occlusion on the first
    `n_occlusion`: a forward pass per window position) and the share of pixels that are
    strokes (what heat spread evenly would give), for each ink threshold."""
    model = load_model(model_dir)
    size = model.config.image_size
    files = sorted(Path(data).glob("*/*.png"))
    files = [files[i] for i in np.random.default_rng(0).permutation(len(files))[:n]]
    pixels = np.stack([preprocess(decode_image(f.read_bytes()), size) for f in files])
    grey = [_denormalise(p).mean(2) for p in pixels]
    out: dict = {}
    for method, count in (("gradcam", len(files)), ("occlusion", min(n_occlusion, len(files)))):
        heats = []
        for start in range(0, count, batch):
            px = torch.from_numpy(pixels[start : min(start + batch, count)])
            text = model.tokenize([None] * len(px))
            with torch.no_grad():
                target = model(px, **text).argmax(1)
            heats += list(image_heatmaps(model, px, text, target, method))
        for ink in INK:
            masks = [g > ink for g in grey[:count]]
            out[f"{method}_ink{ink}"] = {
                "n": count,
                "heat_on_strokes": float(
                    np.nanmean([heat_inside(h, m) for h, m in zip(heats, masks, strict=True)])
                ),
                "stroke_pixels": float(np.mean([m.mean() for m in masks])),
            }
            row = out[f"{method}_ink{ink}"]
            row["lift"] = row["heat_on_strokes"] / row["stroke_pixels"]  # 1.0: no better than even
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", help="shapes test split")
    parser.add_argument("--shapes-model")
    parser.add_argument("--digits", help="digits test split")
    parser.add_argument("--digits-model")
    parser.add_argument("--n", type=int, default=270, help="images per data set")
    parser.add_argument("--occlusion-n", type=int, default=48, help="digits for occlusion")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    s = shapes(args.shapes, args.shapes_model, args.n) if args.shapes_model else {}
    d = (
        digits(args.digits, args.digits_model, args.n, args.occlusion_n)
        if args.digits_model
        else {}
    )
    print(f"{'shapes group':<22}{'n':>5}{'text share':>12}{'gate text':>11}{'accuracy':>10}")
    for g, v in s.items():
        print(
            f"{g:<22}{v['n']:>5}{v['text_share']:>12.3f}{v['gate_text_share']:>11.3f}"
            f"{v['accuracy']:>10.3f}"
        )
    for name, v in d.items():
        print(
            f"digits {name:<16} {v['n']:>4} images: heat on strokes {v['heat_on_strokes']:.3f}, "
            f"strokes cover {v['stroke_pixels']:.3f} of the pixels"
        )
    load = os.getloadavg()
    print(f"{time.perf_counter() - started:.0f} s, load {load}")
    print(json.dumps({"shapes": s, "digits": d, "loadavg": list(load)}))


if __name__ == "__main__":
    main()
