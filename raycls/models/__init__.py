"""Models: the fused CNN + language-model classifier, the captioner, and predictors for every
kind of `--model` (raycls, Hugging Face classifiers, zero-shot); `load_predictor` loads one.
Imports are lazy: `raycls.models.labels` or the CLI's commands load no torch through here.
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
    "LabelSet": "labels",
    "load_labels": "labels",
    "ModelSpec": "predictor",
    "load_predictor": "predictor",
    "resolve_model": "predictor",
}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
