"""The classifier as a trace-friendly graph for export: fixed inputs, no data-dependent branch.

`FusedClassifier.forward` checks batch sizes in Python and, at inference, skips the text
encoder when no example has text; tracers (ONNX, TorchScript) cannot follow either. This graph
always runs every branch the model has and picks the learned "no text" vector per example with
`torch.where`, which gives the same logits (the parity checks in `raycls.serve.export` compare).
"""

from __future__ import annotations

import torch
from torch import nn

from raycls.models.classifier import FusedClassifier
from raycls.models.fusion import Features


def graph_inputs(model: FusedClassifier) -> list[str]:
    """Names of the graph's inputs, in order: pixels and/or the three text inputs."""
    names = ["pixels"] if model.backbone is not None else []
    if model.text is not None:
        names += ["input_ids", "attention_mask", "has_text"]
    return names


class ExportGraph(nn.Module):
    """Inputs as `graph_inputs(model)` names them -> logits [B, num_labels]."""

    def __init__(self, model: FusedClassifier) -> None:
        super().__init__()
        self.model = model
        self.inputs = graph_inputs(model)
        self.eval()  # the wrapper too: exporters warn about (and trace) a module in training mode

    def forward(
        self,
        pixels: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        has_text: torch.Tensor | None = None,
    ) -> torch.Tensor:
        m, mask = self.model, attention_mask
        image_map = m.backbone(pixels) if m.backbone is not None else None
        if m.text is None:
            has_text = torch.zeros_like(pixels[:, 0, 0, 0], dtype=torch.bool)
            return m.head(Features(image_map, None, None, None, has_text))
        pooled, tokens = m.text(input_ids, mask)
        text_vec = torch.where(has_text.unsqueeze(1), pooled, m.no_text.expand_as(pooled))
        if not m.uses_text_tokens:
            tokens = mask = None
        return m.head(Features(image_map, text_vec, tokens, mask, has_text))
