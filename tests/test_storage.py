"""Storage paths: local vs remote, absolute paths for Ray Train, pyarrow filesystems."""

from __future__ import annotations

import logging
import os

import pyarrow.fs
import pytest

from raycls.io import storage


@pytest.mark.parametrize(
    "uri",
    [
        "s3://bucket/prefix",
        "gs://bucket/x",
        "abfs://container@account/x",
        "hdfs://nn:8020/p",
        "S3://Bucket/k",
    ],
)
def test_uris_with_a_scheme_are_remote(uri):
    assert storage.is_remote(uri)
    assert storage.resolve_storage_path(uri) == uri


@pytest.mark.parametrize(
    "path", ["runs/a", "/tmp/x", "./out", "~/out", "file:///tmp/x", "C:\\data\\out", "a:b"]
)
def test_local_paths_and_file_uris_are_not_remote(path):
    assert not storage.is_remote(path)


def test_resolve_storage_path_makes_local_paths_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert storage.resolve_storage_path("runs/a") == str(tmp_path / "runs" / "a")
    assert storage.resolve_storage_path("file:///tmp/x%20y") == "/tmp/x y"
    assert storage.resolve_storage_path("~/r") == os.path.expanduser("~/r")


def test_get_filesystem_local_round_trip(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fs, path = storage.get_filesystem("out")
    assert isinstance(fs, pyarrow.fs.LocalFileSystem)
    assert path == str(tmp_path / "out")
    fs.create_dir(path)
    with fs.open_output_stream(f"{path}/a.txt") as stream:
        stream.write(b"hi")
    fs2, path2 = storage.get_filesystem(f"file://{tmp_path}/out/a.txt")
    assert isinstance(fs2, pyarrow.fs.LocalFileSystem)
    assert fs2.open_input_stream(path2).read() == b"hi"


def test_warns_only_for_local_paths_on_multinode_clusters(monkeypatch, caplog):
    import ray

    from raycls.cluster import runtime

    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(runtime, "cluster_is_multinode", lambda: True)
    with caplog.at_level(logging.WARNING, logger="raycls.cluster.runtime"):
        runtime.warn_if_local_on_multinode("s3://bucket/out")
        assert not caplog.records
        runtime.warn_if_local_on_multinode("out/preds")
    assert "out/preds" in caplog.text and "s3://" in caplog.text

    caplog.clear()
    monkeypatch.setattr(runtime, "cluster_is_multinode", lambda: False)
    runtime.warn_if_local_on_multinode("out/preds")
    assert not caplog.records


def test_no_warning_without_ray(monkeypatch, caplog):
    import ray

    from raycls.cluster import runtime

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    runtime.warn_if_local_on_multinode("out/preds")
    assert not caplog.records


def test_file_helpers_on_local_paths(tmp_path, monkeypatch):
    target = str(tmp_path / "a" / "b.txt")
    assert storage.read_bytes(target) is None and not storage.is_file(target)
    storage.append_text(target, "1\n")
    storage.append_text(target, "2\n")
    assert storage.read_bytes(target) == b"1\n2\n" and storage.is_dir(str(tmp_path / "a"))
    assert storage.join("s3://b/x/", "y", "z") == "s3://b/x/y/z"
    assert storage.with_scheme("/tmp/a", "/tmp") == "/tmp/a"

    model = tmp_path / "model"
    for name in ("config.json", "model.safetensors", "text/config.json"):
        storage.write_bytes(str(model / name), name.encode())
    written = []
    monkeypatch.setattr(storage, "write_bytes", lambda uri, data: written.append(uri))
    storage.copy_dir(str(model), "s3://b/m", last="config.json")
    assert written[-1] == "s3://b/m/config.json"
    assert sorted(written) == ["s3://b/m/config.json", "s3://b/m/model.safetensors",
                               "s3://b/m/text/config.json"]  # fmt: skip


@pytest.mark.parametrize(
    ("path", "folder", "inside"),
    [
        ("s3://b/out/p.parquet", "s3://b/out", True),
        ("s3://b/out/", "s3://b/out", True),
        ("s3://b/out/../out/x.csv", "s3://b/out/", True),
        ("s3://b/outside.csv", "s3://b/out", False),
        ("gs://b/out/p.csv", "s3://b/out", False),
        ("s3://b/out/p.csv", "out", False),
        ("out/sub/p.csv", "./out", True),
        ("out2/p.csv", "out", False),
    ],
)
def test_is_within(path, folder, inside, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert storage.is_within(path, folder) is inside
