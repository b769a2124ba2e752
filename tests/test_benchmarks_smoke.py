"""The benchmark programs run (``--quick``), exit 0 and print their ratio lines.

These check that the benchmarks work, never how fast anything is: speed is
judged by reading their output on a quiet machine (see docs/performance.md).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "benchmarks")

pytestmark = pytest.mark.slow  # the hygiene fixture still checks that no tool process is left behind

RATIO = r"\d+\.\d+x"


def run(script: str) -> str:
    proc = subprocess.run([sys.executable, os.path.join(BENCH, script), "--quick"], cwd=ROOT,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, f"{script} --quick exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def assert_lines(out: str, *patterns: str) -> None:
    for pattern in patterns:
        assert re.search(pattern, out, re.MULTILINE), f"no line matching {pattern!r} in:\n{out}"


@pytest.mark.timeout(300)
def test_roundtrip_quick() -> None:
    out = run("roundtrip.py")
    assert_lines(
        out,
        rf"^ratio pool\.ask/threaded p50: {RATIO} .*target <= 1\.5x: (MET|MISSED)",
        rf"^ratio pool\.ask/raw p50: {RATIO}",
        r"^hand-over: pool\.ask returned [\d.]+ us \(p50\)",
        rf"^ratio throughput pool\.submit/executor: {RATIO} .*target >= 0\.6x: (MET|MISSED)",
        r"^overhead per request of pool\.submit: -?[\d.]+ us wall",
        rf"^ratio pool\.ask\(pty\)/pexpect p50: {RATIO}|^pty: skipped",
        r"^idle CPU of a \d+-instance pool: [\d.]+% of one core",
    )


@pytest.mark.timeout(300)
def test_prewarm_quick() -> None:
    out = run("prewarm.py")
    assert_lines(
        out,
        rf"^ratio one-shot warm/cold p50: {RATIO} .*target < 0\.25x: (MET|MISSED)",
        r"^one-shot warm acquire \(Response\.timings\.acquire\): p50 [\d.]+ us",
        r"^\(a'\) real claude -p: skipped",  # --quick never drives the real claude
        rf"^ratio start 8/1: {RATIO} \(target <= 1\.5x: (MET|MISSED)\)",
    )


@pytest.mark.timeout(300)
def test_profile_and_experiment_quick() -> None:
    out = run("profile_hotpaths.py")
    assert_lines(
        out,
        r"^1\. stages of pool\.ask .*unwrapped p50 [\d.]+ us",
        r"^pool\.ask\(\) called -> Instance\._send +[\d.]+",
        r"^Instance\._resolve -> resolve done +[\d.]+",
        r"^1\. stages of pool\.submit .*",
        r"^Dispatcher\._finished -> Dispatcher\._complete +[\d.]+",
        r"^concurrent\.futures\.Future: create, running, set_result, result +[\d.]+",
    )
    if sys.version_info >= (3, 12):  # one cProfile per process there: the per-thread section says so
        assert_lines(out, r"^\(profile per thread skipped: Python >= 3\.12")
    else:
        assert_lines(
            out,
            r"^2\. cProfile \(cpu time, all threads\), pool\.ask: 500 requests, \d+ function calls per request",
            r"^toolpool/instance\.py:\d+\(_on_data\) ",
            r"^2\. cProfile \(cpu time, all threads\), pool\.submit: 500 requests",
            r"^toolpool/dispatch\.py:\d+\(_finished\) ",
        )
    out = run("experiment_dispatch.py")
    assert_lines(out, rf"^ratio throughput with the proposals / as is: {RATIO}")
