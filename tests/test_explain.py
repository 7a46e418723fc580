"""Explanations: heat maps that land where the logit comes from, modality shares, top tokens,
and `raycls explain` end to end on a tiny gated model. No Ray."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from tiny_models import make_tiny_bert
from torch import nn

from raycls.cli import cli
from raycls.config import ModelConfig
from raycls.demo.datasets import make_dataset
from raycls.inspect.attribution import (
    heat_inside,
    image_heatmaps,
    modality_effects,
    token_attributions,
)
from raycls.inspect.explain import EXPLANATIONS_FILE, SCHEMA, explain
from raycls.models import build_model, save_model


class RedTopLeft(nn.Module):
    """logit 0 = mean red in the top-left quadrant; logit 1 = mean blue everywhere.

    Its "backbone" is the identity on two channels (red, blue), so the feature map is the
    image itself and the right answer for each heat map is known.
    """

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Conv2d(3, 2, 1, bias=False)
        with torch.no_grad():
            self.backbone.weight.zero_()
            self.backbone.weight[0, 0] = 1.0
            self.backbone.weight[1, 2] = 1.0

    def forward(self, pixels, input_ids=None, attention_mask=None, has_text=None):
        fmap = self.backbone(pixels)
        h, w = fmap.shape[-2:]
        red = fmap[:, 0, : h // 2, : w // 2].mean((1, 2))
        return torch.stack([red, fmap[:, 1].mean((1, 2))], dim=1)


def _two_blobs(size: int = 32) -> torch.Tensor:
    """A red square top-left and a blue square bottom-right, on black."""
    px = torch.zeros(1, 3, size, size)
    px[0, 0, 4:12, 4:12] = 1.0
    px[0, 2, 20:28, 20:28] = 1.0
    return px


def _square(lo: int, hi: int, grow: int = 0) -> np.ndarray:
    mask = np.zeros((32, 32), dtype=bool)
    mask[max(0, lo - grow) : hi + grow, max(0, lo - grow) : hi + grow] = True
    return mask


@pytest.mark.parametrize("method", ["gradcam", "occlusion"])
def test_heat_lands_on_the_region_behind_the_logit(method):
    model, pixels = RedTopLeft(), _two_blobs()
    text = {"has_text": torch.zeros(1, dtype=torch.bool)}
    # Grad-CAM runs on the feature map itself here, so its heat is exact; occlusion's windows
    # (4 px) also count positions whose window only overlaps the square's border.
    grow = 0 if method == "gradcam" else 3
    for target, (lo, hi) in ((0, (4, 12)), (1, (20, 28))):
        heat = image_heatmaps(model, pixels, text, torch.tensor([target]), method)
        assert heat.shape == (1, 32, 32) and heat.max() == pytest.approx(1.0)
        assert heat_inside(heat[0], _square(lo, hi, grow)) > 0.99
        assert heat_inside(heat[0], _square(lo, hi)) > 0.5


def test_unknown_method_is_refused():
    with pytest.raises(ValueError, match="gradcam, occlusion"):
        image_heatmaps(RedTopLeft(), _two_blobs(), {}, torch.tensor([0]), "lime")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    """A tiny untrained gated model (frozen tiny BERT) and a small shapes data set."""
    root = tmp_path_factory.mktemp("explain")
    bert = make_tiny_bert(root / "bert")
    make_dataset("shapes", root / "shapes", per_class=2, size=32)
    labels = [
        "red_circle",
        "red_square",
        "red_triangle",
        "green_circle",
        "green_square",
        "green_triangle",
        "blue_circle",
        "blue_square",
        "blue_triangle",
    ]
    torch.manual_seed(0)
    configs = {
        "gated": ModelConfig(fusion="gated", text_encoder=bert, image_size=64, hidden_dim=16),
        "image_only": ModelConfig(
            fusion="image_only", text_encoder=None, image_size=64, hidden_dim=16
        ),
        "text_only": ModelConfig(fusion="text_only", text_encoder=bert, hidden_dim=16),
    }
    models = {name: build_model(c, labels).eval() for name, c in configs.items()}
    save_model(models["gated"], root / "model")
    return {"root": root, "models": models, "data": root / "shapes" / "test"}


def _inputs(model, texts):
    torch.manual_seed(1)
    pixels = torch.randn(len(texts), 3, 64, 64)
    return pixels, model.tokenize(texts)


def test_shares_follow_the_modalities_a_fusion_uses(tiny):
    texts = ["a red circle", None]
    for name, expect_text_share in (("image_only", 0.0), ("text_only", 1.0)):
        model = tiny["models"][name]
        pixels, text = _inputs(model, texts)
        target = model(pixels, **text).argmax(1)
        effects = modality_effects(model, pixels, text, target)
        assert effects.gate_image is None
        assert effects.text_share[0] == pytest.approx(expect_text_share)
    model = tiny["models"]["gated"]
    pixels, text = _inputs(model, texts)
    effects = modality_effects(model, pixels, text, model(pixels, **text).argmax(1))
    assert effects.drop_without_text[1] == 0.0  # the row without text has none to remove
    # The gate as GatedHead computes it, by hand.
    head = model.head
    with torch.no_grad():
        x_v = head.image_norm(model.backbone(pixels).mean((2, 3)))
        pooled, _ = model.text(text["input_ids"], text["attention_mask"])
        text_vec = torch.where(text["has_text"][:, None], pooled, model.no_text.expand(2, -1))
        z = torch.sigmoid(head.gate(torch.cat([x_v, head.text_norm(text_vec)], 1))).mean(1)
    np.testing.assert_allclose(effects.gate_image, z.numpy(), rtol=1e-5)


def test_top_tokens_come_from_the_text_through_a_frozen_encoder(tiny):
    model = tiny["models"]["gated"]
    assert model.text.adaptation == "frozen"
    pixels, text = _inputs(model, ["a photo of a red car", None])
    target = model(pixels, **text).argmax(1)
    tokens = token_attributions(model, pixels, text, target, top=3)
    assert tokens[1] == []
    words = [t for t, _ in tokens[0]]
    assert len(words) == 3 and set(words) <= {"a", "photo", "of", "red", "car"}
    # Gradients must flow through the frozen encoder: all-zero scores would mean they did not.
    assert any(abs(s) > 0 for _, s in tokens[0])
    assert model.text.adaptation == "frozen" and model.backbone is not None
    # The same integrated gradients straight from captum, rerunning the CNN at every step.
    from captum.attr import LayerIntegratedGradients

    ids, mask = text["input_ids"][:1], text["attention_mask"][:1]
    baseline = torch.where(torch.isin(ids, torch.tensor([2, 3])), ids, torch.zeros_like(ids))
    model.text.adaptation = "full"
    try:
        reference = LayerIntegratedGradients(
            lambda i, px, m, h: model(px, i, m, h), model.text.model.get_input_embeddings()
        ).attribute(
            ids,
            baseline,
            target=target[:1],
            n_steps=24,
            additional_forward_args=(pixels[:1], mask, text["has_text"][:1]),
        )
    finally:
        model.text.adaptation = "frozen"
    words = model.text.tokenizer.convert_ids_to_tokens(ids[0].tolist())
    expected = dict(zip(words, reference.sum(-1)[0].tolist(), strict=True))
    for word, score in tokens[0]:
        assert score == pytest.approx(expected[word], rel=1e-4, abs=1e-6)


def test_explain_writes_overlays_parquet_and_page(tiny, tmp_path):
    data = tmp_path / "data"
    import shutil

    shutil.copytree(tiny["data"], data)
    broken = sorted((data / "red_circle").glob("*.png"))[0]
    broken.write_bytes(b"not a png")
    out = tmp_path / "out"
    summary = explain(str(tiny["root"] / "model"), str(data / "red_circle"), str(out), n=10)
    assert summary["rows"] == 10 and summary["error"] == 1
    table = pq.read_table(out / EXPLANATIONS_FILE)
    assert table.schema.equals(SCHEMA)
    rows = table.to_pylist()
    bad = [r for r in rows if r["status"] == "error"]
    assert (
        len(bad) == 1 and bad[0]["path"].endswith(broken.name) and "not an image" in bad[0]["error"]
    )
    page = (out / "index.html").read_text()
    for r in rows:
        if r["status"] != "ok":
            continue
        assert math.isclose(r["image_share"] + r["text_share"], 1.0, rel_tol=1e-5)
        assert 0.0 < r["gate_image"] < 1.0 and 0.0 < r["score"] <= 1.0
        with Image.open(out / r["heatmap"]) as im:
            assert im.size == (64, 64)
        assert f'src="{r["heatmap"]}"' in page
    assert "not an image" in page


def test_explain_cli(tiny, tmp_path):
    out = tmp_path / "cli"
    args = [
        "explain",
        str(tiny["root"] / "model"),
        str(tiny["data"]),
        "--out",
        str(out),
        "--n",
        "2",
        "--method",
        "gradcam",
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    rows = pq.read_table(out / EXPLANATIONS_FILE).to_pylist()
    assert len(rows) == 2 and {r["method"] for r in rows} == {"gradcam"}
    assert all(Path(out / r["heatmap"]).is_file() for r in rows)
    bad = CliRunner().invoke(
        cli, ["explain", str(tiny["root"] / "model"), str(tmp_path / "nope"), "--out", str(out)]
    )
    assert bad.exit_code != 0 and "nope" in bad.output


def test_word_pieces_join_into_words():
    from raycls.inspect.attribution import _words

    tokens = ["a", "cl", "##utter", "##ed", "Ġdog", "▁sky"]
    got = _words(tokens, [0.1, 0.5, 0.25, 0.125, 1.0, 2.0])
    assert got == [("a", 0.1), ("cluttered", 0.875), ("dog", 1.0), ("sky", 2.0)]


def test_sample_input_is_seeded_for_folders_and_takes_the_head_of_parquet(tiny, tmp_path):
    from raycls.inspect.explain import sample_input

    data = str(tiny["data"])
    first = sample_input(data, 4, seed=1).column("key").to_pylist()
    assert first == sample_input(data, 4, seed=1).column("key").to_pylist()
    assert first != sample_input(data, 4, seed=2).column("key").to_pylist()
    sample = sample_input(data, 18)
    texts = dict(zip(sample["key"].to_pylist(), sample["text"].to_pylist(), strict=True))
    assert len(texts) == 18 and any(t for t in texts.values())  # metadata.parquet's text
    images = [p.read_bytes() for p in sorted(Path(data).glob("*/*.png"))[:5]]
    pq.write_table(pa.table({"image": images, "text": list("abcde")}), tmp_path / "x.parquet")
    head = sample_input(str(tmp_path / "x.parquet"), 3)
    assert head.column("text").to_pylist() == ["a", "b", "c"]
    with pytest.raises(ValueError, match="n=0"):
        sample_input(data, 0)
