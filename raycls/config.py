"""Typed, frozen, validated settings; loaded from YAML and `section.key=value` overrides (parsed
and type-checked by `raycls.config_parse`).

No Ray import here: settings cross into Ray as plain dicts (`to_dict`) and are rebuilt inside
workers with `Config.from_dict`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from raycls.config_parse import build_section, merge, parse_overrides

FUSIONS = ("auto", "concat", "gated", "film", "cross_attention", "image_only", "text_only")
# What model.fusion=auto becomes when there is text to fuse (ModelConfig.fusion_for).
AUTO_TEXT_FUSION = "concat"
POOLINGS = ("mean", "cls", "last")
IMAGE_ONLY_HEADS = ("linear", "mlp")
TEXT_ADAPTATIONS = ("frozen", "full", "lora")
METRICS = ("val_accuracy", "val_macro_f1")
CROPS = ("auto", "shift", "resized", "none")
ON_NONFINITE = ("stop", "skip")
# How `raycls self-train` augments pseudo-labelled rows (raycls.fewlabel.selftrain).
PSEUDO_AUGMENTS = ("strong", "same")
DEFAULT_TEXT_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"
DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own decompression-bomb limit
# config.json's "format" in a model directory written by `raycls train`.
MODEL_FORMAT = "raycls-model"
# What `--model` holds; see raycls.models.predictor. "auto" reads it from the model's config.
MODEL_KINDS = ("auto", "raycls", "hf-classifier", "zero-shot", "caption")
# Bigger input files (images, tar members) become error rows instead of being read.
DEFAULT_MAX_FILE_BYTES = 256 * 2**20


def _check_choice(section: str, name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(
            f"{section}.{name}={value!r} is not valid; "
            f"choose one of: {', '.join(map(str, choices))}"
        )


def _check_finite(section: str, settings: Any) -> None:
    """Every number of a section is finite: NaN slips past any range check (NaN < 0 is False)."""
    for f in fields(settings):
        value = getattr(settings, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{section}.{f.name}={value!r} must be a finite number")


# Upper bounds of sizes that allocate with their square or product: far above any real use,
# they stop a typo (or a model folder's config.json) from asking for terabytes.
MAX_IMAGE_SIZE = 4096
MAX_HIDDEN_DIM = 65536
MAX_TEXT_LENGTH = 8192  # the longest context of common text encoders


def _check_range(section: str, name: str, value: float, lo: float, hi: float | None = None) -> None:
    if not math.isfinite(value) or value < lo or (hi is not None and value > hi):
        bound = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ValueError(f"{section}.{name}={value!r} must be {bound}")


@dataclass(frozen=True)
class ModelConfig:
    """The fused CNN + language-model classifier."""

    backbone: str = "resnet18"
    # A torchvision weights name ("DEFAULT", "IMAGENET1K_V1"), a local state-dict file
    # (.safetensors or .pt), or None for random initialisation.
    backbone_weights: str | None = None
    # A Hugging Face hub id or local directory; None (or "none") for image-only models.
    text_encoder: str | None = DEFAULT_TEXT_ENCODER
    pooling: str = "mean"
    text_adaptation: str = "frozen"
    lora_rank: int = 8
    max_text_length: int = 64
    # "auto": image_only when no training example has text (or text_encoder is None), so the
    # text encoder is not loaded for nothing; otherwise concat. Training records the head it
    # chose in the model (`fusion_for`).
    fusion: str = "auto"
    hidden_dim: int = 256
    # The head of image_only models: "linear" (pooled CNN features -> classes, as torchvision's
    # classifiers end) or "mlp" (LayerNorm + MLP of hidden_dim, as the fusion heads; it
    # learnt less on photos: `bench/bench_train.py --override model.image_only_head=mlp`).
    image_only_head: str = "linear"
    dropout: float = 0.1
    modality_dropout: float = 0.2
    # Weight of an extra loss on an image-only linear head (fused models only). Text that
    # names the class lets a fused model fit its training set without the CNN learning what
    # only pixels show (the quick start's fused model learnt shape no better than chance at
    # weight 0); this loss makes the CNN learn what it can on its own. The head is saved and
    # ignored at inference.
    image_loss_weight: float = 0.0
    # Side of the square the CNN sees. None: the backbone's pretrained input size when weights
    # are given, else the training images' median side clamped to [32, 224] (train.data);
    # the size used is recorded in the saved model.
    image_size: int | None = None
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.text_encoder, str) and self.text_encoder.lower() in ("", "none", "null"):
            object.__setattr__(self, "text_encoder", None)
        _check_finite("model", self)
        _check_choice("model", "fusion", self.fusion, FUSIONS)
        _check_choice("model", "pooling", self.pooling, POOLINGS)
        _check_choice("model", "image_only_head", self.image_only_head, IMAGE_ONLY_HEADS)
        _check_choice("model", "text_adaptation", self.text_adaptation, TEXT_ADAPTATIONS)
        if self.text_encoder is None and self.fusion not in ("auto", "image_only"):
            raise ValueError(
                f"model.fusion={self.fusion!r} needs a text encoder; set model.text_encoder to a "
                "hub id or local directory, or use model.fusion=image_only"
            )
        _check_range("model", "max_text_length", self.max_text_length, 1, MAX_TEXT_LENGTH)
        _check_range("model", "hidden_dim", self.hidden_dim, 1, MAX_HIDDEN_DIM)
        _check_range("model", "lora_rank", self.lora_rank, 1)
        _check_range("model", "dropout", self.dropout, 0.0, 1.0)
        _check_range("model", "modality_dropout", self.modality_dropout, 0.0, 1.0)
        _check_range("model", "image_loss_weight", self.image_loss_weight, 0.0)
        if self.image_size is not None:
            _check_range("model", "image_size", self.image_size, 16, MAX_IMAGE_SIZE)

    def fusion_for(self, rows_with_text: int | None = None) -> str:
        """model.fusion, with "auto" decided: image_only without a text encoder or when no
        training example has text (`rows_with_text` == 0; None: not known), else concat."""
        if self.fusion != "auto":
            return self.fusion
        if self.text_encoder is None or rows_with_text == 0:
            return "image_only"
        return AUTO_TEXT_FUSION


@dataclass(frozen=True)
class DataConfig:
    """How labelled data is read and prepared for training."""

    image_column: str = "image"
    label_column: str = "label"
    text_column: str = "text"
    val_fraction: float = 0.1
    augment: bool = True
    # Training crops: "shift" resizes as evaluation does and moves the image by up to 1/8 of
    # its side (reflect-padded), for images near model.image_size; "resized" takes a random
    # 70-100% area crop, for images much larger than it; "auto" picks "shift" when the median
    # image side is under twice model.image_size (bench/bench_train.py compares them);
    # "none" resizes as evaluation does (flips and turns still apply).
    crop: str = "auto"
    # Horizontal flips in augmentation; turn off where mirror images change the class (digits).
    flip: bool = True
    # Also turn training images by a random multiple of 90 degrees (with `flip`: all eight
    # orientations), for images with no up or down: drawn shapes, aerial photos, microscopy.
    rotate90: bool = False
    # Parquet training data only: a column of per-row loss weights (finite, >= 0; null counts
    # 1.0) that multiply each row's loss, and a column of flags (true: a stronger,
    # RandAugment augmentation on top of the usual one). Self-training sets both for its
    # pseudo-labelled rows. Validation stays unweighted and unaugmented.
    weight_column: str | None = None
    strong_augment_column: str | None = None
    # A run stops with an error when more than this fraction of images cannot be decoded.
    max_bad_fraction: float = 0.05
    max_pixels: int = DEFAULT_MAX_PIXELS
    seed: int = 0

    def __post_init__(self) -> None:
        _check_finite("data", self)
        _check_range("data", "val_fraction", self.val_fraction, 0.0, 0.9)
        _check_choice("data", "crop", self.crop, CROPS)
        _check_range("data", "max_bad_fraction", self.max_bad_fraction, 0.0, 1.0)
        _check_range("data", "max_pixels", self.max_pixels, 1)
        _check_range("data", "seed", self.seed, 0)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and distribution settings for `raycls train`."""

    epochs: int = 5
    # Batch, lr, decay and schedule follow the common AdamW + one-cycle recipe for small
    # images (batch 64, lr 2e-3, decay 0.05, torch's OneCycleLR shape with 30% warm-up:
    # raycls.train.schedule.one_cycle); bench/bench_train.py compares raycls with a plain
    # PyTorch loop that uses it.
    batch_size: int = 64
    lr: float = 2e-3
    # Pretrained encoders (CNN with weights, text encoder) train at lr * encoder_lr_scale.
    encoder_lr_scale: float = 0.1
    # The pretrained encoders stay fixed for this many first epochs (linear probing first).
    freeze_encoder_epochs: int = 0
    weight_decay: float = 0.05
    warmup_fraction: float = 0.3
    label_smoothing: float = 0.1
    # Gradient-norm clipping, 0 for none. Off by default, as in torchvision's recipes: a
    # from-scratch CNN's gradient norm runs at 4-7 here, and clipping it at 1.0 every step cost
    # the quick start's CNN most of its shape learning (`bench/plain_shapes.py --size 32
    # [--clip 1.0] --seed 0|1`: shape accuracy 0.96/0.90 unclipped, 0.64-0.78 clipped at 1.0
    # over three runs, in the session that set this default). Set 1.0 when
    # fine-tuning a language model (model.text_adaptation=full), as Hugging Face's Trainer does.
    grad_clip: float = 0.0
    grad_accum_steps: int = 1
    # A step whose loss or gradients are not finite is never applied; "stop" ends the run
    # with a message naming the epoch and step, "skip" goes on and counts them per epoch.
    on_nonfinite: str = "stop"
    # One worker per machine: on one machine it uses every core for torch (trainer._plan_cpus),
    # which is faster than several single-threaded workers that all-reduce every step.
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 1.0
    metric: str = "val_accuracy"
    patience: int = 3
    keep_checkpoints: int = 2
    max_failures: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        _check_finite("train", self)
        for name in ("epochs", "batch_size", "grad_accum_steps", "num_workers", "patience"):
            _check_range("train", name, getattr(self, name), 1)
        _check_range("train", "keep_checkpoints", self.keep_checkpoints, 1)
        _check_range("train", "freeze_encoder_epochs", self.freeze_encoder_epochs, 0)
        _check_choice("train", "on_nonfinite", self.on_nonfinite, ON_NONFINITE)
        _check_range("train", "lr", self.lr, 0.0)
        _check_range("train", "encoder_lr_scale", self.encoder_lr_scale, 0.0)
        _check_range("train", "weight_decay", self.weight_decay, 0.0)
        _check_range("train", "grad_clip", self.grad_clip, 0.0)  # 0: no clipping
        _check_range("train", "max_failures", self.max_failures, -1)  # -1: retry forever
        _check_range("train", "seed", self.seed, 0)
        _check_range("train", "warmup_fraction", self.warmup_fraction, 0.0, 1.0)
        _check_range("train", "label_smoothing", self.label_smoothing, 0.0, 1.0)
        _check_range("train", "cpus_per_worker", self.cpus_per_worker, 0.0)
        _check_range("train", "gpus_per_worker", self.gpus_per_worker, 0.0)
        _check_choice("train", "metric", self.metric, METRICS)


@dataclass(frozen=True)
class ClassifyConfig:
    """Settings of the bulk pipeline (`raycls classify`)."""

    captioner: str | None = None  # hub id or local directory of an image-to-text model
    caption_prompt: str | None = None
    max_new_tokens: int = 30
    text_column: str | None = None  # alt-text already in the input
    image_column: str = "image"
    id_column: str | None = None
    top_k: int = 5
    batch_size: int = 64
    caption_batch_size: int = 16
    # Actor pools; None sizes each from the cluster when the job starts and lets it autoscale
    # (raycls.bulk.sizing). A number pins the pool to that many actors.
    classify_actors: int | None = None
    caption_actors: int | None = None
    cpus_per_classify_actor: float = 1.0
    cpus_per_caption_actor: float = 1.0
    gpus_per_classify_actor: float = 0.0
    gpus_per_caption_actor: float = 0.0
    # Input rows per output Parquet file, at most (a shard: committed whole, skipped whole by a
    # rerun; read by many tasks of a few batches, so its size does not limit parallelism). A
    # million rows make 100 files; a small input is cut into more, smaller shards
    # (raycls.bulk.pipeline.MIN_SHARDS) so that its results are committed as they come.
    shard_size: int = 10_000
    max_pixels: int = DEFAULT_MAX_PIXELS
    trust_remote_code: bool = False
    # Images reach the captioner as RGB squares of this side (its processor resizes further).
    caption_image_size: int = 384
    model_kind: str = "auto"
    # Zero-shot and caption models: "cat,dog,..." or a labels YAML (raycls.models.labels).
    labels: str | None = None
    # Keep cosine similarities (zero-shot) or logits instead of softmax scores.
    raw_scores: bool = False
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES  # per image file or tar member

    def __post_init__(self) -> None:
        if isinstance(self.captioner, str) and self.captioner.lower() in ("", "none", "null"):
            object.__setattr__(self, "captioner", None)
        _check_finite("classify", self)
        for name in ("max_new_tokens", "top_k", "batch_size", "caption_batch_size", "shard_size"):
            _check_range("classify", name, getattr(self, name), 1)
        _check_range("classify", "caption_image_size", self.caption_image_size, 16, MAX_IMAGE_SIZE)
        _check_range("classify", "max_pixels", self.max_pixels, 1)
        _check_choice("classify", "model_kind", self.model_kind, MODEL_KINDS)
        _check_range("classify", "max_file_bytes", self.max_file_bytes, 1)
        for name in ("classify_actors", "caption_actors"):
            if getattr(self, name) is not None:
                _check_range("classify", name, getattr(self, name), 1)
        for name in (
            "cpus_per_classify_actor",
            "cpus_per_caption_actor",
            "gpus_per_classify_actor",
            "gpus_per_caption_actor",
        ):
            _check_range("classify", name, getattr(self, name), 0.0)


@dataclass(frozen=True)
class Config:
    """All settings, one section per job."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    classify: ClassifyConfig = field(default_factory=ClassifyConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Plain nested dict, for crossing into Ray (train_loop_config, param_space)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Config:
        """Rebuild from a nested dict; unknown sections or keys raise ValueError."""
        data = data or {}
        sections = {f.name: f.type for f in fields(cls)}
        unknown = set(data) - set(sections)
        if unknown:
            raise ValueError(
                f"unknown config section(s) {sorted(unknown)}; valid sections: {sorted(sections)}"
            )
        built = {}
        for f in fields(cls):
            section_cls = _SECTION_TYPES[f.name]
            built[f.name] = build_section(f.name, section_cls, data.get(f.name) or {})
        return cls(**built)

    def replace(self, **sections: Any) -> Config:
        """Copy with whole sections or `section.key` values replaced (dicts merge)."""
        data = self.to_dict()
        for name, value in sections.items():
            if isinstance(value, dict):
                data[name].update(value)
            else:
                data[name] = dataclasses.asdict(value)
        return Config.from_dict(data)


_SECTION_TYPES: dict[str, type] = {
    "model": ModelConfig,
    "data": DataConfig,
    "train": TrainConfig,
    "classify": ClassifyConfig,
}


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    **sections: dict[str, Any],
) -> Config:
    """Defaults, then a YAML file, then keyword `sections`, then `section.key=value` overrides.

    `path` may be a URI (s3://, gs://), such as the best_config.yaml a sweep wrote there.
    """
    from raycls.io.storage import read_bytes

    data: dict[str, Any] = {}
    if path is not None:
        text = read_bytes(str(path))
        if text is None:
            raise ValueError(f"config file {str(path)!r} does not exist")
        try:
            loaded = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"config file {str(path)!r} is not valid YAML: {e}") from e
        if not isinstance(loaded, dict):
            raise ValueError(f"config file {str(path)!r} must hold a mapping of sections")
        data = loaded
    data = merge(data, {k: v for k, v in sections.items() if v})
    data = merge(data, parse_overrides(overrides))
    return Config.from_dict(data)


def save_config(config: Config, path: str | Path) -> None:
    """Write a YAML file that `load_config` (and `raycls train --config`) reads back.

    `path` may be a URI (s3://...), as for `load_config`.
    """
    from raycls.io.storage import write_bytes

    write_bytes(str(path), yaml.safe_dump(config.to_dict(), sort_keys=False).encode())
