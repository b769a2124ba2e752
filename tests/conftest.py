"""Shared fixtures: real fake tools, pools that always shut down, hygiene checks."""

from __future__ import annotations

import os
import sys
import threading
import time
import uuid
from typing import Callable, List

import pytest

from toolpool import ReplAdapter, ToolProcessPool

HERE = os.path.dirname(os.path.abspath(__file__))
FAKETOOL = os.path.join(HERE, "tools", "faketool.py")

# Every process the tests start inherits this marker, so a leftover one (an
# orphaned grandchild, a forgotten tool) can be found by scanning /proc.
MARK = f"TOOLPOOL_TEST_MARK={uuid.uuid4().hex}"
os.environ[MARK.split("=")[0]] = MARK.split("=")[1]


def fake_cmd(*flags: str) -> List[str]:
    return [sys.executable, "-u", FAKETOOL, *flags]


def fake_adapter(*flags: str, **kwargs) -> ReplAdapter:
    kwargs.setdefault("start_timeout", 20.0)
    return ReplAdapter(fake_cmd(*flags), prompt=r"tp> $", **kwargs)


def marked_processes() -> List[int]:
    """Pids (other than ours) whose environment carries this run's marker."""
    me = os.getpid()
    found = []
    needle = MARK.encode()
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                env = f.read()
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        if needle in env.split(b"\0") and b") Z " not in stat:
            found.append(int(name))
    return found


def zombie_children() -> List[int]:
    me = str(os.getpid()).encode()
    zombies = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat.rsplit(b")", 1)[1].split()
        if fields[0] == b"Z" and fields[1] == me:
            zombies.append(int(name))
    return zombies


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    """For hygiene checks only: processes take a moment to be reaped by init."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture(autouse=True)
def no_leftover_processes(request):
    """After every test: no process of ours left running, and no zombie child."""
    yield
    if request.node.get_closest_marker("allow_leftovers"):
        return
    assert wait_until(lambda: not marked_processes(), 10.0), f"leftover processes: {marked_processes()}"
    assert wait_until(lambda: not zombie_children(), 5.0), f"zombie children: {zombie_children()}"


@pytest.fixture
def make_pool():
    pools: List[ToolProcessPool] = []

    def factory(adapter, count=None, **kwargs) -> ToolProcessPool:
        pool = ToolProcessPool(adapter, count, **kwargs)
        pools.append(pool)
        return pool

    yield factory
    for pool in pools:
        pool.shutdown(timeout=3.0)


@pytest.fixture
def baseline():
    """Open fds and threads before the test, to compare after shutdown."""
    return {"fds": open_fds(), "threads": set(threading.enumerate())}
