"""The fused CNN + language-model classifier: build, run, save and load it."""

from raycls.models.backbones import IMAGENET_MEAN, IMAGENET_STD, list_backbones
from raycls.models.classifier import (
    FusedClassifier,
    build_model,
    check_model_config,
    load_model,
    save_model,
)
from raycls.models.fusion import list_fusions
from raycls.models.inference import optimize_for_inference
from raycls.models.text import list_poolings, resolve_text_encoder

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "FusedClassifier",
    "build_model",
    "check_model_config",
    "list_backbones",
    "list_fusions",
    "list_poolings",
    "load_model",
    "optimize_for_inference",
    "resolve_text_encoder",
    "save_model",
]
