"""Hugging Face models as raycls predictors: which kind a folder holds, its image settings, and
image classifiers (`AutoModelForImageClassification`, labels from id2label).

Kinds are told apart by the config's `architectures` (the class the weights were saved from)
against transformers' own task mappings, never by the model's name: a `CLIPModel` is zero-shot,
a `ViTForImageClassification` a classifier. A config without `architectures` whose model type
serves both tasks (CLIP, SigLIP) is ambiguous and needs `--model-kind`.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from raycls.config import MODEL_FORMAT
from raycls.io.storage import is_remote, join, read_bytes
from raycls.models.predictor import ModelSpec, Predictor

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_KIND_HINT = "pass --model-kind (classify.model_kind): raycls, hf-classifier, zero-shot or caption"


def _is_hub_id(source: str) -> bool:
    return not is_remote(source) and not Path(source).exists() and bool(_HUB_ID.match(source))


def read_model_file(source: str, name: str) -> dict[str, Any]:
    """A JSON file of a model folder, URI or hub id (hub: from the local cache or the hub)."""
    if _is_hub_id(source):
        from huggingface_hub import hf_hub_download

        try:
            path = hf_hub_download(source, name)
        except Exception as e:  # offline without a cached copy, unknown repo, missing file
            raise ValueError(
                f"cannot get {name} of model {source!r} from the Hugging Face hub or its cache "
                f"({type(e).__name__}: {e}); give a local folder saved with save_pretrained, "
                "or check the id"
            ) from e
        data = Path(path).read_bytes()
    else:
        if not is_remote(source) and not Path(source).exists():
            raise ValueError(f"model {source!r} does not exist; give a folder, URI or hub id")
        data = read_bytes(join(source, name))
        if data is None:
            raise ValueError(
                f"{source!r} has no {name}: it is not a raycls model (from `raycls train`) nor a "
                "Hugging Face model saved with save_pretrained (model and processor)"
            )
    try:
        return json.loads(data)
    except json.JSONDecodeError as e:
        raise ValueError(f"{join(source, name)!r} is not valid JSON: {e}") from e


def read_image_processor(source: str) -> dict[str, Any]:
    """The image processor's settings: preprocessor_config.json, or the processor_config.json
    that a whole processor's save_pretrained writes in transformers 5 (it nests them)."""
    try:
        return read_model_file(source, "preprocessor_config.json")
    except ValueError as first:
        try:
            return read_model_file(source, "processor_config.json")
        except ValueError:
            raise first from None


def _mapping_names(mapping: dict[str, Any], model_type: str) -> set[str]:
    names = mapping.get(model_type, ())
    return {names} if isinstance(names, str) else set(names)


def candidate_kinds(config: dict[str, Any]) -> set[str]:
    """The kinds a config.json fits: {"raycls"}, {"hf-classifier"}, {"zero-shot"}, both, none."""
    if config.get("format") == MODEL_FORMAT:
        return {"raycls"}
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES as CLASSIFIERS,
    )
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_ZERO_SHOT_IMAGE_CLASSIFICATION_MAPPING_NAMES as ZERO_SHOT,
    )

    model_type = config.get("model_type", "")
    classifier, zero_shot = (
        _mapping_names(CLASSIFIERS, model_type),
        _mapping_names(ZERO_SHOT, model_type),
    )
    archs = set(config.get("architectures") or ())
    if archs:  # what the weights were saved as decides: a classification head was trained
        kinds = {"hf-classifier"} if archs & classifier else set()
        return kinds | ({"zero-shot"} if archs & zero_shot else set())
    return ({"hf-classifier"} if classifier else set()) | ({"zero-shot"} if zero_shot else set())


def check_kind(
    source: str, config: dict[str, Any], kind: str, trust_remote_code: bool = False
) -> str:
    """The kind of the model in `source`: `kind` if the config fits it, else a clear error.

    A model with its own code (`auto_map`) is unknown to transformers' mappings: it runs only
    with trust_remote_code and an explicit kind, which its Auto class then checks on loading.
    """
    kinds = candidate_kinds(config)
    what = f"model_type {config.get('model_type')!r}, architectures {config.get('architectures')}"
    if config.get("auto_map") and not kinds and kind != "raycls":
        if not trust_remote_code:
            raise ValueError(
                f"{source!r} ({what}) ships its own model code; it runs only with "
                "trust_remote_code (--trust-remote-code, classify.trust_remote_code=true) and "
                "an explicit --model-kind"
            )
        if kind == "auto":
            raise ValueError(f"{source!r} ({what}) ships its own model code; {_KIND_HINT}")
        return kind
    if kind == "auto":
        if len(kinds) == 1:
            return kinds.pop()
        if kinds:
            raise ValueError(
                f"{source!r} ({what}) fits several kinds {sorted(kinds)}; {_KIND_HINT}"
            )
        raise ValueError(
            f"{source!r} ({what}) is neither a raycls model, an image classifier nor a zero-shot "
            "image-text model; a text encoder works with --model-kind caption"
        )
    if kind not in kinds:
        fits = f"it fits {sorted(kinds)}" if kinds else "it fits none of the image kinds"
        raise ValueError(
            f"{source!r} ({what}) is not a {kind} model: {fits}. A classifier needs weights "
            "saved with their classification head (architectures *ForImageClassification); "
            f"{_KIND_HINT}"
        )
    return kind


def _side(value: Any, source: str) -> int:
    if isinstance(value, int):
        return value
    if isinstance(value, dict):
        for key in ("height", "shortest_edge"):
            if isinstance(value.get(key), int):
                return value[key]
    raise ValueError(
        f"cannot tell the input size of {source!r} from its image processor: {value!r}"
    )


def image_settings(source: str, pre: dict[str, Any]) -> dict[str, Any]:
    """ImageInput fields from a preprocessor_config.json.

    raycls resizes the shorter side and centre-crops to a square (CLIP's processor does the
    same); processors that squash to a square (ViT, SigLIP) see the same pixels on square images.
    """
    pre = pre.get("image_processor", pre)  # a processor_config.json nests it
    crop = pre.get("do_center_crop") and pre.get("crop_size") is not None
    size = _side(pre["crop_size"] if crop else pre.get("size"), source)
    normalize = pre.get("do_normalize", True)
    return {
        "size": size,
        "mean": tuple(pre.get("image_mean", (0.5,) * 3)) if normalize else (0.0,) * 3,
        "std": tuple(pre.get("image_std", (0.5,) * 3)) if normalize else (1.0,) * 3,
        "scale": float(pre.get("rescale_factor", 1 / 255)) if pre.get("do_rescale", True) else 1.0,
    }


def weights_file(source: str) -> str | None:
    """The name of the weights (or their index) in a local or URI folder; None for hub ids."""
    if _is_hub_id(source):
        return None
    from raycls.io.storage import is_file

    for name in WEIGHT_FILES:
        if is_file(join(source, name)):
            return name
    return None


def _labels(config: Any, source: str) -> list[str]:
    id2label = {int(k): v for k, v in (config.id2label or {}).items()}
    if sorted(id2label) != list(range(config.num_labels)):
        raise ValueError(
            f"{source!r}: id2label {id2label} does not cover ids 0..{config.num_labels - 1}"
        )
    labels = [str(id2label[i]) for i in range(config.num_labels)]
    if len(set(labels)) != len(labels):
        raise ValueError(f"{source!r}: id2label repeats names: {labels}")
    if all(name == f"LABEL_{i}" for i, name in enumerate(labels)):
        logger.warning("%s has no label names (id2label is LABEL_0..): outputs say LABEL_i", source)
    return labels


class HFClassifierPredictor(Predictor):
    """`AutoModelForImageClassification`; softmax scores (sigmoid for multi-label models)."""

    def __init__(self, folder: str, spec: ModelSpec, device: str) -> None:
        import torch
        from transformers import AutoModelForImageClassification

        self.model = AutoModelForImageClassification.from_pretrained(
            folder, trust_remote_code=spec.trust_remote_code, dtype=torch.float32
        )
        self.model.to(device).eval()
        if self.model.config.problem_type == "multi_label_classification":
            self.activation = "sigmoid"
        super().__init__(
            _labels(self.model.config, spec.source), spec.image, device, spec.raw_scores
        )

    def _logits(
        self, x: torch.Tensor, texts: list[str | None]
    ) -> tuple[torch.Tensor, list[str | None]]:
        return self.model(pixel_values=self.model_pixels(x)).logits, [None] * len(x)


__all__ = [
    "HFClassifierPredictor",
    "candidate_kinds",
    "check_kind",
    "image_settings",
    "read_model_file",
    "weights_file",
]
