"""Where classify results leave: one Parquet file per input shard, committed atomically, and a
manifest that makes a rerun skip finished shards and refuse to mix two models' results.

No Ray import: the driver feeds result batches to `ShardCollector` and writes what it returns.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import uuid
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from raycls.bulk.schema import result_schema  # noqa: F401 (re-exported)
from raycls.io.inputs import OUTPUT_MARKER
from raycls.io.storage import get_filesystem, is_remote, redact, to_json
from raycls.models.files import CONFIG_FILE, TEXT_DIR, WEIGHTS_FILE

logger = logging.getLogger(__name__)

MANIFEST = OUTPUT_MARKER  # input listings leave folders holding one out
PART = re.compile(r"^part-(\d{6})\.parquet$")


def count_statuses(table: pa.Table, counts: dict[str, int] | None = None) -> dict[str, int]:
    """Rows per status ("ok", "error") in `table`, added to `counts`, which is returned."""
    counts = {} if counts is None else counts
    for item in table.column("status").value_counts().to_pylist():
        counts[item["values"]] = counts.get(item["values"], 0) + item["counts"]
    return counts


def part_name(index: int) -> str:
    return f"part-{index:06d}.parquet"


def model_fingerprint(
    model_dir: str, names: tuple[str, ...] = (CONFIG_FILE, WEIGHTS_FILE)
) -> dict[str, Any]:
    """Identity of a saved model: a hash of config.json and of the weights' size, head and tail.

    Cheap on multi-GB weights (reads 2 MiB) yet changes whenever a model is retrained.
    """
    fs, base = get_filesystem(model_dir)
    base = base.rstrip("/")
    digest = hashlib.sha256()
    for name in names:
        path = f"{base}/{name}"
        info = fs.get_file_info(path)
        if info.type != pafs.FileType.File:
            raise ValueError(
                f"model directory {model_dir!r} has no {name}; give a directory written by "
                f"`raycls train` ({CONFIG_FILE}, {WEIGHTS_FILE}, {TEXT_DIR}/)"
            )
        digest.update(f"{name}:{info.size}".encode())
        with fs.open_input_file(path) as f:
            digest.update(f.read(1 << 20))
            if info.size > 2 << 20:
                f.seek(info.size - (1 << 20))
                digest.update(f.read(1 << 20))
    return {"dir": model_dir, "sha256": digest.hexdigest()}


class OutputDir:
    """OUT_DIR: `part-NNNNNN.parquet` per shard plus `_manifest.json`, local or object store."""

    def __init__(self, uri: str) -> None:
        self.uri = redact(uri.rstrip("/"))  # only ever shown
        self.fs, self.path = get_filesystem(uri)
        self.path = self.path.rstrip("/")
        self.atomic_rename = not is_remote(uri)
        self.lock: Any = None  # an OutputLock: checked before each commit

    def prepare(self, manifest: dict[str, Any], *, overwrite: bool) -> set[int]:
        """Check or write the manifest; return the indices of shards already committed.

        Raises:
            ValueError: OUT_DIR holds results of another model, input or settings (and
                `overwrite` is False).
        """
        self.fs.create_dir(self.path, recursive=True)
        try:
            old = self._read_manifest()
        except ValueError as e:
            if not overwrite:
                raise ValueError(
                    f"{self.uri}/{MANIFEST} is damaged ({e}); pass --overwrite to delete the "
                    "old results and start over"
                ) from e
            old = None
        parts = self._parts()
        if overwrite:
            self._clear(parts)
            old, parts = None, {}
        elif old is None and parts:
            raise ValueError(
                f"{self.uri} holds {len(parts)} part files but no {MANIFEST}; choose an empty "
                "OUT_DIR or pass --overwrite to delete them"
            )
        elif old is not None:
            changed = [
                k for k in manifest["identity"] if old["identity"].get(k) != manifest["identity"][k]
            ]
            if changed:
                raise ValueError(_mismatch_message(self.uri, old["identity"], manifest, changed))
        self._remove_stale_temps()
        if old is None:
            self.write_manifest(manifest)
        return set(parts)

    def write_shard(self, index: int, table: pa.Table) -> None:
        """Commit one shard's file whole (see `_commit`)."""
        buffer = pa.BufferOutputStream()
        pq.write_table(table, buffer, compression="snappy")
        self._commit(part_name(index), buffer.getvalue())

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        self._commit(MANIFEST, to_json(manifest).encode())

    def _commit(self, name: str, data: bytes | pa.Buffer) -> None:
        """Write `name` so that readers find all of it or nothing.

        Locally: a temp file, then a rename. Object stores have no rename, but an object
        appears only once its upload completes (one PUT, or a multipart upload's completion).
        pyarrow completes an upload whenever the stream closes, even on the way out of an
        error, so the whole file is serialized first and written in one call: a failure
        while producing it never reaches the store.
        """
        if self.lock is not None:
            self.lock.check()
        final = f"{self.path}/{name}"
        if self.atomic_rename:
            _write_durably(f"{self.path}/.{name}.{uuid.uuid4().hex}.tmp", final, data)
            return
        with self.fs.open_output_stream(final) as f:
            f.write(data)

    def count_rows(self, indices: set[int] | list[int]) -> dict[str, int]:
        """Rows per status in committed shards (reads only the small `status` column)."""
        counts: dict[str, int] = {}
        for index in indices:
            path = f"{self.path}/{part_name(index)}"
            count_statuses(pq.read_table(path, columns=["status"], filesystem=self.fs), counts)
        return counts

    def _parts(self) -> dict[int, str]:
        selector = pafs.FileSelector(self.path, allow_not_found=True)
        found = {}
        for info in self.fs.get_file_info(selector):
            match = PART.match(info.base_name)
            if match and info.type == pafs.FileType.File:
                found[int(match[1])] = info.path
        return found

    def has_manifest(self) -> bool:
        return self.fs.get_file_info(f"{self.path}/{MANIFEST}").type == pafs.FileType.File

    def _read_manifest(self) -> dict[str, Any] | None:
        path = f"{self.path}/{MANIFEST}"
        if self.fs.get_file_info(path).type != pafs.FileType.File:
            return None
        with self.fs.open_input_stream(path) as f:
            manifest = json.loads(f.read())
        if not isinstance(manifest, dict) or not isinstance(manifest.get("identity"), dict):
            raise ValueError("no identity object in it")
        return manifest

    def _clear(self, parts: dict[int, str]) -> None:
        if parts:
            logger.info("overwrite: deleting %d part files in %s", len(parts), self.uri)
        for path in parts.values():
            self.fs.delete_file(path)
        manifest = f"{self.path}/{MANIFEST}"
        if self.fs.get_file_info(manifest).type == pafs.FileType.File:
            self.fs.delete_file(manifest)

    def _remove_stale_temps(self) -> None:
        # Left by a run killed between writing and renaming; harmless, but clutter.
        selector = pafs.FileSelector(self.path, allow_not_found=True)
        for info in self.fs.get_file_info(selector):
            name = info.base_name
            if name.startswith((".part-", f".{MANIFEST}.")) and name.endswith(".tmp"):
                self.fs.delete_file(info.path)


def _write_durably(temp: str, final: str, data: bytes | pa.Buffer) -> None:
    """Write a local file via `temp` and a rename, both flushed to disk: after a power loss
    the file is whole or absent, never committed but empty."""
    with open(temp, "wb") as f:
        f.write(memoryview(data))
        f.flush()
        os.fsync(f.fileno())
    os.replace(temp, final)
    folder = os.open(os.path.dirname(final), os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def _mismatch_message(uri: str, old: dict, manifest: dict, changed: list[str]) -> str:
    diffs = "; ".join(f"{k}: {old.get(k)!r} -> {manifest['identity'][k]!r}" for k in changed)
    return (
        f"{uri} holds results of a different run ({diffs}). Rerun with the same model, input "
        "and settings to resume, choose another OUT_DIR, or pass --overwrite to delete the old "
        "results"
    )


class ShardCollector:
    """Gathers streamed result rows by shard; hands back a shard's table once all rows arrived.

    Rows of a shard already handed back (a task retried after a worker died re-delivers
    them) are ignored, as are rows of a shard whose read failed (a row with `row` < 0; its
    message lands in `failed`). Memory holds only the small result columns of shards still
    in flight.
    """

    def __init__(self, schema: pa.Schema, model_name: str) -> None:
        self.schema = schema
        self.model_name = model_name
        self.failed: dict[int, str] = {}
        self._pending: dict[int, list[pa.Table]] = {}
        self._rows: dict[int, set[int]] = {}
        self._expected: dict[int, int] = {}
        self._done: set[int] = set()

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def add(self, batch: pa.Table) -> list[tuple[int, pa.Table]]:
        """Add a batch of result rows; return (shard index, table) for each shard now complete."""
        done = []
        shards = batch.column("shard")
        for index in pc.unique(shards).to_pylist():
            if index in self._done or index in self.failed:
                continue
            part = batch.filter(pc.equal(shards, index))
            if pc.any(pc.less(part.column("row"), 0)).as_py():
                failed = part.filter(pc.less(part.column("row"), 0))
                self.failed[index] = failed.column("error")[0].as_py() or "read failed"
                self._pending.pop(index, None)
                self._rows.pop(index, None)
                self._expected.pop(index, None)
                continue
            self._pending.setdefault(index, []).append(part)
            self._rows.setdefault(index, set()).update(part.column("row").to_pylist())
            # 0 while a streamed shard's row count is not known yet (see read.read_shards).
            expected = max(self._expected.get(index, 0), pc.max(part.column("shard_rows")).as_py())
            self._expected[index] = expected
            if expected and len(self._rows[index]) >= expected:
                done.append((index, self._finish(index)))
                self._done.add(index)
        return done

    def _finish(self, index: int) -> pa.Table:
        table = pa.concat_tables(self._pending.pop(index))
        del self._rows[index], self._expected[index]
        table = table.sort_by("row")
        # A retried task may repeat rows; keep the first of each.
        rows = table.column("row").to_numpy()
        if len(rows) > 1 and (rows[1:] == rows[:-1]).any():
            keep = [0] + [i for i in range(1, len(rows)) if rows[i] != rows[i - 1]]
            table = table.take(keep)
        return self.to_output(table)

    def to_output(self, table: pa.Table) -> pa.Table:
        """Result rows (with routing columns) -> the output schema."""
        table = table.rename_columns(
            [self.schema.names[0] if n == "key" else n for n in table.column_names]
        )
        model = pa.array([self.model_name] * table.num_rows, pa.string())
        table = table.append_column("model", model)
        return table.select(self.schema.names).cast(self.schema)
