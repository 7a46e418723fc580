"""The image branch: a torchvision classification network cut before its pooling and head.

`BACKBONES` maps every torchvision classification architecture that ends in a spatial feature
map to a spec naming the child modules that compute that map (the trunk). The trunk keeps
torchvision's parameter names, so torchvision-format state-dict files load into it directly.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

from raycls.models.weights import (
    check_weights_name,
    fetch_torchvision,
    load_state_dict_file,
    weights_kind,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class BackboneSpec:
    """How to take the last spatial feature map out of one torchvision model family."""

    trunk: tuple[str, ...]  # child modules run in order; their output is [B, C, h, w]
    final_relu: bool = False  # DenseNet applies its last ReLU in forward(), not in a module
    # GoogLeNet and Inception v3 trained on inputs renormalised to mean 0.5, std 0.5; torchvision
    # turns this on whenever it loads their weights, so it is part of the architecture.
    half_normalised_when_pretrained: bool = False


_FEATURES = BackboneSpec(trunk=("features",))
_RESNET = BackboneSpec(
    trunk=("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
)
_GOOGLENET = BackboneSpec(
    trunk=(
        "conv1",
        "maxpool1",
        "conv2",
        "conv3",
        "maxpool2",
        "inception3a",
        "inception3b",
        "maxpool3",
        "inception4a",
        "inception4b",
        "inception4c",
        "inception4d",
        "inception4e",
        "maxpool4",
        "inception5a",
        "inception5b",
    ),  # fmt: skip
    half_normalised_when_pretrained=True,
)
_INCEPTION = BackboneSpec(
    trunk=(
        "Conv2d_1a_3x3",
        "Conv2d_2a_3x3",
        "Conv2d_2b_3x3",
        "maxpool1",
        "Conv2d_3b_1x1",
        "Conv2d_4a_3x3",
        "maxpool2",
        "Mixed_5b",
        "Mixed_5c",
        "Mixed_5d",
        "Mixed_6a",
        "Mixed_6b",
        "Mixed_6c",
        "Mixed_6d",
        "Mixed_6e",
        "Mixed_7a",
        "Mixed_7b",
        "Mixed_7c",
    ),  # fmt: skip
    half_normalised_when_pretrained=True,
)
# Keyed by the torchvision module that defines each builder. Vision transformers (vit_*) are
# left out: they end in a token sequence, not a spatial map.
_FAMILY_SPECS: dict[str, BackboneSpec] = {
    "alexnet": _FEATURES,
    "convnext": _FEATURES,
    "densenet": BackboneSpec(trunk=("features",), final_relu=True),
    "efficientnet": _FEATURES,
    "googlenet": _GOOGLENET,
    "inception": _INCEPTION,
    "maxvit": BackboneSpec(trunk=("stem", "blocks")),
    "mnasnet": BackboneSpec(trunk=("layers",)),
    "mobilenetv2": _FEATURES,
    "mobilenetv3": _FEATURES,
    "regnet": BackboneSpec(trunk=("stem", "trunk_output")),
    "resnet": _RESNET,
    "shufflenetv2": BackboneSpec(trunk=("conv1", "maxpool", "stage2", "stage3", "stage4", "conv5")),
    "squeezenet": _FEATURES,
    "swin_transformer": BackboneSpec(trunk=("features", "norm", "permute")),
    "vgg": _FEATURES,
}


def _registry() -> dict[str, BackboneSpec]:
    out = {}
    for name in torchvision.models.list_models(module=torchvision.models):
        family = torchvision.models.get_model_builder(name).__module__.rsplit(".", 1)[-1]
        if family in _FAMILY_SPECS:
            out[name] = _FAMILY_SPECS[family]
    return out


BACKBONES: dict[str, BackboneSpec] = _registry()


def list_backbones() -> list[str]:
    """Names accepted as `model.backbone`."""
    return sorted(BACKBONES)


class _HalfNormalise(nn.Module):
    """Map ImageNet-normalised pixels to mean 0.5 / std 0.5, as torchvision's transform_input."""

    def __init__(self) -> None:
        super().__init__()
        mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        self.register_buffer("scale", (std / 0.5).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", ((mean - 0.5) / 0.5).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


class Backbone(nn.Module):
    """A CNN trunk returning its last feature map [B, C, h, w]; `channels` is C."""

    def __init__(self, name: str, trunk: nn.Sequential, pretrained: bool, image_size: int):
        super().__init__()
        self.name = name
        self.trunk = trunk
        self.pretrained = pretrained
        # Set by models.inference.optimize_for_inference, with weights already channels-last.
        self.channels_last = False
        self.channels, self.grid = self._probe(image_size)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            pixels = pixels.contiguous(memory_format=torch.channels_last)
        return self.trunk(pixels)

    @torch.no_grad()
    def _probe(self, image_size: int) -> tuple[int, tuple[int, int]]:
        was_training = self.training
        self.eval()  # a probe in training mode would move BatchNorm running statistics
        try:
            out = self.trunk(torch.zeros(1, 3, image_size, image_size))
        except RuntimeError as err:
            raise ValueError(
                f"backbone {self.name!r} cannot run at model.image_size={image_size}: {err}"
            ) from err
        finally:
            self.train(was_training)
        if out.dim() != 4:
            raise ValueError(f"backbone {self.name!r} gave shape {tuple(out.shape)}, not [B,C,h,w]")
        return out.shape[1], (out.shape[2], out.shape[3])


def check_backbone(name: str, weights: str | None) -> None:
    """Raise ValueError unless `name` is a supported backbone and `weights` one of its weights
    names or an existing state-dict file. Cheap: builds nothing, so a run can check its
    settings before it starts workers."""
    if name not in BACKBONES:
        choices = list_backbones()
        raise ValueError(
            f"model.backbone={name!r} is not a supported torchvision backbone; choose one of "
            f"{len(choices)}: {', '.join(choices)}"
        )
    kind = weights_kind(weights)
    if kind == "torchvision":
        check_weights_name(name, weights)
    elif kind == "file" and not Path(weights).is_file():
        raise ValueError(f"model.backbone_weights: weights file {weights!r} does not exist")


def build_backbone(
    name: str, weights: str | None, image_size: int, load_weights: bool = True
) -> Backbone:
    """Build `name` with torchvision weights, a local state-dict file, or random init.

    With `load_weights=False` the architecture is the one those weights imply, randomly
    initialised, for loading a saved model.
    """
    # Loading a saved model needs only the architecture: its weights file may be long gone.
    check_backbone(name, weights if load_weights else None)
    spec, kind = BACKBONES[name], weights_kind(weights)
    kwargs: dict[str, Any] = {}
    if kind == "torchvision":
        if spec.half_normalised_when_pretrained:
            kwargs = {"transform_input": True, "init_weights": False}
    if kind == "torchvision" and load_weights:
        model = fetch_torchvision(name, weights)
    else:
        model = torchvision.models.get_model(name, weights=None, **kwargs)
    # A ModuleList (MaxViT's blocks) becomes a Sequential with the same parameter names.
    children = [
        (child, nn.Sequential(*m) if isinstance(m, nn.ModuleList) else m)
        for child, m in ((child, getattr(model, child)) for child in spec.trunk)
    ]
    if spec.half_normalised_when_pretrained and getattr(model, "transform_input", False):
        children.insert(0, ("half_normalise", _HalfNormalise()))
    if spec.final_relu:
        children.append(("final_relu", nn.ReLU()))
    trunk = nn.Sequential(OrderedDict(children))
    if kind == "file" and load_weights:
        load_state_dict_file(trunk, Path(weights), name)
    return Backbone(name, trunk, pretrained=kind != "none", image_size=image_size)


__all__ = [
    "BACKBONES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Backbone",
    "BackboneSpec",
    "build_backbone",
    "check_backbone",
    "list_backbones",
]
