"""Make a loaded classifier faster for inference without changing what it predicts.

Two rewrites of the image branch, both standard for serving CNNs:
- BatchNorm folded into the convolution before it (torch.fx), so eval-mode BatchNorm costs
  nothing: same outputs up to float rounding.
- channels-last memory for weights and inputs, the layout oneDNN (CPU) and cuDNN (GPU,
  tensor cores) run convolutions fastest in.
bench/bench_classify.py prints what they gain (its "forward alone" and "optimized forward"
rows). The result is for inference only: folded BatchNorm no longer learns.
"""

from __future__ import annotations

import logging

import torch

from raycls.models.classifier import FusedClassifier

logger = logging.getLogger(__name__)


def optimize_for_inference(model: FusedClassifier) -> FusedClassifier:
    """Fold BatchNorm into convolutions and switch the image branch to channels-last, in place.

    A backbone that torch.fx cannot trace keeps its BatchNorm layers (logged, not an error).
    """
    model.eval()
    backbone = model.backbone
    if backbone is None:
        return model
    from torch.fx.experimental.optimization import fuse

    try:
        backbone.trunk = fuse(backbone.trunk)
    except Exception as err:  # tracing fails on data-dependent control flow; fusing is optional
        logger.info("BatchNorm of %s not folded (%s: %s)", backbone.name, type(err).__name__, err)
    backbone.trunk.to(memory_format=torch.channels_last)
    backbone.channels_last = True
    return model


__all__ = ["optimize_for_inference"]
