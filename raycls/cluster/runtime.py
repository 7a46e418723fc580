"""Connecting to Ray: a cluster when an address is given, else a local Ray started on the spot."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

from raycls.cluster.console import quiet_driver, quiet_local_workers
from raycls.io.storage import is_remote, is_uri

logger = logging.getLogger(__name__)

# Quiet, offline-friendly workers: no per-load progress bars from the hub or transformers.
WORKER_ENV = {
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TOKENIZERS_PARALLELISM": "false",
}
# A local Ray's processes only (a value already in the environment wins):
LOCAL_RAY_ENV = {
    # Ray Train's controller polls its workers every 2 s by default, and a finished run waits
    # for the next poll before its teardown; a local run has few workers to poll.
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
    # Ray Train's preemption watcher (an actor per run) follows cloud nodes being drained,
    # which one machine has none of; it costs a process start, and its creation printed an
    # error line about its own restart settings in every run (Ray 2.60, ray-project/ray#53727).
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    # Ray Train sets an option that Ray Data deprecates, and every training run printed the
    # deprecation warning (Ray 2.60); the filter matches its first words.
    "PYTHONWARNINGS": "ignore:`ExecutionOptions.exclude_resources` is deprecated",
}


def init_ray(
    address: str | None = None, *, num_cpus: int | None = None, dashboard: bool = False
) -> str:
    """Connect to `address` (or RAY_ADDRESS); without one start a local Ray. Returns where.

    An already-initialised Ray (a test fixture, a job running on a cluster) is reused as is.
    `dashboard` gives a local Ray its dashboard, bound to 127.0.0.1 only.
    """
    import ray

    _quiet_ray_data_console()
    if ray.is_initialized():
        return "existing"
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        with _loopback_kept(address):
            ray.init(address=address, logging_level=logging.WARNING)
        return address
    quiet_local_workers()
    start_local_ray(num_cpus=num_cpus, dashboard=dashboard)
    return "local"


def start_local_ray(*, num_cpus: int | None = None, dashboard: bool = False) -> None:
    """Start a fresh embedded Ray on this machine, reachable from this machine only.

    address="local" forces a new instance, so a stray `ray start` elsewhere on this machine is
    never joined by surprise. Nothing listens beyond loopback: the node's address is 127.0.0.1,
    so the GCS, the raylet, every worker, the agents and the dashboard (with `dashboard`) bind
    there; tests/test_local_ray.py lists the sockets.
    """
    import ray

    # Every process of a local Ray inherits this process's environment.
    for name, value in {**WORKER_ENV, **LOCAL_RAY_ENV}.items():
        os.environ.setdefault(name, value)
    with _single_machine_mode():
        ray.init(
            address="local",
            num_cpus=num_cpus,
            include_dashboard=dashboard,
            dashboard_host="127.0.0.1",
            logging_level=logging.WARNING,
        )


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")


@contextlib.contextmanager
def _loopback_kept(address: str) -> Iterator[None]:
    """Within it, `ray.init` connects to a loopback `address` (127.0.0.1:6379) on loopback.

    Ray rewrites a loopback host to the machine's network address before connecting
    (`ray._private.services.resolve_ip_for_localhost`), so a cluster started with
    `--node-ip-address 127.0.0.1` was unreachable, and one on all interfaces was reached
    through the network. The driver still attaches to the Ray node running on this machine,
    whatever address that node registered.
    """
    host = "" if is_uri(address) else address.rpartition(":")[0]
    if host.lower() not in LOOPBACK_HOSTS:
        yield
        return
    with _single_machine_mode():
        yield


@contextlib.contextmanager
def _single_machine_mode() -> Iterator[None]:
    """Ray's single-machine mode while Ray starts or connects: it takes 127.0.0.1 as this
    node's address and keeps a loopback address on loopback.

    Otherwise Ray binds its servers to (and connects through) the machine's network address,
    which it takes to be the one other machines reach this one by; ray.init even turns an
    explicit _node_ip_address="127.0.0.1" into that. The mode (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER
    =0, the default on macOS and Windows) is read once, when ray is imported, so it is flipped
    here for the call only: a later ray.init(address=cluster) in this process still finds its
    own address. A private Ray constant, checked against Ray 2.60.
    """
    from ray._private import ray_constants

    saved = getattr(ray_constants, "ENABLE_RAY_CLUSTER", None)
    if saved is None:  # a Ray that decides otherwise; tests/test_local_ray.py would notice
        logger.warning("This Ray (%s) may listen beyond loopback", ray_constants.__file__)
        yield
        return
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved


def _quiet_ray_data_console() -> None:
    """Ray Data's INFO lines (execution plans, operator notes) stay off the console; its
    warnings and progress bars still show. The driver's INFO lines still reach ray-data.log in
    the Ray session's logs folder; the plans Ray Data's own actors (Train's data splitters)
    would print are not made at all. With `raycls -v` (DEBUG logging) everything shows."""
    if logging.getLogger().isEnabledFor(logging.DEBUG):
        return
    import ray.data  # importing it sets up Ray Data's loggers

    # Datasets carry the driver's DataContext to the actors that execute them.
    ray.data.DataContext.get_current().print_on_execution_start = False
    for handler in logging.getLogger("ray.data").handlers:
        if isinstance(handler, logging.StreamHandler):  # the console, not the session file
            handler.setLevel(max(handler.level, logging.WARNING))
    quiet_driver(logging.getLogger("ray.data"))


@contextlib.contextmanager
def ctrl_c_interrupts() -> Iterator[None]:
    """Ctrl-C during a Ray Train or Tune `fit()` as a KeyboardInterrupt; the SIGINT handler
    found before is put back after it.

    Both install a SIGINT handler of their own in the main thread (Ray 2.60) and leave it
    installed. Ray Train's aborts the run from inside the wait for it, which then ends in
    SystemExit(1) with no word (and, its controller gone, a later Ctrl-C exits with status 0).
    Tune's saves the sweep and returns the unfinished sweep as if it were done; it puts back
    the handler it found, so finding this one installed again tells an interrupt apart.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # Tune trials: neither installs a handler there
        return
    previous = signal.getsignal(signal.SIGINT)

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupt)
    try:
        yield
        if signal.getsignal(signal.SIGINT) is interrupt:
            raise KeyboardInterrupt
    except SystemExit as error:
        raise KeyboardInterrupt from error
    finally:
        signal.signal(signal.SIGINT, previous)


def cluster_is_multinode() -> bool:
    """True when the connected Ray cluster has more than one alive node."""
    import ray

    return sum(1 for node in ray.nodes() if node.get("Alive")) > 1


def warn_if_local_on_multinode(out: str) -> None:
    """Warn when `out` is a local path and the connected Ray cluster has several nodes."""
    if is_remote(out):
        return
    import ray

    if not ray.is_initialized() or not cluster_is_multinode():
        return
    logger.warning(
        "Output %r is a local path but the Ray cluster has several nodes: each node would "
        "write its share to its own disk. Use storage every node can reach, e.g. "
        "s3://bucket/prefix or gs://bucket/prefix, or a folder on a shared filesystem (NFS) "
        "mounted at the same path on every node.",
        out,
    )
