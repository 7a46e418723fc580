"""The driver's side of classify: result batches in, part files out, exactly once (no Ray)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import result_rows

from raycls.bulk.commit import commit_results
from raycls.bulk.output import OutputDir
from raycls.io.shards import Shard, read_tasks


def rows(shard: int, positions: list[int], total: int) -> pa.Table:
    return result_rows(shard, positions, total, last_error=True)


def _out(tmp_path) -> OutputDir:
    (tmp_path / "out").mkdir()
    return OutputDir(str(tmp_path / "out"))


def _shards(n: int) -> list[Shard]:
    return [Shard(i, "files", (f"/in/{i}",)) for i in range(n)]


def test_rows_sent_twice_by_retried_tasks_are_dropped_and_counted(tmp_path):
    out = _out(tmp_path)
    batches = [
        rows(0, [0, 1], 3),
        rows(0, [1], 3),  # a retried task repeats a row of a shard in flight
        rows(0, [2], 3),  # shard 0 complete: committed
        rows(0, [0, 2], 3),  # ... and repeated again after its commit
        rows(1, [0, 1], 2),
        rows(1, [1], 2),  # a repeat when no shard is left in flight
    ]
    result = commit_results(iter(batches), _shards(2), out, "path", "m")
    assert result["repeated"] == 4
    assert result["counts"] == {"ok": 2, "error": 3}  # the last row of each batch: error
    assert result["first_rows_at"] is not None
    paths = sorted((tmp_path / "out").glob("part-*.parquet"))
    assert [p.name for p in paths] == ["part-000000.parquet", "part-000001.parquet"]
    tables = [pq.read_table(p) for p in paths]
    assert tables[0]["path"].to_pylist() == ["s0r0", "s0r1", "s0r2"]
    assert tables[1]["path"].to_pylist() == ["s1r0", "s1r1"]


def test_a_shard_without_rows_gets_an_empty_file(tmp_path):
    commit_results(iter([rows(0, [0], 1)]), _shards(2), _out(tmp_path), "path", "m")
    assert pq.read_table(tmp_path / "out" / "part-000001.parquet").num_rows == 0


def test_a_shard_left_incomplete_is_not_committed(tmp_path):
    out = _out(tmp_path)
    with pytest.raises(RuntimeError, match="1 shards ended incomplete; rerun to resume"):
        commit_results(iter([rows(0, [0], 2)]), _shards(1), out, "path", "m")
    assert not list((tmp_path / "out").glob("part-*"))


def test_first_read_tasks_are_one_batch_so_first_results_come_sooner():
    files = Shard(0, "files", tuple(f"/in/{i}.jpg" for i in range(10)), num_rows=10)
    parquet = Shard(1, "parquet", ("/in/x.parquet",), row_groups=(0, 1), num_rows=50)
    tasks = read_tasks([files, parquet], rows=4, first_rows=2, first=2)
    spans = [(t["index"], t["start"], len(t["paths"]), t["shard_rows"]) for t in tasks]
    assert spans == [(0, 0, 2, 10), (0, 2, 2, 10), (0, 4, 2, 10), (0, 6, 2, 10), (0, 8, 2, 10),
                     (1, 0, 1, 50)]  # fmt: skip
    assert [p for t in tasks[:5] for p in t["paths"]] == list(files.paths)


def test_progress_lines_give_rows_of_the_whole_run_and_the_time_left(tmp_path, monkeypatch, caplog):
    import logging

    import raycls.bulk.commit as commit

    monkeypatch.setattr(commit, "PROGRESS_EVERY_S", -1.0)  # a line after every batch
    shards = [Shard(i, "files", (f"/in/{i}a", f"/in/{i}b"), num_rows=2) for i in range(3)]
    batches = [rows(0, [0, 1], 2), rows(1, [0, 1], 2), rows(2, [0, 1], 2)]
    with caplog.at_level(logging.INFO, logger="raycls.bulk.commit"):
        commit_results(iter(batches), shards, _out(tmp_path), "path", "m")
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("classify: 1/3 shards committed, 2/6 rows, ")
    assert lines[0].endswith(" s left") and "about" in lines[0]
    assert lines[-1].startswith("classify: 3/3 shards committed, 6/6 rows, ")
    assert lines[-1].endswith("images/s since the first results")  # nothing left
    # A tar shard's rows are unknown until read: counts without a total or a time left.
    tar = [Shard(0, "tar", ("/in/0.tar",))]
    assert commit._expected_rows(tar, {}) is None
    assert commit._expected_rows(shards, {1: [0]}) == 5  # a --retry-errors shard: its rows
    assert commit._rate(100, 10.0, 7300).endswith("about 12 min 0 s left")
    assert commit._rate(100, 10.0, 40000).endswith("about 1 h 6 min left")
