"""The Parquet data each self-training round trains on: the labelled rows (and a held-out
validation split) under OUT/data/, and per round the labelled rows plus the chosen
pseudo-labelled rows of the pool under OUT/rounds/NN/train/, with a loss weight and a
strong-augmentation flag per row. No Ray import outside the pool's read.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import pyarrow as pa

from raycls.config import Config
from raycls.io.storage import get_filesystem, is_file, join

if TYPE_CHECKING:
    from raycls.fewlabel.selftrain import SelfTrainSettings

logger = logging.getLogger(__name__)

DONE_MARKER = "_COMPLETE"  # written last into a finished data folder
# The columns of rounds/NN/train/ that carry each row's loss weight and strong-augmentation
# flag, as the data settings each round's training reads them with.
ROUND_COLUMNS = {"weight_column": "weight", "strong_augment_column": "strong_augment"}


def labeled_data(config: Config, labeled: str, val: str | None, data: str) -> tuple[str, str]:
    """The labelled rows as Parquet under `data` (and a held-out val split when `val` is
    None, so pseudo-labelled rows never land in validation)."""
    from raycls.train.data import split_is_val

    train_dir, val_dir = join(data, "labeled"), join(data, "val")
    if is_file(join(train_dir, DONE_MARKER)):
        return train_dir, val or val_dir
    rows = _read_labeled(config, labeled)
    if val is None:
        fraction = config.data.val_fraction or 0.1
        is_val = split_is_val(rows.column("key").to_pylist(), labeled, config.data.seed, fraction)
        if is_val.all() or not is_val.any():
            raise ValueError(
                f"{labeled!r} is too small to hold out a validation split "
                f"({len(is_val)} rows, data.val_fraction={fraction}); pass --val DATA"
            )
        _write_parquet(config, rows.filter(pa.array(is_val)), val_dir)
        rows = rows.filter(pa.array(~is_val))
    _write_parquet(config, rows, train_dir)
    logger.info("self-train: %d labelled training rows in %s", rows.num_rows, train_dir)
    return train_dir, val or val_dir


def _read_labeled(config: Config, source: str) -> pa.Table:
    from raycls.io.labeled import load_labeled
    from raycls.io.reading import read_shard

    d = config.data
    shards, _ = load_labeled(
        source, image_column=d.image_column, label_column=d.label_column, text_column=d.text_column
    )
    read = {"image_column": d.image_column, "text_column": d.text_column}
    tables = [
        read_shard(s, **read, label_column=d.label_column, labeled_root=source) for s in shards
    ]
    return pa.concat_tables(tables)


def write_round_data(
    config: Config,
    settings: SelfTrainSettings,
    train0: str,
    pool: str,
    chosen: pa.Table,
    target: str,
) -> None:
    """labelled rows (weight 1.0, usual augmentation) + the pool's rows named in `chosen`,
    with their pseudo-labels, settings.pseudo_weight and settings.pseudo_augment."""
    import pyarrow.parquet as pq

    from raycls.io.inputs import plan_shards, shard_dataset

    fs, path = get_filesystem(target)
    fs.delete_dir_contents(path, missing_dir_ok=True)
    fs.create_dir(path)
    train0_fs, train0_path = get_filesystem(train0)
    labelled = pq.read_table(train0_path, filesystem=train0_fs)  # skips _COMPLETE
    labelled = _with_round_columns(labelled, 1.0, False)
    pq.write_table(labelled, f"{path}/labeled.parquet", filesystem=fs, row_group_size=256)
    if chosen.num_rows:
        labels = dict(
            zip(chosen.column("key").to_pylist(), chosen.column("label").to_pylist(), strict=True)
        )
        c = config.classify
        shards = plan_shards(pool, c.shard_size, text_column=c.text_column)
        rows = shard_dataset(shards, image_column=c.image_column, text_column=c.text_column,
                             id_column=c.id_column)  # fmt: skip
        d = config.data
        names = {"image": d.image_column, "label": d.label_column, "text": d.text_column}
        pseudo = rows.map_batches(
            _pseudo_rows,
            fn_kwargs={"labels": labels, "names": names, "weight": settings.pseudo_weight,
                       "strong": settings.pseudo_augment == "strong"},
            batch_format="pyarrow",
        )  # fmt: skip
        pseudo.write_parquet(path, filesystem=fs)
    fs.open_output_stream(f"{path}/{DONE_MARKER}").close()


def _pseudo_rows(
    batch: pa.Table, labels: dict[str, str], names: dict[str, str], weight: float, strong: bool
) -> pa.Table:
    keys = batch.column("key").to_pylist()
    keep = pa.array(
        [
            k in labels and e is None
            for k, e in zip(keys, batch.column("error").to_pylist(), strict=True)
        ]
    )
    batch = batch.filter(keep)
    picked = [labels[k] for k in batch.column("key").to_pylist()]
    table = pa.table(
        {
            "key": batch.column("key"),
            names["image"]: batch.column("image"),
            names["text"]: batch.column("text"),
            names["label"]: pa.array(picked, type=pa.string()),
        }
    )
    return _with_round_columns(table, weight, strong)


def _with_round_columns(table: pa.Table, weight: float, strong: bool) -> pa.Table:
    n = table.num_rows
    table = table.append_column(
        ROUND_COLUMNS["weight_column"], pa.array([weight] * n, type=pa.float64())
    )
    return table.append_column(
        ROUND_COLUMNS["strong_augment_column"], pa.array([strong] * n, type=pa.bool_())
    )


def _write_parquet(config: Config, rows: pa.Table, target: str) -> None:
    import pyarrow.parquet as pq

    d = config.data
    table = pa.table(
        {
            "key": rows.column("key"),
            d.image_column: rows.column("image"),
            d.text_column: rows.column("text"),
            d.label_column: rows.column("label"),
        }
    )
    fs, path = get_filesystem(target)
    fs.delete_dir_contents(path, missing_dir_ok=True)
    fs.create_dir(path)
    pq.write_table(table, f"{path}/labeled.parquet", filesystem=fs, row_group_size=256)
    fs.open_output_stream(f"{path}/{DONE_MARKER}").close()
