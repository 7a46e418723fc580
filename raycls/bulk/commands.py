"""`raycls classify`: the bulk pipeline from the command line."""

from __future__ import annotations

import json

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

MODEL_HELP = (
    "A `raycls train` directory; a Hugging Face image classifier or image-text model (CLIP, "
    "SigLIP) as folder or hub id; or a text encoder with --model-kind caption."
)


@click.command("classify")
@click.argument("input")
@click.option("--model", "model_dir", required=True, help=MODEL_HELP)
@setting(
    "--model-kind",
    key="classify.model_kind",
    type=click.Choice(MODEL_KINDS),
    help="What --model holds (auto: told from its config.json); caption: a text encoder "
    "comparing alt-text or captions with the labels.",
)
@setting(
    "--labels",
    key="classify.labels",
    help="Zero-shot labels: cat,dog,... or a labels.yaml (descriptions, prompt templates).",
)
@setting(
    "--raw-scores/--softmax-scores",
    key="classify.raw_scores",
    help="Keep raw similarities (zero-shot) or logits instead of softmax scores.",
)
@click.option("--out", "out_dir", required=True, help="Output folder or URI (s3://, gs://).")
@setting(
    "--captioner",
    key="classify.captioner",
    help="Hub id or local dir of an image-to-text model, or none.",
)
@setting(
    "--caption-prompt",
    key="classify.caption_prompt",
    help="Text captions start from, e.g. 'a photo of'.",
)
@setting(
    "--text-column",
    key="classify.text_column",
    help="Text the input carries (alt-text); captions fill gaps.",
)
@setting("--id-column", key="classify.id_column", help="Parquet column used as the row id.")
@setting(
    "--top-k",
    key="classify.top_k",
    type=click.IntRange(min=1),
    help="Labels and scores kept per row (top_k_labels, top_k_scores).",
)
@setting(
    "--batch-size",
    key="classify.batch_size",
    type=click.IntRange(min=1),
    help="Images per forward pass of a classification actor.",
)
@setting(
    "--caption-batch-size",
    key="classify.caption_batch_size",
    type=click.IntRange(min=1),
    help="Images per captioning batch.",
)
@setting(
    "--classify-actors",
    key="classify.classify_actors",
    type=click.IntRange(min=1),
    help="A fixed pool of this many classification actors (default: as many as the "
    "cluster's CPUs or GPUs allow when the job starts, then autoscaling).",
)
@setting(
    "--caption-actors",
    key="classify.caption_actors",
    type=click.IntRange(min=1),
    help="A fixed pool of this many captioning actors (default: sized from the "
    "cluster, then autoscaling).",
)
@setting(
    "--cpus-per-actor",
    key="classify.cpus_per_classify_actor",
    type=click.FloatRange(min=0),
    help="CPUs (and torch threads) per classification actor.",
)
@setting(
    "--caption-cpus",
    key="classify.cpus_per_caption_actor",
    type=click.FloatRange(min=0),
    help="CPUs (and torch threads) per captioning actor.",
)
@setting(
    "--num-gpus",
    key="classify.gpus_per_classify_actor",
    type=click.FloatRange(min=0),
    help="GPUs per classification actor; fractions share a GPU.",
)
@setting(
    "--caption-gpus",
    key="classify.gpus_per_caption_actor",
    type=click.FloatRange(min=0),
    help="GPUs per captioning actor; fractions share a GPU.",
)
@setting(
    "--shard-size",
    key="classify.shard_size",
    type=click.IntRange(min=1),
    help="Input rows per output Parquet file, at most (a small input is cut into 16 shards of "
    ">= 64 rows, to reach several actors).",
)
@click.option("--overwrite", is_flag=True, help="Delete results of a different earlier run.")
@click.option(
    "--retry-errors", is_flag=True, help="Redo the error rows of OUT_DIR (and any missing shards)."
)
@config_option
@address_option
@overrides_argument
def classify_cmd(
    input: str,
    model_dir: str,
    out_dir: str,
    overwrite: bool,
    retry_errors: bool,
    config_file: str | None,
    address: str | None,
    overrides: tuple[str, ...],
    **_settings: object,
) -> None:
    """Classify every image of INPUT (folder, .txt list, Parquet, .tar) into Parquet."""
    from raycls.bulk.pipeline import classify

    try:
        config = load_settings(config_file, overrides).classify
        summary = classify(input, model_dir, out_dir, config, overwrite=overwrite,
                           retry_errors=retry_errors, address=address)  # fmt: skip
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        fail(error)
    click.echo(json.dumps(summary, indent=2))
