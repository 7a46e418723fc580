"""Self-training (pseudo-labelling, as in Noisy Student): round 0 trains on the labelled data;
each later round bulk-classifies the unlabelled pool with the previous round's model (the Ray
Data pipeline, output kept per round), keeps the confident predictions (a score threshold and a
per-class cap, so one class cannot flood the set), and trains a new model on labelled plus
pseudo-labelled rows (these at a lower loss weight and with stronger augmentation when the
settings ask for it). Every round's classify and fit resume on their own, and `rounds.json`
records finished rounds, so a rerun of the same command continues where it stopped.

OUT/
  data/labeled/, data/val/   the labelled rows as Parquet (val: held out when no --val)
  rounds/NN/predictions/     the pool classified by round NN-1's model
  rounds/NN/train/           labelled + pseudo-labelled rows (Parquet) that round NN trains on,
                             with per-row loss weights and augmentation flags (rounddata.py)
  rounds/NN/model/           round NN's model (`raycls train` output)
  rounds.json                the table of finished rounds; model/ the best round's model
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

import pyarrow as pa

from raycls.config import PSEUDO_AUGMENTS, Config
from raycls.fewlabel.rounddata import DONE_MARKER, ROUND_COLUMNS, labeled_data, write_round_data
from raycls.io.reading import relative_to
from raycls.io.storage import (
    check_output_dir,
    copy_dir,
    get_filesystem,
    is_file,
    is_within,
    join,
    read_json,
    redact,
    resolve_storage_path,
    write_json,
)

logger = logging.getLogger(__name__)

ROUNDS_FILE = "rounds.json"


@dataclass(frozen=True)
class SelfTrainSettings:
    """How many rounds, which predictions become pseudo-labels, and how they train."""

    rounds: int = 3
    threshold: float = 0.9
    per_class_quota: int | None = None  # at most this many pseudo-labels per class and round
    # Loss weight of pseudo-labelled rows (labelled rows: 1.0); see raycls.train.losses.
    # Both defaults measured best on digits (bench/bench_selftrain.py; README, Self-training).
    pseudo_weight: float = 1.0
    # "strong": pseudo-labelled rows also get RandAugment (raycls.train.augment), as the
    # student in Noisy Student does; "same": the labelled rows' augmentation.
    pseudo_augment: str = "same"

    def __post_init__(self) -> None:
        if not 1 <= self.rounds <= 50:
            raise ValueError(f"rounds={self.rounds} must be between 1 and 50")
        if not 0.0 <= self.threshold < 1.0:
            raise ValueError(f"threshold={self.threshold} must be in [0, 1)")
        if self.per_class_quota is not None and self.per_class_quota < 1:
            raise ValueError(f"per_class_quota={self.per_class_quota} must be >= 1")
        if not 0.0 < self.pseudo_weight <= 1.0:  # also refuses NaN
            raise ValueError(f"pseudo_weight={self.pseudo_weight} must be in (0, 1]")
        if self.pseudo_augment not in PSEUDO_AUGMENTS:
            raise ValueError(
                f"pseudo_augment={self.pseudo_augment!r} is not valid; choose one of: "
                + ", ".join(PSEUDO_AUGMENTS)
            )


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
    check_output_dir(out)
    for source in filter(None, (labeled, unlabeled, val)):
        require_input(source)
        if is_within(out, source):
            raise ValueError(
                f"--out {redact(out)!r} is inside the input {redact(source)!r}; later rounds "
                "would read the run's own files as input: choose a folder outside it"
            )
    for key in ROUND_COLUMNS:
        if getattr(config.data, key) is not None:
            raise ValueError(
                f"self-train sets data.{key} itself for each round's training; unset it "
                "(the loss weight of pseudo-labelled rows is --pseudo-weight)"
            )
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
    train0, val = labeled_data(config, labeled, val, join(out, "data"))
    table: list[dict[str, Any]] = state["rounds"]
    stopped = state.get("stopped")  # a rerun of a run that stopped early runs no round
    next_rounds = range(len(table), settings.rounds + 1) if not stopped else ()
    for index in next_rounds:
        row = _run_round(config, settings, index, out, train0, val, unlabeled, echo)
        stopped = row.pop("stopped", None)
        record = {"identity": identity, "rounds": table if stopped else [*table, row]}
        write_json(join(out, ROUNDS_FILE), {**record, "stopped": stopped} if stopped else record)
        if stopped:
            break
        table.append(row)
    if stopped:
        echo(stopped)
    best = max(table, key=lambda r: (r["val_accuracy"], -r["round"]))
    _publish(join(out, "rounds", f"{best['round']:02d}", "model"), join(out, "model"))
    return {"rounds": table, "best_round": best["round"], "model_dir": join(out, "model"),
            "stopped": stopped}  # fmt: skip


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
        if not chosen.num_rows:  # training again on the labelled rows alone would add nothing
            return {**row, "stopped": _no_pseudo_labels(index, here, settings)}
        row.update(_pseudo_stats(chosen, unlabeled))
        train_data = join(here, "train")
        if not is_file(join(train_data, DONE_MARKER)):
            write_round_data(config, settings, train0, unlabeled, chosen, train_data)
        config = config.replace(data=ROUND_COLUMNS)
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


def _no_pseudo_labels(index: int, here: str, settings: SelfTrainSettings) -> str:
    from raycls.fewlabel.select import read_predictions

    scores = read_predictions(join(here, "predictions")).column("score")
    highest = pa.compute.max(scores).as_py()
    return (
        f"round {index}: no prediction on the pool scored --threshold {settings.threshold:g} or "
        f"more (highest {highest if highest is None else round(highest, 3)}), so there are no "
        f"pseudo-labels to train on; stopped after round {index - 1}. Lower --threshold, or "
        "give round 0 a better start (more --epochs, more labels, pretrained weights)"
    )


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


def _publish(model: str, target: str) -> None:
    """The best round's model files (not its Ray Train checkpoints) to `target`."""
    from raycls.models.files import CONFIG_FILE
    from raycls.train.trainer import RAY_TRAIN_DIR

    fs, path = get_filesystem(target)
    fs.delete_dir_contents(path, missing_dir_ok=True)
    copy_dir(model, target, last=CONFIG_FILE, skip=(RAY_TRAIN_DIR,))
