"""Training checkpoints: what a worker writes each epoch and reads back to resume.

A checkpoint is a directory: `model/` in the model-directory format (`save_model`),
`train_state.pt` (trainable weights, buffers, optimizer and scheduler state: tensors, numbers
and strings only, read back with `torch.load(weights_only=True)`) and `state.json` (epoch,
history, best so far, early-stopping count, and why a run stopped).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from raycls.models import FusedClassifier, save_model

MODEL_DIR = "model"
TRAIN_STATE_FILE = "train_state.pt"
STATE_FILE = "state.json"


def save_checkpoint(
    path: Path,
    model: FusedClassifier,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: dict[str, Any],
    extra: dict[str, Any],
) -> None:
    """Write a checkpoint into the directory `path`; `extra` goes into the model's config.json."""
    save_model(model, path / MODEL_DIR, extra=extra)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    names |= {n for n, _ in model.named_buffers()}
    weights = {k: v for k, v in model.state_dict().items() if k in names}
    train_state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}
    torch.save({"model": weights, **train_state}, path / TRAIN_STATE_FILE)
    (path / STATE_FILE).write_text(json.dumps(state, indent=1))


def load_checkpoint(
    path: Path,
    model: FusedClassifier,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    device: torch.device,
) -> dict[str, Any]:
    """Restore weights, optimizer and scheduler from `path`; return the saved loop state."""
    saved = torch.load(path / TRAIN_STATE_FILE, map_location=device, weights_only=True)
    result = model.load_state_dict(saved["model"], strict=False)
    if result.unexpected_keys:
        raise ValueError(
            f"checkpoint {path} does not match this model (unexpected "
            f"{result.unexpected_keys[:5]}); use a new --out for a different model"
        )
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    return json.loads((path / STATE_FILE).read_text())


def read_state(path: Path) -> dict[str, Any]:
    """The loop state saved in checkpoint directory `path`."""
    return json.loads((path / STATE_FILE).read_text())
