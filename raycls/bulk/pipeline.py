"""The bulk pipeline (Ray Data): list inputs -> deterministic shards -> read bytes -> decode ->
caption (optional actor pool) -> classify (actor pool) -> one Parquet file per shard.

`raycls.bulk.dataset` builds the Ray Dataset. Result rows stream back to the driver (small
columns only: pixels and bytes stay in the workers), and each shard's file is committed as soon
as all its rows have arrived (`raycls.bulk.commit`). A rerun on the same OUT_DIR skips committed
shards; see `raycls.bulk.output` for the manifest rules and `raycls.bulk.lock` for one run at a
time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from typing import Any

from raycls.bulk.commit import commit_results
from raycls.bulk.dataset import build_dataset, model_spec, pool_sizes
from raycls.bulk.lock import OutputLock
from raycls.bulk.output import OutputDir
from raycls.bulk.recovery import error_positions, valid_parts
from raycls.bulk.sizing import PoolSize
from raycls.cluster.runtime import warn_if_local_on_multinode
from raycls.config import ClassifyConfig
from raycls.io.inputs import check_parquet_columns, plan_shards
from raycls.io.shards import Shard
from raycls.io.storage import check_output_dir, get_filesystem, is_remote, is_within, redact
from raycls.models.predictor import ModelSpec, model_identity

logger = logging.getLogger(__name__)

# A small input is cut into at least this many shards (of 64 rows or more): a shard's rows
# are committed together, so one shard of a small job would show no result until every row
# is done. Fixed, not read from the cluster: the plan (and so a resume) depends on the input
# only.
MIN_SHARDS = 16

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
    check_output_dir(out_dir)
    if is_within(out_dir, input) and is_within(input, out_dir):
        raise ValueError(
            f"--out {redact(out_dir)!r} is the input folder itself; write the results to another "
            "folder (a sub-folder of the input is fine: reruns leave it out of the input)"
        )
    spec = model_spec(model_dir, config)  # a wrong model or labels fail before Ray starts
    shards = plan_shards(
        input, config.shard_size, text_column=config.text_column, min_shards=MIN_SHARDS
    )
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
            described = _describe(pools, config)
            logger.info("classify: actors per pool %s", json.dumps(described))
            run = _run(pending, spec, out, config, _key_name(shards), redo, pools)
            run["pools"] = described
        summary = _summary(out, spec, shards, done, pending, run, started)
        if run["failed"]:
            out.write_manifest({**manifest, "complete": False, "summary": summary})
            raise RuntimeError(_failed_message(run["failed"]))
        out.write_manifest({**manifest, "complete": True, "summary": summary})
    logger.info(
        "classify finished: %d rows (%d errors) in %.1f s, %.1f images/s; %s holds %d rows "
        "(%d errors)",
        summary["rows"], summary["error"], summary["seconds"], summary["images_per_s"],
        summary["output"], summary["total_rows"], summary["total_error"],
    )  # fmt: skip
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
    from ray.exceptions import RayActorError

    try:
        return commit_results(batches, shards, out, key_name, redact(spec.source), redo)
    except RayActorError as error:
        if not error.actor_init_failed:
            raise
        # Ray's message is the actor's whole traceback; the last line names what failed.
        cause = next((line for line in reversed(str(error).splitlines()) if line.strip()), "")
        raise RuntimeError(
            f"the {'captioning or classification' if config.captioner else 'classification'} "
            f"actors could not start: {cause.strip()}; shards already committed stay, a rerun "
            "resumes once this is fixed"
        ) from error


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
