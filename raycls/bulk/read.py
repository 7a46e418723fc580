"""The read step of the bulk pipeline: read tasks -> rows of bytes, each with its shard index,
the shard's row count and its position in the shard (`row`), so the driver can commit each
shard's file as soon as it is complete. A shard that cannot be read becomes error rows (or one
FAILED row that leaves it for a rerun): the job goes on. No Ray import: `map_batches` runs it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa

from raycls.io.reading import iter_shard, parquet_keys, printable
from raycls.io.retry import TransientReadError
from raycls.io.shards import Shard

logger = logging.getLogger(__name__)

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
