"""One budget and one rate limit for the whole pool (issue 12), on a real REPL process.

The fake tool's answers say what they cost (``cost 0.4``) or that the API rate-limited it
(``RATELIMIT``); a small framer turns that into ``Response.cost_usd`` and the standard
``RATE_LIMIT_EVENT``, as the claude and aider framers do for their tools.
"""

from __future__ import annotations

import time

import pytest

from toolkit import fake_cmd
from toolpool import ReplAdapter, ToolProcessPool
from toolpool.adapters.base import RATE_LIMIT_EVENT, Cut
from toolpool.adapters.repl import PromptFramer
from toolpool.errors import BudgetExceeded

pytestmark = pytest.mark.timeout(60)


class PricedFramer(PromptFramer):
    def feed(self, data: bytes) -> Cut:
        cut = super().feed(data)
        for frame in cut.frames:
            words = frame.text.split()
            if "cost" in words:
                frame.fields["cost_usd"] = float(words[words.index("cost") + 1])
            if "RATELIMIT" in frame.text:
                cut.events.append({"type": RATE_LIMIT_EVENT, "status": 429, "retry_after": None})
        return cut


class PricedAdapter(ReplAdapter):
    def new_framer(self) -> PromptFramer:
        return PricedFramer(self.prompt, max_bytes=self.max_response_bytes)


def priced() -> PricedAdapter:
    return PricedAdapter(fake_cmd(), prompt=r"tp> $")


def test_budget_stops_queued_and_new_requests_running_ones_finish():
    with ToolProcessPool(priced(), 1, max_cost_usd=1.0) as pool:
        first = pool.submit("cost 0.6").result(10)
        assert first.cost_usd == pytest.approx(0.6)
        running = pool.submit("sleep 0.5")  # not priced: still served
        second = pool.submit("cost 0.5")  # brings the spend to 1.1 >= 1.0
        queued = [pool.submit(f"after {n}") for n in range(3)]
        assert running.result(10).text == "slept"
        assert second.result(10).cost_usd == pytest.approx(0.5)
        for fut in queued:
            with pytest.raises(BudgetExceeded, match="max_cost_usd"):
                fut.result(10)
        with pytest.raises(BudgetExceeded) as info:
            pool.submit("more")
        assert info.value.spent == pytest.approx(1.1) and info.value.limit == 1.0
        stats = pool.stats()
        assert stats["cost_usd"] == pytest.approx(1.1) and stats["max_cost_usd"] == 1.0
        assert pool.get_status()["stats"]["cost_usd"] == pytest.approx(1.1)


@pytest.mark.parametrize("value", [0, -1, float("nan"), float("inf"), "5"])
def test_budget_rejects_nonsense(value):
    with pytest.raises((ValueError, TypeError), match="max_cost_usd"):
        ToolProcessPool(priced(), 1, max_cost_usd=value)


def test_one_rate_limit_pauses_every_instance():
    with ToolProcessPool(priced(), 3) as pool:
        assert pool.submit("RATELIMIT").result(10).text.endswith("RATELIMIT")
        t0 = time.monotonic()
        futures = [pool.submit(f"next {n}") for n in range(3)]  # three idle instances, all paused
        answers = [f.result(20).text for f in futures]
        waited = time.monotonic() - t0
        assert answers == [f"you said: next {n}" for n in range(3)]
        assert waited >= 0.9, f"dispatch was not paused ({waited:.2f}s)"  # the first backoff is 1-1.25 s
        assert pool.stats()["rate_limited"] == 1


def test_requests_per_minute_spaces_dispatch():
    with ToolProcessPool(priced(), 2, max_requests_per_minute=2) as pool:
        assert [f.result(10).text for f in (pool.submit("a"), pool.submit("b"))] == ["you said: a", "you said: b"]
        third = pool.submit("c")
        time.sleep(0.5)
        assert not third.done(), "a third request within the minute was sent"
        third.cancel()


def test_the_budget_counts_by_index_and_lease_turns_too():
    with ToolProcessPool(priced(), 1, max_cost_usd=1.0) as pool:
        assert pool.ask(0, "cost 0.5", timeout=10).cost_usd == pytest.approx(0.5)
        with pool.lease(timeout=10) as lease:
            lease.ask("cost 0.6", timeout=10)
        assert pool.stats()["cost_usd"] == pytest.approx(1.1)
        with pytest.raises(BudgetExceeded):
            pool.submit("more")
