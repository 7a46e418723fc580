"""The Ray Serve application: one deployment that answers HTTP and batches forward passes.

Per request, the replica reads the body (bounded), decodes its images in a thread pool, then
sends each decoded image to `_forward`, which `@serve.batch` gathers across all concurrent
requests into one forward pass, run in its own thread so the event loop keeps decoding and
answering meanwhile. A failure inside a request becomes its JSON error; the replica goes on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse

from raycls.models.predictor import model_identity
from raycls.serve.http import (
    RequestError,
    check_token,
    error_status,
    read_body,
    response_status,
    split_images,
)
from raycls.serve.predictor import ROW_FIELDS, Predictor, model_spec
from raycls.serve.settings import ServeSettings

logger = logging.getLogger(__name__)

DEPLOYMENT = "classifier"
DECODE_THREADS = 2


class ClassifierServer:
    """The deployment's class: GET /healthz, GET /v1/model, POST /v1/classify."""

    def __init__(self, model_dir: str, settings: dict[str, Any]) -> None:
        self.settings = ServeSettings.from_dict(settings)
        self.model_dir = model_dir
        self.predictor = Predictor(model_dir, self.settings)
        self.decode_pool = ThreadPoolExecutor(DECODE_THREADS, thread_name_prefix="decode")
        self.forward_pool = ThreadPoolExecutor(1, thread_name_prefix="forward")
        self._forward.set_max_batch_size(self.settings.max_batch_size)
        self._forward.set_batch_wait_timeout_s(self.settings.batch_wait_ms / 1000)
        public = {k: v for k, v in self.settings.to_dict().items() if k != "token_sha256"}
        self.info = {
            "model": model_dir,
            **model_identity(self.predictor.spec),
            "labels": self.predictor.labels,
            "image_size": self.predictor.image_size,
            "settings": {**public, "token": self.settings.token_sha256 is not None},
        }

    async def __call__(self, request: Request) -> JSONResponse:
        try:
            return await self._route(request)
        except RequestError as err:
            return JSONResponse({"error": err.message}, status_code=err.status)
        except Exception as err:  # a bug must cost one request, never the replica
            logger.exception("request %s %s failed", request.method, request.url.path)
            return JSONResponse(
                {"error": f"internal error: {type(err).__name__}: {err}"}, status_code=500
            )

    async def _route(self, request: Request) -> JSONResponse:
        routes = {"/healthz": "GET", "/v1/model": "GET", "/v1/classify": "POST"}
        path = request.url.path.rstrip("/") or "/"
        if path not in routes:
            raise RequestError(404, f"no route {path!r}; try POST /v1/classify, GET /v1/model")
        if request.method != routes[path]:
            raise RequestError(405, f"{path} takes {routes[path]}, not {request.method}")
        if path == "/healthz":
            return JSONResponse({"status": "ok"})
        check_token(request.headers, self.settings.token_sha256)
        if path == "/v1/model":
            return JSONResponse(self.info)
        return await self._classify(request)

    async def _classify(self, request: Request) -> JSONResponse:
        started = time.perf_counter()
        body = await read_body(request.stream(), request.headers.get("content-length"),
                               self.settings.max_body_bytes)  # fmt: skip
        names, images, texts = split_images(body, request.headers.get("content-type"),
                                            self.settings.max_images)  # fmt: skip
        loop = asyncio.get_running_loop()
        items = await loop.run_in_executor(self.decode_pool, self.predictor.decode, images, texts)
        rows = await asyncio.gather(*(self._row(item) for item in items))
        results = [{"key": name, **row, "model": self.model_dir}
                   for name, row in zip(names, rows, strict=True)]  # fmt: skip
        status = response_status(results)
        for row in results:
            if row["status"] != "ok":
                row["http_status"] = error_status(row["error"] or "")
        seconds = round(time.perf_counter() - started, 4)
        return JSONResponse({"results": results, "seconds": seconds}, status_code=status)

    async def _row(self, item: dict[str, Any]) -> dict[str, Any]:
        if item["status"] != "ok":
            return {**dict.fromkeys(ROW_FIELDS), "status": "error", "error": item["error"]}
        return await self._forward(item)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01)
    async def _forward(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.forward_pool, self.predictor.predict, items)


def deployment_options(settings: ServeSettings) -> dict[str, Any]:
    """Replicas (fixed or autoscaled), their resources and how many requests each takes."""
    options: dict[str, Any] = {
        "name": DEPLOYMENT,
        "max_ongoing_requests": settings.max_ongoing_requests,
        "ray_actor_options": {"num_cpus": settings.num_cpus, "num_gpus": settings.num_gpus},
    }
    if settings.autoscale is None:
        options["num_replicas"] = settings.replicas
    else:
        low, high = settings.autoscale
        options["autoscaling_config"] = {
            "min_replicas": low,
            "max_replicas": high,
            "initial_replicas": max(low, 1),
            # Each replica aims at this many requests in flight: enough to fill its batches.
            "target_ongoing_requests": settings.max_batch_size,
        }
    return options


def build_app(model_dir: str, settings: ServeSettings) -> Any:
    """The bound Serve application for `model_dir`."""
    deployment = serve.deployment(ClassifierServer, **deployment_options(settings))
    return deployment.bind(model_dir, settings.to_dict())


def start_server(model_dir: str, settings: ServeSettings, address: str | None = None) -> str:
    """Deploy `model_dir` on Ray Serve (local Ray or `address`); returns the base URL.

    Raises:
        ValueError: `model_dir` is not a saved model (checked before Ray starts).
    """
    from raycls.cluster.runtime import init_ray

    model_spec(model_dir, settings)  # a wrong model or labels fail before Ray starts
    init_ray(address)
    serve.start(http_options={"host": settings.host, "port": settings.port})
    app = build_app(model_dir, settings)
    serve.run(app, name=settings.app_name, route_prefix="/", blocking=False)
    return f"http://{settings.host}:{settings.port}"
