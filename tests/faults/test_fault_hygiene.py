"""Fault 12: 1000 spawn -> crash -> restart cycles leave nothing behind.

A POSIX-sh REPL (tools/tinyrepl.sh, ~1 ms to start) keeps the cycles cheap.
Eight instances cycle in parallel, each driven by its own thread:

* phase A (pipes, restart=False): answer, ``crash 3`` -> InstanceCrashed,
  ``restart_instance(i)``;
* phase B (ptys, automatic restarts): answer, then die (``crash 3``, or
  SIGKILL from outside), then wait for the supervisor to bring a new pid up.

While a pool lives, its fd and thread counts must be the same after the
cycles as before them (a leak of one per cycle would show as 1000); after
shutdown they must be back to the test's baseline, with no zombie and no
process left.
"""

import os
import signal
import threading
import time

import pytest

from conftest import marked_processes, open_fds, wait_until, zombie_children
from faultkit import MB, QUICK_RESTARTS, rss_bytes, tiny_cmd, wait_for
from toolpool import InstanceCrashed, ReplAdapter

INSTANCES = 8
CYCLES_A, CYCLES_B = 600, 400


def _adapter(transport: str) -> ReplAdapter:
    return ReplAdapter(tiny_cmd(), prompt=r"tp> $", transport=transport, start_timeout=20)


def _run_parallel(cycle, per_instance: int) -> None:
    """Run ``cycle(index, k)`` per_instance times for every instance, one thread per instance."""
    failures = []

    def drive(index: int) -> None:
        try:
            for k in range(per_instance):
                cycle(index, k)
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append((index, exc))

    threads = [threading.Thread(target=drive, args=(i,), name=f"cycle-{i}") for i in range(INSTANCES)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "a cycling thread is stuck"
    assert not failures, failures[:3]


def _steady(pool) -> "tuple[int, int]":
    """fd and thread counts once every instance is idle.

    The pool's spawn executor starts its (at most max_size) threads lazily,
    so they are counted apart: bounded here, joined at shutdown.
    """
    wait_for(lambda: pool.check_health()["idle"] == INSTANCES, 30, "every instance idle")
    names = [t.name for t in threading.enumerate()]
    spawners = sum(name.startswith("toolpool-spawn") for name in names)
    assert spawners <= INSTANCES
    return open_fds(), len(names) - spawners


def _settles_at(pool, fds: int, threads: int) -> bool:
    return wait_until(lambda: _steady(pool) == (fds, threads), 5)


@pytest.mark.slow
@pytest.mark.timeout(170)
def test_12_thousand_spawn_crash_restart_cycles_leave_nothing(baseline, make_pool, record_property):
    """Case 12: 1000 cycles -> 0 zombies, 0 processes, fds and threads back to baseline, RSS growth < 30 MB."""
    t0 = time.monotonic()
    rss0 = rss_bytes()
    spawned = []

    def listener(event: str, info: dict) -> None:
        if event == "spawned":
            spawned.append(info["pid"])

    # Phase A: pipes; crash by command, restart by hand.
    pool = make_pool(_adapter("pipe"), INSTANCES, restart=False, on_event=listener)
    fds, threads = _steady(pool)

    def crash_and_restart(index: int, k: int) -> None:
        prompt = f"a {index}.{k}"
        assert pool.ask(index, prompt, timeout=10).text == f"you said: {prompt}"
        with pytest.raises(InstanceCrashed) as info:
            pool.ask(index, "crash 3", timeout=10)
        assert info.value.exit_code == 3
        pool.restart_instance(index, timeout=10)

    _run_parallel(crash_and_restart, CYCLES_A // INSTANCES)
    assert _settles_at(pool, fds, threads), f"leak: {_steady(pool)} != {(fds, threads)} after phase A"
    pool.shutdown()

    # Phase B: ptys; die (by command or SIGKILL), restarted by the supervisor.
    pool = make_pool(_adapter("pty"), INSTANCES, restart=QUICK_RESTARTS, on_event=listener)
    fds, threads = _steady(pool)

    def die_and_come_back(index: int, k: int) -> None:
        prompt = f"b {index}.{k}"
        assert pool.ask(index, prompt, timeout=10).text == f"you said: {prompt}"
        pid = pool.get_status()["instances"][index]["pid"]
        if k % 2:
            os.kill(pid, signal.SIGKILL)
        else:
            with pytest.raises(InstanceCrashed):
                pool.ask(index, "crash 3", timeout=10)

        def back() -> bool:
            entry = pool.get_status()["instances"][index]
            return entry["state"] == "IDLE" and entry["pid"] not in (None, pid)

        wait_for(back, 20, f"instance {index} restarted by the supervisor")

    _run_parallel(die_and_come_back, CYCLES_B // INSTANCES)
    assert _settles_at(pool, fds, threads), f"leak: {_steady(pool)} != {(fds, threads)} after phase B"
    stats = pool.stats()
    assert stats["crashes"] == CYCLES_B and stats["restarts"] == CYCLES_B
    pool.shutdown()

    took = time.monotonic() - t0
    rss_growth = rss_bytes() - rss0
    record_property("seconds", round(took, 1))
    record_property("processes", len(spawned))
    record_property("rss_growth_mb", round(rss_growth / MB, 1))
    assert len(spawned) == 2 * INSTANCES + CYCLES_A + CYCLES_B  # initial starts + one per cycle
    assert wait_until(lambda: not marked_processes(), 10), marked_processes()
    assert wait_until(lambda: not zombie_children(), 5), zombie_children()
    assert open_fds() == baseline["fds"]
    assert set(threading.enumerate()) == baseline["threads"]
    assert rss_growth < 30 * MB, f"RSS grew by {rss_growth / MB:.1f} MB over 1000 cycles"
