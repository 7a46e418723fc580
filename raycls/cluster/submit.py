"""Running raycls commands on a Ray cluster as Ray jobs (the Job Submission API).

The cluster is reached through its dashboard URL (http://HEAD:8265). When Ray's token
authentication is on, the token is read where Ray keeps it (RAY_AUTH_TOKEN,
RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token) and sent as a header; it is never logged. What is
uploaded as the job's working dir is decided in `raycls.cluster.upload`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from raycls.cluster.runtime import WORKER_ENV
from raycls.cluster.upload import MAX_UPLOAD_MB, Upload, plan_upload, staged
from raycls.io.storage import has_credentials, is_uri, redact

logger = logging.getLogger(__name__)

DASHBOARD_PORT = 8265
ADDRESS_HELP = (
    f"Pass --address http://HEAD:{DASHBOARD_PORT} or set RAY_ADDRESS=http://HEAD:{DASHBOARD_PORT} "
    "(the cluster's dashboard URL; with cluster.yaml keep `ray dashboard cluster.yaml` running "
    f"and use http://127.0.0.1:{DASHBOARD_PORT})."
)
# Well-known head ports that are not the Job API, so a wrong port gets a precise error.
_OTHER_HEAD_PORTS = {6379: "the GCS port", 10001: "the Ray Client port"}
EXIT_CODES = {"SUCCEEDED": 0, "FAILED": 1, "STOPPED": 1}
LogSink = Callable[[str], None]


class JobError(RuntimeError):
    """The cluster or its Job API refused or failed a request."""


@dataclass(frozen=True)
class JobOutcome:
    """A submitted job: its id, last known status, Ray's message and the exit code to return."""

    job_id: str
    status: str
    message: str | None
    exit_code: int


def resolve_address(address: str | None = None) -> str:
    """The Job API URL from `address` or RAY_ADDRESS; raises ValueError saying how to set one."""
    address = (address or os.environ.get("RAY_ADDRESS") or "").strip()
    if not address:
        raise ValueError(f"No Ray cluster address. {ADDRESS_HELP}")
    if address in ("auto", "local"):
        raise ValueError(f"RAY_ADDRESS/--address {address!r} names no cluster. {ADDRESS_HELP}")
    has_scheme = is_uri(address)
    parts = urlsplit(address if has_scheme else f"http://{address}")
    try:
        port = parts.port
    except ValueError as error:
        raise ValueError(f"Bad port in Ray address {address!r}. {ADDRESS_HELP}") from error
    host = parts.hostname
    if parts.scheme == "ray":
        raise ValueError(
            f"{address!r} is a Ray Client address; jobs go to the dashboard instead: "
            f"--address http://{host or 'HEAD'}:{DASHBOARD_PORT}"
        )
    if parts.scheme not in ("http", "https") or not host:
        raise ValueError(f"Cannot submit jobs to {address!r}. {ADDRESS_HELP}")
    if port in _OTHER_HEAD_PORTS:
        raise ValueError(
            f"Port {port} of {address!r} is {_OTHER_HEAD_PORTS[port]}, not the Job API: "
            f"use the dashboard port, --address http://{host}:{DASHBOARD_PORT}"
        )
    if not has_scheme and port is None:
        return f"http://{address.rstrip('/')}:{DASHBOARD_PORT}"
    return parts.geturl().rstrip("/")


def source_checkout() -> Path | None:
    """The repository root when raycls runs from a source checkout, else None."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").is_file() else None


def build_job(
    args: list[str], working_dir: str | None = None, max_upload_mb: float = MAX_UPLOAD_MB
) -> tuple[str, dict[str, Any], Upload | None]:
    """The entrypoint, runtime env and upload (None: nothing) that run `raycls ARGS` there.

    The working dir is `working_dir`, else this source checkout, else none (the cluster's
    installed raycls runs); see `raycls.cluster.upload` for what of it goes up. When the upload
    holds the raycls package the entrypoint is `python -m raycls`: the job's cwd is the
    uploaded copy and `-m` puts it first on sys.path, so the uploaded code runs rather than
    whatever the cluster has installed. `submit_job` adds the staged folder as working_dir.
    """
    args = list(args[1:] if args and args[0] == "raycls" else args)
    if not args:
        raise ValueError(
            "No raycls command to submit; e.g. raycls submit -- classify s3://bucket/images "
            "--model s3://bucket/model --out s3://bucket/predictions"
        )
    _refuse_credentials(args)
    root = Path(working_dir).expanduser().resolve() if working_dir else source_checkout()
    runtime_env: dict[str, Any] = {"env_vars": dict(WORKER_ENV)}
    if root is None:
        return shlex.join(["raycls", *args]), runtime_env, None
    if not root.is_dir():
        raise ValueError(f"--working-dir {working_dir!r} is not a folder.")
    upload = plan_upload(root, checkout=working_dir is None, named=args, max_mb=max_upload_mb)
    runner = ["python", "-m", "raycls"] if "raycls/__init__.py" in upload.files else ["raycls"]
    return shlex.join([*runner, *args]), runtime_env, upload


def _refuse_credentials(args: list[str]) -> None:
    """Ray keeps a job's command line for anyone who can read its job list or dashboard."""
    for arg in args:
        if has_credentials(arg):
            raise ValueError(
                f"The argument {redact(arg)!r} holds credentials inside a URI, and Ray records "
                "a job's command line where anyone with access to the cluster's dashboard can "
                "read it. Give the cluster its own storage credentials (an instance role or "
                "service account, or AWS_*/GOOGLE_* variables on its nodes) and pass the URI "
                "without them."
            )


def _auth_headers() -> dict[str, str]:
    """Ray's token header when a token is configured, unless RAY_AUTH_MODE=disabled.

    Ray's own client sends the token only when RAY_AUTH_MODE=token is set in this process;
    `ray start --head` turns auth on whenever a token exists, so follow that rule instead.
    """
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        return {}
    from ray._raylet import AuthenticationTokenLoader  # private, checked against Ray 2.60

    return AuthenticationTokenLoader.instance().get_token_for_http_header(ignore_auth_mode=True)


@contextlib.contextmanager
def _api_errors(address: str) -> Iterator[None]:
    """Turn the Job SDK's errors into JobError, with the address for context."""
    from ray.exceptions import RayError

    try:
        yield
    except ConnectionError as error:
        raise JobError(f"{error} Is the cluster up? {ADDRESS_HELP}") from None
    except (RuntimeError, RayError) as error:
        if isinstance(error, JobError):
            raise
        raise JobError(f"Ray Job API at {address}: {error}") from None


def _client(address: str | None) -> Any:
    from ray.job_submission import JobSubmissionClient

    url = resolve_address(address)
    with _api_errors(url):
        return JobSubmissionClient(url, headers=_auth_headers())


def _follow(client: Any, job_id: str, on_log: LogSink) -> None:
    """Pass the job's log chunks to `on_log` until the job ends."""

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            on_log(chunk)

    asyncio.run(tail())


def _wait_until_done(client: Any, job_id: str, poll_s: float = 0.5) -> Any:
    """Poll until the job is terminal; the log stream can close a moment before."""
    while True:
        info = client.get_job_info(job_id)
        if info.status.is_terminal():
            return info
        time.sleep(poll_s)


def submit_job(
    args: list[str],
    *,
    address: str | None = None,
    wait: bool = True,
    working_dir: str | None = None,
    on_log: LogSink | None = None,
    on_upload: Callable[[Upload], None] | None = None,
    max_upload_mb: float = MAX_UPLOAD_MB,
) -> JobOutcome:
    """Submit `raycls ARGS` as a Ray job; with `wait`, follow its logs and return its outcome.

    `on_upload` hears what will be uploaded before the upload starts.
    """
    entrypoint, runtime_env, upload = build_job(args, working_dir, max_upload_mb)
    client = _client(address)
    if upload is not None and on_upload is not None:
        on_upload(upload)
    with _api_errors(client.get_address()):
        with staged(upload) if upload is not None else contextlib.nullcontext() as folder:
            if folder is not None:
                runtime_env["working_dir"] = folder
            job_id = client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env)
        logger.info("Submitted job %s: %s", job_id, entrypoint)
        if not wait:
            return JobOutcome(job_id, "PENDING", None, 0)
        try:
            if on_log is not None:
                try:
                    _follow(client, job_id, on_log)
                except RuntimeError as error:
                    logger.warning("Log stream of job %s broke (%s); waiting for it", job_id, error)
            info = _wait_until_done(client, job_id)
        except KeyboardInterrupt:
            logger.warning(
                "Job %s keeps running; stop it with: raycls jobs stop %s", job_id, job_id
            )
            raise
    status = str(info.status)
    return JobOutcome(job_id, status, info.message, EXIT_CODES.get(status, 1))


def list_jobs(address: str | None = None) -> list[dict[str, Any]]:
    """The cluster's jobs, oldest first, as plain dicts."""
    client = _client(address)
    with _api_errors(client.get_address()):
        details = client.list_jobs()
    rows = [
        {
            "job_id": job.submission_id or job.job_id,
            "status": str(job.status),
            "start_time": job.start_time,
            "end_time": job.end_time,
            "entrypoint": redact(job.entrypoint or ""),
            "message": None if job.message is None else redact(job.message),
        }
        for job in details
    ]
    return sorted(rows, key=lambda row: row["start_time"] or 0)


def job_logs(
    job_id: str, on_log: LogSink, *, address: str | None = None, follow: bool = False
) -> None:
    """Pass the job's logs to `on_log`; with `follow`, keep streaming until the job ends."""
    client = _client(address)
    with _api_errors(client.get_address()):
        if follow:
            client.get_job_info(job_id)  # an unknown id fails here, with the API's message
            _follow(client, job_id, on_log)
        else:
            on_log(client.get_job_logs(job_id))


def stop_job(job_id: str, *, address: str | None = None) -> bool:
    """Ask the cluster to stop a job; False when it was no longer running."""
    client = _client(address)
    with _api_errors(client.get_address()):
        return bool(client.stop_job(job_id))
