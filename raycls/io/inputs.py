"""Where data enters: list inputs, plan deterministic shards, read them into Ray Data.

Inputs: a folder of images (recursive; ImageFolder for training, see `raycls.io.labeled`), a
.txt/.lst list of image paths, Parquet files, or WebDataset .tar files; local paths or URIs
(s3://, gs://). Planning runs on the driver and only lists and reads metadata; the bytes are
read by `read_shard` in Ray tasks (`shard_dataset`). Ray is imported only inside
`shard_dataset`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import posixpath
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from raycls.io.images import IMAGE_EXTENSIONS
from raycls.io.reading import ROW_SCHEMA, check_columns, read_shard
from raycls.io.shards import Shard, runs_of
from raycls.io.storage import get_filesystem, is_uri, resolve_ref

if TYPE_CHECKING:
    import ray.data

__all__ = [
    "ROW_SCHEMA",
    "Shard",
    "check_parquet_columns",
    "plan_shards",
    "read_shard",
    "shard_dataset",
]

logger = logging.getLogger(__name__)

LIST_EXTENSIONS = (".txt", ".lst")
PARQUET_EXTENSIONS = (".parquet", ".pq")
TAR_EXTENSIONS = (".tar",)
METADATA_FILE = "metadata.parquet"
# The file that marks a classify output folder (raycls.bulk.output.MANIFEST).
OUTPUT_MARKER = "_manifest.json"
# The smallest shard `min_shards` cuts a small input into: about one classify batch.
MIN_SHARD_ROWS = 64
LOOKED_FOR = (
    f"a folder of images ({' '.join(IMAGE_EXTENSIONS)}), a .txt/.lst list of image paths, "
    "a Parquet file or folder, or a WebDataset .tar file or folder"
)


def require_input(source: str) -> tuple[pafs.FileSystem, str, pafs.FileInfo]:
    """The filesystem, path and file info of `source`; ValueError naming it if it is missing."""
    fs, base = get_filesystem(source)
    info = fs.get_file_info(base)
    if info.type == pafs.FileType.NotFound:
        raise ValueError(f"input {source!r} does not exist; expected {LOOKED_FOR}")
    return fs, base, info


def plan_shards(
    source: str,
    shard_size: int = 1000,
    *,
    text_column: str | None = "text",
    min_shards: int = 1,
) -> list[Shard]:
    """List `source` and group its rows into shards of about `shard_size` rows, in sorted order.

    A folder with images is read as images (a `metadata.parquet` at its root adds text by
    relative `path`); otherwise its Parquet or .tar files. Parquet shards are whole row groups;
    a tar file is one shard. Names starting with "." are skipped. With `min_shards`, a small
    input is cut into that many shards of at least MIN_SHARD_ROWS rows (`spread_shard_size`),
    so that it still reaches several actors; the plan depends on the input alone. Sub-folders
    that hold a classify output (a `_manifest.json` file) are left out: they hold results, not
    inputs (an `--out` inside the input folder, read again by a rerun).
    """
    if shard_size < 1:
        raise ValueError(f"shard_size={shard_size} must be >= 1")
    fs, base, info = require_input(source)
    prefix = _uri_prefix(source, base)
    if info.type == pafs.FileType.File:
        ext = _ext(base)
        if ext in LIST_EXTENSIONS:
            paths = _read_list(fs, base, prefix + base)
            return _file_shards(paths, None, spread_shard_size(len(paths), shard_size, min_shards))
        if ext in PARQUET_EXTENSIONS:
            return _parquet_shards(fs, [base], prefix, shard_size, min_shards)
        if ext in TAR_EXTENSIONS:
            return [Shard(0, "tar", (prefix + base,))]
        if ext in IMAGE_EXTENSIONS:
            return _file_shards([prefix + base], None, shard_size)
        raise ValueError(
            f"input file {source!r} has an unknown extension {ext!r}; expected {LOOKED_FOR}"
        )
    found = _list_folder(fs, base)
    if found["image"]:
        texts = _metadata_texts(fs, base, found["image"], text_column)
        size = spread_shard_size(len(found["image"]), shard_size, min_shards)
        return _file_shards([prefix + p for p in found["image"]], texts, size)
    if found["parquet"] and found["tar"]:
        raise ValueError(
            f"folder {source!r} holds both Parquet and .tar files and no images; point the input "
            "at one kind (a sub-folder or a single file)"
        )
    if found["parquet"]:
        return _parquet_shards(fs, found["parquet"], prefix, shard_size, min_shards)
    if found["tar"]:
        return [Shard(i, "tar", (prefix + p,)) for i, p in enumerate(found["tar"])]
    raise ValueError(f"no input files found under {source!r}; expected {LOOKED_FOR}")


def shard_dataset(shards: list[Shard], **read_kwargs: Any) -> ray.data.Dataset:
    """A Ray Dataset of the rows of `shards` (ROW_SCHEMA), one streamed read task per shard.

    `read_kwargs` go to `read_shard`. Memory per task is bounded by one shard.
    """
    import ray.data

    if not shards:
        raise ValueError("no shards to read; plan_shards found no input")
    names = ("image_column", "label_column", "id_column")
    check_parquet_columns(shards, **{k: v for k, v in read_kwargs.items() if k in names})
    items = [{"shard": json.dumps(s.to_dict())} for s in shards]
    ds = ray.data.from_items(items, override_num_blocks=len(shards))
    return ds.map_batches(_read_shards, fn_kwargs=read_kwargs, batch_size=1, batch_format="pyarrow")


def _read_shards(batch: pa.Table, **read_kwargs: Any) -> pa.Table:
    tables = [read_shard(json.loads(s), **read_kwargs) for s in batch.column("shard").to_pylist()]
    return pa.concat_tables(tables) if tables else ROW_SCHEMA.empty_table()


def check_parquet_columns(
    shards: list[Shard],
    *,
    image_column: str | None = "image",
    label_column: str | None = None,
    id_column: str | None = None,
) -> None:
    """Fail on the driver, before Ray starts, when the first Parquet file of `shards` lacks
    a named column: a mistyped name would otherwise turn every row into an error row."""
    first = next((s for s in shards if s.kind == "parquet"), None)
    if first is None:
        return
    fs, path = get_filesystem(first.paths[0])
    names = pq.read_schema(path, filesystem=fs).names
    given = {"image_column": image_column, "label_column": label_column, "id_column": id_column}
    check_columns(first.paths[0], names, given)


def _ext(path: str) -> str:
    return posixpath.splitext(path)[1].lower()


def _uri_prefix(source: str, fs_path: str) -> str:
    """What turns a filesystem path back into the URI the user gave ("" for local paths)."""
    if not is_uri(source):
        return ""
    src, path = source.rstrip("/"), fs_path.rstrip("/")
    if not src.endswith(path):
        raise ValueError(f"cannot map paths under {source!r} back to URIs; drop any ?query options")
    return src[: len(src) - len(path)]


def _list_folder(fs: pafs.FileSystem, base: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {"image": [], "parquet": [], "tar": []}
    if isinstance(fs, pafs.LocalFileSystem):
        paths = _walk_local(base)
    else:
        infos = fs.get_file_info(pafs.FileSelector(base, recursive=True))
        paths = [i.path for i in infos if i.type == pafs.FileType.File]
    root = base.rstrip("/")
    outputs = sorted(
        posixpath.dirname(p) + "/"
        for p in paths
        if posixpath.basename(p) == OUTPUT_MARKER and posixpath.dirname(p) != root
    )
    if outputs:
        logger.warning(
            "leaving %d classify output folder(s) under %s out of the input: %s",
            len(outputs), base, ", ".join(o[len(root) + 1 : -1] for o in outputs[:5]),
        )  # fmt: skip
    for path in paths:
        rel = path[len(root) + 1 :]
        if any(p.startswith(".") for p in rel.split("/")):
            continue
        if outputs and path.startswith(tuple(outputs)):
            continue
        ext, name = _ext(path), posixpath.basename(path)
        if ext in IMAGE_EXTENSIONS:
            found["image"].append(path)
        elif ext in PARQUET_EXTENSIONS and not name.startswith("_"):
            found["parquet"].append(path)
        elif ext in TAR_EXTENSIONS:
            found["tar"].append(path)
    return {k: sorted(v) for k, v in found.items()}


def _walk_local(base: str) -> list[str]:
    """Files under the local folder `base`, each real file once although symlinks may reach
    it twice; folders reached again (symlink loops, two links to one folder) are skipped and
    reported. Names that are not UTF-8 come back surrogate-escaped, as Python gives them."""
    files: dict[tuple[int, int], str] = {}
    seen: dict[tuple[int, int], str] = {}
    again: list[str] = []
    stack = [base.rstrip("/") or "/"]
    while stack:
        folder = stack.pop()
        stat = os.stat(folder)
        if (stat.st_dev, stat.st_ino) in seen:
            again.append(f"{folder} -> {seen[stat.st_dev, stat.st_ino]}")
            continue
        seen[stat.st_dev, stat.st_ino] = folder
        with os.scandir(folder) as entries:
            for entry in sorted(entries, key=lambda e: e.name, reverse=True):
                try:
                    if entry.is_dir():
                        stack.append(entry.path)
                    elif entry.is_file():
                        real = entry.stat()
                        files.setdefault((real.st_dev, real.st_ino), entry.path)
                except OSError as e:  # a dangling link, a folder that vanished
                    logger.warning("skipping %r: %s", entry.path, e)
    if again:
        logger.warning(
            "%d folder(s) under %s were reached again through symlinks (loops or links to "
            "one folder) and listed once: %s", len(again), base, "; ".join(sorted(again)[:5]),
        )  # fmt: skip
    return list(files.values())


def _read_list(fs: pafs.FileSystem, path: str, uri: str) -> list[str]:
    with fs.open_input_stream(path) as f:
        lines = f.read().decode("utf-8").splitlines()
    entries = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    if not entries:
        raise ValueError(f"list file {uri!r} names no images (one path or URI per line)")
    return [resolve_ref(entry, uri) for entry in entries]


def spread_shard_size(rows: int, shard_size: int, min_shards: int) -> int:
    """Rows per shard for `rows` rows: `shard_size`, or less so that there are `min_shards`
    shards, but never below MIN_SHARD_ROWS (nor above what the user asked for)."""
    spread = max(MIN_SHARD_ROWS, math.ceil(rows / max(1, min_shards)))
    return max(1, min(shard_size, spread))


def _file_shards(paths: list[str], texts: list | None, shard_size: int) -> list[Shard]:
    return [
        Shard(
            index=i // shard_size,
            kind="files",
            paths=tuple(paths[i : i + shard_size]),
            num_rows=len(paths[i : i + shard_size]),
            texts=None if texts is None else tuple(texts[i : i + shard_size]),
        )
        for i in range(0, len(paths), shard_size)
    ]


def _metadata_texts(
    fs: pafs.FileSystem, base: str, images: list[str], text_column: str | None
) -> list[str | None] | None:
    meta_path = base.rstrip("/") + "/" + METADATA_FILE
    if text_column is None or fs.get_file_info(meta_path).type != pafs.FileType.File:
        return None
    names = pq.read_schema(meta_path, filesystem=fs).names
    if "path" not in names or text_column not in names:
        logger.warning(
            "%s has no 'path' and %r columns (has %s); images get no text",
            meta_path,
            text_column,
            names,
        )
        return None
    table = pq.read_table(meta_path, filesystem=fs, columns=["path", text_column])
    by_path = dict(
        zip(table.column("path").to_pylist(), _as_strings(table, text_column), strict=True)
    )
    root = len(base.rstrip("/")) + 1
    return [by_path.get(p[root:]) for p in images]


def _as_strings(table: pa.Table, column: str) -> list[str | None]:
    return table.column(column).cast(pa.string()).to_pylist()


def _parquet_shards(
    fs: pafs.FileSystem, paths: list[str], prefix: str, shard_size: int, min_shards: int = 1
) -> list[Shard]:
    shards: list[Shard] = []
    metas = []
    for path in paths:
        try:
            metas.append(pq.read_metadata(path, filesystem=fs))
        except Exception as e:
            uri = prefix + path
            raise ValueError(f"cannot read Parquet file {uri}: {type(e).__name__}: {e}") from e
    total = sum(meta.num_rows for meta in metas)
    target = spread_shard_size(total, shard_size, min_shards)
    for path, meta in zip(paths, metas, strict=True):
        uri = prefix + path
        sizes = tuple(meta.row_group(g).num_rows for g in range(meta.num_row_groups))
        for g, n in enumerate(sizes):
            if n > 2 * shard_size:
                logger.warning(
                    "%s row group %d has %d rows; shards never split row groups, so this one "
                    "is read as a whole (rewrite with row_group_size~%d for parallel reads)",
                    uri,
                    g,
                    n,
                    shard_size,
                )
        for begin, end in runs_of(sizes, target):
            shards.append(Shard(len(shards), "parquet", (uri,), tuple(range(begin, end)),
                                sum(sizes[begin:end]), group_rows=sizes[begin:end]))  # fmt: skip
    if not shards:
        raise ValueError(
            f"Parquet input {paths[0]!r}{' and others' if len(paths) > 1 else ''} has no rows"
        )
    return shards
