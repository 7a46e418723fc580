"""What a finished `fit` leaves in OUT: the best model, metrics.json and history.json, put
there so that a reader never sees parts of two models."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from typing import Any

from raycls.config import Config
from raycls.io.storage import copy_dir, get_filesystem, is_file, is_remote, join, write_json
from raycls.models.files import CONFIG_FILE, TEXT_DIR, WEIGHTS_FILE
from raycls.train.checkpoint import MODEL_DIR, read_state
from raycls.train.data import TrainData
from raycls.train.loop import NonFiniteError

METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.json"
# The entries of a model directory (models.classifier's format) that publishing replaces.
MODEL_ENTRIES = (CONFIG_FILE, WEIGHTS_FILE, TEXT_DIR)


def publish_run(
    result,
    out: str,
    config: Config,
    data: TrainData,
    train_data: str,
    val_data: str | None,
    elapsed: float,
) -> dict[str, Any]:
    """Publish the best checkpoint's model to OUT with history.json and metrics.json."""
    if result.checkpoint is None:
        raise RuntimeError(f"training finished without a checkpoint under {out}")
    best = result.get_best_checkpoint(config.train.metric, "max") or result.checkpoint
    with result.checkpoint.as_directory() as latest:
        state = read_state(Path(latest))
    if state.get("nonfinite"):
        raise NonFiniteError(
            f"training stopped: {state['nonfinite']}. The checkpoints of the epochs before are "
            f"under {out}; rerunning with the same --out resumes from them"
        )
    history = state["history"]
    best_metrics = history[state["best_epoch"]] if state["best_epoch"] is not None else {}
    summary = {
        "status": "finished",
        **{k: v for k, v in best_metrics.items() if k.startswith("val_")},
        "best_epoch": state["best_epoch"] + 1,
        "epochs_run": len(history),
        "stopped_early": state["stopped"],
        "train_samples_per_s": max(h["train_samples_per_s"] for h in history),
        "elapsed_s": round(elapsed, 1),
        "classes": data.classes,
        "data": data.summary,
        "train_data": train_data,
        "val_data": val_data,
        "model_dir": out,
        "config": config.to_dict(),
    }
    with best.as_directory() as directory:
        # metrics.json last: a run is finished once it is there.
        files = {HISTORY_FILE: history, METRICS_FILE: summary}
        publish_model(str(Path(directory) / MODEL_DIR), out, files)
    return summary


def publish_model(source: str, out: str, files: dict[str, Any] | None = None) -> None:
    """Put the model directory `source` into OUT, with `files` (name -> JSON value) beside it,
    so that a reader never sees a mix of two models.

    Locally the new files are copied beside OUT first and the folders are then swapped by
    renames (OUT's other entries, such as ray_train/, move into the new folder): a reader
    finds the old model, the new one or, between the two renames, none. Object stores have no
    rename: there the old config.json goes first and the new one comes last.
    """
    files = files or {}
    if is_remote(out):
        if is_file(join(out, CONFIG_FILE)):
            fs, path = get_filesystem(out)
            fs.delete_file(join(path, CONFIG_FILE))  # first: what remains is no model
        copy_dir(source, out, last=CONFIG_FILE)
        for name, value in files.items():
            write_json(join(out, name), value)
        return
    target = Path(out)
    tag = uuid.uuid4().hex[:8]
    fresh = target.with_name(f".{target.name}.new-{tag}")
    old = target.with_name(f".{target.name}.old-{tag}")
    shutil.copytree(source, fresh)
    for name, value in files.items():
        write_json(str(fresh / name), value)
    if target.exists():
        for entry in target.iterdir():
            if entry.name not in MODEL_ENTRIES and not (fresh / entry.name).exists():
                entry.rename(fresh / entry.name)
        target.rename(old)
    fresh.rename(target)
    shutil.rmtree(old, ignore_errors=True)
