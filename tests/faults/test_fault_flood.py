"""Faults 5 and 6: floods (50 MB on stderr; endless stdout with no prompt).

Memory is measured as the peak of this process's VmRSS, sampled every 10 ms
while the flood runs, above its value just before.
"""

import gc
import time

import pytest

from conftest import fake_adapter
from faultkit import MB, RssPeak, pid_of, state_of, wait_for
from toolpool import ResponseTooLarge

RSS_BOUND = 50 * MB


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_5_fifty_mb_stderr_flood_answer_arrives_memory_bounded(make_pool, record_property):
    """Case 5: 50 MB on stderr: the answer arrives, stderr tail <= 8 KiB, RSS growth < 50 MB."""
    pool = make_pool(fake_adapter(stderr_tail_bytes=8192), 1)
    assert pool.ask(0, "warm up", timeout=10).text == "you said: warm up"
    gc.collect()
    t0 = time.monotonic()
    with RssPeak() as rss:
        r = pool.ask(0, f"stderr {50 * MB}", timeout=100)
    took = time.monotonic() - t0
    record_property("seconds", round(took, 2))
    record_property("rss_growth_mb", round(rss.growth / MB, 1))
    assert r.text == "done flooding"
    tail = pool.get_status()["instances"][0]["stderr_tail"]
    assert 0 < len(tail) <= 8192 and set(tail) <= {"e", "\n"}
    stderr = pool.instances()[0].stderr
    wait_for(lambda: stderr.total == 50 * MB, 10, "every stderr byte drained (and dropped)")
    assert rss.growth < RSS_BOUND, f"RSS grew by {rss.growth / MB:.1f} MB"
    assert pool.ask(0, "after", timeout=10).text == "you said: after"


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_6_endless_stdout_flood_too_large_memory_bounded_recoverable(make_pool, record_property):
    """Case 6: endless output, no prompt: ResponseTooLarge at 1 MiB; RSS growth < 50 MB; restart recovers."""
    pool = make_pool(fake_adapter(max_response_bytes=MB), 2)
    gc.collect()
    with RssPeak() as rss:
        t0 = time.monotonic()
        pool.send_prompt(0, "flood")  # by index: nothing interrupts it, the flood goes on
        with pytest.raises(ResponseTooLarge) as info:
            pool.read_response(0, timeout=30)
        record_property("too_large_after_s", round(time.monotonic() - t0, 3))
        before = pool.get_status()["instances"][0]["bytes_out"]
        time.sleep(1.0)
        drained = pool.get_status()["instances"][0]["bytes_out"] - before
        # the draining instance takes no work; the other one serves
        assert pool.submit("meanwhile").result(10).index == 1
    record_property("drained_mb_in_1s", round(drained / MB, 1))
    record_property("rss_growth_mb", round(rss.growth / MB, 1))
    assert info.value.limit == MB and 0 < len(info.value.partial) <= 65536
    assert drained > 5 * MB, "the flood must keep being read (and dropped), or the tool blocks on a full pipe"
    assert rss.growth < RSS_BOUND, f"RSS grew by {rss.growth / MB:.1f} MB"
    pid = pid_of(pool, 0)
    pool.restart_instance(0)
    assert pid_of(pool, 0) != pid
    assert pool.ask(0, "after restart", timeout=10).text == "you said: after restart"


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_6_endless_stdout_flood_interrupt_recovers_same_process(make_pool):
    """Case 6: after ResponseTooLarge an interrupt ends the flood; the same process answers next."""
    pool = make_pool(fake_adapter(max_response_bytes=MB), 1)
    pid = pid_of(pool, 0)
    pool.send_prompt(0, "flood")
    with pytest.raises(ResponseTooLarge):
        pool.read_response(0, timeout=30)
    assert pool.interrupt(0)
    wait_for(lambda: state_of(pool, 0) == "IDLE", 10, "the rest of the flood was dropped")
    assert pool.ask(0, "next", timeout=10).text == "you said: next"
    assert pid_of(pool, 0) == pid


@pytest.mark.timeout(60)
def test_6_request_queued_behind_an_oversized_response_is_served(make_pool):
    """A request queued while the instance drains an oversized answer is served once the drain ends.

    Was a bug: nothing dispatched it when the instance became idle; on a 1-instance pool it waited forever.
    """
    pool = make_pool(fake_adapter(max_response_bytes=64 * 1024), 1)
    with pytest.raises(ResponseTooLarge):
        pool.submit("big 30000000").result(30)  # 30 MB: the instance drains ~30 MB more after the error
    queued = pool.submit("next")  # the instance is still BUSY draining
    assert queued.result(5).text == "you said: next"


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_6_endless_flood_pool_recovers_by_itself(make_pool):
    """Case 6 through submit(): after ResponseTooLarge the pool cuts the endless answer short by itself.

    Was a bug: the instance drained forever (stuck_timeout cannot fire while output flows).
    """
    pool = make_pool(fake_adapter(max_response_bytes=MB), 1, stuck_timeout=1.0, interrupt_grace=1.0)
    with pytest.raises(ResponseTooLarge):
        pool.submit("flood", timeout=30).result(30)
    assert pool.submit("next", timeout=4).result(10).text == "you said: next"
