"""Where results go: local folders or object stores (s3://, gs://, ...), seen through pyarrow."""

from __future__ import annotations

import json
import logging
import os
import posixpath
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

if TYPE_CHECKING:
    import pyarrow.fs

logger = logging.getLogger(__name__)

# A scheme followed by "://"; a Windows drive (C:\) or a name with a colon is no URI.
_URI = re.compile(r"^(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*)://")


def _scheme(uri: str) -> str | None:
    match = _URI.match(uri)
    return match["scheme"].lower() if match else None


def is_remote(uri: str) -> bool:
    """True for URIs with a scheme other than file:// (s3://, gs://, abfs://, hdfs://, ...)."""
    return _scheme(uri) not in (None, "file")


def _local_path(path: str) -> str:
    if _scheme(path) == "file":
        path = unquote(urlsplit(path).path)
    return os.path.abspath(os.path.expanduser(path))


def resolve_storage_path(out: str) -> str:
    """A URI unchanged, a local path (or file:// URI) made absolute: for RunConfig(storage_path=).

    Ray Train resolves relative paths against the worker's cwd, not the caller's, so they
    must be made absolute here.
    """
    return out if is_remote(out) else _local_path(out)


_FS_CACHE: dict[str, tuple[pyarrow.fs.FileSystem, str]] = {}


def get_filesystem(uri: str) -> tuple[pyarrow.fs.FileSystem, str]:
    """The pyarrow filesystem for `uri` and the path within it; local paths become absolute.

    Object-store URIs go through pyarrow.fs.FileSystem.from_uri, which may contact the store
    (for instance to find an S3 bucket's region): that is done once per bucket and process,
    since readers call this for every file. Local paths never contact anything.
    """
    import pyarrow.fs

    if not is_remote(uri):
        return pyarrow.fs.LocalFileSystem(), _local_path(uri)
    scheme, _, rest = uri.partition("://")
    root = f"{scheme}://{rest.split('/', 1)[0]}"
    cached = _FS_CACHE.get(root)
    if cached is not None and uri.startswith(cached[1]):
        return cached[0], uri[len(cached[1]) :]
    fs, path = pyarrow.fs.FileSystem.from_uri(uri)
    if path and uri.endswith(path):
        _FS_CACHE[root] = (fs, uri[: len(uri) - len(path)])
    return fs, path


def join(base: str, *names: str) -> str:
    """`base`/name/...: for URIs and local paths alike."""
    return "/".join([base.rstrip("/"), *names])


def with_scheme(path: str, like: str) -> str:
    """A path within the filesystem of the URI `like`, as a URI; local paths as they are.

    Ray reports checkpoint paths within their filesystem ("bucket/key" for s3://bucket/key).
    """
    if not is_remote(like) or is_remote(path):
        return path
    _, fs_path = get_filesystem(like)
    like = like.rstrip("/")
    fs_path = fs_path.rstrip("/")
    prefix = like[: len(like) - len(fs_path)] if like.endswith(fs_path) else ""
    return (prefix or f"{_scheme(like)}://") + path


def is_file(uri: str) -> bool:
    import pyarrow.fs

    fs, path = get_filesystem(uri)
    return fs.get_file_info(path).type == pyarrow.fs.FileType.File


def is_dir(uri: str) -> bool:
    """True for a folder; on object stores, for a prefix that holds objects."""
    import pyarrow.fs

    fs, path = get_filesystem(uri)
    return fs.get_file_info(path).type == pyarrow.fs.FileType.Directory


def read_bytes(uri: str) -> bytes | None:
    """The whole file at `uri`; None where there is none."""
    if not is_file(uri):
        return None
    fs, path = get_filesystem(uri)
    with fs.open_input_stream(path) as stream:
        return stream.read()


def write_bytes(uri: str, data: bytes) -> None:
    """Write a whole file, creating its folder.

    One write of bytes already in memory: pyarrow completes an object-store upload whenever
    the stream closes, even after an error, so a file written piecemeal could be left there
    cut short.
    """
    fs, path = get_filesystem(uri)
    fs.create_dir(posixpath.dirname(path), recursive=True)
    with fs.open_output_stream(path) as stream:
        stream.write(data)


def read_json(uri: str) -> Any:
    """The JSON file at `uri`, parsed; None where there is none."""
    data = read_bytes(uri)
    return None if data is None else json.loads(data)


def write_json(uri: str, value: Any, indent: int | None = 2) -> None:
    """`value` as a JSON file (values JSON lacks, such as paths, as strings), in one write."""
    write_bytes(uri, json.dumps(value, indent=indent, default=str).encode())


def append_text(uri: str, text: str) -> None:
    """Append to a small text file; object stores have no append, so there it is rewritten."""
    if not is_remote(uri):
        path = _local_path(uri)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "a") as f:
            f.write(text)
        return
    write_bytes(uri, (read_bytes(uri) or b"") + text.encode())


def copy_dir(source: str, target: str, last: str | None = None, skip: tuple[str, ...] = ()) -> None:
    """Copy every file under `source` to `target` (local paths or URIs), `last` last, except
    what lies under the top-level names in `skip`.

    Object stores have no rename: a reader that finds `last` (a model's config.json) finds
    every other file too.
    """
    import pyarrow.fs

    src_fs, src = get_filesystem(source)
    src = src.rstrip("/")
    selector = pyarrow.fs.FileSelector(src, recursive=True)
    files = sorted(
        i.path
        for i in src_fs.get_file_info(selector)
        if i.is_file and i.path[len(src) + 1 :].split("/", 1)[0] not in skip
    )
    files.sort(key=lambda p: p == f"{src}/{last}")
    for path in files:
        with src_fs.open_input_stream(path) as stream:
            write_bytes(join(target, path[len(src) + 1 :]), stream.read())


@contextmanager
def local_copy(uri: str) -> Iterator[str]:
    """A local folder with the files of `uri`: the path itself when local, else a copy in a
    temporary folder that is deleted on leaving the block (load the model inside it: a
    model directory on an object store would otherwise leave a copy per actor on every node).
    """
    if not is_remote(uri):
        yield uri
        return
    import pyarrow.fs

    fs, path = get_filesystem(uri)
    with tempfile.TemporaryDirectory(prefix="raycls-model-") as local:
        pyarrow.fs.copy_files(path, local, source_filesystem=fs)
        logger.info("copied %s to %s", uri, local)
        yield local
