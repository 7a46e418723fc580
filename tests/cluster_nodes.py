"""A Ray cluster of a head and worker nodes on this machine, every node on 127.0.0.1, run in a
process of its own (so the test process never joins Ray) and driven through stdin:

    python tests/cluster_nodes.py WORKERS [CPUS [HEAD_CPUS]]  # prints {"address": ..., ...}
    kill            # SIGKILLs every process of the newest worker node, prints {"killed": ...}
    kill NAME       # ... of a worker node running a process titled NAME (ray::RayTrainWorker)
    add             # starts one more worker node
    quit            # shuts the cluster down

The fault tests (test_faults.py) start it as a fixture; jobs reach it with `--address`.
"""

from __future__ import annotations

import json
import sys

NODE = {"node_ip_address": "127.0.0.1", "num_cpus": 1, "object_store_memory": 100 * 2**20}


def main() -> None:
    from ray.cluster_utils import Cluster

    if len(sys.argv) > 2:
        NODE["num_cpus"] = int(sys.argv[2])
    head = {**NODE, "include_dashboard": False, "dashboard_host": "127.0.0.1"}
    if len(sys.argv) > 3:  # a head without CPUs: every task and worker runs on a worker node
        head["num_cpus"] = int(sys.argv[3])
    cluster = _retried(lambda: Cluster(initialize_head=True, head_node_args=head))
    workers = [_retried(lambda: cluster.add_node(**NODE)) for _ in range(int(sys.argv[1]))]
    _say(address=cluster.address, workers=[w.node_id for w in workers])
    try:
        for line in sys.stdin:
            command = line.strip()
            if command.startswith("kill"):
                node = _hosting(workers, command[4:].strip())
                if node is None:
                    _say(error=f"no worker node runs {command[4:].strip()!r}")
                    continue
                workers.remove(node)
                cluster.remove_node(node, allow_graceful=False)
                _say(killed=node.node_id)
            elif command == "add":
                workers.append(_retried(lambda: cluster.add_node(**NODE)))
                _say(added=workers[-1].node_id)
            elif command == "quit":
                break
    finally:
        cluster.shutdown()


def _retried(start, attempts: int = 3):
    """Ray gives a starting node 30 s to register (not configurable); a loaded machine can
    take longer, so try again (the failed node's processes die with this process's reaper)."""
    for attempt in range(attempts):
        try:
            return start()
        except Exception as error:  # Ray raises a bare Exception on that timeout
            if attempt == attempts - 1 or "timed out during startup" not in str(error):
                raise
    return None


def _hosting(workers: list, title: str) -> object | None:
    """The newest worker node, or the newest one with a process titled `title` (a Ray worker
    process is a child of its node's raylet)."""
    if not title:
        return workers[-1] if workers else None
    import psutil
    from ray._private import ray_constants

    parents = set()
    for proc in psutil.process_iter(["cmdline", "ppid"]):
        if " ".join(proc.info["cmdline"] or ()).startswith(title):
            parents.add(proc.info["ppid"])
    for node in reversed(workers):
        raylet = node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process
        if raylet.pid in parents:
            return node
    return None


def _say(**message: object) -> None:
    print(json.dumps(message), flush=True)


if __name__ == "__main__":
    main()
