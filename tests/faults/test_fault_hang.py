"""Faults 2, 7 and 8: tools that stop answering (frozen, half a line, stdout closed).

Every wait here has a deadline; each test asserts the deadline is kept and
that the pool serves correctly afterwards.
"""

import os
import signal
import time

import pytest

from conftest import fake_adapter, marked_processes, wait_until
from faultkit import QUICK_RESTARTS, pid_of, resume, state_of, wait_for
from toolpool import InstanceUnavailable, ResponseTimeout

MARGIN = 1.0  # seconds a deadline may be overrun on a loaded machine


def _wait_new_idle(pool, index: int, old_pid: int, timeout: float) -> float:
    return wait_for(lambda: state_of(pool, index) == "IDLE" and pid_of(pool, index) not in (None, old_pid),
                    timeout, f"instance {index} replaced pid {old_pid} and is IDLE")


@pytest.mark.timeout(60)
def test_2_sigstopped_tool_times_out_in_deadline_then_is_restarted(make_pool, record_property):
    """Case 2: frozen (SIGSTOP) mid-answer: ResponseTimeout("response") at 0.5 s (+1 s); restarted after grace."""
    grace = 0.5
    pool = make_pool(fake_adapter(), 1, interrupt_grace=grace, restart=QUICK_RESTARTS)
    pid = pid_of(pool, 0)
    try:
        t0 = time.monotonic()
        fut = pool.submit("sleep 0.3", timeout=0.5)  # would answer at 0.3 s if it were not frozen
        os.kill(pid, signal.SIGSTOP)
        with pytest.raises(ResponseTimeout) as info:
            fut.result(10)
        took = time.monotonic() - t0
        assert info.value.phase == "response"
        assert 0.5 <= took < 0.5 + MARGIN, f"timed out after {took:.3f}s"
        # SIGINT stays pending on a stopped process: after interrupt_grace the pool restarts it
        recovered = _wait_new_idle(pool, 0, pid, 30)
    finally:
        resume(pid)
    record_property("timeout_s", round(took, 3))
    record_property("recovered_s", round(recovered, 2))
    # stop() waits out its SIGTERM grace (5 s: a stopped process does not act on SIGTERM), then SIGKILLs
    assert recovered < grace + 5.0 + 5.0, f"recovered {recovered:.2f}s after the timeout"
    assert pool.submit("thawed", timeout=10).result().text == "you said: thawed"
    assert pool.get_status()["instances"][0]["restarts"] == 1


@pytest.mark.timeout(60)
@pytest.mark.parametrize("transport", ["pipe", "pty"])
def test_7_partial_line_then_silence_by_index(make_pool, transport, record_property):
    """Case 7: "half a line" then silence: ResponseTimeout at 0.5 s (+1 s) with .partial == the bytes sent."""
    pool = make_pool(fake_adapter(transport=transport), 1)
    pool.send_prompt(0, "partial")
    for _ in range(2):  # the response stays pending: a second read waits for the same one
        t0 = time.monotonic()
        with pytest.raises(ResponseTimeout) as info:
            pool.read_response(0, timeout=0.5)
        took = time.monotonic() - t0
        record_property("timeout_s", round(took, 3))
        assert 0.5 <= took < 0.5 + MARGIN
        assert info.value.partial == b"half a line"
    assert pool.interrupt(0)  # the tool cancels: the rest of that turn arrives and completes it
    assert pool.read_response(0, timeout=10).text == "half a line[interrupted]"
    assert pool.ask(0, "next", timeout=10).text == "you said: next"


@pytest.mark.timeout(60)
def test_7_partial_line_then_silence_by_submit(make_pool):
    """Case 7 through submit(): phase "response" and .partial within the deadline; next caller gets its own."""
    pool = make_pool(fake_adapter(), 1)
    t0 = time.monotonic()
    with pytest.raises(ResponseTimeout) as info:
        pool.submit("partial", timeout=0.5).result(10)
    took = time.monotonic() - t0
    assert info.value.phase == "response" and 0.5 <= took < 0.5 + MARGIN
    assert info.value.partial == b"half a line"
    # the timed-out turn was interrupted; its tail ("[interrupted]") must not reach the next request
    assert pool.submit("next", timeout=10).result().text == "you said: next"


@pytest.mark.timeout(60)
def test_8_stdout_closed_while_alive_times_out_and_recovers(make_pool, record_property):
    """Case 8: stdout closed, process alive: ResponseTimeout at 1 s (+1 s), then a fresh process serves."""
    pool = make_pool(fake_adapter(), 1, interrupt_grace=0.5, restart=QUICK_RESTARTS)
    pid = pid_of(pool, 0)
    t0 = time.monotonic()
    with pytest.raises(ResponseTimeout) as info:
        pool.submit("closeout", timeout=1.0).result(10)
    took = time.monotonic() - t0
    record_property("timeout_s", round(took, 3))
    assert info.value.phase == "response" and 1.0 <= took < 1.0 + MARGIN
    # the interrupt makes it write to its closed stdout and die, or the grace runs out: replaced either way
    _wait_new_idle(pool, 0, pid, 30)
    assert pool.submit("after", timeout=10).result().text == "you said: after"


@pytest.mark.timeout(60)
def test_8_stdout_closed_without_a_deadline_is_caught_by_stuck_timeout(make_pool):
    """Case 8 with no request timeout: stuck_timeout=0.5 recycles it, the request fails in < 0.5 s + 2 s."""
    pool = make_pool(fake_adapter(), 1, stuck_timeout=0.5, restart=QUICK_RESTARTS)
    pid = pid_of(pool, 0)
    t0 = time.monotonic()
    with pytest.raises(InstanceUnavailable, match="restarted"):
        pool.submit("closeout").result(20)
    assert time.monotonic() - t0 < 0.5 + 2.0
    _wait_new_idle(pool, 0, pid, 30)
    assert pool.submit("after", timeout=10).result().text == "you said: after"


@pytest.mark.timeout(60)
def test_8_stdout_closed_shutdown_leaves_nothing(make_pool, record_property):
    """Case 8: a by-index read times out (never hangs); shutdown(1) then ends it in < 2 s."""
    pool = make_pool(fake_adapter(), 2)
    pool.send_prompt(0, "closeout")
    pool.send_prompt(1, "closeout")
    for index in (0, 1):
        with pytest.raises(ResponseTimeout):
            pool.read_response(index, timeout=0.5)
    t0 = time.monotonic()
    pool.shutdown(timeout=1.0)
    record_property("shutdown_s", round(time.monotonic() - t0, 3))
    assert time.monotonic() - t0 < 2.0
    assert wait_until(lambda: not marked_processes(), 5)
