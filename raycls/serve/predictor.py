"""Images in one request -> result rows, through the bulk pipeline's own stages (no Ray).

`Predictor` decodes with `bulk.stages.decode_rows` (io.images' checks, limits and
preprocessing) and predicts with `bulk.stages.ClassifyStage` (and `CaptionStage` when a
captioner is set), so a served image gets exactly the row `raycls classify` writes for it.
Decoding and the forward pass are separate calls: the server decodes per request, in threads,
and batches only the forward pass across requests.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from raycls.bulk.stages import CaptionStage, ClassifyStage, decode_rows
from raycls.config import ClassifyConfig
from raycls.models.predictor import ModelSpec, resolve_model
from raycls.serve.settings import ServeSettings

# The per-row fields of a bulk output row, without its key column (the request names images).
ROW_FIELDS = ("label", "score", "top_k_labels", "top_k_scores", "caption", "status", "error")
CAPTION_IMAGE_SIZE = ClassifyConfig.caption_image_size


def model_spec(model_dir: str, settings: ServeSettings) -> ModelSpec:
    """What MODEL_DIR is (any kind `raycls classify` takes), as the settings say."""
    s = settings
    return resolve_model(model_dir, kind=s.model_kind, labels=s.labels, raw_scores=s.raw_scores,
                         trust_remote_code=s.trust_remote_code)  # fmt: skip


def load_classifier(spec: ModelSpec, settings: ServeSettings) -> ClassifyStage:
    """The one place a served model is loaded: anything `raycls classify` can run.

    What `Predictor` needs of the result: `labels`, and calling it on a decoded batch (the
    columns `decode_rows` makes) yields result tables with `bulk.stages.RESULT_COLUMNS`.
    """
    return ClassifyStage(
        spec.to_dict(),
        top_k=settings.top_k,
        batch_size=settings.max_batch_size,
        num_cpus=settings.num_cpus,
        use_gpu=settings.num_gpus > 0,
    )


class Predictor:
    """Decode a request's images; classify decoded rows gathered from any number of requests."""

    def __init__(self, model_dir: str, settings: ServeSettings) -> None:
        self.settings = settings
        self.model_dir = model_dir
        self.spec = model_spec(model_dir, settings)
        self.classifier = load_classifier(self.spec, settings)
        self.labels: list[str] = [str(label) for label in self.classifier.labels]
        self.image_size = self.spec.image.size
        self.captioner = None
        if settings.captioner:
            self.captioner = CaptionStage(
                settings.captioner,
                prompt=settings.caption_prompt,
                max_new_tokens=settings.max_new_tokens,
                trust_remote_code=settings.trust_remote_code,
                batch_size=settings.max_batch_size,
                num_cpus=settings.num_cpus,
                use_gpu=settings.num_gpus > 0,
            )

    def decode(self, images: list[bytes], texts: list[str | None]) -> list[dict[str, Any]]:
        """One item per image: `pixels` (and caption inputs) when it decoded, else its error."""
        n = len(images)
        batch = {
            "key": _objects([str(i) for i in range(n)]),
            "image": _objects(images),
            "error": _objects([None] * n),
            "text": _objects(texts),
        }
        caption_size = CAPTION_IMAGE_SIZE if self.captioner else None
        (out,) = decode_rows(batch, size=self.image_size, max_pixels=self.settings.max_pixels,
                             caption_size=caption_size, chunk_rows=max(n, 1))  # fmt: skip
        columns = [k for k in ("pixels", "caption_image", "wants_caption") if k in out]
        return [
            {"text": texts[i], "status": out["status"][i], "error": out["error"][i],
             **{k: out[k][i] for k in columns}}
            for i in range(n)
        ]  # fmt: skip

    def predict(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Result rows for decoded items (any mix of requests) in one forward pass."""
        n = len(items)
        batch: dict[str, np.ndarray] = {
            "key": _objects([str(i) for i in range(n)]),
            "shard": np.zeros(n, np.int32),
            "shard_rows": np.full(n, n, np.int32),
            "row": np.arange(n, dtype=np.int32),
            "text": _objects([item["text"] for item in items]),
            "status": _objects([item["status"] for item in items]),
            "error": _objects([item["error"] for item in items]),
            "pixels": np.stack([item["pixels"] for item in items]),
        }
        if self.captioner is not None:
            for name in ("caption_image", "wants_caption"):
                batch[name] = np.stack([item[name] for item in items])
            batch = self.captioner(batch)
        table = pa.concat_tables(self.classifier(batch))
        return [{k: row[k] for k in ROW_FIELDS} for row in table.to_pylist()]


def _objects(values: list[Any]) -> np.ndarray:
    """A 1-D object array, whatever the values (numpy would make bytes or str arrays)."""
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out
