"""`raycls make-dataset` and `raycls quickstart`."""

from __future__ import annotations

import json

import click

from raycls.cli_common import (
    address_option,
    config_option,
    fail,
    load_settings,
    overrides_argument,
)


@click.command("make-dataset")
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
        fail(error)
    click.echo(json.dumps(summary, indent=2, default=str))


@click.command("quickstart")
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
        config = load_settings(config_file or QUICKSTART_CONFIG, overrides)
        run_quickstart(workdir, config=config, address=address, echo=click.echo)
    except ValueError as error:
        fail(error)
