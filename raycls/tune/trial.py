"""One sweep trial: a Tune function that runs one Ray Train run and relays its epochs to Tune.

The Train run is named by the trial id and stored under the sweep's `trials/` folder, so a
trial that restarts (Tune retrying a trial whose driver died with its node, or a resumed sweep)
continues from its last Train checkpoint. A trial that failed on its own (a bad combination of
settings, training that kept failing after Train's retries) leaves `failed.json`; Tune's retry
of it then fails at once with the same message instead of training again.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from raycls.config import Config
from raycls.io.storage import append_text, is_file, join, read_json, write_json
from raycls.tune.results import DONE_FILE
from raycls.tune.space import apply_params

logger = logging.getLogger(__name__)

STARTS_FILE = "starts.txt"
FAILED_FILE = "failed.json"


def run_trial(
    params: dict[str, Any],
    *,
    base: dict[str, Any],
    data: Any,
    trials_dir: str,
    custom_per_worker: dict[str, float] | None = None,
) -> None:
    """Tune trainable: base config + sampled `params` -> a TorchTrainer fit, reported per epoch."""
    import ray.train
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from raycls.train.trainer import build_trainer

    trial_id = ray.tune.get_context().get_trial_id()
    run_dir = join(trials_dir, trial_id)
    # One line per start: a resumed trial shows two.
    append_text(join(run_dir, STARTS_FILE), f"{time.time():.3f}\n")
    failed = join(run_dir, FAILED_FILE)
    if is_file(failed):
        raise RuntimeError(read_json(failed)["error"])  # deterministic: not worth a rerun
    try:
        config = apply_params(Config.from_dict(base), params)  # a bad combination fails
        trainer = build_trainer(
            config,
            data,
            storage_path=trials_dir,
            name=trial_id,
            extra_resources=custom_per_worker,
            callbacks=[TuneReportCallback()],
        )
        result = trainer.fit()
    except Exception as error:
        # Train's own message truncates the workers' tracebacks in the middle, often cutting
        # out the line that says what went wrong; the results table wants that line.
        message = (
            f"training failed: {_worker_failures(error)}"
            if isinstance(error, ray.train.WorkerGroupError)
            else f"{type(error).__name__}: {error}"
        )
        # Only an error raised here is recorded: a driver that dies with its node writes
        # nothing, so Tune's retry of it resumes training from the last checkpoint.
        write_json(failed, {"error": message})
        raise RuntimeError(message) from error
    done = {"metrics": result.metrics, "checkpoint": getattr(result.checkpoint, "path", None)}
    write_json(join(run_dir, DONE_FILE), done, indent=None)


def _worker_failures(error: Any) -> str:
    """`ValueError: ... (rank 0)` for each failed worker, from a WorkerGroupError."""
    parts = []
    for rank, failure in sorted(getattr(error, "worker_failures", {}).items()):
        cause = getattr(failure, "cause", None) or failure  # RayTaskError wraps the original
        parts.append(f"{type(cause).__name__}: {cause} (rank {rank})")
    return "; ".join(parts) or str(error)
