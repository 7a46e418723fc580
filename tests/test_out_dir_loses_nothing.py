"""OUT_DIR loses nothing (issue 12): failed shards stay uncommitted for a rerun, error rows can
be redone, one run at a time holds the lock, damaged manifests and parts do not block
recovery, the run identity is complete, mistyped columns fail before Ray, re-delivered rows
are ignored.

The driver's logic runs as in `classify`, with the stages run in this process (`InProcess`
stands in for the Ray Dataset), so no Ray is needed.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from helpers import image_bytes, make_model, no_delays, read_output, result_rows, write_images

from raycls.bulk.output import MANIFEST, OutputDir, ShardCollector, result_schema
from raycls.bulk.sizing import StageNeeds, plan_pools
from raycls.config import ClassifyConfig

CONFIG = ClassifyConfig(shard_size=2, batch_size=2)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    return make_model(tmp_path_factory.mktemp("model"))


def names(table: pa.Table) -> list[str]:
    return table.schema.names


class InProcess:
    """Stands in for `build_dataset`'s Ray Dataset: read -> decode -> classify, here."""

    repeat = False  # deliver every batch twice, as a retried task would

    def __init__(self, shards, model, config, pools=None, redo=None) -> None:
        from raycls.io.shards import split_shard

        self.tasks = [t for s in shards for t in split_shard(s, 2) if s.index not in (redo or {})]
        if redo:
            from raycls.bulk.recovery import redo_tasks

            self.tasks += [
                t for s in shards if s.index in redo for t in redo_tasks(s, redo[s.index], 2)
            ]
        self.config = config
        self.model_dir = model.to_dict() if hasattr(model, "to_dict") else model

    def iter_batches(self, **kwargs):
        from raycls.bulk.read import read_shards
        from raycls.bulk.stages import ClassifyStage, decode_rows

        stage = ClassifyStage(self.model_dir, top_k=2, batch_size=2)
        read = {"image_column": self.config.image_column, "id_column": self.config.id_column,
                "text_column": self.config.text_column}  # fmt: skip
        for task in self.tasks:
            for table in read_shards(pa.table({"shard": [json.dumps(task)]}), **read):
                batch = {
                    c: table.column(c).to_numpy(zero_copy_only=False) for c in table.schema.names
                }
                for decoded in decode_rows(batch, size=32, max_pixels=10**7):
                    for result in stage(decoded):
                        yield result
                        if self.repeat:
                            yield result


@pytest.fixture
def in_process(monkeypatch):
    """classify() with the stages run in this process instead of on Ray."""
    monkeypatch.setattr("raycls.cluster.runtime.init_ray", lambda *a, **k: None)
    monkeypatch.setattr("raycls.bulk.pipeline.warn_if_local_on_multinode", lambda *a: None)
    monkeypatch.setattr("raycls.bulk.pipeline.build_dataset", InProcess)
    pinned = plan_pools([StageNeeds(1, 1.0, 0.0)], 0.0, 0.0)  # no cluster to size pools from
    monkeypatch.setattr("raycls.bulk.pipeline.pool_sizes", lambda config: pinned)
    no_delays(monkeypatch)
    monkeypatch.setattr(InProcess, "repeat", False)
    return InProcess


def _stamps(out: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("part-*.parquet")}


def _classify(images: Path, model_dir: str, out: Path, **kwargs):
    from raycls.bulk.pipeline import classify

    return classify(str(images), model_dir, str(out), kwargs.pop("config", CONFIG), **kwargs)


# 5: a shard whose reads keep failing is not committed; a rerun does it. --retry-errors.


def test_failing_shard_is_left_for_the_rerun(tmp_path, model_dir, in_process, monkeypatch):
    from raycls.io import reading as reading_module

    write_images(tmp_path / "imgs", 6)
    real = reading_module.get_filesystem

    def throttled(uri):
        if uri.endswith("img0003.jpg"):
            raise OSError("AWS Error SLOW_DOWN during GetObject operation: Reduce your rate")
        return real(uri)

    monkeypatch.setattr(reading_module, "get_filesystem", throttled)
    with pytest.raises(RuntimeError, match="1 shard.*not committed.*SLOW_DOWN.*rerun"):
        _classify(tmp_path / "imgs", model_dir, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").glob("part-*")) == [
        "part-000000.parquet",
        "part-000002.parquet",
    ]
    monkeypatch.setattr(reading_module, "get_filesystem", real)
    summary = _classify(tmp_path / "imgs", model_dir, tmp_path / "out")
    assert (summary["shards_done"], summary["shards_skipped"], summary["total_ok"]) == (1, 2, 6)


def test_retry_errors_redoes_only_the_error_rows(tmp_path, model_dir, in_process):
    from raycls.cli import cli

    images = write_images(tmp_path / "imgs", 6)
    images[3].write_bytes(b"not yet an image")  # shard 1, row 1
    images[4].write_bytes(b"")  # shard 2, row 0: stays bad
    out = tmp_path / "out"
    summary = _classify(tmp_path / "imgs", model_dir, out)
    assert summary["total_error"] == 2
    before = _stamps(out)
    images[3].write_bytes(image_bytes(3))
    args = ["classify", str(tmp_path / "imgs"), "--model", model_dir, "--out", str(out),
            "--shard-size", "2", "--batch-size", "2", "--retry-errors"]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    summary, _ = json.JSONDecoder().raw_decode(result.output[result.output.index("{") :])
    assert (summary["rows_retried"], summary["total_ok"], summary["total_error"]) == (2, 5, 1)
    after = _stamps(out)
    assert after["part-000000.parquet"] == before["part-000000.parquet"]
    assert after["part-000001.parquet"] != before["part-000001.parquet"]
    table = read_output(out)
    assert table.column("path").to_pylist() == [str(p) for p in images]
    assert table.column("status").to_pylist() == ["ok"] * 4 + ["error", "ok"]
    with pytest.raises(ValueError, match="drop --overwrite"):
        _classify(tmp_path / "imgs", model_dir, out, overwrite=True, retry_errors=True)


# 9: one run per OUT_DIR.


def _lock(out: Path, **fields) -> None:
    out.mkdir(parents=True, exist_ok=True)
    record = {"run_id": "r1", "host": "elsewhere", "pid": 1, "heartbeat": time.time(), **fields}
    (out / "_lock.json").write_text(json.dumps(record))


def test_a_second_run_fails_fast_and_stale_locks_are_taken_over(tmp_path, model_dir, in_process):
    write_images(tmp_path / "imgs", 2)
    out = tmp_path / "out"
    _lock(out)
    started = time.monotonic()
    with pytest.raises(ValueError, match="in use by another classify run.*r1.*elsewhere"):
        _classify(tmp_path / "imgs", model_dir, out)
    assert time.monotonic() - started < 5 and not (out / MANIFEST).exists()
    _lock(out, heartbeat=time.time() - 3600)  # stopped beating an hour ago
    assert _classify(tmp_path / "imgs", model_dir, out)["total_ok"] == 2
    assert not (out / "_lock.json").exists()
    dead = os.fork()
    if dead == 0:
        os._exit(0)
    os.waitpid(dead, 0)
    _lock(out, host=socket.gethostname(), pid=dead)  # its process is gone
    _classify(tmp_path / "imgs", model_dir, out)

    from raycls.bulk.lock import OutputLock

    folder = OutputDir(str(out))
    with OutputLock(folder.fs, folder.path, folder.uri) as held:
        with pytest.raises(ValueError, match="in use"):
            OutputLock(folder.fs, folder.path, folder.uri).acquire()
        folder.lock = held
        assert held.beat()
        _lock(out, run_id="thief")
        assert not held.beat()
        with pytest.raises(RuntimeError, match="lost the lock"):
            folder.write_shard(9, result_schema("path").empty_table())
    assert not (out / "part-000009.parquet").exists()


def test_the_lock_works_on_an_object_store(s3, monkeypatch):
    from raycls.bulk.lock import OutputLock

    monkeypatch.setattr("raycls.bulk.lock.SETTLE_S", 0.05)
    folder = OutputDir(f"{s3}/locked-out")
    with OutputLock(folder.fs, folder.path, folder.uri):
        with pytest.raises(ValueError, match="in use by another classify run"):
            OutputLock(folder.fs, folder.path, folder.uri).acquire()
    with OutputLock(folder.fs, folder.path, folder.uri):  # released: free again
        pass


# 10: damaged manifests and part files.


def test_damaged_manifest_and_parts_do_not_block_recovery(tmp_path, model_dir, in_process):
    images = write_images(tmp_path / "imgs", 6)
    out = tmp_path / "out"
    _classify(tmp_path / "imgs", model_dir, out)
    (out / "part-000001.parquet").write_bytes(b"")  # committed, then lost in a power cut
    pq.write_table(
        pq.read_table(out / "part-000002.parquet").slice(0, 1), out / "part-000002.parquet"
    )
    summary = _classify(tmp_path / "imgs", model_dir, out)
    assert (summary["shards_done"], summary["shards_skipped"], summary["total_rows"]) == (2, 1, 6)
    assert read_output(out).column("path").to_pylist() == [str(p) for p in images]

    (out / MANIFEST).write_text('{"identity": {"input": ')
    with pytest.raises(ValueError, match="damaged.*--overwrite"):
        _classify(tmp_path / "imgs", model_dir, out)
    assert _classify(tmp_path / "imgs", model_dir, out, overwrite=True)["shards_done"] == 3


def test_local_commits_are_fsynced(tmp_path, monkeypatch):
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd) or real(fd))
    OutputDir(str(tmp_path)).write_shard(0, result_schema("path").empty_table())
    assert len(synced) >= 2  # the file, then the folder that names it


# 11: the run identity.


def test_caption_image_size_is_part_of_the_run_identity(tmp_path, model_dir):
    from raycls.bulk.pipeline import _manifest
    from raycls.io.inputs import plan_shards

    write_images(tmp_path / "imgs", 2)
    shards = plan_shards(str(tmp_path / "imgs"))

    def identity(**settings) -> dict:
        return _manifest(str(tmp_path / "imgs"), model_dir, shards, ClassifyConfig(**settings))[
            "identity"
        ]

    assert identity(captioner="cap", caption_image_size=384) != identity(
        captioner="cap", caption_image_size=224
    )
    assert identity(caption_image_size=384) == identity(caption_image_size=224)  # no captioner


# 12 end to end: a non-UTF-8 name does not stop the run.


def test_non_utf8_file_name_does_not_stop_the_run(tmp_path, model_dir, in_process):
    images = write_images(tmp_path / "imgs", 3)
    with open(os.path.join(os.fsencode(tmp_path / "imgs"), b"odd\xe9.jpg"), "wb") as f:
        f.write(image_bytes(9))
    summary = _classify(tmp_path / "imgs", model_dir, tmp_path / "out")
    assert (summary["total_ok"], summary["total_error"]) == (len(images), 1)
    errors = [r for r in read_output(tmp_path / "out").to_pylist() if r["status"] == "error"]
    assert "odd\\\\xe9.jpg" in errors[0]["error"]


# 13: mistyped Parquet columns fail before Ray starts and before OUT_DIR is touched.


@pytest.mark.parametrize("setting", [{"image_column": "img"}, {"id_column": "uid"}])
def test_mistyped_parquet_columns_fail_before_ray(tmp_path, model_dir, in_process, monkeypatch,
                                                  setting):  # fmt: skip
    def no_ray(*args, **kwargs):
        raise AssertionError("Ray started")

    monkeypatch.setattr("raycls.cluster.runtime.init_ray", no_ray)
    pq.write_table(pa.table({"image": [image_bytes(0)], "id": ["a"]}), tmp_path / "x.parquet")
    config = ClassifyConfig(**setting)
    wrong = next(iter(setting.values()))
    with pytest.raises(ValueError, match=rf"x.parquet has no .*'{wrong}'.*\['image', 'id'\]"):
        _classify(tmp_path / "x.parquet", model_dir, tmp_path / "out", config=config)
    assert not (tmp_path / "out" / MANIFEST).exists()


# 17: rows re-delivered after their shard was committed are ignored.


def test_collector_ignores_rows_redelivered_after_commit():
    collector = ShardCollector(result_schema("path"), "m")
    assert [i for i, _ in collector.add(result_rows(0, [0, 1], 2))] == [0]
    assert collector.add(result_rows(0, [0], 2)) == [] and collector.in_flight == 0
    assert collector.add(result_rows(0, [1, 0], 2)) == [] and collector.in_flight == 0
    # A streamed shard (count not known until its last rows) completes once it is known.
    assert collector.add(result_rows(1, [0, 1], 0)) == [] and collector.in_flight == 1
    done = collector.add(result_rows(1, [2], 3))
    assert [i for i, _ in done] == [1] and done[0][1].num_rows == 3


def test_redelivered_batches_commit_each_shard_once(tmp_path, model_dir, in_process, monkeypatch):
    monkeypatch.setattr(in_process, "repeat", True)
    images = write_images(tmp_path / "imgs", 5)
    summary = _classify(tmp_path / "imgs", model_dir, tmp_path / "out")
    assert summary["total_ok"] == 5
    keys = read_output(tmp_path / "out").column("path").to_pylist()
    assert keys == [str(p) for p in images]


@pytest.mark.integration
def test_retry_errors_on_ray(ray_local, tmp_path, model_dir):
    """Redo read tasks through the real pipeline: a shard of image files (only the error
    rows' files are read) and a Parquet shard (read whole, then filtered)."""
    from raycls.bulk.pipeline import classify

    config = ClassifyConfig(shard_size=2, batch_size=2)
    images = write_images(tmp_path / "imgs", 4)
    images[2].write_bytes(b"")
    classify(str(tmp_path / "imgs"), model_dir, str(tmp_path / "out1"), config)
    images[2].write_bytes(image_bytes(2))
    summary = classify(str(tmp_path / "imgs"), model_dir, str(tmp_path / "out1"), config,
                       retry_errors=True)  # fmt: skip
    assert (summary["rows_retried"], summary["total_ok"], summary["total_error"]) == (1, 4, 0)
    assert read_output(tmp_path / "out1").column("path").to_pylist() == [str(p) for p in images]

    rows = {"image": [image_bytes(0), b"", image_bytes(2)], "id": ["a", "b", "c"]}
    pq.write_table(pa.table(rows), tmp_path / "x.parquet")
    config = ClassifyConfig(shard_size=3, batch_size=2, id_column="id")
    classify(str(tmp_path / "x.parquet"), model_dir, str(tmp_path / "out2"), config)
    summary = classify(str(tmp_path / "x.parquet"), model_dir, str(tmp_path / "out2"), config,
                       retry_errors=True)  # fmt: skip
    assert (summary["rows_retried"], summary["total_ok"], summary["total_error"]) == (1, 2, 1)
    assert read_output(tmp_path / "out2").column("id").to_pylist() == ["a", "b", "c"]
