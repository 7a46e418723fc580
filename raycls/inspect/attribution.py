"""Why a fused classifier chose its label: image heat maps, image vs text shares, text tokens.

Pure torch on an already loaded model (no Ray, no files). The attribution methods are captum's
(Grad-CAM on the CNN's last feature map, occlusion, integrated gradients on the text
embeddings); the modality shares are plain ablations any fusion supports.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from raycls.models.classifier import FusedClassifier

METHODS = ("gradcam", "occlusion")
IG_STEPS = 24
TOP_TOKENS = 5


@dataclass(frozen=True)
class ModalityEffects:
    """Per row: the winning logit's drop when text is removed and when the image is blanked,
    their shares, and for `gated` fusion the mean gate weight given to the image."""

    drop_without_text: np.ndarray
    drop_without_image: np.ndarray
    text_share: np.ndarray  # |text drop| / (|text drop| + |image drop|); NaN when both are 0
    gate_image: np.ndarray | None


def _args(text: dict[str, torch.Tensor]) -> tuple:
    return (text.get("input_ids"), text.get("attention_mask"), text["has_text"])


def _logits(model: FusedClassifier, pixels, input_ids, attention_mask, has_text) -> torch.Tensor:
    return model(pixels, input_ids, attention_mask, has_text)


def image_heatmaps(
    model: FusedClassifier,
    pixels: torch.Tensor,
    text: dict[str, torch.Tensor],
    target: torch.Tensor,
    method: str = "gradcam",
) -> np.ndarray | None:
    """Heat [B, H, W] in [0, 1] of the pixels that raised the `target` logit; None for a model
    without an image branch.

    gradcam: Grad-CAM on the backbone's last feature map, upsampled bilinearly (as coarse as
    that map: 1/32 of the image side for most CNNs). occlusion: the logit's drop when a grey
    patch (1/8 of the side, stride 1/16) covers each region; finer, and a forward pass per
    position.
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not valid; choose one of: {', '.join(METHODS)}")
    if model.backbone is None:
        return None
    from captum.attr import LayerAttribution, LayerGradCam, Occlusion

    forward = lambda px, *a: _logits(model, px, *a)  # noqa: E731
    size = pixels.shape[-1]
    if method == "gradcam":
        cam = LayerGradCam(forward, model.backbone).attribute(
            pixels, target=target, additional_forward_args=_args(text), relu_attributions=True
        )
        heat = LayerAttribution.interpolate(cam, (size, size), "bilinear")[:, 0]
    else:
        window, stride = max(1, size // 8), max(1, size // 16)
        attr = Occlusion(forward).attribute(
            pixels,
            target=target,
            sliding_window_shapes=(3, window, window),
            strides=(3, stride, stride),
            baselines=0.0,  # the ImageNet mean colour once normalised
            additional_forward_args=_args(text),
            perturbations_per_eval=16,
        )
        heat = attr.sum(1).clamp(min=0)
    heat = heat.detach().float()
    top = heat.flatten(1).max(1).values.clamp(min=1e-12)
    return (heat / top[:, None, None]).cpu().numpy()


@torch.no_grad()
def modality_effects(
    model: FusedClassifier,
    pixels: torch.Tensor,
    text: dict[str, torch.Tensor],
    target: torch.Tensor,
) -> ModalityEffects:
    """How much the `target` logit falls without the text and with a blank (mean-colour) image."""
    gates: list[torch.Tensor] = []
    hook = None
    if model.config.fusion == "gated":
        # GatedHead mixes z * image + (1 - z) * text with z = sigmoid(gate(...)).
        hook = model.head.gate.register_forward_hook(
            lambda _m, _i, out: gates.append(torch.sigmoid(out).mean(1))
        )
    try:
        rows = torch.arange(len(target))
        full = _logits(model, pixels, *_args(text))[rows, target]
        gate = gates[0].cpu().numpy() if gates else None
        no_text = {**text, "has_text": torch.zeros_like(text["has_text"])}
        without_text = _logits(model, pixels, *_args(no_text))[rows, target]
        blank = torch.zeros_like(pixels)
        without_image = _logits(model, blank, *_args(text))[rows, target]
    finally:
        if hook is not None:
            hook.remove()
    d_text = (full - without_text).cpu().numpy()
    d_image = (full - without_image).cpu().numpy()
    total = np.abs(d_text) + np.abs(d_image)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(total > 0, np.abs(d_text) / total, np.nan)
    return ModalityEffects(d_text, d_image, share, gate)


@contextmanager
def _text_gradients(model: FusedClassifier) -> Iterator[None]:
    # A frozen text encoder runs without autograd (TextEncoder.forward); attribution needs
    # gradients through it, though its weights stay untouched.
    text = model.text
    saved = text.adaptation
    if saved == "frozen":
        text.adaptation = "full"
    try:
        yield
    finally:
        text.adaptation = saved


class _Given(nn.Module):
    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


@contextmanager
def _image_features_once(model: FusedClassifier, pixels: torch.Tensor) -> Iterator[torch.Tensor]:
    """Yield what to pass as pixels so the image branch is not rerun: integrated gradients
    on the text runs the model IG_STEPS times on one image, and the CNN would dominate."""
    backbone = model.backbone
    if backbone is None:
        yield pixels
        return
    with torch.no_grad():
        features = backbone(pixels)
    model.backbone = _Given()
    try:
        yield features
    finally:
        model.backbone = backbone


def token_attributions(
    model: FusedClassifier,
    pixels: torch.Tensor,
    text: dict[str, torch.Tensor],
    target: torch.Tensor,
    top: int = TOP_TOKENS,
) -> list[list[tuple[str, float]]]:
    """Per row, the `top` words that raised the `target` logit most, with their integrated-
    gradients attribution summed over their tokens (baseline: every non-special token replaced
    by padding). Rows without text, and models without a text branch, get []."""
    out: list[list[tuple[str, float]]] = [[] for _ in range(len(target))]
    if model.text is None or "input_ids" not in text:
        return out
    from captum.attr import LayerIntegratedGradients

    tokenizer = model.text.tokenizer
    special = torch.tensor(sorted(set(tokenizer.all_special_ids)))
    embeddings = model.text.model.get_input_embeddings()
    forward = lambda ids, px, mask, has: _logits(model, px, ids, mask, has)  # noqa: E731
    lig = LayerIntegratedGradients(forward, embeddings)
    for i in torch.nonzero(text["has_text"]).flatten().tolist():
        ids, mask = text["input_ids"][i : i + 1], text["attention_mask"][i : i + 1]
        keep = torch.isin(ids, special)
        baseline = torch.where(keep, ids, torch.full_like(ids, tokenizer.pad_token_id))
        with _text_gradients(model), _image_features_once(model, pixels[i : i + 1]) as image:
            attr = lig.attribute(
                ids,
                baselines=baseline,
                target=target[i : i + 1],
                additional_forward_args=(image, mask, text["has_text"][i : i + 1]),
                n_steps=IG_STEPS,
            )
        real = ~keep[0] & (mask[0] == 1)
        tokens = tokenizer.convert_ids_to_tokens(ids[0][real].tolist())
        words = _words(tokens, attr.sum(-1)[0][real].detach().tolist())
        out[i] = sorted(words, key=lambda w: -w[1])[:top]
    return out


def _words(tokens: list[str], scores: list[float]) -> list[tuple[str, float]]:
    """Word pieces joined into words (BERT's "##" continuations), their scores summed; the
    word-start marks of byte-level and SentencePiece tokenizers dropped."""
    words: list[tuple[str, float]] = []
    for token, score in zip(tokens, scores, strict=True):
        if token.startswith("##") and words:
            words[-1] = (words[-1][0] + token[2:], words[-1][1] + score)
        else:
            words.append((token.lstrip("Ġ▁") or token, score))
    return words


def heat_inside(heat: np.ndarray, mask: np.ndarray) -> float:
    """Share of a heat map's total mass that lies where `mask` is true (NaN for no heat)."""
    total = float(heat.sum())
    return float(heat[mask].sum()) / total if total > 0 else float("nan")
