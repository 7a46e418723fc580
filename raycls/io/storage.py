"""Where results go: local folders or object stores (s3://, gs://, ...), seen through pyarrow."""

from __future__ import annotations

import json
import logging
import math
import os
import posixpath
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

if TYPE_CHECKING:
    import pyarrow.fs

logger = logging.getLogger(__name__)

# A scheme followed by "://"; a Windows drive (C:\) or a name with a colon is no URI.
_URI = re.compile(r"^(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*)://")


# Credentials inside URIs: the user part (s3://KEY:SECRET@bucket/...) and query values named
# like secrets (?secret_key=..., a presigned URL's X-Amz-Signature/Credential, Azure's sig).
_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s'\"]+@")
_SECRET_QUERY = re.compile(
    r"(?P<name>[?&](?:[\w.-]*(?:key|secret|token|password|passwd|credential|signature)[\w.-]*"
    r"|sig))=[^&\s'\"#]+",
    re.IGNORECASE,
)
REDACTED = "***"
COPY_CHUNK = 8 << 20  # bytes read at a time when copying a file out of an object store


def redact(text: str) -> str:
    """`text` with every credential inside a URI replaced by ***, for anything recorded.

    s3://KEY:SECRET@bucket/x -> s3://***@bucket/x; https://h/x?sig=abc -> https://h/x?sig=***.
    Works on whole messages (a log line, an entrypoint), not only on a lone URI.
    """
    text = _USERINFO.sub(rf"\g<scheme>{REDACTED}@", text)
    return _SECRET_QUERY.sub(rf"\g<name>={REDACTED}", text)


def has_credentials(text: str) -> bool:
    """True when `text` holds a credential that `redact` would hide."""
    return redact(text) != text


def _scheme(uri: str) -> str | None:
    match = _URI.match(uri)
    return match["scheme"].lower() if match else None


def is_uri(path: str) -> bool:
    """True for anything with a scheme (s3://, gs://, file://, http://); False for plain paths."""
    return _scheme(path) is not None


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


def resolve_ref(ref: str, within: str) -> str:
    """A path or URI `ref` found in the file `within` (a list file, a Parquet column): URIs and
    absolute paths as they are, relative ones against the folder of `within`."""
    if is_uri(ref) or os.path.isabs(ref):
        return ref
    if is_uri(within):
        scheme, _, rest = within.partition("://")
        return f"{scheme}://{posixpath.normpath(posixpath.join(posixpath.dirname(rest), ref))}"
    return os.path.normpath(os.path.join(os.path.dirname(within), ref))


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


def check_output_dir(path: str, what: str = "--out") -> None:
    """Refuse an output folder that is a file, before any work: it would fail at the first
    write, after minutes of it."""
    if is_file(path):
        raise ValueError(f"{what} {path!r} is a file; this command writes a folder there")


def check_output_file(
    path: str, suffixes: Sequence[str], what: str = "--out", outside: str | None = None
) -> None:
    """Refuse an output file whose name does not end in one of `suffixes` (any case), or that
    names a folder: a mistyped --out (a data file, a config, a system file) would otherwise be
    overwritten with a report or a model. With `outside` (a folder the command reads), refuse
    one within it too: a file written there would replace or join what is read."""
    if not path.lower().endswith(tuple(suffixes)):
        raise ValueError(
            f"{what} {path!r} must end in {' or '.join(suffixes)}; this command writes that kind "
            "of file there (and replaces a file of that name)"
        )
    if is_dir(path):
        raise ValueError(f"{what} {path!r} is a folder; name the file to write")
    if outside is not None and is_within(path, outside):
        raise ValueError(
            f"{what} {path!r} is inside {outside!r}, which this command reads; write it elsewhere"
        )


def is_within(path: str, folder: str) -> bool:
    """True when `path` is `folder` or lies inside it: local paths compared with links resolved,
    URIs (same scheme and bucket) by their keys."""
    if is_remote(path) or is_remote(folder):
        if not (is_remote(path) and is_remote(folder)):
            return False
        a, b = (posixpath.normpath(u.partition("://")[2]) for u in (path, folder))
        same_scheme = _scheme(path) == _scheme(folder)
        return same_scheme and (a == b or a.startswith(b.rstrip("/") + "/"))
    a, b = (os.path.realpath(_local_path(p)) for p in (path, folder))
    return a == b or a.startswith(b.rstrip(os.sep) + os.sep)


def read_json(uri: str) -> Any:
    """The JSON file at `uri`, parsed; None where there is none."""
    data = read_bytes(uri)
    return None if data is None else json.loads(data)


def _recordable(value: Any) -> Any:
    """`value` as strict JSON holds it: NaN and infinities as None, URIs' credentials redacted."""
    if isinstance(value, dict):
        return {key: _recordable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_recordable(item) for item in value]
    if hasattr(value, "dtype") and getattr(value, "shape", None) == ():  # numpy, torch scalars
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, str):
        return redact(value)
    return value


def to_json(value: Any, indent: int | None = 2) -> str:
    """The JSON text raycls records: strict (no NaN or Infinity, which strict readers refuse;
    they become null), with credentials inside URIs redacted, other values (paths) as strings."""
    return json.dumps(
        _recordable(value), indent=indent, default=lambda v: redact(str(v)), allow_nan=False
    )


def write_json(uri: str, value: Any, indent: int | None = 2) -> None:
    """`value` as a JSON file (see `to_json`), in one write."""
    write_bytes(uri, to_json(value, indent).encode())


def append_text(uri: str, text: str) -> None:
    """Append to a small text file; object stores have no append, so there it is rewritten."""
    if not is_remote(uri):
        path = _local_path(uri)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "a") as f:
            f.write(text)
        return
    write_bytes(uri, (read_bytes(uri) or b"") + text.encode())


def listed_files(
    fs: pyarrow.fs.FileSystem, root: str, shown: str | None = None, under: str = ""
) -> list[str]:
    """The names ("/"-separated, relative to `root`) of every file under `root` (or only under
    its sub-folder `under`), sorted.

    An object store takes any key: one named `m/bert/../../../etc/x` lists under `m/bert` and,
    copied to a local folder, would be written outside it. A name with an empty, "." or ".."
    part is refused (ValueError naming it and `shown`, the folder as the user gave it), so no
    copy ever leaves its target.
    """
    import pyarrow.fs

    root = root.rstrip("/")
    start = f"{root}/{under}" if under else root
    names = []
    for info in fs.get_file_info(pyarrow.fs.FileSelector(start, recursive=True)):
        if info.is_file:
            name = info.path[len(root) + 1 :]
            if any(part in ("", ".", "..") for part in name.split("/")):
                raise ValueError(
                    f"{redact(shown or root)!r} holds a file named {name!r}, which a copy would "
                    "write outside its folder; refusing to copy from there"
                )
            names.append(name)
    return sorted(names)


def _listed_entries(
    fs: pyarrow.fs.FileSystem, root: str, entries: Sequence[str], shown: str
) -> list[str]:
    """`listed_files` for the files and folders `entries` directly under `root` only (those
    that exist): a model's files, without listing the checkpoints beside them."""
    import pyarrow.fs

    names = []
    for entry in entries:
        kind = fs.get_file_info(f"{root}/{entry}").type
        if kind == pyarrow.fs.FileType.File:
            names.append(entry)
        elif kind == pyarrow.fs.FileType.Directory:
            names += listed_files(fs, root, shown, under=entry)
    return names


def copy_dir(source: str, target: str, last: str | None = None, skip: tuple[str, ...] = ()) -> None:
    """Copy every file under `source` to `target` (local paths or URIs), `last` last, except
    what lies under the top-level names in `skip`.

    Object stores have no rename: a reader that finds `last` (a model's config.json) finds
    every other file too.
    """
    src_fs, src = get_filesystem(source)
    src = src.rstrip("/")
    names = [n for n in listed_files(src_fs, src, source) if n.split("/", 1)[0] not in skip]
    names.sort(key=lambda n: n == last)
    for name in names:
        with src_fs.open_input_stream(f"{src}/{name}") as stream:
            write_bytes(join(target, name), stream.read())


@contextmanager
def local_copy(uri: str, only: Sequence[str] | None = None) -> Iterator[str]:
    """A local folder with the files of `uri`: the path itself when local, else a copy in a
    temporary folder that is deleted on leaving the block (load the model inside it: a
    model directory on an object store would otherwise leave a copy per actor on every node).

    Args:
        only: the files and folders directly under `uri` to copy (those that exist); a
            model's, say, and not the training checkpoints beside them. Default: all.
    """
    if not is_remote(uri):
        yield uri
        return
    fs, path = get_filesystem(uri)
    path = path.rstrip("/")
    names = listed_files(fs, path, uri) if only is None else _listed_entries(fs, path, only, uri)
    with tempfile.TemporaryDirectory(prefix="raycls-model-") as local:
        for name in names:
            target = os.path.join(local, *name.split("/"))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with fs.open_input_stream(f"{path}/{name}") as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst, COPY_CHUNK)
        logger.info("copied %s to %s", uri, local)
        yield local
