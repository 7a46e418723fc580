"""`raycls submit` and `raycls jobs` against a real Ray head on loopback, started and stopped here.

The head gets its own --temp-dir and ports, and is stopped by killing exactly the processes
started for it: other Ray instances on the machine (other test sessions) are left alone.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from raycls.cli import main
from raycls.cluster import submit

VENV_BIN = Path(sys.executable).parent
HEAD_PORT_FLAGS = (
    "--port",
    "--dashboard-port",
    "--ray-client-server-port",
    "--dashboard-agent-listen-port",
    "--dashboard-agent-grpc-port",
    "--runtime-env-agent-port",
    "--metrics-export-port",
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ensure_auth_token() -> None:
    """A token where Ray looks for one (~/.ray/auth_token unless RAY_AUTH_TOKEN* say otherwise)."""
    from ray._private.authentication.authentication_token_setup import generate_and_save_token
    from ray._raylet import AuthenticationTokenLoader

    loader = AuthenticationTokenLoader.instance()
    if not loader.has_token(ignore_auth_mode=True):
        generate_and_save_token()
        loader.reset_cache()


def _stop_head(proc: subprocess.Popen) -> None:
    """SIGTERM `ray start --block` (it shuts its node down), then kill whatever it left."""
    import psutil

    try:
        family = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        family = []
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    _, alive = psutil.wait_procs(family, timeout=10)
    for leftover in alive:
        leftover.kill()
    # Its own session and process group (start_new_session): catches any daemon it spawned.
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


@pytest.fixture(scope="module")
def ray_head() -> str:
    """A Ray head with dashboard and token auth on 127.0.0.1; yields the Job API URL."""
    _ensure_auth_token()
    temp_dir = tempfile.mkdtemp(prefix="rcsub", dir="/tmp")  # short: Ray's socket paths
    ports = {flag: _free_port() for flag in HEAD_PORT_FLAGS}
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    # Auth on for the head (and the jobs it runs); the job's `python` must be this venv's.
    env.update(RAY_AUTH_MODE="token", RAY_USAGE_STATS_ENABLED="0")
    # Ray turns --node-ip-address=127.0.0.1 into the host's address (and binds there) unless
    # its single-machine mode is on: see raycls.cluster.runtime._loopback_node_ip.
    env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    command = [
        str(VENV_BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
        "--dashboard-host=127.0.0.1", "--include-dashboard=true", "--num-cpus=2",
        "--object-store-memory=200000000", f"--temp-dir={temp_dir}", "--disable-usage-stats",
        *(f"{flag}={port}" for flag, port in ports.items()),
    ]  # fmt: skip
    log_path = Path(temp_dir) / "ray_start.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{ports['--dashboard-port']}"
    try:
        _wait_for_job_api(url, proc, log_path)
        yield url
    finally:
        _stop_head(proc)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _wait_for_job_api(url: str, proc: subprocess.Popen, log_path: Path, timeout_s: float = 90):
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            pytest.fail(f"ray start exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            submit.list_jobs(url)
            return
        except submit.JobError:
            if time.monotonic() > deadline:
                pytest.fail(f"No Job API at {url} after {timeout_s} s")
            time.sleep(0.5)


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """Run `raycls ARGV` as a user would; returns (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exited:
        main(argv)
    out, err = capsys.readouterr()
    return exited.value.code or 0, out, err


def submit_and_check(url: str, command: list[str], capsys, *, expect_ok: bool = True) -> str:
    """`raycls submit` COMMAND, assert its outcome; returns everything it printed."""
    code, out, err = run_cli(["submit", "--address", url, "--", *command], capsys)
    printed = out + err
    assert (code == 0) == expect_ok, f"exit {code}:\n{printed}"
    assert ("SUCCEEDED" if expect_ok else "FAILED") in printed
    return printed


def test_submitted_classify_job_writes_parquet(ray_head, tmp_path, capsys):
    import pyarrow.parquet as pq

    from raycls.config import ModelConfig
    from raycls.demo.datasets import make_dataset
    from raycls.models import build_model, save_model

    make_dataset("digits", tmp_path / "digits", per_class=2, size=16)
    images = tmp_path / "digits" / "test"
    labels = sorted(p.name for p in images.iterdir() if p.is_dir())
    model = ModelConfig(backbone="resnet18", image_size=32, text_encoder=None, fusion="image_only")
    save_model(build_model(model, labels), tmp_path / "model")
    out = tmp_path / "predictions"

    submit_and_check(
        ray_head,
        ["classify", str(images), "--model", str(tmp_path / "model"), "--out", str(out)],
        capsys,
    )
    table = pq.read_table(out)
    expected = sum(1 for _ in images.rglob("*.png"))
    assert table.num_rows == expected > 0
    assert set(table.column("status").to_pylist()) == {"ok"}
    assert set(table.column("label").to_pylist()) <= set(labels)


_LIST_WORKING_DIR = """
import os

for folder, _, files in os.walk("."):
    for name in files:
        print("UPLOADED", os.path.relpath(os.path.join(folder, name)))
"""


def test_the_cluster_receives_no_secrets_or_data(ray_head, tmp_path, capsys):
    """A stand-in raycls package in the working dir lists what reached the job."""
    files = {
        "raycls/__init__.py": "",
        "raycls/__main__.py": _LIST_WORKING_DIR,
        "configs/run.yaml": "train: {epochs: 1}\n",
        ".env": "AWS_SECRET_ACCESS_KEY=x\n",
        "id_rsa": "key\n",
        ".aws/credentials": "[default]\n",
        "data/cat/1.jpg": "x",
        "models/best/model.safetensors": "x",
        "out/part-000000.parquet": "x",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    argv = ["submit", "--address", ray_head, "--working-dir", str(tmp_path), "--", "list"]
    code, out, err = run_cli(argv, capsys)
    assert code == 0, out + err
    uploaded = sorted(line.split()[1] for line in out.splitlines() if line.startswith("UPLOADED"))
    assert uploaded == ["configs/run.yaml", "raycls/__init__.py", "raycls/__main__.py"]
    assert "Uploading 3 files" in err and ".env" in err  # the secrets left behind are named


def test_failed_job_exits_nonzero_and_shows_its_error(ray_head, capsys):
    printed = submit_and_check(
        ray_head, ["make-dataset", "digits", "/tmp/unused", "--size", "2"], capsys, expect_ok=False
    )
    assert "Invalid value for '--size'" in printed
    assert "exit code 2" in printed  # Ray's JobDetails.message


def test_jobs_list_logs_and_stop(ray_head, capsys):
    code, job_id, _ = run_cli(
        ["submit", "--no-wait", "--address", ray_head, "--", "make-dataset", "--help"], capsys
    )
    job_id = job_id.strip()
    assert code == 0 and job_id.startswith("raysubmit_")

    code, out, _ = run_cli(["jobs", "logs", job_id, "--follow", "--address", ray_head], capsys)
    assert code == 0 and "Write a demo data set" in out

    code, out, _ = run_cli(["jobs", "list", "--address", ray_head], capsys)
    assert code == 0 and job_id in out and "SUCCEEDED" in out

    code, out, _ = run_cli(["jobs", "stop", job_id, "--address", ray_head], capsys)
    assert code == 0 and "was not running" in out

    code, _, err = run_cli(["jobs", "logs", "raysubmit_nope", "--address", ray_head], capsys)
    assert code == 1 and "raysubmit_nope" in err


def test_submit_without_an_address_says_how_to_set_one(monkeypatch, capsys):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    code, _, err = run_cli(["submit", "--", "make-dataset", "digits", "x"], capsys)
    assert code == 1 and "RAY_ADDRESS=http://" in err


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("http://10.0.0.1:8265/", "http://10.0.0.1:8265"),
        ("https://ray.example.com", "https://ray.example.com"),
        ("10.0.0.1", "http://10.0.0.1:8265"),
        ("head:8266", "http://head:8266"),
    ],
)
def test_resolve_address(address, expected):
    assert submit.resolve_address(address) == expected


@pytest.mark.parametrize(
    ("address", "hint"),
    [("ray://head:10001", "http://head:8265"), ("head:6379", "GCS"), ("auto", "RAY_ADDRESS")],
)
def test_resolve_address_rejects_non_dashboard_addresses(address, hint):
    with pytest.raises(ValueError, match=hint):
        submit.resolve_address(address)
