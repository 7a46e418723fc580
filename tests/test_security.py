"""Issue 12's security items and strict settings, without Ray: remote code, uploads, the KubeRay
example, credentials inside URIs, non-finite numbers in settings and in the JSON raycls writes."""

from __future__ import annotations

import json
import math

import pytest

from raycls.config import ClassifyConfig, Config, TrainConfig, load_config
from raycls.io import storage

# --- settings: numbers are finite and in range -------------------------------------------------


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.lr=nan", "train.lr=nan must be a finite number"),
        ("train.lr=.inf", "train.lr=inf must be a finite number"),
        ("train.weight_decay=-1", "train.weight_decay=-1.0 must be >= 0"),
        ("model.dropout=nan", "model.dropout=nan must be a finite number"),
        ("data.val_fraction=NaN", "data.val_fraction=nan must be a finite number"),
        ("classify.max_pixels=0", "classify.max_pixels=0 must be >= 1"),
        ("classify.cpus_per_classify_actor=.nan", "must be a finite number"),
        ("train.epochs=inf", "train.epochs expects an integer"),
        ("model.image_size=100000", "model.image_size=100000 must be in"),
        ("model.hidden_dim=1000000000", "model.hidden_dim=1000000000 must be in"),
        ("classify.caption_image_size=5000", "classify.caption_image_size=5000 must be in"),
    ],
)
def test_non_finite_or_out_of_range_numbers_are_refused(override, message):
    with pytest.raises(ValueError, match=message.replace(".", r"\.").replace("(", r"\(")):
        load_config(overrides=[override])


def test_dataclasses_built_directly_are_checked_too():
    with pytest.raises(ValueError, match="finite"):
        TrainConfig(lr=float("nan"))
    with pytest.raises(ValueError, match="max_pixels"):
        ClassifyConfig(max_pixels=0)
    assert Config.from_dict({"train": {"max_failures": -1}}).train.max_failures == -1


# --- JSON that raycls writes is strict ---------------------------------------------------------


def test_written_json_has_no_nan_or_infinity(tmp_path):
    import numpy as np

    record = {"val_loss": float("nan"), "best": [1.0, float("inf")], "np": np.float32("nan")}
    storage.write_json(str(tmp_path / "m.json"), record)
    text = (tmp_path / "m.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    # A strict reader (Python's, told to refuse the constants JSON lacks) accepts it.
    strict = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert strict == {"val_loss": None, "best": [1.0, None], "np": None}
    assert storage.read_json(str(tmp_path / "m.json")) == strict


# --- credentials inside URIs -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("s3://AKIAXXX:s3cr3t@bucket/images", "s3://***@bucket/images"),
        (
            "model at gs://tok@b/m, out abfs://acct:key@c/o",
            "model at gs://***@b/m, out abfs://***@c/o",
        ),
        ("https://h/x.jpg?X-Amz-Signature=abc&v=1", "https://h/x.jpg?X-Amz-Signature=***&v=1"),
        ("s3://b/x?secret_key=abc&region=us", "s3://b/x?secret_key=***&region=us"),
        (
            "https://acct.blob.core.windows.net/c?sv=1&sig=abc",
            "https://acct.blob.core.windows.net/c?sv=1&sig=***",
        ),
    ],
)
def test_redact_hides_credentials_inside_uris(text, expected):
    assert storage.redact(text) == expected
    assert storage.redact(expected) == expected


@pytest.mark.parametrize(
    "text", ["s3://bucket/a@b.jpg", "/data/img@2x.png", "http://127.0.0.1:8265", "me@example.com"]
)
def test_redact_leaves_plain_uris_and_paths_alone(text):
    assert storage.redact(text) == text


def test_written_json_redacts_uri_credentials():
    text = storage.to_json({"train_data": "s3://KEY:SECRET@bucket/train", "n": [1, "s3://k:s@b/x"]})
    assert "SECRET" not in text and "k:s@" not in text
    assert json.loads(text) == {"train_data": "s3://***@bucket/train", "n": [1, "s3://***@b/x"]}


def test_finite_values_survive_to_json():
    value = {"a": 1.5, "b": [0, -2.0], "c": None, "d": True}
    assert json.loads(storage.to_json(value)) == value
    assert (
        math.isfinite(json.loads(storage.to_json(1e308)))
        and json.loads(storage.to_json(-math.inf)) is None
    )
