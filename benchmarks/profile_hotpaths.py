#!/usr/bin/env python3
"""Where a request's time goes on the ``ask`` and ``submit`` paths (a diagnosis, not a benchmark).

    python3 benchmarks/profile_hotpaths.py             # 20k requests per profile (~1 min)
    python3 benchmarks/profile_hotpaths.py --quick     # 500 requests (smoke test)

1. Stages: wrappers stamp ``time.clock_gettime_ns(CLOCK_MONOTONIC)`` at the
   boundaries of the path of one request at a time (the echo tool stamps the
   same clock just before it writes), and the table gives the median of each
   stage.  The wrappers cost a little each; their sum is shown against the
   unwrapped p50 measured just before.
2. cProfile of every thread (the caller and the reader threads, which run the
   framer, the turn's resolution and the dispatcher's completion callbacks):
   Python calls per request and the functions with the most own time, in µs
   per request (cProfile inflates small calls; read the ranking, not the
   absolute figure).  ``ask``: 1-instance pool, one request at a time.
   ``submit``: 4 instances, all requests submitted at once, as in roundtrip.py (b).
3. Building blocks timed alone: what the pieces the paths are made of cost
   on this machine.

Everything is patched from the outside at run time: toolpool's files are not changed.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import cProfile
import functools
import inspect
import os
import sys
import threading
import time
import timeit
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import HANG_SECONDS, PROMPT_RE, core_under_test, echo_cmd, machine, median, pct, table, tool_stamp  # noqa: E402

import toolpool.dispatch as dispatch_mod  # noqa: E402
import toolpool.instance as instance_mod  # noqa: E402
import toolpool.streams as streams_mod  # noqa: E402
from toolpool import ReplAdapter, ToolProcessPool  # noqa: E402
from toolpool.adapters.repl import PromptFramer  # noqa: E402

CLOCK = time.CLOCK_MONOTONIC


# ------------------------------------------------------------------ 1. stages
class Stamps:
    """(label, ns) marks of the request in flight; one request at a time, so one list."""

    def __init__(self) -> None:
        self.marks: list[tuple[str, int]] = []
        self.on = False

    def mark(self, label: str) -> None:
        if self.on:
            self.marks.append((label, time.clock_gettime_ns(CLOCK)))


def stamped(stamps: Stamps, owner: Any, name: str, enter: str, leave: str | None = None) -> Callable[[], None]:
    """Replace ``owner.name`` with a wrapper that marks entry (and exit); returns the undo."""
    descriptor = inspect.getattr_static(owner, name)
    original = getattr(owner, name)

    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        stamps.mark(enter)
        try:
            return original(*args, **kwargs)
        finally:
            if leave:
                stamps.mark(leave)

    # A staticmethod (Instance._resolve) must stay one, or the instance would be passed as its argument.
    setattr(owner, name, staticmethod(wrapper) if isinstance(descriptor, staticmethod) else wrapper)
    return lambda: setattr(owner, name, descriptor)


@contextmanager
def patched(stamps: Stamps, points: list[tuple[Any, str, str, str | None]]) -> Iterator[None]:
    undo = [stamped(stamps, owner, name, enter, leave) for owner, name, enter, leave in points]
    try:
        yield
    finally:
        for u in reversed(undo):
            u()


COMMON_POINTS: list[tuple[Any, str, str, str | None]] = [
    (instance_mod.Instance, "_send", "Instance._send", None),
    (streams_mod.Writer, "write", "Writer.write", "write syscall done"),
    (streams_mod.StreamReader, "_read", "reader woke (poll returned)", None),
    (instance_mod.Instance, "_on_data", "Instance._on_data", None),
    (PromptFramer, "feed", "framer.feed", "feed done"),
    (instance_mod.Instance, "_apply", "Instance._apply", "apply done"),
    (instance_mod.Instance, "_resolve", "Instance._resolve", "resolve done"),
]
SUBMIT_POINTS: list[tuple[Any, str, str, str | None]] = [
    (dispatch_mod.Dispatcher, "submit", "Dispatcher.submit", None),
    (dispatch_mod.Dispatcher, "pump", "Dispatcher.pump", None),
    (dispatch_mod.Dispatcher, "_run", "Dispatcher._run", "_run done"),
    (dispatch_mod.Dispatcher, "_finished", "Dispatcher._finished", "_finished done"),
    (dispatch_mod.Dispatcher, "_complete", "Dispatcher._complete", "_complete done"),
]


def stage_table(title: str, runs: list[list[tuple[str, int]]], unwrapped_p50: float) -> None:
    """Median duration of each step between consecutive marks, over runs with the usual sequence."""
    shapes: dict[tuple[str, ...], int] = {}
    for marks in runs:
        key = tuple(label for label, _ in marks)
        shapes[key] = shapes.get(key, 0) + 1
    shape = max(shapes, key=lambda k: shapes[k])  # the common sequence; others (rare races) are left out
    same = [m for m in runs if tuple(label for label, _ in m) == shape]
    rows: list[list[object]] = []
    for i in range(1, len(shape)):
        steps = [(m[i][1] - m[i - 1][1]) / 1e3 for m in same]
        rows.append([f"{shape[i - 1]} -> {shape[i]}", median(steps), pct(steps, 90)])
    totals = [(m[-1][1] - m[0][1]) / 1e3 for m in same]
    rows.append(["total (wrapped)", median(totals), pct(totals, 90)])
    table(f"{title}: {len(same)} of {len(runs)} requests had this sequence; unwrapped p50 {unwrapped_p50:.1f} us",
          ["step", "median us", "p90 us"], rows)


def bench_stages(args: argparse.Namespace) -> None:
    stamps = Stamps()
    pool = ToolProcessPool(ReplAdapter(echo_cmd(), prompt=PROMPT_RE, name="echo"), count=1)
    try:
        def ask(line: str) -> bytes:
            return pool.ask(0, line, HANG_SECONDS).raw

        def submit(line: str) -> bytes:
            return pool.submit(line).result(HANG_SECONDS).raw

        paths: list[tuple[str, Callable[[str], bytes]]] = [("ask", ask), ("submit", submit)]
        for path, call in paths:
            for i in range(500):
                call(f"warm {i}")
            plain = []
            for i in range(args.stage_n):
                t0 = time.clock_gettime_ns(CLOCK)
                call(f"hello {i}")
                plain.append((time.clock_gettime_ns(CLOCK) - t0) / 1e3)
            points = COMMON_POINTS + (SUBMIT_POINTS if path == "submit" else [])
            runs: list[list[tuple[str, int]]] = []
            with patched(stamps, points):
                for i in range(args.stage_n):
                    stamps.marks = [(f"pool.{path}() called", time.clock_gettime_ns(CLOCK))]
                    stamps.on = True
                    raw = call(f"hello {i}")
                    stamps.mark("caller has the Response")
                    stamps.on = False
                    stamps.marks.append(("tool wrote its answer", tool_stamp(raw)))
                    stamps.marks.sort(key=lambda m: m[1])
                    runs.append(stamps.marks)
            stage_table(f"1. stages of pool.{path} (one request at a time, 1 instance)", runs, pct(plain, 50))
    finally:
        pool.shutdown()


# ------------------------------------------------------------------ 2. cProfile
class ThreadProfiles:
    """cProfile in every toolpool reader thread (cProfile only sees the thread that enabled it)."""

    def __init__(self, timer: tuple[Any, ...]) -> None:
        self.timer = timer
        self.profiles: list[cProfile.Profile] = []
        self.lock = threading.Lock()
        self._original = streams_mod.StreamReader.run

    def __enter__(self) -> ThreadProfiles:
        original, profiles, lock, timer = self._original, self.profiles, self.lock, self.timer

        def run(reader: streams_mod.StreamReader) -> None:
            prof = cProfile.Profile(*timer)
            with lock:
                profiles.append(prof)
            prof.enable()
            try:
                original(reader)
            finally:
                prof.disable()

        setattr(streams_mod.StreamReader, "run", run)  # noqa: B010 (a method replaced from outside)
        return self

    def __exit__(self, *exc: object) -> None:
        setattr(streams_mod.StreamReader, "run", self._original)  # noqa: B010


FuncStats = dict[Any, tuple[int, float, float]]  # function -> (calls, own s, cumulative s)


#: cProfile's clock: "cpu" counts each thread's own CPU time (a wait in poll(), on a lock or for the
#: GIL counts nothing: what costs throughput on 2 cores); "wall" counts waits too.
TIMERS: dict[str, tuple[Any, ...]] = {"cpu": (time.thread_time_ns, 1e-9), "wall": ()}


def profile_path(name: str, count: int, n: int, drive: Callable[[ToolProcessPool, int], None], top: int,
                 timer: str) -> None:
    with ThreadProfiles(TIMERS[timer]) as threads:
        pool = ToolProcessPool(ReplAdapter(echo_cmd(), prompt=PROMPT_RE, name="echo"), count=count)
    try:
        drive(pool, 500)  # warm
        # The reader threads' profiles saw start-up and warm-up too: what they hold now is subtracted.
        before = _totals(threads.profiles)
        caller = cProfile.Profile(*TIMERS[timer])
        caller.enable()
        t0 = time.perf_counter()
        drive(pool, n)
        wall = time.perf_counter() - t0
        caller.disable()
        after = _totals(threads.profiles + [caller])
    finally:
        pool.shutdown()
    report_profile(name, _minus(after, before), n, wall, top, timer)


def _totals(profiles: list[cProfile.Profile]) -> FuncStats:
    """Calls and times per function, summed over ``profiles`` (running ones included)."""
    out: FuncStats = {}
    for p in profiles:
        p.snapshot_stats()  # unlike create_stats, leaves a running profile running
        for func, (_cc, nc, tt, ct, _callers) in p.stats.items():
            c0, t0, k0 = out.get(func, (0, 0.0, 0.0))
            out[func] = (c0 + nc, t0 + tt, k0 + ct)
    return out


def _minus(after: FuncStats, before: FuncStats) -> FuncStats:
    out: FuncStats = {}
    for func, (nc, tt, ct) in after.items():
        b = before.get(func, (0, 0.0, 0.0))
        if nc - b[0] > 0:
            out[func] = (nc - b[0], tt - b[1], ct - b[2])
    return out


def _where(func: tuple[str, int, str]) -> str:
    path, line, name = func
    if path == "~":
        return name
    parts = path.split(os.sep)
    short = "/".join(parts[-2:]) if "toolpool" in parts else parts[-1]
    return f"{short}:{line}({name})"


HOT = ("_send", "write", "_on_data", "feed", "_apply", "_resolve", "set_result", "result", "submit", "pump",
       "_pick", "_run", "_finished", "_complete", "ask", "read", "_wait", "unclaim_index", "_result", "_response")


def report_profile(name: str, d: FuncStats, n: int, wall: float, top: int, timer: str) -> None:
    calls = sum(v[0] for v in d.values())
    own = sum(v[1] for v in d.values())
    rows = sorted(d.items(), key=lambda kv: -kv[1][1])[:top]
    table(f"2. cProfile ({timer} time, all threads), pool.{name}: {n} requests, {calls / n:.0f} function calls "
          f"per request, {own / n * 1e6:.1f} us {timer} time per request ({wall / n * 1e6:.1f} us wall per request "
          "under the profiler)", ["function (own time)", "calls/req", "own us/req", "cum us/req", "share of own"],
          [[_where(f), v[0] / n, v[1] / n * 1e6, v[2] / n * 1e6, f"{v[1] / own * 100:.1f}%"] for f, v in rows])
    path = sorted(((f, v) for f, v in d.items() if "toolpool" in f[0] and f[2] in HOT), key=lambda kv: -kv[1][2])
    table(f"2'. pool.{name}: the path's own functions, cumulative (includes what they call)",
          ["function", "calls/req", "cum us/req", "own us/req"],
          [[_where(f), v[0] / n, v[2] / n * 1e6, v[1] / n * 1e6] for f, v in path])


def ask_many(pool: ToolProcessPool, n: int) -> None:
    for i in range(n):
        pool.ask(0, f"hello {i}", HANG_SECONDS)


def submit_many(pool: ToolProcessPool, n: int) -> None:
    for f in [pool.submit(f"hello {i}") for i in range(n)]:
        f.result(HANG_SECONDS)


# ------------------------------------------------------------------ 3. building blocks
def bench_blocks(args: argparse.Namespace) -> None:
    from toolpool.response import Response, Timings
    from toolpool.states import State, check_transition

    lock = threading.Lock()
    cond = threading.Condition()
    framer = PromptFramer(ReplAdapter(echo_cmd(), prompt=PROMPT_RE).prompt)
    chunk = b"echo: hello 123 t=1234567890123\nbench> "

    def future_cycle() -> None:
        f: cf.Future[int] = cf.Future()
        f.set_running_or_notify_cancel()
        f.set_result(1)
        f.result()

    def future_with_callback() -> None:
        f: cf.Future[int] = cf.Future()
        f.add_done_callback(lambda _f: None)
        f.set_running_or_notify_cancel()
        f.set_result(1)
        f.result()

    def lock_round() -> None:
        with lock:
            pass

    def cond_notify() -> None:
        with cond:
            cond.notify()

    def feed() -> None:
        framer.start_turn("hello 123")
        framer.feed(chunk)

    blocks: list[tuple[str, Callable[[], object]]] = [
        ("threading.Lock acquire + release", lock_round),
        ("Condition: acquire + notify (nobody waiting) + release", cond_notify),
        ("concurrent.futures.Future: create, running, set_result, result", future_cycle),
        ("  the same with one done-callback", future_with_callback),
        ("instance._TurnFuture() + set_running_or_notify_cancel", lambda: instance_mod._Turn("prompt", "x")),
        ("Timings()", Timings),
        ("Response(text, raw, index, elapsed, prompt)", lambda: Response(text="x", raw=b"x", index=0, elapsed=0.0,
                                                                          prompt="x")),
        ("PromptFramer: start_turn + feed one answer (decode + regex)", feed),
        ("states.check_transition(IDLE, BUSY)", lambda: check_transition(State.IDLE, State.BUSY)),
        ("time.time()", time.time),
        ("time.perf_counter()", time.perf_counter),
        ("time.monotonic()", time.monotonic),
        ("logging: log.isEnabledFor(DEBUG)", lambda: instance_mod.log.isEnabledFor(10)),
        ("ReplAdapter.encode('hello 123')", lambda: ReplAdapter(echo_cmd(), prompt=PROMPT_RE).encode("hello 123")),
    ]
    enc = ReplAdapter(echo_cmd(), prompt=PROMPT_RE)
    blocks[-1] = ("ReplAdapter.encode('hello 123')", lambda: enc.encode("hello 123"))
    rows: list[list[object]] = []
    for label, fn in blocks:
        runs = timeit.repeat(fn, number=args.block_n, repeat=5)
        rows.append([label, min(runs) / args.block_n * 1e6])
    table(f"3. building blocks alone (best of 5 x {args.block_n})", ["block", "us each"], rows)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="500 requests per profile: a smoke test")
    ap.add_argument("--requests", type=int, default=None, help="requests per cProfile run (default 20000)")
    ap.add_argument("--top", type=int, default=25, help="rows of the cProfile tables")
    ap.add_argument("--timer", choices=sorted(TIMERS), default="cpu", help="cProfile's clock (default: cpu)")
    args = ap.parse_args(argv or None)
    q = args.quick
    args.requests = args.requests or (500 if q else 20000)
    args.stage_n = 200 if q else 3000
    args.block_n = 2000 if q else 50000
    print(f"toolpool hot-path profile{' (--quick)' if q else ''}")
    print(f"machine: {machine()}; load average {os.getloadavg()[0]:.2f}")
    print(f"core: {core_under_test()}")
    bench_stages(args)
    if sys.version_info >= (3, 12):
        # From 3.12 cProfile runs on sys.monitoring: one profiler per process, not one per thread.
        print("\n(profile per thread skipped: Python >= 3.12 allows one cProfile at a time; run it on 3.11)")
    else:
        profile_path("ask", 1, args.requests, ask_many, args.top, args.timer)
        profile_path("submit", 4, args.requests, submit_many, args.top, args.timer)
    bench_blocks(args)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
