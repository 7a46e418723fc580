"""The fused CNN + language-model classifier: build, run, save and load it.

Exports resolve on first use (`raycls._lazy`), so `raycls.models.files` imports without torch.
"""

from raycls._lazy import lazy_exports

_EXPORTS = {
    "IMAGENET_MEAN": "backbones",
    "IMAGENET_STD": "backbones",
    "list_backbones": "backbones",
    "FusedClassifier": "classifier",
    "build_model": "classifier",
    "check_model_config": "classifier",
    "load_model": "classifier",
    "save_model": "classifier",
    "list_fusions": "fusion",
    "optimize_for_inference": "inference",
    "list_poolings": "text",
    "resolve_text_encoder": "text",
}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
