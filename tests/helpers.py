"""Helpers that several test modules share: tiny saved models, generated images, output checks.

Test modules import these from here (or fixtures from conftest.py), never from each other.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from PIL import Image
from tiny_models import make_tiny_bert

from raycls.config import Config, ModelConfig, load_config
from raycls.io.storage import get_filesystem

LABELS = ["cat", "dog", "bird"]
SMALL = {"image_size": 32, "hidden_dim": 32}
FAST = {"batch_size": 16, "lr": 3e-3, "warmup_fraction": 0.0, "keep_checkpoints": 1}


def make_model(root: Path, seed: int = 0, fusion: str = "concat") -> str:
    """A tiny resnet18 + 2-layer BERT fused model over LABELS, saved as `raycls train` saves."""
    import torch

    from raycls.models import build_model, save_model

    bert = make_tiny_bert(root / "bert")
    torch.manual_seed(seed)
    config = ModelConfig(
        backbone="resnet18", image_size=32, text_encoder=bert, hidden_dim=32, fusion=fusion
    )
    save_model(build_model(config, LABELS), root / "model")
    return str(root / "model")


def image_only(**train) -> Config:
    """Small, fast image-only training settings; `train` adds or replaces train.* keys."""
    return load_config(
        None,
        model={**SMALL, "fusion": "image_only", "text_encoder": "none"},
        train={**FAST, **train},
    )


def image_bytes(seed: int, size: tuple[int, int] = (48, 40), fmt: str = "JPEG") -> bytes:
    """A random-noise image of `size` (width, height), encoded as `fmt`."""
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt)
    return buf.getvalue()


def write_images(folder: Path, n: int, start: int = 0) -> list[Path]:
    """`n` JPEGs img{start:04d}.jpg ... in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(start, start + n):
        path = folder / f"img{i:04d}.jpg"
        path.write_bytes(image_bytes(i))
        paths.append(path)
    return paths


def read_output(out: str | Path) -> pa.Table:
    """All part files of a local classify output folder, in shard order."""
    files = sorted(Path(out).glob("part-*.parquet"))
    return pa.concat_tables(pq.read_table(f) for f in files)


def check_rows(table: pa.Table, key: str) -> None:
    """Every row well-formed: ok rows have a label in LABELS and sorted top-k; errors a message."""
    for row in table.to_pylist():
        if row["status"] == "ok":
            assert row["label"] in LABELS and row["error"] is None
            assert row["top_k_labels"][0] == row["label"] and len(row["top_k_labels"]) == 3
            assert row["top_k_scores"] == sorted(row["top_k_scores"], reverse=True)
            assert row["score"] == pytest.approx(row["top_k_scores"][0])
        else:
            assert row["status"] == "error" and row["error"] and row["label"] is None
    assert table.column_names[0] == key


def object_names(uri: str) -> set[str]:
    """The objects under `uri`, as paths relative to it."""
    fs, base = get_filesystem(uri)
    infos = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
    return {i.path[len(base) + 1 :] for i in infos if i.type == pafs.FileType.File}


def tiny_config(**train) -> Config:
    """Image-only settings on a 0.4M-parameter backbone: small checkpoints."""
    return image_only(**train).replace(model={"backbone": "shufflenet_v2_x0_5"})


def no_delays(monkeypatch) -> None:
    """Storage retries without waiting."""
    monkeypatch.setattr("raycls.io.retry.FIRST_DELAY_S", 0.0)
    monkeypatch.setattr("raycls.io.retry.MAX_DELAY_S", 0.0)


def result_rows(shard: int, positions: list[int], total: int, last_error: bool = False) -> pa.Table:
    """Result rows as the classify stages hand them to the driver (one shard's slice)."""
    n = len(positions)
    status = ["ok"] * n
    if last_error and n:
        status[-1] = "error"
    return pa.table(
        {
            "key": [f"s{shard}r{p}" for p in positions],
            "shard": pa.array([shard] * n, pa.int32()),
            "shard_rows": pa.array([total] * n, pa.int32()),
            "row": pa.array(positions, pa.int32()),
            "label": ["cat"] * n,
            "score": pa.array([0.5] * n, pa.float32()),
            "top_k_labels": [["cat"]] * n,
            "top_k_scores": pa.array([[0.5]] * n, pa.list_(pa.float32())),
            "caption": pa.nulls(n, pa.string()),
            "status": status,
            "error": pa.nulls(n, pa.string()),
        }
    )
