"""A saved model's folder can never turn on remote code; only the user's setting does
(load_model, classify's actors, evaluate)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tiny_models import make_tiny_bert

from raycls.config import ClassifyConfig, ModelConfig

SETTINGS_NAMED = "classify.trust_remote_code=true"

_PLANTED = """
import pathlib

pathlib.Path({marker!r}).write_text("the model folder's code ran")

from transformers import BertConfig, BertModel


class PlantedConfig(BertConfig):
    model_type = "raycls-planted"


class PlantedModel(BertModel):
    config_class = PlantedConfig
"""


@pytest.fixture
def planted(tmp_path) -> tuple[str, Path]:
    """A saved raycls model whose text encoder needs its own code, and whose config.json says
    trust_remote_code=true, as a shared folder planted by someone else could. Returns the model
    folder and the file that its code writes when it runs."""
    from raycls.models import build_model, save_model

    marker = tmp_path / "planted-code-ran"
    config = ModelConfig(text_encoder=make_tiny_bert(tmp_path / "bert"), fusion="text_only")
    model_dir = tmp_path / "model"
    save_model(build_model(config, ["cat", "dog"]), model_dir)
    text_dir = model_dir / "text_encoder"
    hf_config = json.loads((text_dir / "config.json").read_text())
    hf_config.update(
        model_type="raycls-planted",
        auto_map={"AutoConfig": "planted.PlantedConfig", "AutoModel": "planted.PlantedModel"},
    )
    (text_dir / "config.json").write_text(json.dumps(hf_config))
    (text_dir / "planted.py").write_text(_PLANTED.format(marker=str(marker)))
    meta = json.loads((model_dir / "config.json").read_text())
    meta["model"]["trust_remote_code"] = True
    (model_dir / "config.json").write_text(json.dumps(meta))
    return str(model_dir), marker


def test_a_model_folder_cannot_turn_on_remote_code(planted):
    from raycls.models import load_model

    model_dir, marker = planted
    with pytest.raises(ValueError, match=SETTINGS_NAMED) as refused:
        load_model(model_dir)
    assert "model.trust_remote_code=true" in str(refused.value)
    assert "--trust-remote-code" in str(refused.value)
    assert not marker.exists()


def test_the_callers_setting_turns_remote_code_on(planted):
    from raycls.models import load_model

    model_dir, marker = planted
    model = load_model(model_dir, trust_remote_code=True)
    assert type(model.text.model).__name__ == "PlantedModel" and marker.exists()


def test_classify_actor_follows_only_the_users_setting(planted):
    from raycls.bulk.dataset import model_spec
    from raycls.bulk.stages import ClassifyStage
    from raycls.config import ClassifyConfig

    model_dir, marker = planted
    with pytest.raises(ValueError, match=SETTINGS_NAMED):
        ClassifyStage(model_dir, top_k=1)
    with pytest.raises(ValueError, match=SETTINGS_NAMED):
        ClassifyStage(model_spec(model_dir, ClassifyConfig()).to_dict(), top_k=1)
    assert not marker.exists()
    trusted = model_spec(model_dir, ClassifyConfig(trust_remote_code=True))
    ClassifyStage(trusted.to_dict(), top_k=1)
    assert marker.exists()


def test_evaluate_follows_only_the_users_setting(planted, tmp_path):
    from click.testing import CliRunner
    from helpers import write_images

    from raycls.cli import cli
    from raycls.train.evaluation import evaluate

    model_dir, marker = planted
    data = tmp_path / "data"
    write_images(data / "unknown-class", 1)
    with pytest.raises(ValueError, match="--trust-remote-code"):
        evaluate(model_dir, str(data))
    assert not marker.exists()
    result = CliRunner().invoke(cli, ["evaluate", model_dir, str(data)])
    assert result.exit_code == 1 and "--trust-remote-code" in result.output
    assert not marker.exists()
    # With the flag the model loads (its code runs); then the data's unknown class stops it.
    result = CliRunner().invoke(cli, ["evaluate", model_dir, str(data), "--trust-remote-code"])
    assert result.exit_code == 1 and "--trust-remote-code" not in result.output
    assert "unknown-class" in result.output
    assert marker.exists()


@pytest.mark.integration
def test_classify_actors_get_the_users_setting(ray_local, planted, tmp_path):
    from PIL import Image

    from raycls.bulk.pipeline import classify

    model_dir, marker = planted
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        Image.new("RGB", (40, 40), (80 * i, 0, 0)).save(images / f"{i}.png")
    with pytest.raises(Exception, match=SETTINGS_NAMED):
        classify(str(images), model_dir, str(tmp_path / "refused"), ClassifyConfig())
    assert not marker.exists()
    summary = classify(
        str(images), model_dir, str(tmp_path / "out"), ClassifyConfig(trust_remote_code=True)
    )
    assert summary["ok"] == 3 and marker.exists()
