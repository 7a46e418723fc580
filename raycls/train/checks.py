"""Checks of training data on the driver, before any training worker starts: `scan_batch`
decodes each image only to learn whether it can be (`raycls.train.data` runs it in one Ray Data
pass), and the checks turn what the scan found into a summary, warnings, or a ValueError that
says what to fix. No Ray import.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import numpy as np

from raycls.config import Config
from raycls.io.images import decode_each

logger = logging.getLogger(__name__)

BAD_EXAMPLES = 10


def scan_batch(batch: dict[str, Any], *, max_pixels: int) -> dict[str, Any]:
    """Decode each image only to learn whether it can be; keep key, label, text flag, error."""
    sides = np.zeros(len(batch["image"]), dtype=np.int64)

    def use(i: int, img) -> None:
        sides[i] = min(img.size)

    found = decode_each(batch["image"], batch.get("error"), use, max_pixels=max_pixels)
    errors = [error or "" for error in found]
    texts = batch.get("text")
    return {
        "key": batch["key"],
        "label": batch["label"],
        "has_text": np.array(
            [isinstance(t, str) and bool(t.strip()) for t in texts]
            if texts is not None
            else [False] * len(errors)
        ),
        "error": np.array(errors, dtype=object),
        "side": sides,
    }


def check_split(
    what: str, source: str, scan: dict[str, np.ndarray], max_bad_fraction: float
) -> dict[str, Any]:
    """Count rows, unreadable images and labels; stop when too many images are unreadable."""
    total = len(scan["key"])
    if total == 0:
        raise ValueError(f"{what} data {source!r} has no examples")
    bad = np.array([bool(e) for e in scan["error"]], dtype=bool)
    unlabeled = np.array([lab is None for lab in scan["label"]], dtype=bool)
    examples = [f"{k}: {e}" for k, e in zip(scan["key"][bad], scan["error"][bad], strict=True)]
    if bad.any():
        fraction = bad.sum() / total
        message = (
            f"{bad.sum()} of {total} {what} images ({fraction:.1%}) cannot be read and are "
            f"skipped, e.g.\n  " + "\n  ".join(examples[:BAD_EXAMPLES])
        )
        if fraction > max_bad_fraction:
            raise ValueError(
                message + f"\nThat is over data.max_bad_fraction={max_bad_fraction}; fix or "
                "remove these files, or raise data.max_bad_fraction to train anyway"
            )
        logger.warning(message)
    if unlabeled.any():
        logger.warning("%d %s rows have no label and are skipped", unlabeled.sum(), what)
    good = ~bad & ~unlabeled
    return {
        "rows": int(good.sum()),
        "bad": int(bad.sum()),
        "unlabeled": int(unlabeled.sum()),
        "with_text": int(scan["has_text"][good].sum()),
        "bad_examples": examples[:BAD_EXAMPLES],
        "per_class": dict(sorted(Counter(str(x) for x in scan["label"][good]).items())),
    }


def check_classes(
    classes: list[str], summary: dict[str, Any], train_data: str, val_data: str | None
) -> None:
    """Stop when a class has no readable training images, or none in a `val_data` given;
    warn when only the held-out split lacks one."""
    train_counts, val_counts = summary["train"]["per_class"], summary["val"]["per_class"]
    empty = [c for c in classes if not train_counts.get(c)]
    if empty:
        raise ValueError(
            f"class(es) {empty} have no readable training images in {train_data!r}; add images "
            "or remove the class folder(s)"
        )
    missing = [c for c in classes if not val_counts.get(c)]
    if not missing:
        return
    if val_data is not None:
        raise ValueError(
            f"class(es) {missing} are in the training data but have no readable examples in the "
            f"validation data {val_data!r}; add validation examples for them, or train without "
            "--val to hold out data.val_fraction of the training data"
        )
    logger.warning(
        "the held-out validation split has no examples of %s; raise data.val_fraction or pass "
        "--val for a validation set that covers every class",
        missing,
    )


def check_text(config: Config, summary: dict[str, Any]) -> None:
    """Log what model.fusion=auto becomes for this data (`ModelConfig.fusion_for`); warn when
    a fusion that uses text meets training data without any."""
    fusion = config.model.fusion_for(summary["train"]["with_text"])
    if config.model.fusion == "auto":
        logger.info(
            "model.fusion=auto: %s (%d of %d training examples have text in %r)",
            fusion,
            summary["train"]["with_text"],
            summary["train"]["rows"],
            config.data.text_column,
        )
    elif fusion != "image_only" and summary["train"]["with_text"] == 0:
        logger.warning(
            "model.fusion=%s uses text but no training example has any (data.text_column=%r); "
            "the text branch will learn nothing. Use --fusion image_only (or auto) or add text",
            fusion,
            config.data.text_column,
        )
