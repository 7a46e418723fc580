"""raycls classify end to end (local Ray) for every kind of --model other than raycls's own:
tiny CLIP, SigLIP and ViT classifier, and caption zero-shot with the bundled MiniLM; bad
inputs become error rows and the job goes on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from bad_images import MAX_PIXELS, corpus
from click.testing import CliRunner
from helpers import LABELS, check_rows, image_bytes, read_output
from tiny_models import make_tiny_clip, make_tiny_siglip, make_tiny_vit

from raycls.cli import cli
from raycls.config import DEFAULT_TEXT_ENCODER, ClassifyConfig

BAD = ("truncated.jpg", "empty.jpg", "text_file.jpg", "huge.png")
GOOD = ("good1.jpg", "good2.png", "grayscale.jpg", "cmyk.jpg", "alpha.png")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("imgs")
    files = corpus()
    for name in GOOD + BAD:
        (folder / name).write_bytes(files[name][0])
    return folder


@pytest.mark.parametrize("kind", ["clip", "siglip", "vit"])
def test_hf_models_through_the_bulk_path(ray_local, tmp_path, images, kind):
    from raycls.bulk.dataset import model_spec
    from raycls.bulk.pipeline import classify
    from raycls.models.predictor import load_predictor

    build = {"clip": make_tiny_clip, "siglip": make_tiny_siglip}.get(kind)
    model = build(tmp_path / kind) if build else make_tiny_vit(tmp_path / kind, LABELS)
    labels = ",".join(LABELS) if build else None
    config = ClassifyConfig(labels=labels, shard_size=5, batch_size=4, max_pixels=MAX_PIXELS)
    summary = classify(str(images), model, str(tmp_path / "out"), config)
    assert (summary["ok"], summary["error"]) == (len(GOOD), len(BAD))
    table = read_output(tmp_path / "out")
    check_rows(table, "path")
    rows = {Path(r["path"]).name: r for r in table.to_pylist()}
    assert all(rows[name]["status"] == "error" for name in BAD)
    assert {r["model"] for r in rows.values()} == {model}
    # The pipeline's scores are the predictor's on the same image (pixels pass as float16).
    from PIL import Image

    predictor = load_predictor(model_spec(model, config))
    with Image.open(images / "good1.jpg") as im:
        scores, _ = predictor.predict_images([im.convert("RGB")])
    row = rows["good1.jpg"]
    assert row["label"] == LABELS[int(np.argmax(scores[0]))]
    assert row["score"] == pytest.approx(float(scores[0].max()), abs=2e-3)
    if build:  # other labels are another run: no resuming into these results
        with pytest.raises(ValueError, match="labels_sha256"):
            other = ClassifyConfig(labels="cat,dog", shard_size=5, max_pixels=MAX_PIXELS)
            classify(str(images), model, str(tmp_path / "out"), other)


def test_caption_zero_shot_on_alt_text_through_the_cli(ray_local, tmp_path):
    texts = ["a photo of a dog", None, "a small bird on a branch", "", "my cat", "a dog"]
    table = pa.table({"image": [image_bytes(i) for i in range(5)] + [b"broken"], "alt": texts})
    pq.write_table(table, tmp_path / "in.parquet")
    args = ["classify", str(tmp_path / "in.parquet"), "--model", DEFAULT_TEXT_ENCODER,
            "--model-kind", "caption", "--labels", ",".join(LABELS), "--text-column", "alt",
            "--raw-scores", "--top-k", "2", "--batch-size", "4",
            "--out", str(tmp_path / "out")]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["ok"], summary["error"]) == (3, 3)
    rows = read_output(tmp_path / "out").to_pylist()
    assert [r["label"] for r in rows] == ["dog", None, "bird", None, "cat", None]
    assert [r["error"] is not None and "no text" in r["error"] for r in rows] == [
        False, True, False, True, False, False,
    ]  # fmt: skip
    assert "not an image" in rows[5]["error"]
    assert all(-1 <= s <= 1 for r in rows if r["status"] == "ok" for s in r["top_k_scores"])
