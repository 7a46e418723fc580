"""Throughput of `raycls classify` against a plain PyTorch script and the model alone.

    .venv/bin/python bench/bench_classify.py --images 20000 --e2e     # the issue-14 comparison
    .venv/bin/python bench/bench_classify.py --images 2000            # in-process phases
    .venv/bin/python bench/bench_classify.py --driver-rows 1000000 --skip-compute --skip-raycls

One run on generated 128 px JPEGs and one model prints images/s for (1) the forward pass alone
on pre-decoded tensors (the compute bound), (2) that forward pass after the rewrites raycls's
actors apply (`optimize_for_inference`: BatchNorm folded, channels-last), the bound raycls
itself works against, and that bound with each image's decode added (as the plain loop does
it), (3) a DataLoader loop in this process, (4) `raycls.classify` on a local Ray started
beforehand; the ratios, and the peak memory of each phase (RSS of this process tree).

`--e2e` times both contenders as whole processes (imports, Ray start and model load included):
`python -m raycls classify` with default settings, and bench/plain_classify.py; it reports
end-to-end and steady rates (rows after the first results / seconds after them), time to first
results, and where raycls's CPU time went (driver, actors, Ray's other processes).
`--driver-rows N` measures the rows/s the driver commits alone: result blocks of a fake model
(no images, no forward) from Ray Data tasks into Parquet part files, as `raycls classify` does.
Figures only, no assertions; the last line is one JSON object with every figure and ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import torch
from PIL import Image

from raycls.config import ClassifyConfig

LABELS = ["circle", "square", "triangle", "star", "cross", "ring", "bar", "dot"]


class MemorySampler:
    """Peak RSS summed over this process tree, sampled on a thread."""

    def __init__(self, every_s: float = 0.2) -> None:
        self.every_s = every_s
        self.peak = 0
        self._stop = threading.Event()

    def _sample(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for proc in [me, *me.children(recursive=True)]:
                try:
                    total += proc.memory_info().rss
                except psutil.Error:
                    pass  # a worker that just exited
            self.peak = max(self.peak, total)
            self._stop.wait(self.every_s)

    @contextmanager
    def measure(self):
        self.peak, self._stop = 0, threading.Event()
        thread = threading.Thread(target=self._sample, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join()


def make_jpegs(folder: Path, n: int, size: int) -> list[Path]:
    """Smooth random pictures (like photos, unlike noise, they compress): reused across runs."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{i // 1000:03d}" / f"img{i:06d}.jpg" for i in range(n)]
    rng = np.random.default_rng(0)
    for i, path in enumerate(paths):
        if path.exists():
            continue
        path.parent.mkdir(exist_ok=True)
        small = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC)
        img.save(path, quality=90)
        if i and i % 5000 == 0:
            print(f"  generated {i} images", flush=True)
    return paths


def make_model(folder: Path, image_size: int) -> str:
    from raycls.config import ModelConfig
    from raycls.models import build_model, save_model

    if not (folder / "config.json").exists():
        torch.manual_seed(0)
        config = ModelConfig(
            backbone="resnet18", text_encoder=None, fusion="image_only", image_size=image_size
        )
        save_model(build_model(config, LABELS), folder)
    return str(folder)


def _forward(
    model_dir: str,
    paths: list[Path],
    batch_size: int,
    threads: int,
    optimized: bool,
    barrier=None,
):
    """Seconds for the forward pass over `paths`, decoded beforehand (untimed)."""
    from raycls.io.images import decode_image, preprocess
    from raycls.models import load_model, optimize_for_inference

    torch.set_num_threads(threads)
    model = load_model(model_dir)
    if optimized:
        model = optimize_for_inference(model)
    size = model.config.image_size
    pixels = torch.from_numpy(
        np.stack([preprocess(decode_image(p.read_bytes()), size) for p in paths])
    )
    with torch.inference_mode():
        model(pixels[:batch_size])  # warm-up
        if barrier is not None:
            barrier.wait()
        started = time.perf_counter()
        for i in range(0, len(pixels), batch_size):
            model(pixels[i : i + batch_size]).softmax(-1).topk(5)
    return time.perf_counter() - started


def _forward_worker(args: tuple, barrier, results) -> None:
    results.put(_forward(*args, barrier=barrier))


def bench_compute(
    model_dir: str, paths: list[Path], batch_size: int, max_images: int, optimized: bool = False
) -> tuple[float, float]:
    """Forward alone on pre-decoded tensors: one process on all cores, and one 1-thread process
    per core (what the pipeline's actors do); the better one is the compute bound."""
    import multiprocessing as mp

    cpus = os.cpu_count() or 1
    subset = paths[: min(len(paths), max_images)]
    what = "optimized forward" if optimized else "forward alone"
    one = len(subset) / _forward(model_dir, subset, batch_size, cpus, optimized)
    print(f"  {what}, 1 process x {cpus} threads: {one:.1f} images/s", flush=True)
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(cpus), ctx.Queue()
    parts = [subset[i::cpus] for i in range(cpus)]
    procs = [
        ctx.Process(
            target=_forward_worker,
            args=((model_dir, p, batch_size, 1, optimized), barrier, results),
        )
        for p in parts
    ]
    for proc in procs:
        proc.start()
    elapsed = max(results.get() for _ in procs)
    for proc in procs:
        proc.join()
    per_core = len(subset) / elapsed
    print(f"  {what}, {cpus} processes x 1 thread: {per_core:.1f} images/s", flush=True)
    return one, per_core


class JpegDataset(torch.utils.data.Dataset):
    """What a user writes: PIL decode, resize, centre crop, normalise."""

    def __init__(self, paths: list[Path], size: int) -> None:
        from torchvision import transforms

        self.paths = paths
        self.transform = transforms.Compose(
            [
                transforms.Resize(size),
                transforms.CenterCrop(size),
                transforms.ToTensor(),
                transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
            ]
        )

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        with Image.open(self.paths[i]) as img:
            return self.transform(img.convert("RGB"))


def bench_dataloader(model_dir: str, paths: list[Path], batch_size: int, workers: int) -> float:
    from raycls.models import load_model

    torch.set_num_threads(os.cpu_count() or 1)
    model = load_model(model_dir)
    loader = torch.utils.data.DataLoader(
        JpegDataset(paths, model.config.image_size), batch_size=batch_size, num_workers=workers
    )
    results = []
    started = time.perf_counter()
    with torch.inference_mode():
        for pixels in loader:
            top = model(pixels).softmax(-1).topk(5)
            results.extend(zip(top.indices.tolist(), top.values.tolist(), strict=True))
    elapsed = time.perf_counter() - started
    assert len(results) == len(paths)
    return len(paths) / elapsed


def bench_raycls(model_dir: str, folder: Path, out: Path, args: argparse.Namespace) -> dict:
    from raycls.bulk.dataset import PIECE_BATCHES
    from raycls.bulk.pipeline import classify

    config = ClassifyConfig(
        batch_size=args.batch_size,
        classify_actors=args.classify_actors,
        cpus_per_classify_actor=args.cpus_per_actor,
        shard_size=args.shard_size,
    )
    print(f"  raycls config: {config}", flush=True)
    summary = classify(str(folder), model_dir, str(out), config, overwrite=True)
    assert summary["total_rows"] == summary["rows"] == args.images, summary
    print(
        f"  raycls: {summary['images_per_s']:.1f} images/s in {summary['seconds']:.1f} s; the "
        f"first results came after {summary['first_rows_s']:.1f} s (Ray Data and actor "
        f"start-up, imports, model load, then each actor's first read task of "
        f"{PIECE_BATCHES} x {args.batch_size} images)",
        flush=True,
    )
    return summary


def _best_of(repeat: int, sampler: MemorySampler, run) -> tuple[float, int]:
    """Highest images/s of `repeat` runs (the least disturbed by other load), and peak RSS."""
    rates, peak = [], 0
    for _ in range(repeat):
        with sampler.measure():
            rates.append(run())
        peak = max(peak, sampler.peak)
    if repeat > 1:
        print(f"  runs: {', '.join(f'{r:.1f}' for r in rates)} images/s")
    return max(rates), peak


def bench_decode(paths: list[Path], size: int, max_images: int) -> float:
    """Images/s of raycls's decode (PIL decode, resize, normalise) on one core, times cores."""
    from raycls.io.images import decode_image, preprocess

    subset = paths[: min(len(paths), max_images)]
    started = time.perf_counter()
    for p in subset:
        preprocess(decode_image(p.read_bytes()), size)
    rate = len(subset) / (time.perf_counter() - started) * (os.cpu_count() or 1)
    print(f"  decode alone: {rate:.1f} images/s (one core's rate x {os.cpu_count()})", flush=True)
    return rate


def _kind(proc: psutil.Process, root: int) -> str:
    if proc.pid == root:
        return "driver"
    name = " ".join(proc.cmdline()[:1])
    if "MapWorker" in name:
        return "actors"
    if name.startswith("ray::"):
        return "other Ray workers"
    if any(k in name for k in ("raylet", "gcs_server", "dashboard", "log_monitor", "monitor")):
        return "Ray services"
    return "other"


def run_process(command: list[str], env: dict[str, str]) -> tuple[float, str, dict, int]:
    """Run `command`; return its wall seconds, stdout, CPU seconds by process kind (the tree
    sampled every 0.5 s) and the peak RSS of the tree."""
    started = time.time()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True,
                            env={**env, "BENCH_STARTED": repr(started)})  # fmt: skip
    cpu: dict[int, tuple[str, float]] = {}
    peak = 0
    root = psutil.Process(proc.pid)
    while proc.poll() is None:
        rss = 0
        try:
            tree = [root, *root.children(recursive=True)]
        except psutil.Error:
            break
        for p in tree:
            try:
                times = p.cpu_times()
                cpu[p.pid] = (_kind(p, proc.pid), times.user + times.system)
                rss += p.memory_info().rss
            except psutil.Error:
                pass  # exited between listing and reading
        peak = max(peak, rss)
        time.sleep(0.5)
    out, _ = proc.communicate()
    seconds = time.time() - started
    if proc.returncode:
        raise RuntimeError(f"{command[:4]} failed with exit code {proc.returncode}")
    kinds: dict[str, float] = {}
    for kind, secs in cpu.values():
        kinds[kind] = kinds.get(kind, 0.0) + secs
    return seconds, out, kinds, peak


def bench_e2e(model_dir: str, folder: Path, work: Path, n: int, batch_size: int) -> dict:
    """`python -m raycls classify` (defaults) and the plain script, each a whole process."""
    env = {**os.environ, "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    here = Path(__file__).resolve().parent
    command = [sys.executable, str(here / "plain_classify.py"), str(folder), model_dir,
               str(work / "plain.parquet"), "--batch-size", str(batch_size)]  # fmt: skip
    seconds, out, _, plain_peak = run_process(command, env)
    plain = json.loads(out.strip().splitlines()[-1])
    plain_steady = plain["rows"] / (plain["seconds"] - plain["first_rows_s"])
    print(
        f"  plain script: {seconds:.1f} s whole process, first results after "
        f"{plain['first_rows_s']:.1f} s, steady {plain_steady:.1f} images/s",
        flush=True,
    )
    command = [sys.executable, "-m", "raycls", "classify", str(folder), "--model", model_dir,
               "--out", str(work / "out-e2e"), "--overwrite"]  # fmt: skip
    ray_seconds, out, cpu, ray_peak = run_process(command, env)
    summary = json.JSONDecoder().raw_decode(out[out.index("{") :])[0]
    assert summary["rows"] == n, summary
    # From the process start: the part of the run before classify() began (imports) added.
    first = ray_seconds - (summary["seconds"] - summary["first_rows_s"])
    steady = summary["rows"] / (summary["seconds"] - summary["first_rows_s"])
    print(f"  raycls classify: {ray_seconds:.1f} s whole process, first results after "
          f"{first:.1f} s ({summary['first_rows_s']:.1f} s in classify()), steady "
          f"{steady:.1f} images/s, actors {summary['actors']}", flush=True)  # fmt: skip
    busy = sum(cpu.values())
    print(
        "  raycls CPU seconds by process: "
        + ", ".join(
            f"{k} {v:.0f} ({v / busy:.0%})" for k, v in sorted(cpu.items(), key=lambda kv: -kv[1])
        )
    )
    return {
        "plain_seconds": round(seconds, 2),
        "plain_first_rows_s": plain["first_rows_s"],
        "plain_images_per_s": round(n / seconds, 1),
        "plain_steady_images_per_s": round(plain_steady, 1),
        "plain_peak_rss_gib": round(plain_peak / 2**30, 2),
        "raycls_seconds": round(ray_seconds, 2),
        "raycls_first_rows_s": round(first, 2),
        "raycls_first_rows_s_in_classify": summary["first_rows_s"],
        "raycls_images_per_s": round(n / ray_seconds, 1),
        "raycls_steady_images_per_s": round(steady, 1),
        "raycls_peak_rss_gib": round(ray_peak / 2**30, 2),
        "raycls_actors": summary["actors"],
        "raycls_cpu_seconds": {k: round(v, 1) for k, v in cpu.items()},
        "raycls_cpu_share_of_machine": round(busy / (ray_seconds * (os.cpu_count() or 1)), 3),
        "e2e_ratio": round(seconds / ray_seconds, 3),
        "steady_ratio": round(steady / plain_steady, 3),
    }


def _fake_results(batch: dict, rows_per_shard: int, block_rows: int) -> Iterator[pa.Table]:
    """A fake model's result blocks for the shards in `batch`: every column classify sends."""
    for index in batch["id"]:
        for start in range(0, rows_per_shard, block_rows):
            n = min(block_rows, rows_per_shard - start)
            rows = np.arange(start, start + n, dtype=np.int32)
            yield pa.table({
                "key": pa.array([f"/data/{index:06d}/img{r:06d}.jpg" for r in rows]),
                "shard": pa.array(np.full(n, index, np.int32)),
                "shard_rows": pa.array(np.full(n, rows_per_shard, np.int32)),
                "row": pa.array(rows),
                "label": pa.array(["circle"] * n), "score": pa.array(np.full(n, 0.5, np.float32)),
                "top_k_labels": pa.array([LABELS[:5]] * n, pa.list_(pa.string())),
                "top_k_scores": pa.array([[0.5, 0.2, 0.1, 0.1, 0.1]] * n, pa.list_(pa.float32())),
                "caption": pa.nulls(n, pa.string()), "status": pa.array(["ok"] * n),
                "error": pa.nulls(n, pa.string()),
            })  # fmt: skip


def bench_driver(rows: int, shard_size: int, block_rows: int, out: Path) -> float:
    """Rows/s the driver commits alone: fake result blocks through `commit_results`."""
    import ray.data

    from raycls.bulk.commit import commit_results
    from raycls.bulk.output import OutputDir
    from raycls.io.shards import Shard

    n_shards = rows // shard_size
    shards = [Shard(i, "files", (f"/data/{i:06d}",)) for i in range(n_shards)]
    ds = ray.data.range(n_shards, override_num_blocks=n_shards).map_batches(
        _fake_results, batch_size=1, batch_format="numpy",
        fn_kwargs={"rows_per_shard": shard_size, "block_rows": block_rows})  # fmt: skip
    output = OutputDir(str(out))
    output.prepare({"format": 1, "identity": {"bench": "driver"}}, overwrite=True)
    started = time.perf_counter()
    batches = ds.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=0)
    result = commit_results(batches, shards, output, "path", "fake")
    rate = sum(result["counts"].values()) / (time.perf_counter() - started)
    print(f"  driver commit: {rate:.0f} rows/s ({n_shards} part files, blocks of {block_rows} "
          f"rows, Ray Data tasks on this machine making them meanwhile)", flush=True)  # fmt: skip
    return rate


def main(argv: list[str] | None = None) -> None:
    cpus = os.cpu_count() or 1
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--image-px", type=int, default=128, help="side of the generated JPEGs")
    parser.add_argument("--model-size", type=int, default=128, help="model input side")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--classify-actors", type=int, default=None, help="default: automatic")
    parser.add_argument("--cpus-per-actor", type=float, default=1.0)
    parser.add_argument("--shard-size", type=int, default=ClassifyConfig.shard_size)
    parser.add_argument("--workers", type=int, default=cpus, help="DataLoader workers")
    parser.add_argument("--compute-images", type=int, default=2000)
    parser.add_argument("--skip-compute", action="store_true")
    parser.add_argument("--skip-dataloader", action="store_true")
    parser.add_argument("--skip-raycls", action="store_true", help="no in-process raycls run")
    parser.add_argument("--e2e", action="store_true", help="whole processes: raycls vs plain")
    parser.add_argument("--driver-rows", type=int, default=0, help="driver commit rate phase")
    parser.add_argument("--repeat", type=int, default=1, help="best of N runs per phase")
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "raycls-bench"))
    args = parser.parse_args(argv)

    work = Path(args.workdir)
    folder = work / f"jpegs-{args.images}-{args.image_px}px"
    print(f"{cpus} CPUs, load average {os.getloadavg()[0]:.1f}; generating {args.images} JPEGs")
    paths = make_jpegs(folder, args.images, args.image_px)
    model_dir = make_model(work / f"model-{args.model_size}", args.model_size)
    print(
        f"model: resnet18 image_only, {len(LABELS)} classes, input {args.model_size} px "
        f"(random weights; a fused model skips its text encoder on text-free inputs)"
    )
    figures: dict = {"images": args.images, "cpus": cpus, "load_start": os.getloadavg()}
    sampler = MemorySampler()
    rows = []
    if not args.skip_compute:
        best = _best_of(args.repeat, sampler, lambda: max(bench_compute(
            model_dir, paths, args.batch_size, args.compute_images)))  # fmt: skip
        rows.append(("model forward alone (compute bound)", *best))
        best = _best_of(args.repeat, sampler, lambda: max(bench_compute(
            model_dir, paths, args.batch_size, args.compute_images, optimized=True)))  # fmt: skip
        rows.append(("optimized forward (raycls's own bound)", *best))
        decode = bench_decode(paths, args.model_size, args.compute_images)
        bound = 1 / (1 / rows[1][1] + 1 / decode)
        rows.append(("optimized forward + decode (bound)", bound, 0))
        figures.update(
            forward_images_per_s=round(rows[0][1], 1),
            optimized_images_per_s=round(rows[1][1], 1),
            decode_images_per_s=round(decode, 1),
            bound_images_per_s=round(bound, 1),
        )
    if not args.skip_dataloader:
        best = _best_of(args.repeat, sampler, lambda: bench_dataloader(
            model_dir, paths, args.batch_size, args.workers))  # fmt: skip
        rows.append((f"DataLoader loop in-process ({args.workers} workers)", *best))
        figures["dataloader_images_per_s"] = round(best[0], 1)
    if args.e2e:
        e2e = bench_e2e(model_dir, folder, work, args.images, args.batch_size)
        figures.update(e2e)
        rows.append(("plain script, whole process", e2e["plain_images_per_s"],
                     e2e["plain_peak_rss_gib"] * 2**30))  # fmt: skip
        rows.append(("plain script, steady", e2e["plain_steady_images_per_s"], 0))
        rows.append(("raycls classify, whole process", e2e["raycls_images_per_s"],
                     e2e["raycls_peak_rss_gib"] * 2**30))  # fmt: skip
        rows.append(("raycls classify, steady", e2e["raycls_steady_images_per_s"], 0))
        if "bound_images_per_s" in figures:
            figures["steady_vs_bound"] = round(
                e2e["raycls_steady_images_per_s"] / figures["bound_images_per_s"], 3)  # fmt: skip
    if not args.skip_raycls or args.driver_rows:
        from raycls.cluster.runtime import init_ray

        started = time.perf_counter()
        init_ray(None)
        print(f"  local Ray started in {time.perf_counter() - started:.1f} s (not timed below)")
    if not args.skip_raycls:
        best = _best_of(args.repeat, sampler, lambda: bench_raycls(
            model_dir, folder, work / "out", args)["images_per_s"])  # fmt: skip
        rows.append(("raycls classify in-process (Ray up)", *best))
        figures["raycls_in_process_images_per_s"] = round(best[0], 1)
    if args.driver_rows:
        rate = bench_driver(args.driver_rows, args.shard_size, args.batch_size, work / "out-driver")
        figures["driver_commit_rows_per_s"] = round(rate)

    figures["load_end"] = os.getloadavg()
    print(f"\n{args.images} images, load average {os.getloadavg()[0]:.1f}")
    if rows:
        base = rows[0][1] if not args.skip_compute else None
        print(f"{'':40} {'images/s':>9} {'x compute':>10} {'peak RSS':>9}")
        for name, rate, peak in rows:
            ratio = f"{rate / base:10.2f}" if base else f"{'-':>10}"
            print(f"{name:40} {rate:9.1f} {ratio} {peak / 2**30:7.2f}G")
    for key in ("e2e_ratio", "steady_ratio", "steady_vs_bound", "driver_commit_rows_per_s"):
        if key in figures:
            print(f"{key}: {figures[key]}")
    print(json.dumps(figures, default=str))


if __name__ == "__main__":
    main()
