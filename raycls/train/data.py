"""Training data on the driver: plan, split, check, and build the streamed Ray Datasets.

Checks run before any training worker starts: one Ray Data pass decodes every image to find
unreadable ones (keys, labels and statuses come back to the driver, never pixels), and the
class lists of train and validation are compared. The datasets handed to Ray Train then read,
decode and augment in Ray Data tasks while the workers train.
"""

from __future__ import annotations

import hashlib
import logging
import random
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from raycls.config import Config
from raycls.io.images import decode_batch
from raycls.io.inputs import shard_dataset
from raycls.io.labeled import load_labeled
from raycls.io.reading import relative_to
from raycls.io.shards import Shard
from raycls.train.augment import rotate_by_quarters, shift_and_flip, strong_augment
from raycls.train.checks import check_classes, check_split, check_text, scan_batch

if TYPE_CHECKING:
    import ray.data

logger = logging.getLogger(__name__)

# Rows per read task: small enough that several shards are in flight to mix in the workers'
# shuffle buffers, large enough that per-task overhead stays small.
SHARD_SIZE = 256
DECODE_BATCH_SIZE = 64


@dataclass
class TrainData:
    """The streamed datasets and what the driver learned about them."""

    train: ray.data.Dataset
    val: ray.data.Dataset
    classes: list[str]
    image_size: int  # what model.image_size resolved to
    summary: dict[str, Any] = field(default_factory=dict)


def prepare_data(
    config: Config, train_data: str, val_data: str | None, data_cpus: float = 1.0
) -> TrainData:
    """Plan and check train/validation data; return Ray Datasets of pixels, text and label.

    Without `val_data` a seeded fraction (data.val_fraction) of `train_data` is held out by a
    hash of each example's path, so a resumed run sees the same split; with it, nothing is.
    The summary says which (`held_out`). The scan of every image also sets model.image_size
    when it is None (`resolve_image_size`) and logs what model.fusion=auto becomes (`check_text`).
    """
    d = config.data
    columns = {"image_column": d.image_column, "label_column": d.label_column}
    # Per-row loss weights and strong-augmentation flags: training rows only.
    per_row = {"weight_column": d.weight_column, "strong_augment_column": d.strong_augment_column}
    shards, classes = load_labeled(
        train_data, **columns, text_column=d.text_column, shard_size=SHARD_SIZE, **per_row
    )
    shards = _mix_shards(shards, d.seed)
    read = {**columns, "text_column": d.text_column}
    train_raw = shard_dataset(shards, **read, **per_row, labeled_root=train_data)
    if val_data is None:
        if d.val_fraction <= 0:
            raise ValueError(
                "no validation data: pass --val DATA or set data.val_fraction > 0 "
                "(e.g. data.val_fraction=0.1)"
            )
        split = {"root": train_data, "seed": d.seed, "fraction": d.val_fraction}
        val_raw = train_raw.map_batches(
            _split_batch, fn_kwargs={**split, "keep_val": True}, batch_format="pyarrow"
        )
        train_raw = train_raw.map_batches(
            _split_batch, fn_kwargs={**split, "keep_val": False}, batch_format="pyarrow"
        )
    else:
        val_shards, val_classes = load_labeled(
            val_data, **columns, text_column=d.text_column, shard_size=SHARD_SIZE
        )
        unknown = sorted(set(val_classes) - set(classes))
        if unknown:
            raise ValueError(
                f"validation data {val_data!r} has class(es) {unknown} that training data "
                f"{train_data!r} lacks; training classes: {classes}. Add training examples for "
                "them or remove them from the validation data"
            )
        val_raw = shard_dataset(val_shards, **read, labeled_root=val_data)

    train_scan = _scan(train_raw, d.max_pixels)
    val_scan = _scan(val_raw, d.max_pixels)
    summary = {
        "train": check_split("training", train_data, train_scan, d.max_bad_fraction),
        "val": check_split("validation", val_data or train_data, val_scan, d.max_bad_fraction),
    }
    summary["held_out"] = (
        None
        if val_data is not None
        else {"fraction": d.val_fraction, "rows": summary["val"]["rows"]}
    )
    sides = train_scan["side"][train_scan["side"] > 0]
    summary["median_side"] = int(np.median(sides)) if len(sides) else None
    # Imported here: it needs torchvision, which the read and decode tasks (functions of this
    # module, run in fresh worker processes) would otherwise import for nothing, seconds each.
    from raycls.models.weights import resolve_image_size

    image_size = resolve_image_size(config.model, summary["median_side"])
    crop = _choose_crop(d.crop, summary["median_side"], image_size)
    summary["image_size"], summary["crop"] = image_size, crop if d.augment else "none"
    check_classes(classes, summary, train_data, val_data)
    check_text(config, summary)
    if summary["train"]["rows"] < config.train.num_workers:
        raise ValueError(
            f"{summary['train']['rows']} readable training examples cannot feed "
            f"{config.train.num_workers} workers; add data or lower --num-workers"
        )

    index = {name: i for i, name in enumerate(classes)}
    prep = {"size": image_size, "max_pixels": d.max_pixels, "classes": index}
    # Fresh augmentation each epoch: Ray Data re-runs the pipeline per epoch, seed None.
    train = train_raw.map_batches(
        _prepare_batch,
        fn_kwargs={
            **prep,
            "train": d.augment,
            "flip": d.flip,
            "crop": crop,
            "rotate90": d.rotate90,
        },
        batch_size=DECODE_BATCH_SIZE,
        num_cpus=data_cpus,
    )
    val = val_raw.map_batches(
        _prepare_batch,
        fn_kwargs={**prep, "train": False},
        batch_size=DECODE_BATCH_SIZE,
        num_cpus=data_cpus,
    )
    for ds in (train, val):
        ds.context.enable_progress_bars = False  # re-run per epoch: bars would flood the log
    return TrainData(train=train, val=val, classes=classes, summary=summary, image_size=image_size)


def _choose_crop(crop: str, median_side: int | None, image_size: int) -> str:
    if crop != "auto":
        return crop
    return "shift" if median_side is None or median_side < 2 * image_size else "resized"


def _mix_shards(shards: list[Shard], seed: int) -> list[Shard]:
    """Deal image files into shards in a seeded random order; shuffle other shards' order.

    An image folder lists files class by class; shards in that order would give each read task,
    and so each stretch of a training epoch, one or two classes. Rows of a Parquet or tar shard
    stay in file order. Each epoch then mixes further in the workers' local shuffle buffers;
    Ray Data's randomize_block_order would also reorder per epoch, but it is an all-to-all step
    that reads the whole data set before the first batch, which a streamed pipeline avoids.
    """
    rng = random.Random(seed)
    if not shards or any(s.kind != "files" for s in shards):
        order = list(shards)
        rng.shuffle(order)
        return [replace(s, index=i) for i, s in enumerate(order)]
    rows = [
        (p, None if s.texts is None else s.texts[i]) for s in shards for i, p in enumerate(s.paths)
    ]
    has_text = any(s.texts is not None for s in shards)
    rng.shuffle(rows)
    out = []
    for start in range(0, len(rows), SHARD_SIZE):
        chunk = rows[start : start + SHARD_SIZE]
        out.append(
            Shard(
                index=len(out),
                kind="files",
                paths=tuple(p for p, _ in chunk),
                num_rows=len(chunk),
                texts=tuple(t for _, t in chunk) if has_text else None,
            )
        )
    return out


def split_is_val(keys: list[str], root: str, seed: int, fraction: float) -> np.ndarray:
    """True for keys held out for validation: a hash of (seed, path relative to root)."""
    out = np.zeros(len(keys), dtype=bool)
    for i, key in enumerate(keys):
        name = relative_to(key, root) or key
        digest = hashlib.blake2b(f"{seed}:{name}".encode(), digest_size=8).digest()
        out[i] = int.from_bytes(digest, "big") / 2**64 < fraction
    return out


def _split_batch(
    batch: pa.Table, *, root: str, seed: int, fraction: float, keep_val: bool
) -> pa.Table:
    # Arrow in and out: a numpy round trip would turn all-null columns into NaN floats.
    is_val = split_is_val(batch.column("key").to_pylist(), root, seed, fraction)
    return batch.filter(pa.array(is_val if keep_val else ~is_val))


def _scan(ds: ray.data.Dataset, max_pixels: int) -> dict[str, np.ndarray]:
    scanned = ds.map_batches(
        scan_batch, fn_kwargs={"max_pixels": max_pixels}, batch_size=DECODE_BATCH_SIZE
    )
    scanned.context.enable_progress_bars = False
    rows = scanned.to_pandas()
    return {name: rows[name].to_numpy() for name in ("key", "label", "has_text", "error", "side")}


def _prepare_batch(
    batch: dict[str, Any],
    *,
    size: int,
    max_pixels: int,
    train: bool,
    classes: dict[str, int],
    flip: bool = True,
    crop: str = "resized",
    rotate90: bool = False,
    seed: int | None = None,
) -> dict[str, Any]:
    """Decode (and for training augment), drop unreadable or unlabelled rows, index labels.

    Training rows flagged in a `strong_augment` column also get RandAugment; a `weight`
    column passes through as `weight` (1.0 for every row without one). `seed` None draws
    fresh augmentation.
    """
    resized = train and crop == "resized"
    out = decode_batch(batch, size=size, max_pixels=max_pixels, train=resized, flip=flip,
                       seed=seed)  # fmt: skip
    rng = np.random.default_rng(seed)
    if train and crop in ("shift", "none"):
        out["pixels"] = shift_and_flip(out["pixels"], rng, flip=flip, shift=crop == "shift")
    if train and rotate90:
        out["pixels"] = rotate_by_quarters(out["pixels"], rng)
    if train and "strong_augment" in out:
        out["pixels"] = strong_augment(out["pixels"], out["strong_augment"], rng)
    labels = np.array([classes.get(lab, -1) if lab is not None else -1 for lab in out["label"]])
    keep = (out["status"] == "ok") & (labels >= 0)
    texts = out.get("text")
    if texts is None:
        texts = np.array([None] * len(labels), dtype=object)
    weights = out.get("weight")
    if weights is None:
        weights = np.ones(len(labels))
    return {
        "key": out["key"][keep],
        "pixels": out["pixels"][keep],
        "text": texts[keep],
        "label": labels[keep].astype(np.int64),
        "weight": np.asarray(weights, dtype=np.float32)[keep],
    }
