"""Shards, the unit of parallel reading: planned on the driver (`raycls.io.inputs.plan_shards`),
read in Ray tasks by `read_shard` into a table of rows. No Ray import here.

Paths are plain local paths or URIs (s3://, gs://, file://) resolved through pyarrow filesystems.
"""

from __future__ import annotations

import json
import logging
import os
import tarfile
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from raycls.io.images import IMAGE_EXTENSIONS
from raycls.io.storage import get_filesystem, is_uri, resolve_ref

logger = logging.getLogger(__name__)

KINDS = ("files", "parquet", "tar")
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
TAR_TEXT_EXTENSIONS = ("txt", "caption", "text")
TAR_LABEL_EXTENSIONS = ("cls", "label")


@dataclass(frozen=True)
class Shard:
    """What one read task covers.

    `paths` holds the image files of a "files" shard, or the one file of a "parquet" or "tar"
    shard; `row_groups` the Parquet row groups; `texts` per-file text joined at planning.
    """

    index: int
    kind: str
    paths: tuple[str, ...]
    row_groups: tuple[int, ...] = ()
    num_rows: int | None = None
    texts: tuple[str | None, ...] | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"shard kind {self.kind!r} is not valid; choose one of: {KINDS}")
        if self.kind != "files" and len(self.paths) != 1:
            raise ValueError(f"a {self.kind} shard covers exactly one file, got {self.paths}")
        if self.texts is not None and len(self.texts) != len(self.paths):
            raise ValueError(
                f"shard {self.index}: {len(self.texts)} texts for {len(self.paths)} files"
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (lists, no tuples), to cross into Ray or JSON."""
        return {
            "index": self.index,
            "kind": self.kind,
            "paths": list(self.paths),
            "row_groups": list(self.row_groups),
            "num_rows": self.num_rows,
            "texts": None if self.texts is None else list(self.texts),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Shard:
        texts = data.get("texts")
        return cls(
            index=int(data["index"]),
            kind=data["kind"],
            paths=tuple(data["paths"]),
            row_groups=tuple(int(g) for g in data.get("row_groups") or ()),
            num_rows=data.get("num_rows"),
            texts=None if texts is None else tuple(texts),
        )


def split_shard(shard: Shard, rows: int) -> list[dict[str, Any]]:
    """Read tasks for `shard`: a "files" shard in slices of at most `rows` files, so that
    several actors share one shard and finish it together; other shards whole.

    Each task is the slice's `Shard.to_dict()` plus `start` (its first row within the shard)
    and `shard_rows` (the shard's row count; None where only reading the file tells).
    """
    if shard.kind != "files" or len(shard.paths) <= rows:
        return [{**shard.to_dict(), "start": 0, "shard_rows": shard.num_rows}]
    n = len(shard.paths)
    tasks = []
    for start in range(0, n, rows):
        stop = min(start + rows, n)
        texts = None if shard.texts is None else shard.texts[start:stop]
        piece = Shard(shard.index, "files", shard.paths[start:stop], num_rows=stop - start,
                      texts=texts)  # fmt: skip
        tasks.append({**piece.to_dict(), "start": start, "shard_rows": n})
    return tasks


def _try_read(uri: str) -> tuple[bytes | None, str | None]:
    """The file's bytes, or None and the reason: one unreadable file must not stop a shard."""
    try:
        fs, path = get_filesystem(uri)
        with fs.open_input_file(path) as f:
            return f.read(), None
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


def read_shard(
    shard: Shard | dict[str, Any],
    *,
    image_column: str = "image",
    text_column: str | None = "text",
    label_column: str | None = None,
    id_column: str | None = None,
    labeled_root: str | None = None,
) -> pa.Table:
    """Read one shard into rows with columns key, shard, image, text, label, error.

    A bad row (missing or unreadable file, tar sample without an image) gets a null `image`
    and a message in `error`. A file whose rows cannot be enumerated (unreadable Parquet,
    corrupt tar, missing image/label/id column) raises ValueError naming the file.

    Args:
        text_column: Parquet column, or tar member extension / JSON field, holding text.
        label_column: Parquet column, or tar member extension / JSON field, holding the label.
        id_column: Parquet column used as `key` (default: "file.parquet#row").
        labeled_root: for "files" shards, the ImageFolder root: label = first folder below it.
    """
    if not isinstance(shard, Shard):
        shard = Shard.from_dict(shard)
    if shard.kind == "files":
        cols = _read_files(shard, labeled_root)
    elif shard.kind == "parquet":
        cols = _read_parquet(shard, image_column, text_column, label_column, id_column)
    else:
        cols = _read_tar(shard, text_column, label_column)
    cols["shard"] = [shard.index] * len(cols["key"])
    return pa.Table.from_pydict(cols, schema=ROW_SCHEMA)


def _read_files(shard: Shard, labeled_root: str | None) -> dict[str, list]:
    images, errors, labels = [], [], []
    for uri in shard.paths:
        image, error = _try_read(uri)
        images.append(image)
        errors.append(error)
        rel = relative_to(uri, labeled_root) if labeled_root else None
        labels.append(rel.split("/", 1)[0] if rel and "/" in rel else None)
    texts = list(shard.texts) if shard.texts is not None else [None] * len(shard.paths)
    return {
        "key": list(shard.paths),
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
) -> dict[str, list]:
    uri = shard.paths[0]
    fs, path = get_filesystem(uri)
    columns = (image_column, text_column, label_column, id_column)
    try:
        with pq.ParquetFile(path, filesystem=fs) as pf:
            names = pf.schema_arrow.names
            wanted = list(dict.fromkeys(c for c in columns if c in names))
            table = pf.read_row_groups(list(shard.row_groups), columns=wanted)
            sizes = [pf.metadata.row_group(g).num_rows for g in range(pf.metadata.num_row_groups)]
    except Exception as e:
        raise ValueError(f"cannot read Parquet file {uri}: {type(e).__name__}: {e}") from e
    roles = {"image_column": image_column, "label_column": label_column, "id_column": id_column}
    check_columns(uri, names, roles)
    rows = [sum(sizes[:g]) + i for g in shard.row_groups for i in range(sizes[g])]
    ids = _strings(table, id_column) if id_column else [None] * table.num_rows
    keys = [f"{uri}#{r}" if k is None else k for k, r in zip(ids, rows, strict=True)]
    images, errors = _parquet_images(table.column(image_column), uri)
    text = _strings(table, text_column) if text_column in names else [None] * table.num_rows
    label = _strings(table, label_column) if label_column else [None] * table.num_rows
    return {"key": keys, "image": images, "text": text, "label": label, "error": errors}


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


def _strings(table: pa.Table, column: str) -> list[str | None]:
    return table.column(column).cast(pa.string()).to_pylist()


def _parquet_images(column: pa.ChunkedArray, uri: str) -> tuple[list, list]:
    """Binary bytes, Hugging Face {bytes, path} structs, or paths relative to the file."""
    kind = column.type
    if pa.types.is_struct(kind) and kind.get_field_index("bytes") >= 0:
        column = pc.struct_field(column, "bytes")
        kind = column.type
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        images = column.to_pylist()
        return images, [None if b is not None else "image is null" for b in images]
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        images, errors = [], []
        for ref in column.to_pylist():
            if ref is None:
                images.append(None)
                errors.append("image path is null")
                continue
            image, error = _try_read(resolve_ref(ref, uri))
            images.append(image)
            errors.append(error)
        return images, errors
    raise ValueError(
        f"image column of {uri} has type {kind}; expected binary bytes, a {{bytes, path}} struct "
        "or string paths"
    )


def _read_tar(shard: Shard, text_column: str | None, label_column: str | None) -> dict[str, list]:
    uri = shard.paths[0]
    samples: dict[str, dict[str, bytes]] = {}
    try:
        fs, path = get_filesystem(uri)
        with fs.open_input_stream(path) as f, tarfile.open(fileobj=f, mode="r|*") as tar:
            for member in tar:
                dirname, _, base = member.name.rpartition("/")
                stem, dot, ext = base.partition(".")
                if not member.isfile() or not dot or not stem:
                    continue  # WebDataset keys need a name and an extension; ._x are hidden
                key = f"{dirname}/{stem}" if dirname else stem
                samples.setdefault(key, {})[ext.lower()] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as e:
        raise ValueError(f"cannot read tar shard {uri}: {type(e).__name__}: {e}") from e
    cols: dict[str, list] = {"key": [], "image": [], "text": [], "label": [], "error": []}
    for key, members in samples.items():
        image = next(
            (d for ext, d in members.items() if "." + ext.rsplit(".", 1)[-1] in IMAGE_EXTENSIONS),
            None,
        )
        meta = _tar_json(members)
        cols["key"].append(f"{uri}#{key}")
        cols["image"].append(image)
        cols["error"].append(
            None
            if image is not None
            else f"no image member in tar sample {key} ({sorted(members)})"
        )
        text_exts = (text_column, *TAR_TEXT_EXTENSIONS)
        cols["text"].append(
            _tar_field(members, meta, text_exts, (text_column, "text", "caption"))
            if text_column
            else None
        )
        cols["label"].append(
            _tar_field(members, meta, (label_column, *TAR_LABEL_EXTENSIONS), (label_column,))
            if label_column
            else None
        )
    return cols


def _tar_json(members: dict[str, bytes]) -> dict[str, Any]:
    try:
        meta = json.loads(members["json"]) if "json" in members else {}
    except ValueError:
        return {}
    return meta if isinstance(meta, dict) else {}


def _tar_field(
    members: dict[str, bytes], meta: dict[str, Any], exts: tuple, keys: tuple
) -> str | None:
    for ext in exts:
        if ext in members:
            return members[ext].decode("utf-8", errors="replace").strip()
    for key in keys:
        if meta.get(key) is not None:
            return str(meta[key])
    return None
