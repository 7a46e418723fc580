"""Few labels: uncertainty sampling on known scores (no Ray), pseudo-label choice, and a
self-training run stopped in round 2 that resumes there (local Ray, tiny model and data)."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import write_images

from raycls.bulk.output import result_schema
from raycls.config import load_config
from raycls.demo.datasets import make_dataset
from raycls.fewlabel.select import read_predictions, select_rows, uncertainty, write_selection
from raycls.fewlabel.selftrain import SelfTrainSettings, choose_pseudo_labels, self_train

ROWS = [  # key, top_k_labels, top_k_scores, status
    ("a.png", ["cat", "dog"], [0.90, 0.05], "ok"),  # margin 0.85
    ("b.png", ["dog", "cat"], [0.50, 0.45], "ok"),  # margin 0.05: most uncertain
    ("c.png", ["cat", "dog"], [0.60, 0.30], "ok"),  # margin 0.30
    ("d.png", ["dog", "cat"], [0.40, 0.20], "ok"),  # margin 0.20, least confident
    ("e.png", ["cat", "dog"], [0.99, 0.01], "ok"),
    ("f.png", None, None, "error"),  # never selected
]


def _classify_output(folder: Path, rows=ROWS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    cols = {name: [] for name in result_schema("path").names}
    for key, labels, scores, status in rows:
        cols["path"].append(key)
        cols["label"].append(labels[0] if labels else None)
        cols["score"].append(scores[0] if scores else None)
        cols["top_k_labels"].append(labels)
        cols["top_k_scores"].append(scores)
        cols["caption"].append(None)
        cols["status"].append(status)
        cols["error"].append("bad image" if status == "error" else None)
        cols["model"].append("m")
    pq.write_table(pa.table(cols, schema=result_schema("path")), folder / "part-000000.parquet")
    return folder


def test_uncertainty_strategies_on_known_scores():
    scores = [[0.9, 0.05], [0.5, 0.45], [0.4, 0.2]]
    np.testing.assert_allclose(uncertainty(scores, "margin"), [0.15, 0.95, 0.8])
    np.testing.assert_allclose(uncertainty(scores, "least-confident"), [0.1, 0.5, 0.6])
    entropy = uncertainty(scores, "entropy")
    assert entropy[1] > entropy[0] and entropy[2] > entropy[0]
    with pytest.raises(ValueError, match="top 2"):
        uncertainty([[0.9], [0.4]], "margin")
    with pytest.raises(ValueError, match="choose one of"):
        uncertainty(scores, "random")


def test_select_returns_lowest_margin_rows_first(tmp_path):
    out = _classify_output(tmp_path / "out")
    picked = select_rows(str(out), n=3, strategy="margin")
    assert picked.column("key").to_pylist() == ["b.png", "d.png", "c.png"]
    least = select_rows(str(out), n=2, strategy="least-confident")
    assert least.column("key").to_pylist() == ["d.png", "b.png"]
    # per class: alternate between predicted labels, most uncertain of each first
    spread = select_rows(str(out), n=4, strategy="margin", per_class=True)
    assert spread.column("key").to_pylist() == ["b.png", "c.png", "d.png", "a.png"]
    assert "f.png" not in select_rows(str(out), n=10).column("key").to_pylist()

    write_selection(picked, str(tmp_path / "pick.csv"))
    lines = (tmp_path / "pick.csv").read_text().splitlines()
    assert len(lines) == 4 and "b.png" in lines[1] and "dog|cat" in lines[1]
    write_selection(picked, str(tmp_path / "pick.parquet"))
    assert pq.read_table(tmp_path / "pick.parquet").column("key").to_pylist()[0] == "b.png"
    with pytest.raises(ValueError, match="not a classify output"):
        read_predictions(str(tmp_path / "pick.parquet"))
    # never into the output it picks from: a part file replaced, or picks read as predictions
    parts = sorted(out.glob("*.parquet"))
    before = [p.read_bytes() for p in parts]
    for inside in (parts[0], out / "picks.parquet", out / "sub" / "picks.csv", out):
        with pytest.raises(ValueError, match="inside .* which this command reads"):
            write_selection(picked, str(inside) + ("/x.csv" if inside == out else ""), str(out))
    (tmp_path / "link").symlink_to(out)
    with pytest.raises(ValueError, match="inside"):
        write_selection(picked, str(tmp_path / "link" / "p.parquet"), str(out))
    assert sorted(out.glob("*.parquet")) == parts and [p.read_bytes() for p in parts] == before
    write_selection(picked, str(tmp_path / "out-picks.parquet"), str(out))  # a sibling is fine
    with pytest.raises(ValueError, match="holds no classify output"):
        read_predictions(str(tmp_path / "missing"))


def test_pseudo_labels_threshold_and_per_class_quota(tmp_path):
    out = _classify_output(tmp_path / "out")
    kept = choose_pseudo_labels(str(out), SelfTrainSettings(threshold=0.55))
    assert sorted(kept.column("key").to_pylist()) == ["a.png", "c.png", "e.png"]
    capped = choose_pseudo_labels(str(out), SelfTrainSettings(threshold=0.55, per_class_quota=1))
    assert capped.column("key").to_pylist() == ["e.png"]  # the highest-scoring cat only
    with pytest.raises(ValueError, match="threshold"):
        SelfTrainSettings(threshold=1.5)


def test_pseudo_settings_are_checked_and_part_of_the_run_identity(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"pseudo_weight=0.0 must be in \(0, 1\]"):
        SelfTrainSettings(pseudo_weight=0.0)
    with pytest.raises(ValueError, match="pseudo_augment='heavy'.*strong, same"):
        SelfTrainSettings(pseudo_augment="heavy")
    for name in ("labeled/cat", "labeled/dog", "pool"):
        write_images(tmp_path / name, 2)
    config = load_config(None)
    old = SelfTrainSettings(pseudo_weight=1.0)
    args = (str(tmp_path / "labeled"), str(tmp_path / "pool"), str(tmp_path / "st"))
    identity = {"config": config.to_dict(), "settings": asdict(old), "labeled": args[0],
                "unlabeled": args[1], "val": None}  # fmt: skip
    (tmp_path / "st").mkdir()
    (tmp_path / "st" / "rounds.json").write_text(json.dumps({"identity": identity, "rounds": []}))

    class Started(Exception):
        pass

    def init_ray(*a, **k):
        raise Started

    monkeypatch.setattr("raycls.cluster.runtime.init_ray", init_ray)
    with pytest.raises(Started):  # same settings: resumes
        self_train(config, *args, settings=old)
    for changed in ({"pseudo_weight": 0.5}, {"pseudo_augment": "strong"}):
        with pytest.raises(ValueError, match="other settings or data"):
            self_train(config, *args, settings=SelfTrainSettings(**changed))
    weighted = load_config(None, data={"weight_column": "w"})
    with pytest.raises(ValueError, match="self-train sets data.weight_column itself"):
        self_train(weighted, *args, settings=old)
    for inside in ("pool/st", "labeled/st"):  # its rounds' files would be read as input
        with pytest.raises(ValueError, match="is inside the input"):
            self_train(config, *args[:2], str(tmp_path / inside), settings=old)


def test_self_train_stops_when_a_round_finds_no_pseudo_labels(tmp_path, monkeypatch):
    calls: list[str] = []

    def fit(config, train_data, out, val_data=None):
        calls.append(f"fit {Path(out).parent.name}")
        return {"val_accuracy": 0.5, "val_macro_f1": 0.5, "data": {"train": {"rows": 4}}}

    def classify(source, model, out, config):
        calls.append(f"classify {Path(out).parent.name}")
        _classify_output(Path(out))  # highest score 0.99

    monkeypatch.setattr("raycls.cluster.runtime.init_ray", lambda *a, **k: None)
    monkeypatch.setattr("raycls.fewlabel.selftrain.labeled_data", lambda *a: ("L", "V"))
    monkeypatch.setattr("raycls.fewlabel.selftrain._publish", lambda *a: None)
    monkeypatch.setattr("raycls.train.trainer.fit", fit)
    monkeypatch.setattr("raycls.bulk.pipeline.classify", classify)
    for name in ("labeled/cat", "pool"):
        write_images(tmp_path / name, 1)
    args = (load_config(None), str(tmp_path / "labeled"), str(tmp_path / "pool"),
            str(tmp_path / "st"))  # fmt: skip
    settings = SelfTrainSettings(rounds=3, threshold=0.995)
    messages: list[str] = []
    result = self_train(*args, settings=settings, echo=messages.append)
    assert calls == ["fit 00", "classify 01"]  # round 1 found nothing: no training on L again
    assert [r["round"] for r in result["rounds"]] == [0] and result["best_round"] == 0
    assert (
        "no prediction on the pool scored --threshold 0.995 or more (highest 0.99)"
        in (result["stopped"])
    )
    assert "stopped after round 0. Lower --threshold" in messages[-1]
    state = json.loads((tmp_path / "st" / "rounds.json").read_text())
    assert state["stopped"] == result["stopped"] and len(state["rounds"]) == 1
    messages.clear()
    again = self_train(*args, settings=settings, echo=messages.append)  # a rerun: nothing runs
    assert calls == ["fit 00", "classify 01"] and messages == [result["stopped"]]
    assert again["rounds"] == result["rounds"]


@pytest.mark.integration
def test_self_train_stopped_in_round_2_resumes_there(tmp_path, ray_local):
    make_dataset("digits", tmp_path / "d", per_class=8, size=16)
    labeled, pool = tmp_path / "labeled", tmp_path / "pool"
    for folder in sorted(p for p in (tmp_path / "d" / "train").iterdir() if p.is_dir()):
        files = sorted(folder.glob("*.png"))
        for dst, chosen in ((labeled, files[:3]), (pool, files[3:])):
            (dst / folder.name).mkdir(parents=True)
            for path in chosen:
                shutil.copy(path, dst / folder.name / path.name)
    config = load_config(
        None,
        model={"image_size": 16, "hidden_dim": 16, "fusion": "image_only", "text_encoder": "none"},
        train={"epochs": 1, "batch_size": 16, "warmup_fraction": 0.0, "keep_checkpoints": 1},
        classify={"shard_size": 20, "top_k": 2},
    )
    settings = SelfTrainSettings(
        rounds=2, threshold=0.0, per_class_quota=2, pseudo_weight=0.5, pseudo_augment="strong"
    )
    args = (config, str(labeled), str(pool), str(tmp_path / "st"))
    kwargs = {"val": str(tmp_path / "d" / "val"), "settings": settings}

    def stop_in_round_2(message: str) -> None:
        if message.startswith("round 2: training"):
            raise KeyboardInterrupt("stopped in round 2")

    with pytest.raises(KeyboardInterrupt):
        self_train(*args, **kwargs, echo=stop_in_round_2)
    state = json.loads((tmp_path / "st" / "rounds.json").read_text())
    assert [r["round"] for r in state["rounds"]] == [0, 1]
    round1_model = tmp_path / "st" / "rounds" / "01" / "model" / "config.json"
    before = round1_model.stat().st_mtime_ns
    assert (tmp_path / "st" / "rounds" / "02" / "predictions").is_dir()

    messages: list[str] = []
    result = self_train(*args, **kwargs, echo=messages.append)
    assert [r["round"] for r in result["rounds"]] == [0, 1, 2]
    assert result["rounds"][:2] == state["rounds"]  # finished rounds are not redone
    assert round1_model.stat().st_mtime_ns == before
    assert not any(m.startswith(("round 0", "round 1")) for m in messages)
    last = result["rounds"][2]
    # threshold 0: every pool image is a candidate; the quota caps each predicted class at 2
    assert last["pseudo_labels"] == sum(last["per_class"].values()) > 0
    assert max(last["per_class"].values()) <= 2
    assert 0.0 <= last["pseudo_precision"] <= 1.0  # the pool is laid out by class
    # round 2 trained on labelled rows (weight 1, usual augmentation) + pseudo-labelled rows
    rows = pq.read_table(tmp_path / "st" / "rounds" / "02" / "train").to_pylist()
    pseudo = [r for r in rows if r["key"].startswith(str(pool))]
    assert len(pseudo) == last["pseudo_labels"] and len(rows) > len(pseudo)
    assert all((r["weight"], r["strong_augment"]) == (0.5, True) for r in pseudo)
    assert all((r["weight"], r["strong_augment"]) == (1.0, False) for r in rows
               if not r["key"].startswith(str(pool)))  # fmt: skip
    assert (tmp_path / "st" / "model" / "config.json").is_file()
    assert not (tmp_path / "st" / "model" / "ray_train").exists()
