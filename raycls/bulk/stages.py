"""The steps of the bulk pipeline after reading (`raycls.bulk.read`) as Ray Data batch
transforms: decode -> caption -> classify. Plain functions and callable classes: tests call them
directly, `map_batches` runs them in tasks or actor pools. Rows keep the routing columns the
read step gave them (shard, shard_rows, row), so the driver can commit each shard's file.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa

from raycls.bulk.schema import BATCH_TYPES
from raycls.io.images import decode_each, preprocess, with_pixels

RESULT_COLUMNS = tuple(BATCH_TYPES)


def decode_rows(
    batch: dict[str, np.ndarray],
    *,
    size: int,
    max_pixels: int,
    caption_size: int | None = None,
    chunk_rows: int = 64,
) -> Iterator[dict[str, np.ndarray]]:
    """Decode each image once into classifier `pixels` float16 [N,3,S,S] and, for rows without
    text when `caption_size` is set, a uint8 `caption_image` [N,C,C,3]. Bad rows: status error.

    Yields chunks of `chunk_rows`, so a whole shard can come in and memory stays bounded.
    """
    for chunk in _chunks(batch, chunk_rows):
        yield _decode_chunk(chunk, size, max_pixels, caption_size)


def _chunks(batch: dict[str, np.ndarray], rows: int) -> Iterator[dict[str, np.ndarray]]:
    n = len(next(iter(batch.values())))
    for start in range(0, n, rows):
        yield {k: v[start : start + rows] for k, v in batch.items()}


def _decode_chunk(
    batch: dict[str, np.ndarray], size: int, max_pixels: int, caption_size: int | None
) -> dict[str, np.ndarray]:
    n = len(batch["image"])
    # float16 halves what crosses the object store to a GPU actor; normalised pixels lose
    # nothing that matters (their 8-bit steps are ~0.017, float16's ~0.002).
    pixels = np.zeros((n, 3, size, size), dtype=np.float16)
    wants_caption = _wants_caption(batch) if caption_size else np.zeros(n, dtype=bool)
    captions = np.zeros((n, caption_size or 1, caption_size or 1, 3), dtype=np.uint8)

    def use(i: int, img: Any) -> None:
        pixels[i] = preprocess(img, size)
        if wants_caption[i]:
            captions[i] = np.asarray(img.resize((caption_size, caption_size)))

    # JPEGs decode at a reduced scale, as long as both sides stay >= what is needed.
    min_sizes = [max(size, caption_size or 0) if wants else size for wants in wants_caption]
    errors = decode_each(batch["image"], batch["error"], use, max_pixels=max_pixels,
                         min_size=min_sizes)  # fmt: skip
    out = with_pixels(batch, pixels, errors)
    if caption_size:
        out["caption_image"] = captions
        out["wants_caption"] = wants_caption & (out["status"] == "ok")
    return out


def _wants_caption(batch: dict[str, np.ndarray]) -> np.ndarray:
    return np.array([_text(t) is None for t in batch["text"]], dtype=bool)


def _text(value: Any) -> str | None:
    """A non-blank string, else None. An all-null column comes back from Arrow as float NaN."""
    return value if isinstance(value, str) and value.strip() else None


def _torch_setup(num_cpus: float, use_gpu: bool) -> str:
    """Threads = the CPUs this actor reserved (a 1-CPU actor is single-threaded); the device."""
    import torch

    torch.set_num_threads(max(1, round(num_cpus)))
    return "cuda" if use_gpu and torch.cuda.is_available() else "cpu"


class CaptionStage:
    """Actor: captions the rows that want one; adds a `caption` column (None elsewhere)."""

    def __init__(
        self,
        captioner: str,
        *,
        prompt: str | None,
        max_new_tokens: int,
        trust_remote_code: bool,
        batch_size: int = 16,
        num_cpus: float = 1.0,
        use_gpu: bool = False,
    ) -> None:
        from raycls.models.captioner import Captioner

        self.batch_size = batch_size
        device = _torch_setup(num_cpus, use_gpu)
        self.captioner = Captioner(
            captioner,
            device=device,
            prompt=prompt,
            max_new_tokens=max_new_tokens,
            trust_remote_code=trust_remote_code,
        )

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        wants = batch.pop("wants_caption")
        images = batch.pop("caption_image")
        captions = np.full(len(wants), None, dtype=object)
        rows = np.flatnonzero(wants)
        # Rows with text need no caption: gather the others into full batches.
        for start in range(0, len(rows), self.batch_size):
            chunk = rows[start : start + self.batch_size]
            captions[chunk] = self.captioner([images[i] for i in chunk])
        batch["caption"] = captions
        for name in ("text", "error"):
            # An all-null column arrives as float NaN; sent on as such it would clash with
            # string blocks when the next stage bundles them.
            batch[name] = np.array([_text(v) for v in batch[name]], dtype=object)
        return batch


class ClassifyStage:
    """Actor: loads the model once, returns the small result columns (no pixels).

    `model`: a `raycls.models.predictor.ModelSpec` as a dict (any kind: fused, HF, zero-shot),
    or the path of a model with labels of its own.
    """

    def __init__(
        self,
        model: dict[str, Any] | str,
        *,
        top_k: int,
        batch_size: int = 64,
        num_cpus: float = 1.0,
        use_gpu: bool = False,
    ) -> None:
        from raycls.models.predictor import load_predictor

        self.batch_size = batch_size
        self.device = _torch_setup(num_cpus, use_gpu)
        self.predictor = load_predictor(model, self.device)
        self.labels = np.array(self.predictor.labels, dtype=object)
        self.top_k = min(top_k, len(self.labels))

    def __call__(self, batch: dict[str, np.ndarray]) -> Iterator[pa.Table]:
        for chunk in _chunks(batch, self.batch_size):
            yield self._classify(chunk)

    def _classify(self, batch: dict[str, np.ndarray]) -> pa.Table:
        n = len(batch["key"])
        captions = batch.get("caption", np.full(n, None, dtype=object))
        ok = np.flatnonzero(batch["status"] == "ok")
        labels, scores = np.full(n, None, dtype=object), np.full(n, np.nan, dtype=np.float32)
        top_labels: list[list[str] | None] = [None] * n
        top_scores: list[list[float] | None] = [None] * n
        status, errors = batch["status"].copy(), batch["error"].copy()
        if len(ok):
            texts = [_text(batch["text"][i]) or _text(captions[i]) for i in ok]
            probs, idx, row_errors = self._predict(batch["pixels"][ok], texts)
            for j, i in enumerate(ok):
                if row_errors[j] is not None:  # e.g. caption zero-shot on a row without text
                    status[i], errors[i] = "error", row_errors[j]
                    continue
                top_labels[i] = self.labels[idx[j]].tolist()
                top_scores[i] = probs[j].tolist()
                labels[i], scores[i] = top_labels[i][0], probs[j, 0]
        columns = {name: batch[name] for name in ("key", "shard", "shard_rows", "row")}
        columns.update(label=labels, score=scores, top_k_labels=top_labels)
        columns.update(top_k_scores=top_scores, caption=captions)
        columns.update(status=status, error=errors)
        return pa.table({name: _arrow(name, columns[name]) for name in RESULT_COLUMNS})

    def _predict(
        self, pixels: np.ndarray, texts: list[str | None]
    ) -> tuple[np.ndarray, np.ndarray, list[str | None]]:
        import torch

        scores, errors = self.predictor(pixels, texts)
        top = torch.from_numpy(np.nan_to_num(scores, nan=-np.inf)).topk(self.top_k, dim=-1)
        return top.values.numpy(), top.indices.numpy(), errors


def _arrow(name: str, values: Any) -> pa.Array:
    if name == "score":
        values = np.asarray(values, dtype=np.float32)
        return pa.array(values, pa.float32(), mask=np.isnan(values))
    kind = BATCH_TYPES[name]
    if pa.types.is_string(kind):
        return pa.array([v if isinstance(v, str) else None for v in values], kind)
    if isinstance(values, np.ndarray) and values.dtype != object:
        return pa.array(values, kind)
    return pa.array(list(values), kind)
