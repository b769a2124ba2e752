"""Helpers for the fault-injection suite (measurements, pids, waits).

Imported by the ``test_fault_*`` modules; the shared fixtures and the fake
tool live in ``tests/conftest.py``.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable

from toolpool import RestartPolicy, ToolProcessPool

HERE = os.path.dirname(os.path.abspath(__file__))
GATE_TOOL = os.path.join(HERE, "tools", "gatetool.py")
TINY_REPL = os.path.join(HERE, "tools", "tinyrepl.sh")
SLOW_TOOL = os.path.join(HERE, "tools", "slowtool.py")

MB = 1024 * 1024

#: Restart at once, many times: for tests that crash instances on purpose.
QUICK_RESTARTS = RestartPolicy(initial=0.01, maximum=0.05, jitter=0.01, limit=10_000, window=60, stable_after=1)


def gate_cmd(gate: str, *flags: str) -> list[str]:
    """faketool behind a gate file: every start while ``gate`` exists crashes (exit 4)."""
    return [sys.executable, "-u", GATE_TOOL, gate, *flags]


def slow_cmd(delay_ms: float, *flags: str) -> list[str]:
    """faketool whose echo answers take 0 to 2 x ``delay_ms`` ms, plus ``last-words N`` (see the tool)."""
    return [sys.executable, "-u", SLOW_TOOL, str(delay_ms), *flags]


def tiny_cmd() -> list[str]:
    return ["/bin/sh", TINY_REPL]


def pid_of(pool: ToolProcessPool, index: int) -> int | None:
    return pool.get_status()["instances"][index]["pid"]


def state_of(pool: ToolProcessPool, index: int) -> str:
    return pool.get_status()["instances"][index]["state"]


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    """Wait until ``predicate()``; return the seconds it took, or fail saying ``what``."""
    t0 = time.monotonic()
    deadline = t0 + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.01)
    return time.monotonic() - t0


def live_pids() -> list[int]:
    """Pids in /proc, zombies excluded."""
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                if b") Z " in f.read():
                    continue
        except OSError:
            continue
        pids.append(int(name))
    return pids


def processes_running(needle: str) -> list[int]:
    """Live (non-zombie) pids whose command line contains ``needle``."""
    found = []
    for pid in live_pids():
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            continue
        if needle in cmdline and pid != os.getpid():
            found.append(pid)
    return found


def resume(pid: int | None) -> None:
    """SIGCONT a process we stopped, if it still exists."""
    if pid is None:
        return
    try:
        os.kill(pid, signal.SIGCONT)
    except ProcessLookupError:
        pass


def rss_bytes() -> int:
    """This process's resident set size (VmRSS in /proc/self/status)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


class RssPeak:
    """Samples VmRSS every few ms in a thread: ``growth`` is the peak above the start."""

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self.start = self.peak = rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, rss_bytes())

    def __enter__(self) -> RssPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())

    @property
    def growth(self) -> int:
        return self.peak - self.start
