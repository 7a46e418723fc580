"""Rerunning classify on the same OUT_DIR: committed shards are kept, the rest is done once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import image_bytes, make_model, read_output, write_images

from raycls.bulk.output import MANIFEST
from raycls.config import ClassifyConfig


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    return make_model(tmp_path_factory.mktemp("model"))


def _stamps(out: Path) -> dict[str, tuple[int, int]]:
    """inode and mtime of each committed part file: a rewrite changes both."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("part-*.parquet")}


def _exactly_once(out: Path, images: list[Path]) -> None:
    keys = read_output(out).column("path").to_pylist()
    assert sorted(keys) == sorted(map(str, images))


def test_rerun_redoes_only_missing_shards_and_overwrite_clears(ray_local, tmp_path, model_dir):
    from raycls.bulk.pipeline import classify

    images = write_images(tmp_path / "imgs", 12)
    out = tmp_path / "out"
    config = ClassifyConfig(shard_size=4, batch_size=4)
    classify(str(tmp_path / "imgs"), model_dir, str(out), config)
    before = _stamps(out)
    (out / "part-000001.parquet").unlink()
    (out / ".part-000002.parquet.0123.tmp").write_bytes(b"left by a killed run")

    summary = classify(str(tmp_path / "imgs"), model_dir, str(out), config)
    assert (summary["shards_done"], summary["shards_skipped"], summary["rows"]) == (1, 2, 4)
    after = _stamps(out)
    assert {k: after[k] for k in ("part-000000.parquet", "part-000002.parquet")} == {
        k: before[k] for k in ("part-000000.parquet", "part-000002.parquet")
    }
    assert not list(out.glob(".*.tmp"))
    _exactly_once(out, images)

    other = make_model(tmp_path / "other", seed=1)
    with pytest.raises(ValueError, match="different run"):
        classify(str(tmp_path / "imgs"), other, str(out), config)
    summary = classify(str(tmp_path / "imgs"), other, str(out), config, overwrite=True)
    assert summary["shards_done"] == 3 and summary["shards_skipped"] == 0
    assert set(read_output(out).column("model").to_pylist()) == {other}
    assert json.loads((out / MANIFEST).read_text())["model_dir"] == other
    _exactly_once(out, images)


def test_sigkill_mid_run_then_resume(ray_local, tmp_path, model_dir):
    """Kill the CLI with SIGKILL once some shards are committed; a rerun completes the rest."""
    from raycls.bulk.pipeline import classify

    images = write_images(tmp_path / "imgs", 160)
    out = tmp_path / "out"
    args = ["classify", str(tmp_path / "imgs"), "--model", model_dir, "--out", str(out),
            "--shard-size", "8", "--batch-size", "4"]  # fmt: skip
    env = {**os.environ, "RAY_ADDRESS": "", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "raycls", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not list(out.glob("part-*.parquet")) and time.monotonic() < deadline:
            assert proc.poll() is None, "classify ended before committing a shard"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        # The killed driver's local Ray (raylet, workers) shares its process group.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    committed = _stamps(out)
    assert 1 <= len(committed) < 20, "the kill must land mid-run"

    summary = classify(str(tmp_path / "imgs"), model_dir, str(out), ClassifyConfig(
        shard_size=8, batch_size=4))  # fmt: skip
    assert summary["shards_skipped"] == len(committed)
    assert summary["shards_done"] == 20 - len(committed)
    after = _stamps(out)
    assert {k: after[k] for k in committed} == committed
    _exactly_once(out, images)


def test_out_inside_a_parquet_input_is_left_out_of_it_on_reruns(ray_local, tmp_path, model_dir):
    from raycls.bulk.pipeline import classify

    data = tmp_path / "data"
    data.mkdir()
    pq.write_table(pa.table({"image": [image_bytes(i) for i in range(6)]}), data / "a.parquet")
    config = ClassifyConfig(shard_size=3, batch_size=4)
    first = classify(str(data), model_dir, str(data / "out"), config)
    assert first["rows"] == 6
    # the rerun and a run into another folder list `data` again: out/ holds results, not inputs
    again = classify(str(data), model_dir, str(data / "out"), config)
    assert (again["shards_skipped"], again["rows"]) == (first["shards_done"], 0)
    other = classify(str(data), model_dir, str(tmp_path / "other"), config)
    assert other["rows"] == 6 and read_output(tmp_path / "other").num_rows == 6
    with pytest.raises(ValueError, match="is the input folder itself"):
        classify(str(data), model_dir, f"{data}/../data/", config)
