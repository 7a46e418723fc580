"""`raycls tune`: a hyperparameter sweep from the command line."""

from __future__ import annotations

import click

from raycls.cli_common import (
    address_option,
    config_option,
    fail,
    load_settings,
    overrides_argument,
    setting,
)
from raycls.config import METRICS


@click.command("tune")
@click.argument("data")
@click.option(
    "--val",
    "val_data",
    default=None,
    help="Validation data; default: hold out data.val_fraction of DATA.",
)
@click.option(
    "--out",
    required=True,
    help="Sweep folder or URI (s3://, gs://); rerun the same command to resume.",
)
@click.option("--num-samples", type=click.IntRange(min=1), default=8, show_default=True)
@click.option(
    "--max-concurrent",
    type=click.IntRange(min=1),
    default=2,
    show_default=True,
    help="Trials at once; clipped to what the cluster holds.",
)
@setting(
    "--epochs",
    key="train.epochs",
    type=click.IntRange(min=1),
    help="Epochs per trial (ASHA's max_t).",
)
@click.option(
    "--search-space",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="YAML of section.key: distribution; overrides/extends the default space "
    "(raycls/demo/configs/search/default.yaml).",
)
@click.option("--scheduler", type=click.Choice(["asha", "none"]), default="asha", show_default=True)
@click.option(
    "--search", type=click.Choice(["random", "optuna"]), default="random", show_default=True
)
@setting("--metric", key="train.metric", type=click.Choice(METRICS), help="What trials rank by.")
@click.option(
    "--resources-per-trial",
    default=None,
    help="All Train workers of one trial together: 'cpu=1,gpu=0' or JSON. "
    "Default: train.num_workers x train.cpus_per_worker.",
)
@config_option
@address_option
@overrides_argument
def tune_cmd(
    data: str,
    val_data: str | None,
    out: str,
    num_samples: int,
    max_concurrent: int,
    search_space: str | None,
    scheduler: str,
    search: str,
    resources_per_trial: str | None,
    config_file: str | None,
    address: str | None,
    overrides: tuple[str, ...],
    **_settings: object,
) -> None:
    """Search hyperparameters on DATA with Ray Tune; the best model goes to OUT/best_model."""
    import pandas as pd

    from raycls.tune.resources import parse_resources
    from raycls.tune.results import format_summary
    from raycls.tune.space import load_search_space
    from raycls.tune.sweep import run_sweep

    try:
        config = load_settings(config_file, overrides)
        summary = run_sweep(
            config,
            data,
            val_data,
            out,
            num_samples=num_samples,
            max_concurrent=max_concurrent,
            search_space=load_search_space(search_space) if search_space else None,
            scheduler=scheduler,
            search=search,
            resources_per_trial=parse_resources(resources_per_trial),
            address=address,
        )
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        fail(error)
    click.echo(
        format_summary(pd.DataFrame(summary["trials"]), summary["metric"], summary["best_model"])
    )
    click.echo(
        f"Best config: {summary['best_config']}\nResults: {summary['results_csv']}, "
        f"{summary['plot']} ({summary['elapsed_s']:.0f}s)"
    )
