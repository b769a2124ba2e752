"""Supervision: automatic restart with backoff, FATAL after a crash loop, degraded pools, events, hang detection."""

import os
import signal
import time

import pytest

from toolkit import fake_adapter, wait_until
from toolpool import InstanceCrashed, RestartPolicy, SpawnError, State, ToolProcessPool

pytestmark = pytest.mark.timeout(90)
FAST = RestartPolicy(initial=0.01, maximum=0.05, jitter=0.01, limit=3, window=30, stable_after=5)


def test_crashed_instance_restarts_by_itself(make_pool):
    events = []
    pool = make_pool(fake_adapter(), 1, restart=FAST, on_event=lambda e, info: events.append(e))
    old = pool.get_status()["instances"][0]["pid"]
    with pytest.raises(InstanceCrashed):
        pool.submit("crash 9").result(30)
    assert wait_until(lambda: pool.check_health()["idle"] == 1, 20)
    inst = pool.get_status()["instances"][0]
    assert inst["pid"] != old and inst["restarts"] == 1 and inst["last_exit_code"] == 9
    assert "boom: simulated crash" in inst["last_error"]
    assert pool.submit("back").result(30).text == "you said: back"
    assert events[:2] == ["spawned", "ready"]  # the initial start
    assert events[2:6] == ["exited", "restarting", "spawned", "ready"]
    assert pool.stats()["crashes"] == 1 and pool.stats()["restarts"] == 1


def test_crash_loop_goes_fatal_and_pool_runs_degraded(make_pool, tmp_path):
    marker = str(tmp_path / "first-start")
    events = []
    # The first process to start creates the marker; every later start crashes (code 4).
    pool = make_pool(fake_adapter("--only-once", marker), 2, restart=FAST,
                     on_event=lambda e, info: events.append((e, info.get("index"))))
    health = pool.check_health()
    assert health["degraded"] and health["alive"] == 1
    assert wait_until(lambda: pool.check_health()["fatal"] == 1, 30)
    status = pool.get_status()
    fatal = [i for i in status["instances"] if i["state"] == "FATAL"][0]
    assert fatal["last_exit_code"] == 4 and "cannot start" in fatal["stderr_tail"]
    assert any(e == "fatal" for e, _ in events)
    # a FATAL instance is excluded from dispatch; the healthy one serves everything
    results = [f.result(30) for f in [pool.submit(f"d{n}") for n in range(6)]]
    assert {r.index for r in results} == {1 - fatal["index"]}
    # an explicit restart after fixing the cause brings it back
    os.unlink(marker)
    pool.restart_instance(fatal["index"])
    assert pool.check_health()["healthy"]


def test_all_instances_failing_to_start_raise_within_bounded_time():
    t0 = time.monotonic()
    with pytest.raises(SpawnError, match="exit code 4"):
        ToolProcessPool(fake_adapter("--crash-on-start", "4"), 3, restart=FAST)
    assert time.monotonic() - t0 < 20


def test_restart_disabled_leaves_instance_exited(make_pool):
    pool = make_pool(fake_adapter(), 1, restart=False)
    with pytest.raises(InstanceCrashed):
        pool.submit("crash 2").result(30)
    time.sleep(0.3)  # give a (wrong) restart the chance to happen
    assert pool.get_status()["instances"][0]["state"] == "EXITED"


def test_stuck_instance_is_recycled(make_pool):
    pool = make_pool(fake_adapter(), 1, stuck_timeout=0.5)
    fut = pool.submit("hang")
    with pytest.raises(Exception, match="restarted"):
        fut.result(30)
    assert wait_until(lambda: pool.check_health()["idle"] == 1, 20)
    assert pool.submit("fresh").result(30).text == "you said: fresh"


def test_liveness_probe_catches_a_frozen_tool(make_pool):
    pool = make_pool(fake_adapter(), 1, health_check_interval=0.3)
    pid = pool.get_status()["instances"][0]["pid"]
    os.kill(pid, signal.SIGSTOP)  # hung: alive, but answers nothing
    try:
        assert wait_until(lambda: pool.get_status()["instances"][0]["pid"] not in (None, pid), 30)
    finally:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
    assert wait_until(lambda: pool.check_health()["idle"] == 1, 20)
    assert pool.submit("thawed").result(30).text == "you said: thawed"


def test_state_machine_is_documented_and_enforced():
    from toolpool.states import InvalidTransition, check_transition, transitions

    table = transitions()
    assert set(table) == {s.value for s in State}
    check_transition(State.IDLE, State.BUSY)
    with pytest.raises(InvalidTransition):
        check_transition(State.FATAL, State.BUSY)


def test_forced_restart_records_why(make_pool):
    pool = make_pool(fake_adapter(), 1, stuck_timeout=0.4)
    with pytest.raises(Exception, match="stuck"):
        pool.submit("hang").result(30)
    assert wait_until(lambda: pool.check_health()["idle"] == 1, 20)
    assert "stuck: no output while busy" in pool.get_status()["instances"][0]["last_error"]


def test_library_is_silent_until_logging_is_configured(tmp_path):
    import subprocess
    import sys

    from toolkit import FAKETOOL
    code = ("import sys; from toolpool import ToolProcessPool, ReplAdapter\n"
            f"pool = ToolProcessPool(ReplAdapter([sys.executable, '-u', {FAKETOOL!r}], prompt='tp> $'), 1)\n"
            "try:\n    pool.ask(0, 'crash 2', timeout=10)\nexcept Exception:\n    pass\npool.shutdown()\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stderr == ""
