"""What a sweep asks of the Ray cluster: per-trial resources and the concurrency cap. Pure
functions of the settings and the cluster's resources: no Ray import (cleanup of stopped
trials is `raycls.tune.cleanup`).

A trial is a small driver function (no CPU of its own) that runs a Ray Train run; the Train
workers reserve their own resources in a placement group of their own. So a trial holds
`num_workers x resources per worker`, and one CPU of the cluster stays free for the Ray Data
tasks that read and decode images for every running trial.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from typing import Any

from raycls.config import Config

logger = logging.getLogger(__name__)

# Kept free for Ray Data: its read tasks ask for one whole CPU each (raycls.io.inputs), so
# workers that leave less than that starve them and the run hangs.
DATA_RESERVE_CPUS = 1.0
# The trial driver only waits on its Train controller; a token of memory keeps its Tune
# placement group non-empty without taking a CPU from the Train workers.
DRIVER_RESOURCES = {"cpu": 0, "memory": 64 * 1024**2}


@dataclass(frozen=True)
class TrialPlan:
    """Resources of one trial and how many trials may run at once."""

    max_concurrent: int
    cpus_per_worker: float
    gpus_per_worker: float
    use_gpu: bool
    data_cpus: float  # CPUs per Ray Data decode task
    per_trial: dict[str, float] = field(default_factory=dict)  # what one trial's workers hold
    custom_per_worker: dict[str, float] = field(default_factory=dict)


def parse_resources(text: str | None) -> dict[str, float] | None:
    """`'cpu=1,gpu=0'` or `'{"cpu": 1, "gpu": 0}'` -> {"cpu": 1.0, "gpu": 0.0}; None stays None."""
    if text is None or not text.strip():
        return None
    text = text.strip()
    try:
        if text.startswith("{"):
            parsed = json.loads(text)
        else:
            parsed = dict(item.split("=", 1) for item in text.split(",") if item.strip())
        resources = {str(k).strip(): float(v) for k, v in parsed.items()}
    except (ValueError, TypeError, AttributeError):
        raise ValueError(
            f"resources {text!r} must look like cpu=1,gpu=0 or a JSON object like "
            '{"cpu": 1, "gpu": 0}'
        ) from None
    bad = {k: v for k, v in resources.items() if v < 0 or not math.isfinite(v)}
    if bad:
        raise ValueError(f"resources must be finite and >= 0, got {bad}")
    return resources


def plan_trials(
    config: Config,
    resources_per_trial: dict[str, float] | None,
    max_concurrent: int,
    cluster: dict[str, float],
) -> TrialPlan:
    """Resources per trial (all Train workers together) and the concurrency cap.

    `resources_per_trial` keys: cpu, gpu, and custom resources; each is split evenly over the
    trial's `train.num_workers` workers. Without it, train.cpus_per_worker and (with
    train.use_gpu) train.gpus_per_worker apply. More concurrent trials than the cluster holds
    are clipped, with a warning; a trial larger than the cluster is a ValueError.
    """
    if max_concurrent < 1:
        raise ValueError(f"max_concurrent must be >= 1, got {max_concurrent}")
    t = config.train
    workers = t.num_workers
    rpt = {
        k.lower() if k.lower() in ("cpu", "gpu") else k: v
        for k, v in (resources_per_trial or {}).items()
    }
    cpus = rpt.pop("cpu", workers * t.cpus_per_worker)
    gpus = rpt.pop("gpu", workers * t.gpus_per_worker if t.use_gpu else 0.0)
    per_trial = {"CPU": cpus, "GPU": gpus, **rpt}
    reserve = DATA_RESERVE_CPUS
    cap = max_concurrent
    for name, need in per_trial.items():
        if need <= 0:
            continue
        have = cluster.get(name, 0.0) - (reserve if name == "CPU" else 0.0)
        fits = math.floor(have / need + 1e-9)
        if fits < 1:
            kept = f" ({reserve:g} kept free for data loading)" if name == "CPU" else ""
            raise ValueError(
                f"one trial needs {need:g} {name} ({workers} worker(s)) but the cluster has "
                f"{cluster.get(name, 0.0):g}{kept}; lower --resources-per-trial (e.g. "
                "cpu=0.5) or train.num_workers, or connect to a larger cluster with --address"
            )
        cap = min(cap, fits)
    if cap < max_concurrent:
        logger.warning(
            "%d concurrent trials x %s do not fit the cluster (%s, %g CPU kept for data "
            "loading); running %d at a time",
            max_concurrent,
            _fmt(per_trial),
            _fmt(cluster, keys=per_trial),
            reserve,
            cap,
        )
    return TrialPlan(
        max_concurrent=cap,
        cpus_per_worker=cpus / workers,
        gpus_per_worker=gpus / workers,
        use_gpu=gpus > 0,
        data_cpus=min(1.0, reserve / cap) if reserve > 0 else 1.0,
        per_trial={k: v for k, v in per_trial.items() if v > 0},
        custom_per_worker={k: v / workers for k, v in rpt.items() if v > 0},
    )


def _fmt(resources: dict[str, float], keys: Any = None) -> str:
    keys = keys if keys is not None else resources
    return ", ".join(f"{k}={resources.get(k, 0.0):g}" for k in keys if k in resources)
