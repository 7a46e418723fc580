"""Training's optional per-row columns, read from Parquet: a loss weight (data.weight_column)
and a strong-augmentation flag (data.strong_augment_column), as self-training writes them for
pseudo-labelled rows. The checks here run on the driver and in every read. No Ray import.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

# Row name -> (type, value of a null); the Parquet column each is read from is a setting.
TRAINING_COLUMNS = {"weight": (pa.float64(), 1.0), "strong_augment": (pa.bool_(), False)}


def named_columns(
    weight_column: str | None = None, strong_augment_column: str | None = None, **_: object
) -> dict[str, str]:
    """Row name -> Parquet column, for the per-row columns a reader was asked for."""
    named = {"weight": weight_column, "strong_augment": strong_augment_column}
    return {name: column for name, column in named.items() if column}


def setting_names(columns: dict[str, str]) -> dict[str, str]:
    """The same columns keyed by their settings' names (data.weight_column, ...), for errors."""
    return {f"data.{name}_column": column for name, column in columns.items()}


def read_weights(
    column: pa.ChunkedArray, uri: str, name: str, rows: list[int] | None = None
) -> list[float]:
    """Per-row loss weights: numbers >= 0 and finite (0 leaves a row out of the loss); a null
    counts 1.0. Anything else raises ValueError naming the file, the row and the value.

    Args:
        rows: the file's row number of each value (default: the column is the whole file).
    """
    if not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)):
        raise ValueError(
            f"weight column {name!r} of {uri} has type {column.type}; data.weight_column needs "
            "a column of numbers"
        )
    values = column.cast(pa.float64()).fill_null(1.0).to_numpy()
    bad = ~np.isfinite(values) | (values < 0)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        row = rows[i] if rows else i
        raise ValueError(
            f"weight column {name!r} of {uri} holds {float(values[i])!r} in row {row} "
            f"({int(bad.sum())} bad value(s)); loss weights must be finite and >= 0 "
            "(null counts 1.0)"
        )
    return values.tolist()


def read_flags(column: pa.ChunkedArray, uri: str, name: str) -> list[bool]:
    """Per-row strong-augmentation flags: booleans or 0/1 integers; a null counts False."""
    if not (pa.types.is_boolean(column.type) or pa.types.is_integer(column.type)):
        raise ValueError(
            f"strong_augment column {name!r} of {uri} has type {column.type}; "
            "data.strong_augment_column needs booleans"
        )
    return column.cast(pa.bool_()).fill_null(False).to_pylist()
