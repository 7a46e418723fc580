"""`raycls report` on a generated 1,000,000-row classify output: time and peak memory, against
pandas reading the same output whole; then the page in headless Chromium (sections, broken
images, a screenshot) when Chromium is installed.

    flock /tmp/raycls-bench.lock python bench/bench_report.py --screenshot /tmp/report.png

The output has `--files` part files of rows/files rows (classify's default shard size is 1000),
10 labels with Beta-distributed scores, 1% error rows of four kinds and 30% captions. Images
exist only for the rows the report samples (JPEGs from --images, CIFAR-10 by default), so the
galleries are real while the data set stays small. Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from raycls.bulk.output import OutputDir, result_schema

ERRORS = (
    "not an image: cannot identify format ({} bytes; supported: JPEG, PNG)",
    "empty file (0 bytes)",
    "truncated or corrupt JPEG image: OSError: image file is truncated ({} bytes not processed)",
    "image is {}x9000 = many pixels, over the limit of 89,478,485",
)
CIFAR = "/work/shared/data/cifar10-dev/test"


def generate(out: Path, rows: int, files: int, thumbnails: int, images: str, seed: int = 0):
    """Write the output folder and the images of the rows the report will sample."""
    rng = np.random.default_rng(seed)
    labels = sorted(p.name for p in Path(images).iterdir() if p.is_dir())
    code = rng.integers(0, len(labels), rows)
    score = rng.beta(5, 1.5, rows).astype(np.float32)
    error = rng.random(rows) < 0.01
    kind = rng.integers(0, len(ERRORS), rows)
    caption = rng.random(rows) < 0.3
    pics = out / "images"
    keys = np.array([f"{pics}/{i:07d}.jpg" for i in range(rows)], dtype=object)
    ok = np.flatnonzero(~error)
    order = ok[np.lexsort((score[ok], code[ok]))]
    sampled = []
    for label in range(len(labels)):
        block = order[code[order] == label]
        sampled += [*block[:thumbnails], *block[-thumbnails:]]
    sources = {lab: sorted((Path(images) / lab).glob("*"))[:50] for lab in labels}
    pics.mkdir(parents=True)
    for i in sampled:
        src = sources[labels[code[i]]]
        (pics / f"{i:07d}.jpg").write_bytes(src[i % len(src)].read_bytes())
    target = OutputDir(str(out / "predictions"))
    manifest = {
        "identity": {"input": str(pics), "image_column": "image"},
        "complete": True,
        "model_dir": "bench-model",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "summary": {
            "model": "bench-model",
            "seconds": 3600.0,
            "images_per_s": round(rows / 3600, 1),
        },
    }
    target.prepare(manifest, overwrite=True)
    target.write_manifest(manifest)
    schema = result_schema("path")
    per = rows // files
    for f in range(files):
        s = slice(f * per, rows if f == files - 1 else (f + 1) * per)
        err, lab = error[s], np.array(labels, dtype=object)[code[s]]
        messages = [
            ERRORS[k].format(n) if e else None
            for k, n, e in zip(kind[s], range(len(err)), err, strict=True)
        ]
        table = pa.table(
            {
                "path": keys[s].tolist(),
                "label": [None if e else x for x, e in zip(lab, err, strict=True)],
                "score": pa.array(np.where(err, np.nan, score[s]), pa.float32(), mask=err),
                "top_k_labels": [[x] for x in lab],
                "top_k_scores": pa.array([[float(x)] for x in score[s]], pa.list_(pa.float32())),
                "caption": [
                    f"a photo of a {x}" if c else None for x, c in zip(lab, caption[s], strict=True)
                ],
                "status": ["error" if e else "ok" for e in err],
                "error": messages,
                "model": ["bench-model"] * len(err),
            },
            schema=schema,
        )
        target.write_shard(f, table)
    return out / "predictions", len(sampled)


def measure(code: str) -> dict:
    """Wall time of `python -c code` in a child process, and its peak RSS as it reports it."""
    peak = (
        "import resource, sys; print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "
        "file=sys.stderr)"
    )
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", f"{code}\n{peak}"], capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    peak_kb = int(done.stderr.strip().splitlines()[-1])
    return {
        "seconds": round(seconds, 2),
        "peak_mb": round(peak_kb / 1024, 1),
        "stdout": done.stdout,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--thumbnails", type=int, default=6)
    parser.add_argument("--images", default=CIFAR, help="ImageFolder of JPEGs for thumbnails")
    parser.add_argument("--screenshot", default=None, help="PNG path for the Chromium shot")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-report-") as tmp:
        started = time.perf_counter()
        out, n_images = generate(Path(tmp), args.rows, args.files, args.thumbnails, args.images)
        generate_s = time.perf_counter() - started
        page = Path(tmp) / "report.html"
        report = measure(
            "import json; from raycls.inspect.report import write_report; "
            f"print(json.dumps(write_report({str(out)!r}, {str(page)!r}, {args.thumbnails})))"
        )
        summary = json.loads(report.pop("stdout"))
        pandas = measure(f"import pandas as pd; df = pd.read_parquet({str(out)!r}); print(len(df))")
        pandas.pop("stdout")
        check = None
        if args.screenshot:
            from raycls.inspect.browser import check_page
            from raycls.inspect.report_page import SECTIONS

            check = check_page(page, SECTIONS, args.screenshot, height=3000)
        size_mb = page.stat().st_size / 2**20
    load = os.getloadavg()
    print(f"{'job':<34}{'seconds':>9}{'peak MB':>9}")
    print(f"{'raycls report':<34}{report['seconds']:>9}{report['peak_mb']:>9}")
    print(f"{'pandas.read_parquet (everything)':<34}{pandas['seconds']:>9}{pandas['peak_mb']:>9}")
    print(
        f"rows {summary['rows']:,} in {args.files} files, {summary['thumbnails']} thumbnails, "
        f"page {size_mb:.1f} MB; generating took {generate_s:.0f} s; load {load}"
    )
    if check:
        print(
            f"chromium: {check['images']} images, {check['broken_images']} broken, missing "
            f"sections {check['missing_sections']}, screenshot {check['screenshot']}"
        )
    figures = {
        "rows": summary["rows"],
        "files": args.files,
        "report_s": report["seconds"],
        "report_peak_mb": report["peak_mb"],
        "pandas_s": pandas["seconds"],
        "pandas_peak_mb": pandas["peak_mb"],
        "time_ratio_report_vs_pandas": round(report["seconds"] / pandas["seconds"], 3),
        "memory_ratio_report_vs_pandas": round(report["peak_mb"] / pandas["peak_mb"], 3),
        "thumbnails": summary["thumbnails"],
        "page_mb": round(size_mb, 2),
        "images_written": n_images,
        "loadavg": list(load),
        "chromium": None
        if check is None
        else {k: check[k] for k in ("images", "broken_images", "missing_sections")},
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
