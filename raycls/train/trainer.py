"""`fit`: distributed training with Ray Train (TorchTrainer, DDP over gloo on CPU, NCCL on GPU).

OUT ends up holding the best model in the model-directory format (`load_model(OUT)` works
without Ray), `metrics.json`, `history.json` (per-epoch metrics) and `ray_train/`, Ray Train's
run storage with the kept checkpoints. Rerunning the same command with the same OUT resumes from
the last checkpoint; a finished run returns its recorded result without training again.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from raycls.cluster.runtime import cluster_is_multinode, init_ray, warn_if_local_on_multinode
from raycls.config import Config
from raycls.io.inputs import require_input
from raycls.io.storage import (
    copy_dir,
    join,
    read_json,
    resolve_storage_path,
    write_json,
)
from raycls.models import check_model_config
from raycls.models.files import CONFIG_FILE
from raycls.train.data import TrainData, prepare_data
from raycls.train.loop import MODEL_DIR, STATE_FILE, train_loop_per_worker

logger = logging.getLogger(__name__)

RUN_NAME = "train"  # fixed, so that a rerun with the same OUT finds its checkpoints
RAY_TRAIN_DIR = "ray_train"
METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.json"
RUN_FILE = "run.json"
CRASH_EPOCH_ENV = "RAYCLS_TEST_CRASH_AT_EPOCH"
CRASH_MARKER_ENV = "RAYCLS_TEST_CRASH_MARKER"

__all__ = ["build_trainer", "fit", "train_loop_per_worker"]


def fit(
    config: Config,
    train_data: str,
    out: str,
    val_data: str | None = None,
    address: str | None = None,
) -> dict[str, Any]:
    """Train on `train_data` (validating on `val_data` or a held-out split); return metrics.

    Args:
        out: model directory (local path or URI such as s3://bucket/model); see module docs.
        address: Ray cluster address; None starts a local Ray (or uses RAY_ADDRESS).
    """
    started = time.time()
    out = resolve_storage_path(out)
    finished = read_json(join(out, METRICS_FILE))
    same = finished is not None and finished.get("config") == config.to_dict()
    if same and finished.get("status") == "finished":
        logger.info("%s already holds a finished run with these settings; not training", out)
        return {**finished, "already_finished": True}

    # Mistyped settings and missing data fail here, in a second, not in the workers.
    check_model_config(config.model)
    for data in filter(None, (train_data, val_data)):
        require_input(data)

    # Ray Train's placement-group cleaner asks the state API, which the dashboard serves
    # (on 127.0.0.1 only); without it, it logs a warning every second of training.
    init_ray(address, dashboard=True)
    warn_if_local_on_multinode(out)
    cpus_per_worker, data_cpus = _plan_cpus(config)
    data = prepare_data(config, train_data, val_data, data_cpus)
    _check_same_run(out, config, data.classes)
    write_json(
        join(out, RUN_FILE),
        {
            "config": config.to_dict(),
            "classes": data.classes,
            "train_data": train_data,
            "val_data": val_data,
        },
    )
    logger.info(
        "data: %d training and %d validation examples, %d classes (%d + %d unreadable skipped)",
        data.summary["train"]["rows"],
        data.summary["val"]["rows"],
        len(data.classes),
        data.summary["train"]["bad"],
        data.summary["val"]["bad"],
    )
    result = _run_trainer(config, data, out, cpus_per_worker)
    return _publish(result, out, config, data, train_data, val_data, time.time() - started)


def build_trainer(
    config: Config,
    data: TrainData,
    *,
    storage_path: str,
    name: str = RUN_NAME,
    cpus_per_worker: float | None = None,
    extra_resources: dict[str, float] | None = None,
    callbacks: list | None = None,
    test_crash: dict[str, Any] | None = None,
):
    """The TorchTrainer `fit` runs: `train_loop_per_worker` over `data`, settings from `config`.

    Args:
        storage_path: Ray Train's storage; with `name` it decides what a rerun resumes.
        cpus_per_worker: overrides train.cpus_per_worker (fit trims it on a small machine).
        extra_resources: more per-worker resources, e.g. a custom resource for Tune trials.
        callbacks: ray.train.UserCallback instances.
    """
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    t = config.train
    resources = {"CPU": t.cpus_per_worker if cpus_per_worker is None else cpus_per_worker}
    resources.update(extra_resources or {})
    if t.use_gpu:
        resources["GPU"] = t.gpus_per_worker
    loop_config = {
        "config": config.to_dict(),
        "classes": data.classes,
        "train_rows": data.summary["train"]["rows"],
        "summary": data.summary,
        "test_crash": test_crash,
    }
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(
            num_workers=t.num_workers, use_gpu=t.use_gpu, resources_per_worker=resources
        ),
        datasets={"train": data.train, "val": data.val},
        dataset_config=_split_val_unequally(),
        run_config=RunConfig(
            name=name,
            storage_path=storage_path,
            checkpoint_config=CheckpointConfig(
                num_to_keep=t.keep_checkpoints,
                checkpoint_score_attribute=t.metric,
                checkpoint_score_order="max",
            ),
            failure_config=FailureConfig(max_failures=t.max_failures),
            logging_config=LoggingConfig(log_level="WARNING"),
            callbacks=callbacks or [],
        ),
    )


def _run_trainer(config: Config, data: TrainData, out: str, cpus_per_worker: float):
    from ray.train import TrainingFailedError

    trainer = build_trainer(
        config,
        data,
        storage_path=join(out, RAY_TRAIN_DIR),
        cpus_per_worker=cpus_per_worker,
        test_crash=_test_crash(),
    )
    try:
        return trainer.fit()
    except TrainingFailedError as error:
        raise RuntimeError(
            f"training failed: {error}\nRerun the same command (same --out) to resume from the "
            "last checkpoint once the cause is fixed"
        ) from error


def _split_val_unequally():
    """Ray Train's DataConfig, except that "val" is split without dropping rows.

    `streaming_split(equal=True)` (the default) trims rows so every worker gets as many; right
    for training (DDP needs equal step counts), wrong for validation, where each example must
    count exactly once.
    """
    from ray.train import DataConfig

    class SplitValUnequally(DataConfig):
        def configure(self, datasets, world_size, worker_handles, worker_node_ids, **kwargs):
            rest = {k: v for k, v in datasets.items() if k != "val"}
            output = super().configure(rest, world_size, worker_handles, worker_node_ids, **kwargs)
            if "val" in datasets:
                val = datasets["val"].copy(datasets["val"])
                val.context.execution_options = self._resolve_execution_options("val")
                for i, split in enumerate(val.streaming_split(world_size, equal=False)):
                    output[i]["val"] = split
            return output

    return SplitValUnequally()


def _plan_cpus(config: Config) -> tuple[float, float]:
    """CPUs per training worker and per decode task, leaving room for Ray Data on one machine.

    Training workers that reserve every CPU of a single-node Ray leave none for the read and
    decode tasks, and the run hangs; there the workers' share is trimmed, with a warning.
    """
    import ray

    t = config.train
    total = float(ray.cluster_resources().get("CPU", 0.0))
    need = t.num_workers * t.cpus_per_worker
    if total <= 0 or cluster_is_multinode():
        return t.cpus_per_worker, 1.0
    # One whole CPU: the read tasks of raycls.io.inputs ask for one each.
    reserve = 1.0
    if need + reserve <= total:
        return t.cpus_per_worker, min(1.0, total - need)
    per_worker = max(0.0, (total - reserve) / t.num_workers)
    logger.warning(
        "%d workers x %s CPUs would leave none of this machine's %g CPUs for reading and "
        "decoding images; using %.2f CPUs per worker (set train.cpus_per_worker to choose)",
        t.num_workers,
        t.cpus_per_worker,
        total,
        per_worker,
    )
    return per_worker, 1.0


def _test_crash() -> dict[str, Any] | None:
    """Test hook: kill rank 0 once in a given epoch (see raycls.train.loop)."""
    epoch = os.environ.get(CRASH_EPOCH_ENV)
    if not epoch:
        return None
    marker = os.environ.get(CRASH_MARKER_ENV)
    if not marker:
        raise ValueError(f"{CRASH_EPOCH_ENV} needs {CRASH_MARKER_ENV}, a file path to create")
    return {"epoch": int(epoch), "marker": marker}


def _check_same_run(out: str, config: Config, classes: list[str]) -> None:
    previous = read_json(join(out, RUN_FILE))
    if previous is None:
        return
    if (
        previous.get("config", {}).get("model") != config.to_dict()["model"]
        or previous.get("classes") != classes
    ):
        raise ValueError(
            f"{out} holds a run with other model settings or classes, which its checkpoints "
            "cannot resume; pass a new --out, or delete the folder to start over"
        )


def _publish(
    result,
    out: str,
    config: Config,
    data: TrainData,
    train_data: str,
    val_data: str | None,
    elapsed: float,
) -> dict[str, Any]:
    """Copy the best checkpoint's model to OUT; write history.json and metrics.json (last)."""
    if result.checkpoint is None:
        raise RuntimeError(f"training finished without a checkpoint under {out}")
    best = result.get_best_checkpoint(config.train.metric, "max") or result.checkpoint
    with result.checkpoint.as_directory() as latest:
        state = json.loads((Path(latest) / STATE_FILE).read_text())
    with best.as_directory() as directory:
        # config.json last: its presence marks a complete model.
        copy_dir(str(Path(directory) / MODEL_DIR), out, last=CONFIG_FILE)
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
    write_json(join(out, HISTORY_FILE), history)
    write_json(join(out, METRICS_FILE), summary)
    return summary
