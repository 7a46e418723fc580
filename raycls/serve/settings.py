"""Settings of `raycls serve`: a validated frozen dataclass that crosses into Ray as a dict."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from raycls.config import ClassifyConfig

LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class ServeSettings:
    """How a model is served: HTTP, replicas, batching and the per-request limits."""

    host: str = LOOPBACK
    port: int = 8000
    replicas: int = 1
    # (min, max) replicas for Serve's autoscaler; None: a fixed number of `replicas`.
    autoscale: tuple[int, int] | None = None
    num_cpus: float = 1.0  # per replica; torch runs this many threads
    num_gpus: float = 0.0
    max_batch_size: int = 32  # images per forward pass, gathered across requests
    batch_wait_ms: float = 10.0  # how long a forward pass waits to fill its batch
    max_ongoing_requests: int = 64  # per replica; more wait in the proxy
    max_body_bytes: int = 32 << 20  # a larger request body gets 413
    max_images: int = 64  # images in one request
    # Shared with `raycls classify` (its defaults; `raycls serve` reads the classify section).
    max_pixels: int = ClassifyConfig.max_pixels  # per image: io.images' decompression-bomb guard
    top_k: int = ClassifyConfig.top_k
    captioner: str | None = None
    caption_prompt: str | None = None
    max_new_tokens: int = ClassifyConfig.max_new_tokens
    trust_remote_code: bool = False
    model_kind: str = ClassifyConfig.model_kind  # what MODEL_DIR holds (raycls.models.predictor)
    labels: str | None = None  # zero-shot labels: "cat,dog" or a labels YAML
    raw_scores: bool = False
    # sha256 hex of the bearer token (never the token itself); None: no token needed.
    token_sha256: str | None = None
    app_name: str = "raycls"

    def __post_init__(self) -> None:
        if isinstance(self.captioner, str) and self.captioner.lower() in ("", "none", "null"):
            object.__setattr__(self, "captioner", None)
        if not 0 < self.port < 65536:
            raise ValueError(f"serve port={self.port} is not a TCP port; use 1-65535")
        for name in ("replicas", "max_batch_size", "max_ongoing_requests", "max_body_bytes",
                     "max_images", "max_pixels", "top_k", "max_new_tokens"):  # fmt: skip
            if getattr(self, name) < 1:
                raise ValueError(f"serve {name}={getattr(self, name)} must be at least 1")
        for name in ("num_cpus", "num_gpus", "batch_wait_ms"):
            if getattr(self, name) < 0:
                raise ValueError(f"serve {name}={getattr(self, name)} must be at least 0")
        if self.autoscale is not None:
            low, high = self.autoscale
            if not 0 <= low <= high or high < 1:
                raise ValueError(
                    f"serve autoscale={low},{high} needs 0 <= MIN <= MAX and MAX >= 1, e.g. 1,4"
                )
        if self.max_ongoing_requests < self.max_batch_size:
            raise ValueError(
                f"serve max_ongoing_requests={self.max_ongoing_requests} is below "
                f"max_batch_size={self.max_batch_size}: batches could never fill; raise it"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ServeSettings:
        data = dict(data)
        if data.get("autoscale") is not None:
            data["autoscale"] = tuple(data["autoscale"])
        return cls(**data)


def parse_autoscale(text: str) -> tuple[int, int]:
    """'MIN,MAX' -> (MIN, MAX); a clear error for anything else."""
    try:
        low, high = (int(part) for part in text.split(","))
    except ValueError:
        raise ValueError(f"--autoscale {text!r} is not MIN,MAX (two integers), e.g. 1,4") from None
    return low, high
