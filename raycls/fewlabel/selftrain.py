"""Self-training (pseudo-labelling, as in Noisy Student): round 0 trains on the labelled data;
each later round bulk-classifies the unlabelled pool with the previous round's model (the Ray
Data pipeline, output kept per round), keeps the confident predictions (a score threshold and a
per-class cap, so one class cannot flood the set), and trains a new model on labelled plus
pseudo-labelled rows. Every round's classify and fit resume on their own, and `rounds.json`
records finished rounds, so a rerun of the same command continues where it stopped.

OUT/
  data/labeled/, data/val/   the labelled rows as Parquet (val: held out when no --val)
  rounds/NN/predictions/     the pool classified by round NN-1's model
  rounds/NN/train/           labelled + pseudo-labelled rows (Parquet) that round NN trains on
  rounds/NN/model/           round NN's model (`raycls train` output)
  rounds.json                the table of finished rounds; model/ the best round's model
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

import pyarrow as pa

from raycls.config import Config
from raycls.io.reading import relative_to
from raycls.io.storage import (
    copy_dir,
    get_filesystem,
    join,
    read_json,
    resolve_storage_path,
    write_json,
)

logger = logging.getLogger(__name__)

ROUNDS_FILE = "rounds.json"
DONE_MARKER = "_COMPLETE"  # written last into a finished data folder


@dataclass(frozen=True)
class SelfTrainSettings:
    """How many rounds, and which predictions become pseudo-labels."""

    rounds: int = 3
    threshold: float = 0.9
    per_class_quota: int | None = None  # at most this many pseudo-labels per class and round

    def __post_init__(self) -> None:
        if not 1 <= self.rounds <= 50:
            raise ValueError(f"rounds={self.rounds} must be between 1 and 50")
        if not 0.0 <= self.threshold < 1.0:
            raise ValueError(f"threshold={self.threshold} must be in [0, 1)")
        if self.per_class_quota is not None and self.per_class_quota < 1:
            raise ValueError(f"per_class_quota={self.per_class_quota} must be >= 1")


def self_train(
    config: Config,
    labeled: str,
    unlabeled: str,
    out: str,
    *,
    val: str | None = None,
    settings: SelfTrainSettings | None = None,
    address: str | None = None,
    echo: Any = logger.info,
) -> dict[str, Any]:
    """Run (or resume) self-training; returns the rounds table and the best round."""
    from raycls.cluster.runtime import init_ray
    from raycls.io.inputs import require_input

    settings = settings or SelfTrainSettings()
    out = resolve_storage_path(out)
    for source in filter(None, (labeled, unlabeled, val)):
        require_input(source)
    identity = {
        "config": config.to_dict(),
        "settings": asdict(settings),
        "labeled": labeled,
        "unlabeled": unlabeled,
        "val": val,
    }
    state = read_json(join(out, ROUNDS_FILE)) or {"identity": identity, "rounds": []}
    if state["identity"] != identity:
        raise ValueError(
            f"{out} holds a self-training run with other settings or data; choose another --out "
            "or rerun with the same command to resume it"
        )
    init_ray(address, dashboard=True)
    train0, val = _labeled_data(config, labeled, val, join(out, "data"))
    table: list[dict[str, Any]] = state["rounds"]
    for index in range(len(table), settings.rounds + 1):
        table.append(_run_round(config, settings, index, out, train0, val, unlabeled, echo))
        write_json(join(out, ROUNDS_FILE), {"identity": identity, "rounds": table})
    best = max(table, key=lambda r: (r["val_accuracy"], -r["round"]))
    _publish(join(out, "rounds", f"{best['round']:02d}", "model"), join(out, "model"))
    return {"rounds": table, "best_round": best["round"], "model_dir": join(out, "model")}


def _run_round(
    config: Config,
    settings: SelfTrainSettings,
    index: int,
    out: str,
    train0: str,
    val: str,
    unlabeled: str,
    echo: Any,
) -> dict[str, Any]:
    from raycls.bulk.pipeline import classify
    from raycls.train.trainer import fit

    here = join(out, "rounds", f"{index:02d}")
    row: dict[str, Any] = {"round": index, "pseudo_labels": 0, "per_class": {}}
    train_data = train0
    if index > 0:
        model = join(out, "rounds", f"{index - 1:02d}", "model")
        echo(f"round {index}: classifying the pool {unlabeled} with round {index - 1}'s model")
        classify(unlabeled, model, join(here, "predictions"), config.classify)
        chosen = choose_pseudo_labels(join(here, "predictions"), settings)
        row.update(_pseudo_stats(chosen, unlabeled))
        train_data = join(here, "train")
        if not _exists(join(train_data, DONE_MARKER)):
            _write_round_data(config, train0, unlabeled, chosen, train_data)
    echo(f"round {index}: training on {train_data} ({row['pseudo_labels']} pseudo-labels)")
    metrics = fit(config, train_data, join(here, "model"), val_data=val)
    row.update(
        val_accuracy=float(metrics["val_accuracy"]),
        val_macro_f1=float(metrics["val_macro_f1"]),
        train_rows=int(metrics.get("data", {}).get("train", {}).get("rows", 0) or 0),
    )
    echo(f"round {index}: val_accuracy {row['val_accuracy']:.4f}")
    return row


def choose_pseudo_labels(predictions: str, settings: SelfTrainSettings) -> pa.Table:
    """Rows of a classify output kept as pseudo-labels: score >= threshold, then at most
    `per_class_quota` per predicted label (the highest scores). Columns key, label, score."""
    from raycls.fewlabel.select import read_predictions

    table = read_predictions(predictions).select(["key", "label", "score"])
    table = table.filter(pa.compute.greater_equal(table.column("score"), settings.threshold))
    table = table.sort_by([("label", "ascending"), ("score", "descending"), ("key", "ascending")])
    if settings.per_class_quota is None:
        return table
    keep, seen = [], Counter()
    for i, label in enumerate(table.column("label").to_pylist()):
        seen[label] += 1
        if seen[label] <= settings.per_class_quota:
            keep.append(i)
    return table.take(pa.array(keep, type=pa.int64()))


def _pseudo_stats(chosen: pa.Table, pool: str) -> dict[str, Any]:
    """Counts per class, and the precision when the pool is an ImageFolder (labels known)."""
    labels = chosen.column("label").to_pylist()
    stats: dict[str, Any] = {"pseudo_labels": len(labels), "per_class": dict(Counter(labels))}
    truths = [_folder_label(key, pool) for key in chosen.column("key").to_pylist()]
    known = [(t, p) for t, p in zip(truths, labels, strict=True) if t is not None]
    if labels and len(known) == len(labels):
        stats["pseudo_precision"] = round(sum(t == p for t, p in known) / len(known), 4)
    return stats


def _folder_label(key: str, root: str) -> str | None:
    rel = relative_to(key, root)
    return rel.split("/", 1)[0] if rel and "/" in rel else None


def _labeled_data(config: Config, labeled: str, val: str | None, data: str) -> tuple[str, str]:
    """The labelled rows as Parquet under `data` (and a held-out val split when `val` is
    None, so pseudo-labelled rows never land in validation)."""
    from raycls.train.data import split_is_val

    train_dir, val_dir = join(data, "labeled"), join(data, "val")
    if _exists(join(train_dir, DONE_MARKER)):
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


def _write_round_data(
    config: Config, train0: str, pool: str, chosen: pa.Table, target: str
) -> None:
    """labelled rows + the pool's rows named in `chosen`, with their pseudo-labels."""
    from raycls.io.inputs import plan_shards, shard_dataset

    fs, path = get_filesystem(target)
    fs.delete_dir_contents(path, missing_dir_ok=True)
    copy_dir(train0, target, skip=(DONE_MARKER,))
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
            _pseudo_rows, fn_kwargs={"labels": labels, "names": names}, batch_format="pyarrow"
        )
        pseudo.write_parquet(path, filesystem=fs)
    fs.open_output_stream(f"{path}/{DONE_MARKER}").close()


def _pseudo_rows(batch: pa.Table, labels: dict[str, str], names: dict[str, str]) -> pa.Table:
    keys = batch.column("key").to_pylist()
    keep = pa.array(
        [
            k in labels and e is None
            for k, e in zip(keys, batch.column("error").to_pylist(), strict=True)
        ]
    )
    batch = batch.filter(keep)
    picked = [labels[k] for k in batch.column("key").to_pylist()]
    return pa.table(
        {
            "key": batch.column("key"),
            names["image"]: batch.column("image"),
            names["text"]: batch.column("text"),
            names["label"]: pa.array(picked, type=pa.string()),
        }
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


def _exists(uri: str) -> bool:
    from raycls.io.storage import is_file

    return is_file(uri)


def _publish(model: str, target: str) -> None:
    """The best round's model files (not its Ray Train checkpoints) to `target`."""
    from raycls.models.files import CONFIG_FILE
    from raycls.train.trainer import RAY_TRAIN_DIR

    fs, path = get_filesystem(target)
    fs.delete_dir_contents(path, missing_dir_ok=True)
    copy_dir(model, target, last=CONFIG_FILE, skip=(RAY_TRAIN_DIR,))
