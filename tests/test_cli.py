"""The CLI's settings rules (no Ray): a flag overrides its config key only when given, the
config file comes next, `a.b=value` overrides win; every command reads --config the same way."""

from __future__ import annotations

from typing import Any

import click
import pytest
from click.testing import CliRunner

from raycls.cli import cli
from raycls.cli_common import SettingOption
from raycls.config import Config

CONFIG = """\
train:
  epochs: 12
  metric: val_macro_f1
  use_gpu: true
  lr: 0.02
data:
  image_column: picture
  max_pixels: 1000
classify:
  top_k: 2
  cpus_per_classify_actor: 0.5
"""


@pytest.fixture
def config_file(tmp_path) -> str:
    path = tmp_path / "c.yaml"
    path.write_text(CONFIG)
    return str(path)


def _capture(monkeypatch, module: str, name: str, result: Any) -> list[tuple]:
    """Replace the library function a command calls; return the calls it receives."""
    import importlib

    calls: list[tuple] = []

    def fake(*args, **kwargs):
        calls.append((args, kwargs))
        return result

    monkeypatch.setattr(importlib.import_module(module), name, fake)
    return calls


def _invoke(args: list[str]) -> None:
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output


SWEEP_SUMMARY = {
    "trials": [], "metric": "val_macro_f1", "best_model": None, "best_config": None,
    "results_csv": "r.csv", "plot": "p.png", "elapsed_s": 1.0,
}  # fmt: skip


def test_tune_takes_epochs_and_metric_from_the_config_file(monkeypatch, config_file):
    calls = _capture(monkeypatch, "raycls.tune.sweep", "run_sweep", SWEEP_SUMMARY)
    _invoke(["tune", "data", "--out", "o", "--config", config_file])
    (config, *_), kwargs = calls[0]
    assert (config.train.epochs, config.train.metric) == (12, "val_macro_f1")
    assert kwargs.get("epochs") is None and kwargs.get("metric") is None
    _invoke(["tune", "data", "--out", "o", "--config", config_file, "--epochs", "3",
             "--metric", "val_accuracy"])  # fmt: skip
    (config, *_), _ = calls[1]
    assert (config.train.epochs, config.train.metric) == (3, "val_accuracy")


def test_train_flags_override_the_file_only_when_given(monkeypatch, config_file):
    result = {"best_epoch": 1, "epochs_run": 1, "val_accuracy": 1.0, "val_macro_f1": 1.0,
              "val_count": 1, "elapsed_s": 1.0, "model_dir": "m"}  # fmt: skip
    calls = _capture(monkeypatch, "raycls.train.trainer", "fit", result)
    _invoke(["train", "data", "--out", "m", "--config", config_file])
    config = calls[0][0][0]
    assert (config.train.epochs, config.train.use_gpu, config.train.lr) == (12, True, 0.02)
    assert config.model == Config().model
    _invoke(["train", "data", "--out", "m", "--config", config_file, "--no-use-gpu",
             "--epochs", "4", "--fusion", "gated", "train.epochs=5"])  # fmt: skip
    config = calls[1][0][0]
    assert (config.train.epochs, config.train.use_gpu) == (5, False)  # a.b=value wins
    assert config.model.fusion == "gated" and config.train.lr == 0.02
    _invoke(["train", "data", "--out", "m", "--use-gpu"])
    assert calls[2][0][0].train.use_gpu is True


def test_classify_flags_map_to_their_classify_keys(monkeypatch, config_file):
    calls = _capture(monkeypatch, "raycls.bulk.pipeline", "classify", {})
    _invoke(["classify", "in", "--model", "m", "--out", "o", "--config", config_file])
    config = calls[0][0][3]
    assert (config.top_k, config.cpus_per_classify_actor) == (2, 0.5)
    _invoke(["classify", "in", "--model", "m", "--out", "o", "--config", config_file,
             "--cpus-per-actor", "2", "--caption-gpus", "0.5", "--top-k", "7"])  # fmt: skip
    config = calls[1][0][3]
    assert (config.cpus_per_classify_actor, config.gpus_per_caption_actor) == (2.0, 0.5)
    assert config.top_k == 7 and config.batch_size == Config().classify.batch_size


def test_evaluate_reads_data_settings_from_config_and_overrides(monkeypatch, config_file):
    metrics = {"report_dir": "r"}
    calls = _capture(monkeypatch, "raycls.train.evaluation", "evaluate", metrics)
    monkeypatch.setattr("raycls.train.evaluation.format_report", lambda m: "table")
    _invoke(["evaluate", "s3://bucket/model", "s3://bucket/test", "--config", config_file,
             "data.label_column=kind"])  # fmt: skip
    args, kwargs = calls[0]
    assert args[:3] == ("s3://bucket/model", "s3://bucket/test", "s3://bucket/model/evaluation")
    assert kwargs["image_column"] == "picture" and kwargs["label_column"] == "kind"
    assert kwargs["max_pixels"] == 1000


def test_every_setting_flag_names_a_real_config_key():
    """The one mapping from flags to keys: each key exists, and no flag has a default."""
    fields = Config().to_dict()
    seen = 0
    for command in cli.commands.values():
        for param in command.params:
            if isinstance(param, SettingOption):
                section, name = param.key.split(".")
                assert name in fields[section], param.key
                assert param.default is None, param.name
                seen += 1
    assert seen >= 20


def test_help_shows_each_setting_flag_with_its_key_and_default():
    help_text = " ".join(CliRunner().invoke(cli, ["classify", "--help"]).output.split())
    assert "[classify.top_k; default 5]" in help_text
    assert "[classify.shard_size; default 10000]" in help_text
    assert "[classify.classify_actors] " in help_text  # None: sized from the cluster


def test_a_setting_flag_with_a_default_is_refused():
    with pytest.raises(ValueError, match="has no default"):
        SettingOption(["--epochs"], key="train.epochs", default=5)
    with pytest.raises(ValueError, match="section.name"):
        SettingOption(["--epochs"], key="epochs")


def test_self_train_pseudo_flags_reach_the_settings_only_when_given(monkeypatch, tmp_path):
    from raycls.fewlabel.selftrain import SelfTrainSettings

    result = {"rounds": [], "best_round": 0, "model_dir": "m"}
    calls = _capture(monkeypatch, "raycls.fewlabel.selftrain", "self_train", result)
    args = ["self-train", "lab", "--unlabeled", "pool", "--out", str(tmp_path / "o")]
    _invoke([*args, "--pseudo-weight", "0.5", "--pseudo-augment", "strong", "--rounds", "2"])
    _invoke(args)
    assert calls[0][1]["settings"] == SelfTrainSettings(
        rounds=2, pseudo_weight=0.5, pseudo_augment="strong"
    )
    assert calls[1][1]["settings"] == SelfTrainSettings()
    for bad in (["--pseudo-weight", "0"], ["--pseudo-weight", "1.5"], ["--pseudo-augment", "x"]):
        assert CliRunner().invoke(cli, [*args, *bad]).exit_code == 2


# Outputs: what --out names is checked before any work, and a file there is left as it was.
FOLDER_OUTPUTS = [
    ["classify", "{data}", "--model", "{data}", "--out", "{out}"],
    ["train", "{data}", "--out", "{out}"],
    ["evaluate", "{data}", "{data}", "--out", "{out}"],
    ["explain", "{data}", "{data}", "--out", "{out}"],
    ["self-train", "{data}", "--unlabeled", "{data}", "--out", "{out}"],
    ["tune", "{data}", "--out", "{out}"],
]
FILE_OUTPUTS = [
    (["report", "{data}", "--out", "{out}"], ".html or .htm"),
    (["export", "{data}", "--format", "onnx", "--out", "{out}"], ".onnx"),
    (["export", "{data}", "--format", "torchscript", "--out", "{out}"], ".pt or .pth"),
    (["describe-labels", "cat,dog", "--llm", "{data}", "--out", "{out}"], ".yaml or .yml"),
]


def _data(tmp_path) -> str:
    from PIL import Image

    (tmp_path / "data" / "cat").mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "data" / "cat" / "a.png")
    return str(tmp_path / "data")


@pytest.mark.parametrize("args", FOLDER_OUTPUTS, ids=lambda a: a[0])
def test_a_file_where_a_folder_is_written_is_refused_and_kept(tmp_path, args):
    victim = tmp_path / "notes.txt"
    victim.write_text("keep me")
    data = _data(tmp_path)
    result = CliRunner().invoke(cli, [a.format(data=data, out=victim) for a in args])
    assert result.exit_code == 1, result.output
    assert f"{victim}' is a file; this command writes a folder there" in result.output
    assert victim.read_text() == "keep me"


@pytest.mark.parametrize(("args", "suffixes"), FILE_OUTPUTS, ids=lambda a: str(a))
def test_a_file_output_must_carry_its_format_suffix(tmp_path, args, suffixes):
    victim = tmp_path / "data.parquet"  # a mistyped --out naming the user's data
    victim.write_bytes(b"PAR1 rows")
    data = _data(tmp_path)
    result = CliRunner().invoke(cli, [a.format(data=data, out=victim) for a in args])
    assert result.exit_code == 1, result.output
    assert f"must end in {suffixes}" in result.output
    assert victim.read_bytes() == b"PAR1 rows"
    folder = tmp_path / f"dir{suffixes.split()[0]}"
    folder.mkdir()
    result = CliRunner().invoke(cli, [a.format(data=data, out=folder) for a in args])
    assert result.exit_code != 0  # export's click.Path says so before raycls does
    assert any(m in result.output for m in ("is a folder; name the file", "is a directory"))


def test_path_errors_end_as_one_line_not_a_traceback(tmp_path):
    import logging

    from raycls.cli import RayclsGroup

    group = RayclsGroup()

    @group.command()
    def write() -> None:
        (tmp_path / "file").write_text("x")
        (tmp_path / "file" / "sub").mkdir()  # NotADirectoryError

    result = CliRunner().invoke(group, ["write"])
    assert result.exit_code == 1
    assert result.output.startswith("Error: [Errno 20] Not a directory")
    assert isinstance(result.exception, SystemExit)
    level = logging.getLogger().level
    logging.getLogger().setLevel(logging.DEBUG)  # raycls -v: the traceback stays
    try:
        assert isinstance(CliRunner().invoke(group, ["write"]).exception, NotADirectoryError)
    finally:
        logging.getLogger().setLevel(level)


class FakeRay:
    """`ray` as the CLI sees it: whether it runs, and shutdown."""

    running = False

    def is_initialized(self) -> bool:
        return self.running

    def shutdown(self) -> None:
        self.running = False


@pytest.fixture
def ray(monkeypatch) -> FakeRay:
    import sys

    fake = FakeRay()
    monkeypatch.setitem(sys.modules, "ray", fake)
    return fake


def test_a_failing_command_stops_only_the_ray_it_started(ray):
    from raycls.cli import RayclsGroup, fail

    group = RayclsGroup()

    @group.command()
    def work() -> None:
        ray.running = True  # init_ray: started here, or found running
        fail(ValueError("bad input"))

    assert CliRunner().invoke(group, ["work"]).output == "Error: bad input\n"
    assert not ray.running  # stopped before the error was printed
    ray.running = True  # a Ray the command found (a test session's, a job's) runs on
    assert CliRunner().invoke(group, ["work"]).exit_code == 1 and ray.running


def test_ctrl_c_ends_with_how_to_resume_and_status_130(ray):
    from raycls.cli import INTERRUPTED, RayclsGroup, fail

    group = RayclsGroup()

    @group.command()
    @click.argument("how")
    def work(how: str) -> None:
        ray.running = True
        if how == "plain":
            raise KeyboardInterrupt
        try:  # an error raised while the interrupt unwound (Ray released a lock twice)
            try:
                raise KeyboardInterrupt
            finally:
                raise RuntimeError("release unlocked lock")
        except RuntimeError as error:
            fail(error)

    for how in ("plain", "during"):
        result = CliRunner().invoke(group, ["work", how])
        assert (result.exit_code, result.output) == (130, INTERRUPTED + "\n")
        assert not ray.running


def test_ctrl_c_inside_ray_train_and_tune_becomes_a_keyboard_interrupt():
    """Ray Train's fit turns Ctrl-C into SystemExit(1) and leaves its handler installed; Tune's
    returns the unfinished sweep as if done and puts back the handler it found."""
    import os
    import signal

    from raycls.cluster.runtime import ctrl_c_interrupts

    train_guard = tune_guard = ctrl_c_interrupts  # one guard around both fits

    default = signal.getsignal(signal.SIGINT)

    def stale(signum, frame):  # what Ray Train leaves behind
        raise AssertionError("never called")

    with pytest.raises(KeyboardInterrupt):
        with train_guard():
            signal.signal(signal.SIGINT, stale)
            raise SystemExit(1)
    assert signal.getsignal(signal.SIGINT) is default
    with train_guard():
        signal.signal(signal.SIGINT, stale)
    assert signal.getsignal(signal.SIGINT) is default

    def tune_fit(interrupted: bool) -> None:
        found = signal.getsignal(signal.SIGINT)
        signal.signal(signal.SIGINT, lambda *a: signal.signal(signal.SIGINT, found))
        if interrupted:
            os.kill(os.getpid(), signal.SIGINT)  # handled: Tune saves and returns normally

    with tune_guard():
        tune_fit(interrupted=False)
    assert signal.getsignal(signal.SIGINT) is default
    with pytest.raises(KeyboardInterrupt):
        with tune_guard():
            tune_fit(interrupted=True)
    assert signal.getsignal(signal.SIGINT) is default
