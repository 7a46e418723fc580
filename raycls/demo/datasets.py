"""Demo data sets written as ImageFolder splits with a `metadata.parquet` per split.

`shapes` is synthetic and built so that image and text are each incomplete: about 35% of images
are grey (shape visible, colour gone) while the alt-text, when present, usually names the
colour. A fused image+text model should clearly beat either modality alone (an image-only model
can at best guess the colour of a grey image); bench/bench_shapes.py prints all three.

`digits` is scikit-learn's bundled handwritten digits (real data, 8x8) upscaled, without text.
"""

from __future__ import annotations

import io
import logging
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
SHAPES = ("circle", "square", "triangle")
COLOURS = {"red": (215, 35, 35), "green": (35, 170, 55), "blue": (40, 75, 225)}
# Clutter colours never name a class, so a coloured image's class colour stays unambiguous.
CLUTTER_COLOURS = ((235, 205, 40), (150, 60, 170), (240, 140, 30), (30, 200, 210), (250, 250, 250))
GREY_FRACTION = 0.35
TEXT_MIX = {"missing": 0.25, "partial": 0.35, "wrong": 0.10, "full": 0.30}
FULL_TEMPLATES = (
    "a photo of a {colour} {shape}",
    "{colour} {shape} on a noisy background",
    "a {colour} {shape}",
    "image of a {shape}, {colour}",
    "a drawing showing a {colour} {shape} and some clutter",
    "{colour} {shape}",
)
COLOUR_TEMPLATES = (
    "something {colour}",
    "{colour} thing on a noisy background",
    "a {colour} object",
    "mostly {colour}",
    "{colour}",
)
SHAPE_TEMPLATES = ("{shape}", "a {shape}", "a photo of a {shape}", "some kind of {shape}")


def make_dataset(
    kind: str,
    out: str | Path,
    per_class: int | None = None,
    size: int | None = None,
    seed: int = 0,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write a demo data set to OUT/{train,val,test}; returns classes and counts per split.

    Args:
        kind: "shapes" or "digits".
        per_class: training images per class (shapes: default 60, val/test get a third, >= 10;
            digits: a cap on the train split, default all).
        size: image side in pixels (shapes 64, digits 32).
        overwrite: replace existing split folders instead of refusing.
    """
    if kind not in BUILDERS:
        raise ValueError(f"unknown data set kind {kind!r}; choose one of: {', '.join(BUILDERS)}")
    if per_class is not None and per_class < 1:
        raise ValueError(f"per_class={per_class} must be >= 1")
    if size is not None and size < 8:
        raise ValueError(f"size={size} must be >= 8")
    out = Path(out)
    for split in SPLITS:
        target = out / split
        if target.exists() and any(target.iterdir()):
            if not overwrite:
                raise ValueError(f"{target} is not empty; choose another folder or pass overwrite")
            shutil.rmtree(target)
    classes, rows = BUILDERS[kind](per_class, size, seed)
    counts = {}
    for split in SPLITS:
        counts[split] = _write_split(out / split, rows[split])
    logger.info("wrote %s data set to %s: %s", kind, out, counts)
    return {
        "kind": kind,
        "out": str(out),
        "classes": sorted(classes),
        "counts": counts,
        "seed": seed,
    }


def _write_split(folder: Path, rows: list[dict[str, Any]]) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    for row in rows:
        path = folder / row["path"]
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(row.pop("png"))
    table = pa.Table.from_pylist(rows, schema=_schema(rows))
    pq.write_table(table, folder / "metadata.parquet", compression="zstd")
    return len(rows)


def _schema(rows: list[dict[str, Any]]) -> pa.Schema:
    types = {"path": pa.string(), "label": pa.string(), "text": pa.string()}
    types.update(
        {"text_kind": pa.string(), "grey": pa.bool_()} if rows and "grey" in rows[0] else {}
    )
    return pa.schema(list(types.items()))


def _png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG", compress_level=6)  # fixed settings: same pixels -> same bytes
    return buf.getvalue()


def _shapes(per_class: int | None, size: int | None, seed: int) -> tuple[list[str], dict]:
    per_class, size = per_class or 60, size or 64
    classes = [f"{c}_{s}" for c in COLOURS for s in SHAPES]
    counts = {"train": per_class, "val": max(10, per_class // 3), "test": max(10, per_class // 3)}
    rows: dict[str, list] = {}
    for split_id, split in enumerate(SPLITS):
        rows[split] = []
        for class_id, name in enumerate(classes):
            colour, shape = name.split("_")
            for i in range(counts[split]):
                # One generator per image: adding images never changes the existing ones.
                rng = np.random.default_rng([seed, split_id, class_id, i])
                grey = bool(rng.random() < GREY_FRACTION)
                text, text_kind = _shape_text(rng, colour, shape, classes)
                im = _draw_shape(rng, size, shape, COLOURS[colour], grey)
                rows[split].append(
                    {
                        "path": f"{name}/{i:05d}.png",
                        "label": name,
                        "text": text,
                        "text_kind": text_kind,
                        "grey": grey,
                        "png": _png(im),
                    }
                )
    return classes, rows


def _shape_text(
    rng: np.random.Generator, colour: str, shape: str, classes: list[str]
) -> tuple[str | None, str]:
    kind = str(rng.choice(list(TEXT_MIX), p=list(TEXT_MIX.values())))
    if kind == "missing":
        return None, kind
    if kind == "wrong":
        colour, shape = str(rng.choice([c for c in classes if c != f"{colour}_{shape}"])).split("_")
    if kind == "partial":
        templates = COLOUR_TEMPLATES if rng.random() < 0.8 else SHAPE_TEMPLATES
    else:
        templates = FULL_TEMPLATES
    return str(rng.choice(templates)).format(colour=colour, shape=shape), kind


def _draw_shape(
    rng: np.random.Generator, size: int, shape: str, colour: tuple[int, int, int], grey: bool
) -> Image.Image:
    background = int(rng.integers(90, 200))
    tint = rng.integers(-12, 13, size=3)
    im = Image.new("RGB", (size, size), tuple(int(background + t) for t in tint))
    draw = ImageDraw.Draw(im)
    for _ in range(int(rng.integers(2, 6))):
        _draw_clutter(draw, rng, size)
    radius = size * rng.uniform(0.2, 0.3)
    # Corners sit this far from the centre; keeping them inside keeps squares from looking cut.
    reach = radius * {"circle": 1.0, "square": 1.25, "triangle": 1.3}[shape]
    cx, cy = (rng.uniform(reach + 1, size - reach - 1) for _ in range(2))
    if grey:
        # A random grey level far from the background: luminance must not betray the colour.
        level = int(rng.integers(0, 50)) if background > 145 else int(rng.integers(205, 256))
        fill = (level, level, level)
    else:
        fill = tuple(int(np.clip(c + rng.integers(-20, 21), 0, 255)) for c in colour)
    if shape == "circle":
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=fill)
    else:
        sides = 4 if shape == "square" else 3
        turn = rng.uniform(0, 2 * math.pi)
        angles = [turn + 2 * math.pi * k / sides for k in range(sides)]
        draw.polygon(
            [(cx + reach * math.cos(a), cy + reach * math.sin(a)) for a in angles], fill=fill
        )
    pixels = np.asarray(im, dtype=np.float32) + rng.normal(0, 12, size=(size, size, 3))
    out = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    return out.convert("L").convert("RGB") if grey else out


def _draw_clutter(draw: ImageDraw.ImageDraw, rng: np.random.Generator, size: int) -> None:
    colour = CLUTTER_COLOURS[int(rng.integers(len(CLUTTER_COLOURS)))]
    x, y = rng.uniform(0, size, size=2)
    if rng.random() < 0.5:
        x2, y2 = rng.uniform(0, size, size=2)
        draw.line((x, y, x2, y2), fill=colour, width=int(rng.integers(1, 3)))
    else:
        r = size * rng.uniform(0.03, 0.07)
        draw.rectangle((x - r, y - r, x + r, y + r), fill=colour)


def _digits(per_class: int | None, size: int | None, seed: int) -> tuple[list[str], dict]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    size = size or 32
    digits = load_digits()
    index = np.arange(len(digits.target))
    train, rest = train_test_split(index, test_size=0.3, stratify=digits.target, random_state=seed)
    val, test = train_test_split(
        rest, test_size=0.5, stratify=digits.target[rest], random_state=seed
    )
    if per_class is not None:
        train = np.concatenate([train[digits.target[train] == c][:per_class] for c in range(10)])
    rows: dict[str, list] = {}
    for split, ids in zip(SPLITS, (train, val, test), strict=True):
        rows[split] = []
        for i in sorted(int(i) for i in ids):
            label = str(digits.target[i])
            pixels = (digits.images[i] * (255.0 / 16.0)).round().astype(np.uint8)
            im = Image.fromarray(pixels).resize((size, size), Image.Resampling.BILINEAR)
            rows[split].append(
                {
                    "path": f"{label}/{i:05d}.png",
                    "label": label,
                    "text": None,
                    "png": _png(im.convert("RGB")),
                }
            )
    return [str(c) for c in range(10)], rows


BUILDERS = {"shapes": _shapes, "digits": _digits}
