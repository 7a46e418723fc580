"""The steps of the bulk pipeline as Ray Data batch transforms: read -> decode -> caption ->
classify. Plain functions and callable classes: tests call them directly, `map_batches` runs
them in tasks or actor pools. Every row carries its shard index, the shard's row count and its
position in the shard, so the driver can write each shard's file as soon as it is complete.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa

from raycls.bulk.schema import BATCH_TYPES
from raycls.io.images import decode_each, preprocess, with_pixels
from raycls.io.reading import iter_shard, parquet_keys, printable
from raycls.io.retry import TransientReadError
from raycls.io.shards import Shard

logger = logging.getLogger(__name__)

RESULT_COLUMNS = tuple(BATCH_TYPES)
# `row` of the one row a read task yields when its shard must stay uncommitted: storage
# errors that persisted through retries, or any failure while redoing chosen rows.
FAILED = -1


def read_shards(batch: pa.Table, **read_kwargs: Any) -> Iterator[pa.Table]:
    """Read tasks (JSON in column `shard`, from `shards.split_shard`) -> their rows, plus
    `shard_rows` (rows in the whole shard; 0 while a streamed tar's count is not yet known)
    and `row` (position within it). A task with `positions` keeps only those rows; one
    with `row_numbers` reads chosen files of a shard (see `bulk.recovery.redo_tasks`).

    A shard that cannot be read at all (corrupt tar, unreadable Parquet) becomes error rows,
    one per known row (or a single one), so the job goes on and the failure shows in the
    output. A storage error that persisted through retries instead yields one row with
    `row` = FAILED: the driver then drops the shard, uncommitted, for a rerun to retry.
    """
    for text in batch.column("shard").to_pylist():
        yield from _read_task(json.loads(text), read_kwargs)


def _read_task(task: dict[str, Any], read_kwargs: dict[str, Any]) -> Iterator[pa.Table]:
    shard = Shard.from_dict(task)
    start, total = task.get("start", 0), task.get("shard_rows")
    redo = task.get("positions") is not None or task.get("row_numbers") is not None
    seen, held = 0, None

    def route(table: pa.Table, rows_total: int) -> pa.Table:
        return _route(table, start + seen - table.num_rows, rows_total, task)

    try:
        for table in iter_shard(shard, **read_kwargs):
            if held is not None:
                yield route(held, total or 0)
            held, seen = table.drop_columns(["label"]), seen + table.num_rows
    except Exception as e:
        message = f"{type(e).__name__}: {e}"
        logger.warning("shard %d (%s): %s", shard.index, printable(shard.paths[0]), message)
        if isinstance(e, TransientReadError) or redo:
            # Not committed: a rerun retries it (a redo leaves the committed file as it is).
            failed = _error_rows(shard, [printable(shard.paths[0])], message)
            yield _route(failed, FAILED, 0, {})
            return
        if held is None:  # nothing read: an error row per known row
            held = _unreadable(shard, message, read_kwargs.get("id_column"))
            seen = held.num_rows
        else:  # a stream broke off: what came before stands, one error row for the rest
            yield route(held, 0)
            key = f"{printable(shard.paths[0])}#unreadable-after-{seen}"
            held, seen = _error_rows(shard, [key], message), seen + 1
    if held is not None:
        yield route(held, total or (start + seen))


def _route(table: pa.Table, first: int, total: int, task: dict[str, Any]) -> pa.Table:
    """Add `row` (from `first`, or the task's `row_numbers`) and `shard_rows` (`total`);
    keep only the task's `positions` if it names some (then `shard_rows` counts those)."""
    n = table.num_rows
    if first == FAILED:
        rows = np.full(n, FAILED, np.int32)
    elif task.get("row_numbers") is not None:
        rows = np.asarray(task["row_numbers"][first - task.get("start", 0) :][:n], np.int32)
    else:
        rows = np.arange(first, first + n, dtype=np.int32)
    table = table.append_column("row", pa.array(rows, pa.int32()))
    if task.get("positions") is not None:
        table = table.filter(pa.array(np.isin(rows, task["positions"])))
    shard_rows = pa.array([total] * table.num_rows, pa.int32())
    return table.add_column(table.num_columns - 1, "shard_rows", shard_rows)


def _unreadable(shard: Shard, message: str, id_column: str | None) -> pa.Table:
    """Error rows for a shard whose file cannot be read: keys as a good read would give them
    where the Parquet footer (and the id column) can still be read, else unique ones."""
    uri = printable(shard.paths[0])
    if shard.kind == "parquet" and shard.num_rows:
        keys = parquet_keys(shard, id_column)
    elif shard.num_rows:
        keys = [f"{uri}#{i}" for i in range(shard.num_rows)]
    else:
        keys = [uri]
    return _error_rows(shard, keys, message)


def _error_rows(shard: Shard, keys: list[str], message: str) -> pa.Table:
    n = len(keys)
    return pa.table(
        {
            "key": pa.array(keys, pa.string()),
            "shard": pa.array([shard.index] * n, pa.int32()),
            "image": pa.nulls(n, pa.binary()),
            "text": pa.nulls(n, pa.string()),
            "error": pa.array([message] * n, pa.string()),
        }
    )


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
