"""Bulk classification with Ray Data: plan shards -> read -> decode -> caption -> classify ->
one Parquet file per shard, one row per input image. `classify` is the entry point.
"""

from raycls._lazy import lazy_exports

__all__ = ["build_dataset", "classify"]

__getattr__ = lazy_exports(__name__, {"classify": "pipeline", "build_dataset": "dataset"})
