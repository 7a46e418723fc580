"""Fusion heads: image features + text features -> class logits.

Every head takes the same `Features` and returns logits [B, num_classes]. Rows without text
arrive with their pooled text already replaced by the classifier's learned "no text" vector.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn


class Features(NamedTuple):
    """What the encoders produced for one batch."""

    image_map: torch.Tensor | None  # [B, C, h, w]
    text_vec: torch.Tensor | None  # [B, T]
    text_tokens: torch.Tensor | None  # [B, L, T]; None when no row has text
    text_mask: torch.Tensor | None  # [B, L], 1 for real tokens
    has_text: torch.Tensor  # [B] bool


def _mlp(in_dim: int, hidden_dim: int, num_classes: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(in_dim, hidden_dim),
        nn.GELU(),
        nn.Dropout(dropout),
        nn.Linear(hidden_dim, num_classes),
    )


def _pool(image_map: torch.Tensor) -> torch.Tensor:
    return image_map.mean(dim=(2, 3))


class ConcatHead(nn.Module):
    """Late fusion: [pooled image; pooled text] -> MLP."""

    def __init__(
        self, image_dim: int, text_dim: int, hidden_dim: int, classes: int, dropout: float
    ):
        super().__init__()
        # The CNN's and the language model's features live on very different scales.
        self.image_norm = nn.LayerNorm(image_dim)
        self.text_norm = nn.LayerNorm(text_dim)
        self.mlp = _mlp(image_dim + text_dim, hidden_dim, classes, dropout)

    def forward(self, f: Features) -> torch.Tensor:
        x = torch.cat([self.image_norm(_pool(f.image_map)), self.text_norm(f.text_vec)], dim=1)
        return self.mlp(x)


class GatedHead(nn.Module):
    """Gated Multimodal Unit (Arevalo et al. 2017): a learned per-unit mix of the modalities."""

    def __init__(
        self, image_dim: int, text_dim: int, hidden_dim: int, classes: int, dropout: float
    ):
        super().__init__()
        self.image_norm = nn.LayerNorm(image_dim)
        self.text_norm = nn.LayerNorm(text_dim)
        self.image_proj = nn.Linear(image_dim, hidden_dim)
        self.text_proj = nn.Linear(text_dim, hidden_dim)
        self.gate = nn.Linear(image_dim + text_dim, hidden_dim)
        self.out = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden_dim, classes))

    def forward(self, f: Features) -> torch.Tensor:
        x_v, x_t = self.image_norm(_pool(f.image_map)), self.text_norm(f.text_vec)
        h_v, h_t = torch.tanh(self.image_proj(x_v)), torch.tanh(self.text_proj(x_t))
        z = torch.sigmoid(self.gate(torch.cat([x_v, x_t], dim=1)))
        return self.out(z * h_v + (1 - z) * h_t)


class FiLMHead(nn.Module):
    """Text predicts a per-channel scale and shift of the CNN's last feature map (FiLM)."""

    def __init__(
        self, image_dim: int, text_dim: int, hidden_dim: int, classes: int, dropout: float
    ):
        super().__init__()
        self.text_norm = nn.LayerNorm(text_dim)
        self.film = nn.Linear(text_dim, 2 * image_dim)
        # Start as the identity modulation so training begins from the image-only model.
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)
        self.image_norm = nn.LayerNorm(image_dim)
        self.mlp = _mlp(image_dim, hidden_dim, classes, dropout)

    def forward(self, f: Features) -> torch.Tensor:
        gamma, beta = self.film(self.text_norm(f.text_vec)).chunk(2, dim=1)
        modulated = torch.relu(f.image_map * (1 + gamma[..., None, None]) + beta[..., None, None])
        return self.mlp(self.image_norm(_pool(modulated)))


class CrossAttentionHead(nn.Module):
    """Feature-map positions attend to the text tokens; residual, LayerNorm, mean pool."""

    def __init__(
        self, image_dim: int, text_dim: int, hidden_dim: int, classes: int, dropout: float
    ):
        super().__init__()
        heads = next(h for h in (8, 4, 2, 1) if hidden_dim % h == 0)
        self.image_proj = nn.Sequential(nn.LayerNorm(image_dim), nn.Linear(image_dim, hidden_dim))
        self.text_proj = nn.Sequential(nn.LayerNorm(text_dim), nn.Linear(text_dim, hidden_dim))
        # Stands in for the text tokens of rows without text, so every query has a key.
        self.null_token = nn.Parameter(torch.randn(hidden_dim) * 0.02)
        self.attn = nn.MultiheadAttention(hidden_dim, heads, dropout=dropout, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(hidden_dim)
        self.mlp = _mlp(hidden_dim, hidden_dim, classes, dropout)

    def forward(self, f: Features) -> torch.Tensor:
        queries = self.image_proj(f.image_map.flatten(2).transpose(1, 2))  # [B, h*w, H]
        batch = queries.shape[0]
        null = self.null_token.expand(batch, 1, -1)
        null_ignored = f.has_text.unsqueeze(1)  # key_padding_mask: True = ignore
        if f.text_tokens is None:
            keys, ignore = null, torch.zeros_like(null_ignored)
        else:
            keys = torch.cat([self.text_proj(f.text_tokens), null], dim=1)
            text_ignored = (f.text_mask == 0) | ~f.has_text.unsqueeze(1)
            ignore = torch.cat([text_ignored, null_ignored], dim=1)
        attended, _ = self.attn(queries, keys, keys, key_padding_mask=ignore, need_weights=False)
        x = self.norm(queries + self.dropout(attended))
        return self.mlp(x.mean(dim=1))


class ImageOnlyHead(nn.Module):
    """Pooled image features -> one linear layer, as torchvision's classifiers end; text is
    ignored. `mlp=True` puts LayerNorm + MLP there instead, as the fusion heads have
    (model.image_only_head=mlp; the head of image-only models saved in model format 1)."""

    def __init__(
        self,
        image_dim: int,
        text_dim: int,
        hidden_dim: int,
        classes: int,
        dropout: float,
        mlp: bool = False,
    ):
        super().__init__()
        self.uses_mlp = mlp
        if mlp:
            self.norm = nn.LayerNorm(image_dim)
            self.mlp = _mlp(image_dim, hidden_dim, classes, dropout)
        else:
            self.linear = nn.Linear(image_dim, classes)

    def forward(self, f: Features) -> torch.Tensor:
        pooled = _pool(f.image_map)
        return self.mlp(self.norm(pooled)) if self.uses_mlp else self.linear(pooled)


class TextOnlyHead(nn.Module):
    """Pooled text features -> MLP; the image is ignored."""

    def __init__(
        self, image_dim: int, text_dim: int, hidden_dim: int, classes: int, dropout: float
    ):
        super().__init__()
        self.norm = nn.LayerNorm(text_dim)
        self.mlp = _mlp(text_dim, hidden_dim, classes, dropout)

    def forward(self, f: Features) -> torch.Tensor:
        return self.mlp(self.norm(f.text_vec))


@dataclass(frozen=True)
class FusionSpec:
    """A fusion head and the encoders it needs."""

    head: type[nn.Module]
    uses_image: bool = True
    uses_text: bool = True
    uses_text_tokens: bool = False


FUSIONS: dict[str, FusionSpec] = {
    "concat": FusionSpec(ConcatHead),
    "gated": FusionSpec(GatedHead),
    "film": FusionSpec(FiLMHead),
    "cross_attention": FusionSpec(CrossAttentionHead, uses_text_tokens=True),
    "image_only": FusionSpec(ImageOnlyHead, uses_text=False),
    "text_only": FusionSpec(TextOnlyHead, uses_image=False),
}


def list_fusions() -> list[str]:
    """The fusion heads; `model.fusion` also takes "auto", which picks one from the data."""
    return list(FUSIONS)


def fusion_spec(name: str) -> FusionSpec:
    """The spec of fusion `name`; ValueError listing the valid names otherwise."""
    if name not in FUSIONS:
        raise ValueError(f"model.fusion={name!r} is not valid; choose one of: {', '.join(FUSIONS)}")
    return FUSIONS[name]


def build_fusion(
    name: str,
    image_dim: int,
    text_dim: int,
    hidden_dim: int,
    num_classes: int,
    dropout: float,
    image_only_head: str = "linear",
) -> nn.Module:
    """The head for fusion `name`; a dimension is 0 for a modality the head does not use.
    `image_only_head` ("linear" or "mlp") shapes the image-only head (model.image_only_head)."""
    head = fusion_spec(name).head
    if head is ImageOnlyHead:
        return head(image_dim, text_dim, hidden_dim, num_classes, dropout, image_only_head == "mlp")
    return head(image_dim, text_dim, hidden_dim, num_classes, dropout)


__all__ = ["FUSIONS", "Features", "FusionSpec", "build_fusion", "fusion_spec", "list_fusions"]
