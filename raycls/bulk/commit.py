"""Committing bulk results on the driver: rows stream in by shard, and each shard's Parquet
file is written once all its rows have arrived (rows a retried task sends twice are dropped)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from raycls.bulk.output import OutputDir, ShardCollector, count_statuses, result_schema
from raycls.bulk.recovery import merge_rows
from raycls.io.shards import Shard

logger = logging.getLogger(__name__)

PROGRESS_EVERY_S = 15.0


def commit_results(
    batches: Iterable[pa.Table],
    shards: list[Shard],
    out: OutputDir,
    key_name: str,
    model: str,
    redo: dict[int, list[int]] | None = None,
) -> dict[str, Any]:
    """Commit each shard's file once all its result rows have arrived from `batches`.

    Rows that arrive twice (a task retried after a worker or node died, having sent part of
    its rows) are dropped and counted. Shards whose reads kept failing stay uncommitted. For
    shards in `redo` (`--retry-errors`), the redone rows replace those of the committed file.

    Returns rows per status of the files committed (`counts`), `repeated`, when (perf_counter)
    the first results arrived (`first_rows_at`), the shards that `failed` (index -> message)
    and the rows `redone` per shard rewritten.
    """
    redo = redo or {}
    collector = ShardCollector(result_schema(key_name), model_name=model)
    todo = {s.index for s in shards}
    counts: dict[str, int] = {}
    redone: dict[int, int] = {}
    received: dict[int, int] = {}
    committed = 0
    expected = _expected_rows(shards, redo)
    last_log = time.perf_counter()
    first_rows_at = None
    for batch in batches:
        first_rows_at = first_rows_at or time.perf_counter()
        for item in batch.column("shard").value_counts().to_pylist():
            received[item["values"]] = received.get(item["values"], 0) + item["counts"]
        if not todo.issuperset(pc.unique(batch.column("shard")).to_pylist()):
            kept = pa.array(sorted(todo), batch.column("shard").type)
            batch = batch.filter(pc.is_in(batch.column("shard"), kept))
        for index, table in collector.add(batch):
            committed += table.num_rows
            if index in redo:
                table = merge_rows(out, index, table, redo[index])
                redone[index] = len(redo[index])
            count_statuses(table, counts)
            out.write_shard(index, table)
            todo.discard(index)
        if time.perf_counter() - last_log > PROGRESS_EVERY_S:
            last_log = time.perf_counter()
            logger.info(
                "classify: %d/%d shards committed, %s rows, %s",
                len(shards) - len(todo), len(shards),
                f"{committed:,}" if expected is None else f"{committed:,}/{expected:,}",
                _rate(committed, last_log - first_rows_at, expected),
            )  # fmt: skip
    if collector.in_flight:
        raise RuntimeError(f"{collector.in_flight} shards ended incomplete; rerun to resume")
    # Shards without rows (an empty Parquet row group, an empty tar); failed ones stay open.
    for index in sorted(todo - set(collector.failed) - set(redo)):
        out.write_shard(index, collector.schema.empty_table())
    arrived = sum(n for index, n in received.items() if index not in collector.failed)
    return {"counts": counts, "repeated": arrived - committed, "first_rows_at": first_rows_at,
            "failed": collector.failed, "redone": redone}  # fmt: skip


def _expected_rows(shards: list[Shard], redo: dict[int, list[int]]) -> int | None:
    """Rows this run commits: None while a shard's count is unknown (a tar not yet read)."""
    if any(s.num_rows is None for s in shards if s.index not in redo):
        return None
    return sum(len(redo[s.index]) if s.index in redo else s.num_rows or 0 for s in shards)


def _rate(rows: int, seconds: float, expected: int | None) -> str:
    """'250.1 images/s since the first results', and the time left at that rate when known."""
    rate = rows / max(seconds, 1e-9)
    text = f"{rate:.1f} images/s since the first results"
    if expected is None or rate <= 0 or rows >= expected:
        return text
    left = round((expected - rows) / rate)
    hours, minutes, secs = left // 3600, left % 3600 // 60, left % 60
    if hours:
        return f"{text}, about {hours} h {minutes} min left"
    return (
        f"{text}, about {minutes} min {secs} s left" if minutes else f"{text}, about {secs} s left"
    )
