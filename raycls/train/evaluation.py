"""Score a saved model on labelled data: metrics.json, a per-class report, a confusion-matrix PNG.

The model runs in this process (GPU if there is one). Reading and decoding run here too, shard
by shard, which suits test sets of up to some tens of thousands of images; with `address` they
run as Ray Data tasks on that cluster instead and stream to this process. For scoring millions
of images use `raycls classify`, which runs the model itself on the cluster.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from raycls.io.images import decode_batch
from raycls.io.inputs import load_labeled, shard_dataset
from raycls.io.shards import read_shard
from raycls.io.storage import is_remote, join, local_copy, write_bytes, write_json
from raycls.models import load_model, optimize_for_inference
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
) -> dict[str, Any]:
    """Accuracy, top-5 (over 5 classes), macro precision/recall/F1 and per-class figures.

    Args:
        data: labelled data laid out as for training (ImageFolder or Parquet with labels).
        out_dir: where metrics.json and confusion_matrix.png go; None writes nothing.
        address: run reading and decoding on this Ray cluster instead of in-process.
    """
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with local_copy(model_dir) as folder:
        model = optimize_for_inference(load_model(folder, device))
    classes = model.labels
    columns = {
        "image_column": image_column,
        "label_column": label_column,
        "text_column": text_column,
    }
    shards, data_classes = load_labeled(data, **columns)
    unknown = sorted(set(data_classes) - set(classes))
    if unknown:
        raise ValueError(
            f"{data!r} has class(es) {unknown} that the model in {model_dir!r} was not trained "
            f"on; the model knows: {classes}"
        )
    index = {name: i for i, name in enumerate(classes)}
    labels, scores, bad, keys = [], [], [], []
    read = {**columns, "labeled_root": data}
    for batch in _batches(shards, read, model.config.image_size, batch_size, address):
        ok = batch["status"] == "ok"
        bad += [f"{k}: {e}" for k, e in zip(batch["key"][~ok], batch["error"][~ok], strict=True)]
        known = np.array([lab in index for lab in batch["label"]], dtype=bool) & ok
        if not known.any():
            continue
        pixels = torch.from_numpy(np.ascontiguousarray(batch["pixels"][known]))
        inputs = model.tokenize(list(batch["text"][known]))
        with torch.no_grad():
            logits = model(pixels.to(device), **{k: v.to(device) for k, v in inputs.items()})
        scores.append(torch.softmax(logits.float(), 1).cpu().numpy())
        labels.append(np.array([index[lab] for lab in batch["label"][known]]))
        keys.append(batch["key"][known])
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


def _batches(
    shards: list, read: dict[str, Any], size: int, batch_size: int, address: str | None
) -> Iterator[dict[str, np.ndarray]]:
    """Decoded batches with key, pixels, text, label, status, error."""
    if address is not None:
        from raycls.cluster.runtime import init_ray

        init_ray(address)
        ds = shard_dataset(shards, **read).map_batches(decode_batch, fn_kwargs={"size": size})
        yield from ds.iter_batches(batch_size=batch_size, batch_format="numpy")
        return
    for shard in shards:
        table = read_shard(shard, **read)
        for start in range(0, table.num_rows, batch_size):
            rows = table.slice(start, batch_size).to_pydict()
            batch = {k: np.array(v, dtype=object) for k, v in rows.items()}
            yield decode_batch(batch, size=size)
