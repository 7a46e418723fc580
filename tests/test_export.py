"""raycls export: ONNX / TorchScript / safetensors files, each checked against the torch model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import LABELS, make_model, write_images

from raycls.cli import cli
from raycls.config import ModelConfig

pytest.importorskip("onnxruntime", reason="needs the export extra: pip install raycls[export]")


@pytest.fixture(scope="module")
def fused_dir(tmp_path_factory) -> str:
    return make_model(tmp_path_factory.mktemp("fused"), fusion="cross_attention")


@pytest.fixture(scope="module")
def resnet_dir(tmp_path_factory) -> str:
    import torch

    from raycls.models import build_model, save_model

    torch.manual_seed(0)
    config = ModelConfig(backbone="resnet18", image_size=64, text_encoder=None,
                         fusion="image_only", hidden_dim=32)  # fmt: skip
    path = tmp_path_factory.mktemp("resnet") / "model"
    save_model(build_model(config, LABELS), path)
    return str(path)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("imgs")
    write_images(folder, 5)
    return str(folder)


def _onnx_meta(path: str) -> dict:
    import onnx

    model = onnx.load(path, load_external_data=False)
    return {p.key: json.loads(p.value) for p in model.metadata_props}


def test_parity_check_fails_over_the_tolerance(resnet_dir):
    import torch

    from raycls.models import load_model
    from raycls.serve.parity import ParityError, check_parity

    model = load_model(resnet_dir)

    def off_by(delta: float):
        def run(inputs: dict) -> np.ndarray:
            with torch.no_grad():
                return model(inputs["pixels"]).numpy() + delta

        return run

    assert check_parity(model, off_by(0.0), None, 1e-3)["max_abs_diff"]["random"] == 0.0
    with pytest.raises(ParityError, match="differ from torch's by up to 0.01"):
        check_parity(model, off_by(0.01), None, 1e-3)


@pytest.mark.integration
def test_fused_model_to_onnx_through_the_cli(tmp_path, fused_dir, images):
    """CNN, text encoder and cross-attention head in one graph; tokenizer named in metadata."""
    import onnxruntime
    import torch

    from raycls.models import load_model

    out = tmp_path / "model.onnx"
    args = ["export", fused_dir, "--format", "onnx", "--out", str(out), "--check-images", images]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "random inputs: max |logit difference|" in result.output
    assert "real inputs: max |logit difference|" in result.output
    assert "tokenizer" in result.output
    # The summary JSON; stderr lines (progress bars, warnings) may follow it in result.output.
    summary, _ = json.JSONDecoder().raw_decode(result.output[result.output.index("{") :])
    assert summary["inputs"] == ["pixels", "input_ids", "attention_mask", "has_text"]
    assert max(summary["max_abs_diff"].values()) <= 1e-3 and summary["rows_checked"]["real"] == 5
    meta = _onnx_meta(str(out))
    assert meta["labels"] == LABELS and meta["preprocess"]["image_size"] == 32
    assert meta["preprocess"]["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert meta["text"]["max_text_length"] == 64
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[0] == "batch"  # a dynamic batch axis
    model = load_model(fused_dir)
    tokens = model.tokenize(["a dog", None, "blue sky", None, None, "a big red house"])
    pixels = torch.randn(6, 3, 32, 32)
    feed = {"pixels": pixels.numpy(), **{k: v.numpy() for k, v in tokens.items()}}
    with torch.no_grad():
        expected = model(pixels, **tokens).numpy()
    assert np.abs(session.run(None, feed)[0] - expected).max() <= 1e-3


def test_resnet18_image_only_to_onnx_and_torchscript(tmp_path, resnet_dir, images):
    import onnxruntime
    import torch

    from raycls.serve.export import METADATA_FILE, export_model

    onnx_file = str(tmp_path / "r18.onnx")
    summary = export_model(resnet_dir, onnx_file, "onnx", check_images=[images])
    assert summary["inputs"] == ["pixels"] and summary["max_abs_diff"]["real"] <= 1e-3
    meta = _onnx_meta(onnx_file)
    assert meta["inputs"] == ["pixels"] and "text" not in meta
    session = onnxruntime.InferenceSession(onnx_file, providers=["CPUExecutionProvider"])
    for batch in (1, 7):
        logits = session.run(None, {"pixels": np.zeros((batch, 3, 64, 64), np.float32)})[0]
        assert logits.shape == (batch, len(LABELS))
    script_file = str(tmp_path / "r18.pt")
    summary = export_model(resnet_dir, script_file, "torchscript", check_images=[images])
    assert summary["max_abs_diff"]["random"] <= 1e-3
    extra = {METADATA_FILE: ""}
    torch.jit.load(script_file, _extra_files=extra)
    assert json.loads(extra[METADATA_FILE])["labels"] == LABELS


def test_safetensors_only_holds_the_weights_and_metadata(tmp_path, fused_dir):
    from safetensors import safe_open

    from raycls.serve.export import export_model

    out = str(tmp_path / "weights.safetensors")
    export_model(fused_dir, out, "safetensors-only")
    with safe_open(out, "pt") as f:
        meta = json.loads(f.metadata()["raycls"])
        assert any(k.startswith("text.model.") for k in f.keys())
    assert meta["labels"] == LABELS and meta["model"]["fusion"] == "cross_attention"
    assert Path(fused_dir, "text_encoder").is_dir() and "tokenizer" in meta["text"]["tokenizer"]


def test_unknown_format_is_refused(tmp_path, resnet_dir):
    from raycls.serve.export import export_model

    with pytest.raises(ValueError, match="choose one of: onnx, torchscript, safetensors-only"):
        export_model(resnet_dir, str(tmp_path / "x"), "tflite")
