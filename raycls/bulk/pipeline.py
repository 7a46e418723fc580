"""The bulk pipeline (Ray Data): list inputs -> deterministic shards -> read bytes -> decode ->
caption (optional actor pool) -> classify (actor pool) -> one Parquet file per shard.

Result rows stream back to the driver (small columns only: pixels and bytes stay in the
workers), and each shard's file is committed as soon as all its rows have arrived. A rerun on
the same OUT_DIR skips committed shards; see `raycls.bulk.output` for the manifest rules.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterable
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from raycls.bulk.output import OutputDir, ShardCollector, model_fingerprint, result_schema
from raycls.bulk.sizing import PoolSize, StageNeeds, plan_pools
from raycls.cluster.runtime import warn_if_local_on_multinode
from raycls.config import ClassifyConfig
from raycls.io.inputs import plan_shards
from raycls.io.shards import Shard, split_shard
from raycls.io.storage import get_filesystem, is_remote

logger = logging.getLogger(__name__)

PROGRESS_EVERY_S = 15.0
PIECE_BATCHES = 4  # batches per read task
# Settings that change what a row holds: a rerun must match them to resume an OUT_DIR.
IDENTITY_SETTINGS = ("shard_size", "captioner", "caption_prompt", "max_new_tokens",
                     "text_column", "image_column", "id_column", "top_k", "max_pixels")  # fmt: skip


def classify(
    input: str,
    model_dir: str,
    out_dir: str,
    config: ClassifyConfig,
    *,
    overwrite: bool = False,
    address: str | None = None,
) -> dict[str, Any]:
    """Classify every image of `input` into Parquet under `out_dir`; returns a summary.

    Every input row appears exactly once in the output, with status "ok" or "error" (and the
    message). Shards already committed by an earlier run of the same command are skipped.

    Raises:
        ValueError: bad input, model or settings; `out_dir` holds another run's results and
            `overwrite` is False.
    """
    from raycls.cluster.runtime import init_ray

    started = time.perf_counter()
    shards = plan_shards(input, config.shard_size, text_column=config.text_column)
    out = OutputDir(out_dir)
    manifest = _manifest(input, model_dir, shards, config)
    done = out.prepare(manifest, overwrite=overwrite)
    pending = [s for s in shards if s.index not in done]
    logger.info(
        "classify: %d shards (%d already done) from %s into %s",
        len(shards), len(shards) - len(pending), input, out.uri,
    )  # fmt: skip
    rows: dict[str, int] = {}
    first_rows_s = pools = None
    repeated = 0
    if pending:
        init_ray(address)
        warn_if_local_on_multinode(out_dir)
        pools = pool_sizes(config)
        logger.info("classify: actor pools %s", pools)
        run = _run(pending, model_dir, out, config, _key_name(shards), pools)
        rows, repeated, first_rows_at = run["counts"], run["repeated"], run["first_rows_at"]
        first_rows_s = None if first_rows_at is None else round(first_rows_at - started, 2)
    elapsed = time.perf_counter() - started
    total = out.count_rows(done & {s.index for s in shards})
    for status, n in rows.items():
        total[status] = total.get(status, 0) + n
    summary = {
        "output": out.uri,
        "model": model_dir,
        "shards": len(shards),
        "shards_done": len(pending),
        "shards_skipped": len(shards) - len(pending),
        "rows": sum(rows.values()),
        "ok": rows.get("ok", 0),
        "error": rows.get("error", 0),
        "seconds": round(elapsed, 2),
        # Until the first results came back: Ray Data and actor start-up, model loading.
        "first_rows_s": first_rows_s,
        "images_per_s": round(sum(rows.values()) / elapsed, 1) if elapsed > 0 else 0.0,
        "total_rows": sum(total.values()),
        "total_ok": total.get("ok", 0),
        "total_error": total.get("error", 0),
        # Rows sent twice by tasks retried after a failure (a worker or node died); dropped.
        "rows_repeated": repeated,
        # Actors per pool: pinned, or started at what the cluster had and autoscaling.
        "actors": None if pools is None else _describe(pools, config),
    }
    out.write_manifest({**manifest, "complete": True, "summary": summary})
    logger.info("classify finished: %s", json.dumps(summary))
    return summary


def build_dataset(
    shards: list[Shard],
    model_dir: str,
    config: ClassifyConfig,
    pools: list[PoolSize] | None = None,
) -> Any:
    """The lazy Ray Dataset of result rows (key, routing columns, predictions, status, error).

    One read task per shard, or per slice of a big shard of image files. Before a CPU actor,
    reading and decoding take that actor's resources so that Ray Data fuses them into it (no
    pixel copies through the object store); before a GPU actor they run as separate 1-CPU tasks
    that keep the GPU fed. `pools`: the actor pools' sizes (default: `pool_sizes(config)`).
    """
    import ray.data

    from raycls.bulk.stages import CaptionStage, ClassifyStage, decode_rows, read_shards

    c = config
    pools = pools or pool_sizes(config)
    actors = [
        _actor(CaptionStage, (c.captioner,), c.cpus_per_caption_actor,
               c.gpus_per_caption_actor, c.caption_batch_size, prompt=c.caption_prompt,
               max_new_tokens=c.max_new_tokens, trust_remote_code=c.trust_remote_code),
        _actor(ClassifyStage, (model_dir,), c.cpus_per_classify_actor,
               c.gpus_per_classify_actor, c.batch_size, top_k=c.top_k),
    ][0 if c.captioner else 1 :]  # fmt: skip
    fused = actors[0]["num_gpus"] is None
    prep_cpus = actors[0]["num_cpus"] if fused else 1.0
    read_kwargs = {"image_column": c.image_column, "text_column": c.text_column,
                   "id_column": c.id_column}  # fmt: skip
    decode_kwargs = {"size": _image_size(model_dir), "max_pixels": c.max_pixels,
                     "caption_size": c.caption_image_size if c.captioner else None,
                     "chunk_rows": actors[0]["fn_constructor_kwargs"]["batch_size"]}  # fmt: skip
    # Read tasks of a few batches each: actors share big shards and finish together.
    batch = actors[0]["fn_constructor_kwargs"]["batch_size"]
    tasks = read_tasks(shards, PIECE_BATCHES * batch, batch, first=pools[0].initial_size)
    items = [{"shard": json.dumps(task)} for task in tasks]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    # batch_size=None: a fused operator bundles inputs up to its largest batch_size, which
    # would put that many *shards* into one task. The stages chunk their input themselves.
    ds = ds.map_batches(read_shards, fn_kwargs=read_kwargs, batch_size=None,
                        batch_format="pyarrow", num_cpus=prep_cpus)  # fmt: skip
    ds = ds.map_batches(decode_rows, fn_kwargs=decode_kwargs, batch_size=None,
                        batch_format="numpy", num_cpus=prep_cpus)  # fmt: skip
    for i, (actor, pool) in enumerate(zip(actors, pools, strict=True)):
        if fused and i == 0:
            # A second read task queued at each actor starts the moment the first ends (no
            # scheduling gap, ~0.2 s a task on 2 cores); at most one more waits there, so the
            # actors still finish within one slice of each other.
            actor.update(batch_size=None, compute=_pool(pool, in_flight=2))
        else:
            actor.update(compute=_pool(pool))
        ds = ds.map_batches(**actor)
    return ds


def read_tasks(shards: list[Shard], rows: int, first_rows: int, first: int) -> list[dict]:
    """Read tasks of `rows` files (see `split_shard`); the first `first` ones cut further into
    tasks of `first_rows` files (a batch).

    Ray Data hands a task's results on only when the task ends (its output buffer gathers
    them into one block), so each actor's first results wait for its whole first task: one
    batch instead of PIECE_BATCHES brings the first rows sooner (bench_classify.py prints
    first_rows_s).
    """
    tasks = [task for s in shards for task in split_shard(s, rows)]
    head = []
    for task in tasks[:first]:
        for part in split_shard(Shard.from_dict(task), first_rows):
            # Positions and sizes stay those of the whole shard, not of this slice of it.
            start = task.get("start", 0) + part["start"]
            head.append({**part, "start": start, "shard_rows": task["shard_rows"]})
    return head + tasks[first:]


def pool_sizes(config: ClassifyConfig) -> list[PoolSize]:
    """The actor pools (captioning if any, then classification), sized from the connected
    cluster's CPUs and GPUs where `config` pins no size."""
    import ray

    c = config
    stages = [
        StageNeeds(c.caption_actors, c.cpus_per_caption_actor, c.gpus_per_caption_actor),
        StageNeeds(c.classify_actors, c.cpus_per_classify_actor, c.gpus_per_classify_actor),
    ][0 if c.captioner else 1 :]
    if all(s.pinned is not None for s in stages):
        return plan_pools(stages, 0.0, 0.0)
    total = ray.cluster_resources()
    return plan_pools(stages, total.get("CPU", 0.0), total.get("GPU", 0.0))


def _actor(
    cls: type, args: tuple, cpus: float, gpus: float, batch_size: int, **kwargs: Any
) -> dict[str, Any]:
    """map_batches arguments for an actor pool stage (torch threads = reserved CPUs)."""
    kwargs.update(batch_size=batch_size, num_cpus=cpus, use_gpu=gpus > 0)
    return {
        "fn": cls,
        "fn_constructor_args": args,
        "fn_constructor_kwargs": kwargs,
        "batch_size": batch_size,
        "batch_format": "numpy",
        "num_cpus": cpus,
        "num_gpus": gpus or None,
    }


def _pool(pool: PoolSize, in_flight: int | None = None) -> Any:
    from ray.data import ActorPoolStrategy

    return ActorPoolStrategy(**pool.strategy_kwargs(), max_tasks_in_flight_per_actor=in_flight)


def _run(
    shards: list[Shard],
    model_dir: str,
    out: OutputDir,
    config: ClassifyConfig,
    key_name: str,
    pools: list[PoolSize],
) -> dict[str, Any]:
    """Run the Ray Dataset and commit its results (see `commit_results`)."""
    ds = build_dataset(shards, model_dir, config, pools)
    # No prefetching: with it, Ray Data held finished result blocks back until more were
    # ready (2,000 images: first rows at the driver 11.6 s in instead of 9.0 s, a task's
    # length late), which delays every shard's commit. Result blocks are small to fetch.
    batches = ds.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=0)
    return commit_results(batches, shards, out, key_name, model_dir)


def commit_results(
    batches: Iterable[pa.Table], shards: list[Shard], out: OutputDir, key_name: str, model: str
) -> dict[str, Any]:
    """Commit each shard's file once all its result rows have arrived from `batches`.

    Rows that arrive twice (a task retried after a worker or node died, having sent part of
    its rows) are dropped and counted. Returns rows per status (`counts`), `repeated`, and when
    (perf_counter) the first results arrived (`first_rows_at`).
    """
    collector = ShardCollector(result_schema(key_name), model_name=model)
    todo = {s.index for s in shards}
    counts: dict[str, int] = {}
    received = committed = 0
    started = last_log = time.perf_counter()
    first_rows_at = None
    for batch in batches:
        first_rows_at = first_rows_at or time.perf_counter()
        received += batch.num_rows
        if not todo.issuperset(pc.unique(batch.column("shard")).to_pylist()):
            kept = pa.array(sorted(todo), batch.column("shard").type)
            batch = batch.filter(pc.is_in(batch.column("shard"), kept))
        for index, table in collector.add(batch):
            out.write_shard(index, table)
            todo.discard(index)
            committed += table.num_rows
            for item in table.column("status").value_counts().to_pylist():
                counts[item["values"]] = counts.get(item["values"], 0) + item["counts"]
        if time.perf_counter() - last_log > PROGRESS_EVERY_S:
            last_log = time.perf_counter()
            logger.info(
                "classify: %d/%d shards committed, %d rows, %.1f images/s",
                len(shards) - len(todo), len(shards), committed, committed / (last_log - started),
            )  # fmt: skip
    if collector.in_flight:
        raise RuntimeError(f"{collector.in_flight} shards ended incomplete; rerun to resume")
    for index in sorted(todo):  # shards without rows (an empty Parquet row group, an empty tar)
        out.write_shard(index, collector.schema.empty_table())
    return {"counts": counts, "repeated": received - committed, "first_rows_at": first_rows_at}


def _describe(pools: list[PoolSize], config: ClassifyConfig) -> dict[str, dict[str, Any]]:
    names = ["caption", "classify"][0 if config.captioner else 1 :]
    return {
        name: {"initial": p.initial_size, "min": p.min_size, "max": p.max_size}
        for name, p in zip(names, pools, strict=True)
    }


def _manifest(
    input: str, model_dir: str, shards: list[Shard], config: ClassifyConfig
) -> dict[str, Any]:
    plan = json.dumps([s.to_dict() for s in shards], sort_keys=True).encode()
    identity = {
        "input": input if is_remote(input) else get_filesystem(input)[1],
        "model_sha256": model_fingerprint(model_dir)["sha256"],
        "input_listing_sha256": hashlib.sha256(plan).hexdigest(),
    }
    identity.update({name: getattr(config, name) for name in IDENTITY_SETTINGS})
    if config.captioner is None:  # caption settings change nothing without a captioner
        identity.update(caption_prompt=None, max_new_tokens=None)
    return {
        "format": 1,
        "identity": identity,
        "model_dir": model_dir,
        "shards": len(shards),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "complete": False,
    }


def _key_name(shards: list[Shard]) -> str:
    """`id` for Parquet input (ids or file#row), `path` for image files and tar samples."""
    return "id" if shards and shards[0].kind == "parquet" else "path"


def _image_size(model_dir: str) -> int:
    fs, base = get_filesystem(model_dir)
    with fs.open_input_stream(base.rstrip("/") + "/config.json") as f:
        data = json.loads(f.read())
    section = data.get("model", data) if isinstance(data.get("model"), dict) else data
    return int(section.get("image_size", 128))
