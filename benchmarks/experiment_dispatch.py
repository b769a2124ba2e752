#!/usr/bin/env python3
"""Would the suggested dispatcher changes pay?  The same pool, with and without them, in one run.

    python3 benchmarks/experiment_dispatch.py            # 9 alternating rounds of 2000 requests
    python3 benchmarks/experiment_dispatch.py --quick    # a smoke test

A saturated pool (every instance busy, requests waiting) runs, on every
``pump()``, checks whose answer cannot change while some instance is live:
``fail_if_hopeless()`` scans every slot and builds an error string, and
``Supervisor.grow_slot()`` scans every slot even when none is parked; and
each completion pumps twice (``Dispatcher._finished`` and the pool's
``on_idle``).  This program patches those three places *from the outside*,
switchable at run time, and measures ``pool.submit`` throughput over 4
instances against ``ThreadPoolExecutor(4)`` on raw pipes with the patches on
and off in alternating rounds.  toolpool's files are not changed: the patches
are a proposal for the core (see docs/performance.md, "Suggestions").
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import core_under_test, echo_cmd, machine, median, table  # noqa: E402
from roundtrip import RawExecutor, echo_pool, submit_all, throughput_block  # noqa: E402

import toolpool.dispatch as dispatch_mod  # noqa: E402
import toolpool.pool as pool_mod  # noqa: E402
import toolpool.supervision as supervision_mod  # noqa: E402
from toolpool.states import Owner, State  # noqa: E402


class Switch:
    on = False


def install(switch: type[Switch]) -> None:
    """Wrap the three places; each wrapper does the proposed thing only while ``switch.on``."""
    Dispatcher, Supervisor, Pool = dispatch_mod.Dispatcher, supervision_mod.Supervisor, pool_mod.ToolProcessPool
    fail_if_hopeless: Callable[[Any], None] = Dispatcher.fail_if_hopeless
    grow_slot: Callable[[Any], Any] = Supervisor.grow_slot
    on_idle: Callable[[Any, Any], None] = Pool._on_idle

    def quick_fail_if_hopeless(self: Any) -> None:
        # Proposed: nothing is hopeless while some active slot can still serve and no slot has its own queue.
        if switch.on and not self.targeted:
            with self.lock:
                if any(not dispatch_mod._hopeless(s, self.supervisor) for s in self.table.slots):
                    return
        fail_if_hopeless(self)

    def quick_grow_slot(self: Any) -> Any:
        # Proposed: a pool with no parked slot cannot grow; say so before scanning for starting ones.
        if switch.on and all(s.active for s in self.table.slots):
            return None
        return grow_slot(self)

    def single_pump_on_idle(self: Any, inst: Any) -> None:
        # Proposed: a slot the dispatcher already gave the next request (from _finished) needs no second pump.
        if switch.on:
            slot = self._table[inst.index]
            if slot.owner is not Owner.FREE or inst.state is not State.IDLE:
                return
        on_idle(self, inst)

    setattr(Dispatcher, "fail_if_hopeless", quick_fail_if_hopeless)  # noqa: B010 (patched from outside)
    setattr(Supervisor, "grow_slot", quick_grow_slot)  # noqa: B010
    setattr(Pool, "_on_idle", single_pump_on_idle)  # noqa: B010


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--requests", type=int, default=None)
    args = ap.parse_args(argv or None)
    rounds = args.rounds or (3 if args.quick else 9)
    n = args.requests or (300 if args.quick else 2000)
    print(f"toolpool dispatcher experiment{' (--quick)' if args.quick else ''}")
    print(f"machine: {machine()}; load average {os.getloadavg()[0]:.2f}")
    print(f"core: {core_under_test()}")
    install(Switch)  # before the pool exists: it binds _on_idle when it creates its instances
    pool = echo_pool(4)
    executor = RawExecutor(echo_cmd(), 4)

    def as_is(k: int) -> None:
        Switch.on = False
        submit_all(pool, k)

    def patched(k: int) -> None:
        Switch.on = True
        try:
            submit_all(pool, k)
        finally:
            Switch.on = False

    batches = [("ThreadPoolExecutor(4) + raw pipes", executor.run), ("pool.submit, core as is", as_is),
               ("pool.submit, with the 3 proposals", patched)]
    wall: dict[str, list[float]] = {name: [] for name, _ in batches}
    cpu: dict[str, list[float]] = {name: [] for name, _ in batches}
    try:
        for _, run in batches:
            run(300)
        for r in range(rounds):
            throughput_block(batches, r, n, wall, cpu)
    finally:
        pool.shutdown()
        executor.close()
    base = wall[batches[0][0]]
    rows = [[name, n / median(w), median(cpu[name]) / n * 1e6,
             f"{median(b / x for b, x in zip(base, w, strict=True)):.2f}x"] for name, w in wall.items()]
    table(f"pool.submit over 4 instances, {n} requests per round, {rounds} rotating rounds (medians)",
          ["method", "req/s", "parent CPU us/req", "throughput vs executor"], rows)
    gain = median(a / b for a, b in zip(wall[batches[1][0]], wall[batches[2][0]], strict=True))
    print()
    print(f"ratio throughput with the proposals / as is: {gain:.2f}x (median of per-round ratios)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
