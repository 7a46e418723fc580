"""`raycls classify` at a million rows, and planning a million inputs.

    .venv/bin/python bench/bench_scale.py                       # 1,000,000 rows (up to ~20 min)
    .venv/bin/python bench/bench_scale.py --rows 100000 --plan-files 0 --plan-parquet 0

Input: `--rows` small images (32 px JPEG bytes; a few thousand distinct pictures repeated) in
Parquet files of row groups of 1,000, generated once under --workdir (outside git) and reused.
A tiny image-only model classifies them on a local Ray started beforehand (its start is timed
apart). While it runs, a thread samples every few seconds the rows committed (part files'
footers), the driver's RSS and the RSS of the whole process tree (Ray's processes included).
Afterwards: the part files' count and sizes, and DuckDB's `SELECT label, count(*)` over them,
which must add up to the input. `--plan-files N` and `--plan-parquet M` time `plan_shards` over
a folder tree of N empty image files and over M small Parquet files (made once).
Figures only, no assertions; the last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from raycls.config import ClassifyConfig

LABELS = ["circle", "square", "triangle", "star", "cross", "ring", "bar", "dot"]
ROW_GROUP = 1000


def make_input(folder: Path, rows: int, per_file: int = 100_000) -> str:
    """Parquet files of (id, image) with 32 px JPEGs, row groups of ROW_GROUP rows; reused."""
    done = folder / "_complete"
    if done.exists():
        return str(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    distinct = []
    for _ in range(4096):
        small = Image.fromarray(rng.integers(0, 255, (4, 4, 3), dtype=np.uint8))
        buf = io.BytesIO()
        small.resize((32, 32), Image.Resampling.BICUBIC).save(buf, format="JPEG", quality=90)
        distinct.append(buf.getvalue())
    for f, start in enumerate(range(0, rows, per_file)):
        n = min(per_file, rows - start)
        ids = [f"img{i:07d}" for i in range(start, start + n)]
        images = [distinct[i % len(distinct)] for i in range(start, start + n)]
        table = pa.table({"id": ids, "image": pa.array(images, pa.binary())})
        pq.write_table(table, folder / f"input-{f:04d}.parquet", row_group_size=ROW_GROUP)
        print(f"  generated {start + n} rows", flush=True)
    done.touch()
    return str(folder)


def make_model(folder: Path) -> str:
    import torch

    from raycls.config import ModelConfig
    from raycls.models import build_model, save_model

    if not (folder / "config.json").exists():
        torch.manual_seed(0)
        config = ModelConfig(backbone="shufflenet_v2_x0_5", text_encoder=None,
                             fusion="image_only", image_size=32)  # fmt: skip
        save_model(build_model(config, LABELS), folder)
    return str(folder)


class Sampler:
    """Rows committed and memory, every `every_s` seconds, on a thread."""

    def __init__(self, out: Path, every_s: float) -> None:
        self.out, self.every_s = out, every_s
        self.samples: list[dict] = []
        self._rows: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self.started = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self._sample()

    def _sample(self) -> None:
        for path in self.out.glob("part-*.parquet"):
            if path.name not in self._rows:
                self._rows[path.name] = pq.ParquetFile(path).metadata.num_rows
        me = psutil.Process()
        total = 0
        for proc in [me, *me.children(recursive=True)]:
            try:
                total += proc.memory_info().rss
            except psutil.Error:
                pass  # exited meanwhile
        self.samples.append({
            "s": round(time.perf_counter() - self.started, 1), "rows": sum(self._rows.values()),
            "driver_rss_mib": me.memory_info().rss // 2**20, "all_rss_mib": total // 2**20,
        })  # fmt: skip


def bench_classify(source: str, model_dir: str, out: Path, args: argparse.Namespace) -> dict:
    from raycls.bulk.pipeline import classify
    from raycls.cluster.runtime import init_ray
    from raycls.config import ClassifyConfig

    started = time.perf_counter()
    init_ray(None)
    ray_s = time.perf_counter() - started
    config = ClassifyConfig(shard_size=args.shard_size, batch_size=args.batch_size)
    with Sampler(out, args.sample_every) as sampler:
        summary = classify(source, model_dir, str(out), config, overwrite=True)
    samples = sampler.samples
    print(f"\n{'s':>7} {'rows':>9} {'rows/s':>8} {'driver MiB':>11} {'all MiB':>8}")
    previous = {"s": 0.0, "rows": 0}
    rates = []
    for s in samples:
        rate = (s["rows"] - previous["rows"]) / max(s["s"] - previous["s"], 1e-9)
        if s["rows"] > previous["rows"]:
            rates.append(rate)
        print(f"{s['s']:7.1f} {s['rows']:9d} {rate:8.0f} {s['driver_rss_mib']:11d} "
              f"{s['all_rss_mib']:8d}")  # fmt: skip
        previous = s
    early = [s for s in samples if s["rows"] <= min(100_000, args.rows // 10)] or samples[:1]
    half = len(rates) // 2
    return {
        "ray_start_s": round(ray_s, 1),
        "summary": summary,
        "rows_per_s": summary["images_per_s"],
        # Commits come a shard at a time, so single intervals jump; halves show a trend.
        "rows_per_s_first_half": round(statistics.mean(rates[:half]), 1) if half else None,
        "rows_per_s_second_half": round(statistics.mean(rates[half:]), 1) if half else None,
        "peak_driver_rss_mib_early": max(s["driver_rss_mib"] for s in early),
        "peak_driver_rss_mib": max(s["driver_rss_mib"] for s in samples),
        "peak_all_rss_mib_early": max(s["all_rss_mib"] for s in early),
        "peak_all_rss_mib": max(s["all_rss_mib"] for s in samples),
        "samples": samples,
    }


def check_output(out: Path, rows: int) -> dict:
    import duckdb

    parts = sorted(out.glob("part-*.parquet"))
    sizes = [p.stat().st_size / 2**20 for p in parts]
    meta = [pq.ParquetFile(p).metadata for p in parts]
    glob = str(out / "part-*.parquet")
    counts = duckdb.sql(
        f"SELECT label, count(*) AS n FROM read_parquet('{glob}') GROUP BY label ORDER BY label"
    ).fetchall()
    distinct = duckdb.sql(f"SELECT count(DISTINCT id) FROM read_parquet('{glob}')").fetchall()[0][0]
    total = sum(n for _, n in counts)
    print(
        f"\n{len(parts)} part files, {min(sizes):.2f}-{max(sizes):.2f} MiB "
        f"(median {statistics.median(sizes):.2f}), row groups per file "
        f"{min(m.num_row_groups for m in meta)}-{max(m.num_row_groups for m in meta)}"
    )
    print(f"DuckDB: SELECT label, count(*): {dict(counts)}; sum {total}, distinct ids {distinct}, "
          f"input {rows}: {'equal' if total == distinct == rows else 'NOT EQUAL'}")  # fmt: skip
    return {
        "part_files": len(parts),
        "part_mib_min": round(min(sizes), 2),
        "part_mib_median": round(statistics.median(sizes), 2),
        "part_mib_max": round(max(sizes), 2),
        "rows_per_part_median": statistics.median(m.num_rows for m in meta),
        "row_groups_per_part_max": max(m.num_row_groups for m in meta),
        "duckdb_label_counts": dict(counts),
        "duckdb_total": total,
        "duckdb_distinct_ids": distinct,
        "duckdb_equals_input": total == distinct == rows,
    }


def bench_planning(work: Path, files: int, parquet: int, shard_size: int) -> dict:
    """Seconds `plan_shards` takes over a tree of `files` image files and `parquet` files."""
    from raycls.io.inputs import plan_shards

    figures = {}
    if files:
        tree = work / f"tree-{files}"
        if not (tree / "_complete").exists():
            for i in range(files):
                if i % 1000 == 0:
                    (tree / f"{i // 1000:05d}").mkdir(parents=True, exist_ok=True)
                (tree / f"{i // 1000:05d}" / f"{i:07d}.jpg").touch()
            (tree / "_complete").touch()
        started = time.perf_counter()
        shards = plan_shards(str(tree), shard_size)
        figures["plan_files_s"] = round(time.perf_counter() - started, 2)
        print(f"planning {files} image files: {figures['plan_files_s']} s, {len(shards)} shards")
    if parquet:
        folder = work / f"parquet-{parquet}"
        if not (folder / "_complete").exists():
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(parquet):
                table = pa.table({"id": [f"{i}-{j}" for j in range(10)], "image": [b"x"] * 10})
                pq.write_table(table, folder / f"in-{i:05d}.parquet")
            (folder / "_complete").touch()
        started = time.perf_counter()
        shards = plan_shards(str(folder), shard_size)
        figures["plan_parquet_s"] = round(time.perf_counter() - started, 2)
        print(f"planning {parquet} Parquet files: {figures['plan_parquet_s']} s, "
              f"{len(shards)} shards")  # fmt: skip
    return figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--shard-size", type=int, default=ClassifyConfig.shard_size,
                        help="rows per part file (default: classify's)")  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--sample-every", type=float, default=5.0, help="seconds")
    parser.add_argument("--plan-files", type=int, default=1_000_000)
    parser.add_argument("--plan-parquet", type=int, default=10_000)
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "raycls-scale"))
    args = parser.parse_args(argv)
    work = Path(args.workdir)
    figures: dict = {"rows": args.rows, "cpus": os.cpu_count(), "load_start": os.getloadavg()}
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    figures.update(bench_planning(work, args.plan_files, args.plan_parquet, 1000))
    if args.rows:
        source = make_input(work / f"input-{args.rows}", args.rows)
        model_dir = make_model(work / "model-32")
        out = work / "out"
        figures.update(bench_classify(source, model_dir, out, args))
        figures.update(check_output(out, args.rows))
        print(f"rows/s {figures['rows_per_s']} (halves {figures['rows_per_s_first_half']}, "
              f"{figures['rows_per_s_second_half']}); peak RSS driver "
              f"{figures['peak_driver_rss_mib_early']} -> {figures['peak_driver_rss_mib']} MiB, "
              f"all {figures['peak_all_rss_mib_early']} -> {figures['peak_all_rss_mib']} MiB "
              f"(at the first 10% of rows -> whole run)")  # fmt: skip
    figures["load_end"] = os.getloadavg()
    print(json.dumps(figures, default=str))


if __name__ == "__main__":
    main()
