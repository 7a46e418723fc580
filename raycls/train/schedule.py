"""The optimizer and its per-step learning-rate schedule, as the training loop uses them."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from raycls.config import TrainConfig
from raycls.models import FusedClassifier


def build_optimizer(
    model: FusedClassifier, t: TrainConfig, steps_per_epoch: int
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW and its per-step one-cycle schedule (`one_cycle`); pretrained encoders at 0 while
    train.freeze_encoder_epochs last."""
    optimizer = torch.optim.AdamW(model.param_groups(t.lr, t.encoder_lr_scale, t.weight_decay))
    total = steps_per_epoch * t.epochs
    schedule = one_cycle(total, round(t.warmup_fraction * total))
    frozen = frozen_for(schedule, t.freeze_encoder_epochs * steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        [frozen if g["name"].startswith("encoder") else schedule for g in optimizer.param_groups],
    )
    return optimizer, scheduler


# The shape of torch's OneCycleLR (its defaults): from lr / 25 up to lr, then down to lr / 25e4.
START_DIV, FINAL_DIV = 25.0, 25.0 * 1e4


def one_cycle(total: int, warmup: int) -> Callable[[int], float]:
    """lr factor per step, as torch's OneCycleLR with cosine annealing: up from 1/25 over
    `warmup` steps, then down to 1/250,000 at `total` (momentum stays fixed).

    A function rather than OneCycleLR itself, so that `frozen_for` can hold some groups at 0.
    """

    def anneal(start: float, end: float, progress: float) -> float:
        return end + (start - end) / 2.0 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    peak = max(warmup - 1, 0)  # OneCycleLR's step of the peak; the last step is total - 1

    def factor(step: int) -> float:
        if step < peak:
            return anneal(1.0 / START_DIV, 1.0, step / peak)
        return anneal(1.0, 1.0 / FINAL_DIV, (step - peak) / max(1, total - 1 - peak))

    return factor


def frozen_for(schedule: Callable[[int], float], steps: int) -> Callable[[int], float]:
    """`schedule`, but 0 for the first `steps` steps: AdamW then moves neither weights nor
    decay. The frozen layers still compute gradients (DDP needs every parameter used)."""

    def factor(step: int) -> float:
        return 0.0 if step < steps else schedule(step)

    return factor
