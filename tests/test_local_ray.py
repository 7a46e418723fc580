"""The embedded local Ray (init_ray without an address, and the session fixture) listens on
loopback only: every listening socket of its processes is on 127.0.0.1 or ::1."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Run in a fresh process: init_ray reuses an already started Ray (this session's fixture).
_INIT_RAY_SCRIPT = """
import json, os, sys
import psutil, ray
from raycls.cluster.runtime import init_ray
sys.path.insert(0, sys.argv[1])
from test_local_ray import listening_sockets, ray_process_ids

init_ray(num_cpus=1, dashboard=True)  # as `raycls train` starts it
print(json.dumps(listening_sockets(ray_process_ids())))
ray.shutdown()
"""


def ray_process_ids() -> set[int]:
    """This driver, the processes its Ray node started (GCS, raylet, agents, dashboard) and
    their children (the workers)."""
    import psutil
    import ray

    # Defined here, so that they travel by value (workers cannot import this test module).
    def pid() -> int:
        return os.getpid()

    class Probe:
        def pid(self) -> int:
            return os.getpid()

    # A task and an actor: their worker processes open listening sockets too.
    ray.get(ray.remote(num_cpus=0)(pid).remote())
    ray.get(ray.remote(num_cpus=0)(Probe).remote().pid.remote())
    node = ray._private.worker._global_node
    roots = [info.process.pid for infos in node.all_processes.values() for info in infos]
    pids = {os.getpid()}
    for pid in roots:
        try:
            process = psutil.Process(pid)
            pids |= {pid} | {child.pid for child in process.children(recursive=True)}
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return pids


def listening_sockets(pids: set[int]) -> list[list]:
    """[process name, address, port] for every listening TCP socket of `pids`."""
    import psutil

    found = []
    for pid in sorted(pids):
        try:
            process = psutil.Process(pid)
            name = process.name()
            connections = process.net_connections(kind="inet")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        for conn in connections:
            if conn.status == psutil.CONN_LISTEN:
                found.append([name, conn.laddr.ip, conn.laddr.port])
    return found


def _check_loopback_only(sockets: list[list]) -> None:
    names = " ".join(name for name, _, _ in sockets)
    assert "gcs_server" in names and "raylet" in names, f"Ray's servers not found: {sockets}"
    beyond = []
    for name, ip, port in sockets:
        address = ipaddress.ip_address(ip.split("%")[0])
        address = getattr(address, "ipv4_mapped", None) or address  # ::ffff:127.0.0.1
        if not address.is_loopback:
            beyond.append(f"{name} on {ip}:{port}")
    assert not beyond, f"listening beyond loopback: {beyond}"


def test_session_ray_listens_on_loopback_only(ray_local):
    _check_loopback_only(listening_sockets(ray_process_ids()))


@pytest.mark.integration
def test_init_ray_without_an_address_listens_on_loopback_only():
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-c", _INIT_RAY_SCRIPT, str(Path(__file__).parent)],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    _check_loopback_only(json.loads(done.stdout.strip().splitlines()[-1]))


def test_local_ray_processes_get_the_local_settings(ray_local):
    """Ray Train's controller and Ray Data's actors read these from their environment, which
    a local Ray's processes inherit from the process that started it."""
    from raycls.cluster.runtime import LOCAL_RAY_ENV

    @ray_local.remote(num_cpus=0)
    def environment(names: list[str]) -> dict[str, str | None]:
        return {name: os.environ.get(name) for name in names}

    seen = ray_local.get(environment.remote(list(LOCAL_RAY_ENV)))
    assert seen == {name: os.environ.get(name, value) for name, value in LOCAL_RAY_ENV.items()}
    assert seen["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] == "0"
