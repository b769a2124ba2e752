#!/usr/bin/env python3
"""Round trip and throughput of the pool against hand-written baselines on the same tool, and idle CPU.

    python3 benchmarks/roundtrip.py            # full run (~1 min on a loaded 2-core machine)
    python3 benchmarks/roundtrip.py --quick    # a few seconds (smoke test)
    PYTHONPATH=/path/to/older/checkout python3 benchmarks/roundtrip.py   # the same against another core

The two targets are measured side by side in ONE run: every round runs the
latency block and then the throughput block, each method in an order that
rotates from round to round, so that the machine's noise hits every method
alike.  Ratios are the median over rounds of the ratio within a round.

(a) latency: ``pool.ask(0, line)`` on a 1-instance pool of ``echotool.py`` vs
    * the threaded floor: one reader thread blocked in ``poll()`` that hands
      each answer to the caller through a Condition, nothing else (the cheapest
      shape of any design whose reader is a thread, as toolpool's is).
      Target: pool.ask p50 <= 1.5 x the floor's p50.
    * for context, a raw blocking loop (write, read until the prompt, no thread)
      and ``pool.submit(line).result()``.
    Hand-over: the echo tool stamps each answer with CLOCK_MONOTONIC
    (system-wide on Linux) just before writing it; the caller reads the clock
    when the call returns.  The difference is how long after the tool's last
    byte the caller had its answer.
(b) throughput: N requests submitted at once to ``pool.submit`` over 4
    instances vs a ``ThreadPoolExecutor(4)`` whose workers each do a blocking
    write + read round trip on their own raw pipe to the same tool.
    Target: pool.submit throughput >= 0.6 x the executor's.
Then, for context: a tool that works 1 ms per answer; the pty transport vs a
raw pexpect loop; the idle CPU of a 32-instance pool (target well under 1 %).
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures as cf
import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import (  # noqa: E402
    HANG_SECONDS,
    PROMPT,
    PROMPT_RE,
    RawPexpect,
    RawPipe,
    children_cpu_seconds,
    core_under_test,
    cpu_seconds,
    echo_cmd,
    machine,
    median,
    now_ns,
    optional,
    pct,
    table,
    tool_stamp,
    verdict,
)

from toolpool import ReplAdapter, ToolProcessPool  # noqa: E402

Ask = Callable[[bytes], bytes]
Method = tuple[str, Ask]
Batch = tuple[str, Callable[[int], None]]

FLOOR = "threaded floor"
RAW = "raw blocking loop"
ASK = "pool.ask"
SUBMIT1 = "pool.submit().result()"
EXECUTOR = "ThreadPoolExecutor(4) + raw pipes"
SUBMIT = "pool.submit x4 instances"
MAP = "pool.map x4 instances"


# ------------------------------------------------------------------ baselines
class ThreadedFloor:
    """The floor of a thread-based pool: one reader thread in ``poll()``, a Condition, nothing else.

    No framing beyond "ends with the prompt", no state, no futures: what is
    left is the thread hop itself (the reader wakes, then wakes the caller).
    """

    def __init__(self, argv: Sequence[str]) -> None:
        self.proc = subprocess.Popen(list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._fin = self.proc.stdin.fileno()
        self._fout = self.proc.stdout.fileno()
        self._cond = threading.Condition()
        self._answers: collections.deque[bytes] = collections.deque()
        self._eof = False
        self._reader = threading.Thread(target=self._read_loop, name="floor-reader", daemon=True)
        self._reader.start()
        self._wait()  # the first prompt

    def _read_loop(self) -> None:
        poller = select.poll()
        poller.register(self._fout, select.POLLIN)
        buf = b""
        while True:
            poller.poll()  # ends at EOF: close() closes the tool's stdin, the tool exits
            chunk = os.read(self._fout, 65536)
            if not chunk:
                with self._cond:
                    self._eof = True
                    self._cond.notify_all()
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
                if self._eof or not self._cond.wait(HANG_SECONDS):
                    raise EOFError("the echo tool exited or hung")
            return self._answers.popleft()

    def ask(self, line: bytes) -> bytes:
        os.write(self._fin, line + b"\n")
        return self._wait()

    def close(self) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()
        self.proc.wait(5)
        self._reader.join(5)
        self.proc.stdout.close()


class RawExecutor:
    """A ``ThreadPoolExecutor(workers)`` whose every worker owns one raw pipe to the tool."""

    def __init__(self, argv: Sequence[str], workers: int) -> None:
        self._free = [RawPipe(argv) for _ in range(workers)]
        self.pipes = list(self._free)
        self._local = threading.local()
        self._lock = threading.Lock()
        self.executor = cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="raw-worker")

    def _ask(self, line: bytes) -> bytes:
        pipe = getattr(self._local, "pipe", None)
        if pipe is None:  # a worker's first request: it takes a pipe of its own for good
            with self._lock:
                pipe = self._local.pipe = self._free.pop()
        result: bytes = pipe.ask(line)
        return result

    def run(self, n: int) -> None:
        for f in [self.executor.submit(self._ask, b"hello %d" % i) for i in range(n)]:
            f.result(HANG_SECONDS)

    def close(self) -> None:
        self.executor.shutdown(wait=True)
        for pipe in self.pipes:
            pipe.close()


# ------------------------------------------------------------------ measuring
T = TypeVar("T")


def rotated(items: Sequence[T], r: int) -> list[T]:
    """``items`` starting at ``r``: each round a different method goes first."""
    k = r % len(items)
    return list(items[k:]) + list(items[:k])


def latency_block(methods: Sequence[Method], r: int, n: int, lat: dict[str, list[float]],
                  hand: dict[str, list[float]]) -> dict[str, float]:
    """One round of ``n`` requests per method; appends µs samples, returns each method's p50."""
    p50: dict[str, float] = {}
    for name, fn in rotated(methods, r):
        samples: list[float] = []
        for i in range(n):
            line = b"hello %d" % i
            t0 = now_ns()
            raw = fn(line)
            t1 = now_ns()
            samples.append((t1 - t0) / 1e3)
            hand[name].append((t1 - tool_stamp(raw)) / 1e3)
        lat[name] += samples
        p50[name] = pct(samples, 50)
    return p50


def throughput_block(batches: Sequence[Batch], r: int, n: int, wall: dict[str, list[float]],
                     cpu: dict[str, list[float]]) -> None:
    for name, run in rotated(batches, r):
        c0, t0 = cpu_seconds(), time.perf_counter()
        run(n)
        wall[name].append(time.perf_counter() - t0)
        cpu[name].append(cpu_seconds() - c0)


def echo_pool(count: int, *flags: str, transport: str = "pipe") -> ToolProcessPool:
    return ToolProcessPool(ReplAdapter(echo_cmd(*flags), prompt=PROMPT_RE, transport=transport, name="echo"),
                           count=count)


def submit_all(pool: ToolProcessPool, n: int) -> None:
    for f in [pool.submit(f"hello {i}") for i in range(n)]:
        f.result(HANG_SECONDS)


def map_all(pool: ToolProcessPool, n: int) -> None:
    for _ in pool.map((f"hello {i}" for i in range(n)), timeout=HANG_SECONDS):
        pass


LAT_HEADER = ["method", "n", "p50 us", "p99 us", "hand-over p50 us", "hand-over p99 us", "p50 vs floor"]


def latency_rows(lat: dict[str, list[float]], hand: dict[str, list[float]], base: str) -> list[list[object]]:
    b50 = pct(lat[base], 50)
    return [[name, len(v), pct(v, 50), pct(v, 99), pct(hand[name], 50), pct(hand[name], 99),
             f"{pct(v, 50) / b50:.2f}x"] for name, v in lat.items()]


# ------------------------------------------------------------------ (a) + (b)
def bench_targets(args: argparse.Namespace) -> None:
    one = echo_pool(1)
    four = echo_pool(4)
    raw, floor, executor = RawPipe(echo_cmd()), ThreadedFloor(echo_cmd()), RawExecutor(echo_cmd(), 4)
    try:
        methods: list[Method] = [
            (FLOOR, floor.ask),
            (ASK, lambda line: one.ask(0, line.decode()).raw),
            (RAW, raw.ask),
            (SUBMIT1, lambda line: one.submit(line.decode()).result(HANG_SECONDS).raw),
        ]
        batches: list[Batch] = [(EXECUTOR, executor.run), (SUBMIT, lambda n: submit_all(four, n)),
                                (MAP, lambda n: map_all(four, n))]
        for _, fn in methods:  # allocation and import paths warm before anything is timed
            for i in range(args.warmup):
                fn(b"warm %d" % i)
        for _, run in batches:
            run(args.warmup)
        lat: dict[str, list[float]] = {name: [] for name, _ in methods}
        hand: dict[str, list[float]] = {name: [] for name, _ in methods}
        wall: dict[str, list[float]] = {name: [] for name, _ in batches}
        cpu: dict[str, list[float]] = {name: [] for name, _ in batches}
        rounds_p50: list[dict[str, float]] = []
        for r in range(args.rounds):
            rounds_p50.append(latency_block(methods, r, args.per_round, lat, hand))
            throughput_block(batches, r, args.requests, wall, cpu)
    finally:
        one.shutdown()
        four.shutdown()
        raw.close()
        floor.close()
        executor.close()
    report_latency(args, lat, hand, rounds_p50)
    report_throughput(args, wall, cpu)


def report_latency(args: argparse.Namespace, lat: dict[str, list[float]], hand: dict[str, list[float]],
                   rounds_p50: list[dict[str, float]]) -> None:
    table(f"(a) round trip over pipes: {args.rounds} rounds x {args.per_round} requests per method, interleaved",
          LAT_HEADER, latency_rows(lat, hand, FLOOR))
    per_round = median(r[ASK] / r[FLOOR] for r in rounds_p50)
    pooled = pct(lat[ASK], 50) / pct(lat[FLOOR], 50)
    print()
    print(f"ratio pool.ask/threaded p50: {per_round:.2f}x (median of {args.rounds} per-round ratios; pooled "
          f"{pooled:.2f}x; target <= 1.5x: {verdict(per_round <= 1.5)})")
    print(f"ratio pool.ask/raw p50: {median(r[ASK] / r[RAW] for r in rounds_p50):.2f}x (context: the floor itself "
          f"is {median(r[FLOOR] / r[RAW] for r in rounds_p50):.2f}x the raw loop)")
    print(f"ratio pool.submit().result()/threaded p50: {median(r[SUBMIT1] / r[FLOOR] for r in rounds_p50):.2f}x")
    print(f"pool.ask adds {pct(lat[ASK], 50) - pct(lat[FLOOR], 50):.1f} us at p50 over the threaded floor, "
          f"{pct(lat[ASK], 50) - pct(lat[RAW], 50):.1f} us over the raw loop")
    print(f"hand-over: pool.ask returned {pct(hand[ASK], 50):.1f} us (p50) / {pct(hand[ASK], 99):.1f} us (p99) "
          f"after the tool wrote its last byte; threaded floor {pct(hand[FLOOR], 50):.1f} us, "
          f"raw loop {pct(hand[RAW], 50):.1f} us (p50)")


def report_throughput(args: argparse.Namespace, wall: dict[str, list[float]], cpu: dict[str, list[float]]) -> None:
    n = args.requests

    def vs_executor(name: str) -> float:
        """Median over rounds of the executor's wall time / this method's, within the round."""
        return median(b / x for b, x in zip(wall[EXECUTOR], wall[name], strict=True))

    rows = [[name, n, n / median(w), median(w) / n * 1e6, median(cpu[name]) / n * 1e6, f"{vs_executor(name):.2f}x"]
            for name, w in wall.items()]
    table(f"(b) throughput, {n} requests submitted at once per method per round, {args.rounds} rounds (medians)",
          ["method", "requests", "req/s", "wall us/req", "parent CPU us/req", "throughput vs executor"], rows)
    ratio = vs_executor(SUBMIT)
    wb, wp = median(wall[EXECUTOR]) / n, median(wall[SUBMIT]) / n
    cb, cp = median(cpu[EXECUTOR]) / n, median(cpu[SUBMIT]) / n
    print()
    print(f"ratio throughput pool.submit/executor: {ratio:.2f}x (median of {args.rounds} per-round ratios; "
          f"target >= 0.6x: {verdict(ratio >= 0.6)})")
    print(f"ratio throughput pool.map/executor: {vs_executor(MAP):.2f}x")
    print(f"overhead per request of pool.submit: {(wp - wb) * 1e6:.1f} us wall, {(cp - cb) * 1e6:.1f} us parent CPU "
          f"(executor: {wb * 1e6:.1f} us wall, {cb * 1e6:.1f} us CPU per request)")


# ------------------------------------------------------------------ context
def bench_delay(args: argparse.Namespace, delay: float = 0.001) -> None:
    """A tool that does some work: the pool's constant overhead shrinks to a small factor."""
    pool = echo_pool(1, "--delay", str(delay))
    raw, floor = RawPipe(echo_cmd("--delay", str(delay))), ThreadedFloor(echo_cmd("--delay", str(delay)))
    try:
        methods: list[Method] = [(FLOOR, floor.ask), (ASK, lambda line: pool.ask(0, line.decode()).raw),
                                 (RAW, raw.ask)]
        lat: dict[str, list[float]] = {name: [] for name, _ in methods}
        hand: dict[str, list[float]] = {name: [] for name, _ in methods}
        rounds = [latency_block(methods, r, args.delay_per_round, lat, hand) for r in range(args.delay_rounds)]
    finally:
        pool.shutdown()
        raw.close()
        floor.close()
    table(f"Context: a tool that works {delay * 1e3:g} ms per answer ({args.delay_rounds} rounds x "
          f"{args.delay_per_round} per method)", LAT_HEADER, latency_rows(lat, hand, FLOOR))
    print()
    print(f"ratio pool.ask/raw p50 with a {delay * 1e3:g} ms tool: {median(r[ASK] / r[RAW] for r in rounds):.3f}x "
          f"(+{pct(lat[ASK], 50) - pct(lat[RAW], 50):.1f} us)")


def bench_pty(args: argparse.Namespace) -> None:
    if optional("pexpect") is None:
        print("\npty: skipped (pexpect is not installed)")
        return
    pool = echo_pool(1, transport="pty")
    raw = RawPexpect(echo_cmd())
    try:
        methods: list[Method] = [("raw pexpect loop", raw.ask),
                                 ("pool.ask (pty)", lambda line: pool.ask(0, line.decode()).raw)]
        for _, fn in methods:
            for i in range(args.warmup // 2):
                fn(b"warm %d" % i)
        lat: dict[str, list[float]] = {name: [] for name, _ in methods}
        hand: dict[str, list[float]] = {name: [] for name, _ in methods}
        rounds = [latency_block(methods, r, args.per_round, lat, hand) for r in range(args.pty_rounds)]
    finally:
        pool.shutdown()
        raw.close()
    header = LAT_HEADER[:-1] + ["p50 vs pexpect"]
    table(f"Context: round trip over a pty, {args.pty_rounds} rounds x {args.per_round} requests per method",
          header, latency_rows(lat, hand, "raw pexpect loop"))
    print()
    print(f"ratio pool.ask(pty)/pexpect p50: "
          f"{median(r['pool.ask (pty)'] / r['raw pexpect loop'] for r in rounds):.2f}x (median of per-round ratios)")


def bench_idle(args: argparse.Namespace) -> None:
    time.sleep(0.2)  # baseline: this process idle with no pool (whatever else it runs)
    c0, t0 = cpu_seconds(), time.monotonic()
    time.sleep(args.idle_seconds)
    base = (cpu_seconds() - c0) / (time.monotonic() - t0)
    threads_before = threading.active_count()
    t_start = time.monotonic()
    pool = echo_pool(args.instances)
    started = time.monotonic() - t_start
    try:
        pool.ask(0, "one request first")
        time.sleep(0.5)  # let start-up stragglers (spawn threads, timers) settle
        pids = [inst.pid for inst in pool.instances() if inst.pid]
        k0, c0, t0 = children_cpu_seconds(pids), cpu_seconds(), time.monotonic()
        time.sleep(args.idle_seconds)
        elapsed = time.monotonic() - t0
        used = (cpu_seconds() - c0) / elapsed
        tools = (children_cpu_seconds(pids) - k0) / elapsed
        threads = threading.active_count() - threads_before
        idle = pool.check_health()["idle"]
    finally:
        pool.shutdown()
    table(f"Idle CPU over {args.idle_seconds:g} s: parent = process_time() (user+sys, all threads); "
          f"tools = /proc utime+stime of the {args.instances} tool processes (10 ms ticks)",
          ["situation", "parent % of one core", "tools % of one core", "threads added"],
          [["no pool (baseline)", f"{base * 100:.3f}", "-", "0"],
           [f"pool of {args.instances}, all idle ({idle} idle)", f"{used * 100:.3f}", f"{tools * 100:.3f}",
            str(threads)]])
    print()
    print(f"idle CPU of a {args.instances}-instance pool: {used * 100:.3f}% of one core "
          f"(baseline {base * 100:.3f}%; target < 1%: {verdict(used < 0.01)}); pool start took {started:.2f} s")


def main(argv: Sequence[str] = ()) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a few seconds: fewer rounds, 1 s idle")
    ap.add_argument("--rounds", type=int, default=None, help="alternating rounds of (a) and (b) (default 9)")
    ap.add_argument("--per-round", type=int, default=None, help="(a): requests per method per round (1000)")
    ap.add_argument("--requests", type=int, default=None, help="(b): requests per method per round (2000)")
    ap.add_argument("--instances", type=int, default=32, help="idle CPU: pool size")
    ap.add_argument("--idle-seconds", type=float, default=None)
    ap.add_argument("--targets-only", action="store_true", help="only (a) and (b), no context sections")
    ap.add_argument("--no-pty", action="store_true")
    args = ap.parse_args(list(argv) or None)
    q = args.quick
    args.rounds = args.rounds or (3 if q else 9)
    args.per_round = args.per_round or (100 if q else 1000)
    args.requests = args.requests or (300 if q else 2000)
    args.warmup = 50 if q else 500
    args.pty_rounds = 2 if q else 6
    args.delay_rounds = 2 if q else 6
    args.delay_per_round = 20 if q else 100
    args.idle_seconds = args.idle_seconds or (1.0 if q else 5.0)
    print(f"toolpool round-trip and throughput benchmark{' (--quick)' if q else ''}")
    print(f"machine: {machine()}; load average {os.getloadavg()[0]:.2f}")
    print(f"core: {core_under_test()}")
    bench_targets(args)
    if args.targets_only:
        return 0
    bench_delay(args)
    if not args.no_pty:
        bench_pty(args)
    bench_idle(args)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
