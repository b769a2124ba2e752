"""Shutdown order and hygiene: no zombie, no grandchild, no fd or thread left."""

import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from toolkit import FAKETOOL, fake_adapter, marked_processes, open_fds, wait_until, zombie_children
from toolpool import InstanceUnavailable, PoolClosed, ToolPoolError, ToolProcessPool

pytestmark = pytest.mark.timeout(90)


def test_shutdown_returns_fds_threads_and_processes_to_baseline(baseline):
    pool = ToolProcessPool(fake_adapter(), 4)
    pool.ask(0, "hi", timeout=10)
    pids = [i["pid"] for i in pool.get_status()["instances"]]
    assert len(set(pids)) == 4
    pool.shutdown()
    assert open_fds() == baseline["fds"]
    assert set(threading.enumerate()) == baseline["threads"]
    assert not zombie_children()
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}") or b") Z" not in open(f"/proc/{pid}/stat", "rb").read()


def test_pty_pool_leaves_nothing(baseline):
    with ToolProcessPool(fake_adapter(transport="pty"), 3) as pool:
        assert pool.ask(2, "pty", timeout=10).text == "you said: pty"
    assert open_fds() == baseline["fds"]
    assert set(threading.enumerate()) == baseline["threads"]


def test_sigterm_ignoring_tool_is_killed(baseline):
    pool = ToolProcessPool(fake_adapter("--ignore-term"), 2)
    t0 = time.monotonic()
    pool.shutdown(timeout=1.0)
    assert time.monotonic() - t0 < 8
    assert wait_until(lambda: not marked_processes(), 5)
    assert open_fds() == baseline["fds"]


def test_grandchildren_are_killed_with_the_group(baseline):
    pool = ToolProcessPool(fake_adapter("--grandchild", "300"), 2)
    assert wait_until(lambda: len(marked_processes()) >= 4, 10)  # 2 tools + 2 grandchildren
    pool.shutdown()
    assert wait_until(lambda: not marked_processes(), 10)


def test_crash_and_restart_cycles_do_not_leak(baseline):
    pool = ToolProcessPool(fake_adapter(), 1, restart=False)
    for _ in range(15):
        with pytest.raises(ToolPoolError):
            pool.ask(0, "crash 1", timeout=10)
        pool.restart_instance(0)
    assert pool.ask(0, "alive", timeout=10).text == "you said: alive"
    pool.shutdown()
    assert open_fds() == baseline["fds"]
    assert set(threading.enumerate()) == baseline["threads"]


def test_pending_request_fails_on_shutdown_and_pool_is_closed():
    pool = ToolProcessPool(fake_adapter(), 1)
    fut = pool.send_prompt(0, "hang")
    pool.shutdown(timeout=1.0)
    with pytest.raises(InstanceUnavailable, match="stopped"):
        fut.result(5)
    with pytest.raises(PoolClosed):
        pool.ask(0, "x")
    pool.shutdown()  # idempotent


def test_forgotten_pool_is_cleaned_at_interpreter_exit(tmp_path):
    script = tmp_path / "forget.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {os.path.dirname(os.path.dirname(os.path.abspath(__file__)))!r})
        from toolpool import ToolProcessPool, ReplAdapter
        pool = ToolProcessPool(ReplAdapter([sys.executable, "-u", {FAKETOOL!r}, "--grandchild", "300"],
                                           prompt="tp> $"), 3)
        print(pool.ask(0, "hi", timeout=10).text, flush=True)
        # no shutdown: the atexit hook must clean up
    """))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "you said: hi"
    assert wait_until(lambda: not marked_processes(), 10), marked_processes()
