"""Unit tests for raycls.demo.datasets: layout, metadata, determinism."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from raycls.demo.datasets import SPLITS, make_dataset


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("shapes")
    return out, make_dataset("shapes", out, per_class=12, size=32, seed=0)


def test_shapes_layout_and_metadata(shapes):
    out, summary = shapes
    assert len(summary["classes"]) == 9 and "red_circle" in summary["classes"]
    assert summary["classes"] == sorted(summary["classes"])
    assert summary["counts"] == {"train": 12 * 9, "val": 10 * 9, "test": 10 * 9}
    for split in SPLITS:
        table = pq.read_table(out / split / "metadata.parquet")
        assert {"path", "label", "text"} <= set(table.column_names)
        assert table.num_rows == summary["counts"][split]
        assert set(table.column("label").to_pylist()) == set(summary["classes"])
        for row in table.slice(0, 5).to_pylist():
            assert row["path"].startswith(row["label"] + "/")
            im = Image.open(out / split / row["path"])
            assert im.size == (32, 32) and im.mode == "RGB"
    texts = pq.read_table(out / "train" / "metadata.parquet").column("text").to_pylist()
    assert 0 < texts.count(None) < len(texts)


def test_shapes_text_and_grey_mix(tmp_path):
    make_dataset("shapes", tmp_path, per_class=40, size=16, seed=1)
    rows = pq.read_table(tmp_path / "train" / "metadata.parquet").to_pylist()
    grey = sum(r["grey"] for r in rows) / len(rows)
    missing = sum(r["text"] is None for r in rows) / len(rows)
    assert 0.25 < grey < 0.45 and 0.15 < missing < 0.35
    wrong = [r for r in rows if r["text_kind"] == "wrong"]
    assert wrong and all(
        r["label"].split("_")[1] not in r["text"] or r["label"].split("_")[0] not in r["text"]
        for r in wrong
    )
    grey_im = next(r for r in rows if r["grey"])
    r, g, b = Image.open(tmp_path / "train" / grey_im["path"]).split()
    assert r.tobytes() == g.tobytes() == b.tobytes()


def test_shapes_deterministic_by_seed(shapes, tmp_path):
    out, _ = shapes
    make_dataset("shapes", tmp_path / "same", per_class=12, size=32, seed=0)
    make_dataset("shapes", tmp_path / "other", per_class=12, size=32, seed=1)
    assert tree_bytes(out) == tree_bytes(tmp_path / "same")
    assert tree_bytes(out) != tree_bytes(tmp_path / "other")


def test_digits(tmp_path):
    summary = make_dataset("digits", tmp_path, per_class=5, size=16, seed=0)
    assert summary["classes"] == [str(d) for d in range(10)]
    assert summary["counts"]["train"] == 50
    assert summary["counts"]["val"] + summary["counts"]["test"] == 540  # 30% of 1797
    val = pq.read_table(tmp_path / "val" / "metadata.parquet")
    assert set(val.column("label").to_pylist()) == set(summary["classes"])
    assert val.column("text").null_count == val.num_rows
    path = val.column("path")[0].as_py()
    im = Image.open(tmp_path / "val" / path)
    assert im.size == (16, 16) and im.mode == "RGB"
    again = tmp_path / "again"
    make_dataset("digits", again, per_class=5, size=16, seed=0)
    assert tree_bytes(tmp_path / "val") == tree_bytes(again / "val")


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="unknown data set kind 'cats'.*shapes.*digits"):
        make_dataset("cats", tmp_path)
    make_dataset("shapes", tmp_path, per_class=1, size=16)
    with pytest.raises(ValueError, match="not empty"):
        make_dataset("shapes", tmp_path, per_class=1, size=16)
    summary = make_dataset("shapes", tmp_path, per_class=2, size=16, overwrite=True)
    assert len(list((tmp_path / "train").rglob("*.png"))) == summary["counts"]["train"]
