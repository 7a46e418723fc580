"""Backbone weights: a torchvision weights name or a local state-dict file (`weights_kind`),
checked, fetched or loaded into a trunk, and the input size they imply (`resolve_image_size`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torchvision
from torch import nn

if TYPE_CHECKING:
    from raycls.config import ModelConfig

logger = logging.getLogger(__name__)

STATE_DICT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")
# model.image_size from the data: the median side, within these bounds (see resolve_image_size).
IMAGE_SIZE_BOUNDS = (32, 224)
DEFAULT_IMAGE_SIZE = 224  # torchvision's input size, for pretrained weights of unknown origin


def weights_kind(weights: str | None) -> str:
    """'none', 'file' (a local state-dict file) or 'torchvision' (a weights enum name)."""
    if weights is None:
        return "none"
    if weights.endswith(STATE_DICT_SUFFIXES) or os.sep in weights or Path(weights).exists():
        return "file"
    return "torchvision"


def check_weights_name(name: str, weights: str) -> None:
    """Raise ValueError unless `weights` is a torchvision weights name of backbone `name`."""
    valid = ["DEFAULT"] + [w.name for w in torchvision.models.get_model_weights(name)]
    if weights not in valid:
        raise ValueError(
            f"model.backbone_weights={weights!r} is neither a torchvision weights name for "
            f"{name!r} ({', '.join(valid)}) nor an existing state-dict file "
            f"({', '.join(STATE_DICT_SUFFIXES)})"
        )


def fetch_torchvision(name: str, weights: str) -> nn.Module:
    """torchvision's model `name` with `weights`, downloaded unless in $TORCH_HOME already."""
    try:
        return torchvision.models.get_model(name, weights=weights)
    except (OSError, RuntimeError) as err:  # URLError is an OSError
        raise RuntimeError(
            f"could not get torchvision weights {weights!r} for {name!r} ({err}); without "
            "network access, put the file in $TORCH_HOME/hub/checkpoints or pass a local "
            "state-dict file as model.backbone_weights"
        ) from err


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors from a .safetensors file, or a .pt/.pth/.bin file read without unpickling code."""
    if not path.is_file():
        raise ValueError(f"weights file {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{str(path)!r} holds a {type(state).__name__}, not a state dict")
    return state


def load_state_dict_file(trunk: nn.Sequential, path: Path, name: str) -> None:
    """Load `path` into `trunk`, which needs all its tensors; the rest (a head) is dropped."""
    state = read_state_dict(path)
    expected = trunk.state_dict()
    kept = {k: v for k, v in state.items() if k in expected}
    # Anything else is the classifier head (fc, classifier, aux) that this model replaces.
    dropped = sorted(set(state) - set(kept))
    missing = sorted(set(expected) - set(kept))
    if missing:
        raise ValueError(
            f"{str(path)!r} does not fit backbone {name!r}: {len(missing)} tensors missing, e.g. "
            f"{missing[:5]}; the file has e.g. {sorted(state)[:5]}"
        )
    if dropped:
        logger.info("ignoring %d head tensors from %s, e.g. %s", len(dropped), path, dropped[:3])
    trunk.load_state_dict(kept, strict=True)


def resolve_image_size(model: ModelConfig, median_side: int | None) -> int:
    """model.image_size, or when None: the pretrained input size of the backbone's weights,
    else the data's median side clamped to IMAGE_SIZE_BOUNDS (no upscaling of small images,
    no 16x the pixels of what the data holds)."""
    if model.image_size is not None:
        return model.image_size
    if model.backbone_weights is not None:
        return pretrained_image_size(model.backbone, model.backbone_weights)
    lo, hi = IMAGE_SIZE_BOUNDS
    return int(min(hi, max(lo, median_side or hi)))


def pretrained_image_size(backbone: str, weights: str) -> int:
    """The crop size torchvision's weights were trained at; DEFAULT_IMAGE_SIZE for a file."""
    if weights_kind(weights) != "torchvision":
        return DEFAULT_IMAGE_SIZE
    enum = torchvision.models.get_model_weights(backbone)
    chosen = enum.DEFAULT if weights == "DEFAULT" else enum[weights]
    transforms = chosen.transforms  # a functools.partial of the eval transform
    return int(getattr(transforms, "keywords", {}).get("crop_size", DEFAULT_IMAGE_SIZE))
