"""Faults 1, 3 and 9: processes that die (killed, crash-looping, leaving a grandchild).

Figures are asserted with wide margins (shared 2-core CI machines): they only
catch a death that is noticed late, or a crash loop that never ends.
"""

import os
import signal
import time

import pytest

from conftest import fake_adapter
from faultkit import QUICK_RESTARTS, gate_cmd, pid_of, processes_running, slow_cmd, state_of, wait_for
from toolpool import InstanceCrashed, InstanceUnavailable, ReplAdapter, RestartPolicy

#: Start attempts end quickly: FATAL after the crash and 3 failed restarts.
CRASH_LOOP = RestartPolicy(initial=0.01, maximum=0.05, jitter=0.01, limit=3, window=30, stable_after=5)


def _wait_restarted(pool, index: int, old_pid: int, timeout: float = 20.0) -> float:
    def ready() -> bool:
        entry = pool.get_status()["instances"][index]
        return entry["state"] == "IDLE" and entry["pid"] not in (None, old_pid)

    return wait_for(ready, timeout, f"instance {index} restarted after pid {old_pid} died")


@pytest.mark.timeout(90)
@pytest.mark.parametrize("transport", ["pipe", "pty"])
def test_1_sigkill_mid_response_reported_within_1s_then_restarted(make_pool, transport, record_property):
    """Case 1: SIGKILL while answering -> InstanceCrashed(-9) in < 1 s (asserted < 2 s); restart serves."""
    pool = make_pool(fake_adapter(transport=transport), 2, restart=QUICK_RESTARTS)
    latencies = []
    for round_ in range(5):
        before = [i["bytes_out"] for i in pool.get_status()["instances"]]
        fut = pool.submit("partial")  # prints "half a line", then works forever
        index = next(i["index"] for i in pool.get_status()["instances"] if i["state"] == "BUSY")
        wait_for(lambda index=index, before=before:
                 pool.get_status()["instances"][index]["bytes_out"] >= before[index] + len("half a line"),
                 10, "the partial answer arrived")
        pid = pid_of(pool, index)
        t0 = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(InstanceCrashed) as info:
            fut.result(30)
        latencies.append(time.monotonic() - t0)
        err = info.value
        assert (err.exit_code, err.index, err.partial) == (-9, index, b"half a line")
        _wait_restarted(pool, index, pid)
        prompt = f"after kill {round_}"
        assert pool.ask(index, prompt, timeout=10).text == f"you said: {prompt}"
    record_property("max_latency_s", round(max(latencies), 4))
    assert max(latencies) < 2.0, f"SIGKILL noticed after {max(latencies):.3f}s (want < 1 s)"
    assert pool.stats()["crashes"] == 5
    assert sum(i["restarts"] for i in pool.get_status()["instances"]) == 5


@pytest.mark.timeout(60)
def test_1_next_prompt_after_the_tool_died_gets_instance_crashed(make_pool):
    """A tool that answers, then dies: the prompt queued behind that answer fails with InstanceCrashed.

    Was a bug: a generic "closed its input" ToolPoolError (so retry_on_crash skipped it), because the
    write error waited for an exit that only the current thread (the tool's reader) could report.
    """
    pool = make_pool(ReplAdapter(slow_cmd(0), prompt=r"tp> $", start_timeout=20), 1, restart=QUICK_RESTARTS)
    for n in range(5):
        last = pool.submit("last-words 3")  # closes its stdin, answers, exits 3
        queued = pool.submit(f"too late {n}")  # sent (from the reader thread) right after that answer
        assert last.result(10).text == "last words"
        with pytest.raises(InstanceCrashed) as info:
            queued.result(10)
        assert info.value.exit_code == 3
        wait_for(lambda: pool.check_health()["idle"] == 1, 20, "restarted")


@pytest.mark.timeout(60)
def test_1_tool_dying_after_an_answer_does_not_fail_the_queue(make_pool):
    """A tool that answers, then dies, with 10 prompts queued: the restarted process serves (at most 1 lost).

    Was a bug: the dead instance looked IDLE and its reader thread fed it the whole queue, recursively
    (every request failed, 0.2 s each, RecursionError past ~270 queued).
    """
    pool = make_pool(ReplAdapter(slow_cmd(0), prompt=r"tp> $", start_timeout=20), 1, restart=QUICK_RESTARTS)
    t0 = time.monotonic()
    last = pool.submit("last-words 3")
    queued = [pool.submit(f"queued {n}") for n in range(10)]
    assert last.result(10).text == "last words"
    outcomes = []
    for fut in queued:
        try:
            outcomes.append(fut.result(30).text)
        except InstanceCrashed:  # the one written into the dead pipe may be lost
            outcomes.append("crashed")
    served = [t for t in outcomes if t != "crashed"]
    assert len(served) >= 9 and all(t.startswith("you said: queued ") for t in served), outcomes
    assert time.monotonic() - t0 < 10


@pytest.mark.timeout(90)
def test_3_crash_loop_at_start_goes_fatal_within_bounded_time(make_pool, tmp_path, record_property):
    """Case 3: a tool that crashes at every start is FATAL in < 1 s (asserted < 5 s); pool degraded."""
    gate = tmp_path / "gate"
    events = []
    pool = make_pool(ReplAdapter(gate_cmd(str(gate)), prompt=r"tp> $", start_timeout=20), 3, restart=CRASH_LOOP,
                     on_event=lambda e, info: events.append((e, info.get("index"))))
    assert pool.check_health()["healthy"]
    gate.touch()  # from now on every start fails: exit code 4, a line on stderr
    t0 = time.monotonic()
    with pytest.raises(InstanceCrashed):
        pool.ask(1, "crash 2", timeout=10)
    wait_for(lambda: state_of(pool, 1) == "FATAL", 20, "instance 1 FATAL after its crash loop")
    to_fatal = time.monotonic() - t0
    record_property("to_fatal_s", round(to_fatal, 3))
    assert to_fatal < 5.0, f"FATAL after {to_fatal:.2f}s"

    health = pool.check_health()
    assert (health["degraded"], health["healthy"], health["alive"], health["fatal"]) == (True, False, 2, 1)
    entry = pool.get_status()["instances"][1]
    assert entry["last_exit_code"] == 4 and entry["pid"] is None
    assert "gate closed" in entry["stderr_tail"]
    assert entry["restarts"] == CRASH_LOOP.limit  # 1 crash + 3 failed starts = limit + 1 failures
    assert events.count(("restarting", 1)) == CRASH_LOOP.limit and events.count(("fatal", 1)) == 1
    # FATAL is excluded from dispatch: the two healthy instances answer everything
    answers = [f.result(10) for f in [pool.submit(f"q{n}") for n in range(8)]]
    assert {r.index for r in answers} <= {0, 2}
    assert [r.text for r in answers] == [f"you said: q{n}" for n in range(8)]
    # once the cause is fixed, an explicit restart brings it back
    gate.unlink()
    pool.restart_instance(1)
    assert pool.check_health()["healthy"]
    assert pool.ask(1, "back", timeout=10).text == "you said: back"


@pytest.mark.timeout(90)
def test_3_queued_request_fails_when_last_instance_goes_fatal(make_pool, tmp_path):
    """Case 3: a request queued behind a crash loop fails (InstanceUnavailable) as the pool turns FATAL."""
    gate = tmp_path / "gate"
    pool = make_pool(ReplAdapter(gate_cmd(str(gate)), prompt=r"tp> $", start_timeout=20), 1, restart=CRASH_LOOP)
    gate.touch()
    t0 = time.monotonic()
    crashing = pool.submit("crash 2")
    queued = pool.submit("never served")
    with pytest.raises(InstanceCrashed):
        crashing.result(10)
    with pytest.raises(InstanceUnavailable, match="FATAL"):
        queued.result(20)
    assert time.monotonic() - t0 < 5.0
    health = pool.check_health()
    assert (health["alive"], health["fatal"], health["healthy"], health["degraded"]) == (0, 1, False, False)


@pytest.mark.timeout(60)
def test_3_submit_to_an_all_fatal_pool_fails_at_once(make_pool, tmp_path):
    """Case 3: once every instance is FATAL, a new submit() fails at once (was: queued forever)."""
    gate = tmp_path / "gate"
    pool = make_pool(ReplAdapter(gate_cmd(str(gate)), prompt=r"tp> $", start_timeout=20), 1, restart=CRASH_LOOP)
    gate.touch()
    with pytest.raises(InstanceCrashed):
        pool.submit("crash 2").result(10)
    wait_for(lambda: state_of(pool, 0) == "FATAL", 20, "instance 0 FATAL")
    fut = pool.submit("anyone?")  # nobody can ever serve this
    with pytest.raises(InstanceUnavailable, match="FATAL"):
        fut.result(2.0)


@pytest.mark.timeout(60)
def test_3_submit_to_a_dead_pool_without_restarts_fails_at_once(make_pool):
    """Case 3 with restart=False: the crashed instance stays EXITED, so a new submit() fails at once."""
    pool = make_pool(fake_adapter(), 1, restart=False)
    with pytest.raises(InstanceCrashed):
        pool.submit("crash 2").result(10)
    wait_for(lambda: state_of(pool, 0) == "EXITED", 10, "instance 0 EXITED")
    with pytest.raises(InstanceUnavailable, match="EXITED"):
        pool.submit("anyone?").result(2.0)
    pool.restart_instance(0)  # an explicit restart serves again
    assert pool.submit("back").result(10).text == "you said: back"


@pytest.mark.timeout(60)
def test_3_restart_instance_during_backoff_starts_once(make_pool):
    """restart_instance() while an automatic restart is pending: one process, the next prompts answered.

    Was a bug: the pending restart started the instance a second time; the next prompt failed "was
    stopped while starting", the instance was left BUSY with nothing pending, and its process was killed.
    """
    events = []
    # The automatic restart is due 0.2 s after the crash; a start takes > 0.5 s.
    policy = RestartPolicy(initial=0.2, maximum=0.2, jitter=0.0, limit=100, window=60, stable_after=30)
    pool = make_pool(fake_adapter("--startup", "0.5"), 1, restart=policy,
                     on_event=lambda e, info: events.append(e))
    for n in range(3):
        with pytest.raises(InstanceCrashed):
            pool.ask(0, "crash 1", timeout=10)
        wait_for(lambda: state_of(pool, 0) == "BACKOFF", 5, "automatic restart pending")
        events.clear()
        pool.restart_instance(0)  # the user restarts it by hand meanwhile
        for k in range(3):
            prompt = f"after restart {n}.{k}"
            assert pool.ask(0, prompt, timeout=10).text == f"you said: {prompt}"
        assert events.count("spawned") == 1 and "start_failed" not in events


@pytest.mark.timeout(60)
@pytest.mark.parametrize("transport", ["pipe", "pty"])
def test_9_grandchild_holding_the_pipe_crash_seen_within_1s_and_grandchild_killed(make_pool, transport,
                                                                                   record_property):
    """Case 9: the tool dies, its grandchild keeps stdout open: InstanceCrashed < 1 s (asserted < 2 s)."""
    pool = make_pool(fake_adapter(transport=transport), 1, restart=QUICK_RESTARTS)
    seconds = "61.125"  # a unique command line to find the grandchild by
    needle = f"time.sleep({seconds})"
    t0 = time.monotonic()
    pool.send_prompt(0, f"grandchild {seconds}")
    with pytest.raises(InstanceCrashed) as info:
        pool.read_response(0, timeout=30)
    took = time.monotonic() - t0
    # "spawned" is written after the grandchild started, so it existed when the tool died
    assert (info.value.exit_code, info.value.partial) == (5, b"spawned")
    assert took < 2.0, f"death noticed after {took:.3f}s while a grandchild held the pipe"
    killed = wait_for(lambda: not processes_running(needle), 5, "the orphaned grandchild was killed")
    record_property("crash_seen_s", round(took, 4))
    record_property("grandchild_gone_s", round(killed, 4))
    assert killed < 2.0
    assert pool.submit("still here").result(20).text == "you said: still here"
