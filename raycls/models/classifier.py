"""The fused classifier: CNN image branch + language-model text branch + fusion head.

A saved model is a directory: `config.json` (settings, labels, versions), `model.safetensors`
(every weight, LoRA merged in) and `text_encoder/` (the Hugging Face config and tokenizer), so
loading needs no network, no pickle and not the original text-encoder path.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from raycls.config import MODEL_FORMAT, Config, ModelConfig
from raycls.models.backbones import Backbone, build_backbone, check_backbone
from raycls.models.files import CONFIG_FILE, TEXT_DIR, WEIGHTS_FILE
from raycls.models.fusion import Features, build_fusion, fusion_spec
from raycls.models.text import TextEncoder, build_text_encoder, resolve_text_encoder
from raycls.models.weights import resolve_image_size

logger = logging.getLogger(__name__)

# 2: model.image_only_head (image-only models end in one linear layer); format 1 files still load,
# their image-only models with the LayerNorm + MLP head they were saved with.
FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)


class FusedClassifier(nn.Module):
    """Image + optional text -> logits over `labels`."""

    def __init__(
        self,
        config: ModelConfig,
        labels: list[str],
        backbone: Backbone | None,
        text: TextEncoder | None,
    ):
        super().__init__()
        self.config = config
        self.labels = list(labels)
        self.backbone = backbone
        self.text = text
        self.uses_text_tokens = fusion_spec(config.fusion).uses_text_tokens
        text_dim = text.dim if text is not None else 0
        # Stands in for the pooled text of examples without text (and under modality dropout).
        self.no_text = nn.Parameter(torch.randn(text_dim) * 0.02) if text is not None else None
        self.head = build_fusion(
            config.fusion,
            backbone.channels if backbone is not None else 0,
            text_dim,
            config.hidden_dim,
            len(self.labels),
            config.dropout,
            config.image_only_head,
        )
        # Trained by train.loop when model.image_loss_weight > 0; unused at inference.
        both = backbone is not None and text is not None and config.image_loss_weight > 0
        self.image_head = nn.Linear(backbone.channels, len(self.labels)) if both else None

    def image_logits(self, image_map: torch.Tensor) -> torch.Tensor:
        """The image-only head's logits from the CNN's feature map [B, C, h, w]."""
        return self.image_head(image_map.mean(dim=(2, 3)))

    def tokenize(self, texts: list[str | None]) -> dict[str, torch.Tensor]:
        """input_ids, attention_mask and has_text; None, empty or blank text counts as absent."""
        present = [isinstance(t, str) and bool(t.strip()) for t in texts]
        has_text = torch.tensor(present, dtype=torch.bool)
        if self.text is None:
            return {"has_text": has_text}
        batch = self.text.tokenize([t if p else "" for t, p in zip(texts, present, strict=True)])
        return {**batch, "has_text": has_text}

    def forward(
        self,
        pixels: torch.Tensor | None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        has_text: torch.Tensor | None = None,
        with_image_logits: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]:
        """Logits [B, num_labels]; without input_ids every example counts as text-free.

        with_image_logits: also return the image-only head's logits (None without that head),
        as training does for model.image_loss_weight.
        """
        device = self._device()
        sizes = [t.shape[0] for t in (pixels, input_ids, has_text) if t is not None]
        if not sizes or len(set(sizes)) > 1:
            raise ValueError(
                f"pixels, input_ids and has_text must share one batch size, got sizes {sizes}"
            )
        batch_size = sizes[0]
        if self.backbone is not None and pixels is None:
            raise ValueError(f"model.fusion={self.config.fusion!r} needs pixels")
        image_map = self.backbone(pixels.to(device)) if self.backbone is not None else None
        if has_text is None:
            has_text = torch.full((batch_size,), input_ids is not None, dtype=torch.bool)
        has_text = has_text.to(device=device, dtype=torch.bool)
        if self.text is None:
            logits = self.head(Features(image_map, None, None, None, has_text))
        else:
            logits = self._fuse(image_map, input_ids, attention_mask, has_text, batch_size)
        if not with_image_logits:
            return logits
        return logits, self.image_logits(image_map) if self.image_head is not None else None

    def _fuse(
        self,
        image_map: torch.Tensor | None,
        input_ids: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        has_text: torch.Tensor,
        batch_size: int,
    ) -> torch.Tensor:
        device = has_text.device
        if self.training and self.config.modality_dropout > 0:
            has_text = has_text & (
                torch.rand(batch_size, device=device) >= self.config.modality_dropout
            )
        no_text = self.no_text.expand(batch_size, -1)
        tokens = mask = None
        # At inference a batch without any text skips the encoder; in training it still runs so
        # every parameter gets a gradient (DistributedDataParallel requires it).
        if input_ids is None or (not self.training and not has_text.any()):
            text_vec = no_text
        else:
            input_ids = input_ids.to(device)
            if attention_mask is None:
                attention_mask = torch.ones_like(input_ids)
            mask = attention_mask.to(device)
            pooled, tokens = self.text(input_ids, mask)
            text_vec = torch.where(has_text.unsqueeze(1), pooled, no_text)
            if not self.uses_text_tokens:
                tokens = mask = None
        return self.head(Features(image_map, text_vec, tokens, mask, has_text))

    def _device(self) -> torch.device:
        return next(self.head.parameters()).device

    def param_groups(
        self, lr: float, encoder_lr_scale: float, weight_decay: float
    ) -> list[dict[str, Any]]:
        """AdamW groups: pretrained encoders at lr * encoder_lr_scale; no decay on 1-D params."""
        encoder_ids = set()
        if self.text is not None:
            encoder_ids |= {id(p) for p in self.text.parameters()}
        if self.backbone is not None and self.backbone.pretrained:
            encoder_ids |= {id(p) for p in self.backbone.parameters()}
        groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
        for param in self.parameters():
            if param.requires_grad:
                # Biases, norm scales and the learned "no text" vectors: decay would only shrink
                # them towards zero without regularising anything.
                key = (id(param) in encoder_ids, param.ndim >= 2)
                groups.setdefault(key, []).append(param)
        return [
            {
                "params": params,
                "lr": lr * encoder_lr_scale if encoder else lr,
                "weight_decay": weight_decay if decay else 0.0,
                "name": f"{'encoder' if encoder else 'head'}_{'decay' if decay else 'no_decay'}",
            }
            for (encoder, decay), params in sorted(groups.items())
        ]


def _assemble(
    config: ModelConfig, labels: list[str], text_source: str | None, pretrained: bool
) -> FusedClassifier:
    labels = list(labels)
    if not labels or len(set(labels)) != len(labels):
        raise ValueError(f"labels must be a non-empty list of distinct names, got {labels!r}")
    spec = fusion_spec(config.fusion)
    backbone = text = None
    if spec.uses_image:
        backbone = build_backbone(
            config.backbone, config.backbone_weights, config.image_size, load_weights=pretrained
        )
    if spec.uses_text:
        text = build_text_encoder(
            text_source,
            config.pooling,
            config.max_text_length,
            trust_remote_code=config.trust_remote_code,
            pretrained=pretrained,
        )
    return FusedClassifier(config, labels, backbone, text)


def _adapt(model: FusedClassifier) -> None:
    if model.text is not None:
        cfg = model.config
        model.text.adapt(cfg.text_adaptation, cfg.lora_rank, cfg.dropout)


def check_model_config(config: ModelConfig) -> None:
    """Raise ValueError for settings `build_model` would refuse that can be checked cheaply
    (backbone, its weights, a local text-encoder path), before a run starts any workers."""
    spec = fusion_spec(config.fusion_for(None))
    if spec.uses_image:
        check_backbone(config.backbone, config.backbone_weights)
    if spec.uses_text and config.text_encoder:
        resolve_text_encoder(config.text_encoder)


def build_model(config: ModelConfig, labels: list[str]) -> FusedClassifier:
    """A new classifier with pretrained encoders as `config` names them."""
    # train.fit decides both from the data first; without data, as ModelConfig documents.
    config = dataclasses.replace(
        config, fusion=config.fusion_for(None), image_size=resolve_image_size(config, None)
    )
    uses_text = fusion_spec(config.fusion).uses_text
    source = (
        resolve_text_encoder(config.text_encoder) if uses_text and config.text_encoder else None
    )
    model = _assemble(config, labels, source, pretrained=True)
    _adapt(model)
    return model


def _export_state(model: FusedClassifier) -> dict[str, torch.Tensor]:
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("text.")}
    if model.text is not None:
        state.update({f"text.model.{k}": v for k, v in model.text.plain_state_dict().items()})
    out, seen = {}, set()
    for key, tensor in state.items():
        tensor = tensor.detach().to("cpu").contiguous()
        # safetensors refuses tensors that share memory (tied embeddings); store copies.
        if tensor.untyped_storage().data_ptr() in seen:
            tensor = tensor.clone()
        seen.add(tensor.untyped_storage().data_ptr())
        out[key] = tensor
    return out


def _version() -> str:
    try:
        return metadata.version("raycls")
    except metadata.PackageNotFoundError:
        return "unknown"


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):  # numpy and torch scalars and arrays, e.g. in metrics
        return value.tolist()
    raise TypeError(f"save_model extra: {type(value).__name__} {value!r} is not JSON-serialisable")


def save_model(model: FusedClassifier, path: str | Path, extra: dict | None = None) -> None:
    """Write `model` to directory `path`; `extra` (metrics etc.) goes into config.json."""
    if isinstance(model, nn.parallel.DistributedDataParallel):  # as Ray Train's prepare_model
        model = model.module
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    meta = {
        "format": MODEL_FORMAT,
        "format_version": FORMAT_VERSION,
        "raycls_version": _version(),
        "model": dataclasses.asdict(model.config),
        "labels": model.labels,
        "text_encoder_dir": TEXT_DIR if model.text is not None else None,
        "extra": extra or {},
    }
    text = json.dumps(meta, indent=2, default=_json_default)  # fail before writing anything
    save_file(_export_state(model), str(path / WEIGHTS_FILE), metadata={"format": "pt"})
    if model.text is not None:
        model.text.save_pretrained_config(path / TEXT_DIR)
    # Written last: a directory without config.json is an interrupted save, and loads as one.
    (path / CONFIG_FILE).write_text(text)


def load_model(
    path: str | Path, device: str | torch.device = "cpu", *, trust_remote_code: bool = False
) -> FusedClassifier:
    """Rebuild a saved model from its directory, without network; returned in eval mode.

    `trust_remote_code` is the caller's (classify.trust_remote_code, evaluate's flag): the
    saved directory's own setting is ignored, so a shared model folder cannot run its code.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"model directory {str(path)!r} does not exist")
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (path / name).is_file():
            raise FileNotFoundError(
                f"{str(path)!r} is not a saved raycls model (or its save was interrupted): "
                f"{name} is missing"
            )
    try:
        meta = json.loads((path / CONFIG_FILE).read_text())
        version, model_settings, labels = meta["format_version"], meta["model"], meta["labels"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{str(path / CONFIG_FILE)!r} is corrupt: {err!r}") from err
    if version not in READABLE_FORMATS:
        raise ValueError(
            f"{str(path)!r} has model format {version}; this raycls ({_version()}) reads "
            f"formats {', '.join(map(str, READABLE_FORMATS))}"
        )
    if version == 1:
        model_settings = {**model_settings, "image_only_head": "mlp"}
    model_settings = {**model_settings, "trust_remote_code": trust_remote_code}
    config = Config.from_dict({"model": model_settings}).model
    text_dir = meta.get("text_encoder_dir")
    text_source = str(path / text_dir) if text_dir else None
    if text_source is not None and not Path(text_source, "config.json").is_file():
        raise FileNotFoundError(
            f"{text_source!r} (the saved text encoder) is missing or incomplete"
        )
    model = _assemble(config, labels, text_source, pretrained=False)
    try:
        state = load_file(str(path / WEIGHTS_FILE))
    except (SafetensorError, OSError) as err:
        raise ValueError(f"cannot read {str(path / WEIGHTS_FILE)!r}: {err}") from err
    mismatch = f"{str(path / WEIGHTS_FILE)!r} does not match the architecture in {CONFIG_FILE}"
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # tensors of the wrong shape
        raise ValueError(f"{mismatch}: {err}") from err
    if result.missing_keys or result.unexpected_keys:
        missing, unexpected = result.missing_keys[:5], result.unexpected_keys[:5]
        raise ValueError(f"{mismatch}: missing {missing}, unexpected {unexpected}")
    _adapt(model)
    return model.to(device).eval()


__all__ = ["FusedClassifier", "build_model", "load_model", "save_model"]
