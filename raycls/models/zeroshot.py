"""Zero-shot predictors: labels are texts, and an image (or its caption) gets the nearest one.

- `ZeroShotPredictor`: a CLIP-style image-text model (CLIP, SigLIP, ...): image embedding vs
  label-prompt embeddings, scaled by the model's own logit scale.
- `CaptionPredictor`: the language-model route: a text encoder embeds the row's alt-text or
  caption and compares it with the label-prompt embeddings.
Label embeddings (prompt ensembling, see `raycls.models.labels`) are computed once, when the
predictor loads, not per batch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
import torch.nn.functional as F

from raycls.models.labels import LabelSet
from raycls.models.predictor import ModelSpec, Predictor

logger = logging.getLogger(__name__)

# Models trained on text padded to the full length (and without an attention mask): their text
# embeddings change with the padding, so prompts are padded the same way.
MAX_LENGTH_PADDING = ("siglip", "siglip2")
# A text encoder has no learned temperature: this is the scale all-MiniLM-L6-v2 was trained with
# (sentence-transformers' MultipleNegativesRankingLoss default). Only the scores' spread depends
# on it, never the ranking; --raw-scores keeps the cosines.
CAPTION_LOGIT_SCALE = 20.0
PROMPT_BATCH = 256


def label_embeddings(labels: LabelSet, embed: Callable[[list[str]], torch.Tensor]) -> torch.Tensor:
    """[labels, D] unit vectors: the mean of each label's unit prompt embeddings, renormalised."""
    prompts = [labels.prompts(label) for label in labels.labels]
    flat = [p for group in prompts for p in group]
    vectors = torch.cat(
        [embed(flat[i : i + PROMPT_BATCH]) for i in range(0, len(flat), PROMPT_BATCH)]
    )
    vectors = F.normalize(vectors.float(), dim=-1)
    means, start = [], 0
    for group in prompts:
        means.append(vectors[start : start + len(group)].mean(0))
        start += len(group)
    return F.normalize(torch.stack(means), dim=-1)


def _features(out: object) -> torch.Tensor:
    """get_*_features return a tensor in older transformers, an output with pooler_output in 5."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


class ZeroShotPredictor(Predictor):
    """`AutoModelForZeroShotImageClassification` (CLIP, SigLIP, ...) + its tokenizer."""

    def __init__(self, folder: str, spec: ModelSpec, device: str) -> None:
        from transformers import AutoModelForZeroShotImageClassification, AutoTokenizer

        remote = spec.trust_remote_code
        try:
            model = AutoModelForZeroShotImageClassification.from_pretrained(
                folder, trust_remote_code=remote, dtype=torch.float32
            )
            tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=remote)
        except (OSError, ValueError) as e:
            raise ValueError(
                f"cannot load {spec.source!r} as a zero-shot image-text model (model and "
                f"tokenizer): {e}"
            ) from e
        self.model = model.to(device).eval()
        super().__init__(spec.labels.names, spec.image, device, spec.raw_scores)
        config = model.config
        padding = "max_length" if config.model_type in MAX_LENGTH_PADDING else True
        max_length = config.text_config.max_position_embeddings
        inputs = [n for n in tokenizer.model_input_names if n in ("input_ids", "attention_mask")]

        def embed(texts: list[str]) -> torch.Tensor:
            tokens = tokenizer(texts, padding=padding, truncation=True, max_length=max_length,
                               return_tensors="pt")  # fmt: skip
            tokens = {k: tokens[k].to(device) for k in inputs}
            return _features(self.model.get_text_features(**tokens))

        with torch.inference_mode():
            self.text = label_embeddings(spec.labels, embed)
            self.scale = float(model.logit_scale.exp())
        logger.info("zero-shot %s: %d labels embedded on %s", spec.source, len(self.labels), device)

    def _logits(
        self, x: torch.Tensor, texts: list[str | None]
    ) -> tuple[torch.Tensor, list[str | None]]:
        image = _features(self.model.get_image_features(pixel_values=self.model_pixels(x)))
        sims = F.normalize(image.float(), dim=-1) @ self.text.T
        return (sims if self.raw_scores else sims * self.scale), [None] * len(x)


class CaptionPredictor(Predictor):
    """A text encoder (mean-pooled, as sentence-transformers' MiniLM) over alt-text/captions."""

    NO_TEXT = (
        "no text to compare with the labels: the row has no alt-text (--text-column) and no "
        "caption (--captioner)"
    )

    def __init__(self, folder: str, spec: ModelSpec, device: str) -> None:
        from raycls.models.text import build_text_encoder

        self.encoder = build_text_encoder(
            folder, "mean", max_length=128, trust_remote_code=spec.trust_remote_code
        )
        self.encoder.to(device).eval()
        super().__init__(spec.labels.names, spec.image, device, spec.raw_scores)
        with torch.inference_mode():
            self.text = label_embeddings(spec.labels, self._embed)

    def _embed(self, texts: list[str]) -> torch.Tensor:
        tokens = {k: v.to(self.device) for k, v in self.encoder.tokenize(texts).items()}
        return self.encoder(**tokens)[0]

    def _logits(
        self, x: torch.Tensor, texts: list[str | None]
    ) -> tuple[torch.Tensor, list[str | None]]:
        has = [isinstance(t, str) and bool(t.strip()) for t in texts]
        sims = torch.zeros(len(texts), len(self.labels), device=self.device)
        rows = [i for i, h in enumerate(has) if h]
        if rows:
            embedded = F.normalize(self._embed([texts[i] for i in rows]).float(), dim=-1)
            sims[rows] = embedded @ self.text.T
        errors = [None if h else self.NO_TEXT for h in has]
        return (sims if self.raw_scores else sims * CAPTION_LOGIT_SCALE), errors


__all__ = ["CaptionPredictor", "ZeroShotPredictor", "label_embeddings"]
