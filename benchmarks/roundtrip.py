#!/usr/bin/env python3
"""Round-trip latency of ``pool.ask`` against hand-written loops on the same tool, and idle CPU.

    python3 benchmarks/roundtrip.py            # full run (~2 min on a loaded 2-core machine)
    python3 benchmarks/roundtrip.py --quick    # a few seconds (smoke test)

What it measures, all in ONE run so that the machine's noise hits every
method alike (requests are interleaved in short blocks, the order rotating
every round):

1. pipe: ``pool.ask(0, line)`` on a 1-instance pool of ``echotool.py`` vs
   * raw:      a blocking ``os.write`` + ``os.read``-until-prompt loop (no threads),
   * threaded: the same pipe read by one reader thread handing each answer to
     the caller through a condition variable: the floor of any design whose
     reader is a thread (toolpool's is).
   Target: pool p50 <= 1.5 x raw p50.
2. hand-over: the echo tool stamps each answer with CLOCK_MONOTONIC (system-wide
   on Linux) just before writing it; the caller reads the clock when the call
   returns.  The difference is how long after the tool's last byte the caller
   had its answer.
3. pty: the same with ``transport="pty"`` vs a raw pexpect loop.
4. idle CPU: the parent's CPU time (``os.times``, all threads) while a pool of
   32 instances sits idle.  Target: well under 1 % of one core.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from typing import Callable, Dict, List, Sequence, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import (PROMPT_RE, RawPexpect, RawPipe, ThreadedPipe, children_cpu_seconds, cpu_seconds,  # noqa: E402
                     echo_cmd, machine, median, now_ns, optional, pct, table, tool_stamp, verdict)

from toolpool import ReplAdapter, ToolProcessPool  # noqa: E402

Method = Tuple[str, Callable[[bytes], bytes]]


def interleaved(methods: Sequence[Method], rounds: int, per_round: int, warmup: int
                ) -> Tuple[Dict[str, List[float]], Dict[str, List[float]], List[Dict[str, float]]]:
    """Run every method ``per_round`` times per round, rotating the order each round.

    Returns latencies (µs), hand-over times (µs) and each round's p50 per method.
    """
    lat: Dict[str, List[float]] = {name: [] for name, _ in methods}
    hand: Dict[str, List[float]] = {name: [] for name, _ in methods}
    per_round_p50: List[Dict[str, float]] = []
    for name, fn in methods:  # warm caches, JIT-free but import/alloc paths
        for i in range(warmup):
            fn(b"warm %d" % i)
    for r in range(rounds):
        order = list(methods[r % len(methods):]) + list(methods[: r % len(methods)])
        this: Dict[str, List[float]] = {}
        for name, fn in order:
            samples = this.setdefault(name, [])
            for i in range(per_round):
                line = b"hello %d" % i
                t0 = now_ns()
                raw = fn(line)
                t1 = now_ns()
                samples.append((t1 - t0) / 1e3)
                hand[name].append((t1 - tool_stamp(raw)) / 1e3)
            lat[name].extend(samples)
        per_round_p50.append({name: pct(s, 50) for name, s in this.items()})
    return lat, hand, per_round_p50


def ratio_of_rounds(per_round: List[Dict[str, float]], a: str, b: str) -> float:
    """Median over rounds of (a's p50 / b's p50): robust to a noisy round."""
    return median(r[a] / r[b] for r in per_round)


def latency_rows(names: Sequence[str], lat: Dict[str, List[float]], hand: Dict[str, List[float]],
                 base: str) -> List[List[object]]:
    rows = []
    b50 = pct(lat[base], 50)
    for name in names:
        v = lat[name]
        rows.append([name, len(v), pct(v, 50), pct(v, 99), pct(hand[name], 50), pct(hand[name], 99),
                     f"{pct(v, 50) / b50:.2f}x"])
    return rows


HEADER = ["method", "n", "p50 us", "p99 us", "hand-over p50 us", "hand-over p99 us", "p50 vs raw"]


def bench_pipe(args: argparse.Namespace, delay: float = 0.0) -> None:
    flags = ("--delay", str(delay)) if delay else ()
    pool = ToolProcessPool(ReplAdapter(echo_cmd(*flags), prompt=PROMPT_RE, name="echo"), count=1)
    raw = RawPipe(echo_cmd(*flags))
    thr = ThreadedPipe(echo_cmd(*flags))
    try:
        methods: List[Method] = [
            ("raw blocking loop", raw.ask),
            ("threaded floor", thr.ask),
            ("pool.ask", lambda line: pool.ask(0, line.decode()).raw),
            ("pool.submit().result()", lambda line: pool.submit(line.decode()).result().raw),
        ]
        if delay:
            lat, hand, rounds = interleaved(methods, args.delay_rounds, args.delay_per_round, 20)
        else:
            lat, hand, rounds = interleaved(methods, args.rounds, args.per_round, args.warmup)
    finally:
        pool.shutdown()
        raw.close()
        thr.close()
    names = [m[0] for m in methods]
    if delay:
        table(f"Context: the same with a tool that works {delay * 1e3:g} ms per answer "
              f"({args.delay_rounds} rounds x {args.delay_per_round} per method)",
              HEADER, latency_rows(names, lat, hand, "raw blocking loop"))
        r = pct(lat["pool.ask"], 50) / pct(lat["raw blocking loop"], 50)
        print()
        print(f"ratio pool.ask/raw p50 with a {delay * 1e3:g} ms tool: {r:.3f}x "
              f"(+{pct(lat['pool.ask'], 50) - pct(lat['raw blocking loop'], 50):.1f} us)")
        return
    table(f"Round trip over pipes: {args.rounds} rounds x {args.per_round} requests per method, interleaved",
          HEADER, latency_rows(names, lat, hand, "raw blocking loop"))
    r_raw = pct(lat["pool.ask"], 50) / pct(lat["raw blocking loop"], 50)
    r_thr = pct(lat["pool.ask"], 50) / pct(lat["threaded floor"], 50)
    print()
    print(f"ratio pool.ask/raw p50: {r_raw:.2f}x (median of per-round ratios "
          f"{ratio_of_rounds(rounds, 'pool.ask', 'raw blocking loop'):.2f}x; target <= 1.5x: {verdict(r_raw <= 1.5)})")
    print(f"ratio pool.ask/threaded p50: {r_thr:.2f}x (median of per-round ratios "
          f"{ratio_of_rounds(rounds, 'pool.ask', 'threaded floor'):.2f}x)")
    print(f"ratio pool.ask/raw p99: {pct(lat['pool.ask'], 99) / pct(lat['raw blocking loop'], 99):.2f}x")
    extra = pct(lat["pool.ask"], 50) - pct(lat["raw blocking loop"], 50)
    print(f"pool.ask adds {extra:.1f} us at p50 over the raw loop, "
          f"{pct(lat['pool.ask'], 50) - pct(lat['threaded floor'], 50):.1f} us over the threaded floor")
    print(f"hand-over: pool.ask returned {pct(hand['pool.ask'], 50):.1f} us (p50) / "
          f"{pct(hand['pool.ask'], 99):.1f} us (p99) after the tool wrote its last byte; "
          f"raw loop {pct(hand['raw blocking loop'], 50):.1f} us (p50)")
    print(f"ratio hand-over pool.ask/raw p50: "
          f"{pct(hand['pool.ask'], 50) / pct(hand['raw blocking loop'], 50):.2f}x")


def bench_pty(args: argparse.Namespace) -> None:
    if optional("pexpect") is None:
        print("\npty: skipped (pexpect is not installed)")
        return
    pool = ToolProcessPool(ReplAdapter(echo_cmd(), prompt=PROMPT_RE, transport="pty", name="echo-pty"), count=1)
    raw = RawPexpect(echo_cmd())
    try:
        methods: List[Method] = [
            ("raw pexpect loop", raw.ask),
            ("pool.ask (pty)", lambda line: pool.ask(0, line.decode()).raw),
        ]
        lat, hand, rounds = interleaved(methods, args.pty_rounds, args.per_round, args.warmup // 2)
    finally:
        pool.shutdown()
        raw.close()
    names = [m[0] for m in methods]
    header = HEADER[:-1] + ["p50 vs pexpect"]
    table(f"Round trip over a pty: {args.pty_rounds} rounds x {args.per_round} requests per method, interleaved",
          header, latency_rows(names, lat, hand, "raw pexpect loop"))
    r = pct(lat["pool.ask (pty)"], 50) / pct(lat["raw pexpect loop"], 50)
    print()
    print(f"ratio pool.ask(pty)/pexpect p50: {r:.2f}x (median of per-round ratios "
          f"{ratio_of_rounds(rounds, 'pool.ask (pty)', 'raw pexpect loop'):.2f}x; <= 1.5x: {verdict(r <= 1.5)})")


def bench_idle(args: argparse.Namespace) -> None:
    # Baseline: this process idle with no pool (whatever else it has running).
    time.sleep(0.2)
    c0, t0 = cpu_seconds(), time.monotonic()
    time.sleep(args.idle_seconds)
    base = (cpu_seconds() - c0) / (time.monotonic() - t0)
    threads_before = threading.active_count()
    t_start = time.monotonic()
    pool = ToolProcessPool(ReplAdapter(echo_cmd(), prompt=PROMPT_RE, name="echo"), count=args.instances)
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
        health = pool.check_health()
    finally:
        pool.shutdown()
    table(f"Idle CPU over {args.idle_seconds:g} s: parent = process_time() (user+sys, all threads); "
          "tools = /proc utime+stime of the 32 tool processes (10 ms ticks)",
          ["situation", "parent % of one core", "tools % of one core", "threads added"],
          [["no pool (baseline)", f"{base * 100:.3f}", "-", "0"],
           [f"pool of {args.instances}, all idle ({health['idle']} idle)", f"{used * 100:.3f}",
            f"{tools * 100:.3f}", str(threads)]])
    print()
    print(f"idle CPU of a {args.instances}-instance pool: {used * 100:.3f}% of one core "
          f"(baseline {base * 100:.3f}%; target < 1%: {verdict(used < 0.01)}); pool start took {started:.2f} s")


def main(argv: Sequence[str] = ()) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a few seconds: fewer rounds, 1 s idle")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--per-round", type=int, default=None)
    ap.add_argument("--instances", type=int, default=32)
    ap.add_argument("--idle-seconds", type=float, default=None)
    ap.add_argument("--no-pty", action="store_true")
    args = ap.parse_args(list(argv) or None)
    args.rounds = args.rounds or (3 if args.quick else 20)
    args.pty_rounds = 2 if args.quick else 10
    args.per_round = args.per_round or (100 if args.quick else 250)
    args.warmup = 50 if args.quick else 500
    args.delay_rounds = 2 if args.quick else 10
    args.delay_per_round = 20 if args.quick else 100
    args.idle_seconds = args.idle_seconds or (1.0 if args.quick else 5.0)
    print(f"toolpool round-trip benchmark{' (--quick)' if args.quick else ''}")
    print(f"machine: {machine()}; load average {os.getloadavg()[0]:.2f}")
    bench_pipe(args)
    bench_pipe(args, delay=0.001)
    if not args.no_pty:
        bench_pty(args)
    bench_idle(args)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
