"""Settings: defaults, YAML, overrides, validation (no Ray)."""

from __future__ import annotations

from pathlib import Path

import pytest

from raycls.config import Config, load_config, save_config
from raycls.config_parse import parse_overrides

REPO = Path(__file__).resolve().parents[1]


def test_defaults_round_trip_through_dict():
    config = Config()
    assert Config.from_dict(config.to_dict()) == config


def test_overrides_are_typed():
    config = load_config(
        overrides=[
            "train.lr=3e-4",
            "train.epochs=2",
            "model.fusion=film",
            "train.use_gpu=true",
            "model.text_encoder=none",
            "model.fusion=image_only",
        ]
    )
    assert config.train.lr == pytest.approx(3e-4)
    assert config.train.epochs == 2 and isinstance(config.train.epochs, int)
    assert config.train.use_gpu is True
    assert config.model.text_encoder is None
    assert config.model.fusion == "image_only"  # the later of two overrides of one key wins


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.epochs=two", "train.epochs expects int"),
        ("train.epochs=1.5", "expects an integer"),
        ("train.use_gpu=maybe", "expects true or false"),
        ("train.nope=1", "valid keys for 'train'"),
        ("nope.x=1", "valid sections"),
        ("model.fusion=sum", "choose one of: auto, concat, gated, film, cross_attention"),
        ("model.pooling=max", "choose one of: mean, cls, last"),
        ("train.lr=-1", "must be >= 0"),
    ],
)
def test_bad_settings_name_the_fix(override, message):
    with pytest.raises(ValueError, match=message):
        load_config(overrides=[override])


def test_override_syntax_error():
    with pytest.raises(ValueError, match="section.key=value"):
        parse_overrides(["lr=0.1"])


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 0.01\n  epochs: 7\nmodel:\n  fusion: gated\n")
    config = load_config(path, overrides=["train.epochs=3"])
    assert (config.train.lr, config.train.epochs, config.model.fusion) == (0.01, 3, "gated")
    save_config(config, tmp_path / "out.yaml")
    assert load_config(tmp_path / "out.yaml") == config


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (None, "does not exist"),
        ("train: [unclosed\n", "not valid YAML"),
        ("- just\n- a list\n", "mapping of sections"),
    ],
)
def test_bad_config_files_are_named(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(ValueError, match=message) as caught:
        load_config(path)
    assert str(path) in str(caught.value)


def test_image_only_needs_no_text_encoder_but_others_do():
    with pytest.raises(ValueError, match="needs a text encoder"):
        load_config(overrides=["model.text_encoder=none", "model.fusion=concat"])
    assert load_config(overrides=["model.text_encoder=none"]).model.fusion_for(10) == "image_only"


def test_auto_fusion_uses_text_only_where_the_training_data_has_some():
    model = load_config(None).model
    assert model.fusion == "auto"
    assert model.fusion_for(0) == "image_only"  # no training example has text
    assert model.fusion_for(1) == "concat" and model.fusion_for(None) == "concat"
    gated = load_config(overrides=["model.fusion=gated"]).model
    assert gated.fusion_for(0) == "gated"  # a chosen fusion stays (the run warns instead)


SHIPPED = sorted(
    p
    for folder in (REPO / "raycls" / "demo" / "configs",)
    for p in folder.rglob("*.yaml")
    if "search" not in p.parts  # search spaces are validated by tests/test_tune.py
)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    load_config(path)
