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
    from raycls.datasets import make_dataset

    try:
        summary = make_dataset(kind, out, per_class=per_class, size=size, seed=seed)
    except ValueError as error:
        _fail(error)
    click.echo(json.dumps(summary, indent=2, default=str))


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    cli.main(args=argv, prog_name="raycls", standalone_mode=True)


if __name__ == "__main__":
    main(sys.argv[1:])
