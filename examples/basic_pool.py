"""A first pool: toolpool's built-in demo tool, used every way the pool offers.

Run:  python examples/basic_pool.py

The demo tool is an offline stand-in for an AI coding CLI (no network, no API
key): it prints a ``demo> `` prompt, "thinks" for a moment per prompt and
answers deterministically.  This script shows, in order:

1. by-index calls (``ask``, ``send_prompt`` + ``read_response``),
2. ``submit`` (Futures, FIFO over idle instances) and ``map`` (results in input order),
3. a lease (several turns on one instance, exclusively),
4. errors you can meet (InstanceBusy, ResponseTimeout),
5. health, stats and the status snapshot.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time

from toolpool import InstanceBusy, ResponseTimeout, ToolProcessPool


def main() -> int:
    t0 = time.perf_counter()
    # Three demo processes, started in parallel; the constructor returns when all are ready.
    with ToolProcessPool("demo", count=3, adapter_options={"think": 0.2}) as pool:
        print(f"pool of {pool.size} ready in {time.perf_counter() - t0:.2f}s: {pool!r}")

        # 1. By index: address one instance directly.
        r = pool.ask(0, "hello from the basic example", timeout=10)
        print(f"ask(0)      -> instance {r.index} in {r.elapsed:.3f}s: {r.text.splitlines()[0]}")
        pool.send_prompt(1, "a prompt sent now, read later")  # returns at once
        try:
            pool.send_prompt(1, "a second prompt before the first is answered")
        except InstanceBusy as exc:
            print(f"InstanceBusy: {exc}")
        r = pool.read_response(1, timeout=10)
        print(f"read(1)     -> {r.text.splitlines()[0]}")

        # 2. submit(): any idle instance, FIFO; map(): the same, results in input order.
        futures = [pool.submit(f"review file_{n}.py", timeout=30) for n in range(6)]
        for fut in futures:
            r = fut.result()
            print(f"submit      -> instance {r.index}, queued {r.timings.queued:.3f}s, "
                  f"answered in {r.elapsed:.3f}s: {r.text.splitlines()[0]}")
        texts = [r.text.splitlines()[0] for r in pool.map(["one", "two", "three"], timeout=30)]
        print(f"map         -> {texts}")

        # 3. A lease: one instance for several turns; nothing else is sent to it meanwhile.
        with pool.lease(timeout=10) as lease:
            first = lease.ask("first question", timeout=10)
            second = lease.ask("/stats", timeout=10)  # the demo's own command: turns it answered
            print(f"lease       -> instance {lease.index}: {first.text.splitlines()[0]!r}, then {second.text!r}")

        # 4. A deadline that is too short: submit() fails with ResponseTimeout and
        #    interrupts the turn; the instance is IDLE again once the tool has stopped it.
        try:
            pool.submit("this needs more than 50 ms", timeout=0.05).result()
        except ResponseTimeout as exc:
            print(f"ResponseTimeout (phase {exc.phase!r}): {exc}")

        # 5. Health, stats, status.
        health = pool.check_health()
        print(f"health      -> {health['alive']}/{health['total']} alive, healthy={health['healthy']}")
        stats = pool.stats()
        print(f"stats       -> {stats['requests']} requests, {stats['errors']} errors, "
              f"response p50 {stats['response']['p50']:.3f}s")
        with tempfile.TemporaryDirectory() as tmp:
            path = pool.dump_status(os.path.join(tmp, "status.json"))
            with open(path) as f:
                status = json.load(f)
            print(f"status      -> {len(status['instances'])} instances, states "
                  f"{[i['state'] for i in status['instances']]}, file mode {oct(os.stat(path).st_mode & 0o777)}")
    print("pool shut down: every process stopped and reaped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
