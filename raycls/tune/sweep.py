"""`run_sweep`: hyperparameter search with Ray Tune over Ray Train runs.

Each trial is a driver function that builds the trial's Config (base + sampled values) and
fits a TorchTrainer; Train's per-epoch reports reach Tune through `TuneReportCallback`, so
ASHA can stop weak trials after any epoch. OUT holds:

OUT is a local folder or a URI (s3://bucket/prefix, gs://...): Tune, Train and these exports
all write through pyarrow's filesystems.

    sweep/                    the Tune experiment (rerunning the same command resumes it)
    trials/<trial_id>/        each trial's Ray Train run (checkpoints) and its start/done marks
    results.parquet/.csv      one row per trial (see raycls.tune.results)
    val_metric_per_epoch.png  the validation metric per epoch, a line per trial
    best_model/               the best trial's best checkpoint, in the model-directory format
    best_config.yaml          that trial's full Config (`raycls train --config` reads it)
    summary.json              what `run_sweep` returns
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from raycls.cluster.runtime import ctrl_c_interrupts, warn_if_local_on_multinode
from raycls.config import METRICS, Config, save_config
from raycls.io.inputs import require_input
from raycls.io.storage import (
    check_output_dir,
    join,
    read_json,
    resolve_storage_path,
    to_json,
    write_json,
)
from raycls.models import check_model_config
from raycls.tune.cleanup import PlacementGroupReaper, state_api_available
from raycls.tune.resources import (
    DRIVER_RESOURCES,
    TrialPlan,
    plan_trials,
)
from raycls.tune.results import (
    best_trial,
    export_model,
    frames_from_results,
    plot_history,
    results_table,
    status_counts,
    write_results,
)
from raycls.tune.search import make_searcher, param_space
from raycls.tune.space import Param, apply_params, build_search_space, count_trials, describe

logger = logging.getLogger(__name__)

EXPERIMENT = "sweep"
TRIALS_DIR = "trials"
SETTINGS_FILE = "sweep_settings.json"
SCHEDULERS = ("asha", "none")
SEARCHES = ("random", "optuna")


def run_sweep(
    config: Config,
    train_data: str,
    val_data: str | None,
    out: str,
    *,
    num_samples: int = 8,
    max_concurrent: int = 2,
    epochs: int | None = None,
    search_space: dict[str, Any] | None = None,
    scheduler: str = "asha",
    search: str = "random",
    metric: str | None = None,
    resources_per_trial: dict[str, float] | None = None,
    address: str | None = None,
) -> dict[str, Any]:
    """Search hyperparameters; export results, plot, best model and config to `out`.

    Args:
        epochs, metric: override `config.train.epochs` / `.metric` when given (not None).
        search_space: parsed YAML (see raycls.tune.space); None for the default space.
        resources_per_trial: all Train workers of one trial together, e.g. {"cpu": 1}.
    Returns the summary written to OUT/summary.json: paths, counts, the best trial and the
    results table as records.
    """
    given = {"epochs": epochs, "metric": metric}
    base = config.replace(train={k: v for k, v in given.items() if v is not None})
    epochs, metric = base.train.epochs, base.train.metric
    _check_choices(scheduler, search, metric, num_samples, epochs)
    space = build_search_space(search_space, base)  # every error before Ray starts
    grids = [k for k, p in space.items() if p.kind == "grid"]
    if grids and search == "optuna":
        raise ValueError(f"search=optuna samples, it runs no grid ({', '.join(grids)}); use "
                         "choice, or search=random")  # fmt: skip
    if not {"model.backbone", "model.backbone_weights", "model.text_encoder"} & space.keys():
        check_model_config(base.model)  # searched ones fail per trial, named in the results
    for data in filter(None, (train_data, val_data)):
        require_input(data)
    out = resolve_storage_path(out)
    check_output_dir(out)
    settings = _settings(base, space, train_data, val_data, num_samples, scheduler, search)
    _check_same_sweep(out, settings)
    started = time.time()

    _init_ray(address)
    warn_if_local_on_multinode(out)
    import ray

    plan = plan_trials(base, resources_per_trial, max_concurrent, ray.cluster_resources())
    base = base.replace(
        train={
            "cpus_per_worker": plan.cpus_per_worker,
            "gpus_per_worker": plan.gpus_per_worker,
            "use_gpu": plan.use_gpu,
        }
    )
    logger.info("search space: %s", describe(space))
    logger.info(
        "trials: %d, %d at a time, each holding %s",
        count_trials(space, num_samples),
        plan.max_concurrent,
        plan.per_trial,
    )
    from raycls.train.data import prepare_data

    data = prepare_data(base, train_data, val_data, plan.data_cpus)
    user_keys = build_search_space(search_space, base, use_default=False).keys()
    space = fusion_for_data(space, data.summary["train"]["with_text"], "model.fusion" in user_keys)
    write_json(join(out, SETTINGS_FILE), settings, indent=1)

    tuner = _tuner(base, space, data, plan, out, num_samples, scheduler, search, metric)
    with ctrl_c_interrupts():
        grid = tuner.fit()
    summary = export_results(grid, base, space, out, metric, epochs)
    summary["elapsed_s"] = round(time.time() - started, 1)
    write_json(join(out, "summary.json"), summary, indent=1)
    return summary


def fusion_for_data(
    space: dict[str, Param], rows_with_text: int, searched_by_user: bool
) -> dict[str, Param]:
    """`space` for training data with `rows_with_text` examples that have text.

    Without any, the fusion variants differ only in a text branch that never sees text: the
    default space's `model.fusion` is dropped (trials keep the config's fusion; `auto` trains
    image-only), a user's own is kept with a warning.
    """
    if rows_with_text or "model.fusion" not in space:
        return space
    if searched_by_user:
        logger.warning(
            "model.fusion is searched, but no training example has text: the variants differ "
            "only in a text branch that never sees text"
        )
        return space
    logger.info(
        "search space: model.fusion not searched, as no training example has text (trials "
        "use the config's model.fusion; auto: image_only)"
    )
    return {key: param for key, param in space.items() if key != "model.fusion"}


def _check_choices(scheduler: str, search: str, metric: str, samples: int, epochs: int) -> None:
    for name, value, choices in (
        ("scheduler", scheduler, SCHEDULERS),
        ("search", search, SEARCHES),
        ("metric", metric, METRICS),
    ):
        if value not in choices:
            raise ValueError(f"{name}={value!r} is not valid; choose one of: {', '.join(choices)}")
    if samples < 1 or epochs < 1:
        raise ValueError(f"num_samples and epochs must be >= 1, got {samples} and {epochs}")


def _settings(
    base: Config,
    space: dict[str, Param],
    train_data: str,
    val_data: str | None,
    num_samples: int,
    scheduler: str,
    search: str,
) -> dict[str, Any]:
    return {
        "config": base.to_dict(),
        "space": describe(space),
        "train_data": train_data,
        "val_data": val_data,
        "num_samples": num_samples,
        "scheduler": scheduler,
        "search": search,
    }


def _check_same_sweep(out: str | Path, settings: dict[str, Any]) -> None:
    """A rerun resumes only the sweep it started; other settings need another OUT."""
    previous = read_json(join(str(out), SETTINGS_FILE))
    if previous is None:
        return
    current = json.loads(to_json(settings))  # as recorded: URIs' credentials redacted
    changed = sorted(k for k in current if k != "config" and previous.get(k) != current[k])
    # Resources are re-planned for the cluster at hand; everything else must match.
    keep = ("cpus_per_worker", "gpus_per_worker", "use_gpu")
    old_cfg, new_cfg = previous.get("config", {}), current["config"]
    for section in new_cfg:
        for key, value in new_cfg[section].items():
            if key not in keep and old_cfg.get(section, {}).get(key) != value:
                changed.append(f"{section}.{key}")
    if changed:
        raise ValueError(
            f"{out} holds a sweep with other settings ({', '.join(changed)}); rerun with "
            "the same arguments to resume it, or pass a new --out"
        )


def _init_ray(address: str | None) -> None:
    """A local Ray gets its dashboard (on 127.0.0.1 only).

    Ray Train frees the workers of a trial that Tune stopped through the state API, which the
    dashboard serves; without it `PlacementGroupReaper` does that job.
    """
    from raycls.cluster.runtime import init_ray

    init_ray(address, dashboard=True)


def trial_dirname(trial: Any) -> str:
    """Trial folders named by trial id alone: stable, short, and what the results table shows."""
    return trial.trial_id


def _tuner(
    base: Config,
    space: dict[str, Param],
    data: Any,
    plan: TrialPlan,
    out: str,
    num_samples: int,
    scheduler: str,
    search: str,
    metric: str,
):
    from ray import tune

    from raycls.tune.trial import run_trial

    trainable = tune.with_resources(
        tune.with_parameters(
            run_trial,
            base=base.to_dict(),
            data=data,
            trials_dir=join(out, TRIALS_DIR),
            custom_per_worker=plan.custom_per_worker,
        ),
        dict(DRIVER_RESOURCES),
    )
    path = join(out, EXPERIMENT)
    if tune.Tuner.can_restore(path):
        logger.info("resuming the sweep in %s (finished trials are kept, not rerun)", path)
        return tune.Tuner.restore(
            path, trainable, resume_unfinished=True, resume_errored=False, restart_errored=False
        )
    asha = None
    if scheduler == "asha":
        from ray.tune.schedulers import ASHAScheduler

        asha = ASHAScheduler(
            time_attr="epoch", max_t=base.train.epochs, grace_period=1, reduction_factor=2
        )
    searcher = make_searcher(search, base.train.seed, plan.max_concurrent)
    return tune.Tuner(
        trainable,
        param_space=param_space(space),
        tune_config=tune.TuneConfig(
            metric=metric,
            mode="max",
            num_samples=num_samples,
            scheduler=asha,
            search_alg=searcher,
            trial_dirname_creator=trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=EXPERIMENT,
            storage_path=out,
            # A trial whose driver dies with its node is retried (and resumes from its Train
            # checkpoint); one that raised fails its retries at once (see tune/trial.py).
            failure_config=tune.FailureConfig(
                max_failures=base.train.max_failures, fail_fast=False
            ),
            callbacks=[PlacementGroupReaper()],
            verbose=1,
        ),
    )


def export_results(
    grid: Any, base: Config, space: dict[str, Param], out: str, metric: str, epochs: int
) -> dict[str, Any]:
    """Results table, plot, best model and best config from a Tune ResultGrid."""
    trials, history = frames_from_results(grid, list(space), join(out, TRIALS_DIR))
    table = results_table(trials, history, metric, epochs)
    paths = write_results(table, out)
    plot = plot_history(history, table, metric, join(out, "val_metric_per_epoch.png"))
    # Plain Python values, None for NaN (failed trials): JSON-ready, and exact for the config.
    records = table.astype(object).where(table.notna(), None).to_dict("records")
    best = best_trial(table, metric)
    if best is not None:
        best = next(r for r in records if r["trial_id"] == best["trial_id"])
    summary: dict[str, Any] = {
        "out": out,
        "metric": metric,
        **{f"results_{k}": v for k, v in paths.items()},
        "plot": plot,
        "num_trials": len(table),
        "best_model": None,
        "best_config": None,
        "best_trial": best,
        "status_counts": status_counts(table),
        "state_api": state_api_available(),
    }
    if best is not None:
        config = apply_params(base, {k: best[k] for k in space if k in best})
        from raycls.train.loop import MODEL_DIR

        summary["best_model"] = export_model(
            best["best_checkpoint"], join(out, "best_model"), MODEL_DIR
        )
        summary["best_config"] = join(out, "best_config.yaml")
        save_config(config, summary["best_config"])
    summary["trials"] = records
    return summary
