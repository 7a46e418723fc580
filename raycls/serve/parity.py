"""Does an exported graph compute what the torch model computes? Inputs and the comparison.

The reference is `FusedClassifier.forward` itself (not the export graph), so a check also
catches a graph that differs from the model, e.g. in how rows without text are handled.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from raycls.io.images import IMAGE_EXTENSIONS, decode_image, preprocess
from raycls.models.classifier import FusedClassifier
from raycls.serve.graph import graph_inputs

REAL_TEXTS = ("a photo of a cat", None, "a red car on the street", "",
              "two people and a big white house with trees in the water")  # fmt: skip
MAX_REAL_IMAGES = 16


class ParityError(RuntimeError):
    """An exported graph's logits differ from torch's by more than the tolerance."""


def sample_inputs(model: FusedClassifier, batch: int, seed: int) -> dict[str, torch.Tensor]:
    """Random graph inputs: normal pixels, random token ids of random lengths, mixed has_text."""
    gen = torch.Generator().manual_seed(seed)
    inputs: dict[str, torch.Tensor] = {}
    if model.backbone is not None:
        size = model.config.image_size
        inputs["pixels"] = torch.randn(batch, 3, size, size, generator=gen)
    if model.text is not None:
        seq = max(2, min(model.config.max_text_length, 12))
        vocab = len(model.text.tokenizer)
        inputs["input_ids"] = torch.randint(0, vocab, (batch, seq), generator=gen)
        lengths = torch.randint(1, seq + 1, (batch,), generator=gen)
        lengths[0] = seq
        inputs["attention_mask"] = (torch.arange(seq) < lengths[:, None]).long()
        inputs["has_text"] = torch.arange(batch) % 2 == 0  # both kinds of row, first with text
    return inputs


def real_inputs(model: FusedClassifier, images: list[str]) -> dict[str, torch.Tensor]:
    """Graph inputs from real image files (preprocessed as classify does) and real sentences."""
    files = _image_files(images)[:MAX_REAL_IMAGES]
    if not files:
        raise ValueError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in {images}")
    inputs: dict[str, torch.Tensor] = {}
    if model.backbone is not None:
        size = model.config.image_size
        arrays = [preprocess(decode_image(Path(f).read_bytes()), size) for f in files]
        inputs["pixels"] = torch.from_numpy(np.stack(arrays))
    texts = [REAL_TEXTS[i % len(REAL_TEXTS)] for i in range(len(files))]
    tokens = model.tokenize(texts)
    return {**inputs, **{k: v for k, v in tokens.items() if k in graph_inputs(model)}}


def _image_files(paths: list[str]) -> list[str]:
    files = []
    for path in map(Path, paths):
        found = sorted(path.rglob("*")) if path.is_dir() else [path]
        files += [str(f) for f in found if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file()]
    return files


def check_parity(
    model: FusedClassifier,
    run: Callable[[dict[str, torch.Tensor]], Any],
    images: list[str] | None,
    tolerance: float,
) -> dict[str, Any]:
    """Max |logit difference| between `run` and the torch model on random (and real) inputs.

    Raises:
        ParityError: a difference is over `tolerance`.
    """
    cases = {"random": sample_inputs(model, batch=3, seed=1)}
    if images:
        cases["real"] = real_inputs(model, images)
    diffs, rows = {}, {}
    for name, inputs in cases.items():
        with torch.inference_mode():
            expected = model(
                inputs.get("pixels"), inputs.get("input_ids"), inputs.get("attention_mask"),
                inputs.get("has_text"),
            ).numpy()  # fmt: skip
        got = np.asarray(run(inputs))
        if got.shape != expected.shape:
            raise ParityError(f"{name} inputs: logits of shape {got.shape}, torch {expected.shape}")
        diffs[name] = float(np.abs(got - expected).max())
        rows[name] = int(expected.shape[0])
    bad = {name: diff for name, diff in diffs.items() if not diff <= tolerance}
    if bad:
        raise ParityError(
            f"exported logits differ from torch's by up to {max(bad.values()):.3g} on "
            f"{', '.join(bad)} inputs (tolerance {tolerance:g}); the export is not usable"
        )
    return {"max_abs_diff": diffs, "rows_checked": rows, "tolerance": tolerance}
