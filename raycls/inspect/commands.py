"""The `raycls explain` and `raycls report` commands (registered in raycls/cli.py)."""

from __future__ import annotations

import json

import click


@click.command("explain")
@click.argument("model_dir")
@click.argument("input")
@click.option("--out", "out_dir", required=True, help="Folder or URI for PNGs, Parquet, HTML.")
@click.option(
    "--n",
    type=click.IntRange(min=1),
    default=16,
    show_default=True,
    help="Images to explain (a seeded sample of an image folder).",
)
@click.option(
    "--method",
    type=click.Choice(["gradcam", "occlusion"]),
    default="gradcam",
    show_default=True,
    help="Heat map: Grad-CAM (fast, coarse) or occlusion.",
)
@click.option(
    "--text-column",
    default="text",
    show_default=True,
    help="Text the input carries (Parquet column, metadata.parquet column).",
)
@click.option("--seed", type=int, default=0, show_default=True)
def explain_cmd(
    model_dir: str, input: str, out_dir: str, n: int, method: str, text_column: str, seed: int
) -> None:
    """Explain MODEL_DIR's predictions on INPUT: heat maps, text vs image share, top tokens."""
    from raycls.inspect.explain import explain

    try:
        summary = explain(model_dir, input, out_dir, n, method, seed=seed, text_column=text_column)
    except (ValueError, FileNotFoundError) as error:
        raise click.ClickException(str(error)) from error
    click.echo(json.dumps(summary, indent=2))


@click.command("report")
@click.argument("out_dir")
@click.option(
    "--out", "page", default=None, help="HTML file to write (default: OUT_DIR/report.html)."
)
@click.option(
    "--thumbnails",
    type=click.IntRange(min=0),
    default=6,
    show_default=True,
    help="Thumbnails per label for the highest and for the lowest scores.",
)
def report_cmd(out_dir: str, page: str | None, thumbnails: int) -> None:
    """A browsable HTML report of a `raycls classify` OUT_DIR (local or s3://)."""
    from raycls.inspect.report import write_report

    try:
        summary = write_report(out_dir, page, thumbnails=thumbnails)
    except (ValueError, FileNotFoundError) as error:
        raise click.ClickException(str(error)) from error
    click.echo(json.dumps(summary, indent=2))
