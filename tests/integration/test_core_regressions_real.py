"""Regression tests of issue 9 with the real aider and claude, against the offline fake servers.

- aider reads a multi-line ``{tag`` message line by line: a turn cut short
  while it still reads one must never let the rest of the message reach aider's
  top level, where every ``!`` line would run in a shell (case 2);
- claude runs a turn by itself when a ``run_in_background`` Bash task ends:
  it reaches subscribers as an unsolicited Response and shifts no answer (case 3);
- claude's ``result`` line repeats the reply: a reply over ``max_line_bytes``
  makes two over-long lines, and only its own request may fail (case 4).

Nothing leaves 127.0.0.1 (the shared proxy trap fails a test otherwise).
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import pytest

from toolpool import InstanceUnavailable, ProtocolError, ResponseTimeout, ToolProcessPool
from toolpool.adapters import AiderAdapter, ClaudeAdapter
from toolpool.testing import FakeAnthropicServer, FakeOpenAIServer, ToolUse

from .conftest import ProxyTrap

pytestmark = [pytest.mark.realtools, pytest.mark.timeout(150)]

BREAKOUT_LINES = 100_000


def state(pool: ToolProcessPool, index: int = 0) -> str:
    return str(pool.get_status()["instances"][index]["state"])


def wait_state(pool: ToolProcessPool, wanted: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while state(pool) != wanted:
        assert time.monotonic() < deadline, f"not {wanted} within {timeout}s: {pool.get_status()['instances'][0]}"
        time.sleep(0.02)


# ------------------------------------------------------------------ aider: a cut-short message never breaks out

@pytest.fixture
def openai():
    with FakeOpenAIServer() as server:
        yield server


def aider_pool(aider_path: str, server: FakeOpenAIServer, trap: ProxyTrap, cwd: str) -> ToolProcessPool:
    adapter = AiderAdapter(aider_path, model="openai/fake-model", api_base=server.url + "/v1",
                           api_key="sk-fake-breakout", cwd=cwd, env=trap.env(), start_timeout=60.0)
    return ToolProcessPool(adapter, count=1)


def breakout_message(target: str) -> str:
    """100k lines that each run ``touch`` if aider ever reads them at its top level."""
    return "\n".join(f"!touch {target}/f{n}" for n in range(BREAKOUT_LINES))


def model_calls_with(server: FakeOpenAIServer, needle: str) -> int:
    return sum(needle in (r.user_text or "") for r in server.requests if r.path.endswith("/chat/completions"))


def assert_no_breakout(pool: ToolProcessPool, server: FakeOpenAIServer, target: str) -> None:
    answer = pool.submit("hello after the cut", timeout=90).result(100)
    assert answer.text == "ECHO: hello after the cut"
    time.sleep(0.5)  # a shell a broken-out aider started would have written by now
    assert os.listdir(target) == [], f"{len(os.listdir(target))} of the message's !touch lines ran in a shell"
    assert model_calls_with(server, "touch") <= 1  # at most the whole message, never line by line


def test_aider_message_cut_by_a_submit_timeout_runs_none_of_its_lines(aider_path, openai, proxy_trap, tmp_path):
    target = tmp_path / "breakout"
    target.mkdir()
    with aider_pool(aider_path, openai, proxy_trap, str(tmp_path)) as pool:
        with pytest.raises(ResponseTimeout):
            pool.submit(breakout_message(str(target)), timeout=0.2).result(30)
        assert_no_breakout(pool, openai, str(target))


def test_aider_message_interrupted_while_read_runs_none_of_its_lines(aider_path, openai, proxy_trap, tmp_path):
    target = tmp_path / "breakout"
    target.mkdir()
    with aider_pool(aider_path, openai, proxy_trap, str(tmp_path)) as pool:
        pool.send_prompt(0, breakout_message(str(target)))
        time.sleep(0.1)
        assert pool.interrupt(0) is True
        with pytest.raises(InstanceUnavailable):  # replaced, never interrupted mid-block
            pool.read_response(0, timeout=30)
        assert_no_breakout(pool, openai, str(target))


# ------------------------------------------------------------------ claude: a turn it starts by itself

def claude_adapter(claude_path: str, server: FakeAnthropicServer, trap: ProxyTrap, cwd: Any,
                   **options: Any) -> ClaudeAdapter:
    env = {"ANTHROPIC_BASE_URL": server.url, "ANTHROPIC_API_KEY": "sk-fake-regressions", **trap.env()}
    return ClaudeAdapter(cli_path=claude_path, env=env, cwd=str(cwd), start_timeout=60.0, max_retries=0,
                         no_session_persistence=True, **options)


class Unsolicited:
    def __init__(self) -> None:
        self.responses: list[Any] = []
        self.arrived = threading.Event()

    def __call__(self, event: str, info: dict[str, Any]) -> None:
        if event == "unsolicited":
            self.responses.append(info["response"])
            self.arrived.set()


def background_job(server: FakeAnthropicServer, seconds: float) -> None:
    command = f"sleep {seconds}; echo background-done"
    server.on_prompt("start the job", ToolUse("Bash", {"command": command, "description": "a background job",
                                                       "run_in_background": True}), "job started", times=1)


def test_claude_background_task_turn_reaches_subscribers_and_shifts_no_answer(claude_path, proxy_trap, tmp_path):
    heard = Unsolicited()
    with FakeAnthropicServer() as server:
        background_job(server, 1.0)
        adapter = claude_adapter(claude_path, server, proxy_trap, tmp_path, allowed_tools=["Bash"])
        with ToolProcessPool(adapter, count=1, on_event=heard) as pool:
            assert pool.ask(0, "please start the job", timeout=60).text == "job started"
            assert heard.arrived.wait(30), "claude's own turn (the task notification) never reached subscribers"
            answers = [pool.ask(0, f"later question {n}", timeout=60).text for n in range(3)]
    assert answers == [f"ECHO: later question {n}" for n in range(3)]
    (own,) = heard.responses
    assert own.unsolicited is True and own.index == 0
    assert "task-notification" in own.text  # the fake echoed the notification claude sent it
    assert any(r.user_text and "<task-notification>" in r.user_text for r in server.requests)


def test_claude_background_task_ending_while_prompts_are_sent(claude_path, proxy_trap, tmp_path):
    """Prompts sent back to back across the moment the background task ends: each gets its own answer."""
    heard = Unsolicited()
    with FakeAnthropicServer() as server:
        background_job(server, 1.0)
        adapter = claude_adapter(claude_path, server, proxy_trap, tmp_path, allowed_tools=["Bash"])
        with ToolProcessPool(adapter, count=1, on_event=heard) as pool:
            assert pool.ask(0, "please start the job", timeout=60).text == "job started"
            prompts = []
            deadline = time.monotonic() + 30
            while not heard.arrived.is_set() and time.monotonic() < deadline:
                prompts.append(f"meanwhile {len(prompts)}")
                futures = pool.submit(prompts[-1], timeout=60)
                assert futures.result(70).text == f"ECHO: {prompts[-1]}"
            assert heard.arrived.is_set(), "claude's own turn never reached subscribers"
            after = [pool.submit(f"after {n}", timeout=60) for n in range(3)]
            assert [f.result(70).text for f in after] == [f"ECHO: after {n}" for n in range(3)]
    assert len(prompts) >= 3 and len(heard.responses) == 1


# ------------------------------------------------------------------ claude: over-long lines

def test_claude_reply_over_max_line_bytes_fails_only_its_request(claude_path, proxy_trap, tmp_path):
    with FakeAnthropicServer() as server:
        server.on_prompt("the long one", "W" * 40_000, times=2)
        # Above claude's own longest lines (its initialize answer is ~10 KB), below the reply.
        adapter = claude_adapter(claude_path, server, proxy_trap, tmp_path, max_line_bytes=16384)
        with ToolProcessPool(adapter, count=1) as pool:
            with pytest.raises(ProtocolError, match=r"max_line_bytes=16384"):
                pool.ask(0, "the long one", timeout=60)
            wait_state(pool, "IDLE", 10.0)
            answers = [pool.ask(0, f"short {n}", timeout=60).text for n in range(3)]
            queued = [pool.submit(p, timeout=60) for p in ("the long one again", "queued short")]
            with pytest.raises(ProtocolError, match=r"max_line_bytes=16384"):
                queued[0].result(70)
            last = queued[1].result(70).text
    assert answers == [f"ECHO: short {n}" for n in range(3)]
    assert last == "ECHO: queued short"
