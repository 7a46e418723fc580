"""A Ray cluster of a head and worker nodes on this machine, every node on 127.0.0.1, run in a
process of its own (so the test process never joins Ray) and driven through stdin:

    python tests/cluster_nodes.py WORKERS   # prints {"address": ..., "workers": [...]}
    kill            # SIGKILLs every process of the newest worker node, prints {"killed": ...}
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

    head = {**NODE, "include_dashboard": False, "dashboard_host": "127.0.0.1"}
    cluster = Cluster(initialize_head=True, head_node_args=head)
    workers = [cluster.add_node(**NODE) for _ in range(int(sys.argv[1]))]
    _say(address=cluster.address, workers=[w.node_id for w in workers])
    try:
        for line in sys.stdin:
            command = line.strip()
            if command == "kill":
                node = workers.pop()
                cluster.remove_node(node, allow_graceful=False)
                _say(killed=node.node_id)
            elif command == "add":
                workers.append(cluster.add_node(**NODE))
                _say(added=workers[-1].node_id)
            elif command == "quit":
                break
    finally:
        cluster.shutdown()


def _say(**message: object) -> None:
    print(json.dumps(message), flush=True)


if __name__ == "__main__":
    main()
