"""Sweeps: search-space validation, resource planning and result export (unit, no Ray), then
small sweeps on a local Ray (integration) and a kill-and-resume run of the CLI (slow)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from raycls.cli import cli
from raycls.config import Config, load_config
from raycls.tune.resources import parse_resources, plan_trials
from raycls.tune.results import (
    EARLY_STOPPED,
    ERROR,
    TERMINATED,
    best_trial,
    format_summary,
    plot_history,
    results_table,
    write_results,
)
from raycls.tune.space import (
    DEFAULT_SEARCH_SPACE,
    apply_params,
    build_search_space,
    load_search_space,
)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_YAML = REPO / "raycls" / "demo" / "configs" / "search" / "default.yaml"


# Search space: unit tests, no Ray.


def test_default_space_yaml_validates_and_matches_the_code():
    spec = load_search_space(DEFAULT_YAML)
    assert spec == DEFAULT_SEARCH_SPACE
    space = build_search_space(spec, Config(), use_default=False)
    assert {p.kind for p in space.values()} == {"loguniform", "choice"}
    assert space["model.fusion"].values == ("concat", "gated", "film", "cross_attention")


def test_user_space_overrides_and_extends_the_default():
    space = build_search_space(
        {
            "model.fusion": "gated",
            "model": {"dropout": {"uniform": [0.0, 0.3]}},
            "model.hidden_dim": {"randint": [16, 64]},
        },
        Config(),
    )
    assert space["model.fusion"].kind == "fixed" and space["model.fusion"].values == ("gated",)
    assert space["model.dropout"].values == (0.0, 0.3)
    assert space["model.hidden_dim"].values == (16, 64)
    assert space["train.lr"].kind == "loguniform"  # kept from the default


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"train.lrr": {"loguniform": [1e-4, 1e-2]}}, "not a setting of 'train'"),
        ({"lr": 0.1}, "not a config path"),
        ({"optimizer.lr": 0.1}, "not a config path"),
        ({"model.fusion": {"choice": ["concat", "sum"]}}, "model.fusion: value 'sum' is invalid"),
        ({"model.fusion": {"choice": []}}, "non-empty list"),
        ({"train.lr": {"loguniform": [0, 1e-2]}}, "loguniform bounds must be > 0"),
        ({"train.lr": {"loguniform": [1e-2, 1e-4]}}, "lower < upper"),
        ({"train.lr": {"uniform": [0.1, 0.1]}}, "lower < upper"),
        ({"train.lr": {"normal": [0, 1]}}, "must be one distribution"),
        ({"train.lr": {"uniform": [0, 1], "choice": [1]}}, "must be one distribution"),
        ({"train.lr": {"uniform": "0..1"}}, "needs [lower, upper] numbers"),
        ({"train.lr": [1e-3, 1e-4]}, "{choice:"),
        ({"train.batch_size": {"loguniform": [8, 64]}}, "use randint or choice"),
        ({"train.batch_size": {"randint": [0, 64]}}, "train.batch_size=0 must be >= 1"),
        ({"model.dropout": {"uniform": [0.0, 1.5]}}, "model.dropout=1.5 must be in"),
        ({"model.dropout": {"randint": [0, 1]}}, "randint needs an integer setting"),
        ({"train.epochs": {"choice": [1, 2]}}, "--epochs"),
        ({"model.image_size": {"choice": [32, 64]}}, "cannot be searched"),
        ({"classify.top_k": 3}, "cannot be searched"),
        ({"train": {"choice": [1]}}, "is a config section"),
    ],
)
def test_invalid_space_entries_name_the_key_and_the_fix(entry, message):
    with pytest.raises(ValueError) as raised:
        build_search_space(entry, Config())
    assert message in str(raised.value)


def test_grid_runs_every_value_num_samples_times():
    from ray import tune

    from raycls.tune.search import param_space
    from raycls.tune.space import count_trials

    space = build_search_space({"model.fusion": {"grid": ["concat", "gated"]}}, Config())
    assert count_trials(space, num_samples=3) == 6
    assert param_space(space)["model"]["fusion"] == tune.grid_search(["concat", "gated"])
    with pytest.raises(ValueError, match="model.fusion: value 'sum'"):
        build_search_space({"model.fusion": {"grid": ["concat", "sum"]}}, Config())


def test_optuna_refuses_a_grid_before_ray(tmp_path):
    from raycls.tune.sweep import run_sweep

    with pytest.raises(ValueError, match="runs no grid"):
        run_sweep(Config(), str(tmp_path), None, str(tmp_path / "out"), search="optuna",
                  search_space={"model.fusion": {"grid": ["concat", "gated"]}})  # fmt: skip


def test_choice_values_are_checked_against_the_base_config():
    base = load_config(None, model={"fusion": "image_only", "text_encoder": "none"})
    with pytest.raises(ValueError, match="needs a text encoder"):
        build_search_space(None, base)  # the default space samples text fusions
    space = build_search_space({"model.fusion": "image_only"}, base)
    assert apply_params(base, {"train.lr": 0.01}).train.lr == 0.01
    assert space["model.fusion"].kind == "fixed"


@pytest.mark.parametrize(
    ("model", "space", "data", "message"),
    [
        ({}, {"model.fusion": {"choice": ["sum"]}}, "", "model.fusion: value 'sum'"),
        ({"backbone": "resnet_18"}, None, "", "not a supported torchvision backbone"),
        ({}, None, "no_such_data", "no_such_data' does not exist"),
    ],
)
def test_bad_settings_fail_before_ray_or_any_trial(tmp_path, monkeypatch, model, space, data,
                                                   message):  # fmt: skip
    import raycls.tune.sweep as tune_module

    def no_ray(address):
        raise AssertionError("Ray must not start for invalid settings")

    monkeypatch.setattr(tune_module, "_init_ray", no_ray)
    out = tmp_path / "sweep"
    with pytest.raises(ValueError, match=message):
        tune_module.run_sweep(
            Config().replace(model=model),
            str(tmp_path / data),
            None,
            str(out),
            num_samples=2,
            epochs=1,
            search_space=space,
        )
    assert not out.exists()


def test_cli_reports_a_bad_search_space_file_before_starting(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"train.lr": {"loguniform": [0.0, 0.1]}}))
    out = tmp_path / "sweep"
    result = CliRunner().invoke(
        cli, ["tune", str(tmp_path), "--out", str(out), "--search-space", str(space)]
    )
    assert result.exit_code != 0
    assert "train.lr: loguniform bounds must be > 0" in result.output
    assert not out.exists()


def test_param_space_turns_params_into_tune_domains():
    from ray import tune

    from raycls.tune.search import param_space

    space = build_search_space({"model.hidden_dim": {"randint": [16, 64]}}, Config())
    nested = param_space(space)
    assert isinstance(nested["train"]["lr"], tune.search.sample.Float)
    assert nested["model"]["hidden_dim"].upper == 65  # inclusive upper bound in our YAML
    assert nested["model"]["fusion"].categories == ["concat", "gated", "film", "cross_attention"]


def test_optuna_searcher_samples_the_space():
    pytest.importorskip("optuna")
    from raycls.tune.search import make_searcher, param_space

    space = build_search_space({"model.hidden_dim": {"randint": [16, 64]}}, Config())
    searcher = make_searcher("optuna", seed=0, max_concurrent=2)
    assert searcher.set_search_properties("val_accuracy", "max", param_space(space))
    sampled = searcher.suggest("t1")
    config = apply_params(Config(), sampled)
    assert config.model.fusion in ("concat", "gated", "film", "cross_attention")
    assert 16 <= config.model.hidden_dim <= 64 and 1e-4 <= config.train.lr <= 3e-3


# Resources: unit tests with a made-up cluster.


def test_pure_modules_import_no_ray():
    """Planning and search spaces are plain functions: importing them starts no Ray import."""
    import subprocess
    import sys

    code = (
        "import sys, raycls.tune.resources, raycls.tune.space, raycls.config, raycls.cli_common\n"
        "assert 'ray' not in sys.modules, sorted(m for m in sys.modules if m.startswith('ray.'))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_parse_resources_accepts_pairs_and_json():
    assert parse_resources("cpu=1, gpu=0") == {"cpu": 1.0, "gpu": 0.0}
    assert parse_resources('{"cpu": 0.5, "accel": 1}') == {"cpu": 0.5, "accel": 1.0}
    assert parse_resources(None) is None
    for bad in ("cpu", "cpu=x", "cpu=-1", "[1]"):
        with pytest.raises(ValueError, match="resources"):
            parse_resources(bad)


def test_plan_clips_concurrency_to_the_cluster_keeping_a_cpu_for_data(caplog):
    config = Config()  # one worker with 1 CPU per trial
    plan = plan_trials(config, None, 4, {"CPU": 2.0})
    assert plan.max_concurrent == 1 and "running 1 at a time" in caplog.text
    plan = plan_trials(config, {"cpu": 0.5}, 2, {"CPU": 2.0})
    assert plan.max_concurrent == 2 and plan.cpus_per_worker == 0.5
    assert plan.max_concurrent * plan.per_trial["CPU"] + 1.0 <= 2.0
    assert plan.data_cpus == 0.5
    two = config.replace(train={"num_workers": 2})
    plan = plan_trials(two, {"cpu": 2, "gpu": 1}, 8, {"CPU": 16.0, "GPU": 2.0})
    assert (plan.max_concurrent, plan.cpus_per_worker, plan.gpus_per_worker) == (2, 1.0, 0.5)
    assert plan.use_gpu


def test_plan_rejects_a_trial_larger_than_the_cluster():
    with pytest.raises(ValueError, match="one trial needs 1 GPU"):
        plan_trials(Config(), {"gpu": 1}, 1, {"CPU": 8.0})
    with pytest.raises(ValueError, match="cpu=0.5"):
        plan_trials(Config(), {"cpu": 4}, 1, {"CPU": 2.0})


# Results: unit tests on made-up frames.


def _fake_frames(tmp_path):
    ckpt = tmp_path / "ckpt"
    for name in ("a2", "b2", "c1"):
        (ckpt / name / "model").mkdir(parents=True)
    trials = pd.DataFrame(
        [
            {
                "trial_id": "a",
                "status": "TERMINATED",
                "error": None,
                "finished": True,
                "model.fusion": "concat",
                "train.lr": 1e-3,
            },
            {
                "trial_id": "b",
                "status": "TERMINATED",
                "error": None,
                "finished": True,
                "model.fusion": "gated",
                "train.lr": 3e-4,
            },
            {
                "trial_id": "c",
                "status": "TERMINATED",
                "error": None,
                "finished": False,
                "model.fusion": "film",
                "train.lr": 1e-4,
            },
            {
                "trial_id": "d",
                "status": "ERROR",
                "error": "ValueError: boom",
                "finished": False,
                "model.fusion": "concat",
                "train.lr": 2e-3,
            },
        ]
    )
    rows = [
        ("a", 1, 0.5, None),
        ("a", 2, 0.7, ckpt / "a2"),
        ("b", 1, 0.6, None),
        ("b", 2, 0.9, ckpt / "b2"),
        ("c", 1, 0.2, ckpt / "c1"),
    ]
    history = pd.DataFrame(
        [
            {
                "trial_id": t,
                "epoch": e,
                "val_accuracy": v,
                "val_macro_f1": v / 2,
                "checkpoint_path": None if c is None else str(c),
            }
            for t, e, v, c in rows
        ]
    )
    return trials, history


def test_a_trial_that_raised_fails_its_retries_at_once(tmp_path, monkeypatch):
    """Tune retries trials (a driver dies with its node); one that raised is not retrained."""
    import ray.tune
    import ray.tune.integration.ray_train

    import raycls.train.trainer
    from raycls.tune import trial

    builds = []

    def build_trainer(config, *args, **kwargs):
        builds.append(config)
        raise ValueError("model.backbone='nope' is not a supported torchvision backbone")

    monkeypatch.setattr(raycls.train.trainer, "build_trainer", build_trainer)
    context = type("Context", (), {"get_trial_id": lambda self: "t1"})()
    monkeypatch.setattr(ray.tune, "get_context", lambda: context)
    monkeypatch.setattr(ray.tune.integration.ray_train, "TuneReportCallback", object)
    base = Config().to_dict()
    for _ in range(2):
        with pytest.raises(RuntimeError, match="ValueError: model.backbone='nope'"):
            trial.run_trial({}, base=base, data=None, trials_dir=str(tmp_path))
    assert len(builds) == 1  # the retry read the first failure instead of building again
    assert (tmp_path / "t1" / trial.STARTS_FILE).read_text().count("\n") == 2


def test_results_table_ranks_trials_and_names_their_status(tmp_path):
    trials, history = _fake_frames(tmp_path)
    table = results_table(trials, history, "val_accuracy", max_epochs=2)
    assert list(table["trial_id"]) == ["b", "a", "c", "d"]
    assert dict(zip(table["trial_id"], table["status"], strict=True)) == {
        "a": TERMINATED,
        "b": TERMINATED,
        "c": EARLY_STOPPED,
        "d": ERROR,
    }
    assert list(table["epochs_run"]) == [2, 2, 1, 0]
    assert table.loc[0, "best_val_accuracy"] == 0.9 and table.loc[0, "best_epoch"] == 2
    assert table.loc[3, "error"] == "ValueError: boom"
    assert math.isnan(table.loc[3, "best_val_accuracy"])
    assert best_trial(table, "val_accuracy")["trial_id"] == "b"


def test_best_trial_skips_a_trial_whose_checkpoint_is_gone(tmp_path):
    trials, history = _fake_frames(tmp_path)
    table = results_table(trials, history, "val_accuracy", max_epochs=2)
    (tmp_path / "ckpt" / "b2" / "model").rmdir()
    (tmp_path / "ckpt" / "b2").rmdir()
    assert best_trial(table, "val_accuracy")["trial_id"] == "a"


def test_best_epoch_among_equals_is_one_whose_checkpoint_is_kept(tmp_path):
    kept = tmp_path / "e2"
    kept.mkdir()
    trials = pd.DataFrame([{"trial_id": "a", "status": TERMINATED, "finished": False}])
    history = pd.DataFrame(
        [
            {
                "trial_id": "a",
                "epoch": 1,
                "val_accuracy": 0.7,
                "checkpoint_path": str(tmp_path / "e1"),
            },
            {"trial_id": "a", "epoch": 2, "val_accuracy": 0.7, "checkpoint_path": str(kept)},
        ]
    )
    row = results_table(trials, history, "val_accuracy", max_epochs=2).iloc[0]
    assert (row["best_epoch"], row["best_checkpoint"]) == (2, str(kept))


def test_results_files_plot_and_summary(tmp_path):
    trials, history = _fake_frames(tmp_path)
    table = results_table(trials, history, "val_macro_f1", max_epochs=2)
    paths = write_results(table, tmp_path / "out")
    back = pd.read_parquet(paths["parquet"])
    assert list(back["trial_id"]) == ["b", "a", "c", "d"]
    assert list(back["status"]) == list(pd.read_csv(paths["csv"])["status"])
    png = plot_history(history, table, "val_macro_f1", tmp_path / "out" / "plot.png")
    assert Path(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = format_summary(table, "val_macro_f1", "/x/best_model")
    assert "4 trials: 2 TERMINATED, 1 EARLY_STOPPED, 1 ERROR" in text
    assert "d failed: ValueError: boom" in text and "best model: /x/best_model" in text


def test_rerun_with_other_settings_is_refused(tmp_path):
    from raycls.tune.sweep import SETTINGS_FILE, _check_same_sweep, _settings

    space = build_search_space(None, Config())
    settings = _settings(Config(), space, "data", None, 4, "asha", "random")
    (tmp_path / SETTINGS_FILE).write_text(json.dumps(settings))
    _check_same_sweep(tmp_path, settings)
    changed = _settings(Config(), space, "data", None, 8, "asha", "random")
    with pytest.raises(ValueError, match="num_samples"):
        _check_same_sweep(tmp_path, changed)


# Integration: small sweeps on a local Ray (tiny models, shapes at 32 px).

TINY = {"image_size": 32, "hidden_dim": 32, "backbone": "resnet18"}
FAST = {"warmup_fraction": 0.0, "keep_checkpoints": 1, "max_failures": 0}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    from raycls.demo.datasets import make_dataset

    root = tmp_path_factory.mktemp("shapes")
    make_dataset("shapes", root, per_class=8, size=32)
    return root


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> str:
    from tiny_models import make_tiny_bert

    return make_tiny_bert(tmp_path_factory.mktemp("bert") / "bert")


def test_small_sweep_exports_results_best_model_and_config(ray_local, shapes, tiny_bert, tmp_path):
    """`raycls tune --config C`: the file's train.epochs reach the trials (no flag shadows
    it); a grid makes one trial of each backbone, so exactly one fails in its worker."""
    from raycls.models import load_model

    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({
        "model": {**TINY, "text_encoder": tiny_bert},
        "train": {**FAST, "epochs": 2, "metric": "val_macro_f1"},
    }))  # fmt: skip
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({
        "model.fusion": {"choice": ["concat", "gated"]},
        "model.backbone": {"grid": ["resnet18", "no_such_backbone"]},  # fails in the worker
        "train.batch_size": {"choice": [16, 32]},
    }))  # fmt: skip
    out = tmp_path / "sweep"
    result = CliRunner().invoke(cli, [
        "tune", str(shapes / "train"), "--val", str(shapes / "val"), "--out", str(out),
        "--config", str(config), "--search-space", str(space), "--num-samples", "1",
        "--max-concurrent", "2", "--resources-per-trial", "cpu=0.5",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metric"] == "val_macro_f1"

    table = pd.read_parquet(out / "results.parquet")
    assert len(table) == 2 and {"trial_id", "model.fusion", "train.lr", "best_val_macro_f1",
                                "epochs_run", "error"} <= set(table.columns)  # fmt: skip
    bad = table[table["model.backbone"] == "no_such_backbone"].iloc[0]
    assert bad["status"] == ERROR and "no_such_backbone" in bad["error"]
    good = table[table["model.backbone"] == "resnet18"].iloc[0]
    # The only trial to report: ASHA keeps the first at each rung, so it runs the file's 2.
    assert good["status"] == TERMINATED and good["epochs_run"] == 2
    assert len(pd.read_csv(out / "results.csv")) == 2

    best = summary["best_trial"]
    assert best["trial_id"] == good["trial_id"]
    model = load_model(summary["best_model"])
    assert len(model.labels) == 9
    best_config = load_config(summary["best_config"])
    assert best_config.model.fusion == best["model.fusion"]
    assert best_config.train.lr == pytest.approx(best["train.lr"])
    assert best_config.train.epochs == 2 and best_config.train.metric == "val_macro_f1"
    assert Path(summary["plot"]).stat().st_size > 10_000
    assert summary["status_counts"] == {ERROR: 1, TERMINATED: 1}


def test_reaper_removes_the_placement_group_of_a_dead_actor(ray_local):
    """What a stopped trial leaves (its Train controller's placement group, alive until the
    job ends) is removed; the sweep test can't show this reliably, since whether ASHA stops a
    trial, and whether Train's own cleaner gets there first, varies from run to run."""
    import ray
    from ray.util.placement_group import placement_group, placement_group_table

    from raycls.tune.cleanup import remove_orphaned_placement_groups

    @ray.remote(num_cpus=0)
    class Controller:
        def reserve(self) -> str:
            group = placement_group([{"CPU": 0.01}])
            ray.get(group.ready())
            return group.id.hex()

    controller = Controller.remote()
    group_id = ray.get(controller.reserve.remote())
    remove_orphaned_placement_groups()
    assert placement_group_table()[group_id]["state"] == "CREATED"  # its creator is alive
    ray.kill(controller)
    deadline = time.monotonic() + 30
    while placement_group_table()[group_id]["state"] != "REMOVED":
        assert time.monotonic() < deadline, "the placement group of a dead actor stayed"
        time.sleep(0.2)  # until the GCS sees the actor dead
        remove_orphaned_placement_groups()


def _trial_statuses(sweep_dir: Path) -> dict[str, str]:
    """Trial statuses from Tune's latest saved experiment state (written every ~10 s)."""
    files = sorted(sweep_dir.glob("experiment_state-*.json"))
    try:
        state = json.loads(files[-1].read_text()) if files else {"trial_data": []}
    except (OSError, ValueError):  # being rewritten
        return {}
    trials = [json.loads(item[0]) for item in state["trial_data"]]
    return {t["trial_id"]: t["status"] for t in trials}


@pytest.mark.slow
def test_killed_sweep_resumes_without_rerunning_finished_trials(shapes, tiny_bert, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "sweep"
    command = [
        str(Path(sys.executable).with_name("raycls")),
        "tune",
        str(shapes / "train"),
        "--val",
        str(shapes / "val"),
        "--out",
        str(out),
        "--num-samples",
        "3",
        "--max-concurrent",
        "1",
        "--epochs",
        "2",
        "--scheduler",
        "none",
        "--resources-per-trial",
        "cpu=0.5",
        f"model.text_encoder={tiny_bert}",
        "model.image_size=32",
        "model.hidden_dim=32",
        "train.warmup_fraction=0",
        "train.keep_checkpoints=1",
    ]
    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + 400
        while TERMINATED not in _trial_statuses(out / "sweep").values():
            assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no trial finished in time"
            time.sleep(2)
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
    # What is left of the killed driver's local Ray (its agents) goes too, as on a lost node.
    try:
        os.killpg(first.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    finished = {t for t, s in _trial_statuses(out / "sweep").items() if s == TERMINATED}
    assert not (out / "results.csv").exists()

    second = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "best model:" in second.stdout
    table = pd.read_csv(out / "results.csv")
    assert len(table) == 3 and set(table["status"]) == {TERMINATED}
    assert (table["epochs_run"] == 2).all()
    for trial_id in finished:  # finished before the kill: never started again
        starts = (out / "trials" / trial_id / "starts.txt").read_text().splitlines()
        assert len(starts) == 1, trial_id
    assert len(list((out / "sweep").glob("*/progress.csv"))) == 3


def test_fusion_is_not_searched_on_data_without_text(caplog):
    """The default space's fusion variants would differ only in a text branch that never sees
    text: dropped there (the config's fusion, auto: image_only, trains); a user's kept."""
    import logging

    from raycls.tune.sweep import fusion_for_data

    space = build_search_space(None, load_config())
    assert fusion_for_data(space, 12, searched_by_user=False) == space  # text: searched
    with caplog.at_level(logging.INFO, logger="raycls.tune.sweep"):
        dropped = fusion_for_data(space, 0, searched_by_user=False)
        kept = fusion_for_data(space, 0, searched_by_user=True)
    assert set(dropped) == set(space) - {"model.fusion"} and kept == space
    assert "model.fusion not searched" in caplog.text and "never sees text" in caplog.text
