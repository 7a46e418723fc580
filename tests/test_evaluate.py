"""Evaluation and metrics: a tiny saved model scored on generated digits, in-process and via Ray."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from raycls.cli import cli
from raycls.config import ModelConfig
from raycls.demo.datasets import make_dataset
from raycls.models import build_model, save_model
from raycls.train.evaluation import evaluate, format_report
from raycls.train.metrics import classification_metrics, top_k_accuracy


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, Path]:
    """An untrained image-only model over the 10 digit classes, and the digits test split."""
    root = tmp_path_factory.mktemp("eval")
    make_dataset("digits", root / "digits", per_class=1, size=16)
    config = ModelConfig(fusion="image_only", text_encoder=None, image_size=32, hidden_dim=16)
    save_model(build_model(config, [str(i) for i in range(10)]), root / "model")
    return root / "model", root / "digits" / "test"


def test_classification_metrics_count_absent_classes():
    m = classification_metrics(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1]), num_classes=3)
    assert m["accuracy"] == 0.75 and m["count"] == 4
    assert m["macro_recall"] == pytest.approx((0.5 + 1 + 0) / 3)
    scores = np.array([[0.1, 0.5, 0.4], [0.8, 0.15, 0.05]])
    assert top_k_accuracy(np.array([2, 2]), scores, 2) == 0.5


def _predict_each(model_dir: Path, data: Path) -> tuple[np.ndarray, np.ndarray]:
    """Labels and predictions image by image, without raycls's reading and batching (the same
    inference rewrites as `evaluate`, so float rounding cannot flip a near tie)."""
    import torch

    from raycls.io.images import decode_image, preprocess
    from raycls.models import load_model, optimize_for_inference

    model = optimize_for_inference(load_model(str(model_dir)))
    index = {name: i for i, name in enumerate(model.labels)}
    labels, preds = [], []
    for path in sorted(data.glob("*/*.png")):
        pixels = preprocess(decode_image(path.read_bytes()), model.config.image_size)
        with torch.no_grad():
            logits = model(torch.from_numpy(pixels)[None], **model.tokenize([None]))
        labels.append(index[path.parent.name])
        preds.append(int(logits.argmax()))
    return np.array(labels), np.array(preds)


def test_evaluate_writes_metrics_and_plot(setup, tmp_path):
    model_dir, data = setup
    metrics = evaluate(str(model_dir), str(data), str(tmp_path / "report"), batch_size=50)
    labels, preds = _predict_each(model_dir, data)
    assert metrics["count"] == len(labels) == 270
    assert metrics["accuracy"] == pytest.approx(float((labels == preds).mean()))
    expected = np.zeros((10, 10), dtype=int)
    np.add.at(expected, (labels, preds), 1)
    assert np.array_equal(metrics["confusion_matrix"], expected)
    assert "top5_accuracy" in metrics and metrics["top5_accuracy"] >= metrics["accuracy"]
    assert metrics["per_class"]["3"]["support"] == 27
    assert np.asarray(metrics["confusion_matrix"]).sum() == 270
    saved = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert {"accuracy", "macro_f1"} <= set(saved)
    png = (tmp_path / "report" / "confusion_matrix.png").read_bytes()
    assert png[:4] == b"\x89PNG" and len(png) > 10_000
    table = format_report(metrics)
    assert "accuracy" in table and "macro_f1" in table and "\n9 " in table


def test_unreadable_images_are_skipped_and_listed(setup, tmp_path):
    model_dir, data = setup
    copy = tmp_path / "test"
    shutil.copytree(data, copy)
    broken = sorted((copy / "4").glob("*.png"))[0]
    broken.write_bytes(b"")
    metrics = evaluate(str(model_dir), str(copy))
    assert metrics["count"] == 269 and metrics["bad_count"] == 1
    assert broken.name in metrics["bad_examples"][0]


def test_unknown_class_in_data_is_an_error(setup, tmp_path):
    model_dir, data = setup
    copy = tmp_path / "test"
    shutil.copytree(data, copy)
    shutil.copytree(copy / "1", copy / "eleven")
    with pytest.raises(ValueError, match=r"\['eleven'\].*not trained on"):
        evaluate(str(model_dir), str(copy))


def test_evaluate_through_ray_data_matches_in_process(ray_local, setup):
    model_dir, data = setup
    local = evaluate(str(model_dir), str(data))
    remote = evaluate(str(model_dir), str(data), address="auto")
    assert remote["count"] == local["count"]
    assert np.array_equal(remote["confusion_matrix"], local["confusion_matrix"])


def test_cli_evaluate_prints_a_table(setup, tmp_path):
    model_dir, data = setup
    result = CliRunner().invoke(
        cli, ["evaluate", str(model_dir), str(data), "--out", str(tmp_path / "r")]
    )
    assert result.exit_code == 0, result.output
    assert "accuracy" in result.output and (tmp_path / "r" / "confusion_matrix.png").exists()
