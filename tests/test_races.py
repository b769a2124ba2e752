"""Regressions for races and leaks found in review: each test failed before its fix."""

import sys
import threading
import time

import pytest

from toolkit import HERE, fake_adapter, fake_cmd, open_fds, wait_until
from toolpool import (
    CommandAdapter,
    InstanceBusy,
    InstanceCrashed,
    PoolClosed,
    ReplAdapter,
    ResponseTimeout,
    RestartPolicy,
    ToolPoolError,
    ToolProcessPool,
)
from toolpool.adapters.repl import PromptFramer

pytestmark = pytest.mark.timeout(90)
FAST = RestartPolicy(initial=0.01, maximum=0.05, jitter=0.01, limit=2, window=30)


def test_stuck_timeout_counts_silence_from_the_prompt_not_from_the_last_answer(make_pool):
    pool = make_pool(fake_adapter(), 1, stuck_timeout=0.6)
    time.sleep(1.0)  # idle for longer than stuck_timeout
    assert pool.submit("sleep 0.3").result(30).text == "slept"


def test_elastic_pool_shrinks_and_grows_again(make_pool):
    pool = make_pool(fake_adapter(), min_size=1, max_size=2, max_idle=0.3)
    for _ in range(2):
        futures = [pool.submit("sleep 0.4"), pool.submit("sleep 0.4")]
        assert wait_until(lambda: pool.size == 2, 20)
        assert [f.result(30).text for f in futures] == ["slept", "slept"]
        assert wait_until(lambda: pool.size == 1 and not pool._supervisor.growing, 20)


def test_oneshot_tool_exiting_before_any_prompt_backs_off_to_fatal(make_pool):
    events = []
    pool = make_pool(CommandAdapter([sys.executable, "-c", "import sys, time; time.sleep(0.2); sys.exit(2)"]),
                     1, restart=FAST, on_event=lambda e, info: events.append(e))
    assert wait_until(lambda: pool.check_health()["fatal"] == 1, 30)
    assert events.count("spawned") <= FAST.limit + 2  # no respawn storm
    with pytest.raises(ToolPoolError, match="no instance of the pool can take requests"):
        pool.submit("anything").result(10)


def test_oneshot_bad_prompts_fail_requests_not_the_slot(make_pool):
    pool = make_pool(CommandAdapter([sys.executable, f"{HERE}/tools/oneshot.py"]), 1, restart=FAST)
    for _ in range(2 * FAST.limit + 2):
        with pytest.raises(InstanceCrashed):
            pool.submit("fail 3").result(30)
    assert pool.submit("still fine").result(30).text == "answer to: still fine"
    assert pool.check_health()["fatal"] == 0 and pool.stats()["crashes"] == 0


def test_queued_lease_messages_fail_at_shutdown_instead_of_hanging():
    pool = ToolProcessPool(fake_adapter(), 1)
    with pool.lease(timeout=10) as lease:
        first = lease.submit("sleep 0.5")
        second = lease.submit("second")
        threading.Timer(0.1, pool.shutdown).start()
        with pytest.raises(ToolPoolError):
            first.result(10)
        with pytest.raises((PoolClosed, ToolPoolError)):
            second.result(10)
    wait_until(lambda: pool.closed and pool.check_health()["alive"] == 0, 10)


def test_instance_queue_fails_fast_when_its_instance_is_dead_for_good(make_pool):
    pool = make_pool(fake_adapter(), 1, restart=False)
    crash = pool.submit("crash 3", instance=0)
    after = pool.submit("after", instance=0)
    with pytest.raises(InstanceCrashed):
        crash.result(10)
    with pytest.raises(ToolPoolError, match="EXITED"):
        after.result(10)


class _ExplodingFramer(PromptFramer):
    def feed(self, data):
        if b"boom-in-framer" in data:
            raise RuntimeError("framer bug")
        return super().feed(data)


class _BuggyAdapter(ReplAdapter):
    def new_framer(self):
        return _ExplodingFramer(self.prompt)

    def observe(self, slot, response):
        if "observe-bug" in response.text:
            raise RuntimeError("observe bug")


def test_adapter_bugs_fail_the_request_not_the_pool(make_pool):
    pool = make_pool(_BuggyAdapter(fake_cmd(), r"tp> $"), 1, restart=FAST)
    assert pool.submit("observe-bug").result(30).text == "you said: observe-bug"  # logged, answered
    with pytest.raises(ToolPoolError, match="internal error while reading"):
        pool.submit("boom-in-framer").result(30)
    assert wait_until(lambda: pool.check_health()["idle"] == 1, 20)  # replaced by supervision
    assert pool.submit("after").result(30).text == "you said: after"


def test_cancelled_deadlines_do_not_pile_up_in_the_scheduler(make_pool):
    pool = make_pool(fake_adapter(), 2)
    for fut in [pool.submit(f"n{n}", timeout=3600) for n in range(400)]:
        fut.result(60)
    assert len(pool._scheduler) < 150


def test_concurrent_restarts_leave_a_consistent_instance(make_pool):
    pool = make_pool(fake_adapter(), 1)
    errors = []

    def restart():
        try:
            pool.restart_instance(0)
        except InstanceBusy as exc:
            errors.append(exc)

    threads = [threading.Thread(target=restart) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert wait_until(lambda: pool.get_status()["instances"][0]["state"] == "IDLE", 20)
    assert pool.ask(0, "consistent", timeout=10).text == "you said: consistent"


def test_forced_restart_does_not_take_a_leased_instance(make_pool):
    pool = make_pool(fake_adapter(), 1, stuck_timeout=0.5)
    with pool.lease(timeout=10) as lease:
        with pytest.raises(ToolPoolError, match="stuck"):
            lease.send("hang").result(30)
        assert wait_until(lambda: pool.check_health()["idle"] == 1, 20)
        queued = pool.submit("must wait for the lease")
        assert pool.get_status()["instances"][0]["owner"] == "lease"
        assert lease.ask("still mine", timeout=10).text == "you said: still mine"
        assert not queued.done()
    assert queued.result(30).text == "you said: must wait for the lease"


def test_releasing_a_lease_on_a_tool_that_ignores_interrupts_recycles_it(make_pool):
    pool = make_pool(fake_adapter("--ignore-int"), 1, interrupt_grace=0.5)
    with pool.lease(timeout=10) as lease:
        lease.send("sleep 60")
    assert pool.submit("next", timeout=30).result(30).text == "you said: next"


def test_shutdown_from_a_callback_does_not_wait_on_itself():
    pool = ToolProcessPool(fake_adapter(), 2)
    fut = pool.submit("hi")
    fut.add_done_callback(lambda f: pool.shutdown())
    assert fut.result(10).text == "you said: hi"
    assert wait_until(lambda: pool.closed and pool.check_health()["alive"] == 0, 15)


def test_a_queue_timeout_says_who_holds_the_instances(make_pool):
    pool = make_pool(fake_adapter(), 1)
    pool.send_prompt(0, "unread answer")  # the by-index caller never reads it
    with pytest.raises(ResponseTimeout, match=r"held by a by-index caller \(read_response\(0\) releases it\)"):
        pool.submit("blocked", timeout=0.3).result(10)
    assert pool.read_response(0, timeout=10).text == "you said: unread answer"


class _NoFramer(ReplAdapter):
    def new_framer(self):
        raise RuntimeError("cannot build a framer")


def test_a_spawn_failing_half_way_leaks_nothing(baseline):
    with pytest.raises(RuntimeError, match="cannot build a framer"):
        ToolProcessPool(_NoFramer(fake_cmd(), r"tp> $"), 2, restart=False)
    assert open_fds() == baseline["fds"]
    assert wait_until(lambda: set(threading.enumerate()) == baseline["threads"], 10)


def test_responses_taken_through_the_future_are_not_kept_twice(make_pool):
    pool = make_pool(fake_adapter(), 1)
    for n in range(50):
        assert pool.send_prompt(0, f"f{n}").result(10).text == f"you said: f{n}"
    assert len(pool.instances()[0]._unread) <= 1
    with pytest.raises(ToolPoolError, match="no response pending"):
        pool.read_response(0, timeout=1)  # nothing left unread: this also releases the claim
    assert pool.submit("dispatch uses it again").result(10).index == 0
