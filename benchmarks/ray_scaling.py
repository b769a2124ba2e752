#!/usr/bin/env python3
"""RayToolPool on a local Ray cluster: throughput as actors are added, and the cost per request.

    python3 benchmarks/ray_scaling.py            # full run (~1-2 min)
    python3 benchmarks/ray_scaling.py --quick    # fewer prompts (smoke test)

Everything in ONE run, so the machine's noise hits every variant alike:

1. overhead: one prompt at a time (an idle pool, no queueing) on a local
   ToolProcessPool of 2 instances and on a RayToolPool of 1 actor x 2
   instances; the difference of the medians is what the cluster adds to each
   request (driver queue, actor call, result transfer).
2. throughput: a batch on 1, 2 and 4 actors of 2 instances each (one actor per
   node of a local cluster of 4 nodes), against the ideal of
   instances / seconds-per-answer, and against the local pool of 2.

The tool is toolpool's demo tool taking 0.2 s per answer (a sleep: it uses no
CPU, so a 2-core machine can host all 8 instances without the tools competing).
Needs Ray: pip install 'toolpool[ray]'.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

# Read by Ray at import: every node on loopback, no usage report.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import machine, median

from toolpool import DemoAdapter, ToolProcessPool

THINK = 0.2
PER_ACTOR = 2
NODE = {"num_cpus": 1, "object_store_memory": 80 * 1024 * 1024, "node_ip_address": "127.0.0.1"}


def one_at_a_time(pool, n: int) -> list:
    """Seconds per request, sent one after another on an idle pool."""
    times = []
    for i in range(n):
        start = time.perf_counter()
        pool.submit(f"sequential {i}", timeout=60).result(60)
        times.append(time.perf_counter() - start)
    return times


def batch(pool, n: int) -> float:
    """Requests per second for a batch of ``n`` submitted at once."""
    start = time.perf_counter()
    responses = list(pool.map([f"batch {i}" for i in range(n)], timeout=300))
    elapsed = time.perf_counter() - start
    assert all(f"You asked: batch {i}" in r.text for i, r in enumerate(responses)), "a response answered another prompt"
    return n / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer prompts: a smoke test, not a measurement")
    args = parser.parse_args()
    try:
        import ray
        from ray.cluster_utils import Cluster
    except ImportError:
        print("SKIPPED: Ray is not installed (pip install 'toolpool[ray]')")
        return 0
    from toolpool.ray import RayToolPool

    sequential = 5 if args.quick else 40
    per_instance = 3 if args.quick else 12  # batch prompts per instance
    print(machine())
    print(f"tool: demo, {THINK:.1f} s per answer; {PER_ACTOR} instances per actor; one actor per node")
    cluster = Cluster(initialize_head=True, head_node_args={**NODE, "include_dashboard": False})
    try:
        for _ in range(3):
            cluster.add_node(**NODE)
        ray.init(address=cluster.address, _node_ip_address="127.0.0.1", logging_level="warning",
                 log_to_driver=False)
        cluster.wait_for_nodes()

        with ToolProcessPool(DemoAdapter(think=THINK), count=PER_ACTOR) as local:
            one_at_a_time(local, 2)  # warm
            local_seq = one_at_a_time(local, sequential)
            local_rate = batch(local, PER_ACTOR * per_instance)
        rates = {}
        ray_seq: list = []
        for actors in (1, 2, 4):
            with RayToolPool(DemoAdapter(think=THINK), PER_ACTOR, nodes=actors) as pool:
                if actors == 1:
                    one_at_a_time(pool, 2)
                    ray_seq = one_at_a_time(pool, sequential)
                rates[actors] = batch(pool, PER_ACTOR * actors * per_instance)
    finally:
        ray.shutdown()
        cluster.shutdown()

    local_ms, ray_ms = median(local_seq) * 1000, median(ray_seq) * 1000
    print(f"\noverhead per request (median of {sequential}, one at a time):")
    print(f"  local pool           {local_ms:8.1f} ms")
    print(f"  Ray pool, 1 actor    {ray_ms:8.1f} ms   +{ray_ms - local_ms:.1f} ms  {ray_ms / local_ms:.2f}x local")
    print("\nthroughput (batch of 12 prompts per instance):" if not args.quick else "\nthroughput:")
    print(f"  local pool, 2 inst.  {local_rate:6.2f} req/s  {local_rate / (PER_ACTOR / THINK):.2f}x ideal")
    for actors, rate in rates.items():
        ideal = actors * PER_ACTOR / THINK
        print(f"  Ray, {actors} actor(s) x {PER_ACTOR}  {rate:6.2f} req/s  {rate / ideal:.2f}x ideal  "
              f"{rate / rates[1]:.2f}x one actor  {rate / local_rate:.2f}x local")
    return 0


if __name__ == "__main__":
    sys.exit(main())
