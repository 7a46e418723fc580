"""Cleanup after stopped trials: Ray Train frees a stopped trial's workers through Ray's state
API (which the dashboard serves); where that is missing `PlacementGroupReaper` does the job.

The adapter for the private Ray APIs a sweep uses: `ray._private.state` (the GCS placement
group table) and `ray.core.generated.gcs_pb2`, both checked against Ray 2.60. Any failure of
theirs turns the reaper off with a warning instead of failing the sweep.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ray.tune import Callback as _TuneCallback

logger = logging.getLogger(__name__)


def state_api_available() -> bool:
    """Whether Ray's state API answers (it needs the dashboard); Train's own cleanup uses it."""
    try:
        from ray.util.state import list_nodes

        list_nodes(limit=1, timeout=5, raise_on_missing_output=False)
        return True
    except Exception:  # any failure means: not usable here
        return False


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
    from ray._private.state import state  # private (Ray 2.60): the GCS placement group table
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
