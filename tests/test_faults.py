"""Nodes and drivers that die mid-job, on a Ray cluster of a head and two worker nodes on this
machine (tests/cluster_nodes.py; every node on 127.0.0.1) with outputs on the test S3 server.

Jobs run as a user runs them: `python -m raycls ... --address 127.0.0.1:PORT` in a process of
its own, so a test can SIGKILL a worker node or the driver while the job runs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from helpers import make_model, object_names, tiny_config, write_images

from raycls.bulk.output import MANIFEST, PART
from raycls.demo.datasets import make_dataset
from raycls.io.storage import get_filesystem

# Minutes each (three Ray nodes start per test; 2-6 minutes at a load average of 25-90 on
# 2 cores): opt-in with -m slow.
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1800)]

ROOT = Path(__file__).resolve().parents[1]
IMAGES, SHARD_SIZE = 600, 20  # 30 part files; the kill comes after the first one
START_TIMEOUT_S = 900  # a loaded machine: Ray and the first epochs take minutes


class Nodes:
    """The cluster process of tests/cluster_nodes.py, and the environment its jobs run in."""

    def __init__(self, workers: int, cpus: int = 1, head_cpus: int | None = None) -> None:
        self.env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}",
                    "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
                    # Ray's OOM killer watches the whole machine: on a shared one it kills
                    # these nodes' workers for others' memory. The faults here are the kills.
                    "RAY_memory_monitor_refresh_ms": "0"}  # fmt: skip
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "cluster_nodes.py"), str(workers), str(cpus),
             *([] if head_cpus is None else [str(head_cpus)])],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=self.env,
        )  # fmt: skip
        self.address = self._read()["address"]

    def command(self, line: str) -> dict:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self._read()

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the cluster process ended (exit code {self.proc.wait()})")
        return json.loads(line)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
            self.proc.wait(timeout=120)

    def raycls(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "raycls", *args, "--address", self.address],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=self.env, cwd=ROOT,
        )  # fmt: skip


@pytest.fixture
def nodes(s3):
    """A fresh head + two worker nodes (1 CPU each) per test: every test kills something."""
    cluster = Nodes(workers=2)
    yield cluster
    cluster.close()


@pytest.fixture
def big_nodes(s3):
    """Three worker nodes of 2 CPUs and a head without any, so that Train workers run on a
    node the test can kill; the survivors still hold the Train workers AND a CPU for Ray Data's
    reads of the training data (on 1-CPU nodes the restarted run waited for one forever:
    "Cluster resources are not enough to run any task")."""
    cluster = Nodes(workers=3, cpus=2, head_cpus=0)
    yield cluster
    cluster.close()


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("faults")
    write_images(root / "images", IMAGES)
    return root / "images", make_model(root)


def _parts(uri: str) -> list[str]:
    return sorted(n for n in object_names(uri) if PART.match(n))


def _wait_for_parts(uri: str, job: subprocess.Popen, at_least: int = 1) -> list[str]:
    """Poll the bucket until `at_least` part files are committed; the job must still run."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while len(parts := _parts(uri)) < at_least:
        if job.poll() is not None:
            pytest.fail(f"the job ended before the fault: {job.communicate()[1][-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"no part file under {uri} after {START_TIMEOUT_S} s")
        time.sleep(0.1)
    return parts


def _finish(job: subprocess.Popen, timeout: float = 1200) -> str:
    try:
        out, err = job.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        job.kill()
        out, err = job.communicate()
        pytest.fail(f"the job did not finish in {timeout} s: {err[-5000:]}")
    assert job.returncode == 0, err[-5000:]
    return out


def _summary(out: str) -> dict:
    """classify's JSON summary from its stdout (Ray may print after it)."""
    return json.JSONDecoder().raw_decode(out[out.index("{") :])[0]


def _check_exactly_once(uri: str, folder: Path) -> None:
    """Every input image in exactly one row of exactly one part file; nothing else there."""
    names = object_names(uri)
    parts = _parts(uri)
    assert names == {MANIFEST, *parts}  # no temporary or duplicate files
    assert len(parts) == IMAGES // SHARD_SIZE
    fs, base = get_filesystem(uri)
    keys = [
        k for p in parts for k in pq.read_table(f"{base}/{p}", filesystem=fs)["path"].to_pylist()
    ]
    assert len(keys) == len(set(keys)) == IMAGES
    assert {Path(k).name for k in keys} == {p.name for p in folder.iterdir()}


def _classify(nodes: Nodes, folder: Path, model: str, out: str) -> subprocess.Popen:
    # Batches of 2: a shard takes several tasks, so the kill lands while tasks are running.
    return nodes.raycls(
        "classify", str(folder), "--model", model, "--out", out, "--batch-size", "2",
        "--shard-size", str(SHARD_SIZE),
    )  # fmt: skip


def test_worker_node_killed_mid_classify(nodes, images, s3):
    folder, model = images
    out = f"{s3}/faults/node-killed"
    job = _classify(nodes, folder, model, out)
    before = _wait_for_parts(out, job)
    nodes.command("kill")
    summary = _summary(_finish(job))
    assert len(before) < IMAGES // SHARD_SIZE  # the node died while the job ran
    assert summary["rows"] == summary["total_rows"] == IMAGES
    assert summary["rows_repeated"] >= 0
    _check_exactly_once(out, folder)


def test_driver_killed_mid_classify_then_rerun(nodes, images, s3):
    folder, model = images
    out = f"{s3}/faults/driver-killed"
    job = _classify(nodes, folder, model, out)
    before = _wait_for_parts(out, job)
    os.kill(job.pid, signal.SIGKILL)
    job.wait()
    committed = _parts(out)
    assert before and len(committed) < IMAGES // SHARD_SIZE
    summary = _summary(_finish(_classify(nodes, folder, model, out)))
    assert summary["shards_skipped"] == len(committed)
    assert summary["total_rows"] == IMAGES
    _check_exactly_once(out, folder)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> tuple[Path, Path]:
    """The shapes data set at 32 px, and a YAML of test_object_store's tiny model settings."""
    root = tmp_path_factory.mktemp("faults-shapes")
    make_dataset("shapes", root / "data", per_class=4, size=32)
    (root / "tiny.yaml").write_text(yaml.safe_dump(tiny_config().to_dict()))
    return root / "data", root / "tiny.yaml"


def _wait_for(uri: str, job: subprocess.Popen, found) -> set[str]:
    """Poll the bucket until `found(names)` holds; the job must still run."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while not found(names := object_names(uri)):
        if job.poll() is not None:
            pytest.fail(f"the job ended before the fault: {job.communicate()[1][-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"not there under {uri} after {START_TIMEOUT_S} s: {sorted(names)}")
        time.sleep(0.1)
    return names


def test_worker_node_killed_mid_training(big_nodes, shapes, s3):
    nodes = big_nodes
    from raycls.train.publish import HISTORY_FILE, METRICS_FILE

    data, config = shapes
    out = f"{s3}/faults/train"
    epochs = 8  # the kill must land while epochs are left
    job = nodes.raycls(
        "train",
        f"{data}/train",
        "--val",
        f"{data}/val",
        "--out",
        out,
        "--config",
        str(config),
        "--epochs",
        str(epochs),
        "--num-workers",
        "2",
        "train.patience=100",  # no early stop: every epoch runs
    )
    # A checkpoint counts once Ray Train has registered it, after its upload: the second
    # epoch's checkpoint folder appearing means the first one was registered.
    first = _checkpoints(_wait_for(out, job, lambda names: bool(_checkpoints(names))))
    _wait_for(out, job, lambda names: bool(_checkpoints(names) - first))
    _kill_node_running(nodes, "ray::RayTrainWorker", job)
    _finish(job)
    history = _read_json(f"{out}/{HISTORY_FILE}")
    assert [h["epoch"] for h in history] == list(range(1, epochs + 1))  # each epoch once
    # Epochs after the kill ran in an attempt that resumed from a checkpoint.
    assert history[-1]["attempt_start_epoch"] > 1
    metrics = _read_json(f"{out}/{METRICS_FILE}")
    assert metrics["epochs_run"] == epochs


def test_worker_node_killed_mid_sweep(big_nodes, shapes, s3, tmp_path):
    nodes = big_nodes
    from raycls.tune.results import DONE_FILE, TERMINATED
    from raycls.tune.trial import STARTS_FILE

    data, config = shapes
    out = f"{s3}/faults/sweep"
    space = tmp_path / "space.yaml"
    space.write_text("model.fusion: image_only\ntrain.lr: {loguniform: [0.001, 0.01]}\n")
    job = nodes.raycls("tune", f"{data}/train", "--val", f"{data}/val", "--out", out,
                       "--config", str(config), "--num-samples", "4", "--max-concurrent", "2",
                       "--epochs", "2", "--scheduler", "none", "--search-space", str(space),
                       "--resources-per-trial", "cpu=0.5")  # fmt: skip
    names = _wait_for(out, job, lambda names: any(n.endswith(DONE_FILE) for n in names))
    finished = {n.split("/")[1] for n in names if n.endswith(DONE_FILE)}
    _kill_node_running(nodes, "ray::RayTrainWorker", job)
    _finish(job)
    table = pq.read_table(f"{get_filesystem(out)[1]}/results.parquet",
                          filesystem=get_filesystem(out)[0]).to_pandas()  # fmt: skip
    assert len(table) == 4 and set(table["status"]) == {TERMINATED}
    starts = {
        t: _read_text(f"{out}/trials/{t}/{STARTS_FILE}").count("\n") for t in table["trial_id"]
    }
    assert all(starts[t] == 1 for t in finished)  # finished before the kill: not rerun
    # Every trial ended on its own (a trial whose Train worker died restarted it from its
    # checkpoint, or Tune reran the trial when its driver died with the node).
    assert all(f"trials/{t}/{DONE_FILE}" in object_names(out) for t in table["trial_id"])


def _checkpoints(names: set[str]) -> set[str]:
    return {part for n in names for part in n.split("/") if part.startswith("checkpoint_")}


def _kill_node_running(nodes: Nodes, title: str, job: subprocess.Popen) -> None:
    """Kill a worker node that runs a process titled `title` (retried while none does: the
    head may run them, or a trial may be starting)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while "killed" not in (reply := nodes.command(f"kill {title}")):
        if job.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"no worker node ran {title} while the job ran: {reply}")
        time.sleep(0.5)


def _read_json(uri: str):
    return json.loads(_read_text(uri))


def _read_text(uri: str) -> str:
    fs, path = get_filesystem(uri)
    with fs.open_input_stream(path) as f:
        return f.read().decode()
