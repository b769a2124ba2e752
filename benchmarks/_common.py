"""Shared helpers for toolpool's benchmark programs (standard library only).

Baselines live here: a hand-written blocking pipe loop (:class:`RawPipe`), the
same pipe read by a thread that wakes the caller through a condition variable
(:class:`ThreadedPipe`), and a raw pexpect loop (:class:`RawPexpect`).  They
talk to the same ``echotool.py`` the pool runs.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from typing import Dict, Iterable, List, Optional, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
ECHOTOOL = os.path.join(HERE, "echotool.py")
PROMPT = b"bench> "
PROMPT_RE = r"bench> $"
CLOCK = time.CLOCK_MONOTONIC


def echo_cmd(*flags: str) -> List[str]:
    return [sys.executable, "-u", ECHOTOOL, *flags]


def now_ns() -> int:
    return time.clock_gettime_ns(CLOCK)


def tool_stamp(raw: bytes) -> int:
    """The ``t=<ns>`` the echo tool put in its answer."""
    i = raw.rindex(b" t=") + 3
    j = i
    while j < len(raw) and raw[j:j + 1].isdigit():
        j += 1
    return int(raw[i:j])


def pct(values: Sequence[float], p: float) -> float:
    """The p-th percentile (nearest rank) of ``values``."""
    s = sorted(values)
    if not s:
        return float("nan")
    k = min(len(s) - 1, max(0, int(round(p / 100.0 * len(s) + 0.5)) - 1))
    return s[k]


def median(values: Iterable[float]) -> float:
    v = list(values)
    return statistics.median(v) if v else float("nan")


def machine() -> str:
    return (f"{platform.node()}: {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"{platform.system()} {platform.release()}")


def table(title: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Print a plain aligned table."""
    cells = [[str(c) for c in header]] + [[c if isinstance(c, str) else _fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    print()
    print(title)
    line = "  ".join("-" * w for w in widths)
    print(line)
    for n, r in enumerate(cells):
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
        if n == 0:
            print(line)
    print(line)


def _fmt(x: object) -> str:
    if isinstance(x, float):
        if x != x:
            return "n/a"
        return f"{x:.1f}" if abs(x) >= 10 else f"{x:.2f}"
    return str(x)


def verdict(ok: bool) -> str:
    return "MET" if ok else "MISSED"


def cpu_seconds() -> float:
    """User + system CPU time of this process, all threads (CLOCK_PROCESS_CPUTIME_ID: ns resolution)."""
    return time.process_time()


def children_cpu_seconds(pids: Iterable[int]) -> float:
    """utime + stime of the given processes from /proc (clock-tick resolution); 0 for a vanished one."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime (fields 14, 15)
    return total


# ------------------------------------------------------------------ baselines
class RawPipe:
    """A hand-written blocking loop: write a line, read until the prompt."""

    def __init__(self, argv: Sequence[str]) -> None:
        self.proc = subprocess.Popen(list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
        self.fin = self.proc.stdin.fileno()
        self.fout = self.proc.stdout.fileno()
        self._read_until_prompt()

    def _read_until_prompt(self) -> bytes:
        buf = b""
        while not buf.endswith(PROMPT):
            chunk = os.read(self.fout, 65536)
            if not chunk:
                raise EOFError("echo tool exited")
            buf += chunk
        return buf[: -len(PROMPT)]

    def ask(self, line: bytes) -> bytes:
        os.write(self.fin, line + b"\n")
        return self._read_until_prompt()

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(5)
        self.proc.stdout.close()


class ThreadedPipe:
    """The same pipe read by a reader thread; the caller waits on a condition variable.

    The cheapest possible shape of a thread-based pool (one thread hop), with
    no framing, state machine or futures.
    """

    def __init__(self, argv: Sequence[str]) -> None:
        self.proc = subprocess.Popen(list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
        self.fin = self.proc.stdin.fileno()
        self.fout = self.proc.stdout.fileno()
        self._cond = threading.Condition()
        self._answers: List[bytes] = []
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._wait()

    def _run(self) -> None:
        buf = b""
        while True:
            chunk = os.read(self.fout, 65536)
            if not chunk:
                return
            buf += chunk
            if buf.endswith(PROMPT):
                with self._cond:
                    self._answers.append(buf[: -len(PROMPT)])
                    self._cond.notify()
                buf = b""

    def _wait(self) -> bytes:
        with self._cond:
            while not self._answers:
                self._cond.wait()
            return self._answers.pop(0)

    def ask(self, line: bytes) -> bytes:
        os.write(self.fin, line + b"\n")
        return self._wait()

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(5)
        self._thread.join(5)
        self.proc.stdout.close()


class RawPexpect:
    """A raw pexpect loop over a pty, tuned like toolpool's pty transport."""

    def __init__(self, argv: Sequence[str]) -> None:
        import pexpect

        self.child = pexpect.spawn(argv[0], list(argv[1:]), echo=False, encoding=None, use_poll=True,
                                   dimensions=(40, 200))
        self.child.delaybeforesend = None
        self.child.expect_exact(PROMPT)

    def ask(self, line: bytes) -> bytes:
        self.child.send(line + b"\n")
        self.child.expect_exact(PROMPT)
        return self.child.before

    def close(self) -> None:
        self.child.sendeof()
        self.child.expect_exact(__import__("pexpect").EOF)
        self.child.close()


def summarize(samples_us: Sequence[float]) -> Dict[str, float]:
    return {"n": len(samples_us), "p50": pct(samples_us, 50), "p99": pct(samples_us, 99),
            "mean": statistics.fmean(samples_us) if samples_us else float("nan")}


def wait_for(cond, timeout: float = 10.0, step: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    return cond()


def optional(name: str) -> Optional[object]:
    try:
        return __import__(name)
    except ImportError:
        return None
