"""Classification metrics, reports and the confusion-matrix plot. No Ray import here."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

logger = logging.getLogger(__name__)

# More classes than this and per-cell counts would be unreadable; the colours still show.
MAX_ANNOTATED_CLASSES = 30


def classification_metrics(
    labels: np.ndarray, preds: np.ndarray, num_classes: int, prefix: str = ""
) -> dict[str, float]:
    """Accuracy and macro precision/recall/F1 over all `num_classes` (absent classes count 0)."""
    from sklearn.metrics import precision_recall_fscore_support

    labels, preds = np.asarray(labels), np.asarray(preds)
    if len(labels) == 0:
        raise ValueError("no examples to score: the evaluation data is empty after decoding")
    precision, recall, f1, _ = precision_recall_fscore_support(
        labels, preds, labels=list(range(num_classes)), average="macro", zero_division=0
    )
    return {
        f"{prefix}accuracy": float(np.mean(labels == preds)),
        f"{prefix}macro_precision": float(precision),
        f"{prefix}macro_recall": float(recall),
        f"{prefix}macro_f1": float(f1),
        f"{prefix}count": int(len(labels)),
    }


def top_k_accuracy(labels: np.ndarray, scores: np.ndarray, k: int) -> float:
    """Fraction of rows whose label is among the `k` highest scores."""
    top = np.argsort(-scores, axis=1)[:, :k]
    return float(np.mean((top == np.asarray(labels)[:, None]).any(axis=1)))


def confusion(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts [true, predicted]."""
    from sklearn.metrics import confusion_matrix

    return confusion_matrix(labels, preds, labels=list(range(num_classes)))


def per_class_report(
    labels: np.ndarray, preds: np.ndarray, class_names: list[str]
) -> dict[str, Any]:
    """sklearn's classification_report as a dict (precision, recall, f1, support per class)."""
    from sklearn.metrics import classification_report

    return classification_report(
        labels,
        preds,
        labels=list(range(len(class_names))),
        target_names=class_names,
        output_dict=True,
        zero_division=0,
    )


def plot_confusion(
    matrix: np.ndarray,
    class_names: list[str],
    path: str | Path | BinaryIO,
    title: str = "Confusion matrix",
) -> None:
    """PNG of the confusion matrix: colours by row-normalised rate, cells show counts."""
    import matplotlib

    matplotlib.use("Agg")  # no display on cluster nodes or in CI
    import matplotlib.pyplot as plt

    n = len(class_names)
    totals = matrix.sum(axis=1, keepdims=True)
    rates = np.divide(matrix, totals, out=np.zeros(matrix.shape, dtype=float), where=totals > 0)
    side = min(4 + 0.55 * n, 24)
    fig, ax = plt.subplots(figsize=(side + 1.5, side))
    image = ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    ax.set_xticks(range(n), labels=class_names, rotation=45 if n > 6 else 0, ha="right")
    ax.set_yticks(range(n), labels=class_names)
    ax.set_xlabel("Predicted class")
    ax.set_ylabel("True class")
    accuracy = np.trace(matrix) / max(matrix.sum(), 1)
    ax.set_title(f"{title} (n={int(matrix.sum())}, accuracy {accuracy:.3f})")
    if n <= MAX_ANNOTATED_CLASSES:
        fontsize = 10 if n <= 12 else 8 if n <= 20 else 6
        for i in range(n):
            for j in range(n):
                if matrix[i, j]:
                    colour = "white" if rates[i, j] > 0.5 else "black"
                    ax.text(
                        j,
                        i,
                        str(matrix[i, j]),
                        ha="center",
                        va="center",
                        color=colour,
                        fontsize=fontsize,
                    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def format_report(metrics: dict[str, Any], max_classes: int = 25) -> str:
    """A short text table for the terminal: overall figures, then per-class F1."""
    lines = [f"{'metric':<18}{'value':>10}"]
    for name in ("accuracy", "top5_accuracy", "macro_precision", "macro_recall", "macro_f1"):
        if name in metrics:
            lines.append(f"{name:<18}{metrics[name]:>10.4f}")
    if "count" in metrics:
        lines.append(f"{'examples':<18}{metrics['count']:>10d}")
    if metrics.get("bad_count"):
        lines.append(f"{'unreadable':<18}{metrics['bad_count']:>10d}")
    per_class = metrics.get("per_class") or {}
    names = [n for n in per_class if isinstance(per_class[n], dict) and "support" in per_class[n]]
    names = [n for n in names if n not in ("macro avg", "weighted avg", "micro avg")]
    if names:
        width = max(12, *(len(n) + 2 for n in names[:max_classes]))
        lines += ["", f"{'class':<{width}}{'precision':>10}{'recall':>10}{'f1':>10}{'n':>7}"]
        for name in names[:max_classes]:
            row = per_class[name]
            lines.append(
                f"{name:<{width}}{row['precision']:>10.3f}{row['recall']:>10.3f}"
                f"{row['f1-score']:>10.3f}{int(row['support']):>7d}"
            )
        if len(names) > max_classes:
            lines.append(f"... {len(names) - max_classes} more classes in metrics.json")
    return "\n".join(lines)
