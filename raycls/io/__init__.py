"""Bytes in. `inputs` lists a source (folder, list file, Parquet, WebDataset tar; local or
s3:// / gs://) and plans it into shards; `reading` reads one shard into rows of bytes; `images`
decodes and checks those bytes; `storage` reads and writes files and URIs. No Ray at import.
"""

from raycls._lazy import lazy_exports

__all__ = ["get_filesystem", "plan_shards", "read_shard"]

__getattr__ = lazy_exports(
    __name__,
    {"plan_shards": "inputs", "read_shard": "reading", "get_filesystem": "storage"},
)
