"""Shared helpers for toolpool's benchmark programs (standard library only).

Baselines that several programs use live here: a hand-written blocking pipe
loop (:class:`RawPipe`) and a raw pexpect loop (:class:`RawPexpect`), both
talking to the same ``echotool.py`` the pools run.  The threaded floor and
the raw executor are in ``roundtrip.py``, next to the figures they anchor.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ECHOTOOL = os.path.join(HERE, "echotool.py")
PROMPT = b"bench> "
PROMPT_RE = r"bench> $"
CLOCK = time.CLOCK_MONOTONIC
#: No baseline ever waits longer than this for its tool: a hang ends the benchmark instead.
HANG_SECONDS = 30.0


def echo_cmd(*flags: str) -> list[str]:
    return [sys.executable, "-u", ECHOTOOL, *flags]


def now_ns() -> int:
    """The system-wide monotonic clock the echo tool stamps its answers with."""
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


def core_under_test() -> str:
    """Which toolpool this process imported (a benchmark may be run against an older checkout)."""
    import toolpool

    return f"toolpool {getattr(toolpool, '__version__', '?')} from {os.path.dirname(toolpool.__file__)}"


def table(title: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Print a plain aligned table."""
    cells = [[str(c) for c in header]] + [[c if isinstance(c, str) else _fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    print()
    print(title)
    line = "  ".join("-" * w for w in widths)
    print(line)
    for n, r in enumerate(cells):
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))))
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
    """A hand-written blocking loop: write a line, read until the prompt (no threads)."""

    def __init__(self, argv: Sequence[str]) -> None:
        self.proc = subprocess.Popen(list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.fin = self.proc.stdin.fileno()
        self.fout = self.proc.stdout.fileno()
        self._read_until_prompt()

    def _read_until_prompt(self) -> bytes:
        buf = b""
        while not buf.endswith(PROMPT):
            chunk = os.read(self.fout, 65536)  # the tool answers at once; a dead one gives EOF
            if not chunk:
                raise EOFError("echo tool exited")
            buf += chunk
        return buf[: -len(PROMPT)]

    def ask(self, line: bytes) -> bytes:
        os.write(self.fin, line + b"\n")
        return self._read_until_prompt()

    def close(self) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()
        self.proc.wait(5)
        self.proc.stdout.close()


class RawPexpect:
    """A raw pexpect loop over a pty, tuned like toolpool's pty transport."""

    def __init__(self, argv: Sequence[str]) -> None:
        import pexpect  # type: ignore[import-untyped]  # an optional test dependency, no stubs

        self._pexpect = pexpect
        self.child = pexpect.spawn(argv[0], list(argv[1:]), echo=False, encoding=None, use_poll=True,
                                   dimensions=(40, 200), timeout=HANG_SECONDS)
        self.child.delaybeforesend = None
        self.child.expect_exact(PROMPT)

    def ask(self, line: bytes) -> bytes:
        self.child.send(line + b"\n")
        self.child.expect_exact(PROMPT)
        before: bytes = self.child.before
        return before

    def close(self) -> None:
        self.child.sendeof()
        self.child.expect_exact(self._pexpect.EOF)
        self.child.close()


def optional(name: str) -> Any:
    """The module, or None when it is not installed."""
    try:
        return __import__(name)
    except ImportError:
        return None
