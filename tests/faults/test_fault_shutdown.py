"""Fault 4: tools (and their grandchildren) that ignore SIGTERM, busy when the pool shuts down."""

import threading
import time

import pytest

from conftest import fake_adapter, marked_processes, open_fds, wait_until, zombie_children
from faultkit import wait_for
from toolpool import InstanceUnavailable


@pytest.mark.timeout(60)
def test_4_sigterm_ignoring_busy_tools_shutdown_within_timeout(baseline, make_pool, record_property):
    """Case 4: shutdown(timeout=1) of 4 busy TERM-ignoring tools (+4 grandchildren) ends in 1 s (+1.5 s)."""
    # SIG_IGN is inherited: the grandchildren ignore SIGTERM too
    pool = make_pool(fake_adapter("--ignore-term", "--grandchild", "300"), 4)
    assert wait_until(lambda: len(marked_processes()) >= 8, 10), "4 tools + 4 grandchildren"
    futures = [pool.submit("hang") for _ in range(4)]  # busy: they never read the closed stdin
    wait_for(lambda: pool.check_health()["busy"] == 4, 10, "all four busy")
    t0 = time.monotonic()
    pool.shutdown(timeout=1.0)
    took = time.monotonic() - t0
    record_property("shutdown_s", round(took, 3))
    # >= the timeout: SIGTERM really was ignored, so only SIGKILL at the deadline ended them
    assert 0.9 <= took < 1.0 + 1.5, f"shutdown took {took:.3f}s"
    for fut in futures:
        with pytest.raises(InstanceUnavailable, match="stopped"):
            fut.result(0)
    assert wait_until(lambda: not marked_processes(), 2.0), marked_processes()
    assert not zombie_children()
    assert open_fds() == baseline["fds"]
    assert set(threading.enumerate()) == baseline["threads"]
