"""Scripted agentic turns of toolpool.testing's fakes, driving the real claude and aider.

The fakes script the model: claude runs the tool calls the fake sends (its Bash tool, for
real, in the instance's cwd) and the fake checks the tool_result that comes back; aider
applies the edits the fake sends, to files on disk. Nothing leaves 127.0.0.1 (proxy trap).
"""

from __future__ import annotations

import os
import subprocess

import pytest

from toolpool import ToolProcessPool
from toolpool.adapters import AiderAdapter, ClaudeAdapter
from toolpool.testing import (
    Drop,
    Error,
    FakeAnthropicServer,
    FakeOpenAIServer,
    Hang,
    ToolUse,
    search_replace,
    whole_file,
)

pytestmark = [pytest.mark.realtools, pytest.mark.timeout(120)]

ALLOW_BASH = ["--allowedTools", "Bash"]


def claude_adapter(claude_path, server, trap, cwd, env_extra=None, **options) -> ClaudeAdapter:
    env = {"ANTHROPIC_BASE_URL": server.url, "ANTHROPIC_API_KEY": "sk-fake-agentic", **trap.env(), **(env_extra or {})}
    return ClaudeAdapter(cli_path=claude_path, env=env, cwd=str(cwd), start_timeout=60.0, max_retries=0, **options)


def test_claude_runs_a_scripted_bash_call_and_its_result_reaches_the_fake(claude_path, proxy_trap, tmp_path):
    command = "echo made-by-bash > made.txt && cat made.txt"
    with FakeAnthropicServer() as server:
        server.on_prompt("make the file", ToolUse("Bash", {"command": command, "description": "write a file"},
                                                  expect="made-by-bash"), "the file is made")
        with ToolProcessPool(claude_adapter(claude_path, server, proxy_trap, tmp_path, extra_args=ALLOW_BASH),
                             count=1) as pool:
            response = pool.ask(0, "please make the file", timeout=90)
            unscripted = pool.ask(0, "anything else?", timeout=90)
        (result,) = server.tool_results
    assert response.is_error is False and response.text == "the file is made"
    assert (tmp_path / "made.txt").read_text() == "made-by-bash\n"  # claude really ran it, in its cwd
    assert result.name == "Bash" and result.input["command"] == command and not result.is_error
    assert result.text.strip() == "made-by-bash"
    kinds = [(r.kind, r.request.user_text if not r.request.tool_results else "<tool_result>")
             for r in server.replies]
    assert kinds == [("tool_use", "please make the file"), ("reply", "<tool_result>"),
                     ("reply", "anything else?")]
    assert unscripted.text == "ECHO: anything else?"


def test_concurrent_claude_conversations_keep_their_own_steps(claude_path, proxy_trap, tmp_path):
    with FakeAnthropicServer() as server:
        server.script([ToolUse("Bash", {"command": "echo one"}, expect="one"), "one done"],
                      [ToolUse("Bash", {"command": "echo two"}, expect="two"), "two done"])
        with ToolProcessPool(claude_adapter(claude_path, server, proxy_trap, tmp_path, extra_args=ALLOW_BASH),
                             count=2) as pool:
            responses = list(pool.map(["first job", "second job"], timeout=90))
        results = server.tool_results
    assert sorted(r.text for r in responses) == ["one done", "two done"]
    assert sorted(r.text.strip() for r in results) == ["one", "two"]
    # each turn's final answer came from the conversation whose tool call it had run
    for response in responses:
        word = response.text.split()[0]
        (served,) = [s for s in server.replies if s.text == response.text]
        assert served.request.tool_results[0].text.strip() == word


def test_claude_denied_tool_call_comes_back_as_an_error_result(claude_path, proxy_trap, tmp_path):
    """Without permission claude refuses the call; the fake sees the refusal as its tool_result."""
    with FakeAnthropicServer() as server:
        server.on_prompt("delete", ToolUse("Bash", {"command": "rm -rf precious"}, expect=lambda r: r.is_error),
                         "could not delete")
        (tmp_path / "precious").mkdir()
        adapter = claude_adapter(claude_path, server, proxy_trap, tmp_path, extra_args=["--disallowedTools", "Bash"])
        with ToolProcessPool(adapter, count=1) as pool:
            response = pool.ask(0, "delete it", timeout=90)
        (result,) = server.tool_results
    assert response.text == "could not delete" and result.is_error
    assert (tmp_path / "precious").is_dir()


def test_claude_meets_each_scripted_api_fault(claude_path, proxy_trap, tmp_path):
    """Errors in the real API's shape reach claude's result; a hang ends at claude's own timeout."""
    with FakeAnthropicServer() as server:
        adapter = claude_adapter(claude_path, server, proxy_trap, tmp_path, no_session_persistence=True,
                                 env_extra={"API_TIMEOUT_MS": "3000"})
        with ToolProcessPool(adapter, count=1) as pool:
            outcomes = {}
            for name, step in (("overloaded", Error(529)), ("rate", Error(429, retry_after=1)),
                               ("key", Error(401)), ("hang", Hang()), ("drop", Drop("cut mid reply", after=1))):
                server.script(step)
                outcomes[name] = pool.ask(0, f"try {name}", timeout=60)
    assert all(outcomes[n].is_error for n in ("overloaded", "rate", "key", "hang"))
    assert "529" in outcomes["overloaded"].text and "Overloaded" in outcomes["overloaded"].text
    assert "429" in outcomes["rate"].text and "rate limit" in outcomes["rate"].text
    assert "API key" in outcomes["key"].text
    assert "timed out" in outcomes["hang"].text
    (hang,) = [r for r in server.replies if r.kind == "hang"]
    assert hang.ended == "client_closed" and 2.5 < hang.duration < 30  # claude gave up, at its timeout
    # a stream cut mid-reply: claude retries it (even with retries off), and the retry is answered
    assert outcomes["drop"].is_error is False and outcomes["drop"].text == "ECHO: try drop"
    assert [r.kind for r in server.replies if r.request.user_text == "try drop"] == ["drop", "reply"]


# -- aider -----------------------------------------------------------------------------------


@pytest.fixture
def repo(tmp_path) -> str:
    path = tmp_path / "repo"
    path.mkdir()
    (path / "calc.py").write_text("def add(a, b):\n    return a - b\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", "-c", "init.defaultBranch=main"]
    for args in (["init", "-q"], ["add", "."], ["commit", "-qm", "init"]):
        subprocess.run(git + args, cwd=path, check=True)
    return str(path)


def aider_adapter(aider_path, server, trap, cwd, **options) -> AiderAdapter:
    return AiderAdapter(aider_path, model="openai/fake-model", api_base=server.url + "/v1", api_key="sk-fake",
                        cwd=cwd, env=trap.env(), files=["calc.py"], start_timeout=60.0, **options)


FIXED = "def add(a, b):\n    return a + b\n"


def test_aider_writes_a_scripted_whole_file_edit(aider_path, proxy_trap, repo):
    with FakeOpenAIServer() as server:
        server.on_prompt("fix add", whole_file("calc.py", FIXED, intro="Here is the fix."))
        with ToolProcessPool(aider_adapter(aider_path, server, proxy_trap, repo), count=1) as pool:
            response = pool.ask(0, "fix add in calc.py", timeout=90)
        (served,) = [r for r in server.replies if "fix add" in r.request.user_text]
    with open(os.path.join(repo, "calc.py")) as f:
        assert f.read() == FIXED
    assert "Applied edit to calc.py" in response.text and response.is_error is False
    assert served.usage["completion_tokens"] > 0 and server.total_usage["prompt_tokens"] > 0


def test_aider_applies_a_scripted_search_replace_edit(aider_path, proxy_trap, repo):
    with FakeOpenAIServer() as server:
        server.on_prompt("fix add", search_replace("calc.py", "    return a - b", "    return a + b"))
        adapter = aider_adapter(aider_path, server, proxy_trap, repo, edit_format="diff")
        with ToolProcessPool(adapter, count=1) as pool:
            response = pool.ask(0, "fix add in calc.py", timeout=90)
    with open(os.path.join(repo, "calc.py")) as f:
        assert f.read() == FIXED
    assert "Applied edit to calc.py" in response.text
