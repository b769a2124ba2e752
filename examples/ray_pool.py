"""The same pool over a Ray cluster: RayToolPool on a local two-node cluster, offline.

Run:  python examples/ray_pool.py          (needs Ray: pip install 'toolpool[ray]')

On a real cluster you would call ``ray.init(address="auto")`` instead of
starting a local one; the rest of the script stays the same.  It shows:

1. a batch over both nodes with ``map`` (results in input order, each one
   saying which node answered),
2. a lease: several turns on one instance of one node,
3. what losing a node does: its requests fail with NodeLost naming it, the
   pool goes on with the nodes that remain,
4. health and a status snapshot with each instance's node.
"""

from __future__ import annotations

import collections
import os
import sys
import time

# Read by Ray at import: nodes bind 127.0.0.1 only; no usage statistics are sent.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

NODE = {"num_cpus": 1, "object_store_memory": 80 * 1024 * 1024, "node_ip_address": "127.0.0.1"}
# Notice a lost node within a couple of seconds (Ray's default is about 30 s).
FAST_DETECTION = {"health_check_period_ms": 500, "health_check_timeout_ms": 1000,
                  "health_check_failure_threshold": 3}


def main() -> int:
    try:
        import ray
        from ray.cluster_utils import Cluster
    except ImportError:
        print("SKIPPED: Ray is not installed: pip install 'toolpool[ray]'")
        return 0
    from toolpool.ray import NodeLost, RayToolPool

    cluster = Cluster(initialize_head=True, head_node_args={**NODE, "include_dashboard": False,
                                                            "_system_config": FAST_DETECTION})
    spare = cluster.add_node(**NODE)
    ray.init(address=cluster.address, _node_ip_address="127.0.0.1", logging_level="warning", log_to_driver=False)
    cluster.wait_for_nodes()
    try:
        with RayToolPool("demo", count_per_node=2, adapter_options={"think": 0.2}) as pool:
            health = pool.check_health()
            print(f"pool of {health['total']} instances on {health['nodes']['ready']} nodes ready")

            prompts = [f"review file {n}" for n in range(12)]
            answers = list(pool.map(prompts, timeout=60))
            per_node = collections.Counter(r.node[:8] for r in answers)
            first = answers[0].text.splitlines()[0]
            print(f"map         -> {first!r} ... {len(answers)} answers, per node {dict(per_node)}")
            assert all(f"You asked: {p}" in r.text for p, r in zip(prompts, answers, strict=True))

            with pool.lease(timeout=10) as lease:
                a = lease.ask("step one", timeout=10).text.splitlines()[0]
                b = lease.ask("step two", timeout=10).text.splitlines()[0]
                print(f"lease       -> instance {lease.index} on node {lease.node[:8]}: {a!r}, then {b!r}")

            spare_id = next(n["NodeID"] for n in ray.nodes() if n["Alive"] and not n["Resources"].get(
                "node:__internal_head__"))
            batch = [pool.submit(f"slow prompt {n}", timeout=60) for n in range(8)]
            cluster.remove_node(spare, allow_graceful=False)
            lost = [f.exception(60) for f in batch if isinstance(f.exception(60), NodeLost)]
            print(f"node lost   -> {len(batch) - len(lost)} answered, {len(lost)} failed with NodeLost; "
                  f"names the node: {all(spare_id in str(e) for e in lost)}")

            # The pool notices the loss within seconds (its calls to the node fail, or Ray reports the
            # node dead); until then a request can still be sent there and fail with NodeLost.
            deadline = time.monotonic() + 30
            while pool.check_health()["nodes"]["ready"] != 1 and time.monotonic() < deadline:
                time.sleep(0.1)
            after = list(pool.map(["still there?"] * 4, timeout=60))
            print(f"after loss  -> {len(after)} answers from {len({r.node for r in after})} node; "
                  f"healthy={pool.check_health()['healthy']}, node_losses={pool.stats()['node_losses']}")

            status = pool.get_status()
            nodes = sorted({e["node"][:8] for e in status["instances"]})
            print(f"status      -> {len(status['instances'])} instances, nodes {nodes}")
        print("pool shut down")
    finally:
        ray.shutdown()
        cluster.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
