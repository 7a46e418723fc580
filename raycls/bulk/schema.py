"""The columns of classify's results, defined once: the batches the classify stage yields and
the Parquet files the driver writes. Plain Arrow types that pyarrow, pandas, DuckDB and Spark
all read."""

from __future__ import annotations

import pyarrow as pa

# One row's prediction, in output order (after the key column, before "model").
PREDICTION_TYPES: dict[str, pa.DataType] = {
    "label": pa.string(),
    "score": pa.float32(),
    "top_k_labels": pa.list_(pa.string()),
    "top_k_scores": pa.list_(pa.float32()),
    "caption": pa.string(),
    "status": pa.string(),
    "error": pa.string(),
}
# Columns of the result batches that only route rows to their shard file.
ROUTING = ("shard", "shard_rows", "row")
# The result batches: the row's key, its routing, its prediction.
BATCH_TYPES: dict[str, pa.DataType] = {
    "key": pa.string(),
    **{name: pa.int32() for name in ROUTING},
    **PREDICTION_TYPES,
}


def result_schema(key_name: str) -> pa.Schema:
    """The output files' columns: `key_name` (path or id), the prediction, the model."""
    return pa.schema([(key_name, pa.string()), *PREDICTION_TYPES.items(), ("model", pa.string())])
