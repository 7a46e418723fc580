"""Shards, the unit of parallel reading: planned on the driver (`raycls.io.inputs.plan_shards`),
cut into read tasks (`read_tasks`), read in Ray tasks by `raycls.io.reading.read_shard`. No Ray
import here.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

KINDS = ("files", "parquet", "tar")


@dataclass(frozen=True)
class Shard:
    """What one read task covers.

    `paths` holds the image files of a "files" shard, or the one file of a "parquet" or "tar"
    shard; `row_groups` the Parquet row groups and `group_rows` their row counts (from the
    footer at planning); `texts` per-file text joined at planning.
    """

    index: int
    kind: str
    paths: tuple[str, ...]
    row_groups: tuple[int, ...] = ()
    num_rows: int | None = None
    texts: tuple[str | None, ...] | None = None
    group_rows: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"shard kind {self.kind!r} is not valid; choose one of: {KINDS}")
        if self.kind != "files" and len(self.paths) != 1:
            raise ValueError(f"a {self.kind} shard covers exactly one file, got {self.paths}")
        if self.group_rows and len(self.group_rows) != len(self.row_groups):
            raise ValueError(
                f"shard {self.index}: {len(self.group_rows)} row counts for "
                f"{len(self.row_groups)} row groups"
            )
        if self.texts is not None and len(self.texts) != len(self.paths):
            raise ValueError(
                f"shard {self.index}: {len(self.texts)} texts for {len(self.paths)} files"
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (lists, no tuples), to cross into Ray or JSON."""
        return {
            "index": self.index,
            "kind": self.kind,
            "paths": list(self.paths),
            "row_groups": list(self.row_groups),
            "num_rows": self.num_rows,
            "texts": None if self.texts is None else list(self.texts),
            "group_rows": list(self.group_rows),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Shard:
        texts = data.get("texts")
        return cls(
            index=int(data["index"]),
            kind=data["kind"],
            paths=tuple(data["paths"]),
            row_groups=tuple(int(g) for g in data.get("row_groups") or ()),
            num_rows=data.get("num_rows"),
            texts=None if texts is None else tuple(texts),
            group_rows=tuple(int(n) for n in data.get("group_rows") or ()),
        )


def split_shard(shard: Shard, rows: int) -> list[dict[str, Any]]:
    """Read tasks for `shard`: a "files" shard in slices of at most `rows` files, a Parquet
    shard in runs of whole row groups of at most `rows` rows (a bigger row group alone), so
    that several actors share one shard and finish it together; tar shards whole.

    Each task is the slice's `Shard.to_dict()` plus `start` (its first row within the shard)
    and `shard_rows` (the shard's row count; None where only reading the file tells).
    """
    if shard.kind == "parquet" and len(shard.group_rows) > 1 and (shard.num_rows or 0) > rows:
        return _split_row_groups(shard, rows)
    if shard.kind != "files" or len(shard.paths) <= rows:
        return [{**shard.to_dict(), "start": 0, "shard_rows": shard.num_rows}]
    n = len(shard.paths)
    tasks = []
    for start in range(0, n, rows):
        stop = min(start + rows, n)
        texts = None if shard.texts is None else shard.texts[start:stop]
        piece = Shard(shard.index, "files", shard.paths[start:stop], num_rows=stop - start,
                      texts=texts)  # fmt: skip
        tasks.append({**piece.to_dict(), "start": start, "shard_rows": n})
    return tasks


def _split_row_groups(shard: Shard, rows: int) -> list[dict[str, Any]]:
    tasks = []
    for begin, end in runs_of(shard.group_rows, rows):
        sizes = shard.group_rows[begin:end]
        piece = Shard(shard.index, "parquet", shard.paths, shard.row_groups[begin:end],
                      sum(sizes), group_rows=sizes)  # fmt: skip
        start = sum(shard.group_rows[:begin])
        tasks.append({**piece.to_dict(), "start": start, "shard_rows": shard.num_rows})
    return tasks


def runs_of(sizes: Sequence[int], limit: int) -> list[tuple[int, int]]:
    """Consecutive runs [begin, end) of `sizes` adding up to at most `limit` each; an item
    bigger than `limit` forms a run alone. How row groups become shards and read tasks."""
    runs, begin, held = [], 0, 0
    for i, n in enumerate(sizes):
        if i > begin and held + n > limit:
            runs.append((begin, i))
            begin, held = i, 0
        held += n
    if len(sizes) > begin:
        runs.append((begin, len(sizes)))
    return runs


def read_tasks(shards: list[Shard], rows: int, first_rows: int, first: int) -> list[dict]:
    """Read tasks of `rows` files (see `split_shard`); the first `first` ones cut further into
    tasks of `first_rows` files (a batch).

    Ray Data hands a task's results on only when the task ends (its output buffer gathers
    them into one block), so each actor's first results wait for its whole first task: one
    batch instead of PIECE_BATCHES brings the first rows sooner (bench_classify.py prints
    first_rows_s).
    """
    tasks = [task for s in shards for task in split_shard(s, rows)]
    head = []
    for task in tasks[:first]:
        for part in split_shard(Shard.from_dict(task), first_rows):
            # Positions and sizes stay those of the whole shard, not of this slice of it.
            start = task.get("start", 0) + part["start"]
            head.append({**part, "start": start, "shard_rows": task["shard_rows"]})
    return head + tasks[first:]
