"""The training loss: cross-entropy (with label smoothing) of the fused head, plus
model.image_loss_weight times that of the image-only head, each row weighted by its loss
weight (data.weight_column; 1.0 without one).

Each row's loss is multiplied by its weight and the batch takes the mean over rows,
sum(w * l) / n, not sum(w * l) / sum(w): a row's pull on the model then depends on its own
weight alone, not on which rows share its batch (with sum(w) a batch of pseudo-labelled rows
only would train at full strength), a weight of 0 leaves a row out without dividing by zero,
and weights of 1.0 give the plain mean.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def weighted_cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """mean over rows of weight * cross-entropy; the plain mean when `weights` is None."""
    per_row = F.cross_entropy(
        logits.float(), labels, label_smoothing=label_smoothing, reduction="none"
    )
    if weights is None:
        return per_row.mean()
    return (per_row * weights.to(per_row.dtype)).sum() / max(len(per_row), 1)


def training_loss(
    logits: torch.Tensor,
    image_logits: torch.Tensor | None,
    labels: torch.Tensor,
    weights: torch.Tensor | None,
    *,
    label_smoothing: float,
    image_loss_weight: float,
) -> torch.Tensor:
    """The fused head's weighted loss, plus the image-only head's times image_loss_weight."""
    loss = weighted_cross_entropy(logits, labels, weights, label_smoothing)
    if image_logits is not None:  # model.image_loss_weight > 0
        image = weighted_cross_entropy(image_logits, labels, weights, label_smoothing)
        loss = loss + image_loss_weight * image
    return loss
