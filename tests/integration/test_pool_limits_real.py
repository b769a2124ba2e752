"""One budget and one rate limit for the whole pool (issue 12), with the real claude and the real aider.

The fake servers price nothing themselves: claude prices the fake's token counts with its own
model table (``total_cost_usd``, which counts the whole process so far: the adapter gives each
Response its turn's share); aider needs prices for its model, which a ``--model-metadata-file``
gives it.  A rate limit is the fake answering 429: claude says so in an ``api_retry`` line (after
the server's retry-after), aider in a ``litellm.RateLimitError`` line once its SDK's silent
retries are used up.  Either pauses dispatch for every instance of the pool.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from toolpool import BudgetExceeded, Response, ToolProcessPool
from toolpool.adapters import AiderAdapter, ClaudeAdapter
from toolpool.adapters.base import Adapter
from toolpool.testing import Error, FakeAnthropicServer, FakeOpenAIServer, Reply

pytestmark = [pytest.mark.realtools, pytest.mark.timeout(300)]

# Prices for aider's fake model, per token: aider's cost must follow from them.
INPUT_PRICE, OUTPUT_PRICE = 1e-5, 3e-5


def claude(path: str, server: FakeAnthropicServer, trap: Any, max_retries: int | None = 0) -> ClaudeAdapter:
    env = {"ANTHROPIC_BASE_URL": server.url, "ANTHROPIC_API_KEY": "sk-fake-limits", **trap.env()}
    return ClaudeAdapter(cli_path=path, env=env, start_timeout=90.0, max_retries=max_retries)


def aider(path: str, server: FakeOpenAIServer, trap: Any, cwd: Path, prices: Path | None = None) -> AiderAdapter:
    extra = ["--model-metadata-file", str(prices)] if prices is not None else []
    cwd.mkdir(exist_ok=True)
    return AiderAdapter(path, model="openai/fake-model", api_base=server.url + "/v1", api_key="sk-fake",
                        env=trap.env(), cwd=str(cwd), extra_args=extra, start_timeout=90.0)


def price_file(tmp_path: Path) -> Path:
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({"openai/fake-model": {
        "max_input_tokens": 100000, "max_output_tokens": 4096, "max_tokens": 4096, "mode": "chat",
        "litellm_provider": "openai", "input_cost_per_token": INPUT_PRICE, "output_cost_per_token": OUTPUT_PRICE}}))
    return path


def one_turn_cost(make: Callable[[], Adapter]) -> float:
    with ToolProcessPool(make(), 1) as pool:
        cost = pool.submit("measure").result(120).cost_usd
    assert isinstance(cost, float) and cost > 0
    return cost


def check_budget_stop(make: Callable[[], Adapter]) -> list[Response]:
    """A budget just above one turn's measured cost: the second request spends it, a third fails."""
    one_turn = one_turn_cost(make)
    with ToolProcessPool(make(), 1, max_cost_usd=one_turn * 1.5) as pool:
        served = [pool.submit(f"task {n}").result(120) for n in range(2)]  # the second starts under budget
        with pytest.raises(BudgetExceeded, match="max_cost_usd") as info:
            pool.submit("task 2")
        costs = [r.cost_usd or 0.0 for r in served]
        assert all(c > 0 for c in costs) and not any(r.is_error for r in served)
        assert pool.stats()["cost_usd"] == pytest.approx(sum(costs)) == pytest.approx(info.value.spent)
        assert sum(costs) >= one_turn * 1.5
    return served


def test_claude_budget_stops_the_pool(claude_path: str, proxy_trap: Any) -> None:
    with FakeAnthropicServer() as server:
        costs = [r.cost_usd for r in check_budget_stop(lambda: claude(claude_path, server, proxy_trap))]
        assert len([r for r in server.requests if r.path == "/v1/messages"]) == 3  # measure + 2 served
    # Each turn's own cost, not claude's running total: the second turn costs about what the first did.
    assert costs[1] == pytest.approx(costs[0], rel=0.2)


def test_claude_budget_fails_the_queued_requests(claude_path: str, proxy_trap: Any) -> None:
    with FakeAnthropicServer() as server:
        make = lambda: claude(claude_path, server, proxy_trap)  # noqa: E731
        one_turn = one_turn_cost(make)
        with ToolProcessPool(make(), 1, max_cost_usd=one_turn * 1.5) as pool:
            futures = [pool.submit(f"task {n}") for n in range(4)]
            served = [f.result(120) for f in futures[:2]]
            for fut in futures[2:]:
                with pytest.raises(BudgetExceeded, match="max_cost_usd"):
                    fut.result(60)
            assert pool.stats()["cost_usd"] == pytest.approx(sum(r.cost_usd or 0.0 for r in served))


def test_aider_budget_stops_the_pool(aider_path: str, proxy_trap: Any, tmp_path: Path) -> None:
    prices = price_file(tmp_path)
    with FakeOpenAIServer() as server:
        served = check_budget_stop(lambda: aider(aider_path, server, proxy_trap, tmp_path / "work", prices))
        assert len(server.requests) == 3  # measure + 2 served
    for r in served:  # aider's cost follows from the prices it was given and the tokens it counted
        assert r.cost_usd == pytest.approx((r.tokens_sent or 0) * INPUT_PRICE + (r.tokens_received or 0) * OUTPUT_PRICE)


def test_aider_without_model_prices_costs_nothing(aider_path: str, proxy_trap: Any, tmp_path: Path) -> None:
    """The fake model has no price of its own: no cost, so a budget never stops aider without one."""
    with FakeOpenAIServer() as server:
        with ToolProcessPool(aider(aider_path, server, proxy_trap, tmp_path / "work"), 1,
                             max_cost_usd=1e-9) as pool:
            answers = [pool.submit(f"task {n}").result(120) for n in range(2)]
            assert [r.cost_usd for r in answers] == [0.0, 0.0] and pool.stats()["cost_usd"] == 0.0


def wait_paused(pool: ToolProcessPool, limited: threading.Event) -> float:
    """Wait for the rate_limited event and the pause it starts (counted after the pause is set)."""
    assert limited.wait(120), "no rate_limited event"
    deadline = time.monotonic() + 10
    while pool.stats()["rate_limited"] < 1:
        assert time.monotonic() < deadline, "rate_limited event but no pause"
        time.sleep(0.01)
    return time.monotonic()


def listen(pool: ToolProcessPool) -> tuple[threading.Event, list[dict[str, Any]]]:
    limited, seen = threading.Event(), []

    def on_event(event: str, info: dict[str, Any]) -> None:
        if event == "rate_limited":
            seen.append(info)
            limited.set()
    pool.subscribe(on_event)
    return limited, seen


def sent_at(server: Any, text: str) -> float:
    [request] = [r for r in server.requests if text in r.user_text]
    return float(request.timestamp)


def test_claude_rate_limit_holds_back_the_other_instance(claude_path: str, proxy_trap: Any) -> None:
    with FakeAnthropicServer() as server:
        # claude retries by itself (max_retries None: its default), after the server's retry-after.
        with ToolProcessPool(claude(claude_path, server, proxy_trap, max_retries=None), 2) as pool:
            limited, seen = listen(pool)
            # The retried call answers slowly: the first instance is still busy when the pause ends,
            # so the second request goes to the other one, idle all along: only the pause held it.
            server.script(Error(429, retry_after=2), Reply("ECHO: first", delay=3.0))
            first = pool.submit("first")
            paused_at = wait_paused(pool, limited)
            second = pool.submit("second")
            answers = first.result(120), second.result(120)
            stats = pool.stats()
    assert [r.text for r in answers] == ["ECHO: first", "ECHO: second"] and answers[0].index != answers[1].index
    assert seen[0]["status"] == 429 and seen[0]["retry_after"] == pytest.approx(2.0)
    assert [r["error_status"] for r in answers[0].meta["api_retries"]] == [429]
    assert stats["rate_limited"] >= 1
    gap = sent_at(server, "second") - paused_at
    assert gap >= 1.5, f"the other instance was sent {gap:.2f}s after the limit (retry-after 2 s)"


def test_aider_rate_limit_holds_back_the_other_instance(aider_path: str, proxy_trap: Any, tmp_path: Path) -> None:
    with FakeOpenAIServer() as server:
        with ToolProcessPool(aider(aider_path, server, proxy_trap, tmp_path / "work"), 2) as pool:
            limited, seen = listen(pool)
            # aider's SDK retries twice in silence, then aider reports the RateLimitError.
            server.script(*[Error(429, retry_after=0.2)] * 3)
            first = pool.submit("first")
            paused_at = wait_paused(pool, limited)
            second = pool.submit("second")
            failed = first.exception(120)  # aider's default: a retried API error fails the request
            answer = second.result(120)
            stats = pool.stats()
    assert failed is not None and "RateLimitError" in str(failed)
    assert answer.text == "ECHO: second" and not answer.is_error
    assert seen[0]["status"] == 429 and seen[0]["retry_after"] is None
    assert stats["rate_limited"] >= 1
    gap = sent_at(server, "second") - paused_at
    assert gap >= 0.8, f"the other instance was sent {gap:.2f}s after the limit (backoff >= 1 s)"
