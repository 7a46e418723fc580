"""`raycls report`: one static HTML page about a `raycls classify` OUT_DIR, local or remote.

Reads the small columns (label, score, status, error) of every part file, then the key and
caption of the sampled rows only, and the images of those rows only; so a million-row output
costs tens of MB of memory (bench/bench_report.py measures time and peak memory).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from raycls.bulk.output import MANIFEST, PART
from raycls.inspect import page
from raycls.inspect.fetch import fetch_images
from raycls.io.storage import check_output_file, get_filesystem, join, write_bytes

REPORT_FILE = "report.html"
SCORE_BINS = 20
ERROR_EXAMPLES = 3
SCAN_COLUMNS = ["label", "score", "status", "error"]


@dataclass
class Scan:
    """What the report needs from every row, as compact arrays (ok rows only)."""

    labels: list[str] = field(default_factory=list)
    codes: list[np.ndarray] = field(default_factory=list)  # label index per ok row
    scores: list[np.ndarray] = field(default_factory=list)
    files: list[np.ndarray] = field(default_factory=list)  # part file index per ok row
    rows: list[np.ndarray] = field(default_factory=list)  # row within that file
    errors: dict[str, list] = field(default_factory=dict)  # pattern -> [count, message, refs]
    total: int = 0


def _parts(fs: pafs.FileSystem, base: str) -> list[str]:
    infos = fs.get_file_info(pafs.FileSelector(base, allow_not_found=True))
    return sorted(i.path for i in infos if i.is_file and PART.match(i.base_name))


def _pattern(message: str) -> str:
    """An error message with its numbers and quoted names blanked, to group alike errors."""
    return re.sub(r"\d+", "N", re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", message))


def _scan_file(scan: Scan, index: int, table: pa.Table) -> None:
    scan.total += table.num_rows
    ok = pc.equal(table.column("status"), "ok")
    good = table.filter(ok)
    labels = good.column("label").combine_chunks().dictionary_encode()
    known = {name: i for i, name in enumerate(scan.labels)}
    for name in labels.dictionary.to_pylist():
        known.setdefault(name, len(known))
    scan.labels = list(known)
    remap = np.array([known[n] for n in labels.dictionary.to_pylist()], dtype=np.int32)
    scan.codes.append(remap[labels.indices.to_numpy(zero_copy_only=False)])
    scan.scores.append(good.column("score").to_numpy().astype(np.float32))
    positions = np.flatnonzero(ok.to_numpy(zero_copy_only=False))
    scan.files.append(np.full(len(positions), index, dtype=np.int32))
    scan.rows.append(positions.astype(np.int32))
    bad = np.flatnonzero(~ok.to_numpy(zero_copy_only=False))
    if len(bad):
        messages = table.column("error").take(pa.array(bad)).to_pylist()
        for row, message in zip(bad.tolist(), messages, strict=True):
            entry = scan.errors.setdefault(_pattern(message or "no message"), [0, message, []])
            entry[0] += 1
            if len(entry[2]) < ERROR_EXAMPLES:
                entry[2].append((index, row))


def scan_output(fs: pafs.FileSystem, parts: list[str]) -> Scan:
    """Read label, score, status and error of every part file."""
    scan = Scan()
    for index, path in enumerate(parts):
        _scan_file(scan, index, pq.read_table(path, columns=SCAN_COLUMNS, filesystem=fs))
    return scan


def _sample(order: np.ndarray, ends: np.ndarray, n: int) -> dict[int, tuple]:
    """Per label: positions of the n highest and the n lowest scores (no row twice), from
    `order` (rows sorted by label, then score) and `ends` (where each label's rows end)."""
    out = {}
    for label in range(len(ends)):
        block = order[(ends[label - 1] if label else 0) : ends[label]]
        high = block[::-1][:n]
        out[label] = (high, block[: min(n, len(block) - len(high))])
    return out


def _quantiles(scores: np.ndarray, order: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """[labels, 3]: each label's 10th, 50th and 90th percentile score (NaN without rows)."""
    out = np.full((len(ends), 3), np.nan)
    for label in range(len(ends)):
        block = scores[order[(ends[label - 1] if label else 0) : ends[label]]]
        if len(block):
            out[label] = block[((len(block) - 1) * np.array([0.1, 0.5, 0.9])).round().astype(int)]
    return out


def _read_rows(fs, parts, refs: list[tuple[int, int]], key: str) -> dict[tuple, dict]:
    """key, caption and top-k of the rows at (file, row), one read per file that has any."""
    out: dict[tuple, dict] = {}
    by_file: dict[int, list[int]] = {}
    for f, r in refs:
        by_file.setdefault(f, []).append(r)
    for f, rows in by_file.items():
        with pq.ParquetFile(parts[f], filesystem=fs) as pf:
            cols = [c for c in (key, "caption", "score", "label") if c in pf.schema_arrow.names]
            table = pf.read(columns=cols).take(pa.array(rows))
        for r, values in zip(rows, table.to_pylist(), strict=True):
            out[(f, r)] = {**values, "key": values.get(key)}
    return out


def write_report(out_dir: str, page_path: str | None = None, thumbnails: int = 6) -> dict:
    """Write the HTML report of classify output `out_dir`; returns what it counted."""
    started = time.perf_counter()
    if page_path is not None:
        check_output_file(page_path, (".html", ".htm"))
    fs, base = get_filesystem(out_dir)
    base = base.rstrip("/")
    parts = _parts(fs, base)
    if not parts:
        raise FileNotFoundError(
            f"{out_dir!r} holds no part-NNNNNN.parquet files; give the --out folder of a "
            "`raycls classify` run"
        )
    manifest = _manifest(fs, base)
    key = pq.read_schema(parts[0], filesystem=fs).names[0]
    scan = scan_output(fs, parts)
    codes = np.concatenate(scan.codes) if scan.codes else np.zeros(0, np.int32)
    scores = np.concatenate(scan.scores) if scan.scores else np.zeros(0, np.float32)
    files, rows = np.concatenate(scan.files), np.concatenate(scan.rows)
    n_labels = len(scan.labels)
    order = np.lexsort((scores, codes))
    counts = np.bincount(codes, minlength=n_labels)
    ends = np.cumsum(counts)
    sample = _sample(order, ends, thumbnails) if thumbnails else {}
    refs = [(int(files[i]), int(rows[i])) for hi, lo in sample.values() for i in (*hi, *lo)]
    refs += [ref for entry in scan.errors.values() for ref in entry[2]]
    details = _read_rows(fs, parts, refs, key)
    image_column = (manifest.get("identity") or {}).get("image_column") or "image"
    images = fetch_images([d["key"] for d in details.values() if d["key"]], image_column)
    thumbs = {k: page.thumbnail(v) for k, v in images.items()}
    hist = np.bincount(
        codes * SCORE_BINS + np.clip((scores * SCORE_BINS).astype(np.int64), 0, SCORE_BINS - 1),
        minlength=n_labels * SCORE_BINS,
    ).reshape(n_labels, SCORE_BINS)
    context = {
        "labels": scan.labels,
        "counts": counts,
        "hist": hist,
        "sample": sample,
        "quantiles": _quantiles(scores, order, ends),
        "files": files,
        "rows": rows,
        "mean": np.bincount(codes, weights=scores, minlength=n_labels) / np.maximum(counts, 1),
        "details": details,
        "thumbs": thumbs,
        "errors": scan.errors,
        "key": key,
    }
    from raycls.inspect.report_page import render_report

    html = render_report(out_dir, manifest, scan.total, context)
    target = page_path or join(out_dir, REPORT_FILE)
    write_bytes(target, html.encode())
    return {
        "report": target,
        "rows": scan.total,
        "ok": int(len(codes)),
        "error": int(sum(e[0] for e in scan.errors.values())),
        "labels": n_labels,
        "thumbnails": sum(1 for t in thumbs.values() if t),
        "seconds": round(time.perf_counter() - started, 2),
    }


def _manifest(fs: pafs.FileSystem, base: str) -> dict[str, Any]:
    path = f"{base}/{MANIFEST}"
    if fs.get_file_info(path).type != pafs.FileType.File:
        return {}
    with fs.open_input_stream(path) as f:
        return json.loads(f.read())
