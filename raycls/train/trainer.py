"""`fit`: distributed training with Ray Train (TorchTrainer, DDP over gloo on CPU, NCCL on GPU).

OUT ends up holding the best model in the model-directory format (`load_model(OUT)` works
without Ray), `metrics.json`, `history.json` (per-epoch metrics) and `ray_train/`, Ray Train's
run storage with the kept checkpoints; raycls.train.publish puts them there. Rerunning the
same command with the same OUT resumes from the last checkpoint; a finished run returns its
recorded result without training again.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from raycls.cluster.runtime import (
    cluster_is_multinode,
    ctrl_c_interrupts,
    init_ray,
    warn_if_local_on_multinode,
)
from raycls.config import Config
from raycls.io.inputs import require_input
from raycls.io.storage import (
    check_output_dir,
    join,
    read_json,
    resolve_storage_path,
    write_json,
)
from raycls.models import check_model_config
from raycls.train.data import TrainData, prepare_data
from raycls.train.loop import train_loop_per_worker
from raycls.train.publish import METRICS_FILE, publish_run

logger = logging.getLogger(__name__)

RUN_NAME = "train"  # fixed, so that a rerun with the same OUT finds its checkpoints
RAY_TRAIN_DIR = "ray_train"
RUN_FILE = "run.json"

__all__ = ["build_trainer", "fit", "train_loop_per_worker"]


def fit(
    config: Config,
    train_data: str,
    out: str,
    val_data: str | None = None,
    address: str | None = None,
    callbacks: list | None = None,
) -> dict[str, Any]:
    """Train on `train_data` (validating on `val_data` or a held-out split); return metrics.

    Args:
        out: model directory (local path or URI such as s3://bucket/model); see module docs.
        address: Ray cluster address; None starts a local Ray (or uses RAY_ADDRESS).
        callbacks: Ray Train callbacks for the run (tests inject faults through them).
    """
    started = time.time()
    out = resolve_storage_path(out)
    check_output_dir(out)
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
    cpus_per_worker, data_cpus, threads = _plan_cpus(config)
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
        "data: %d training and %d validation examples (%s), %d classes (%d + %d unreadable "
        "skipped); images at %d px, %s crops%s",
        data.summary["train"]["rows"],
        data.summary["val"]["rows"],
        describe_validation(data.summary, val_data),
        len(data.classes),
        data.summary["train"]["bad"],
        data.summary["val"]["bad"],
        data.image_size,
        data.summary["crop"],
        " and quarter turns" if config.data.augment and config.data.rotate90 else "",
    )
    result = _run_trainer(config, data, out, cpus_per_worker, threads, callbacks)
    return publish_run(result, out, config, data, train_data, val_data, time.time() - started)


def describe_validation(summary: dict[str, Any], val_data: str | None) -> str:
    """Where validation examples came from, for the log and the CLI's last line."""
    if val_data is not None:
        return "from --val; no training data held out"
    fraction = (summary.get("held_out") or {}).get("fraction")
    setting = f"data.val_fraction={fraction:g}" if fraction is not None else "data.val_fraction"
    return f"held out of the training data: {setting}; pass --val to train on all of it"


def build_trainer(
    config: Config,
    data: TrainData,
    *,
    storage_path: str,
    name: str = RUN_NAME,
    cpus_per_worker: float | None = None,
    extra_resources: dict[str, float] | None = None,
    callbacks: list | None = None,
    torch_threads: int | None = None,
):
    """The TorchTrainer `fit` runs: `train_loop_per_worker` over `data`, settings from `config`.

    Args:
        storage_path: Ray Train's storage; with `name` it decides what a rerun resumes.
        cpus_per_worker: overrides train.cpus_per_worker (fit trims it on a small machine).
        extra_resources: more per-worker resources, e.g. a custom resource for Tune trials.
        callbacks: Ray Train callbacks (ray.train.UserCallback and the like).
        torch_threads: torch threads per worker; None: one per reserved CPU (Ray's setting).
    """
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    t = config.train
    # What prepare_data chose from the data where the settings left it open (a Tune trial's
    # own settings, such as a searched fusion, stay as they are).
    if config.model.image_size is None:
        config = config.replace(model={"image_size": data.image_size})
    if config.model.fusion == "auto":
        config = config.replace(
            model={"fusion": config.model.fusion_for(data.summary["train"]["with_text"])}
        )
    resources = {"CPU": t.cpus_per_worker if cpus_per_worker is None else cpus_per_worker}
    resources.update(extra_resources or {})
    if t.use_gpu:
        resources["GPU"] = t.gpus_per_worker
    loop_config = {
        "config": config.to_dict(),
        "classes": data.classes,
        "train_rows": data.summary["train"]["rows"],
        "summary": data.summary,
        "torch_threads": torch_threads,
    }
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(
            num_workers=t.num_workers, use_gpu=t.use_gpu, resources_per_worker=resources
        ),
        datasets={"train": data.train, "val": data.val},
        dataset_config=_ingest_config(t.num_workers),
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


def _run_trainer(
    config: Config,
    data: TrainData,
    out: str,
    cpus_per_worker: float,
    threads: int,
    callbacks: list | None,
):
    from ray.train import TrainingFailedError

    trainer = build_trainer(
        config,
        data,
        storage_path=join(out, RAY_TRAIN_DIR),
        cpus_per_worker=cpus_per_worker,
        callbacks=callbacks,
        torch_threads=threads,
    )
    try:
        with ctrl_c_interrupts():
            return trainer.fit()
    except TrainingFailedError as error:
        raise RuntimeError(
            f"training failed: {error}\nRerun the same command (same --out) to resume from the "
            "last checkpoint once the cause is fixed"
        ) from error


def _ingest_config(num_workers: int):
    """Ray Train's DataConfig, except that "val" is split without dropping rows, and that one
    worker gets each dataset whole, unsplit.

    `streaming_split(equal=True)` (the default) trims rows so every worker gets as many; right
    for training (DDP needs equal step counts), wrong for validation, where each example must
    count exactly once. A split, even into one part, runs its pipeline in a coordinator actor
    of its own (a process to start per dataset); a lone worker runs the pipelines itself
    (`python bench/bench_train.py` times whole runs).
    """
    from ray.train import DataConfig

    if num_workers == 1:
        return DataConfig(datasets_to_split=[])

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


def _plan_cpus(config: Config) -> tuple[float, float, int]:
    """CPUs per training worker and per decode task, leaving room for Ray Data on one machine,
    and torch threads per worker.

    Training workers that reserve every CPU of a single-node Ray leave none for the read and
    decode tasks, and the run hangs; there the workers' share is trimmed, with a warning. On
    one machine the workers' torch threads share all its cores (the decode tasks are short
    and the cores would idle between them): one worker then computes with every core.
    """
    import ray

    t = config.train
    total = float(ray.cluster_resources().get("CPU", 0.0))
    need = t.num_workers * t.cpus_per_worker
    own_threads = max(1, math.floor(t.cpus_per_worker))
    if total <= 0 or cluster_is_multinode():
        return t.cpus_per_worker, 1.0, own_threads
    threads = max(own_threads, math.floor(total / t.num_workers))
    # One whole CPU: the read tasks of raycls.io.inputs ask for one each.
    reserve = 1.0
    if need + reserve <= total:
        return t.cpus_per_worker, min(1.0, total - need), threads
    per_worker = max(0.0, (total - reserve) / t.num_workers)
    logger.warning(
        "%d workers x %s CPUs would leave none of this machine's %g CPUs for reading and "
        "decoding images; using %.2f CPUs per worker (set train.cpus_per_worker to choose)",
        t.num_workers,
        t.cpus_per_worker,
        total,
        per_worker,
    )
    return per_worker, 1.0, threads


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
