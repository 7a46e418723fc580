"""Image bytes for a few result rows, from the keys that classify and evaluate write.

A key is an image file's path or URI, `file.parquet#row` (the row's image column) or
`file.tar#sample`. Keys from a Parquet id column name no file, so they get no image. Only the
requested rows are read: a Parquet file's row groups that hold them, a tar file once for all
its samples.
"""

from __future__ import annotations

import logging
import tarfile
from collections import defaultdict
from collections.abc import Iterable

import pyarrow.parquet as pq

from raycls.io.images import IMAGE_EXTENSIONS
from raycls.io.reading import parquet_images
from raycls.io.storage import get_filesystem, read_bytes

logger = logging.getLogger(__name__)


def fetch_images(keys: Iterable[str], image_column: str = "image") -> dict[str, bytes | None]:
    """Bytes of each key's image; None where it cannot be read (logged, never raised)."""
    out: dict[str, bytes | None] = {}
    parquet: dict[str, dict[int, str]] = defaultdict(dict)
    tars: dict[str, dict[str, str]] = defaultdict(dict)
    for key in dict.fromkeys(keys):
        out[key] = None
        base, sep, rest = key.rpartition("#")
        if sep and base.lower().endswith((".parquet", ".pq")) and rest.isdigit():
            parquet[base][int(rest)] = key
        elif sep and base.lower().endswith((".tar", ".tar.gz", ".tgz")):
            tars[base][rest] = key
        else:
            out[key] = _guard(key, lambda k=key: read_bytes(k))
    for uri, rows in parquet.items():
        got = _guard(uri, lambda u=uri, r=rows: _parquet_rows(u, sorted(r), image_column)) or {}
        out.update({rows[r]: data for r, data in got.items()})
    for uri, samples in tars.items():
        got = _guard(uri, lambda u=uri, s=samples: _tar_samples(u, set(s))) or {}
        out.update({samples[s]: data for s, data in got.items()})
    return out


def _guard(where: str, read):
    try:
        return read()
    except (OSError, ValueError, tarfile.TarError, EOFError) as err:
        logger.warning("cannot read images from %s: %s", where, err)
        return None


def _parquet_rows(uri: str, rows: list[int], image_column: str) -> dict[int, bytes | None]:
    fs, path = get_filesystem(uri)
    out = {}
    with pq.ParquetFile(path, filesystem=fs) as pf:
        start = 0
        for group in range(pf.metadata.num_row_groups):
            stop = start + pf.metadata.row_group(group).num_rows
            wanted = [r for r in rows if start <= r < stop]
            if wanted:
                column = pf.read_row_group(group, columns=[image_column]).column(0)
                images, _ = parquet_images(column.take([r - start for r in wanted]), uri)
                out.update(zip(wanted, images, strict=True))
            start = stop
    return out


def _tar_samples(uri: str, samples: set[str]) -> dict[str, bytes]:
    fs, path = get_filesystem(uri)
    out = {}
    with fs.open_input_stream(path) as f, tarfile.open(fileobj=f, mode="r|*") as tar:
        for member in tar:
            dirname, _, base = member.name.rpartition("/")
            stem, _, ext = base.partition(".")
            key = f"{dirname}/{stem}" if dirname else stem
            if (
                member.isfile()
                and key in samples
                and "." + ext.lower().rsplit(".", 1)[-1] in IMAGE_EXTENSIONS
            ):
                out[key] = tar.extractfile(member).read()
    return out
