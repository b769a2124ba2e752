#!/usr/bin/env python3
"""Pre-warming and parallel start-up.

    python3 benchmarks/prewarm.py            # full run (~1-2 min; includes real claude if installed)
    python3 benchmarks/prewarm.py --quick    # a few seconds (smoke test; skips claude)

(a) one-shot tools: a ``CommandAdapter`` pool keeps a process spawned and
    waiting on stdin, so a prompt skips the tool's start-up.  Tool: the echo
    tool in ``--oneshot`` mode with ``--startup 0.8`` (sleeps, reads stdin to
    EOF, answers, exits).  Warm = ``pool.submit(p).result()`` after a think
    time long enough for the replacement process to finish its start-up (as a
    batch with think time would); cold = ``subprocess.run`` of a fresh process
    per prompt.  Runs alternate warm, cold, warm, cold...
    Targets: warm p50 < 1/4 of cold p50; ``Response.timings.acquire`` well under 1 ms.
    The same with the real ``claude -p`` (``ClaudeAdapter(mode="oneshot")``)
    against ``toolpool.testing.FakeAnthropicServer``, when installed.
(b) pool start-up: constructing a pool of 8 instances of a tool with 0.5 s
    start-up vs a pool of 1, alternating.  Target: within 1.5 x (parallel spawn).
(``submit`` throughput is measured by ``roundtrip.py``, side by side with latency.)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import PROMPT_RE, RawPipe, echo_cmd, machine, median, pct, table, verdict  # noqa: E402

from toolpool import Adapter, CommandAdapter, ReplAdapter, ToolProcessPool  # noqa: E402

CLAUDE = os.path.expanduser("~/.cache/toolpool/real-tools/claude/node_modules/.bin/claude")


def ms(x: float) -> float:
    return x * 1e3


# ---------------------------------------------------------------- (a) one-shot
def warm_vs_cold(adapter: Adapter, cold_argv: list[str], cold_env: dict[str, str] | None, n: int, think: float,
                 prompt: str, check: str) -> dict[str, list[float]]:
    """Alternate a warm pooled prompt and a cold fresh process; return seconds per kind."""
    out: dict[str, list[float]] = {"warm": [], "cold": [], "acquire": [], "first_byte": []}
    pool = ToolProcessPool(adapter, count=1)
    try:
        time.sleep(think)  # the first pre-spawned process finishes its start-up
        for i in range(n):
            t0 = time.perf_counter()
            r = pool.submit(f"{prompt} {i}").result(timeout=60)
            out["warm"].append(time.perf_counter() - t0)
            assert check in r.text, r.text[-300:]
            out["acquire"].append(r.timings.acquire)
            if r.timings.first_byte is not None:
                out["first_byte"].append(r.timings.first_byte)
            # The cold run doubles as think time: the pool's replacement process
            # is starting up meanwhile (as it would while a batch thinks).
            t1 = time.perf_counter()
            p = subprocess.run(cold_argv, input=f"{prompt} {i}".encode(), env=cold_env, capture_output=True,
                               timeout=60)
            out["cold"].append(time.perf_counter() - t1)
            assert p.returncode == 0 and check.encode() in p.stdout, (p.returncode, p.stderr[-300:])
            rest = think - (time.perf_counter() - t1)
            if rest > 0:
                time.sleep(rest)
    finally:
        pool.shutdown()
    return out


def back_to_back(adapter: Adapter, n: int, prompt: str) -> list[float]:
    """Prompts with no think time: each waits for the replacement's start-up (shown for honesty)."""
    pool = ToolProcessPool(adapter, count=1)
    got = []
    try:
        pool.submit(f"{prompt} first").result(timeout=60)
        for i in range(n):
            t0 = time.perf_counter()
            pool.submit(f"{prompt} {i}").result(timeout=60)
            got.append(time.perf_counter() - t0)
    finally:
        pool.shutdown()
    return got


def report_oneshot(title: str, res: dict[str, list[float]], b2b: list[float] | None, label: str,
                   target: bool) -> None:
    rows = [
        ["cold: fresh process per prompt", len(res["cold"]), ms(pct(res["cold"], 50)), ms(pct(res["cold"], 99)),
         "1.00x"],
        ["warm: pooled, pre-spawned", len(res["warm"]), ms(pct(res["warm"], 50)), ms(pct(res["warm"], 99)),
         f"{pct(res['warm'], 50) / pct(res['cold'], 50):.3f}x"],
    ]
    if b2b:
        rows.append(["pooled, back-to-back (no think time)", len(b2b), ms(pct(b2b, 50)), ms(pct(b2b, 99)),
                     f"{pct(b2b, 50) / pct(res['cold'], 50):.3f}x"])
    table(title, ["prompt path", "n", "p50 ms", "p99 ms", "p50 vs cold"], rows)
    r = pct(res["warm"], 50) / pct(res["cold"], 50)
    pairs = median(w / c for w, c in zip(res["warm"], res["cold"], strict=True))
    acq50, acq99 = pct(res["acquire"], 50) * 1e6, pct(res["acquire"], 99) * 1e6
    print()
    if target:
        print(f"ratio {label} warm/cold p50: {r:.3f}x (median of pairwise ratios {pairs:.3f}x; "
              f"target < 0.25x: {verdict(r < 0.25)})")
        print(f"{label} warm acquire (Response.timings.acquire): p50 {acq50:.1f} us, p99 {acq99:.1f} us "
              f"(target well under 1 ms: {verdict(acq99 < 1000)})")
    else:
        print(f"ratio {label} warm/cold p50: {r:.3f}x (median of pairwise ratios {pairs:.3f}x)")
        print(f"{label} warm acquire (Response.timings.acquire): p50 {acq50:.1f} us, p99 {acq99:.1f} us")
    if res["first_byte"]:
        print(f"{label} warm first byte after the prompt was written: p50 {ms(pct(res['first_byte'], 50)):.1f} ms")


def bench_oneshot(args: argparse.Namespace) -> None:
    s = args.startup
    argv = echo_cmd("--oneshot", "--startup", str(s))
    res = warm_vs_cold(CommandAdapter(argv, name="oneshot-echo"), argv, None, args.oneshot_n, s + 0.35,
                       "hello", "echo: hello")
    b2b = back_to_back(CommandAdapter(argv, name="oneshot-echo"), args.b2b_n, "hello") if args.b2b_n else None
    report_oneshot(f"(a) one-shot tool with {s:g} s start-up: warm pooled prompt vs fresh process "
                   f"(alternating, think time {s + 0.35:.2f} s)", res, b2b, "one-shot", True)


def bench_claude(args: argparse.Namespace) -> None:
    if not args.claude:
        print("\n(a') real claude -p: skipped in --quick (pass --claude to run it)")
        return
    if not os.access(CLAUDE, os.X_OK):
        print(f"\n(a') real claude -p: skipped: {CLAUDE} is not installed (scripts/install-real-tools.sh)")
        return
    try:
        from toolpool.adapters.claude import ClaudeAdapter
        from toolpool.testing import FakeAnthropicServer
    except ImportError as exc:
        print(f"\n(a') real claude -p: skipped: ClaudeAdapter / FakeAnthropicServer not available ({exc})")
        return
    with FakeAnthropicServer() as server:
        env = {"ANTHROPIC_BASE_URL": server.url, "ANTHROPIC_API_KEY": "sk-fake"}
        try:
            adapter = ClaudeAdapter(CLAUDE, mode="oneshot", env=env, max_retries=0, no_session_persistence=True)
        except TypeError as exc:
            print(f"\n(a') real claude -p: skipped: ClaudeAdapter(mode='oneshot') not supported here ({exc})")
            return
        # The cold baseline runs the very same argv and environment, in a config dir of its own.
        cold_argv, cold_env = adapter.command(0), adapter.environment(1)
        try:
            res = warm_vs_cold(adapter, cold_argv, cold_env, args.claude_n, args.claude_think, "hello", "ECHO: hello")
        finally:
            adapter.close()
    report_oneshot(f"(a') real claude -p (ClaudeAdapter mode='oneshot', FakeAnthropicServer): warm vs fresh "
                   f"process (alternating, think time {args.claude_think:g} s)", res, None, "claude", False)


# --------------------------------------------------------------- (b) start-up
def bench_startup(args: argparse.Namespace) -> None:
    s = args.pool_startup
    adapter = ReplAdapter(echo_cmd("--startup", str(s)), prompt=PROMPT_RE, name="slow-start-echo")
    times: dict[int, list[float]] = {0: [], 1: [], 8: []}  # 0: a raw Popen, no pool
    for r in range(args.start_rounds):
        for n in ((0, 1, 8) if r % 2 == 0 else (8, 1, 0)):
            t0 = time.perf_counter()
            if n == 0:
                raw = RawPipe(echo_cmd("--startup", str(s)))  # returns once the first prompt is read
                times[0].append(time.perf_counter() - t0)
                raw.close()
                continue
            pool = ToolProcessPool(adapter, count=n)
            times[n].append(time.perf_counter() - t0)
            assert pool.check_health()["idle"] == n
            pool.shutdown()
    zero, one, eight = median(times[0]), median(times[1]), median(times[8])
    table(f"(b) pool start-up, tool start-up {s:g} s, {args.start_rounds} alternating rounds (constructor "
          "returns when all are ready)",
          ["pool size", "n", "median s", "min s", "max s", "vs 1 instance"],
          [["raw Popen + read to first prompt", len(times[0]), zero, min(times[0]), max(times[0]),
            f"{zero / one:.2f}x"],
           ["1 instance", len(times[1]), one, min(times[1]), max(times[1]), "1.00x"],
           ["8 instances", len(times[8]), eight, min(times[8]), max(times[8]), f"{eight / one:.2f}x"],
           ["(8 started one after another)", "-", 8 * one, "-", "-", "8.00x"]])
    print()
    print(f"ratio start 8/1: {eight / one:.2f}x (target <= 1.5x: {verdict(eight / one <= 1.5)})")
    print(f"ratio start 1-instance pool/raw Popen: {one / zero:.2f}x ({(one - zero) * 1e3:.0f} ms more)")


def main(argv: Sequence[str] = ()) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a few seconds; shorter start-ups, fewer rounds")
    ap.add_argument("--claude", action="store_true", default=None, help="run the real-claude part (default: "
                    "yes unless --quick)")
    ap.add_argument("--only", choices=["oneshot", "claude", "startup"], action="append")
    args = ap.parse_args(list(argv) or None)
    q = args.quick
    args.startup = 0.3 if q else 0.8
    args.oneshot_n = 3 if q else 15
    args.b2b_n = 0 if q else 3
    args.claude = (not q) if args.claude is None else args.claude
    args.claude_n = 8
    args.claude_think = 1.5
    args.pool_startup = 0.5
    args.start_rounds = 2 if q else 8
    only = set(args.only or ["oneshot", "claude", "startup"])
    print(f"toolpool pre-warm / start-up benchmark{' (--quick)' if q else ''}")
    print(f"machine: {machine()}; load average {os.getloadavg()[0]:.2f}")
    if "oneshot" in only:
        bench_oneshot(args)
    if "claude" in only:
        bench_claude(args)
    if "startup" in only:
        bench_startup(args)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
