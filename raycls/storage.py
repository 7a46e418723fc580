"""Where results go: local folders or object stores (s3://, gs://, ...), seen through pyarrow."""

from __future__ import annotations

import logging
import os
import re
from typing import TYPE_CHECKING
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


def warn_if_local_on_multinode(out: str) -> None:
    """Warn when `out` is a local path and the connected Ray cluster has several nodes."""
    if is_remote(out):
        return
    import ray

    from raycls import runtime

    if not ray.is_initialized() or not runtime.cluster_is_multinode():
        return
    logger.warning(
        "Output %r is a local path but the Ray cluster has several nodes: each node would "
        "write its share to its own disk. Use storage every node can reach, e.g. "
        "s3://bucket/prefix or gs://bucket/prefix, or a folder on a shared filesystem (NFS) "
        "mounted at the same path on every node.",
        out,
    )
