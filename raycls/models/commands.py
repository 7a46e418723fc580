"""`raycls describe-labels`: a local language model writes label descriptions into a YAML."""

from __future__ import annotations

import click


@click.command("describe-labels")
@click.argument("labels")
@click.option("--llm", required=True, help="Causal language model: hub id or local folder.")
@click.option("--out", "out_path", required=True, help="The labels YAML to write (or a URI).")
@click.option("--per-label", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=40, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--trust-remote-code", is_flag=True, help="Run code shipped with the model.")
def describe_labels_cmd(
    labels: str,
    llm: str,
    out_path: str,
    per_label: int,
    max_new_tokens: int,
    seed: int,
    trust_remote_code: bool,
) -> None:
    """Write N visual descriptions per label of LABELS (cat,dog or a labels.yaml) to --out.

    Edit the YAML freely, then pass it to classify or evaluate as --labels.
    """
    from raycls.io.storage import check_output_file
    from raycls.models.describe import describe_labels
    from raycls.models.labels import load_labels, save_labels

    try:
        check_output_file(out_path, (".yaml", ".yml"))  # before the language model's minutes
        described = describe_labels(
            load_labels(labels), llm, per_label, seed=seed, max_new_tokens=max_new_tokens,
            trust_remote_code=trust_remote_code,
        )  # fmt: skip
        save_labels(described, out_path)
    except ValueError as error:
        raise click.ClickException(str(error)) from error
    total = sum(len(label.descriptions) for label in described.labels)
    click.echo(f"{out_path}: {len(described.labels)} labels, {total} descriptions")
