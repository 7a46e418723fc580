"""The bulk pipeline (Ray Data): list inputs -> deterministic shards -> read bytes -> decode ->
caption (optional actor pool) -> classify (actor pool) -> one Parquet file per shard.

Result rows stream back to the driver (small columns only: pixels and bytes stay in the
workers), and each shard's file is committed as soon as all its rows have arrived
(`raycls.bulk.commit`). A rerun on the same OUT_DIR skips committed shards; see
`raycls.bulk.output` for the manifest rules and `raycls.bulk.lock` for one run at a time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from typing import Any

from raycls.bulk.commit import commit_results
from raycls.bulk.lock import OutputLock
from raycls.bulk.output import OutputDir
from raycls.bulk.recovery import error_positions, redo_tasks, valid_parts
from raycls.bulk.sizing import PoolSize, StageNeeds, plan_pools
from raycls.cluster.runtime import warn_if_local_on_multinode
from raycls.config import ClassifyConfig
from raycls.io.inputs import check_parquet_columns, plan_shards
from raycls.io.shards import Shard, read_tasks
from raycls.io.storage import get_filesystem, is_remote, redact
from raycls.models.predictor import ModelSpec, model_identity, resolve_model

logger = logging.getLogger(__name__)

PIECE_BATCHES = 4  # batches per read task
# Settings that change what a row holds: a rerun must match them to resume an OUT_DIR.
IDENTITY_SETTINGS = ("shard_size", "captioner", "caption_prompt", "max_new_tokens",
                     "caption_image_size", "text_column", "image_column", "id_column", "top_k",
                     "max_pixels", "max_file_bytes")  # fmt: skip


def classify(
    input: str,
    model_dir: str,
    out_dir: str,
    config: ClassifyConfig,
    *,
    overwrite: bool = False,
    retry_errors: bool = False,
    address: str | None = None,
) -> dict[str, Any]:
    """Classify every image of `input` into Parquet under `out_dir`; returns a summary.

    Every input row appears exactly once in the output, with status "ok" or "error" (and the
    message). Shards already committed by an earlier run of the same command are skipped
    (their files checked first); with `retry_errors`, their error rows are redone.

    Raises:
        ValueError: bad input, model or settings; `out_dir` holds another run's results and
            `overwrite` is False; another run holds `out_dir`'s lock.
        RuntimeError: shards whose reads kept failing were left uncommitted (the rest is
            committed; a rerun retries them).
    """
    from raycls.cluster.runtime import init_ray

    if overwrite and retry_errors:
        raise ValueError("--retry-errors keeps the results of OUT_DIR; drop --overwrite")
    started = time.perf_counter()
    spec = model_spec(model_dir, config)  # a wrong model or labels fail before Ray starts
    shards = plan_shards(input, config.shard_size, text_column=config.text_column)
    check_parquet_columns(shards, image_column=config.image_column, id_column=config.id_column)
    out = OutputDir(out_dir)
    manifest = _manifest(input, spec, shards, config)
    with OutputLock(out.fs, out.path, out.uri) as lock:
        out.lock = lock
        if retry_errors and not out.has_manifest():
            raise ValueError(f"{out.uri} holds no classify results to retry; run without "
                             "--retry-errors")  # fmt: skip
        done = valid_parts(out, out.prepare(manifest, overwrite=overwrite), shards)
        redo = error_positions(out, done) if retry_errors else {}
        pending = [s for s in shards if s.index not in done or s.index in redo]
        logger.info(
            "classify: %d shards (%d already done, %d with errors to retry) from %s into %s",
            len(shards), len(done), len(redo), redact(input), out.uri,
        )  # fmt: skip
        run: dict[str, Any] = {"counts": {}, "first_rows_at": None, "failed": {}, "redone": {},
                               "repeated": 0, "pools": None}  # fmt: skip
        if pending:
            init_ray(address)
            warn_if_local_on_multinode(out_dir)
            pools = pool_sizes(config)
            logger.info("classify: actor pools %s", pools)
            run = _run(pending, spec, out, config, _key_name(shards), redo, pools)
            run["pools"] = _describe(pools, config)
        summary = _summary(out, spec, shards, done, pending, run, started)
        if run["failed"]:
            out.write_manifest({**manifest, "complete": False, "summary": summary})
            raise RuntimeError(_failed_message(run["failed"]))
        out.write_manifest({**manifest, "complete": True, "summary": summary})
    logger.info("classify finished: %s", json.dumps(summary))
    return summary


def _summary(
    out: OutputDir,
    spec: ModelSpec,
    shards: list[Shard],
    done: set[int],
    pending: list[Shard],
    run: dict[str, Any],
    started: float,
) -> dict[str, Any]:
    rows = run["counts"]
    elapsed = time.perf_counter() - started
    first_at = run["first_rows_at"]
    total = out.count_rows(done - set(run["redone"]))
    for status, n in rows.items():
        total[status] = total.get(status, 0) + n
    return {
        "output": out.uri,
        "model": redact(spec.source),
        "shards": len(shards),
        "shards_done": len(pending) - len(run["failed"]),
        "shards_skipped": len(shards) - len(pending),
        "shards_failed": len(run["failed"]),
        "rows": sum(rows.values()),
        "ok": rows.get("ok", 0),
        "error": rows.get("error", 0),
        "rows_retried": sum(run["redone"].values()),
        "seconds": round(elapsed, 2),
        # Until the first results came back: Ray Data and actor start-up, model loading.
        "first_rows_s": None if first_at is None else round(first_at - started, 2),
        "images_per_s": round(sum(rows.values()) / elapsed, 1) if elapsed > 0 else 0.0,
        "total_rows": sum(total.values()),
        "total_ok": total.get("ok", 0),
        "total_error": total.get("error", 0),
        # Rows sent twice by tasks retried after a failure (a worker or node died); dropped.
        "rows_repeated": run["repeated"],
        # Actors per pool: pinned, or started at what the cluster had and autoscaling.
        "actors": run["pools"],
    }


def _failed_message(failed: dict[int, str]) -> str:
    first = min(failed)
    return (
        f"{len(failed)} shard(s) were not committed because reading them kept failing (shard "
        f"{first}: {failed[first]}); the other shards are committed: rerun the same command "
        "to retry these"
    )


def model_spec(model_dir: str, config: ClassifyConfig) -> ModelSpec:
    """The model `--model` names, with its kind and labels as `config` gives them."""
    c = config
    return resolve_model(model_dir, kind=c.model_kind, labels=c.labels, raw_scores=c.raw_scores,
                         trust_remote_code=c.trust_remote_code)  # fmt: skip


def build_dataset(
    shards: list[Shard],
    model: str | ModelSpec,
    config: ClassifyConfig,
    pools: list[PoolSize] | None = None,
    redo: dict[int, list[int]] | None = None,
) -> Any:
    """The lazy Ray Dataset of result rows (key, routing columns, predictions, status, error).

    `redo` maps shards of which to read only some rows to those rows' positions.

    One read task per shard, or per slice of a big shard of image files. Before a CPU actor,
    reading and decoding take that actor's resources so that Ray Data fuses them into it (no
    pixel copies through the object store); before a GPU actor they run as separate 1-CPU tasks
    that keep the GPU fed. `pools`: the actor pools' sizes (default: `pool_sizes(config)`).
    """
    import ray.data

    from raycls.bulk.read import read_shards
    from raycls.bulk.stages import CaptionStage, ClassifyStage, decode_rows

    c = config
    spec = model if isinstance(model, ModelSpec) else model_spec(model, config)
    pools = pools or pool_sizes(config)
    actors = [
        _actor(CaptionStage, (c.captioner,), c.cpus_per_caption_actor,
               c.gpus_per_caption_actor, c.caption_batch_size, prompt=c.caption_prompt,
               max_new_tokens=c.max_new_tokens, trust_remote_code=c.trust_remote_code),
        _actor(ClassifyStage, (spec.to_dict(),), c.cpus_per_classify_actor,
               c.gpus_per_classify_actor, c.batch_size, top_k=c.top_k),
    ][0 if c.captioner else 1 :]  # fmt: skip
    fused = actors[0]["num_gpus"] is None
    prep_cpus = actors[0]["num_cpus"] if fused else 1.0
    read_kwargs = {"image_column": c.image_column, "text_column": c.text_column,
                   "id_column": c.id_column, "max_file_bytes": c.max_file_bytes}  # fmt: skip
    decode_kwargs = {"size": spec.image.size, "max_pixels": c.max_pixels,
                     "caption_size": c.caption_image_size if c.captioner else None,
                     "chunk_rows": actors[0]["fn_constructor_kwargs"]["batch_size"]}  # fmt: skip
    # Read tasks of a few batches each: actors share big shards and finish together.
    batch = actors[0]["fn_constructor_kwargs"]["batch_size"]
    piece = PIECE_BATCHES * batch
    redo = redo or {}
    fresh = [s for s in shards if s.index not in redo]
    tasks = read_tasks(fresh, piece, batch, first=pools[0].initial_size)
    tasks += [t for s in shards if s.index in redo for t in redo_tasks(s, redo[s.index], piece)]
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
            # scheduling gap between tasks); at most one more waits there, so the
            # actors still finish within one slice of each other.
            actor.update(batch_size=None, compute=_pool(pool, in_flight=2))
        else:
            actor.update(compute=_pool(pool))
        ds = ds.map_batches(**actor)
    return ds


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
    spec: ModelSpec,
    out: OutputDir,
    config: ClassifyConfig,
    key_name: str,
    redo: dict[int, list[int]],
    pools: list[PoolSize],
) -> dict[str, Any]:
    """Run the Ray Dataset and commit its results (see `commit_results`)."""
    ds = build_dataset(shards, spec, config, pools, redo)
    # No prefetching: with it, Ray Data held finished result blocks back until more were
    # ready (2,000 images: first rows at the driver 11.6 s in instead of 9.0 s, a task's
    # length late), which delays every shard's commit. Result blocks are small to fetch.
    batches = ds.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=0)
    return commit_results(batches, shards, out, key_name, redact(spec.source), redo)


def _describe(pools: list[PoolSize], config: ClassifyConfig) -> dict[str, dict[str, Any]]:
    names = ["caption", "classify"][0 if config.captioner else 1 :]
    return {
        name: {"initial": p.initial_size, "min": p.min_size, "max": p.max_size}
        for name, p in zip(names, pools, strict=True)
    }


def _manifest(
    input: str, model: str | ModelSpec, shards: list[Shard], config: ClassifyConfig
) -> dict[str, Any]:
    spec = model if isinstance(model, ModelSpec) else model_spec(model, config)
    plan = json.dumps([s.to_dict() for s in shards], sort_keys=True).encode()
    identity = {
        "input": redact(input) if is_remote(input) else get_filesystem(input)[1],
        **model_identity(spec),
        "input_listing_sha256": hashlib.sha256(plan).hexdigest(),
    }
    identity.update({name: getattr(config, name) for name in IDENTITY_SETTINGS})
    if config.captioner is None:  # caption settings change nothing without a captioner
        identity.update(caption_prompt=None, max_new_tokens=None, caption_image_size=None)
    return {
        "format": 1,
        "identity": identity,
        "model_dir": redact(spec.source),
        "shards": len(shards),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "complete": False,
    }


def _key_name(shards: list[Shard]) -> str:
    """`id` for Parquet input (ids or file#row), `path` for image files and tar samples."""
    return "id" if shards and shards[0].kind == "parquet" else "path"
