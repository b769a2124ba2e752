"""Helpers shared by the test modules: real fake tools and process hygiene checks.

A module of its own (not conftest.py) so that ``from toolkit import ...`` is
unambiguous however many conftest.py files the suite has.
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections.abc import Callable

from toolpool import ReplAdapter

HERE = os.path.dirname(os.path.abspath(__file__))
FAKETOOL = os.path.join(HERE, "tools", "faketool.py")

# Every process the tests start inherits this marker, so a leftover one (an
# orphaned grandchild, a forgotten tool) can be found by scanning /proc.
MARK = f"TOOLPOOL_TEST_MARK={uuid.uuid4().hex}"
os.environ[MARK.split("=")[0]] = MARK.split("=")[1]


def fake_cmd(*flags: str) -> list[str]:
    return [sys.executable, "-u", FAKETOOL, *flags]


def fake_adapter(*flags: str, **kwargs) -> ReplAdapter:
    kwargs.setdefault("start_timeout", 20.0)
    return ReplAdapter(fake_cmd(*flags), prompt=r"tp> $", **kwargs)


def marked_processes() -> list[int]:
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


def zombie_children() -> list[int]:
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
