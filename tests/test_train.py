"""Training: unit tests of the pieces, then end-to-end runs on a local Ray (tiny models, data)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import FAST, SMALL
from helpers import image_only as _image_only

from raycls.cli import cli
from raycls.config import load_config
from raycls.demo.datasets import make_dataset
from raycls.io.shards import Shard
from raycls.train.data import _mix_shards, split_is_val
from raycls.train.loop import _warmup_cosine
from raycls.train.trainer import CRASH_EPOCH_ENV, CRASH_MARKER_ENV, fit


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    """Digits at 16 px: 12 training images per class, and 31 validation images (odd)."""
    root = tmp_path_factory.mktemp("digits")
    make_dataset("digits", root / "full", per_class=12, size=16)
    for split in ("train", "test"):
        shutil.copytree(root / "full" / split, root / split)
    for label in range(10):
        keep = 4 if label == 0 else 3
        src, dst = root / "full" / "val" / str(label), root / "val" / str(label)
        dst.mkdir(parents=True)
        for path in sorted(src.glob("*.png"))[:keep]:
            shutil.copy(path, dst / path.name)
    return root


# Unit tests: no Ray.


def test_split_is_deterministic_and_near_the_fraction():
    keys = [f"/data/c{i % 3}/{i}.png" for i in range(2000)]
    first = split_is_val(keys, "/data", seed=0, fraction=0.2)
    assert np.array_equal(first, split_is_val(keys, "/data", seed=0, fraction=0.2))
    assert 0.15 < first.mean() < 0.25
    moved = [k.replace("/data", "/elsewhere") for k in keys]
    assert np.array_equal(first, split_is_val(moved, "/elsewhere", seed=0, fraction=0.2))
    assert not np.array_equal(first, split_is_val(keys, "/data", seed=1, fraction=0.2))


def test_mix_shards_keeps_every_file_with_its_text():
    paths = [f"/d/{c}/{i}.png" for c in "abc" for i in range(300)]
    shards = [Shard(0, "files", tuple(paths), num_rows=900, texts=tuple(p[3] for p in paths))]
    mixed = _mix_shards(shards, seed=0)
    pairs = [(p, t) for s in mixed for p, t in zip(s.paths, s.texts, strict=True)]
    assert sorted(pairs) == sorted(zip(paths, [p[3] for p in paths], strict=True))
    assert len({p.split("/")[2] for p in mixed[0].paths}) == 3  # classes interleaved
    assert [s.index for s in mixed] == list(range(len(mixed)))
    parquet = [Shard(i, "parquet", (f"/p/{i}.parquet",), (0,), 10) for i in range(20)]
    shuffled = _mix_shards(parquet, seed=0)
    assert sorted(s.paths for s in shuffled) == sorted(s.paths for s in parquet)
    assert [s.paths for s in shuffled] != [s.paths for s in parquet]
    assert [s.index for s in shuffled] == list(range(20))


def test_warmup_then_cosine():
    factor = _warmup_cosine(total=100, warmup=10)
    assert factor(0) == pytest.approx(0.1) and factor(9) == pytest.approx(1.0)
    assert factor(10) == pytest.approx(1.0) and factor(55) == pytest.approx(0.5)
    assert factor(99) < 0.01 and factor(150) == 0.0


# Integration tests: one local Ray for the session.


@pytest.mark.parametrize(
    ("settings", "data", "message"),
    [
        ({"model.backbone": "resnet_18"}, "train", "not a supported torchvision backbone"),
        ({"model.backbone_weights": "./gone.safetensors"}, "train", "gone.safetensors"),
        ({}, "no_such_folder", "no_such_folder' does not exist"),
    ],
)
def test_bad_settings_and_missing_data_fail_before_ray_starts(
    digits, tmp_path, monkeypatch, settings, data, message
):
    def no_ray(*args, **kwargs):
        raise AssertionError("Ray started before the settings were checked")

    monkeypatch.setattr("raycls.train.trainer.init_ray", no_ray)
    config = _image_only().replace(
        model={k.split(".")[1]: v for k, v in settings.items() if k.startswith("model.")}
    )
    with pytest.raises(ValueError, match=message):
        fit(config, str(digits / data), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_two_workers_survive_a_crash_and_count_validation_once(
    ray_local, digits, tmp_path, monkeypatch
):
    """CLI run on 2 workers; rank 0 dies in epoch 2 and the run resumes from a checkpoint."""
    out, marker = tmp_path / "model", tmp_path / "crashed"
    monkeypatch.setenv(CRASH_EPOCH_ENV, "2")
    monkeypatch.setenv(CRASH_MARKER_ENV, str(marker))
    args = [
        "train",
        str(digits / "train"),
        "--val",
        str(digits / "val"),
        "--out",
        str(out),
        "--fusion",
        "image_only",
        "--text-encoder",
        "none",
        "--num-workers",
        "2",
        "--epochs",
        "2",
        "--batch-size",
        "16",
        "--lr",
        "3e-3",
        "model.image_size=32",
        "model.hidden_dim=32",
        "train.warmup_fraction=0",
        "train.max_failures=1",
    ]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "val_accuracy" in result.output
    assert marker.exists()  # the hook fired

    history = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    assert all(h["val_count"] == 31 for h in history)  # odd size, 2 workers, none lost
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    # After the crash the workers restarted from a checkpoint, not from epoch 1.
    assert history[0]["attempt_start_epoch"] == 1
    assert history[1]["attempt_start_epoch"] == 2
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "finished" and metrics["data"]["val"]["rows"] == 31

    from raycls.models import load_model

    model = load_model(out)
    assert model.labels == [str(i) for i in range(10)]


def test_interrupted_run_resumes_and_finished_run_does_not_retrain(
    ray_local, tmp_path, monkeypatch
):
    """Fused model with a tiny BERT on 1 worker, held-out validation split."""
    from tiny_models import make_tiny_bert

    make_dataset("shapes", tmp_path / "shapes", per_class=10, size=32)
    config = load_config(
        None,
        model={**SMALL, "fusion": "concat", "text_encoder": make_tiny_bert(tmp_path / "bert")},
        data={"val_fraction": 0.3},
        train={**FAST, "epochs": 2, "max_failures": 0},
    )
    data, out = str(tmp_path / "shapes" / "train"), str(tmp_path / "model")
    monkeypatch.setenv(CRASH_EPOCH_ENV, "2")
    monkeypatch.setenv(CRASH_MARKER_ENV, str(tmp_path / "crashed"))
    with pytest.raises(RuntimeError, match="resume"):
        fit(config, data, out)
    monkeypatch.delenv(CRASH_EPOCH_ENV)

    result = fit(config, data, out)  # the same command again
    history = json.loads((Path(out) / "history.json").read_text())
    assert [h["attempt_start_epoch"] for h in history] == [1, 2]
    assert history[1]["train_loss"] < history[0]["train_loss"]
    assert result["epochs_run"] == 2 and not result.get("already_finished")
    held_out = result["data"]["val"]["rows"]
    assert history[1]["val_count"] == held_out and held_out + result["data"]["train"]["rows"] == 90

    again = fit(config, data, out)
    assert again["already_finished"] and again["val_accuracy"] == result["val_accuracy"]


def test_empty_class_folder_is_an_error(ray_local, digits, tmp_path):
    data = tmp_path / "train"
    shutil.copytree(digits / "train", data)
    (data / "10").mkdir()
    with pytest.raises(ValueError, match=r"\['10'\].*hold no images"):
        fit(_image_only(), str(data), str(tmp_path / "m"), val_data=str(digits / "val"))


def test_class_missing_from_validation_is_an_error(ray_local, digits, tmp_path):
    val = tmp_path / "val"
    shutil.copytree(digits / "val", val)
    shutil.rmtree(val / "7")
    with pytest.raises(ValueError, match=r"\['7'\].*no readable examples in the validation"):
        fit(_image_only(), str(digits / "train"), str(tmp_path / "m"), val_data=str(val))


def test_too_many_corrupt_images_stop_the_run_naming_them(ray_local, digits, tmp_path):
    data = tmp_path / "train"
    shutil.copytree(digits / "train", data)
    broken = sorted((data / "3").glob("*.png"))[:8]
    for path in broken:
        path.write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot be read") as error:
        fit(_image_only(), str(data), str(tmp_path / "m"), val_data=str(digits / "val"))
    assert broken[0].name in str(error.value) and "max_bad_fraction" in str(error.value)


def test_a_few_corrupt_images_are_counted_and_skipped(ray_local, digits, tmp_path, caplog):
    from raycls.train.data import prepare_data

    data = tmp_path / "train"
    shutil.copytree(digits / "train", data)
    broken = sorted((data / "5").glob("*.png"))[0]
    broken.write_bytes(broken.read_bytes()[:40])  # truncated
    prepared = prepare_data(_image_only(), str(data), str(digits / "val"))
    assert prepared.summary["train"]["bad"] == 1 and prepared.summary["train"]["rows"] == 119
    assert broken.name in prepared.summary["train"]["bad_examples"][0]
    assert broken.name in caplog.text
    rows = prepared.train.take_all()
    assert len(rows) == 119 and all(r["label"] in range(10) for r in rows)
    assert rows[0]["pixels"].shape == (3, 32, 32)
