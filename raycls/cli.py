"""The `raycls` command: parses arguments, loads settings, calls the library. No logic here."""

from __future__ import annotations

import json
import logging
import sys

import click

from raycls.config import load_config

OVERRIDES_HELP = "Settings as section.key=value (e.g. train.lr=3e-4 model.hidden_dim=128)."


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


def _fail(error: Exception) -> None:
    raise click.ClickException(str(error)) from error


address_option = click.option(
    "--address",
    default=None,
    envvar="RAY_ADDRESS",
    help="Ray cluster address; without one a local Ray is started on the spot.",
)
config_option = click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="YAML file of settings (sections model, data, train, classify).",
)
overrides_argument = click.argument("overrides", nargs=-1)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@click.version_option(package_name="raycls")
def cli(verbose: bool) -> None:
    """Classify images at cluster scale with a fused CNN + language-model classifier."""
    _setup_logging(verbose)


@cli.command("make-dataset")
@click.argument("kind", type=click.Choice(["shapes", "digits"]))
@click.argument("out", type=click.Path(file_okay=False))
@click.option(
    "--per-class",
    type=click.IntRange(min=1),
    default=None,
    help="Training images per class (val/test scale with it).",
)
@click.option("--size", type=click.IntRange(min=8), default=None, help="Image side in pixels.")
@click.option("--seed", type=int, default=0, show_default=True)
def make_dataset_cmd(
    kind: str, out: str, per_class: int | None, size: int | None, seed: int
) -> None:
    """Write a demo data set to OUT/{train,val,test} (ImageFolder + metadata.parquet)."""
    from raycls.demo.datasets import make_dataset

    try:
        summary = make_dataset(kind, out, per_class=per_class, size=size, seed=seed)
    except ValueError as error:
        _fail(error)
    click.echo(json.dumps(summary, indent=2, default=str))


@cli.command("quickstart")
@click.option(
    "--workdir",
    type=click.Path(file_okay=False),
    default="quickstart",
    show_default=True,
    help="Where data, model, report and predictions go.",
)
@address_option
@config_option
@overrides_argument
def quickstart_cmd(
    workdir: str, address: str | None, config_file: str | None, overrides: tuple[str, ...]
) -> None:
    """Make `shapes`, train a fused model, evaluate it, bulk-classify into Parquet."""
    from raycls.demo.quickstart import QUICKSTART_CONFIG, run_quickstart

    try:
        config = load_config(config_file or QUICKSTART_CONFIG, overrides)
        run_quickstart(workdir, config=config, address=address, echo=click.echo)
    except ValueError as error:
        _fail(error)


job_address_option = click.option(
    "--address",
    default=None,
    help="Ray dashboard URL, e.g. http://127.0.0.1:8265 (default: $RAY_ADDRESS).",
)


def _echo_log(chunk: str) -> None:
    click.echo(chunk, nl=False)


@cli.command(
    "submit",
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
)
@job_address_option
@click.option(
    "--wait/--no-wait",
    default=True,
    show_default=True,
    help="Follow the job's logs and exit with its outcome; else print its id.",
)
@click.option(
    "--working-dir",
    type=click.Path(exists=True, file_okay=False),
    default=None,
    help="Folder uploaded as the job's working dir (default: this source checkout).",
)
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.pass_context
def submit_cmd(
    ctx: click.Context,
    address: str | None,
    wait: bool,
    working_dir: str | None,
    command: tuple[str, ...],
) -> None:
    """Run a raycls COMMAND on a Ray cluster as a job: raycls submit -- classify ..."""
    from raycls.cluster.submit import JobError, submit_job

    try:
        outcome = submit_job(
            list(command), address=address, wait=wait, working_dir=working_dir, on_log=_echo_log
        )
    except (ValueError, JobError) as error:
        _fail(error)
    if not wait:
        click.echo(outcome.job_id)
        return
    if outcome.exit_code:
        click.echo(f"Job {outcome.job_id} {outcome.status}: {outcome.message}", err=True)
    else:
        click.echo(f"Job {outcome.job_id} {outcome.status}.", err=True)
    ctx.exit(outcome.exit_code)


@cli.group("jobs")
def jobs_group() -> None:
    """List, read and stop jobs on a Ray cluster."""


@jobs_group.command("list")
@job_address_option
def jobs_list_cmd(address: str | None) -> None:
    """The cluster's jobs, oldest first: id, status, start time, entrypoint."""
    import time

    from raycls.cluster.submit import JobError, list_jobs

    try:
        rows = list_jobs(address)
    except (ValueError, JobError) as error:
        _fail(error)
    for row in rows:
        started = row["start_time"]
        when = (
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started / 1000)) if started else "-"
        )
        click.echo(f"{row['job_id']:<28} {row['status']:<9} {when}  {row['entrypoint']}")


@jobs_group.command("logs")
@click.argument("job_id")
@job_address_option
@click.option("-f", "--follow", is_flag=True, help="Keep streaming until the job ends.")
def jobs_logs_cmd(job_id: str, address: str | None, follow: bool) -> None:
    """Print the logs of JOB_ID."""
    from raycls.cluster.submit import JobError, job_logs

    try:
        job_logs(job_id, _echo_log, address=address, follow=follow)
    except (ValueError, JobError) as error:
        _fail(error)


@jobs_group.command("stop")
@click.argument("job_id")
@job_address_option
def jobs_stop_cmd(job_id: str, address: str | None) -> None:
    """Stop JOB_ID."""
    from raycls.cluster.submit import JobError, stop_job

    try:
        stopped = stop_job(job_id, address=address)
    except (ValueError, JobError) as error:
        _fail(error)
    click.echo(f"Stopping job {job_id}." if stopped else f"Job {job_id} was not running.")


@cli.command("classify")
@click.argument("input")
@click.option("--model", "model_dir", required=True, help="Model directory from `raycls train`.")
@click.option("--out", "out_dir", required=True, help="Output folder or URI (s3://, gs://).")
@click.option(
    "--captioner", default=None, help="Hub id or local dir of an image-to-text model, or none."
)
@click.option("--caption-prompt", default=None, help="Text captions start from, e.g. 'a photo of'.")
@click.option(
    "--text-column", default=None, help="Text the input carries (alt-text); captions fill gaps."
)
@click.option("--id-column", default=None, help="Parquet column used as the row id.")
@click.option("--top-k", type=click.IntRange(min=1), default=None)
@click.option("--batch-size", type=click.IntRange(min=1), default=None)
@click.option("--caption-batch-size", type=click.IntRange(min=1), default=None)
@click.option("--classify-actors", type=click.IntRange(min=1), default=None)
@click.option("--caption-actors", type=click.IntRange(min=1), default=None)
@click.option(
    "--cpus-per-actor",
    type=click.FloatRange(min=0),
    default=None,
    help="CPUs (and torch threads) per classification actor.",
)
@click.option(
    "--caption-cpus",
    type=click.FloatRange(min=0),
    default=None,
    help="CPUs (and torch threads) per captioning actor.",
)
@click.option(
    "--num-gpus",
    type=click.FloatRange(min=0),
    default=None,
    help="GPUs per classification actor; fractions share a GPU.",
)
@click.option(
    "--caption-gpus",
    type=click.FloatRange(min=0),
    default=None,
    help="GPUs per captioning actor; fractions share a GPU.",
)
@click.option(
    "--shard-size",
    type=click.IntRange(min=1),
    default=None,
    help="Input rows per output Parquet file.",
)
@click.option("--overwrite", is_flag=True, help="Delete results of a different earlier run.")
@config_option
@address_option
@overrides_argument
def classify_cmd(
    input: str,
    model_dir: str,
    out_dir: str,
    overwrite: bool,
    config_file: str | None,
    address: str | None,
    overrides: tuple[str, ...],
    **options: object,
) -> None:
    """Classify every image of INPUT (folder, .txt list, Parquet, .tar) into Parquet."""
    from raycls.bulk.pipeline import classify

    names = {
        "cpus_per_actor": "cpus_per_classify_actor",
        "caption_cpus": "cpus_per_caption_actor",
        "num_gpus": "gpus_per_classify_actor",
        "caption_gpus": "gpus_per_caption_actor",
    }
    given = {names.get(k, k): v for k, v in options.items() if v is not None}
    try:
        config = load_config(config_file, overrides, classify=given).classify
        summary = classify(input, model_dir, out_dir, config, overwrite=overwrite, address=address)
    except (ValueError, FileNotFoundError) as error:
        _fail(error)
    click.echo(json.dumps(summary, indent=2))


@cli.command("train")
@click.argument("data")
@click.option(
    "--out", required=True, help="Model directory (path or s3://, gs://); rerun to resume."
)
@click.option(
    "--val",
    "val_data",
    default=None,
    help="Validation data; default: hold out data.val_fraction of DATA.",
)
@click.option("--epochs", type=click.IntRange(min=1), default=None)
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Per worker.")
@click.option("--lr", type=click.FloatRange(min=0), default=None)
@click.option(
    "--fusion", default=None, help="concat, gated, film, cross_attention, image_only, ..."
)
@click.option("--backbone", default=None, help="torchvision CNN name, e.g. resnet18.")
@click.option("--text-encoder", default=None, help="Hub id, local model directory, or none.")
@click.option("--num-workers", type=click.IntRange(min=1), default=None)
@click.option("--use-gpu", is_flag=True, default=False, help="One GPU per worker (NCCL, bf16).")
@click.option("--cpus-per-worker", type=click.FloatRange(min=0), default=None)
@click.option("--gpus-per-worker", type=click.FloatRange(min=0), default=None)
@config_option
@address_option
@overrides_argument
def train_cmd(
    data: str,
    out: str,
    val_data: str | None,
    config_file: str | None,
    address: str | None,
    overrides: tuple[str, ...],
    **options: object,
) -> None:
    """Train on DATA (ImageFolder or labelled Parquet); the best model goes to --out."""
    from raycls.train.trainer import describe_validation, fit

    model_keys = ("fusion", "backbone", "text_encoder")
    given = {k: v for k, v in options.items() if v is not None and v is not False}
    try:
        config = load_config(
            config_file,
            overrides,
            model={k: v for k, v in given.items() if k in model_keys},
            train={k: v for k, v in given.items() if k not in model_keys},
        )
        result = fit(config, data, out, val_data=val_data, address=address)
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        _fail(error)
    click.echo(
        f"{'Already trained' if result.get('already_finished') else 'Trained'}: best epoch "
        f"{result['best_epoch']} of {result['epochs_run']}, val_accuracy "
        f"{result['val_accuracy']:.4f}, val_macro_f1 {result['val_macro_f1']:.4f} "
        f"({result['val_count']} examples {describe_validation(result['data'], val_data)}), "
        f"{result['elapsed_s']:.0f}s\n"
        f"Model: {result['model_dir']} (metrics.json, history.json)"
    )


@cli.command("evaluate")
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("data")
@click.option(
    "--out",
    "out_dir",
    default=None,
    help="Report folder: metrics.json, confusion_matrix.png (default: MODEL_DIR/evaluation).",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@address_option
def evaluate_cmd(
    model_dir: str, data: str, out_dir: str | None, batch_size: int, address: str | None
) -> None:
    """Score the model in MODEL_DIR on labelled DATA; print a short table."""
    from raycls.io.storage import join
    from raycls.train.evaluation import evaluate, format_report

    out_dir = out_dir or join(model_dir, "evaluation")
    try:
        metrics = evaluate(model_dir, data, out_dir, batch_size=batch_size, address=address)
    except (ValueError, FileNotFoundError) as error:
        _fail(error)
    click.echo(format_report(metrics))
    click.echo(f"\nReport: {metrics['report_dir']} (metrics.json, confusion_matrix.png)")


@cli.command("tune")
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
@click.option(
    "--epochs",
    type=click.IntRange(min=1),
    default=5,
    show_default=True,
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
@click.option(
    "--metric",
    type=click.Choice(["val_accuracy", "val_macro_f1"]),
    default="val_accuracy",
    show_default=True,
)
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
    search_space: str | None,
    resources_per_trial: str | None,
    config_file: str | None,
    address: str | None,
    overrides: tuple[str, ...],
    **options: object,
) -> None:
    """Search hyperparameters on DATA with Ray Tune; the best model goes to OUT/best_model."""
    import pandas as pd

    from raycls.tune.resources import parse_resources
    from raycls.tune.results import format_summary
    from raycls.tune.space import load_search_space
    from raycls.tune.sweep import run_sweep

    try:
        config = load_config(config_file, overrides)
        summary = run_sweep(
            config,
            data,
            val_data,
            out,
            search_space=load_search_space(search_space) if search_space else None,
            resources_per_trial=parse_resources(resources_per_trial),
            address=address,
            **options,
        )
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        _fail(error)
    click.echo(
        format_summary(pd.DataFrame(summary["trials"]), summary["metric"], summary["best_model"])
    )
    click.echo(
        f"Best config: {summary['best_config']}\nResults: {summary['results_csv']}, "
        f"{summary['plot']} ({summary['elapsed_s']:.0f}s)"
    )


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    cli.main(args=argv, prog_name="raycls", standalone_mode=True)


if __name__ == "__main__":
    main(sys.argv[1:])
