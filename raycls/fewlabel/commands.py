"""`raycls self-train` and `raycls select`: the few-labels commands."""

from __future__ import annotations

import json

import click

from raycls.cli_common import SettingOption, fail, load_settings
from raycls.config import PSEUDO_AUGMENTS
from raycls.train.commands import train_cmd

# Every setting flag of `raycls train`, --config, --address and the overrides apply to each
# round's training, under the same names.
_SHARED = [
    p
    for p in train_cmd.params
    if isinstance(p, SettingOption) or p.name in ("config_file", "address", "overrides")
]


@click.command("self-train", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("labeled")
@click.option("--unlabeled", required=True, help="The pool: any input `raycls classify` reads.")
@click.option("--out", required=True, help="Run folder (path or URI); rerun to resume.")
@click.option("--val", "val_data", default=None, help="Validation data (default: held out).")
@click.option("--rounds", type=click.IntRange(1, 50), default=3, show_default=True)
@click.option(
    "--threshold",
    type=click.FloatRange(0, 1, max_open=True),
    default=0.9,
    show_default=True,
    help="Keep predictions scoring at least this.",
)
@click.option(
    "--per-class-quota",
    type=click.IntRange(min=1),
    default=None,
    help="At most this many pseudo-labels per class and round (highest scores first).",
)
@click.option(
    "--pseudo-weight",
    type=click.FloatRange(0, 1, min_open=True),
    default=None,
    help="Loss weight of pseudo-labelled rows, in (0, 1]; labelled rows weigh 1.0. "
    "Default: SelfTrainSettings' (README, Self-training).",
)
@click.option(
    "--pseudo-augment",
    type=click.Choice(PSEUDO_AUGMENTS),
    default=None,
    help="strong: RandAugment on pseudo-labelled rows, on top of the usual augmentation, "
    "as in Noisy Student; same: the usual one. Default: SelfTrainSettings' (README).",
)
def self_train_cmd(
    labeled: str,
    unlabeled: str,
    out: str,
    val_data: str | None,
    rounds: int,
    threshold: float,
    per_class_quota: int | None,
    pseudo_weight: float | None,
    pseudo_augment: str | None,
    config_file: str | None,
    address: str | None,
    overrides: tuple[str, ...],
    **_settings: object,
) -> None:
    """Self-train on LABELED plus confident predictions on the unlabelled pool, round by round.

    Round 0 trains on LABELED; each later round classifies the pool with the last model, keeps
    confident predictions as pseudo-labels and trains again. The best round's model ends in
    OUT/model; OUT/rounds.json holds the table of rounds.
    """
    from raycls.fewlabel.selftrain import SelfTrainSettings, self_train

    try:
        config = load_settings(config_file, overrides)
        given = {"pseudo_weight": pseudo_weight, "pseudo_augment": pseudo_augment}
        settings = SelfTrainSettings(
            rounds, threshold, per_class_quota, **{k: v for k, v in given.items() if v is not None}
        )
        result = self_train(
            config, labeled, unlabeled, out, val=val_data, settings=settings,
            address=address, echo=click.echo,
        )  # fmt: skip
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        fail(error)
    click.echo(format_rounds(result["rounds"]))
    click.echo(f"Best round: {result['best_round']}; model: {result['model_dir']}")


self_train_cmd.params.extend(_SHARED)


def format_rounds(rounds: list[dict]) -> str:
    """The rounds table as text: pseudo-labels, their precision when known, val accuracy."""
    lines = [f"{'round':>5} {'pseudo':>7} {'precision':>9} {'val_acc':>8}  per class"]
    for r in rounds:
        precision = r.get("pseudo_precision")
        lines.append(
            f"{r['round']:>5} {r['pseudo_labels']:>7} "
            f"{'-' if precision is None else f'{precision:.3f}':>9} {r['val_accuracy']:>8.4f}  "
            + json.dumps(r["per_class"], sort_keys=True)
        )
    return "\n".join(lines)


@click.command("select", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("out_dir")
@click.option("--n", "n", type=click.IntRange(min=1), required=True, help="Rows to pick.")
@click.option(
    "--strategy",
    type=click.Choice(["margin", "entropy", "least-confident"]),
    default="margin",
    show_default=True,
)
@click.option("--per-class", is_flag=True, help="Spread the picks over the predicted labels.")
@click.option("--out", required=True, help="A .csv or .parquet file of the picked rows.")
def select_cmd(out_dir: str, n: int, strategy: str, per_class: bool, out: str) -> None:
    """Pick the N rows of a classify OUT_DIR most worth labelling, most uncertain first."""
    from raycls.fewlabel.select import select_rows, write_selection

    try:
        picked = select_rows(out_dir, n, strategy, per_class)
        write_selection(picked, out, out_dir)
    except (ValueError, FileNotFoundError) as error:
        fail(error)
    click.echo(f"{picked.num_rows} rows ({strategy}) written to {out}")
