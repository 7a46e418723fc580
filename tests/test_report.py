"""`raycls report` on classify outputs written directly (no Ray): counts, histograms, galleries
with thumbnails from image files and Parquet rows, errors grouped, s3:// outputs; the page in
headless Chromium when it is installed."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from raycls.bulk.output import OutputDir, result_schema
from raycls.cli import cli
from raycls.config import ModelConfig
from raycls.demo.datasets import make_dataset
from raycls.inspect import page
from raycls.inspect.evaluation import EVALUATION_PAGE, confused_pairs
from raycls.inspect.fetch import fetch_images
from raycls.inspect.report import _pattern, write_report
from raycls.inspect.report_page import SECTIONS
from raycls.models import build_model, save_model


def _png(colour: tuple[int, int, int]) -> bytes:
    return page.encode_image(Image.new("RGB", (40, 30), colour))


def _rows(keys, labels, scores, errors=None, captions=None) -> pa.Table:
    n = len(keys)
    errors = errors or [None] * n
    return pa.Table.from_pydict(
        {
            "path": keys,
            "label": [None if e else lab for lab, e in zip(labels, errors, strict=True)],
            "score": [None if e else s for s, e in zip(scores, errors, strict=True)],
            "top_k_labels": [[lab] for lab in labels],
            "top_k_scores": [[s] for s in scores],
            "caption": captions or [None] * n,
            "status": ["error" if e else "ok" for e in errors],
            "error": errors,
            "model": ["m"] * n,
        },
        schema=result_schema("path"),
    )


def _output(uri: str, images: Path) -> None:
    """Two shards: 'red' images with rising scores, 'blue' ones, and three error rows."""
    images.mkdir(parents=True, exist_ok=True)
    keys, labels, scores = [], [], []
    for i in range(10):
        name = "red" if i < 6 else "blue"
        path = images / f"{name}{i}.png"
        path.write_bytes(_png((200, 0, 0) if name == "red" else (0, 0, 200)))
        keys.append(str(path))
        labels.append(name)
        scores.append(0.05 + i * 0.09)
    out = OutputDir(uri)
    manifest = {
        "identity": {"input": str(images), "image_column": "image"},
        "complete": True,
        "model_dir": "/models/m",
        "summary": {"model": "/models/m", "seconds": 3.5, "images_per_s": 3.7},
    }
    out.prepare(manifest, overwrite=True)
    out.write_manifest(manifest)
    captions = ["a red thing"] + [None] * 4
    out.write_shard(0, _rows(keys[:5], labels[:5], scores[:5], captions=captions))
    errors = [None] * 5 + [
        "not an image: cannot identify format (12 bytes)",
        "not an image: cannot identify format (99 bytes)",
        "image is 9x9 = 81 pixels, over the limit",
    ]
    missing = [str(images / f"gone{i}.png") for i in range(3)]
    out.write_shard(
        1, _rows(keys[5:] + missing, labels[5:] + ["red"] * 3, scores[5:] + [0] * 3, errors=errors)
    )


def _images(html: str) -> list[str]:
    return re.findall(r'<img src="([^"]+)"', html)


def test_report_counts_scores_gallery_and_errors(tmp_path):
    _output(str(tmp_path / "out"), tmp_path / "images")
    summary = write_report(str(tmp_path / "out"), thumbnails=2)
    assert summary["rows"] == 13 and summary["ok"] == 10 and summary["error"] == 3
    assert summary["labels"] == 2 and summary["thumbnails"] == 8  # 2 high + 2 low per label
    html = (tmp_path / "out" / "report.html").read_text()
    for anchor in SECTIONS:
        assert f'id="{anchor}"' in html
    assert "6 ok" not in html and "13 (10 ok, 3 errors)" in html and "3.7" in html
    # red holds rows 0-5 with rising scores: red5 is the highest, red0 the lowest.
    gallery = html[html.index('id="gallery"') : html.index('id="errors"')]
    red = gallery[gallery.index(">red (") : gallery.index(">blue (")]
    assert red.index("red5.png") < red.index("red4.png") < red.index("lowest")
    assert red.index("lowest") < red.index("red0.png") < red.index("red1.png")
    assert "a red thing" in red
    assert all(src.startswith("data:image/jpeg;base64,") for src in _images(html))
    errors = html[html.index('id="errors"') :]
    assert ">2</td><td>not an image" in errors and ">1</td><td>image is 9x9" in errors
    assert "gone0.png" in errors


def test_error_messages_group_by_pattern():
    assert _pattern("x (12 bytes) '/a/b.png'") == _pattern("x (9 bytes) '/c.png'")
    assert _pattern("empty file") != _pattern("corrupt image")


def test_thumbnails_from_parquet_rows_and_missing_files(tmp_path):
    table = pa.table({"image": [_png((0, 200, 0)), b"junk", _png((1, 2, 3))]})
    pq.write_table(table, tmp_path / "in.parquet", row_group_size=2)
    keys = [
        f"{tmp_path}/in.parquet#0",
        f"{tmp_path}/in.parquet#2",
        f"{tmp_path}/in.parquet#1",
        str(tmp_path / "nope.png"),
        "custom-id-7",
    ]
    got = fetch_images(keys)
    assert got[keys[0]] == table["image"][0].as_py() and got[keys[1]] == table["image"][2].as_py()
    assert got[keys[2]] == b"junk" and page.thumbnail(got[keys[2]]) is None
    assert got[keys[3]] is None and got[keys[4]] is None


def test_report_on_s3_and_cli(s3, tmp_path):
    uri = f"{s3}/report-test/out"
    _output(uri, tmp_path / "images")
    result = CliRunner().invoke(
        cli, ["report", uri, "--out", str(tmp_path / "r.html"), "--thumbnails", "1"]
    )
    assert result.exit_code == 0, result.output
    html = (tmp_path / "r.html").read_text()
    assert len(_images(html)) == 4 and "13 (10 ok, 3 errors)" in html
    empty = CliRunner().invoke(cli, ["report", str(tmp_path / "nothing")])
    assert empty.exit_code != 0 and "part-NNNNNN.parquet" in empty.output


def test_million_row_shaped_scan_uses_only_small_columns(tmp_path, monkeypatch):
    """The scan asks for label, score, status, error; key and caption only for sampled rows."""
    _output(str(tmp_path / "out"), tmp_path / "images")
    asked = []
    real = pq.read_table

    def spy(path, *args, columns=None, **kwargs):
        asked.append(tuple(columns or ()))
        return real(path, *args, columns=columns, **kwargs)

    monkeypatch.setattr(pq, "read_table", spy)
    write_report(str(tmp_path / "out"), thumbnails=1)
    assert asked and all(set(c) == {"label", "score", "status", "error"} for c in asked)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)")
def test_report_renders_in_headless_chromium(tmp_path):
    from raycls.inspect.browser import check_page

    _output(str(tmp_path / "out"), tmp_path / "images")
    write_report(str(tmp_path / "out"), thumbnails=2)
    result = check_page(tmp_path / "out" / "report.html", SECTIONS, tmp_path / "shot.png")
    assert result["missing_sections"] == [] and result["broken_images"] == 0
    assert result["images"] == 8
    with Image.open(tmp_path / "shot.png") as shot:
        assert shot.size[0] > 100 and np.asarray(shot).std() > 1  # not a blank page
    broken = tmp_path / "broken.html"
    broken.write_text(page.document("t", [page.section("a", "A", '<img src="gone.png" alt="x">')]))
    result = check_page(broken, ["a", "b"], tmp_path / "shot2.png")
    assert result["broken_images"] == 1 and result["missing_sections"] == ["b"]


def test_confused_pairs_are_the_largest_mistakes():
    matrix = np.array([[5, 3, 0], [0, 4, 1], [7, 0, 9]])
    assert confused_pairs(matrix, 2) == [(2, 0, 7), (0, 1, 3)]
    assert confused_pairs(np.eye(3, dtype=int) * 4) == []


def test_evaluate_links_its_page_with_image_pairs(tmp_path):
    """`raycls evaluate` writes report.html: matrix, and each confused pair as images."""
    make_dataset("digits", tmp_path / "digits", per_class=1, size=16)
    config = ModelConfig(fusion="image_only", text_encoder=None, image_size=32, hidden_dim=16)
    torch.manual_seed(0)
    save_model(build_model(config, [str(i) for i in range(10)]), tmp_path / "model")
    data = tmp_path / "digits" / "test"
    result = CliRunner().invoke(
        cli, ["evaluate", str(tmp_path / "model"), str(data), "--out", str(tmp_path / "eval")]
    )
    assert result.exit_code == 0, result.output
    assert "report.html" in result.output
    html = (tmp_path / "eval" / EVALUATION_PAGE).read_text()
    for anchor in ("summary", "confusion", "pairs", "per-class"):
        assert f'id="{anchor}"' in html
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    t, p, n = confused_pairs(np.array(metrics["confusion_matrix"]), 1)[0]
    assert f"<h3>{t} → {p}: {n} image{'s' if n != 1 else ''}</h3>" in html
    pairs = html[html.index('id="pairs"') : html.index('id="per-class"')]
    assert len(_images(pairs)) >= 2 and "taken for" in pairs and "a real" in pairs
    assert all(src.startswith("data:image/jpeg") for src in _images(pairs))
