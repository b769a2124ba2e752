"""Regression tests of issue 9: every request gets its own answer, on real processes.

One test (or a few) per case of the issue's "What goes wrong today", each
asserting the exact figure (0 wrong answers, 0 failures):

1. stale restart timers: crash, ``restart_instance``, ``ask``, many times over;
2. a turn cut short while a slow tool still reads a 4 MiB prompt;
3. turns a (fake) claude starts by itself, idle and just as a prompt is sent;
4. over-long claude lines end the request, never the instance;
5. ghost owners left by Ctrl-C (leases, ask, restart_instance, shutdown);
6. seconds values that used to stop every timer;
7. closing a one-shot pool.

The real claude and aider versions are in tests/integration/test_core_regressions_real.py.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import math
import os
import signal
import statistics
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from toolkit import HERE, fake_adapter, marked_processes, wait_until
from toolpool import (
    CommandAdapter,
    InstanceCrashed,
    InstanceUnavailable,
    ProtocolError,
    ReplAdapter,
    ResponseTimeout,
    RestartPolicy,
    SpawnError,
    ToolProcessPool,
)
from toolpool.adapters import ClaudeAdapter

TINY_REPL = os.path.join(HERE, "faults", "tools", "tinyrepl.sh")
SLOW_READER = os.path.join(HERE, "tools", "slowreader.py")
FAKE_CLAUDE = os.path.join(HERE, "tools", "fakeclaude.py")
MIB = 1024 * 1024

#: Automatic restarts within a few ms: they fire while the caller's own restart runs.
RACING_RESTARTS = RestartPolicy(initial=0.0, maximum=0.005, jitter=0.005, limit=1_000_000, window=60.0,
                                stable_after=0.5)

pytestmark = pytest.mark.timeout(120)


def state(pool: ToolProcessPool, index: int = 0) -> str:
    return str(pool.get_status()["instances"][index]["state"])


def wait_state(pool: ToolProcessPool, wanted: str, timeout: float = 15.0, index: int = 0) -> None:
    assert wait_until(lambda: state(pool, index) == wanted, timeout), \
        f"instance {index} is {state(pool, index)}, not {wanted}, after {timeout}s: {pool.get_status()['instances']}"


def interrupt_main_in(seconds: float) -> threading.Timer:
    """Ctrl-C for the main thread ``seconds`` from now, while it blocks in a pool call.

    ``_thread.interrupt_main()`` only sets Python's flag; a real SIGINT sent to the
    main thread also wakes it from a blocking wait, as a keyboard's Ctrl-C does.
    """
    main = threading.main_thread().ident
    assert main is not None and threading.current_thread() is threading.main_thread()
    timer = threading.Timer(seconds, signal.pthread_kill, (main, signal.SIGINT))
    timer.start()
    return timer


# ------------------------------------------------------------------ 1. stale restart timers

class SpawnWatch:
    """An event listener: counts ``spawned`` per generation, and checks the slot ran one process at a time."""

    def __init__(self) -> None:
        self.spawned: collections.Counter = collections.Counter()
        self.overlaps: list[tuple[int, int]] = []  # (older pid still alive, generation just spawned)
        self._last: dict[int, tuple[int, bytes | None]] = {}  # slot -> (pid, its start time)

    def __call__(self, event: str, info: dict[str, Any]) -> None:
        if event != "spawned":
            return
        self.spawned[(info["index"], info["generation"])] += 1
        previous = self._last.get(info["index"])
        if previous is not None and previous[1] is not None and _start_time(previous[0]) == previous[1]:
            self.overlaps.append((previous[0], info["generation"]))
        self._last[info["index"]] = (info["pid"], _start_time(info["pid"]))

    def twice(self) -> list[tuple[int, int]]:
        return [key for key, n in self.spawned.items() if n != 1]


def _start_time(pid: int) -> bytes | None:
    """A live (non-zombie) process's start time, which tells it apart from a later one with its pid."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] in (b"Z", b"X") else fields[19]


def crash_restart_cycles(make_pool, cycles: int) -> None:
    watch = SpawnWatch()
    pool = make_pool(ReplAdapter(["/bin/sh", TINY_REPL], prompt=r"tp> $", start_timeout=10.0), 1,
                     restart=RACING_RESTARTS, on_event=watch)
    for n in range(cycles):
        pool.send_prompt(0, "crash 3")
        with pytest.raises(InstanceCrashed) as crashed:
            pool.read_response(0, timeout=10)
        assert crashed.value.exit_code == 3, f"cycle {n}: {crashed.value!r}"
        try:
            pool.restart_instance(0, timeout=10)
            answer = pool.ask(0, f"hello {n}", timeout=10).text
        except Exception as exc:  # the SpawnError / InstanceUnavailable
            status = pool.get_status()["instances"]
            raise AssertionError(f"cycle {n} of {cycles} failed: {exc!r}; status {status}") from exc
        assert answer == f"you said: hello {n}", f"cycle {n}: a wrong answer {answer!r}"
    generations = pool.get_status()["instances"][0]["generation"]
    assert watch.twice() == [], f"generations spawned more than once: {watch.twice()}"
    assert watch.overlaps == [], f"a new process started while an older one still ran: {watch.overlaps}"
    assert sum(watch.spawned.values()) == generations  # every generation was seen spawning, once
    assert generations >= cycles + 1


def test_crash_then_restart_instance_100_cycles(make_pool):
    crash_restart_cycles(make_pool, 100)


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_crash_then_restart_instance_1000_cycles(make_pool):
    crash_restart_cycles(make_pool, 1000)


# ------------------------------------------------------------------ 2. interrupted input is never reused

BIG = "A" * (4 * MIB)


def slow_reader(make_pool, **options):
    adapter = ReplAdapter([sys.executable, "-u", SLOW_READER], prompt=r"tp> $", start_timeout=20.0)
    return make_pool(adapter, 1, **options)


def next_three_are_their_own(pool: ToolProcessPool, tag: str) -> None:
    prompts = [f"{tag}-next-{n}" for n in range(3)]
    answers = [pool.submit(p, timeout=30).result(40).text for p in prompts]
    assert answers == [f"GOT {len(p)} {p[:16]}" for p in prompts]


def test_submit_expiry_while_the_tool_reads_a_4_mib_prompt(make_pool):
    pool = slow_reader(make_pool)
    with pytest.raises(ResponseTimeout) as expired:
        pool.submit(BIG, timeout=0.2).result(30)
    assert expired.value.phase == "response"
    next_three_are_their_own(pool, "expiry")


def test_lease_released_while_the_tool_reads_a_4_mib_prompt(make_pool):
    pool = slow_reader(make_pool)
    with pool.lease(timeout=10) as lease:
        unanswered = lease.send(BIG)
        time.sleep(0.2)
    with pytest.raises(InstanceUnavailable):  # its process was replaced, not reused
        unanswered.result(30)
    next_three_are_their_own(pool, "lease")


def test_interrupt_while_the_tool_reads_a_4_mib_prompt(make_pool):
    pool = slow_reader(make_pool)
    pool.send_prompt(0, BIG)
    time.sleep(0.2)
    assert pool.interrupt(0) is True
    with pytest.raises(InstanceUnavailable):
        pool.read_response(0, timeout=30)
    next_three_are_their_own(pool, "interrupt")


# ------------------------------------------------------------------ 3. turns the tool starts by itself

@pytest.fixture
def fake_claude(tmp_path):
    """A ``claude`` executable for ClaudeAdapter(cli_path=...): tests/tools/fakeclaude.py."""
    path = tmp_path / "claude"
    path.write_text(f'#!/bin/sh\nexec "{sys.executable}" -u "{FAKE_CLAUDE}" "$@"\n')
    path.chmod(0o755)

    def make(**options) -> ClaudeAdapter:
        options.setdefault("start_timeout", 20.0)
        return ClaudeAdapter(cli_path=str(path), cwd=str(tmp_path), **options)

    return make


class Unsolicited:
    """Collects the pool's ``unsolicited`` events."""

    def __init__(self) -> None:
        self.responses: list[Any] = []
        self.arrived = threading.Event()

    def __call__(self, event: str, info: dict[str, Any]) -> None:
        if event == "unsolicited":
            self.responses.append(info["response"])
            self.arrived.set()

    def wait(self, timeout: float = 10.0) -> Any:
        assert self.arrived.wait(timeout), "no 'unsolicited' event reached the subscribers"
        (response,) = self.responses
        return response


def three_answers_are_their_own(ask: Callable[[str], str], tag: str) -> None:
    prompts = [f"{tag} question {n}" for n in range(3)]
    assert [ask(p) for p in prompts] == [f"fake: {p}" for p in prompts]


def test_a_turn_claude_starts_while_idle_goes_to_subscribers(make_pool, fake_claude):
    heard = Unsolicited()
    pool = make_pool(fake_claude(), 1, on_event=heard)
    assert pool.ask(0, "bg 0.2", timeout=10).text == "started"
    response = heard.wait()
    assert response.unsolicited is True and response.text == "self turn 1" and response.index == 0
    three_answers_are_their_own(lambda p: pool.ask(0, p, timeout=10).text, "idle")
    assert len(heard.responses) == 1


def test_a_turn_claude_starts_just_as_a_prompt_is_sent(make_pool, fake_claude):
    heard = Unsolicited()
    pool = make_pool(fake_claude(), 1, on_event=heard)
    assert pool.ask(0, "race", timeout=10).text == "fake: race"
    response = heard.wait()
    assert response.unsolicited is True and response.text == "self turn 1"
    three_answers_are_their_own(lambda p: pool.ask(0, p, timeout=10).text, "race")


def test_prompts_submitted_during_a_turn_claude_runs_by_itself_wait_for_it(make_pool, fake_claude):
    heard = Unsolicited()
    pool = make_pool(fake_claude(), 1, on_event=heard)
    assert pool.ask(0, "bg 0.05 0.5", timeout=10).text == "started"
    wait_state(pool, "BUSY", 5.0)  # the tool's own turn: init seen, its answer not yet
    futures = [pool.submit(f"during question {n}", timeout=20) for n in range(3)]
    assert [f.result(30).text for f in futures] == [f"fake: during question {n}" for n in range(3)]
    assert heard.wait().text == "self turn 1"


# ------------------------------------------------------------------ 4. an over-long line never wedges

def test_over_long_assistant_and_result_lines_fail_only_their_request(make_pool, fake_claude):
    pool = make_pool(fake_claude(max_line_bytes=4096), 1)
    with pytest.raises(ProtocolError, match=r"max_line_bytes=4096"):
        pool.ask(0, "long 20000", timeout=10)
    wait_state(pool, "IDLE", 5.0)
    three_answers_are_their_own(lambda p: pool.ask(0, p, timeout=10).text, "after long")


def test_the_next_request_sent_before_the_over_long_result_line_is_its_own(make_pool, fake_claude):
    """claude prints ``result`` a moment after ``assistant``: the next prompt may already be waiting."""
    pool = make_pool(fake_claude(max_line_bytes=4096), 1)
    with pytest.raises(ProtocolError, match=r"max_line_bytes=4096"):
        pool.ask(0, "long 20000 0.3", timeout=10)
    assert state(pool) == "IDLE"  # ended at once, so the next prompt goes out now
    three_answers_are_their_own(lambda p: pool.ask(0, p, timeout=10).text, "right after long")


def test_over_long_lines_through_submit(make_pool, fake_claude):
    pool = make_pool(fake_claude(max_line_bytes=4096), 1)
    failed = pool.submit("long 20000 0.2", timeout=10)
    after = [pool.submit(f"queued question {n}", timeout=10) for n in range(3)]
    with pytest.raises(ProtocolError, match=r"max_line_bytes=4096"):
        failed.result(15)
    assert [f.result(15).text for f in after] == [f"fake: queued question {n}" for n in range(3)]


# ------------------------------------------------------------------ 5. ghost owners

def test_ctrl_c_while_waiting_for_a_lease_leaves_no_ghost_owner(make_pool):
    pool = make_pool(fake_adapter(), 1)
    pool.send_prompt(0, "sleep 1")  # the only instance is held: lease() has to wait
    timer = interrupt_main_in(0.2)
    with pytest.raises(KeyboardInterrupt):
        with pool.lease():
            pytest.fail("the lease should still be waiting")
    timer.join()
    assert pool.read_response(0, timeout=10).text == "slept"
    assert pool.submit("after the lease", timeout=5).result(10).text == "you said: after the lease"
    assert pool.get_status()["instances"][0]["owner"] is None and pool.check_health()["waiting"] == 0


def test_ctrl_c_inside_a_lease_block_frees_the_instance(make_pool):
    pool = make_pool(fake_adapter(), 1)
    timer = interrupt_main_in(0.2)
    with pytest.raises(KeyboardInterrupt):
        with pool.lease(timeout=5) as lease:
            lease.ask("sleep 3", timeout=10)
    timer.join()
    assert pool.submit("after the lease", timeout=5).result(10).text == "you said: after the lease"


def test_ctrl_c_during_ask_leaves_no_ghost_owner(make_pool):
    pool = make_pool(fake_adapter(), 1)
    timer = interrupt_main_in(0.2)
    with pytest.raises(KeyboardInterrupt):
        pool.ask(0, "sleep 3")
    timer.join()
    assert pool.submit("after ask", timeout=5).result(10).text == "you said: after ask"
    assert pool.ask(0, "by index", timeout=5).text == "you said: by index"


def test_lease_with_a_huge_timeout_is_served_and_released(make_pool):
    pool = make_pool(fake_adapter(), 1)
    with pool.lease(timeout=1e9) as lease:
        assert lease.ask("in the lease", timeout=5).text == "you said: in the lease"
    assert pool.submit("after the lease", timeout=5).result(10).text == "you said: after the lease"


def test_restart_instance_that_times_out_goes_back_to_supervision(make_pool):
    pool = make_pool(fake_adapter("--startup", "1.0"), 1)
    with pytest.raises(SpawnError, match="within 0.3s"):
        pool.restart_instance(0, timeout=0.3)
    wait_state(pool, "IDLE", 15.0)
    assert pool.ask(0, "restarted by supervision", timeout=5).text == "you said: restarted by supervision"


def test_restart_instance_interrupted_goes_back_to_supervision(make_pool):
    pool = make_pool(fake_adapter("--startup", "1.0"), 1)
    timer = interrupt_main_in(0.3)
    with pytest.raises(KeyboardInterrupt):
        pool.restart_instance(0, timeout=10)
    timer.join()
    wait_state(pool, "IDLE", 15.0)
    assert pool.ask(0, "restarted by supervision", timeout=5).text == "you said: restarted by supervision"


def hung_pool(make_pool, count: int = 2) -> ToolProcessPool:
    """Tools that ignore stdin EOF (busy in ``hang``) and SIGTERM: only SIGKILL stops them."""
    pool = make_pool(fake_adapter("--ignore-term"), count)
    for i in range(count):
        pool.send_prompt(i, "hang")
    assert len(marked_processes()) == count
    return pool


def test_ctrl_c_during_shutdown_still_kills_every_tool(make_pool):
    pool = hung_pool(make_pool)
    timer = interrupt_main_in(0.3)
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        pool.shutdown(timeout=1.5)
    timer.join()
    left = marked_processes()
    assert left == [], f"tool processes alive after shutdown raised KeyboardInterrupt: {left}"
    assert time.monotonic() - t0 >= 1.0  # it did wait out SIGTERM, then killed


def test_concurrent_shutdowns_both_return_only_when_every_tool_is_gone(make_pool):
    pool = hung_pool(make_pool)
    seen: dict[str, list[int]] = {}

    def close(name: str) -> None:
        pool.shutdown(timeout=1.0)
        seen[name] = marked_processes()

    threads = [threading.Thread(target=close, args=(name,)) for name in ("first", "second")]
    for t in threads:
        t.start()
        time.sleep(0.1)  # the second arrives while the first is killing
    for t in threads:
        t.join(20)
    assert seen == {"first": [], "second": []}


# ------------------------------------------------------------------ 6. one timeout value stops every timer

BAD_SECONDS = [math.inf, -math.inf, math.nan, -1, "5"]
POOL_SECONDS = ["start_timeout", "max_idle", "max_lifetime", "stuck_timeout", "health_check_interval",
                "interrupt_grace"]
POLICY_SECONDS = ["window", "stable_after", "initial", "maximum", "jitter"]


def refusal(call: Callable[[Any], Any], name: str, value: Any) -> str | None:
    """None if ``call(value)`` raised ValueError/TypeError naming ``name``; else what happened."""
    try:
        outcome = call(value)
        if isinstance(outcome, cf.Future):
            outcome.cancel()
    except (ValueError, TypeError) as exc:
        if name in str(exc):
            return None
        return f"{name}={value!r}: {type(exc).__name__} without the name: {exc}"
    except Exception as exc:
        return f"{name}={value!r}: {type(exc).__name__}: {exc}"
    return f"{name}={value!r}: accepted"


def test_every_public_seconds_parameter_refuses_bad_values(make_pool):
    pool = make_pool(fake_adapter(), 1)

    def in_lease(value: Any) -> None:
        with pool.lease(timeout=value):
            pass

    def read(value: Any) -> Any:
        pool.send_prompt(0, "hello")
        try:
            return pool.read_response(0, timeout=value)
        finally:
            pool.read_response(0, timeout=10)  # take the answer back: the instance stays free

    calls: list[tuple[str, Callable[[Any], Any]]] = [
        ("timeout", lambda v: pool.submit("x", timeout=v)),
        ("timeout", lambda v: pool.map(["x"], timeout=v)),
        ("timeout", in_lease),
        ("timeout", lambda v: pool.ask(0, "x", timeout=v)),
        ("timeout", read),
        ("timeout", lambda v: pool.restart_instance(0, timeout=v)),
        ("timeout", lambda v: pool.shutdown(timeout=v)),
    ]
    calls += [(name, lambda v, name=name: ToolProcessPool(fake_adapter(), 1, **{name: v})) for name in POOL_SECONDS]
    calls += [(name, lambda v, name=name: RestartPolicy(**{name: v})) for name in POLICY_SECONDS]
    failures = [f for name, call in calls for value in BAD_SECONDS
                if (f := refusal(call, name, value)) is not None]
    assert failures == [], "\n".join(failures)
    assert not pool.closed and pool.ask(0, "still fine", timeout=5).text == "you said: still fine"


def outcome(check: Callable[[], Any], name: str, expected: Any) -> str | None:
    """None if ``check()`` returned ``expected`` (or refused the value naming ``name``); else what happened."""
    try:
        got = check()
    except (ValueError, TypeError) as exc:
        return None if name in str(exc) else f"{name}: {type(exc).__name__} without the name: {exc}"
    except Exception as exc:
        return f"{name}: {type(exc).__name__}: {exc}"
    return None if got == expected else f"{name}: got {got!r}"


@pytest.mark.parametrize("huge", [1e9, 1e10])
def test_huge_finite_seconds_leave_every_other_timer_working(make_pool, huge):
    """Finite, so accepted (or refused naming the parameter), and nothing overflows: every call still
    answers, and a 0.3 s deadline still fires after the huge ones were armed."""
    policy = RestartPolicy(window=huge, stable_after=huge, maximum=huge)
    pool = make_pool(fake_adapter(), 1, max_lifetime=huge, stuck_timeout=huge, health_check_interval=huge,
                     interrupt_grace=huge, restart=policy)

    def read() -> str:
        pool.send_prompt(0, "huge read")
        return pool.read_response(0, timeout=huge).text

    def in_lease() -> str:
        with pool.lease(timeout=huge) as lease:
            return lease.ask("huge lease", timeout=huge).text

    def own_pool(name: str) -> str:
        with ToolProcessPool(fake_adapter(), 1, **{name: huge}) as other:
            return other.ask(0, name, timeout=10).text

    checks: list[tuple[str, Callable[[], Any], Any]] = [
        ("submit(timeout)", lambda: pool.submit("huge submit", timeout=huge).result(10).text,
         "you said: huge submit"),
        ("map(timeout)", lambda: [r.text for r in pool.map(["in map"], timeout=huge)], ["you said: in map"]),
        ("ask(timeout)", lambda: pool.ask(0, "huge ask", timeout=huge).text, "you said: huge ask"),
        ("read_response(timeout)", read, "you said: huge read"),
        ("lease(timeout)", in_lease, "you said: huge lease"),
        ("restart_instance(timeout)", lambda: pool.restart_instance(0, timeout=huge), None),
        ("start_timeout", lambda: own_pool("start_timeout"), "you said: start_timeout"),
        ("max_idle", lambda: own_pool("max_idle"), "you said: max_idle"),
    ]
    failures = [f for name, check, expected in checks if (f := outcome(check, name, expected)) is not None]
    wait_state(pool, "IDLE", 10.0)  # whatever happened above, the timers must still work
    busy = pool.submit("sleep 1", timeout=huge)
    t0 = time.monotonic()
    with pytest.raises(ResponseTimeout) as expired:
        pool.submit("short deadline", timeout=0.3).result(10)
    assert expired.value.phase == "queue" and time.monotonic() - t0 < 0.9
    assert busy.result(10).text == "slept"
    assert failures == [], "\n".join(failures)
    t0 = time.monotonic()
    pool.shutdown(timeout=huge)
    assert time.monotonic() - t0 < 5.0 and not marked_processes()


# ------------------------------------------------------------------ 7. closing a one-shot pool

def test_closing_a_one_shot_pool_takes_milliseconds():
    took = []
    for _ in range(10):
        pool = ToolProcessPool(CommandAdapter(["tr", "a-z", "A-Z"]), count=2)
        try:
            assert [r.text for r in pool.map(["abc", "def"], timeout=10)] == ["ABC", "DEF"]
        finally:
            t0 = time.perf_counter()
            pool.shutdown()
            took.append(time.perf_counter() - t0)
    print(f"one-shot shutdown: median {statistics.median(took) * 1000:.1f} ms, max {max(took) * 1000:.1f} ms")
    assert max(took) < 2.0, f"shutdown took {[round(t, 3) for t in took]} s"
