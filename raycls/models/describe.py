"""Label descriptions written by a local causal language model (as in CuPL, Menon & Vondrick):
N short visual descriptions per label, added to a label set that `--labels` then reads.

Chat models (a tokenizer with a chat template) get an instruction; base models complete
"Q: What does a cat look like in a photo? A: A cat", and the description keeps the "A cat".
"""

from __future__ import annotations

import logging
import re

import torch

from raycls.models.captioner import pick_dtype
from raycls.models.labels import Label, LabelSet

logger = logging.getLogger(__name__)

INSTRUCTION = (
    "In one short sentence, describe what a {} looks like in a photo. Mention only what can "
    "be seen: shape, colour, texture, parts."
)
BASE_PROMPT = "Q: What does a {0} look like in a photo?\nA: A {0}"
# Samples drawn per wanted description: duplicates and empty completions are dropped.
OVERSAMPLE = 2
_SENTENCE_END = re.compile(r"(?<=[.!?])\s")


def _clean(text: str) -> str:
    """The first line and first sentence of a completion, stripped."""
    text = text.strip().split("\n")[0]
    return _SENTENCE_END.split(text, maxsplit=1)[0].strip()


class Describer:
    """An `AutoModelForCausalLM` + tokenizer, loaded once; `__call__` describes one label."""

    def __init__(
        self,
        llm: str,
        *,
        device: str = "cpu",
        max_new_tokens: int = 40,
        temperature: float = 0.8,
        trust_remote_code: bool = False,
    ) -> None:
        from transformers import AutoModelForCausalLM

        from raycls.models.text import load_tokenizer

        try:
            self.tokenizer = load_tokenizer(llm, trust_remote_code)
            model = AutoModelForCausalLM.from_pretrained(
                llm, dtype=pick_dtype(device), trust_remote_code=trust_remote_code
            )
        except (OSError, ValueError) as e:
            raise ValueError(
                f"cannot load {llm!r} as AutoModelForCausalLM + tokenizer: {e}. Give a hub id "
                "or a local folder saved with save_pretrained"
            ) from e
        self.model = model.to(device).eval()
        self.device = device
        self.chat = bool(getattr(self.tokenizer, "chat_template", None))
        self.generate = {"max_new_tokens": max_new_tokens, "do_sample": True,
                         "temperature": temperature, "top_p": 0.95,
                         "pad_token_id": self.tokenizer.pad_token_id}  # fmt: skip

    def _prompt(self, spoken: str) -> tuple[str, str]:
        """(text fed to the model, prefix that belongs to the description)."""
        if self.chat:
            messages = [{"role": "user", "content": INSTRUCTION.format(spoken)}]
            text = self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
            return text, ""
        return BASE_PROMPT.format(spoken), f"A {spoken}"

    @torch.inference_mode()
    def __call__(self, name: str, n: int) -> list[str]:
        """Up to `n` distinct descriptions of label `name` (fewer if the model repeats itself)."""
        spoken = name.replace("_", " ")
        text, prefix = self._prompt(spoken)
        inputs = self.tokenizer(text, return_tensors="pt", add_special_tokens=not self.chat)
        inputs = inputs.to(self.device)
        out = self.model.generate(**inputs, num_return_sequences=n * OVERSAMPLE, **self.generate)
        new = out[:, inputs["input_ids"].shape[1] :]
        found: list[str] = []
        for completion in self.tokenizer.batch_decode(new, skip_special_tokens=True):
            description = _clean(prefix + completion) if prefix else _clean(completion)
            if (
                description
                and description != prefix
                and description.lower() not in {d.lower() for d in found}
            ):
                found.append(description)
        return found[:n]


def describe_labels(
    labels: LabelSet,
    llm: str,
    per_label: int = 5,
    *,
    seed: int = 0,
    max_new_tokens: int = 40,
    trust_remote_code: bool = False,
) -> LabelSet:
    """`labels` with `per_label` generated descriptions added to each label (templates kept)."""
    if per_label < 1:
        raise ValueError(f"per_label={per_label} must be >= 1")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    describer = Describer(llm, device=device, max_new_tokens=max_new_tokens,
                          trust_remote_code=trust_remote_code)  # fmt: skip
    torch.manual_seed(seed)
    out = []
    for label in labels.labels:
        new = describer(label.name, per_label)
        if len(new) < per_label:
            logger.warning("%s: %d of %d descriptions (the rest repeated or were empty)",
                           label.name, len(new), per_label)  # fmt: skip
        out.append(Label(label.name, label.descriptions + tuple(new)))
    return LabelSet(tuple(out), labels.templates)


__all__ = ["Describer", "describe_labels"]
