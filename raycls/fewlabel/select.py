"""Uncertainty sampling over a bulk-classification output: which rows should a person label
first. Reads only the columns it needs from the Parquet parts; no Ray, no model.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from raycls.io.storage import check_output_file, get_filesystem

STRATEGIES = ("margin", "entropy", "least-confident")
KEY_COLUMNS = ("path", "id")  # the first column of a classify output, by input kind


def uncertainty(top_k_scores: list[list[float]], strategy: str) -> np.ndarray:
    """Per row, how unsure the model is (higher: label it sooner).

    margin: 1 - (top-1 - top-2); least-confident: 1 - top-1; entropy: of the top-k scores plus
    the rest of the probability mass as one more outcome (the output keeps only the top k, so
    this is the entropy of that coarser distribution).
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of: {', '.join(STRATEGIES)}")
    width = max((len(s) for s in top_k_scores), default=0)
    scores = np.zeros((len(top_k_scores), max(width, 2)), dtype=np.float64)
    for i, row in enumerate(top_k_scores):
        scores[i, : len(row)] = sorted(row, reverse=True)
    if strategy == "least-confident":
        return 1.0 - scores[:, 0]
    if strategy == "margin":
        if width < 2:
            raise ValueError(
                "the margin strategy needs the top 2 scores of each row; this output keeps "
                "only 1: rerun classify with classify.top_k=2 or more, or use least-confident"
            )
        return 1.0 - (scores[:, 0] - scores[:, 1])
    rest = np.clip(1.0 - scores.sum(axis=1, keepdims=True), 0.0, None)
    p = np.concatenate([scores, rest], axis=1)
    return -(p * np.log(np.where(p > 0, p, 1.0))).sum(axis=1)


def read_predictions(out_dir: str, columns: tuple[str, ...] = ()) -> pa.Table:
    """The ok rows of a classify OUT_DIR (or one Parquet file): key, label, score, top_k_*."""
    fs, path = get_filesystem(out_dir)
    try:
        dataset = pads.dataset(path, filesystem=fs, format="parquet", exclude_invalid_files=True)
    except (FileNotFoundError, pa.ArrowInvalid) as error:
        raise ValueError(f"{out_dir!r} holds no classify output (Parquet parts): {error}") from None
    names = dataset.schema.names
    key = next((k for k in KEY_COLUMNS if k in names), None)
    needed = ("label", "score", "top_k_labels", "top_k_scores", "status")
    missing = [c for c in needed if c not in names]
    if key is None or missing:
        raise ValueError(
            f"{out_dir!r} is not a classify output: it lacks {missing or list(KEY_COLUMNS)} "
            f"(columns: {names})"
        )
    table = dataset.to_table(columns=[key, *needed, *columns], filter=pc.field("status") == "ok")
    return table.rename_columns(["key", *table.column_names[1:]])


def select_rows(
    out_dir: str, n: int, strategy: str = "margin", per_class: bool = False
) -> pa.Table:
    """The `n` rows of a classify output most worth labelling, most uncertain first.

    With `per_class`, the picks are spread over the predicted labels in turn (most uncertain of
    each first), so rare predicted classes are represented.
    """
    if n < 1:
        raise ValueError(f"n={n} must be >= 1")
    table = read_predictions(out_dir)
    values = uncertainty(table.column("top_k_scores").to_pylist(), strategy)
    order = np.argsort(-values, kind="stable")
    if per_class:
        order = _round_robin(order, table.column("label").to_pylist())
    picked = order[:n]
    return table.take(pa.array(picked, type=pa.int64())).append_column(
        "uncertainty", pa.array(values[picked], type=pa.float64())
    )


def _round_robin(order: np.ndarray, labels: list[str]) -> np.ndarray:
    """`order` re-interleaved: first of each label, then second of each, ..."""
    queues: dict[str, list[int]] = {}
    for i in order:
        queues.setdefault(labels[i], []).append(int(i))
    depth = max((len(q) for q in queues.values()), default=0)
    return np.array(
        [q[d] for d in range(depth) for q in queues.values() if d < len(q)], dtype=np.int64
    )


def write_selection(table: pa.Table, out: str, out_dir: str | None = None) -> None:
    """Write the picks as .csv (top-k lists joined with '|') or .parquet, by extension; never
    inside the classify output `out_dir` they were picked from."""
    check_output_file(out, (".csv", ".parquet"), outside=out_dir)
    fs, path = get_filesystem(out)
    if out.lower().endswith(".parquet"):
        import pyarrow.parquet as pq

        pq.write_table(table, path, filesystem=fs)
        return
    import pyarrow.csv as pcsv

    flat = table.set_column(
        table.schema.get_field_index("top_k_labels"),
        "top_k_labels",
        pa.array(["|".join(v) for v in table.column("top_k_labels").to_pylist()]),
    ).set_column(
        table.schema.get_field_index("top_k_scores"),
        "top_k_scores",
        pa.array(
            ["|".join(f"{s:.4f}" for s in v) for v in table.column("top_k_scores").to_pylist()]
        ),
    )
    with fs.open_output_stream(path) as stream:
        pcsv.write_csv(flat, stream)
