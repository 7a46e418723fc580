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
    """AdamW and its per-step schedule: warm-up then cosine; pretrained encoders at 0 while
    train.freeze_encoder_epochs last."""
    optimizer = torch.optim.AdamW(model.param_groups(t.lr, t.encoder_lr_scale, t.weight_decay))
    total = steps_per_epoch * t.epochs
    schedule = warmup_cosine(total, round(t.warmup_fraction * total))
    frozen = frozen_for(schedule, t.freeze_encoder_epochs * steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        [frozen if g["name"].startswith("encoder") else schedule for g in optimizer.param_groups],
    )
    return optimizer, scheduler


def warmup_cosine(total: int, warmup: int) -> Callable[[int], float]:
    """lr factor per step: linear warm-up over `warmup` steps, then cosine to 0 at `total`."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def frozen_for(schedule: Callable[[int], float], steps: int) -> Callable[[int], float]:
    """`schedule`, but 0 for the first `steps` steps: AdamW then moves neither weights nor
    decay. The frozen layers still compute gradients (DDP needs every parameter used)."""

    def factor(step: int) -> float:
        return 0.0 if step < steps else schedule(step)

    return factor
