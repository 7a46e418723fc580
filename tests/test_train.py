"""Training: unit tests of the pieces, then end-to-end runs on a local Ray (tiny models, data)."""

from __future__ import annotations

import functools
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
from raycls.train.schedule import one_cycle
from raycls.train.trainer import fit


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


def test_data_tasks_module_imports_no_torch():
    """Ray Data runs raycls.train.data's functions in fresh worker processes: importing
    torch there cost each one seconds before its first row."""
    import subprocess
    import sys

    code = "import sys, raycls.train.data\nassert 'torch' not in sys.modules"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


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


def test_one_cycle_follows_torchs_one_cycle_lr():
    import torch

    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=1.0)
    torch_lr = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=2.0, total_steps=100, pct_start=0.3, cycle_momentum=False
    )
    expected = []
    for _ in range(100):
        expected.append(optimizer.param_groups[0]["lr"] / 2.0)
        optimizer.step()
        torch_lr.step()
    factor = one_cycle(total=100, warmup=30)
    assert [factor(s) for s in range(100)] == pytest.approx(expected, rel=1e-6)
    no_warmup = one_cycle(total=100, warmup=0)
    assert no_warmup(0) == pytest.approx(1.0) and no_warmup(99) == pytest.approx(1 / 25e4)
    assert no_warmup(150) == pytest.approx(1 / 25e4)


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


@pytest.mark.integration
def test_two_workers_survive_a_crash_and_count_validation_once(
    ray_local, digits, tmp_path, monkeypatch
):
    """CLI run on 2 workers; rank 0 dies in epoch 2 and the run resumes from a checkpoint.
    Default fusion (auto) on digits, which have no text: an image-only model, no text encoder."""
    from faults import CrashRankZero

    out, marker = tmp_path / "model", tmp_path / "crashed"
    crash = CrashRankZero(report=2, marker=marker)
    monkeypatch.setattr("raycls.train.trainer.fit", functools.partial(fit, callbacks=[crash]))
    args = [
        "train",
        str(digits / "train"),
        "--val",
        str(digits / "val"),
        "--out",
        str(out),
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
    assert "from --val; no training data held out" in result.output
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
    assert model.config.fusion == "image_only" and model.text is None
    assert metrics["config"]["model"]["fusion"] == "auto"  # what was asked, for reruns


@pytest.mark.integration
def test_interrupted_run_resumes_and_finished_run_does_not_retrain(ray_local, tmp_path):
    """Fused model with a tiny BERT on 1 worker, held-out validation split."""
    from tiny_models import make_tiny_bert

    make_dataset("shapes", tmp_path / "shapes", per_class=10, size=32)
    config = load_config(
        None,
        model={**SMALL, "fusion": "concat", "text_encoder": make_tiny_bert(tmp_path / "bert")},
        data={"val_fraction": 0.3},
        train={**FAST, "epochs": 2, "max_failures": 0},
    )
    from faults import CrashRankZero

    data, out = str(tmp_path / "shapes" / "train"), str(tmp_path / "model")
    crash = CrashRankZero(report=2, marker=tmp_path / "crashed")
    with pytest.raises(RuntimeError, match="resume"):
        fit(config, data, out, callbacks=[crash])

    result = fit(config, data, out)  # the same command again
    history = json.loads((Path(out) / "history.json").read_text())
    assert [h["attempt_start_epoch"] for h in history] == [1, 2]
    assert history[1]["train_loss"] < history[0]["train_loss"]
    assert result["epochs_run"] == 2 and not result.get("already_finished")
    held_out = result["data"]["val"]["rows"]
    assert history[1]["val_count"] == held_out and held_out + result["data"]["train"]["rows"] == 90
    assert result["data"]["held_out"] == {"fraction": 0.3, "rows": held_out}

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


# Publishing, non-finite steps, image size, augmentation, pretrained backbones.


def _fake_model(folder: Path, version: str) -> None:
    (folder / "text_encoder").mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "text_encoder/config.json"):
        (folder / name).write_text(version)


def test_publishing_over_a_model_in_use_never_mixes_two(tmp_path, monkeypatch):
    """After every file written or renamed, OUT holds one whole model (old or new) or none."""
    import raycls.io.storage as storage
    from raycls.train.publish import publish_model

    out, new = tmp_path / "model", tmp_path / "new"
    _fake_model(out, "old")
    (out / "ray_train").mkdir()
    (out / "ray_train" / "kept").write_text("checkpoints")
    _fake_model(new, "new")
    seen = []

    def check():
        if (out / "config.json").exists():
            names = ("config.json", "model.safetensors", "text_encoder/config.json")
            versions = {(out / name).read_text() for name in names}
            assert len(versions) == 1, f"a reader sees a mix of two models: {versions}"
            seen.append(versions.pop())

    def checked(function):
        def run(*args, **kwargs):
            result = function(*args, **kwargs)
            check()
            return result

        return run

    monkeypatch.setattr(storage, "write_bytes", checked(storage.write_bytes))
    monkeypatch.setattr(shutil, "copytree", checked(shutil.copytree))
    monkeypatch.setattr(Path, "rename", checked(Path.rename))
    publish_model(str(new), str(out))
    assert seen[0] == "old" and seen[-1] == "new"
    assert (out / "ray_train" / "kept").read_text() == "checkpoints"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "new"]  # nothing left beside


def test_a_step_with_non_finite_gradients_is_not_applied():
    from types import SimpleNamespace

    import torch

    from raycls.config import TrainConfig
    from raycls.train.loop import _step

    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    run = SimpleNamespace(model=model, optimizer=optimizer, scheduler=scheduler, t=TrainConfig())
    before = model.weight.detach().clone()
    model(torch.tensor([[1.0, float("nan"), 0.0]])).sum().backward()
    assert not _step(run, None)
    assert torch.equal(model.weight, before) and model.weight.grad is None
    model(torch.ones(1, 3)).sum().backward()
    assert _step(run, None) and not torch.equal(model.weight, before)


@pytest.mark.integration
def test_non_finite_loss_stops_the_run_naming_epoch_and_step(ray_local, digits, tmp_path):
    from raycls.train.loop import NonFiniteError

    config = _image_only(epochs=2, lr=1e30)  # diverges in the first epoch
    with pytest.raises(NonFiniteError, match=r"epoch 1, step \d+.*train.on_nonfinite=skip"):
        fit(config, str(digits / "train"), str(tmp_path / "m"), val_data=str(digits / "val"))
    assert not (tmp_path / "m" / "config.json").exists()  # nothing published


def test_image_size_comes_from_the_data_or_the_pretrained_weights():
    from raycls.config import ModelConfig
    from raycls.models.weights import pretrained_image_size, resolve_image_size

    assert resolve_image_size(ModelConfig(), 32) == 32
    assert (
        resolve_image_size(ModelConfig(), 500) == 224 and resolve_image_size(ModelConfig(), 8) == 32
    )
    assert resolve_image_size(ModelConfig(image_size=48), 500) == 48
    assert resolve_image_size(ModelConfig(backbone_weights="DEFAULT"), 32) == 224
    assert pretrained_image_size("inception_v3", "DEFAULT") == 299


def test_crops_shift_images_near_the_training_size_and_zoom_into_large_ones():
    from raycls.train.data import _choose_crop

    assert _choose_crop("auto", 32, 32) == "shift" and _choose_crop("auto", 63, 32) == "shift"
    assert _choose_crop("auto", 64, 32) == "resized" and _choose_crop("auto", 500, 224) == "resized"
    assert _choose_crop("resized", 32, 32) == "resized"


def test_shift_augmentation_moves_and_flips_without_rescaling():
    from raycls.train.augment import shift_and_flip

    pixels = np.arange(2 * 3 * 16 * 16, dtype=np.float32).reshape(2, 3, 16, 16)
    out = shift_and_flip(pixels, np.random.default_rng(0))
    assert out.shape == pixels.shape and out.dtype == np.float32
    # Every output row is a run of neighbouring input pixels (a shift, maybe mirrored): no zoom.
    steps = np.abs(np.diff(out, axis=3))
    assert set(np.unique(steps)) <= {0.0, 1.0}
    same = shift_and_flip(pixels, np.random.default_rng(0), flip=False)
    assert not np.array_equal(same, pixels) or not np.array_equal(out, pixels)
    # data.crop=none: flips only, every image whole and in place
    flipped = shift_and_flip(pixels, np.random.default_rng(0), shift=False)
    assert all(np.array_equal(o, p) or np.array_equal(o, p[:, :, ::-1])
               for o, p in zip(flipped, pixels, strict=True))  # fmt: skip


def test_quarter_turns_keep_every_pixel_and_reach_all_four_orientations():
    from raycls.train.augment import rotate_by_quarters

    image = np.arange(3 * 5 * 5, dtype=np.float32).reshape(3, 5, 5)
    out = rotate_by_quarters(np.stack([image] * 64), np.random.default_rng(0))
    turns = [next(k for k in range(4) if np.array_equal(o, np.rot90(image, k, axes=(1, 2))))
             for o in out]  # fmt: skip
    assert set(turns) == {0, 1, 2, 3}
    assert rotate_by_quarters(out[:0], np.random.default_rng(0)).shape == (0, 3, 5, 5)


@pytest.mark.integration
def test_pretrained_backbone_from_a_local_file_frozen_for_the_first_epoch(
    ray_local, digits, tmp_path
):
    """Weights saved from torchvision to a file; linear probing in epoch 1, then fine-tuning."""
    import torch
    import torchvision
    from safetensors.torch import load_file, save_file

    weights = tmp_path / "resnet18.safetensors"
    torch.manual_seed(1)
    save_file(torchvision.models.resnet18().state_dict(), str(weights))
    config = _image_only(epochs=2, freeze_encoder_epochs=1, keep_checkpoints=2).replace(
        model={"backbone_weights": str(weights)}
    )
    out = tmp_path / "m"
    fit(config, str(digits / "train"), str(out), val_data=str(digits / "val"))
    saved, key = load_file(str(weights)), "backbone.trunk.layer1.0.conv1.weight"
    by_epoch = {}
    for folder in (out / "ray_train" / "train").glob("checkpoint_*/"):
        meta = json.loads((folder / "model" / "config.json").read_text())
        by_epoch[meta["extra"]["metrics"]["epoch"]] = load_file(
            str(folder / "model" / "model.safetensors")
        )
    assert sorted(by_epoch) == [1, 2]
    assert torch.equal(by_epoch[1][key], saved["layer1.0.conv1.weight"])  # frozen
    assert not torch.equal(by_epoch[2][key], saved["layer1.0.conv1.weight"])  # fine-tuned
    assert json.loads((out / "config.json").read_text())["model"]["image_size"] == 32
