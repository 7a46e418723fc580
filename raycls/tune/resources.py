"""What a sweep asks of the Ray cluster: per-trial resources, the concurrency cap, and cleanup.

A trial is a small driver function (no CPU of its own) that runs a Ray Train run; the Train
workers reserve their own resources in a placement group of their own. So a trial holds
`num_workers x resources per worker`, and one CPU of the cluster stays free for the Ray Data
tasks that read and decode images for every running trial.
"""

from __future__ import annotations

import json
import logging
import math
import time
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


def state_api_available() -> bool:
    """Whether Ray's state API answers (it needs the dashboard); Train's own cleanup uses it."""
    try:
        from ray.util.state import list_nodes

        list_nodes(limit=1, timeout=5, raise_on_missing_output=False)
        return True
    except Exception:  # any failure means: not usable here
        return False


try:
    from ray.tune import Callback as _TuneCallback
except ImportError:  # pragma: no cover - ray[tune] is a dependency
    _TuneCallback = object


class PlacementGroupReaper(_TuneCallback):
    """Removes the placement groups of Train runs whose trial was stopped (ASHA) or killed.

    A stopped trial's driver dies with its Train controller, but the controller's placement
    group lives until the Ray job ends, holding the workers' CPUs: later trials then wait
    forever. Ray Train's own cleaner needs the state API (the dashboard); this callback does
    the same from the Tune driver: a placement group created by an actor of this job that is
    now dead is removed. It reads the GCS table through a private Ray API, so any failure
    turns it off with a warning instead of failing the sweep.
    """

    def __init__(self, interval_s: float = 2.0) -> None:
        self.interval_s = interval_s
        self.removed = 0
        self._last = 0.0
        self._broken = False

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        now = time.monotonic()
        if now - self._last >= self.interval_s:
            self._last = now
            self._reap()

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        # A trial stopped in the last seconds would otherwise hold its CPUs until the job ends
        # (for a library caller, say a notebook, that is long after the sweep).
        self._reap()

    def _reap(self) -> None:
        if self._broken:
            return
        try:
            self.removed += remove_orphaned_placement_groups()
        except Exception as error:  # private API: never let it break the sweep
            self._broken = True
            logger.warning("cannot reap placement groups of stopped trials (%s)", error)

    def __getstate__(self) -> dict[str, Any]:
        # Tune saves callbacks with the experiment; a restored sweep starts a fresh clock.
        return {
            "interval_s": self.interval_s,
            "removed": self.removed,
            "_last": 0.0,
            "_broken": False,
        }


def remove_orphaned_placement_groups() -> int:
    """Remove this job's placement groups whose creating actor is dead; return how many."""
    import ray
    from ray._private.state import state
    from ray.core.generated import gcs_pb2
    from ray.util.placement_group import PlacementGroup

    removed_state = gcs_pb2.PlacementGroupTableData.REMOVED
    job = ray.get_runtime_context().get_job_id()
    count = 0
    for blob in state._connect_and_get_accessor().get_placement_group_table():
        pg = gcs_pb2.PlacementGroupTableData.FromString(blob)
        creator = pg.creator_actor_id
        # Placement groups made by the driver itself (Tune's, per trial) have no creator actor.
        if pg.state == removed_state or pg.is_detached or not creator.strip(b"\xff"):
            continue
        if not pg.creator_actor_dead or pg.creator_job_id.hex() != job:
            continue
        try:
            ray.util.remove_placement_group(
                PlacementGroup(ray.PlacementGroupID(pg.placement_group_id))
            )
            count += 1
            logger.info(
                "removed placement group %s of a stopped trial", pg.placement_group_id.hex()
            )
        except Exception as error:  # already gone: removed by Ray Train's own cleaner
            logger.debug("placement group %s: %s", pg.placement_group_id.hex(), error)
    return count
