"""Image captioning with any `AutoModelForImageTextToText` model (BLIP, GIT, Florence-2, VLMs).

The bulk pipeline uses captions as the text input of the fused classifier where an image has no
text of its own. No Ray import: `raycls.bulk.stages` wraps `Captioner` in an actor.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

logger = logging.getLogger(__name__)


def pick_dtype(device: str) -> torch.dtype:
    """bf16 on GPUs that have it, fp16 on older GPUs, fp32 on CPU (where half precision is slow)."""
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


class Captioner:
    """Loads a captioning model once; `__call__` captions a batch of RGB uint8 images.

    Args:
        name_or_path: a Hugging Face hub id or a local directory saved with `save_pretrained`
            (model and processor).
        prompt: optional text the caption starts from (e.g. "a photo of"); it is removed from
            the returned captions.
    """

    def __init__(
        self,
        name_or_path: str,
        *,
        device: str = "cpu",
        prompt: str | None = None,
        max_new_tokens: int = 30,
        trust_remote_code: bool = False,
    ) -> None:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.device = device
        self.dtype = pick_dtype(device)
        self.prompt = prompt or None
        self.max_new_tokens = max_new_tokens
        try:
            self.processor = AutoProcessor.from_pretrained(
                name_or_path, trust_remote_code=trust_remote_code
            )
            model = AutoModelForImageTextToText.from_pretrained(
                name_or_path, dtype=self.dtype, trust_remote_code=trust_remote_code
            )
        except (OSError, ValueError) as e:
            raise ValueError(
                f"cannot load captioner {name_or_path!r} as AutoModelForImageTextToText + "
                f"AutoProcessor: {e}. Give a hub id or a local directory holding both (saved "
                "with save_pretrained), or --captioner none"
            ) from e
        self.model = model.to(device).eval()
        tokenizer = getattr(self.processor, "tokenizer", None)
        if tokenizer is not None and not self.model.config.is_encoder_decoder:
            # Decoder-only models continue the last token: batched prompts must be left-padded.
            tokenizer.padding_side = "left"
        logger.info("captioner %s loaded on %s (%s)", name_or_path, device, self.dtype)

    @torch.inference_mode()
    def __call__(self, images: list[np.ndarray]) -> list[str]:
        """Caption RGB uint8 arrays [H, W, 3]; returns one stripped string per image."""
        if not images:
            return []
        kwargs = {"images": list(images), "return_tensors": "pt"}
        if self.prompt:
            kwargs["text"] = [self.prompt] * len(images)
        inputs = self.processor(**kwargs).to(self.device)
        for name, value in inputs.items():
            if torch.is_floating_point(value):
                inputs[name] = value.to(self.dtype)
        out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        prompt_ids = inputs.get("input_ids")
        if prompt_ids is not None and _starts_with(out, prompt_ids):
            out = out[:, prompt_ids.shape[1] :]
        texts = self.processor.batch_decode(out, skip_special_tokens=True)
        return [self._strip_prompt(t) for t in texts]

    def _strip_prompt(self, text: str) -> str:
        text = text.strip()
        # Encoder-decoder models (BLIP) echo the prompt inside the generated tokens.
        if self.prompt and text.lower().startswith(self.prompt.strip().lower()):
            text = text[len(self.prompt.strip()) :].strip()
        return text


def _starts_with(out: torch.Tensor, prefix: torch.Tensor) -> bool:
    n = prefix.shape[1]
    return out.shape[1] >= n and bool(torch.equal(out[:, :n].to(prefix.device), prefix))
