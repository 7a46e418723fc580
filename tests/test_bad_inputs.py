"""Every kind of bad (and odd but valid) image: each appears once, none stops the job."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
from bad_images import MAX_PIXELS, corpus
from helpers import check_rows, make_model, read_output

from raycls.config import ClassifyConfig


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    return make_model(tmp_path_factory.mktemp("model"))


def test_bad_inputs_become_error_rows(ray_local, tmp_path: Path, model_dir: str):
    import duckdb

    from raycls.bulk.pipeline import classify

    files = corpus()
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name, (data, _) in files.items():
        (folder / name).write_bytes(data)
    config = ClassifyConfig(shard_size=4, batch_size=4, max_pixels=MAX_PIXELS)
    summary = classify(str(folder), model_dir, str(tmp_path / "out"), config)

    expected_errors = {name: word for name, (_, word) in files.items() if word}
    assert summary["rows"] == len(files) == summary["total_rows"]
    assert (summary["ok"], summary["error"]) == (
        len(files) - len(expected_errors),
        len(expected_errors),
    )
    table = read_output(tmp_path / "out")
    check_rows(table, "path")
    rows = {Path(r["path"]).name: r for r in table.to_pylist()}
    assert sorted(rows) == sorted(files)
    for name, word in expected_errors.items():
        assert rows[name]["status"] == "error", name
        assert word in rows[name]["error"].lower(), (name, rows[name]["error"])
    # Readers: pyarrow (dataset), pandas, DuckDB.
    out = tmp_path / "out"
    assert pq.read_table(out).num_rows == len(files)
    frame = pq.read_table(out).to_pandas()
    assert frame.groupby("status").size().to_dict() == {
        "error": len(expected_errors),
        "ok": len(files) - len(expected_errors),
    }
    counts = (
        duckdb.connect()
        .execute(f"SELECT status, count(*) FROM '{out}/*.parquet' GROUP BY status ORDER BY 1")
        .fetchall()
    )
    assert counts == [("error", len(expected_errors)), ("ok", len(files) - len(expected_errors))]
