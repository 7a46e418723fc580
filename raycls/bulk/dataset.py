"""The lazy Ray Dataset of the bulk pipeline (`build_dataset`): read tasks -> read -> decode ->
caption (optional actor pool) -> classify (actor pool), with the pools sized from the cluster
(`pool_sizes`). Ray is imported inside the functions that need it.
"""

from __future__ import annotations

import json
from typing import Any

from raycls.bulk.recovery import redo_tasks
from raycls.bulk.sizing import PoolSize, StageNeeds, plan_pools
from raycls.config import ClassifyConfig
from raycls.io.shards import Shard, read_tasks
from raycls.models.predictor import ModelSpec, resolve_model

PIECE_BATCHES = 4  # batches per read task


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
