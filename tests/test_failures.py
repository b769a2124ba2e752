"""Tools that crash, flood, hang or never start: clear errors, never a hang."""

import time

import pytest

from toolkit import fake_adapter, marked_processes, wait_until
from toolpool import (
    InstanceBusy,
    InstanceCrashed,
    InstanceUnavailable,
    ReplAdapter,
    ResponseTimeout,
    ResponseTooLarge,
    SpawnError,
    ToolNotFoundError,
    ToolPoolError,
    ToolProcessPool,
)

pytestmark = pytest.mark.timeout(90)


def test_crash_mid_response_is_reported_at_once(make_pool):
    pool = make_pool(fake_adapter(), 1, restart=False)
    pool.send_prompt(0, "crash 7")
    t0 = time.monotonic()
    with pytest.raises(InstanceCrashed) as info:
        pool.read_response(0, timeout=60)
    assert time.monotonic() - t0 < 5, "a crash must not wait for the timeout"
    err = info.value
    assert err.exit_code == 7 and "boom: simulated crash" in err.stderr_tail
    assert "code 7" in str(err) and "boom: simulated crash" in str(err)
    assert err.partial == b"working on it..."
    health = pool.check_health()
    assert health["dead"] == 1 and health["alive"] == 0
    with pytest.raises(InstanceUnavailable, match="EXITED"):
        pool.send_prompt(0, "anyone?")
    pool.restart_instance(0)
    assert pool.ask(0, "back", timeout=10).text == "you said: back"


def test_sigkill_mid_response(make_pool):
    pool = make_pool(fake_adapter(), 1)
    with pytest.raises(InstanceCrashed) as info:
        pool.ask(0, "kill-self", timeout=60)
    assert info.value.exit_code == -9


def test_death_noticed_while_grandchild_holds_stdout(make_pool):
    pool = make_pool(fake_adapter(), 1)
    pool.send_prompt(0, "grandchild 60")
    t0 = time.monotonic()
    with pytest.raises(InstanceCrashed) as info:
        pool.read_response(0, timeout=60)
    assert time.monotonic() - t0 < 5
    assert info.value.exit_code == 5
    # the orphaned grandchild is killed with the tool's process group
    assert wait_until(lambda: not marked_processes(), 10)


def test_stderr_flood_does_not_deadlock(make_pool):
    pool = make_pool(fake_adapter(stderr_tail_bytes=4096), 1)
    r = pool.ask(0, f"stderr {20 * 1024 * 1024}", timeout=60)
    assert r.text == "done flooding"
    tail = pool.get_status()["instances"][0]["stderr_tail"]
    assert 0 < len(tail) <= 4096 and set(tail) <= {"e", "\n"}


def test_five_megabyte_response(make_pool):
    pool = make_pool(fake_adapter(), 1)
    r = pool.ask(0, f"big {5_000_000}", timeout=60)
    assert len(r.raw) == 5_000_001 and r.raw.endswith(b"y" * 0 + b"\n")
    assert r.text.count("\n") == 49_999


def test_four_mib_prompt(make_pool):
    pool = make_pool(fake_adapter(), 1)
    prompt = "len " + "a" * (4 * 1024 * 1024)
    fut = pool.send_prompt(0, prompt)  # returns before the tool has read it all
    assert pool.read_response(0, timeout=60).text == f"len={len(prompt)}"
    assert fut.done()


def test_oversized_response_is_a_clear_error_and_instance_recovers(make_pool):
    pool = make_pool(fake_adapter(max_response_bytes=64 * 1024), 1)
    with pytest.raises(ResponseTooLarge, match="max_response_bytes=65536"):
        pool.ask(0, "big 1000000", timeout=60)
    # the rest of that answer is drained and dropped; the next one is clean
    try:
        pool.send_prompt(0, "too early")
    except InstanceBusy as exc:  # still draining: the error says so
        assert "discarding the rest" in str(exc)
    else:  # it had drained already; this answer must be clean too
        assert pool.read_response(0, timeout=30).text == "you said: too early"
    assert wait_until(lambda: pool.check_health()["idle"] == 1, 30)
    assert pool.ask(0, "next", timeout=30).text == "you said: next"


def test_missing_executable():
    with pytest.raises(ToolNotFoundError, match="no-such-tool-xyz") as info:
        ToolProcessPool(ReplAdapter(["no-such-tool-xyz", "--flag"], prompt="> $"), 2)
    assert isinstance(info.value, ToolPoolError)
    with pytest.raises(ToolNotFoundError, match="/nonexistent/tool"):
        ToolProcessPool(ReplAdapter(["/nonexistent/tool"], prompt="> $"))


def test_bad_working_directory():
    with pytest.raises(SpawnError, match="working directory does not exist"):
        ToolProcessPool(fake_adapter(cwd="/nonexistent/dir"))


def test_crash_on_start_reports_code_and_stderr():
    with pytest.raises(SpawnError) as info:
        ToolProcessPool(fake_adapter("--crash-on-start", "4"), 2)
    err = info.value
    assert err.exit_code == 4 and "fatal: cannot start" in err.stderr_tail
    assert "exit code 4" in str(err) and "exited during start-up" in str(err)


def test_never_ready_times_out_and_cleans_up():
    t0 = time.monotonic()
    with pytest.raises(SpawnError, match=r"did not become ready within 1s; last output: 'faketool ready\\n'"):
        ToolProcessPool(fake_adapter("--no-prompt", start_timeout=1.0), 2)
    assert time.monotonic() - t0 < 10


def test_hung_tool_times_out_on_deadline(make_pool):
    pool = make_pool(fake_adapter(), 1)
    pool.send_prompt(0, "hang")
    t0 = time.monotonic()
    with pytest.raises(ResponseTimeout):
        pool.read_response(0, timeout=0.5)
    late = time.monotonic() - t0 - 0.5
    assert -0.01 <= late < 1.0  # generous: only catches a timeout that is ignored


def test_endless_flood_is_bounded(make_pool):
    pool = make_pool(fake_adapter(max_response_bytes=1024 * 1024), 1)
    with pytest.raises(ResponseTooLarge):
        pool.ask(0, "flood", timeout=30)


def test_tool_exit_between_prompts(make_pool):
    pool = make_pool(fake_adapter(), 1, restart=False)
    pool.send_prompt(0, "exit 0")
    with pytest.raises(InstanceCrashed) as info:
        pool.read_response(0, timeout=30)
    assert info.value.exit_code == 0


def test_prompt_on_stderr_gets_a_hint():
    import sys
    with pytest.raises(SpawnError, match="prompt appeared on stderr.*transport='pty'"):
        ToolProcessPool(ReplAdapter([sys.executable, "-i", "-q"], prompt=r">>> $", start_timeout=1.5))
