"""Score a saved model on labelled data: metrics.json, a per-class report, a confusion-matrix PNG.

The model runs in this process (GPU if there is one). Reading and decoding run here too, shard
by shard, which suits test sets of up to some tens of thousands of images; with `address` they
run as Ray Data tasks on that cluster instead and stream to this process. For scoring millions
of images use `raycls classify`, which runs the model itself on the cluster.
"""

from __future__ import annotations

import dataclasses
import io
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from raycls.config import DEFAULT_MAX_PIXELS
from raycls.io.images import decode_batch
from raycls.io.inputs import shard_dataset
from raycls.io.labeled import load_labeled
from raycls.io.reading import read_shard
from raycls.io.storage import check_output_dir, is_remote, join, write_bytes, write_json
from raycls.models.labels import LabelSet, load_labels
from raycls.models.predictor import ZERO_SHOT_KINDS, load_predictor, resolve_model
from raycls.train.metrics import (
    classification_metrics,
    confusion,
    format_report,
    per_class_report,
    plot_confusion,
    top_k_accuracy,
)

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
CONFUSION_FILE = "confusion_matrix.png"
BAD_EXAMPLES = 10

__all__ = ["evaluate", "format_report"]


def evaluate(
    model_dir: str,
    data: str,
    out_dir: str | None = None,
    batch_size: int = 64,
    address: str | None = None,
    *,
    image_column: str = "image",
    label_column: str = "label",
    text_column: str | None = "text",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    model_kind: str = "auto",
    labels: str | LabelSet | None = None,
    trust_remote_code: bool = False,
) -> dict[str, Any]:
    """Accuracy, top-5 (over 5 classes), macro precision/recall/F1 and per-class figures.

    Args:
        data: labelled data laid out as for training (ImageFolder or Parquet with labels).
        out_dir: where metrics.json and confusion_matrix.png go; None writes nothing.
        address: run reading and decoding on this Ray cluster instead of in-process.
        model_kind, labels: as `raycls classify` takes them (`raycls.models.predictor`); a
            zero-shot or caption model without `labels` chooses among the data's class names.
    """
    if out_dir is not None:
        check_output_dir(out_dir)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    columns = {
        "image_column": image_column,
        "label_column": label_column,
        "text_column": text_column,
    }
    shards, data_classes = load_labeled(data, **columns)
    spec = _spec(model_dir, model_kind, labels, trust_remote_code, data_classes)
    model = load_predictor(spec, device)
    classes = model.labels
    unknown = sorted(set(data_classes) - set(classes))
    if unknown:
        if spec.kind in ZERO_SHOT_KINDS:
            raise ValueError(f"{data!r} has class(es) {unknown} not among the --labels {classes}")
        raise ValueError(
            f"{data!r} has class(es) {unknown} that the model in {model_dir!r} was not trained "
            f"on; the model knows: {classes}"
        )
    index = {name: i for i, name in enumerate(classes)}
    labels, scores, bad, keys = [], [], [], []
    read = {**columns, "labeled_root": data}
    decode = {"size": spec.image.size, "max_pixels": max_pixels}
    for batch in _batches(shards, read, decode, batch_size, address):
        ok = batch["status"] == "ok"
        bad += [f"{k}: {e}" for k, e in zip(batch["key"][~ok], batch["error"][~ok], strict=True)]
        known = np.array([lab in index for lab in batch["label"]], dtype=bool) & ok
        if not known.any():
            continue
        probs, errors = model(batch["pixels"][known], [_text(t) for t in batch["text"][known]])
        failed = np.array([e is not None for e in errors], dtype=bool)
        batch_keys = batch["key"][known]
        bad += [f"{k}: {e}" for k, e, f in zip(batch_keys, errors, failed, strict=True) if f]
        scores.append(probs[~failed])
        labels.append(np.array([index[lab] for lab in batch["label"][known][~failed]]))
        keys.append(batch_keys[~failed])
    if bad:
        logger.warning(
            "%d images cannot be read and are skipped, e.g.\n  %s",
            len(bad),
            "\n  ".join(bad[:BAD_EXAMPLES]),
        )
    if not labels:
        raise ValueError(f"no readable labelled images in {data!r}")
    y, p = np.concatenate(labels), np.concatenate(scores)
    preds = p.argmax(1)
    metrics: dict[str, Any] = classification_metrics(y, preds, len(classes))
    if len(classes) > 5:
        metrics["top5_accuracy"] = top_k_accuracy(y, p, 5)
    matrix = confusion(y, preds, len(classes))
    metrics.update(
        per_class=per_class_report(y, preds, classes),
        confusion_matrix=matrix.tolist(),
        classes=classes,
        bad_count=len(bad),
        bad_examples=bad[:BAD_EXAMPLES],
        model_dir=str(model_dir),
        model_kind=spec.kind,
        data=str(data),
    )
    if out_dir is not None:
        out = out_dir if is_remote(out_dir) else str(Path(out_dir).resolve())
        png = io.BytesIO()
        title = f"{Path(model_dir).name} on {Path(data).name}"
        plot_confusion(matrix, classes, png, title=title)
        write_bytes(join(out, CONFUSION_FILE), png.getvalue())
        write_json(join(out, METRICS_FILE), metrics)
        from raycls.inspect.evaluation import write_evaluation_page

        keys = np.concatenate(keys)
        metrics["report_page"] = write_evaluation_page(out, metrics, keys, y, p, image_column)
        metrics["report_dir"] = out
    return metrics


def _spec(
    model_dir: str,
    kind: str,
    labels: str | LabelSet | None,
    trust_remote_code: bool,
    data_classes: list[str],
) -> Any:
    spec = resolve_model(model_dir, kind=kind, labels=labels, trust_remote_code=trust_remote_code,
                         labels_optional=True)  # fmt: skip
    if spec.kind in ZERO_SHOT_KINDS and spec.labels is None:
        logger.info("zero-shot labels: the data's classes %s", data_classes)
        spec = dataclasses.replace(spec, labels=load_labels(",".join(data_classes)))
    return spec


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value.strip() else None


def _batches(
    shards: list, read: dict[str, Any], decode: dict[str, Any], batch_size: int, address: str | None
) -> Iterator[dict[str, np.ndarray]]:
    """Decoded batches with key, pixels, text, label, status, error."""
    if address is not None:
        from raycls.cluster.runtime import init_ray

        init_ray(address)
        ds = shard_dataset(shards, **read).map_batches(decode_batch, fn_kwargs=decode)
        yield from ds.iter_batches(batch_size=batch_size, batch_format="numpy")
        return
    for shard in shards:
        table = read_shard(shard, **read)
        for start in range(0, table.num_rows, batch_size):
            rows = table.slice(start, batch_size).to_pydict()
            batch = {k: np.array(v, dtype=object) for k, v in rows.items()}
            yield decode_batch(batch, **decode)
