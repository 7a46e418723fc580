"""Recovering an OUT_DIR: committed part files are checked before a rerun trusts them, and
`--retry-errors` redoes just the error rows of committed shards. No Ray import.

A part file holds its shard's rows in shard order, each once (`ShardCollector`), so a row's
position in the file is its position in the shard.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from raycls.bulk.output import OutputDir, part_name
from raycls.io.shards import Shard

logger = logging.getLogger(__name__)

THREADS = 8  # footers are tiny: on an object store the time is all round trips


def valid_parts(out: OutputDir, done: set[int], shards: list[Shard]) -> set[int]:
    """The shards of `done` whose part file is whole: its footer reads and its row count is
    the shard's (where planning knows it). Damaged files are deleted, to be redone."""
    rows = {s.index: s.num_rows for s in shards}
    indices = sorted(done & set(rows))

    def problem(index: int) -> str | None:
        path = f"{out.path}/{part_name(index)}"
        try:
            found = pq.read_metadata(path, filesystem=out.fs).num_rows
        except Exception as e:
            return f"unreadable ({type(e).__name__}: {e})"
        expected = rows[index]
        if expected is not None and found != expected:
            return f"{found} rows instead of {expected}"
        return None

    with ThreadPoolExecutor(THREADS) as pool:
        problems = dict(zip(indices, pool.map(problem, indices), strict=True))
    bad = {i: p for i, p in problems.items() if p is not None}
    for index, why in bad.items():
        logger.warning("%s/%s is %s; it will be redone", out.uri, part_name(index), why)
        out.fs.delete_file(f"{out.path}/{part_name(index)}")
    return set(indices) - set(bad)


def error_positions(out: OutputDir, indices: set[int]) -> dict[int, list[int]]:
    """Shard index -> positions of its rows with status "error", for committed shards."""

    def positions(index: int) -> list[int]:
        path = f"{out.path}/{part_name(index)}"
        status = pq.read_table(path, columns=["status"], filesystem=out.fs).column("status")
        return pc.indices_nonzero(pc.equal(status, "error")).to_pylist()

    ordered = sorted(indices)
    with ThreadPoolExecutor(THREADS) as pool:
        found = dict(zip(ordered, pool.map(positions, ordered), strict=True))
    return {i: p for i, p in found.items() if p}


def redo_tasks(shard: Shard, positions: list[int], rows: int) -> list[dict[str, Any]]:
    """Read tasks for the rows at `positions` of a committed shard (see read.read_shards):
    image files are read alone, in slices of at most `rows`; other shards whole, then
    filtered."""
    if shard.kind != "files":
        return [{**shard.to_dict(), "shard_rows": len(positions), "positions": positions}]
    tasks = []
    for start in range(0, len(positions), rows):
        chosen = positions[start : start + rows]
        texts = None if shard.texts is None else tuple(shard.texts[p] for p in chosen)
        piece = Shard(shard.index, "files", tuple(shard.paths[p] for p in chosen),
                      num_rows=len(chosen), texts=texts)  # fmt: skip
        tasks.append({**piece.to_dict(), "shard_rows": len(positions), "row_numbers": chosen})
    return tasks


def merge_rows(out: OutputDir, index: int, redone: pa.Table, positions: list[int]) -> pa.Table:
    """The committed rows of shard `index` with those at `positions` replaced by `redone`
    (the redone rows in shard order)."""
    old = pq.read_table(f"{out.path}/{part_name(index)}", filesystem=out.fs)
    take = list(range(old.num_rows))
    for j, position in enumerate(sorted(positions)):
        take[position] = old.num_rows + j
    return pa.concat_tables([old, redone.cast(old.schema)]).take(take)
