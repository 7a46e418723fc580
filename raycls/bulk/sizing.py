"""Actor pool sizes of the bulk pipeline: pinned by the user, or sized from the cluster.

Plain arithmetic on the cluster's CPU and GPU totals (no Ray import), so that every rule is
unit-testable. An unpinned pool starts as large as the cluster allows when the job starts and
then autoscales (Ray Data's `ActorPoolStrategy(min_size, max_size, initial_size)`): down to one
actor when it runs out of work, and up, without limit, as nodes join the cluster.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# With a CPU captioner and a CPU classifier, the captioner (far slower per image) gets the rest.
CLASSIFY_SHARE_AFTER_CPU_CAPTIONER = 0.25
# A CPU pool fed by separate read/decode tasks (after a GPU stage) leaves them this share.
DECODE_SHARE = 0.5


@dataclass(frozen=True)
class StageNeeds:
    """One actor pool's request: a pinned size or None, and each actor's resources."""

    pinned: int | None
    cpus: float
    gpus: float


@dataclass(frozen=True)
class PoolSize:
    """Arguments of `ray.data.ActorPoolStrategy`; max_size None grows with the cluster."""

    min_size: int
    initial_size: int
    max_size: int | None

    @property
    def pinned(self) -> bool:
        return self.min_size == self.max_size

    def strategy_kwargs(self) -> dict[str, int]:
        if self.pinned:
            return {"size": self.min_size}
        kwargs = {"min_size": self.min_size, "initial_size": self.initial_size}
        if self.max_size is not None:
            kwargs["max_size"] = self.max_size
        return kwargs


def plan_pools(stages: list[StageNeeds], cpus: float, gpus: float) -> list[PoolSize]:
    """Pool sizes for `stages` (in pipeline order) on a cluster of `cpus` and `gpus` in all.

    GPU pools take the GPUs (a captioner and a classifier both on GPUs split them 3:1) and leave
    at least one CPU for the read/decode tasks that feed them. CPU pools share the CPUs left:
    a CPU pool first in line reads and decodes inside its own actors and takes them all; one fed
    by separate read/decode tasks (after a GPU stage) leaves those half; a CPU captioner and a
    CPU classifier split them 3:1. Pinned pools keep their size and take their CPUs first.
    """
    sizes = [s.pinned for s in stages]
    gpu_auto = [i for i, s in enumerate(stages) if s.gpus > 0 and s.pinned is None]
    for k, i in enumerate(gpu_auto):
        share = gpus if len(gpu_auto) == 1 else gpus * (0.75 if k == 0 else 0.25)
        n = _fit(share, stages[i].gpus)
        if stages[i].cpus > 0 and cpus > 1:  # one CPU stays for the read/decode tasks
            n = min(n, _fit((cpus - 1) / len(gpu_auto), stages[i].cpus))
        sizes[i] = max(1, n)
    cpu_left = cpus - sum(n * s.cpus for n, s in zip(sizes, stages, strict=True) if n)
    cpu_auto = [i for i, s in enumerate(stages) if s.gpus == 0 and s.pinned is None]
    separate_decode = bool(stages) and stages[0].gpus > 0
    for k, i in enumerate(cpu_auto):
        if len(cpu_auto) > 1:
            share = (
                CLASSIFY_SHARE_AFTER_CPU_CAPTIONER if k else 1 - CLASSIFY_SHARE_AFTER_CPU_CAPTIONER
            )
        else:
            share = DECODE_SHARE if separate_decode else 1.0
        sizes[i] = max(1, _fit(cpu_left * share, stages[i].cpus or 1.0))
    return [
        PoolSize(n, n, n) if s.pinned is not None else PoolSize(1, n, None)
        for n, s in zip(sizes, stages, strict=True)
    ]


def _fit(amount: float, per_actor: float) -> int:
    """How many actors of `per_actor` fit in `amount` (float sums like 0.1 * 3 included)."""
    return math.floor(amount / per_actor + 1e-9)
