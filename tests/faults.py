"""Faults injected into training runs from outside the loop, through Ray Train callbacks."""

from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import ray.cloudpickle

# Private Ray Train API (checked against Ray 2.60): a callback whose `on_report` runs on every
# worker, inside each `ray.train.report` call.
from ray.train.v2._internal.execution.callback import TrainContextCallback

# Ray's workers cannot import this tests/ module: its callbacks travel by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

# Seconds before dying, so the controller has collected the previous report (Ray Train polls
# workers every 2 s; a report not yet collected dies with the worker).
CRASH_DELAY_S = 5.0


class CrashRankZero(TrainContextCallback):
    """Kill rank 0 once, as it is about to make its `report`-th report (epoch `report` of a
    run that starts at epoch 1), unless `marker` exists; `marker` is created first."""

    def __init__(self, report: int, marker: str | Path):
        self.report, self.marker, self.count = report, str(marker), 0

    @contextmanager
    def on_report(self):
        import ray.train

        self.count += 1
        rank = ray.train.get_context().get_world_rank()
        if rank == 0 and self.count == self.report and not os.path.exists(self.marker):
            Path(self.marker).touch()
            time.sleep(CRASH_DELAY_S)
            os._exit(1)
        yield
