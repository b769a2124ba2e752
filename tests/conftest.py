"""Shared fixtures: real fake tools, pools that always shut down, hygiene checks."""

from __future__ import annotations

import threading

import pytest

from toolkit import (  # noqa: F401 (re-exported)
    FAKETOOL,
    HERE,
    MARK,
    fake_adapter,
    fake_cmd,
    marked_processes,
    open_fds,
    wait_until,
    zombie_children,
)
from toolpool import ToolProcessPool


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
    pools: list[ToolProcessPool] = []

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
