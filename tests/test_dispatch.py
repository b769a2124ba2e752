"""submit/map Futures, FIFO queue, backpressure, cancellation, leases, one-shot tools, elastic sizing, recycling."""

import concurrent.futures as cf
import sys
import threading
import time

import pytest

from toolkit import HERE, fake_adapter, wait_until
from toolpool import (
    AcquireTimeout,
    CommandAdapter,
    InstanceBusy,
    InstanceCrashed,
    PoolClosed,
    PoolFull,
    ResponseTimeout,
    ToolProcessPool,
)

pytestmark = pytest.mark.timeout(90)
ONESHOT = [sys.executable, f"{HERE}/tools/oneshot.py"]


def test_submit_spreads_over_instances_and_never_crosses_answers(make_pool):
    pool = make_pool(fake_adapter(), 3)
    futures = {f"p{n}": pool.submit(f"p{n}", timeout=30) for n in range(60)}
    used = set()
    for prompt, fut in futures.items():
        r = fut.result(30)
        assert r.text == f"you said: {prompt}" and r.prompt == prompt
        used.add(r.index)
    assert used == {0, 1, 2}
    assert pool.stats()["requests"] == 60 and pool.stats()["errors"] == 0


def test_queue_is_fifo(make_pool):
    pool = make_pool(fake_adapter(), 1)
    blocker = pool.submit("sleep 0.3")
    order = []
    futures = [pool.submit(f"n{n}") for n in range(8)]
    for n, fut in enumerate(futures):
        fut.add_done_callback(lambda f, n=n: order.append(n))
    cf.wait(futures, timeout=30)
    assert blocker.result(0).text == "slept"
    assert order == list(range(8))
    assert futures[-1].result(0).timings.queued > 0.2


def test_map_keeps_input_order_and_can_return_exceptions(make_pool):
    pool = make_pool(fake_adapter(), 3)
    prompts = [f"sleep 0.0{n % 3}" if n % 2 else f"m{n}" for n in range(12)]
    texts = [r.text for r in pool.map(prompts, timeout=30)]
    assert texts == ["slept" if n % 2 else f"you said: m{n}" for n in range(12)]
    results = list(pool.map(["ok", "crash-once /dev/null", "fine"], timeout=30, return_exceptions=True))
    assert results[0].text == "you said: ok" and results[2].text == "you said: fine"
    assert results[1].text == "survived"  # /dev/null exists: the tool survives


def test_max_waiting_backpressure(make_pool):
    pool = make_pool(fake_adapter(), 1, max_waiting=2)
    running = pool.submit("sleep 0.3")
    assert wait_until(lambda: pool.check_health()["busy"] == 1, 10)
    queued = [pool.submit("a"), pool.submit("b")]
    with pytest.raises(PoolFull, match="max_waiting=2"):
        pool.submit("c")
    assert [f.result(30).text for f in queued] == ["you said: a", "you said: b"]
    assert running.result(0).text == "slept"
    assert pool.stats()["requests_rejected"] == 1


def test_queued_future_can_be_cancelled(make_pool):
    pool = make_pool(fake_adapter(), 1)
    first = pool.submit("sleep 0.3")
    doomed = pool.submit("never sent")
    after = pool.submit("after")
    assert doomed.cancel()
    assert after.result(30).text == "you said: after"
    assert first.result(0).text == "slept"
    assert doomed.cancelled()
    assert pool.get_status()["instances"][0]["requests"] == 2  # the cancelled prompt was never sent


def test_timeout_says_which_phase_ran_out(make_pool):
    pool = make_pool(fake_adapter(), 1, interrupt_grace=2.0)
    busy = pool.submit("sleep 1.0")
    queued = pool.submit("late", timeout=0.2)
    with pytest.raises(ResponseTimeout) as info:
        queued.result(30)
    assert info.value.phase == "queue" and "still queued" in str(info.value)
    assert busy.result(30).text == "slept"
    # a running request that times out is interrupted, and the instance serves again
    hung = pool.submit("sleep 30", timeout=0.3)
    with pytest.raises(ResponseTimeout) as info:
        hung.result(30)
    assert info.value.phase == "response"
    assert pool.submit("next", timeout=30).result(30).text == "you said: next"
    assert pool.stats()["timeouts"] == 2


def test_lease_is_exclusive_and_submit_waits_for_release(make_pool):
    pool = make_pool(fake_adapter(), 1)
    with pool.lease(timeout=5) as lease:
        assert lease.ask("first", timeout=10).text == "you said: first"
        waiting = pool.submit("from the queue")
        with pytest.raises(InstanceBusy, match="leased"):
            pool.send_prompt(0, "by index")
        assert lease.ask("second", timeout=10).text == "you said: second"
        assert not waiting.done()
    assert waiting.result(30).text == "you said: from the queue"


def test_lease_released_on_exception_and_timeout(make_pool):
    pool = make_pool(fake_adapter(), 1)
    with pytest.raises(RuntimeError):
        with pool.lease(timeout=5) as lease:
            lease.send("sleep 5")
            raise RuntimeError("caller bug")
    # the running turn was interrupted and the instance is free again
    with pool.lease(timeout=10) as lease:
        assert lease.ask("again", timeout=10).text == "you said: again"
        with pytest.raises(AcquireTimeout, match="no instance became free"):
            with pool.lease(timeout=0.2):
                pass
    with pytest.raises(Exception, match="released"):
        lease.ask("after release")


def test_lease_and_pool_queue_messages_for_a_busy_instance(make_pool):
    pool = make_pool(fake_adapter(), 2)
    with pool.lease(timeout=5) as lease:
        futures = [lease.submit(f"q{n}") for n in range(5)]
        assert [f.result(30).text for f in futures] == [f"you said: q{n}" for n in range(5)]
        assert {f.result(0).index for f in futures} == {lease.index}
    other = 1 - lease.index
    futures = [pool.submit(f"i{n}", instance=other) for n in range(4)]
    assert [f.result(30).index for f in futures] == [other] * 4
    assert [f.result(0).text for f in futures] == [f"you said: i{n}" for n in range(4)]


def test_dispatch_and_by_index_do_not_collide(make_pool):
    pool = make_pool(fake_adapter(), 1)
    fut = pool.submit("sleep 0.3")
    assert wait_until(lambda: pool.check_health()["busy"] == 1, 10)
    with pytest.raises(InstanceBusy, match="dispatched by submit"):
        pool.send_prompt(0, "mine")
    fut.result(30)
    pool.send_prompt(0, "mine")
    queued = pool.submit("queued behind the by-index caller")
    assert pool.read_response(0, timeout=10).text == "you said: mine"
    assert queued.result(30).text == "you said: queued behind the by-index caller"


def test_oneshot_tool_is_prewarmed_and_replaced(make_pool):
    pool = make_pool(CommandAdapter(ONESHOT + ["--startup", "0.3"]), 2)
    pids = {i["pid"] for i in pool.get_status()["instances"]}
    time.sleep(0.4)  # let the waiting processes finish their start-up
    r = pool.submit("hello", timeout=30).result(30)
    assert r.text == "answer to: hello" and r.timings.warm and r.timings.spawn == 0.0
    assert r.timings.process_age >= 0.3
    assert wait_until(lambda: pool.check_health()["idle"] == 2, 10)
    new_pids = {i["pid"] for i in pool.get_status()["instances"]}
    assert len(new_pids - pids) == 1  # the used process was replaced in the background
    results = [f.result(30) for f in [pool.submit(f"n{n}", timeout=30) for n in range(6)]]
    assert [r.text for r in results] == [f"answer to: n{n}" for n in range(6)]
    assert any(not r.timings.warm for r in results)  # more prompts than warm processes
    assert pool.stats()["spawns_cold"] >= 1 and pool.stats()["crashes"] == 0


def test_oneshot_failure_reports_exit_code(make_pool):
    pool = make_pool(CommandAdapter(ONESHOT), 1)
    with pytest.raises(InstanceCrashed) as info:
        pool.submit("fail 3").result(30)
    assert info.value.exit_code == 3 and "asked to fail" in info.value.stderr_tail
    assert pool.submit("ok").result(30).text == "answer to: ok"


def test_elastic_pool_grows_and_shrinks(make_pool):
    pool = make_pool(fake_adapter(), min_size=1, max_size=3, max_idle=0.5)
    assert pool.size == 1
    futures = [pool.submit("sleep 0.6") for _ in range(6)]
    assert wait_until(lambda: pool.size == 3, 20)
    assert all(f.result(30).text == "slept" for f in futures)
    assert wait_until(lambda: pool.size == 1, 20)
    assert pool.submit("still works").result(30).text == "you said: still works"


def test_max_requests_recycles_without_failing_callers(make_pool):
    pool = make_pool(fake_adapter(), 1, max_requests=3)
    pids = set()
    for n in range(10):
        r = pool.submit(f"r{n}", timeout=30).result(30)
        assert r.text == f"you said: r{n}"
        pids.add(pool.get_status()["instances"][0]["pid"])
    assert wait_until(lambda: pool.check_health()["idle"] == 1, 10)
    assert len(pids) >= 3
    assert pool.stats()["errors"] == 0


def test_max_lifetime_recycles_idle_instances(make_pool):
    pool = make_pool(fake_adapter(), 2, max_lifetime=0.5)
    first = {i["pid"] for i in pool.get_status()["instances"]}
    assert wait_until(lambda: not first & {i["pid"] for i in pool.get_status()["instances"]}, 20)
    assert [f.result(30).text for f in [pool.submit("x"), pool.submit("y")]] == ["you said: x", "you said: y"]


def test_retry_on_crash_reruns_on_another_instance(make_pool, tmp_path):
    marker = tmp_path / "crashed-once"
    pool = make_pool(fake_adapter(), 2, retry_on_crash=True)
    r = pool.submit(f"crash-once {marker}", timeout=30).result(30)
    assert r.text == "survived"
    assert pool.stats()["crashes"] == 1


def test_submit_after_shutdown_and_queued_requests_fail_cleanly():
    pool = ToolProcessPool(fake_adapter(), 1)
    pool.submit("sleep 5")
    queued = pool.submit("never")
    pool.shutdown(timeout=1.0)
    with pytest.raises(PoolClosed):
        queued.result(5)
    with pytest.raises(PoolClosed):
        pool.submit("x")


def test_many_threads_submitting(make_pool):
    pool = make_pool(fake_adapter(), 4)
    results = {}

    def worker(t):
        futures = [(f"t{t}-{n}", pool.submit(f"t{t}-{n}", timeout=60)) for n in range(40)]
        results[t] = [(p, f.result(60).text) for p, f in futures]

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for t in range(8):
        assert all(text == f"you said: {p}" for p, text in results[t])
    assert pool.stats()["requests"] == 320


def test_timings_total_is_wall_time_not_double_counted(make_pool):
    pool = make_pool(fake_adapter(), 1)
    pool.submit("sleep 0.3")
    t0 = time.perf_counter()
    r = pool.submit("queued").result(30)
    wall = time.perf_counter() - t0
    assert r.timings.queued > 0.2
    assert r.elapsed <= r.timings.total <= wall + 0.01
    assert abs(r.timings.total - (r.timings.acquire + r.elapsed)) < 1e-6


def test_submit_to_an_instance_honours_timeout_and_gives_it_back(make_pool):
    pool = make_pool(fake_adapter(), 2, interrupt_grace=2.0)
    first = pool.submit("sleep 0.5", instance=0)
    late = pool.submit("late", instance=0, timeout=0.2)
    with pytest.raises(ResponseTimeout) as info:
        late.result(30)
    assert info.value.phase == "queue"
    assert first.result(30).text == "slept"
    running = pool.submit("partial", instance=0, timeout=0.3)
    with pytest.raises(ResponseTimeout) as info:
        running.result(30)
    assert info.value.phase == "response" and info.value.partial == b"half a line"
    # once its queue drained, instance 0 serves ordinary submits again
    assert wait_until(lambda: pool.get_status()["instances"][0]["owner"] is None, 20)
    both = [pool.submit("sleep 0.3"), pool.submit("sleep 0.3")]
    assert {f.result(30).index for f in both} == {0, 1}


def test_submit_timeout_carries_partial_output(make_pool):
    pool = make_pool(fake_adapter(), 1, interrupt_grace=2.0)
    with pytest.raises(ResponseTimeout) as info:
        pool.submit("partial", timeout=0.3).result(30)
    assert info.value.partial == b"half a line"


def test_requests_fail_at_once_when_no_instance_can_serve(make_pool):
    pool = make_pool(fake_adapter(), 1, restart=False)
    with pytest.raises(InstanceCrashed):
        pool.submit("crash 1").result(30)
    t0 = time.monotonic()
    with pytest.raises(Exception, match="no instance of the pool can take requests") as info:
        pool.submit("anyone?").result(30)
    assert time.monotonic() - t0 < 5
    assert "EXITED" in str(info.value)


def test_map_rejects_a_bad_batch_before_sending_anything(make_pool):
    pool = make_pool(fake_adapter(), 1)
    with pytest.raises(ValueError, match="newline"):
        pool.map(["fine", "two\nlines", "also fine"])
    assert pool.get_status()["instances"][0]["requests"] == 0
