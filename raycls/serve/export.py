"""`raycls export`: a saved model as one file for other runtimes, checked against torch.

- onnx: the whole classifier (CNN, text encoder, fusion head) as one graph with a dynamic batch
  axis (and sequence axis for text), opset `OPSET`; labels and preprocessing in its metadata.
- torchscript: the same graph traced; metadata in the archive's extra file `raycls.json`.
- safetensors-only: the weights with the metadata in the file header.
Tokenizing is not part of any graph: text inputs come from the tokenizer files in the model's
`text_encoder/` folder (Hugging Face tokenizers), as the metadata says.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from raycls.io.images import IMAGENET_MEAN, IMAGENET_STD
from raycls.io.storage import check_output_file
from raycls.models.classifier import TEXT_DIR, WEIGHTS_FILE, FusedClassifier, load_model
from raycls.serve.graph import ExportGraph, graph_inputs
from raycls.serve.parity import ParityError, check_parity, sample_inputs

logger = logging.getLogger(__name__)

# Each format and the file names it may be written to.
SUFFIXES = {
    "onnx": (".onnx",),
    "torchscript": (".pt", ".pth"),
    "safetensors-only": (".safetensors",),
}
FORMATS = tuple(SUFFIXES)
OPSET = 18  # run by onnxruntime >= 1.14 and current TensorRT/OpenVINO
METADATA_FILE = "raycls.json"


def export_model(
    model_dir: str,
    out: str,
    fmt: str,
    *,
    check_images: list[str] | None = None,
    tolerance: float = 1e-3,
    echo: Callable[[str], None] = logger.info,
) -> dict[str, Any]:
    """Write `model_dir` to the file `out` as `fmt`; check graph formats against torch.

    Returns a summary (format, file, bytes, inputs, parity figures). A graph whose logits differ
    from torch's by more than `tolerance` is deleted and ParityError raised.
    """
    from raycls.bulk.output import model_fingerprint
    from raycls.io.storage import local_copy

    if fmt not in FORMATS:
        raise ValueError(f"export format {fmt!r} is not valid; choose one of: {', '.join(FORMATS)}")
    check_output_file(out, SUFFIXES[fmt])
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with local_copy(model_dir) as folder:
        model = load_model(folder, "cpu")
        meta = metadata(model, model_dir, model_fingerprint(folder)["sha256"])
        if fmt == "safetensors-only":
            _save_weights(Path(folder) / WEIGHTS_FILE, out, meta)
            return {"format": fmt, "file": out, "bytes": os.path.getsize(out)}
    graph = ExportGraph(model)
    example = sample_inputs(model, batch=2, seed=0)
    if fmt == "onnx":
        _save_onnx(graph, example, out, meta)
        run = _onnx_runner(out)
    else:
        _save_torchscript(graph, example, out, meta)
        run = _torchscript_runner(out)
    try:
        parity = check_parity(model, run, check_images, tolerance)
    except ParityError:
        os.remove(out)
        raise
    for name, diff in parity["max_abs_diff"].items():
        echo(f"parity {fmt} vs torch, {name} inputs: max |logit difference| = {diff:.3g}")
    if model.text is not None:
        echo(f"text inputs come from the tokenizer in {model_dir}/{TEXT_DIR} (not in the graph)")
    return {"format": fmt, "file": out, "bytes": os.path.getsize(out),
            "inputs": graph.inputs, **parity}  # fmt: skip


def metadata(model: FusedClassifier, model_dir: str, sha256: str) -> dict[str, Any]:
    """Everything a runtime needs besides the graph: labels, inputs, preprocessing constants."""
    from raycls.models.classifier import _version

    meta: dict[str, Any] = {
        "format": "raycls-export",
        "raycls_version": _version(),
        "source_model": model_dir,
        "source_sha256": sha256,
        "labels": model.labels,
        "model": dataclasses.asdict(model.config),
        "inputs": graph_inputs(model),
        "output": "logits [batch, num_labels]; softmax gives the scores raycls reports",
    }
    if model.backbone is not None:
        meta["preprocess"] = {
            "image_size": model.config.image_size,
            "steps": "decode to RGB (EXIF upright, alpha on white); resize the shorter side to "
            "image_size (bilinear) and centre-crop a square; (pixel / 255 - mean) / std",
            "layout": "pixels: float32 [batch, 3, image_size, image_size], RGB",
            "mean": IMAGENET_MEAN.tolist(),
            "std": IMAGENET_STD.tolist(),
        }
    if model.text is not None:
        meta["text"] = {
            "tokenizer": f"{TEXT_DIR}/ of the source model (Hugging Face tokenizer files)",
            "max_text_length": model.config.max_text_length,
            "inputs": "input_ids, attention_mask int64 [batch, seq]; has_text bool [batch]: "
            "rows without text (has_text false) use the model's learned no-text vector",
        }
    return meta


def _save_weights(weights: Path, out: str, meta: dict[str, Any]) -> None:
    from safetensors.torch import load_file, save_file

    save_file(load_file(str(weights)), out, metadata={"format": "pt", "raycls": json.dumps(meta)})


def _dynamic_shapes(names: list[str]) -> dict[str, dict[int, Any]]:
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq")
    shapes = {"pixels": {0: batch}, "input_ids": {0: batch, 1: seq},
              "attention_mask": {0: batch, 1: seq}, "has_text": {0: batch}}  # fmt: skip
    return {name: shapes[name] for name in names}


def _save_onnx(
    graph: ExportGraph, example: dict[str, torch.Tensor], out: str, meta: dict[str, Any]
) -> None:
    import onnx

    with torch.no_grad():
        program = torch.onnx.export(
            graph, (), kwargs=example, dynamo=True, opset_version=OPSET,
            input_names=graph.inputs, output_names=["logits"],
            dynamic_shapes=_dynamic_shapes(graph.inputs), verbose=False,
        )  # fmt: skip
    proto = program.model_proto
    for key, value in meta.items():
        proto.metadata_props.add(key=key, value=json.dumps(value))
    onnx.save(proto, out)


def _onnx_runner(path: str) -> Callable[[dict[str, torch.Tensor]], Any]:
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return lambda inputs: session.run(None, {n: inputs[n].numpy() for n in names})[0]


def _save_torchscript(
    graph: ExportGraph, example: dict[str, torch.Tensor], out: str, meta: dict[str, Any]
) -> None:
    with torch.no_grad():
        traced = torch.jit.trace(graph, example_kwarg_inputs=example, check_trace=False)
    torch.jit.save(traced, out, _extra_files={METADATA_FILE: json.dumps(meta)})


def _torchscript_runner(path: str) -> Callable[[dict[str, torch.Tensor]], Any]:
    module = torch.jit.load(path)

    def run(inputs: dict[str, torch.Tensor]) -> Any:
        with torch.no_grad():
            return module(**inputs).numpy()

    return run
