"""A finished sweep as data: the results table, its files, the per-epoch plot, a text summary.

Works on two plain frames, so it is testable without Ray:

- trials: one row per trial: `trial_id`, `status` (Tune's: TERMINATED or ERROR), `error`,
  `finished` (the Train run ended on its own rather than being stopped by the scheduler) and
  one column per searched setting (`train.lr`, `model.fusion`, ...).
- history: one row per reported epoch: `trial_id`, `epoch`, the metrics, `checkpoint_path`.
"""

from __future__ import annotations

import io
import logging
import re
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from raycls.io.storage import (
    copy_dir,
    get_filesystem,
    is_dir,
    is_file,
    is_remote,
    join,
    with_scheme,
    write_bytes,
)
from raycls.models.files import CONFIG_FILE

logger = logging.getLogger(__name__)

TERMINATED = "TERMINATED"
EARLY_STOPPED = "EARLY_STOPPED"
ERROR = "ERROR"
RESULTS_PARQUET = "results.parquet"
RESULTS_CSV = "results.csv"
PLOT_FILE = "val_metric_per_epoch.png"
DONE_FILE = "done.json"  # written by raycls.tune.trial when a Train run ends on its own
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b[^:]*:")
SUMMARY_COLUMNS = ("model.fusion", "train.lr", "train.batch_size", "train.weight_decay")


def results_table(
    trials: pd.DataFrame, history: pd.DataFrame, metric: str, max_epochs: int
) -> pd.DataFrame:
    """One row per trial, best first: settings, best metric and epoch, epochs run, status.

    A trial that neither errored, ran `max_epochs`, nor ended its own Train run (early stop on
    patience) was stopped by the scheduler: EARLY_STOPPED.
    """
    rows = []
    for trial in trials.to_dict("records"):
        own = history[history["trial_id"] == trial["trial_id"]] if len(history) else history
        own = own.dropna(subset=[metric]) if metric in own else own.iloc[0:0]
        epochs_run = int(own["epoch"].max()) if len(own) else 0
        best = _best_row(own, metric)
        if trial.get("status") == ERROR:
            status = ERROR
        elif epochs_run >= max_epochs or trial.get("finished"):
            status = TERMINATED
        else:
            status = EARLY_STOPPED
        settings = {k: v for k, v in trial.items() if "." in k}
        rows.append(
            {
                "trial_id": trial["trial_id"],
                **settings,
                f"best_{metric}": None if best is None else float(best[metric]),
                "best_epoch": None if best is None else int(best["epoch"]),
                "epochs_run": epochs_run,
                "status": status,
                "error": trial.get("error") or None,
                "best_checkpoint": None if best is None else best.get("checkpoint_path"),
            }
        )
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    table = table.sort_values(
        [f"best_{metric}", "trial_id"], ascending=[False, True], na_position="last"
    )
    return table.reset_index(drop=True)


def _best_row(history: pd.DataFrame, metric: str) -> dict[str, Any] | None:
    """The best epoch; among equals the earliest whose checkpoint still exists.

    Ray Train keeps the top checkpoints by score, but among equal scores it may keep a later
    one than the first: the exported model must be one that is still there.
    """
    if history.empty:
        return None
    paths = history["checkpoint_path"] if "checkpoint_path" in history else None
    exists = paths.map(_checkpoint_exists) if paths is not None else False
    ranked = history.assign(_exists=exists)
    ranked = ranked.sort_values([metric, "_exists", "epoch"], ascending=[False, False, True])
    return ranked.iloc[0].to_dict()


def _checkpoint_exists(path: Any) -> bool:
    return isinstance(path, str) and is_dir(path)


def best_trial(table: pd.DataFrame, metric: str) -> dict[str, Any] | None:
    """The best trial whose best checkpoint still exists on local disk or storage."""
    for row in table.to_dict("records"):
        if pd.isna(row.get(f"best_{metric}")) or not isinstance(row.get("best_checkpoint"), str):
            continue
        if _checkpoint_exists(row["best_checkpoint"]):
            return row
        logger.warning(
            "best checkpoint %s of trial %s is gone; trying the next trial",
            row["best_checkpoint"],
            row["trial_id"],
        )
    return None


def write_results(table: pd.DataFrame, out: str | Path) -> dict[str, str]:
    """`results.parquet` and `results.csv` in `out` (a folder or URI); returns their paths."""
    paths = {"parquet": join(str(out), RESULTS_PARQUET), "csv": join(str(out), RESULTS_CSV)}
    # Parquet wants one type per column; mixed settings (a choice of ints and strings) and
    # error texts are stored as text there, while the CSV keeps them as written.
    frame = table.copy()
    for column in frame.columns:
        if frame[column].dtype == object:
            frame[column] = frame[column].map(lambda v: None if v is None else str(v))
    parquet = io.BytesIO()
    frame.to_parquet(parquet, index=False)
    write_bytes(paths["parquet"], parquet.getvalue())
    write_bytes(paths["csv"], table.to_csv(index=False).encode())
    return paths


def plot_history(history: pd.DataFrame, table: pd.DataFrame, metric: str, path: str | Path) -> str:
    """PNG of `metric` per epoch, a line per trial; early-stopped lines end in an x."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(9, 5.5))
    for row in table.to_dict("records"):
        own = history[history["trial_id"] == row["trial_id"]] if len(history) else history
        if metric not in own or own[metric].isna().all():
            continue
        own = own.dropna(subset=[metric]).sort_values("epoch").drop_duplicates("epoch", keep="last")
        stopped = row["status"] == EARLY_STOPPED
        (line,) = ax.plot(
            own["epoch"],
            own[metric],
            marker="o",
            markersize=3,
            linestyle="--" if stopped else "-",
            label=_label(row, stopped),
        )
        if stopped:
            ax.plot(
                own["epoch"].iloc[-1],
                own[metric].iloc[-1],
                "x",
                color=line.get_color(),
                markersize=9,
            )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} per epoch ({len(table)} trials; dashed = stopped early)")
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=110)
    plt.close(fig)
    write_bytes(str(path), png.getvalue())
    return str(path)


def _label(row: dict[str, Any], stopped: bool) -> str:
    parts = [str(row["trial_id"])]
    if row.get("model.fusion") is not None:
        parts.append(str(row["model.fusion"]))
    if row.get("train.lr") is not None:
        parts.append(f"lr={float(row['train.lr']):.2g}")
    return " ".join(parts) + (" (stopped)" if stopped else "")


def status_counts(table: pd.DataFrame) -> dict[str, int]:
    """Trials per status (TERMINATED, EARLY_STOPPED, ERROR) in a results table."""
    return {str(k): int(v) for k, v in table["status"].value_counts().items()} if len(table) else {}


def format_summary(table: pd.DataFrame, metric: str, best_model: str | None, top: int = 5) -> str:
    """A few lines for the terminal: counts, the top trials, where the best model is."""
    if table.empty:
        return "no trials ran"
    counts = status_counts(table)
    lines = [
        f"{len(table)} trials: "
        + ", ".join(f"{counts.get(s, 0)} {s}" for s in (TERMINATED, EARLY_STOPPED, ERROR)),
        "",
    ]
    columns = ["trial_id"] + [c for c in SUMMARY_COLUMNS if c in table]
    columns += [f"best_{metric}", "best_epoch", "epochs_run", "status"]
    shown = table.head(top)[columns].copy()
    if "train.lr" in shown:
        shown["train.lr"] = shown["train.lr"].map(lambda v: f"{v:.3g}" if pd.notna(v) else v)
    if "train.weight_decay" in shown:
        shown["train.weight_decay"] = shown["train.weight_decay"].map(
            lambda v: f"{v:.3g}" if pd.notna(v) else v
        )
    lines.append(shown.to_string(index=False))
    errors = table[table["status"] == ERROR]
    for row in errors.head(3).to_dict("records"):
        first = str(row.get("error") or "").strip().splitlines()
        lines.append(f"{row['trial_id']} failed: {first[-1] if first else 'unknown error'}")
    lines.append("")
    lines.append(f"best model: {best_model}" if best_model else "no trial produced a model")
    return "\n".join(lines)


def frames_from_results(
    results: Iterable[Any], keys: list[str], trials_dir: str | Path
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The trials and history frames from Tune `Result`s (a ResultGrid iterates them).

    Checkpoint paths are URIs where `trials_dir` is one.
    """
    trials_dir = str(trials_dir)
    trials, history = [], []
    for result in results:
        trial_id = Path(result.path).name
        flat = {
            f"{section}.{k}": v
            for section, values in (result.config or {}).items()
            if isinstance(values, dict)
            for k, v in values.items()
        }
        trials.append(
            {
                "trial_id": trial_id,
                "status": ERROR if result.error else TERMINATED,
                "error": _error_text(result.error),
                "finished": is_file(join(trials_dir, trial_id, DONE_FILE)),
                **{k: flat.get(k) for k in keys},
            }
        )
        frame = result.metrics_dataframe
        if frame is not None and len(frame) and "epoch" in frame:
            frame = frame.assign(trial_id=trial_id).drop_duplicates("epoch", keep="last")
            if "checkpoint_path" in frame:
                frame["checkpoint_path"] = frame["checkpoint_path"].map(
                    lambda p: with_scheme(p, trials_dir) if isinstance(p, str) else p
                )
            history.append(frame)
    if not history:
        return pd.DataFrame(trials), pd.DataFrame(columns=["trial_id", "epoch"])
    return pd.DataFrame(trials), pd.concat(history, ignore_index=True)


def _error_text(error: BaseException | None, limit: int = 500) -> str | None:
    """The line of an error that names the exception (Ray wraps it in tracebacks)."""
    if error is None:
        return None
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    named = [line for line in lines if _EXCEPTION_LINE.match(line)]
    text = named[-1] if named else f"{type(error).__name__}: {lines[-1] if lines else ''}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def export_model(checkpoint: str, target: str | Path, subdir: str = "model") -> str:
    """Copy a checkpoint's `subdir` (a model directory) to `target`, replacing it whole.

    On object stores, which have no rename, the old files go first and the new config.json
    comes last: a reader finds the new model complete, or no model.
    """
    if is_remote(checkpoint) or is_remote(str(target)):
        return _export_model_remote(checkpoint, str(target), subdir)
    source, target = Path(checkpoint) / subdir, Path(target)
    if not source.is_dir():
        raise RuntimeError(f"checkpoint {checkpoint} holds no {subdir}/ folder")
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(source, partial)
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    return str(target)


def _export_model_remote(checkpoint: str, target: str, subdir: str) -> str:
    source = join(checkpoint, subdir)
    if not is_dir(source):
        raise RuntimeError(f"checkpoint {checkpoint} holds no {subdir}/ folder")
    fs, path = get_filesystem(target)
    if is_file(join(target, CONFIG_FILE)):
        fs.delete_file(join(path, CONFIG_FILE))  # first: what remains is no model
    fs.delete_dir_contents(path, missing_dir_ok=True)
    copy_dir(source, target, last=CONFIG_FILE)
    return target
