"""One entry point from a model spec to a ready predictor: decoded images + optional texts in,
label scores out. Bulk classify, evaluate (and serving) all go through `load_predictor`.

Kinds of model (`classify.model_kind`, `--model-kind`):
- raycls: a directory written by `raycls train` (labels fixed by training).
- hf-classifier: a Hugging Face image classifier (ViT, ConvNeXt, ...); labels from its id2label.
- zero-shot: a Hugging Face image-text model (CLIP, SigLIP) scored against `--labels`.
- caption: a text encoder (default the bundled MiniLM) that embeds each row's alt-text or
  caption and picks the nearest label description.
`auto` tells the first three apart from the folder's config.json (see `raycls.models.hf`);
a config that fits none or several is an error that asks for `--model-kind`, never a guess.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from raycls.config import MODEL_FORMAT, MODEL_KINDS, Config, ModelConfig
from raycls.io.images import IMAGENET_MEAN, IMAGENET_STD
from raycls.models.files import CONFIG_FILE, TEXT_DIR, WEIGHTS_FILE
from raycls.models.labels import LabelSet, load_labels

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

ZERO_SHOT_KINDS = ("zero-shot", "caption")
# Pixels of a text-only model are decoded (to check each image) but never used: keep them small.
CAPTION_IMAGE_SIZE = 16


@dataclass(frozen=True)
class ImageInput:
    """What a model's image processor does after resizing: size, 8-bit scale, mean, std."""

    size: int
    mean: tuple[float, float, float] = tuple(IMAGENET_MEAN.tolist())
    std: tuple[float, float, float] = tuple(IMAGENET_STD.tolist())
    scale: float = 1 / 255


@dataclass(frozen=True)
class ModelSpec:
    """A resolved model: its kind is never "auto" here. Crosses into Ray as `to_dict()`."""

    source: str
    kind: str
    image: ImageInput
    labels: LabelSet | None = None
    raw_scores: bool = False
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        if self.kind not in MODEL_KINDS or self.kind == "auto":
            raise ValueError(f"model kind {self.kind!r} must be one of {MODEL_KINDS[1:]}")

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["labels"] = self.labels.to_dict() if self.labels is not None else None
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        data = dict(data)
        image = data.pop("image")
        labels = data.pop("labels")
        return cls(
            image=ImageInput(
                **{k: tuple(v) if isinstance(v, list) else v for k, v in image.items()}
            ),  # fmt: skip
            labels=LabelSet.from_dict(labels) if labels is not None else None,
            **data,
        )


def resolve_model(
    source: str,
    *,
    kind: str = "auto",
    labels: str | LabelSet | None = None,
    raw_scores: bool = False,
    trust_remote_code: bool = False,
    labels_optional: bool = False,
) -> ModelSpec:
    """Tell the model's kind, read its image settings and the labels; load no weights.

    `labels_optional`: a zero-shot spec without labels (the caller fills them in, as evaluate
    does from the data's classes); `load_predictor` refuses it.

    Raises:
        ValueError: unknown kind, a model of another kind than `kind`, a config that fits no
            kind or several, labels missing for zero-shot or given for a model with its own.
    """
    from raycls.models import hf

    if kind not in MODEL_KINDS:
        raise ValueError(
            f"--model-kind {kind!r} is not valid; choose one of: {', '.join(MODEL_KINDS)}"
        )
    if isinstance(labels, str):
        labels = load_labels(labels)
    if kind == "caption":
        from raycls.models.text import resolve_text_encoder

        resolve_text_encoder(source)  # a missing local path fails here, not in every actor
        image = ImageInput(CAPTION_IMAGE_SIZE)
    else:
        config = hf.read_model_file(source, "config.json")
        kind = hf.check_kind(source, config, kind, trust_remote_code)
        if kind == "raycls":
            image = ImageInput(_raycls_settings(source, config).image_size or 128)
            _check_weights(source)
        else:
            pre = hf.read_image_processor(source)
            image = ImageInput(**hf.image_settings(source, pre))
    if kind in ZERO_SHOT_KINDS and labels is None and not labels_optional:
        raise ValueError(
            f"{source!r} is a {kind} model: give the labels to choose from with --labels "
            "cat,dog,... or --labels labels.yaml (classify.labels)"
        )
    if kind not in ZERO_SHOT_KINDS and labels is not None:
        raise ValueError(
            f"{source!r} is a {kind} model with labels of its own; drop --labels (it applies to "
            "zero-shot and caption models only)"
        )
    return ModelSpec(source, kind, image, labels, raw_scores, trust_remote_code)


def _raycls_settings(source: str, config: dict[str, Any]) -> ModelConfig:
    """A raycls model's settings, checked here as in every actor that will load it: a
    config.json with settings out of range (an image size of a million pixels a side) fails
    before Ray starts, not in each actor."""
    try:
        return Config.from_dict({"model": config["model"]}).model
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{source!r}: config.json holds settings raycls refuses: {err}") from err


def _check_weights(source: str) -> None:
    """Read a local raycls model's weights header (tensor names and extents, checked against
    the file's length) on the driver: a missing, truncated or foreign file fails before Ray
    starts instead of in every actor. A remote model is checked where it is loaded."""
    from safetensors import SafetensorError, safe_open

    from raycls.io.storage import is_remote

    if is_remote(source):
        return
    path = Path(source, WEIGHTS_FILE)
    try:
        with safe_open(str(path), framework="numpy"):
            pass
    except (OSError, SafetensorError) as err:
        raise ValueError(f"cannot read {str(path)!r} (the model's weights): {err}") from err


def is_raycls_model(source: str) -> bool:
    """Whether `source` is a folder (or URI) holding a model from `raycls train`."""
    from raycls.io.storage import is_remote, join, read_json

    if not is_remote(source) and not Path(source, CONFIG_FILE).is_file():
        return False
    try:
        return read_json(join(source, CONFIG_FILE)).get("format") == MODEL_FORMAT
    except Exception:  # unreadable or not JSON: not a raycls model either way
        return False


def model_identity(spec: ModelSpec) -> dict[str, Any]:
    """What a classify rerun must match to resume: the weights, and for zero-shot the labels.

    A raycls model keeps the one key earlier versions wrote, so their runs still resume.
    """
    from raycls.bulk.output import model_fingerprint
    from raycls.io.storage import redact
    from raycls.models.hf import weights_file

    if spec.kind == "raycls":
        out = {"model_sha256": model_fingerprint(spec.source)["sha256"]}
        return {**out, "raw_scores": True} if spec.raw_scores else out
    source = _local_source(spec)
    weights = weights_file(source)
    digest = model_fingerprint(source, ("config.json", weights))["sha256"] if weights else None
    out = {"model_kind": spec.kind, "model_sha256": digest or f"hub:{redact(source)}"}
    if spec.labels is not None:
        out["labels_sha256"] = spec.labels.sha256()
    if spec.raw_scores:
        out["raw_scores"] = True
    return out


class Predictor:
    """Images (+ texts) -> scores [N, labels]. Subclasses implement `_logits`.

    `__call__` takes pixels as the bulk pipeline decodes them (`raycls.io.images.preprocess`:
    ImageNet-normalised float, [N, 3, S, S], S = `image.size`) and re-normalises them for the
    model on the device, which costs one multiply-add per pixel.
    """

    activation = "softmax"  # or "sigmoid" (multi-label classifiers)

    def __init__(self, labels: Sequence[str], image: ImageInput, device: str, raw: bool) -> None:
        import torch

        self.labels = list(labels)
        self.image = image
        self.device = device
        self.raw_scores = raw
        # model pixels = imagenet pixels * gain + offset (per channel)
        mean, std = np.array(image.mean), np.array(image.std)
        rgb = 1.0 / (255.0 * image.scale)
        gain = IMAGENET_STD / (rgb * std)
        offset = (IMAGENET_MEAN / rgb - mean) / std
        self._gain = torch.tensor(gain, dtype=torch.float32).view(1, 3, 1, 1).to(device)
        self._offset = torch.tensor(offset, dtype=torch.float32).view(1, 3, 1, 1).to(device)

    def __call__(
        self, pixels: np.ndarray, texts: Sequence[str | None] | None = None
    ) -> tuple[np.ndarray, list[str | None]]:
        """Scores float32 [N, labels] (NaN rows where a row failed) and each row's error."""
        import torch

        texts = list(texts) if texts is not None else [None] * len(pixels)
        cuda = self.device.startswith("cuda")
        with torch.inference_mode(), torch.autocast("cuda", torch.bfloat16, enabled=cuda):
            x = torch.from_numpy(np.ascontiguousarray(pixels)).to(self.device, non_blocking=True)
            logits, errors = self._logits(x.float(), texts)
            logits = logits.float()
            if not self.raw_scores:
                logits = logits.sigmoid() if self.activation == "sigmoid" else logits.softmax(-1)
        scores = logits.cpu().numpy().astype(np.float32)
        for i, error in enumerate(errors):
            if error is not None:
                scores[i] = np.nan
        return scores, errors

    def predict_images(
        self, images: Sequence[Any], texts: Sequence[str | None] | None = None
    ) -> tuple[np.ndarray, list[str | None]]:
        """Decoded RGB PIL images (+ texts) -> as `__call__`."""
        from raycls.io.images import preprocess

        pixels = np.stack([preprocess(im, self.image.size) for im in images])
        return self(pixels, texts)

    def model_pixels(self, x: torch.Tensor) -> torch.Tensor:
        return x * self._gain + self._offset

    def _logits(
        self, x: torch.Tensor, texts: list[str | None]
    ) -> tuple[torch.Tensor, list[str | None]]:
        raise NotImplementedError


class FusedPredictor(Predictor):
    """A model from `raycls train`."""

    def __init__(self, folder: str, spec: ModelSpec, device: str) -> None:
        from raycls.models import load_model, optimize_for_inference

        model = load_model(folder, device, trust_remote_code=spec.trust_remote_code)
        self.model = optimize_for_inference(model)
        super().__init__(self.model.labels, spec.image, device, spec.raw_scores)

    def _logits(
        self, x: torch.Tensor, texts: list[str | None]
    ) -> tuple[torch.Tensor, list[str | None]]:
        tokens = self.model.tokenize(texts)
        tokens = {k: v.to(self.device, non_blocking=True) for k, v in tokens.items()}
        return self.model(x, **tokens), [None] * len(texts)


def _local_source(spec: ModelSpec) -> str:
    """Where the weights are: the bundled MiniLM copy stands in for its hub id (caption kind)."""
    if spec.kind == "caption":
        from raycls.models.text import resolve_text_encoder

        return resolve_text_encoder(spec.source)
    return spec.source


def load_predictor(spec: ModelSpec | dict[str, Any] | str, device: str = "cpu") -> Predictor:
    """The predictor for a resolved spec (or its `to_dict()`, or a model with its own labels
    named by path or hub id), loaded on `device`."""
    from raycls.io.storage import local_copy

    if isinstance(spec, str):
        spec = resolve_model(spec)
    if isinstance(spec, dict):
        spec = ModelSpec.from_dict(spec)
    if spec.kind in ZERO_SHOT_KINDS and spec.labels is None:
        raise ValueError(f"the {spec.kind} model {spec.source!r} needs labels (--labels)")
    # From an object store, a raycls model's files only (not its ray_train/ checkpoints).
    only = (CONFIG_FILE, WEIGHTS_FILE, TEXT_DIR) if spec.kind == "raycls" else None
    with local_copy(_local_source(spec), only=only) as folder:
        if spec.kind == "raycls":
            return FusedPredictor(folder, spec, device)
        if spec.kind == "hf-classifier":
            from raycls.models.hf import HFClassifierPredictor

            return HFClassifierPredictor(folder, spec, device)
        from raycls.models.zeroshot import CaptionPredictor, ZeroShotPredictor

        cls = ZeroShotPredictor if spec.kind == "zero-shot" else CaptionPredictor
        return cls(folder, spec, device)


__all__ = [
    "FusedPredictor",
    "ImageInput",
    "ModelSpec",
    "Predictor",
    "load_predictor",
    "model_identity",
    "resolve_model",
]
