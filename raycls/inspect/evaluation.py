"""The page `raycls evaluate` writes beside metrics.json: figures, the confusion matrix as a
table, and the most-confused class pairs shown as images (the mistaken ones next to the most
confident correct example of the class they were taken for)."""

from __future__ import annotations

from typing import Any

import numpy as np

from raycls.inspect import page
from raycls.inspect.fetch import fetch_images
from raycls.io.storage import join, write_bytes

EVALUATION_PAGE = "report.html"
PAIRS = 6
EXAMPLES = 3


def confused_pairs(matrix: np.ndarray, n: int = PAIRS) -> list[tuple[int, int, int]]:
    """(true, predicted, count) of the `n` largest off-diagonal cells, largest first."""
    off = np.array(matrix, dtype=np.int64)
    np.fill_diagonal(off, 0)
    cells = np.argsort(off, axis=None, kind="stable")[::-1][:n]
    rows, cols = np.unravel_index(cells, off.shape)
    return [(int(t), int(p), int(off[t, p])) for t, p in zip(rows, cols, strict=True) if off[t, p]]


def _examples(y: np.ndarray, probs: np.ndarray, pairs: list) -> dict[tuple, list[int]]:
    """Rows to show per pair: the mistakes most sure of the wrong class, and one correct row
    of that class (the most confident)."""
    preds = probs.argmax(1)
    out = {}
    for t, p, _ in pairs:
        wrong = np.flatnonzero((y == t) & (preds == p))
        right = np.flatnonzero((y == p) & (preds == p))
        wrong = wrong[np.argsort(-probs[wrong, p])][:EXAMPLES].tolist()
        right = right[np.argsort(-probs[right, p])][:1].tolist()
        out[(t, p)] = [wrong, right]
    return out


def _matrix_table(matrix: np.ndarray, classes: list[str]) -> str:
    top = max(int(matrix.max()), 1)
    rows = []
    for t, name in enumerate(classes):
        cells = [f"<b>{page.esc(name)}</b>"]
        for p in range(len(classes)):
            n = int(matrix[t, p])
            hue = "74,123,208" if t == p else "208,74,74"
            alpha = 0.08 + 0.8 * n / top if n else 0
            cells.append(
                f'<span style="display:block;background:rgba({hue},{alpha:.2f})" '
                f'class="num">{n}</span>'
            )
        rows.append(cells)
    header = ["true \\ predicted"] + [page.esc(c) for c in classes]
    return page.table(header, rows)


def _pairs_html(pairs, examples, keys, probs, classes, thumbs) -> str:
    if not pairs:
        return '<p class="muted">no mistakes</p>'
    blocks = []
    for t, p, n in pairs:
        wrong, right = examples[(t, p)]
        cards = [
            page.card(
                page.image_tag(thumbs.get(keys[i]), keys[i], "no image"),
                [
                    f"{page.esc(classes[t])}, taken for {page.esc(classes[p])} ({probs[i, p]:.2f})",
                    page.short_name(keys[i]),
                ],
            )
            for i in wrong
        ] + [
            page.card(
                page.image_tag(thumbs.get(keys[i]), keys[i], "no image"),
                [
                    f"a real {page.esc(classes[p])} ({probs[i, p]:.2f})",
                    page.short_name(keys[i]),
                ],
            )
            for i in right
        ]
        blocks.append(
            f"<h3>{page.esc(classes[t])} → {page.esc(classes[p])}: {n} "
            f"image{'s' if n != 1 else ''}</h3>" + page.gallery(cards)
        )
    return "\n".join(blocks)


def write_evaluation_page(
    out_dir: str,
    metrics: dict[str, Any],
    keys: np.ndarray,
    y: np.ndarray,
    probs: np.ndarray,
    image_column: str = "image",
) -> str:
    """Write report.html into `out_dir` from evaluate's metrics and per-row results; returns
    its path. `keys` name each row's image (as classify's keys do)."""
    classes = metrics["classes"]
    matrix = np.asarray(metrics["confusion_matrix"])
    pairs = confused_pairs(matrix)
    examples = _examples(y, probs, pairs)
    wanted = {keys[i] for rows in examples.values() for part in rows for i in part}
    thumbs = {k: page.thumbnail(v) for k, v in fetch_images(sorted(wanted), image_column).items()}
    figures = [
        (name, metrics.get(name))
        for name in ("accuracy", "macro_f1", "macro_precision", "macro_recall", "top5_accuracy")
        if metrics.get(name) is not None
    ]
    summary = page.table(
        ["", ""],
        [
            ["model", page.esc(metrics.get("model_dir"))],
            ["data", page.esc(metrics.get("data"))],
            ["images", f"{int(matrix.sum()):,} scored, {metrics.get('bad_count', 0)} unreadable"],
        ]
        + [[name, f"{value:.4f}"] for name, value in figures],
    )
    report = metrics["per_class"]
    per_class = page.table(
        ["class", "precision", "recall", "f1", "support"],
        [
            [page.esc(c)]
            + [f"{report[c][k]:.3f}" for k in ("precision", "recall", "f1-score")]
            + [f"{int(report[c]['support']):,}"]
            for c in classes
            if c in report
        ],
    )
    sections = [
        page.section("summary", "Evaluation", summary),
        page.section(
            "confusion", "Confusion matrix (rows: true class)", _matrix_table(matrix, classes)
        ),
        page.section(
            "pairs",
            "Most-confused pairs",
            _pairs_html(pairs, examples, keys, probs, classes, thumbs),
        ),
        page.section("per-class", "Per class", per_class),
    ]
    target = join(out_dir, EVALUATION_PAGE)
    write_bytes(target, page.document("raycls evaluate", sections).encode())
    return target
