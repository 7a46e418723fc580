"""Per-row loss weights and strong augmentation (no Ray): the weighted loss on known logits,
weight columns read and checked from Parquet, RandAugment on flagged rows only."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from helpers import image_bytes, write_images

from raycls.io.inputs import plan_shards
from raycls.io.labeled import load_labeled
from raycls.io.reading import read_shard
from raycls.train.data import _prepare_batch
from raycls.train.losses import training_loss, weighted_cross_entropy


def test_weighted_loss_is_the_mean_of_weight_times_row_loss():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    labels = torch.tensor([0, 0, 1])
    rows = [math.log(1 + math.exp(-2)), math.log(1 + math.e), math.log(2)]  # by hand
    weights = torch.tensor([1.0, 0.5, 0.0])
    expected = (rows[0] + 0.5 * rows[1] + 0.0 * rows[2]) / 3  # n rows, not sum(w)
    assert weighted_cross_entropy(logits, labels, weights).item() == pytest.approx(expected)
    assert weighted_cross_entropy(logits, labels).item() == pytest.approx(sum(rows) / 3)
    ones = weighted_cross_entropy(logits, labels, torch.ones(3), label_smoothing=0.1)
    plain = torch.nn.CrossEntropyLoss(label_smoothing=0.1)(logits, labels)
    assert ones.item() == pytest.approx(plain.item())
    # label smoothing 0.1 over 2 classes: each row's target is 0.95 / 0.05
    log_p = torch.log_softmax(logits, 1)
    smooth = -(0.95 * log_p[[0, 1, 2], labels] + 0.05 * log_p[[0, 1, 2], 1 - labels])
    smoothed = weighted_cross_entropy(logits, labels, weights, label_smoothing=0.1)
    assert smoothed.item() == pytest.approx(((smooth * weights).sum() / 3).item())
    # the image-only head's loss is weighted the same way and scaled by image_loss_weight
    image_logits = torch.tensor([[0.0, 3.0], [1.0, 0.0], [0.0, 0.0]])
    both = training_loss(logits, image_logits, labels, weights, label_smoothing=0.0,
                         image_loss_weight=0.5)  # fmt: skip
    image = weighted_cross_entropy(image_logits, labels, weights).item()
    assert both.item() == pytest.approx(expected + 0.5 * image)
    assert image == pytest.approx(
        (math.log(1 + math.exp(3)) + 0.5 * math.log(1 + math.exp(-1))) / 3
    )


def _weighted_parquet(path, weights, flags=None) -> str:
    n = len(weights)
    columns = {"image": [image_bytes(i, (16, 16), "PNG") for i in range(n)],
               "label": ["a", "b"] * (n // 2) + ["a"] * (n % 2), "w": weights}  # fmt: skip
    if flags is not None:
        columns["hard"] = flags
    pq.write_table(pa.table(columns), path)
    return str(path)


def test_weights_read_from_parquet_with_nulls_as_one(tmp_path):
    path = _weighted_parquet(tmp_path / "t.parquet", [0.5, None, 0.0, 2.0], [1, None, 0, 1])
    load_labeled(path, weight_column="w", strong_augment_column="hard")  # checks pass
    rows = read_shard(plan_shards(path)[0], label_column="label", weight_column="w",
                      strong_augment_column="hard")  # fmt: skip
    assert rows.column("weight").to_pylist() == [0.5, 1.0, 0.0, 2.0]
    assert rows.column("strong_augment").to_pylist() == [True, False, False, True]
    assert "weight" not in read_shard(plan_shards(path)[0]).column_names  # only when named


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_a_bad_weight_is_an_error_naming_the_file_row_and_value(tmp_path, bad):
    path = _weighted_parquet(tmp_path / "t.parquet", [1.0, 0.5, bad])
    match = rf"weight column 'w' of .*t\.parquet holds {bad!r} in row 2.*finite and >= 0"
    with pytest.raises(ValueError, match=match):
        load_labeled(path, weight_column="w")  # on the driver, before training starts
    with pytest.raises(ValueError, match=match):
        read_shard(plan_shards(path)[0], label_column="label", weight_column="w")


def test_weight_settings_need_a_parquet_column_of_the_right_kind(tmp_path):
    pq.write_table(pa.table({"image": [image_bytes(0)], "label": ["a"], "w": ["heavy"]}),
                   tmp_path / "s.parquet")  # fmt: skip
    with pytest.raises(ValueError, match=r"'w' of .*s\.parquet has type string"):
        load_labeled(str(tmp_path / "s.parquet"), weight_column="w")
    with pytest.raises(ValueError, match=r"no weight column 'weights'.*data.weight_column="):
        load_labeled(str(tmp_path / "s.parquet"), weight_column="weights")
    with pytest.raises(ValueError, match=r"'w' of .*has type string.*needs booleans"):
        load_labeled(str(tmp_path / "s.parquet"), strong_augment_column="w")
    write_images(tmp_path / "folder" / "cat", 2)
    with pytest.raises(ValueError, match=r"data.weight_column='w' names a Parquet column"):
        load_labeled(str(tmp_path / "folder"), weight_column="w")


def _batch(flags=None, weights=None) -> dict:
    n = 6
    batch = {
        "key": np.array([f"k{i}" for i in range(n)], dtype=object),
        "image": np.array([image_bytes(i, (24, 24), "PNG") for i in range(n)], dtype=object),
        "label": np.array(["a", "b"] * 3, dtype=object),
        "error": np.array([None] * n, dtype=object),
    }
    if flags is not None:
        batch["strong_augment"] = np.array(flags)
    if weights is not None:
        batch["weight"] = np.array(weights)
    return batch


def test_strong_augmentation_changes_only_flagged_rows():
    # crop none, no flips or turns: the usual augmentation leaves every image as it was
    prep = {"size": 24, "max_pixels": 10**6, "classes": {"a": 0, "b": 1}, "crop": "none",
            "flip": False, "rotate90": False}  # fmt: skip
    plain = _prepare_batch(_batch(), train=False, **prep)["pixels"]
    flags = [True, False, True, False, True, False]
    out = _prepare_batch(_batch(flags, [0.5] * 6), train=True, seed=0, **prep)
    for i, flagged in enumerate(flags):
        assert np.array_equal(out["pixels"][i], plain[i]) != flagged, i
    again = _prepare_batch(_batch(flags), train=True, seed=0, **prep)["pixels"]
    assert np.array_equal(again, out["pixels"])  # seeded: the same ops on the same rows
    assert out["weight"].tolist() == [0.5] * 6 and out["weight"].dtype == np.float32
    unflagged = _prepare_batch(_batch(), train=True, seed=0, **prep)
    assert np.array_equal(unflagged["pixels"], plain) and unflagged["weight"].tolist() == [1.0] * 6
    # validation never augments, flags or not
    assert np.array_equal(_prepare_batch(_batch(flags), train=False, **prep)["pixels"], plain)
