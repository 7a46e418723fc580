"""Labelled training data: an ImageFolder (label = first folder below the root) or Parquet with
a label column, planned into shards with its sorted class names. No Ray import.
"""

from __future__ import annotations

import logging

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from raycls.io.images import IMAGE_EXTENSIONS
from raycls.io.inputs import plan_shards
from raycls.io.reading import check_columns, relative_to
from raycls.io.shards import Shard
from raycls.io.storage import get_filesystem
from raycls.io.training_columns import named_columns, read_flags, read_weights, setting_names

logger = logging.getLogger(__name__)


def load_labeled(
    source: str,
    *,
    image_column: str = "image",
    label_column: str = "label",
    text_column: str | None = "text",
    shard_size: int = 1000,
    weight_column: str | None = None,
    strong_augment_column: str | None = None,
) -> tuple[list[Shard], list[str]]:
    """Plan labelled training data; returns the shards and the sorted class names.

    `source` is an ImageFolder (label = first folder below the root) or Parquet with a label
    column. Read the shards with
    `inputs.shard_dataset(shards, label_column=..., labeled_root=source)`: each kind uses the
    argument it needs. `weight_column` and `strong_augment_column` (training's per-row
    columns, `raycls.io.training_columns`) need Parquet; every weight is checked here.
    """
    shards = plan_shards(source, shard_size, text_column=text_column)
    kind = shards[0].kind
    per_row = named_columns(weight_column, strong_augment_column)
    if kind == "parquet":
        return shards, _parquet_classes(shards, image_column, label_column, per_row)
    if per_row:
        setting, column = next(iter(setting_names(per_row).items()))
        raise ValueError(
            f"{setting}={column!r} names a Parquet column, but {source!r} is not Parquet; "
            f"write the data as Parquet with that column, or unset {setting}"
        )
    fs, base = get_filesystem(source)
    if kind == "files" and fs.get_file_info(base).type == pafs.FileType.Directory:
        return shards, _folder_classes(source, fs, base, shards)
    got = "a list of files" if kind == "files" else "tar shards"
    raise ValueError(
        f"labelled data {source!r} must be an image folder laid out as root/<class>/<image> or "
        f"Parquet with a {label_column!r} column, not {got}"
    )


def _parquet_classes(
    shards: list[Shard], image_column: str, label_column: str, per_row: dict[str, str]
) -> list[str]:
    labels: set[str] = set()
    nulls = 0
    weights, flags = per_row.get("weight"), per_row.get("strong_augment")
    for uri in dict.fromkeys(s.paths[0] for s in shards):
        fs, path = get_filesystem(uri)
        names = pq.read_schema(path, filesystem=fs).names
        roles = {"data.label_column": label_column, "data.image_column": image_column}
        check_columns(uri, names, {**roles, **setting_names(per_row)})
        read = dict.fromkeys(c for c in (label_column, weights, flags) if c)
        table = pq.read_table(path, filesystem=fs, columns=list(read))
        if weights:  # a bad weight stops the run here, before any training worker starts
            read_weights(table.column(weights), uri, weights)
        if flags:
            read_flags(table.column(flags), uri, flags)
        values = table.column(label_column).cast(pa.string()).to_pylist()
        nulls += values.count(None)
        labels.update(v for v in values if v is not None)
    if nulls:
        logger.warning(
            "%d rows have a null %r and will be skipped in training", nulls, label_column
        )
    if not labels:
        raise ValueError(f"column {label_column!r} holds no labels in {shards[0].paths[0]}")
    return sorted(labels)


def _folder_classes(source: str, fs: pafs.FileSystem, base: str, shards: list[Shard]) -> list[str]:
    counts: dict[str, int] = {}
    for info in fs.get_file_info(pafs.FileSelector(base)):
        if info.type == pafs.FileType.Directory and not info.base_name.startswith("."):
            counts[info.base_name] = 0
    loose = []
    for shard in shards:
        for path in shard.paths:
            rel = relative_to(path, source) or ""
            if "/" in rel:
                counts[rel.split("/", 1)[0]] += 1
            else:
                loose.append(rel)
    if loose:
        raise ValueError(
            f"{len(loose)} image(s) lie directly in {source!r} (e.g. {loose[0]!r}); an image "
            "folder for training needs root/<class>/<image>: move them into class folders"
        )
    empty = sorted(name for name, n in counts.items() if n == 0)
    if empty:
        raise ValueError(
            f"class folder(s) {empty} under {source!r} hold no images "
            f"({' '.join(IMAGE_EXTENSIONS)}); add images or remove the folder(s)"
        )
    return sorted(counts)
