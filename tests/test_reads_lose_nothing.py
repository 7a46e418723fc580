"""Reading inputs loses nothing (issue 12): transient storage errors are retried, not turned
into error rows; unreadable shards get unique keys; symlink loops, huge files, gzip bombs and
non-UTF-8 names cannot stop a run; classify actors copy only the model's files. No Ray."""

from __future__ import annotations

import gzip
import io
import json
import logging
import os
import tarfile
import tracemalloc
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from helpers import image_bytes, make_model, no_delays

from raycls.config import ClassifyConfig
from raycls.io import reading as reading_module
from raycls.io.inputs import plan_shards
from raycls.io.reading import read_shard

SLOW_DOWN = "AWS Error SLOW_DOWN during GetObject operation: Please reduce your request rate."


class FlakyFS:
    """The local filesystem, but opening a file fails `failures` times with `error`."""

    def __init__(self, failures: int, error: Exception) -> None:
        self.local, self.failures, self.error, self.opens = (
            pafs.LocalFileSystem(),
            failures,
            error,
            0,
        )

    def open_input_file(self, path):
        self.opens += 1
        if self.opens <= self.failures:
            raise self.error
        return self.local.open_input_file(path)


@pytest.fixture
def no_backoff(monkeypatch):
    no_delays(monkeypatch)


def flaky(monkeypatch, failures: int, error: Exception) -> FlakyFS:
    fs = FlakyFS(failures, error)
    monkeypatch.setattr(reading_module, "get_filesystem", lambda uri: (fs, os.path.abspath(uri)))
    return fs


def one_image(tmp_path: Path) -> str:
    (tmp_path / "a.jpg").write_bytes(image_bytes(0))
    return str(tmp_path / "a.jpg")


# 5: transient errors are retried; if they persist the shard fails, never an error row.


def test_transient_read_errors_are_retried(tmp_path, monkeypatch, no_backoff):
    path = one_image(tmp_path)
    handler = flaky(monkeypatch, 2, OSError(SLOW_DOWN))
    row = read_shard(plan_shards(path)[0]).to_pylist()[0]
    assert row["error"] is None and row["image"] == image_bytes(0)
    assert handler.opens == 3


def test_persistent_transient_errors_fail_the_shard_not_a_row(tmp_path, monkeypatch, no_backoff):
    from raycls.io.retry import ATTEMPTS, TransientReadError

    path = one_image(tmp_path)
    handler = flaky(monkeypatch, 99, ConnectionResetError(104, "Connection reset by peer"))
    with pytest.raises(TransientReadError, match="Connection reset"):
        read_shard(plan_shards(path)[0])
    assert handler.opens == ATTEMPTS


def test_permanent_errors_become_error_rows_at_once(tmp_path, monkeypatch, no_backoff):
    path = one_image(tmp_path)
    handler = flaky(monkeypatch, 99, FileNotFoundError(2, "No such file", path))
    row = read_shard(plan_shards(path)[0]).to_pylist()[0]
    assert row["image"] is None and "FileNotFoundError" in row["error"]
    assert handler.opens == 1


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (OSError(SLOW_DOWN), True),
        (OSError("AWS Error NETWORK_CONNECTION during GetObject operation: curlCode: 7"), True),
        (OSError("AWS Error [code 15]: The provided token has expired. ExpiredToken"), True),
        (TimeoutError("timed out"), True),
        (ConnectionResetError(104, "Connection reset by peer"), True),
        (FileNotFoundError(2, "No such file"), False),
        (OSError("AWS Error ACCESS_DENIED during GetObject operation: Access Denied"), False),
        (ValueError("not an image"), False),
    ],
)
def test_which_errors_are_transient(error, transient):
    from raycls.io.retry import is_transient

    assert is_transient(error) is transient


# 6: an unreadable Parquet shard's error rows have keys unique across shards.


def test_unreadable_parquet_shards_get_unique_keys(tmp_path):
    from raycls.bulk.read import read_shards

    # An int "image" column cannot be read as images: every shard of the file is unreadable.
    table = pa.table({"image": list(range(6)), "uid": [f"u{i}" for i in range(6)]})
    pq.write_table(table, tmp_path / "x.parquet", row_group_size=3)
    shards = plan_shards(str(tmp_path / "x.parquet"), 3)
    assert len(shards) == 2

    def keys(**kwargs) -> list[str]:
        tasks = pa.table({"shard": [json.dumps({**s.to_dict(), "start": 0}) for s in shards]})
        out = pa.concat_tables(read_shards(tasks, **kwargs))
        assert set(out.column("error").to_pylist()) != {None}
        return out.column("key").to_pylist()

    assert keys(id_column="uid") == [f"u{i}" for i in range(6)]
    uri = str(tmp_path / "x.parquet")
    assert keys() == [f"{uri}#{i}" for i in range(6)]
    (tmp_path / "x.parquet").write_bytes(b"not parquet any more")
    found = keys(id_column="uid")
    assert len(set(found)) == 6 and all(k.startswith(uri) for k in found)


# 7: symlink loops: each real file once, loops reported.


def test_symlink_loops_list_each_file_once(tmp_path, caplog):
    root = tmp_path / "imgs"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    (root / "a" / "x.jpg").write_bytes(image_bytes(1))
    (root / "b" / "y.jpg").write_bytes(image_bytes(2))
    (root / "a" / "up").symlink_to("..")
    (root / "b" / "self").symlink_to(".")
    (root / "c").symlink_to("a")
    with caplog.at_level(logging.WARNING, logger="raycls.io.inputs"):
        (shard,) = plan_shards(str(root))
    assert [Path(p).relative_to(root).as_posix() for p in shard.paths] == ["a/x.jpg", "b/y.jpg"]
    assert "reached again through symlinks" in caplog.text


# 8: per-file byte limits; tars streamed member by member, a gzip bomb is an error row.


def test_files_over_the_byte_limit_become_error_rows(tmp_path):
    path = one_image(tmp_path)
    size = os.path.getsize(path)
    row = read_shard(plan_shards(path)[0], max_file_bytes=size - 1).to_pylist()[0]
    assert row["image"] is None and "max_file_bytes" in row["error"] and str(size) in row["error"]
    assert read_shard(plan_shards(path)[0], max_file_bytes=size).to_pylist()[0]["error"] is None
    with pytest.raises(ValueError, match="max_file_bytes"):
        ClassifyConfig(max_file_bytes=0)


def _gzip_tar(path: Path, members: dict[str, bytes | int]) -> None:
    """A gzip-compressed tar (whatever its name); an int member is that many zero bytes."""
    with gzip.open(path, "wb", compresslevel=1) as f, tarfile.open(fileobj=f, mode="w|") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = data if isinstance(data, int) else len(data)
            stream = io.BytesIO(data) if isinstance(data, bytes) else _Zeros(data)
            tar.addfile(info, stream)


class _Zeros(io.RawIOBase):
    def __init__(self, n: int) -> None:
        self.left = n

    def readinto(self, buffer) -> int:
        n = min(len(buffer), self.left)
        buffer[:n] = bytes(n)
        self.left -= n
        return n

    def readable(self) -> bool:
        return True


def test_gzip_bomb_named_tar_gives_error_rows_in_bounded_memory(tmp_path):
    from raycls.io.reading import iter_shard

    bomb = 200 * 2**20
    members: dict[str, bytes | int] = {f"s{i}.jpg": image_bytes(i) for i in range(6)}
    members["s3.jpg"] = bomb
    _gzip_tar(tmp_path / "x.tar", members)
    assert (tmp_path / "x.tar").stat().st_size < bomb // 100
    (shard,) = plan_shards(str(tmp_path / "x.tar"))
    tracemalloc.start()
    try:
        chunks = list(iter_shard(shard, max_file_bytes=2**20, chunk_rows=2))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [c.num_rows for c in chunks] == [2, 2, 2]
    rows = pa.concat_tables(chunks).to_pylist()
    assert [r["key"].rsplit("#", 1)[1] for r in rows] == [f"s{i}" for i in range(6)]
    assert "max_file_bytes" in rows[3]["error"] and rows[3]["image"] is None
    assert all(r["error"] is None for i, r in enumerate(rows) if i != 3)
    assert peak < 20 * 2**20, f"peak {peak} bytes: the tar was not streamed"


# 12: a non-UTF-8 file name is one error row naming the file.


def test_non_utf8_file_name_is_one_error_row(tmp_path):
    root = tmp_path / "imgs"
    root.mkdir()
    (root / "good.jpg").write_bytes(image_bytes(1))
    with open(os.path.join(os.fsencode(root), b"bad\xff.jpg"), "wb") as f:
        f.write(image_bytes(2))
    (shard,) = plan_shards(str(root))
    rows = read_shard(shard).to_pylist()
    assert len(rows) == 2
    bad = next(r for r in rows if r["error"] is not None)
    assert bad["key"].endswith("bad\\xff.jpg") and "bad\\\\xff.jpg" in bad["error"]
    assert "UTF-8" in bad["error"]


# 14: a classify actor copies only the model's files from an object store.


def test_classify_actor_copies_only_the_model_files(s3, tmp_path, monkeypatch):
    from raycls.bulk.stages import ClassifyStage
    from raycls.io import storage

    uri = f"{s3}/copy-only/model"
    storage.copy_dir(make_model(tmp_path), uri)
    storage.write_bytes(f"{uri}/ray_train/checkpoint_000001/optimizer.pt", bytes(2**20))
    storage.write_bytes(f"{uri}/notes.txt", b"left by hand")
    copied: list[str] = []
    real = storage.local_copy

    def spy(*args, **kwargs):
        cm = real(*args, **kwargs)
        folder = cm.__enter__()
        for dirpath, _, files in os.walk(folder):
            copied.extend(os.path.relpath(os.path.join(dirpath, f), folder) for f in files)
        return _Entered(cm, folder)

    monkeypatch.setattr(storage, "local_copy", spy)
    stage = ClassifyStage(uri, top_k=2)
    assert stage.labels.tolist() == ["cat", "dog", "bird"]
    assert "config.json" in copied and "model.safetensors" in copied
    assert any(p.startswith("text_encoder/") for p in copied)
    assert not any(p.startswith("ray_train") or p == "notes.txt" for p in copied)


class _Entered:
    def __init__(self, cm, value) -> None:
        self.cm, self.value = cm, value

    def __enter__(self):
        return self.value

    def __exit__(self, *exc):
        return self.cm.__exit__(*exc)
