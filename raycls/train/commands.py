"""`raycls train` and `raycls evaluate`."""

from __future__ import annotations

import os

import click

from raycls.cli_common import (
    address_option,
    config_option,
    fail,
    load_settings,
    overrides_argument,
    setting,
)
from raycls.config import MODEL_KINDS

val_option = click.option(
    "--val",
    "val_data",
    default=None,
    help="Validation data; default: hold out data.val_fraction of DATA.",
)


@click.command("train")
@click.argument("data")
@click.option(
    "--out", required=True, help="Model directory (path or s3://, gs://); rerun to resume."
)
@val_option
@setting("--epochs", key="train.epochs", type=click.IntRange(min=1))
@setting("--batch-size", key="train.batch_size", type=click.IntRange(min=1), help="Per worker.")
@setting("--lr", key="train.lr", type=click.FloatRange(min=0))
@setting(
    "--fusion",
    key="model.fusion",
    help="auto (image_only when no training example has text, else concat), concat, gated, "
    "film, cross_attention, image_only, text_only.",
)
@setting("--backbone", key="model.backbone", help="torchvision CNN name, e.g. resnet18.")
@setting("--text-encoder", key="model.text_encoder", help="Hub id, local model directory, or none.")
@setting("--num-workers", key="train.num_workers", type=click.IntRange(min=1))
@setting("--use-gpu/--no-use-gpu", key="train.use_gpu", help="One GPU per worker (NCCL, bf16).")
@setting(
    "--cpus-per-worker",
    key="train.cpus_per_worker",
    type=click.FloatRange(min=0),
    help="CPUs each worker reserves (on one machine its torch threads use every core).",
)
@setting("--gpus-per-worker", key="train.gpus_per_worker", type=click.FloatRange(min=0))
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
    **_settings: object,
) -> None:
    """Train on DATA (ImageFolder or labelled Parquet); the best model goes to --out."""
    from raycls.train.trainer import describe_validation, fit

    try:
        config = load_settings(config_file, overrides)
        result = fit(config, data, out, val_data=val_data, address=address)
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        fail(error)
    click.echo(
        f"{'Already trained' if result.get('already_finished') else 'Trained'}: best epoch "
        f"{result['best_epoch']} of {result['epochs_run']}, val_accuracy "
        f"{result['val_accuracy']:.4f}, val_macro_f1 {result['val_macro_f1']:.4f} "
        f"({result['val_count']} examples "
        f"{describe_validation(result.get('data', {}), val_data)}), "
        f"{result['elapsed_s']:.0f}s\n"
        f"Model: {result['model_dir']} (metrics.json, history.json)"
    )


@click.command("evaluate")
@click.argument("model_dir")
@click.argument("data")
@click.option(
    "--out",
    "out_dir",
    default=None,
    help="Report folder or URI: metrics.json, confusion_matrix.png "
    "(default: MODEL_DIR/evaluation).",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option(
    "--model-kind",
    type=click.Choice(MODEL_KINDS),
    default="auto",
    show_default=True,
    help="What MODEL_DIR holds, as for `raycls classify --model-kind`.",
)
@click.option(
    "--labels",
    default=None,
    help="Zero-shot labels: cat,dog,... or a labels.yaml (default: DATA's class names).",
)
@click.option(
    "--trust-remote-code",
    is_flag=True,
    help="Let the model run code shipped with it (only for a model you trust).",
)
@config_option
@address_option
@overrides_argument
def evaluate_cmd(
    model_dir: str,
    data: str,
    out_dir: str | None,
    batch_size: int,
    model_kind: str,
    labels: str | None,
    trust_remote_code: bool,
    config_file: str | None,
    address: str | None,
    overrides: tuple[str, ...],
) -> None:
    """Score the model in MODEL_DIR on labelled DATA (paths or URIs); print a short table.

    DATA is read with the data section's columns and pixel limit (data.image_column=...,
    data.max_pixels=...).
    """
    from raycls.io.storage import is_uri, join
    from raycls.train.evaluation import evaluate, format_report

    if out_dir is None:  # beside a model folder; a hub id's report goes to ./evaluation
        hub_id = not is_uri(model_dir) and not os.path.isdir(model_dir)
        out_dir = "evaluation" if hub_id else join(model_dir, "evaluation")
    try:
        settings = load_settings(config_file, overrides).data
        metrics = evaluate(
            model_dir,
            data,
            out_dir,
            batch_size=batch_size,
            address=address,
            image_column=settings.image_column,
            label_column=settings.label_column,
            text_column=settings.text_column,
            max_pixels=settings.max_pixels,
            model_kind=model_kind,
            labels=labels,
            trust_remote_code=trust_remote_code,
        )
    except (ValueError, FileNotFoundError) as error:
        fail(error)
    click.echo(format_report(metrics))
    click.echo(
        f"\nReport: {metrics['report_dir']} (report.html, metrics.json, confusion_matrix.png)"
    )
