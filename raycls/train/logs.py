"""What the training workers log: rank 0 only, to stderr, which Ray forwards to the driver."""

from __future__ import annotations

import logging
import sys
from typing import Any

logger = logging.getLogger("raycls.train.loop")


def log(rank: int, message: str, *args: Any) -> None:
    """Log from rank 0 only."""
    if rank == 0:
        logger.info(message, *args)


def log_epoch(rank: int, epochs: int, m: dict[str, Any]) -> None:
    """One line per epoch."""
    log(
        rank,
        "epoch %d/%d  train_loss %.4f  val_loss %.4f  val_accuracy %.4f  val_macro_f1 %.4f  "
        "(%d val)  %.0f samples/s  %.1fs%s",
        m["epoch"], epochs, m["train_loss"], m["val_loss"], m["val_accuracy"],
        m["val_macro_f1"], m["val_count"], m["train_samples_per_s"], m["epoch_time_s"],
        f"  {m['nonfinite_steps']} non-finite steps skipped" if m["nonfinite_steps"] else "",
    )  # fmt: skip


def setup_worker_logs(rank: int) -> None:
    """Quiet Ray Train's per-report lines; on rank 0, raycls INFO logs to stderr."""
    _quiet_report_logs()
    if rank != 0:
        return
    root = logging.getLogger("raycls")
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
        )
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        root.propagate = False


def _quiet_report_logs() -> None:
    """Drop Ray Train's INFO line per report and worker (the whole metrics dict, twice an epoch).

    Its logger is named by file path, so RunConfig's LoggingConfig does not reach it.
    """
    try:
        # Private Ray Train module (checked against Ray 2.60).
        from ray.train.v2._internal.execution import context
    except ImportError:
        return
    logging.getLogger(context.__file__).setLevel(logging.WARNING)
