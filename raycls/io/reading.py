"""Reading one shard (`raycls.io.shards.Shard`) into a table of rows (ROW_SCHEMA): image files,
Parquet row groups or a streamed tar, with one error row per unreadable image. No Ray import.

Paths are plain local paths or URIs (s3://, gs://, file://) resolved through pyarrow filesystems.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from raycls.config import DEFAULT_MAX_FILE_BYTES
from raycls.io.retry import TransientReadError, with_retries
from raycls.io.shards import Shard
from raycls.io.storage import get_filesystem, is_remote, is_uri, resolve_ref
from raycls.io.tars import iter_tar
from raycls.io.training_columns import (
    TRAINING_COLUMNS,
    named_columns,
    read_flags,
    read_weights,
    setting_names,
)

ROW_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("shard", pa.int32()),
        ("image", pa.binary()),
        ("text", pa.string()),
        ("label", pa.string()),
        ("error", pa.string()),
    ]
)


def row_schema(extra: dict[str, str] | None = None) -> pa.Schema:
    """ROW_SCHEMA plus the training columns named in `extra` (row name -> Parquet column)."""
    schema = ROW_SCHEMA
    for name in extra or ():
        schema = schema.append(pa.field(name, TRAINING_COLUMNS[name][0]))
    return schema


def printable(path: str) -> str:
    """`path` as valid UTF-8 text: bytes of a non-UTF-8 file name as \\xNN escapes."""
    try:
        return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        return path.encode("utf-8", "backslashreplace").decode("utf-8")


def _try_read(uri: str, max_file_bytes: int) -> tuple[bytes | None, str | None]:
    """The file's bytes, or None and the reason: one unreadable file must not stop a shard.

    Transient storage errors are retried; if they persist, TransientReadError is raised (the
    shard fails and a rerun retries it): they say nothing about the file.
    """
    if printable(uri) != uri:
        return None, f"file name is not valid UTF-8: {printable(uri)!r}; rename the file"

    def read() -> tuple[bytes | None, str | None]:
        fs, path = get_filesystem(uri)
        if not is_remote(uri) and not stat.S_ISREG(os.stat(path).st_mode):
            # a FIFO (named in a list) would block the read forever; a device reads as empty
            return None, f"{uri} is not a regular file (a pipe, socket or device)"
        with fs.open_input_file(path) as f:
            size = f.size()
            if size > max_file_bytes:
                return None, (
                    f"{uri} is {size} bytes, over classify.max_file_bytes={max_file_bytes}; "
                    "raise it to read this file"
                )
            return f.read(), None

    try:
        return with_retries(read, uri)
    except TransientReadError:
        raise
    except Exception as e:
        return None, f"cannot read {uri}: {type(e).__name__}: {e}"


def relative_to(path: str, root: str) -> str | None:
    """`path` relative to the folder `root` ("/"-separated), or None when outside it."""
    if not is_uri(root):
        root = os.path.abspath(root)
    if not is_uri(path):
        path = os.path.abspath(path)
    root = root.rstrip("/") + "/"
    return path[len(root) :] if path.startswith(root) else None


def read_shard(shard: Shard | dict[str, Any], **kwargs: Any) -> pa.Table:
    """Read one shard into rows with columns key, shard, image, text, label, error (and
    weight, strong_augment when their columns are named).

    A bad row (missing, unreadable or too big a file, tar sample without an image) gets a
    null `image` and a message in `error`. A file whose rows cannot be enumerated (unreadable
    Parquet, corrupt tar, missing image/label/id column) raises ValueError naming the file;
    storage errors that persist through retries raise TransientReadError. Arguments: as
    `iter_shard`.
    """
    tables = list(iter_shard(shard, **kwargs))
    return pa.concat_tables(tables) if tables else row_schema(named_columns(**kwargs)).empty_table()


def iter_shard(
    shard: Shard | dict[str, Any],
    *,
    image_column: str = "image",
    text_column: str | None = "text",
    label_column: str | None = None,
    id_column: str | None = None,
    labeled_root: str | None = None,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    chunk_rows: int = 256,
    weight_column: str | None = None,
    strong_augment_column: str | None = None,
) -> Iterator[pa.Table]:
    """The rows of one shard (see `read_shard`) as tables, in order: a tar shard is streamed
    `chunk_rows` samples at a time, other shards come whole (they are bounded by planning).

    Args:
        text_column: Parquet column, or tar member extension / JSON field, holding text.
        label_column: Parquet column, or tar member extension / JSON field, holding the label.
        id_column: Parquet column used as `key` (default: "file.parquet#row").
        labeled_root: for "files" shards, the ImageFolder root: label = first folder below it.
        max_file_bytes: bigger image files and tar members become error rows.
        weight_column: Parquet column read as `weight` (see `read_weights`).
        strong_augment_column: Parquet column read as `strong_augment` (null: False). Other
            shards get the null values of both (training refuses them on the driver).
    """
    if not isinstance(shard, Shard):
        shard = Shard.from_dict(shard)
    extra = named_columns(weight_column, strong_augment_column)
    schema = row_schema(extra)
    if shard.kind == "files":
        parts = [_read_files(shard, labeled_root, max_file_bytes)]
    elif shard.kind == "parquet":
        parts = [_read_parquet(shard, image_column, text_column, label_column, id_column,
                               max_file_bytes, extra)]  # fmt: skip
    else:
        parts = iter_tar(shard.paths[0], text_column=text_column, label_column=label_column,
                         max_file_bytes=max_file_bytes, chunk_rows=chunk_rows)  # fmt: skip
    for cols in parts:
        cols["shard"] = [shard.index] * len(cols["key"])
        for name in extra:
            cols.setdefault(name, [TRAINING_COLUMNS[name][1]] * len(cols["key"]))
        yield pa.Table.from_pydict(cols, schema=schema)


def _read_files(shard: Shard, labeled_root: str | None, max_file_bytes: int) -> dict[str, list]:
    images, errors, labels = [], [], []
    for uri in shard.paths:
        image, error = _try_read(uri, max_file_bytes)
        images.append(image)
        errors.append(error)
        rel = relative_to(uri, labeled_root) if labeled_root else None
        labels.append(printable(rel.split("/", 1)[0]) if rel and "/" in rel else None)
    texts = list(shard.texts) if shard.texts is not None else [None] * len(shard.paths)
    return {
        "key": [printable(p) for p in shard.paths],
        "image": images,
        "text": texts,
        "label": labels,
        "error": errors,
    }


def _read_parquet(
    shard: Shard,
    image_column: str,
    text_column: str | None,
    label_column: str | None,
    id_column: str | None,
    max_file_bytes: int,
    extra: dict[str, str],
) -> dict[str, list]:
    uri = shard.paths[0]
    columns = (image_column, text_column, label_column, id_column, *extra.values())

    def read() -> tuple[list[str], pa.Table, list[int]]:
        fs, path = get_filesystem(uri)
        with pq.ParquetFile(path, filesystem=fs) as pf:
            names = pf.schema_arrow.names
            wanted = list(dict.fromkeys(c for c in columns if c in names))
            table = pf.read_row_groups(list(shard.row_groups), columns=wanted)
            meta = pf.metadata
            return names, table, [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]

    try:
        names, table, sizes = with_retries(read, uri)
    except TransientReadError:
        raise
    except Exception as e:
        raise ValueError(f"cannot read Parquet file {uri}: {type(e).__name__}: {e}") from e
    roles = {"image_column": image_column, "label_column": label_column, "id_column": id_column}
    check_columns(uri, names, {**roles, **setting_names(extra)})
    rows = _rows(shard, sizes)
    ids = _strings(table, id_column) if id_column else [None] * table.num_rows
    keys = [f"{uri}#{r}" if k is None else k for k, r in zip(ids, rows, strict=True)]
    images, errors = parquet_images(table.column(image_column), uri, max_file_bytes)
    text = _strings(table, text_column) if text_column in names else [None] * table.num_rows
    label = _strings(table, label_column) if label_column else [None] * table.num_rows
    cols = {"key": keys, "image": images, "text": text, "label": label, "error": errors}
    if "weight" in extra:
        cols["weight"] = read_weights(table.column(extra["weight"]), uri, extra["weight"], rows)
    if "strong_augment" in extra:
        cols["strong_augment"] = read_flags(table.column(extra["strong_augment"]), uri,
                                            extra["strong_augment"])  # fmt: skip
    return cols


def check_columns(uri: str, names: list[str], columns: dict[str, str | None]) -> None:
    """Refuse a Parquet file (with column `names`) that lacks a column the settings name.

    Args:
        columns: setting -> the column it names, e.g. {"image_column": "img"}; None: no column.
    """
    for setting, name in columns.items():
        if name is not None and name not in names:
            role = setting.rsplit(".", 1)[-1].removesuffix("_column")
            raise ValueError(
                f"Parquet file {uri} has no {role} column {name!r}; available columns: {names}; "
                f"name the right one with {setting}=..."
            )


def parquet_keys(shard: Shard, id_column: str | None) -> list[str]:
    """The keys of a Parquet shard's rows without reading its images: ids from `id_column`
    or "file#row" where the file still reads, else "file#rgG+i" (G: the shard's first row
    group), unique across the shards of the file either way."""
    uri = shard.paths[0]
    try:
        fs, path = get_filesystem(uri)
        with pq.ParquetFile(path, filesystem=fs) as pf:
            sizes = [pf.metadata.row_group(g).num_rows for g in range(pf.metadata.num_row_groups)]
            rows = _rows(shard, sizes)
            if not id_column:
                return [f"{uri}#{r}" for r in rows]
            table = pf.read_row_groups(list(shard.row_groups), columns=[id_column])
            ids = _strings(table, id_column)
            return [f"{uri}#{r}" if k is None else k for k, r in zip(ids, rows, strict=True)]
    except Exception:
        first = shard.row_groups[0] if shard.row_groups else 0
        return [f"{uri}#rg{first}+{i}" for i in range(shard.num_rows or 0)]


def _rows(shard: Shard, sizes: list[int]) -> list[int]:
    """Row numbers within the file of the shard's row groups."""
    return [sum(sizes[:g]) + i for g in shard.row_groups for i in range(sizes[g])]


def _strings(table: pa.Table, column: str) -> list[str | None]:
    return table.column(column).cast(pa.string()).to_pylist()


def parquet_images(
    column: pa.ChunkedArray, uri: str, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
) -> tuple[list, list]:
    """Binary bytes, Hugging Face {bytes, path} structs, or paths relative to the file."""
    kind = column.type
    if pa.types.is_struct(kind) and kind.get_field_index("bytes") >= 0:
        column = pc.struct_field(column, "bytes")
        kind = column.type
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        images = column.to_pylist()
        errors = [_bytes_error(b, max_file_bytes) for b in images]
        return [b if e is None else None for b, e in zip(images, errors, strict=True)], errors
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        images, errors = [], []
        for ref in column.to_pylist():
            if ref is None:
                images.append(None)
                errors.append("image path is null")
                continue
            image, error = _try_read(resolve_ref(ref, uri), max_file_bytes)
            images.append(image)
            errors.append(error)
        return images, errors
    raise ValueError(
        f"image column of {uri} has type {kind}; expected binary bytes, a {{bytes, path}} struct "
        "or string paths"
    )


def _bytes_error(data: bytes | None, max_file_bytes: int) -> str | None:
    if data is None:
        return "image is null"
    if len(data) > max_file_bytes:
        return f"image is {len(data)} bytes, over classify.max_file_bytes={max_file_bytes}"
    return None
