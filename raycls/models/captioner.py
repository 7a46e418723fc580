"""Image captioning with any `AutoModelForImageTextToText` model (BLIP, GIT, Florence-2, VLMs).

The bulk pipeline uses captions as the text input of the fused classifier where an image has no
text of its own. No Ray import: `raycls.bulk.stages` wraps `Captioner` in an actor.
"""

from __future__ import annotations

import logging
from pathlib import Path

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


def make_tiny_captioner(path: str | Path, image_size: int = 32, seed: int = 0) -> str:
    """Write a tiny random BLIP captioner (model + processor) that loads offline; returns path.

    For tests and benchmarks where no hub is reachable: its captions are random words.
    """
    from transformers import (
        BertTokenizerFast,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    words = "a an the photo picture of cat dog bird car tree red green blue small big".split()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", *words]
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizerFast(
        vocab=str(path / "vocab.txt"), model_max_length=64, bos_token="[DEC]"
    )
    image_processor = BlipImageProcessor(size={"height": image_size, "width": image_size})
    BlipProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(path)
    tiny = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1}
    text = dict(
        tiny,
        vocab_size=len(vocab),
        num_attention_heads=2,
        encoder_hidden_size=32,
        max_position_embeddings=64,
        bos_token_id=vocab.index("[DEC]"),
        pad_token_id=0,
        sep_token_id=3,
        eos_token_id=3,
    )
    vision = dict(tiny, num_attention_heads=2, image_size=image_size, patch_size=8)
    config = BlipConfig(text_config=text, vision_config=vision, projection_dim=32)
    torch.manual_seed(seed)
    BlipForConditionalGeneration(config).save_pretrained(path)
    return str(path)
