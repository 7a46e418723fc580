"""`raycls explain`: heat-map overlays, image vs text shares and top tokens for a sample of
images, written as PNGs, `explanations.parquet` and an `index.html` that shows them together.

Runs in this process (no Ray): explanations need a backward pass per image and suit samples of
tens to hundreds of images, not bulk runs.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from raycls.inspect import page
from raycls.inspect.attribution import image_heatmaps, modality_effects, token_attributions
from raycls.io.images import (
    DEFAULT_MAX_PIXELS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    decode_each,
    preprocess,
)
from raycls.io.inputs import plan_shards
from raycls.io.reading import read_shard
from raycls.io.shards import Shard
from raycls.io.storage import check_output_dir, join, local_copy, write_bytes

logger = logging.getLogger(__name__)

EXPLANATIONS_FILE = "explanations.parquet"
PAGE_FILE = "index.html"
HEATMAP_DIR = "heatmaps"
SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("label", pa.string()),
        ("score", pa.float32()),
        ("image_share", pa.float32()),
        ("text_share", pa.float32()),
        ("top_tokens", pa.list_(pa.string())),
        ("top_token_scores", pa.list_(pa.float32())),
        ("heatmap", pa.string()),
        ("text", pa.string()),
        ("drop_without_text", pa.float32()),
        ("drop_without_image", pa.float32()),
        ("gate_image", pa.float32()),
        ("method", pa.string()),
        ("status", pa.string()),
        ("error", pa.string()),
    ]
)


def sample_input(
    source: str,
    n: int,
    *,
    seed: int = 0,
    text_column: str | None = "text",
    image_column: str = "image",
) -> pa.Table:
    """Rows (key, image, text, error) of `n` images of `source`: a seeded random sample of an
    image folder or list, the first `n` rows of Parquet or tar input."""
    if n < 1:
        raise ValueError(f"n={n} must be >= 1")
    shards = plan_shards(source, shard_size=10_000, text_column=text_column)
    read = {"image_column": image_column, "text_column": text_column}
    if shards[0].kind == "files":
        paths = [p for s in shards for p in s.paths]
        texts = [t for s in shards for t in (s.texts or (None,) * len(s.paths))]
        pick = sorted(np.random.default_rng(seed).permutation(len(paths))[:n].tolist())
        shard = Shard(
            0,
            "files",
            tuple(paths[i] for i in pick),
            num_rows=len(pick),
            texts=tuple(texts[i] for i in pick),
        )
        return read_shard(shard, **read)
    tables, rows = [], 0
    for shard in shards:
        tables.append(read_shard(shard, **read))
        rows += tables[-1].num_rows
        if rows >= n:
            break
    return pa.concat_tables(tables).slice(0, n)


def explain(
    model_dir: str,
    source: str,
    out_dir: str,
    n: int = 16,
    method: str = "gradcam",
    *,
    seed: int = 0,
    batch_size: int = 16,
    text_column: str | None = "text",
    image_column: str = "image",
) -> dict[str, Any]:
    """Explain the model's predictions for `n` images of `source`; returns a summary."""
    from raycls.models import load_model

    started = time.perf_counter()
    check_output_dir(out_dir)
    with local_copy(model_dir) as folder:
        model = load_model(folder)
    rows = sample_input(source, n, seed=seed, text_column=text_column, image_column=image_column)
    pixels, errors = _decode(rows, model.config.image_size)
    keys, texts = rows.column("key").to_pylist(), rows.column("text").to_pylist()
    out_rows = [
        {"path": k, "text": t, "method": method, "status": "error", "error": e}
        for k, t, e in zip(keys, texts, errors, strict=True)
    ]
    ok = [i for i, e in enumerate(errors) if e is None]
    for start in range(0, len(ok), batch_size):
        idx = ok[start : start + batch_size]
        batch = _explain_batch(
            model, torch.from_numpy(pixels[idx]), [texts[i] for i in idx], method
        )
        for i, rec in zip(idx, batch, strict=True):
            overlay = _view(pixels[i], rec.pop("heat"))
            rec["heatmap"] = None if overlay is None else f"{HEATMAP_DIR}/{i:05d}.png"
            if overlay is not None:
                write_bytes(join(out_dir, rec["heatmap"]), page.encode_image(overlay))
            out_rows[i].update(rec, status="ok")
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(out_rows, schema=SCHEMA), sink)
    write_bytes(join(out_dir, EXPLANATIONS_FILE), sink.getvalue().to_pybytes())
    inputs = {i: page.data_uri(page.encode_image(_denormalise(pixels[i]))) for i in ok}
    html = render(out_rows, inputs, model_dir, source, method, model.config.fusion)
    write_bytes(join(out_dir, PAGE_FILE), html.encode())
    return {
        "out": out_dir,
        "rows": len(out_rows),
        "ok": len(ok),
        "error": len(out_rows) - len(ok),
        "method": method,
        "seconds": round(time.perf_counter() - started, 2),
        "page": join(out_dir, PAGE_FILE),
        "parquet": join(out_dir, EXPLANATIONS_FILE),
    }


def _decode(rows: pa.Table, size: int) -> tuple[np.ndarray, list[str | None]]:
    """Model inputs [N, 3, size, size] (zeros for bad rows) and each row's error or None."""
    pixels = np.zeros((rows.num_rows, 3, size, size), dtype=np.float32)

    def use(i: int, img) -> None:
        pixels[i] = preprocess(img, size)

    errors = decode_each(
        rows.column("image").to_pylist(),
        rows.column("error").to_pylist(),
        use,
        max_pixels=DEFAULT_MAX_PIXELS,
        min_size=size,
    )
    return pixels, errors


def _explain_batch(
    model, pixels: torch.Tensor, texts: list[str | None], method: str
) -> list[dict[str, Any]]:
    text = model.tokenize(texts)
    with torch.no_grad():
        probs = torch.softmax(model(pixels, **text).float(), 1)
    score, target = probs.max(1)
    heat = image_heatmaps(model, pixels, text, target, method)
    effects = modality_effects(model, pixels, text, target)
    tokens = token_attributions(model, pixels, text, target)
    out = []
    for j in range(len(texts)):
        share = float(effects.text_share[j])
        out.append(
            {
                "label": model.labels[int(target[j])],
                "score": float(score[j]),
                "text_share": share,
                "image_share": 1.0 - share if not math.isnan(share) else math.nan,
                "top_tokens": [t for t, _ in tokens[j]],
                "top_token_scores": [s for _, s in tokens[j]],
                "drop_without_text": float(effects.drop_without_text[j]),
                "drop_without_image": float(effects.drop_without_image[j]),
                "gate_image": None if effects.gate_image is None else float(effects.gate_image[j]),
                "heat": None if heat is None else heat[j],
            }
        )
    return out


def _denormalise(pixels: np.ndarray) -> np.ndarray:
    """The model's view of an image (its resized crop) as HxWx3 uint8."""
    rgb = pixels.transpose(1, 2, 0) * IMAGENET_STD + IMAGENET_MEAN
    return (np.clip(rgb, 0, 1) * 255).round().astype(np.uint8)


def _view(pixels: np.ndarray, heat: np.ndarray | None) -> np.ndarray | None:
    """The heat map over the model's view of the image (jet colours, 45% opacity)."""
    if heat is None:
        return None
    from matplotlib import colormaps

    colours = colormaps["jet"](heat)[..., :3] * 255
    return (0.55 * _denormalise(pixels) + 0.45 * colours).round().astype(np.uint8)


def _share(value: float | None) -> str:
    return "" if value is None or math.isnan(value) else f"{value:.2f}"


def render(
    rows: list[dict[str, Any]],
    inputs: dict[int, str],
    model_dir: str,
    source: str,
    method: str,
    fusion: str,
) -> str:
    """The explanations page: input, overlay, prediction, shares and tokens per image."""
    cells = []
    for i, r in enumerate(rows):
        if r["status"] != "ok":
            cells.append([page.esc(r["path"]), "", "", f"error: {page.esc(r['error'])}", "", ""])
            continue
        tokens = ", ".join(
            f"{page.esc(t)} ({s:+.2f})"
            for t, s in zip(r["top_tokens"], r["top_token_scores"], strict=True)
        )
        shares = (
            f"text {_share(r['text_share'])} / image {_share(r['image_share'])}<br>"
            f"<span class=muted>logit drop: no text {r['drop_without_text']:+.2f}, "
            f"blank image {r['drop_without_image']:+.2f}"
            + (f"<br>gate on image {r['gate_image']:.2f}" if r["gate_image"] is not None else "")
            + "</span>"
        )
        cells.append(
            [
                page.image_tag(inputs.get(i), r["path"]) + f"<div class=muted>{page.esc(r['path'])}"
                "</div>",
                page.image_tag(r["heatmap"], f"{method} heat map", "no image branch"),
                f"<b>{page.esc(r['label'])}</b> {r['score']:.3f}",
                shares,
                tokens,
                f'<span class="cap">{page.esc(r["text"])}</span>',
            ]
        )
    header = [
        "input (model's view)",
        f"{method} heat map",
        "prediction",
        "text vs image share",
        "top tokens (integrated gradients)",
        "text",
    ]
    intro = (
        f"<p>Model <code>{page.esc(model_dir)}</code> ({page.esc(fusion)} fusion) on "
        f"<code>{page.esc(source)}</code>. Shares: the winning logit's drop when the text is "
        "removed vs when the image is blanked to its mean colour, normalised to sum to 1.</p>"
    )
    body = page.section("explanations", "Explanations", intro + page.table(header, cells))
    return page.document("raycls explain", [body])
