"""WebDataset .tar shards, streamed: members are read one at a time (tarfile's stream mode,
also through gzip), samples are handed on in chunks, and a member over the byte limit is
skipped (an error row), never held in memory. No Ray import.

A sample is the members sharing a key (`dir/stem` before the first dot). WebDataset writes
them together; a member arriving after its sample was handed on (more than `chunk_rows`
samples later) is ignored, with a warning.
"""

from __future__ import annotations

import json
import logging
import tarfile
import time
from collections.abc import Iterator
from typing import Any

from raycls.io import retry
from raycls.io.images import IMAGE_EXTENSIONS
from raycls.io.retry import TransientReadError, is_transient
from raycls.io.storage import get_filesystem

logger = logging.getLogger(__name__)

TAR_TEXT_EXTENSIONS = ("txt", "caption", "text")
TAR_LABEL_EXTENSIONS = ("cls", "label")


class _TooBig(str):
    """In place of a member's bytes: why it was skipped."""


def iter_tar(
    uri: str,
    *,
    text_column: str | None,
    label_column: str | None,
    max_file_bytes: int,
    chunk_rows: int,
) -> Iterator[dict[str, list]]:
    """Columns key, image, text, label, error of `uri`'s samples, `chunk_rows` at a time.

    Raises:
        ValueError: the tar is corrupt (after any chunks already yielded).
        TransientReadError: the store kept failing (see `raycls.io.retry`).
    """
    open_samples: dict[str, dict[str, bytes | _TooBig]] = {}
    handed_on: set[str] = set()
    for name, data in _members(uri, max_file_bytes):
        dirname, _, base = name.rpartition("/")
        stem, _, ext = base.partition(".")
        key = f"{dirname}/{stem}" if dirname else stem
        if key in handed_on:
            logger.warning(
                "%s: member %s comes after its sample was read (WebDataset tars keep a "
                "sample's members together); it is ignored",
                uri,
                name,
            )
            continue
        if key not in open_samples and len(open_samples) >= chunk_rows:
            yield _columns(uri, open_samples, text_column, label_column)
            handed_on.update(open_samples)
            open_samples = {}
        open_samples.setdefault(key, {})[ext.lower()] = data
    if open_samples:
        yield _columns(uri, open_samples, text_column, label_column)


def _columns(
    uri: str,
    samples: dict[str, dict[str, bytes | _TooBig]],
    text_column: str | None,
    label_column: str | None,
) -> dict[str, list]:
    cols = _empty()
    for key, members in samples.items():
        _add_sample(cols, uri, key, members, text_column, label_column)
    return cols


def _empty() -> dict[str, list]:
    return {"key": [], "image": [], "text": [], "label": [], "error": []}


def _members(uri: str, max_file_bytes: int) -> Iterator[tuple[str, bytes | _TooBig]]:
    """(name, bytes) of the tar's sample members in order; a transient error reopens the
    stream and skips what was already handed out."""
    done, attempt, delay = 0, 1, retry.FIRST_DELAY_S
    while True:
        try:
            for i, item in enumerate(_stream(uri, max_file_bytes)):
                if i >= done:
                    done += 1
                    yield item
            return
        except Exception as e:
            if not is_transient(e):
                raise ValueError(f"cannot read tar shard {uri}: {type(e).__name__}: {e}") from e
            if attempt >= retry.ATTEMPTS:
                raise TransientReadError(
                    f"reading {uri} failed {attempt} times with a transient error; the last: "
                    f"{type(e).__name__}: {e}"
                ) from e
            logger.warning("reading %s: %s; reopening it in %.1f s", uri, e, delay)
            time.sleep(delay)
            attempt, delay = attempt + 1, min(delay * 2, retry.MAX_DELAY_S)


def _stream(uri: str, max_file_bytes: int) -> Iterator[tuple[str, bytes | _TooBig]]:
    fs, path = get_filesystem(uri)
    with fs.open_input_stream(path) as f, tarfile.open(fileobj=f, mode="r|*") as tar:
        for member in tar:
            base = member.name.rpartition("/")[2]
            stem, dot, _ = base.partition(".")
            if not member.isfile() or not dot or not stem:
                continue  # WebDataset keys need a name and an extension; ._x are hidden
            if member.size > max_file_bytes:
                # Stream mode skips the data by reading through it, a block at a time.
                yield (
                    member.name,
                    _TooBig(
                        f"tar member {member.name} is {member.size} bytes, over "
                        f"classify.max_file_bytes={max_file_bytes}; raise it to read this member"
                    ),
                )
                continue
            yield member.name, tar.extractfile(member).read()


def _add_sample(
    cols: dict[str, list],
    uri: str,
    key: str,
    members: dict[str, bytes | _TooBig],
    text_column: str | None,
    label_column: str | None,
) -> None:
    image_ext = next((e for e in members if "." + e.rsplit(".", 1)[-1] in IMAGE_EXTENSIONS), None)
    image = members.get(image_ext) if image_ext else None
    if isinstance(image, _TooBig):
        error, image = str(image), None
    elif image is None:
        error = f"no image member in tar sample {key} ({sorted(members)})"
    else:
        error = None
    small = {e: d for e, d in members.items() if not isinstance(d, _TooBig)}
    meta = _tar_json(small)
    cols["key"].append(f"{uri}#{key}")
    cols["image"].append(image)
    cols["error"].append(error)
    text_keys = (text_column, "text", "caption")
    cols["text"].append(
        _tar_field(small, meta, (text_column, *TAR_TEXT_EXTENSIONS), text_keys)
        if text_column
        else None
    )
    cols["label"].append(
        _tar_field(small, meta, (label_column, *TAR_LABEL_EXTENSIONS), (label_column,))
        if label_column
        else None
    )


def _tar_json(members: dict[str, bytes]) -> dict[str, Any]:
    try:
        meta = json.loads(members["json"]) if "json" in members else {}
    except ValueError:
        return {}
    return meta if isinstance(meta, dict) else {}


def _tar_field(
    members: dict[str, bytes], meta: dict[str, Any], exts: tuple, keys: tuple
) -> str | None:
    for ext in exts:
        if ext in members:
            return members[ext].decode("utf-8", errors="replace").strip()
    for key in keys:
        if meta.get(key) is not None:
            return str(meta[key])
    return None
