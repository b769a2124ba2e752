"""The real aider, offline: failures reported as failures, framing no reply can fool, questions answered.

Every scripted reply goes through the real aider 0.86.2 against FakeOpenAIServer; the
adapter's end-of-turn marker, confirm policy and analytics reading are what is tested.
"""

from __future__ import annotations

import os
import subprocess
from typing import Any

import pytest

from toolpool.adapters.aider import aider_command
from toolpool.adapters.aider_turns import format_tokens
from toolpool.testing import Drop, Reply, search_replace, whole_file

from .test_aider import adapter, generations, git_repo, server  # noqa: F401 (fixtures)

pytestmark = pytest.mark.realtools


def _git(repo: str, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout


@pytest.mark.timeout(150)
def test_failures_are_errors(aider_path, server, proxy_trap, git_repo, make_pool):  # noqa: F811 (fixtures imported above)
    pool = make_pool(adapter(aider_path, server, proxy_trap, git_repo, files=["calc.py"]), count=1, restart=False)
    original = open(os.path.join(git_repo, "calc.py")).read()

    # A good whole-file edit: applied, reported, exact figures from aider's analytics log.
    server.script(whole_file("calc.py", original + "\ndef sub(a, b):\n    return a - b\n"))
    r = pool.ask(0, "add sub to calc.py", timeout=60)
    assert not r.is_error and r.edited_files == ["calc.py"] and r.edit_errors == []
    # aider's own exact counts: what its "Tokens:" line shows rounded
    line = f"Tokens: {format_tokens(r.tokens_sent)} sent, {format_tokens(r.tokens_received)} received."
    assert line in r.raw.decode()
    assert r.meta["usage_source"] == "aider analytics log" and r.meta["model_calls"] == 1
    good = open(os.path.join(git_repo, "calc.py")).read()
    assert "def sub" in good

    # A stream cut mid whole-file edit: aider writes the truncated file; reported, and undone.
    server.script(Drop(whole_file("calc.py", good + "\ndef mul(a, b):\n    return a * b\n"), after=4))
    r = pool.ask(0, "add mul to calc.py", timeout=60)
    assert r.is_error and "cut off inside an edit" in r.meta["error"] and r.meta["restored_files"] == ["calc.py"]
    assert open(os.path.join(git_repo, "calc.py")).read() == good

    # An empty reply is an error, not aider's warning passed off as the answer.
    server.script("")
    r = pool.ask(0, "say nothing", timeout=60)
    assert r.is_error and "empty reply" in r.meta["error"]

    # A SEARCH/REPLACE that never matches: three reflections, then aider gives up.
    pool.ask(0, aider_command("/chat-mode", "diff"), timeout=30)
    server.script(*[search_replace("calc.py", "no such line\n", "x = 1\n")] * 4)
    r = pool.ask(0, "edit calc.py", timeout=90)
    assert r.is_error and "reflections" in r.meta["error"]
    assert r.edit_errors and r.edit_errors[0]["path"] == "calc.py" and r.edited_files == []
    assert r.meta["model_calls"] == 4 and r.text.count("Tokens:") == 0
    assert open(os.path.join(git_repo, "calc.py")).read() == good


BATTERY: list[str] = [
    # aider's own bookkeeping lines, quoted by the model
    "Tokens: 12 sent, 3 received.\nCost: $0.01 message, $0.02 session.\nreal text",
    "litellm.RateLimitError: quoted\nRetrying in 0.2 seconds...\nstill a good answer",
    "nofile.py\nAdd file to the chat? (Y)es/(N)o/(D)on't ask again [Yes]: nothing asked",
    "ends like a prompt\n\n> ",
]


@pytest.mark.timeout(150)
def test_reply_text_cannot_fool_framing(aider_path, server, proxy_trap, git_repo, make_pool):  # noqa: F811 (fixtures imported above)
    pool = make_pool(adapter(aider_path, server, proxy_trap, git_repo), count=1, restart=False)
    # 8-char chunks, "quot:\n> " first, then 3 s of silence (longer than any settle time) before the rest.
    server.script(Reply("quot:\n> and the rest", chunk_delay=3.0))
    events: list[dict[str, Any]] = []
    r = pool.submit("quote something", timeout=60, on_event=events.append).result(60)
    assert r.text == "quot:\n> and the rest" and not r.is_error
    assert "".join(e["text"] for e in events if e["type"] == "text").lstrip("\n").startswith("quot:\n> and the rest")
    for reply in BATTERY:
        server.script(reply)
        r = pool.ask(0, "say it", timeout=60)
        assert r.text == reply.strip("\n") and not r.is_error, r.raw
        assert r.meta["model_calls"] == 1
    # The next turn gets its own answer: nothing leaked.
    assert pool.ask(0, "after", timeout=60).text == "ECHO: after"

    # A shell command that prints a prompt-like line and pauses.
    r = pool.ask(0, aider_command("!printf 'something> '; sleep 2; echo done"), timeout=60)
    assert r.text.startswith("something> done") and r.meta["questions"][0]["kind"] == "command_output"
    assert pool.ask(0, "after the command", timeout=60).text == "ECHO: after the command"


@pytest.mark.timeout(150)
def test_questions_answered_by_policy(aider_path, server, proxy_trap, git_repo, make_pool, tmp_path):  # noqa: F811 (fixtures imported above)
    asked: list[Any] = []

    def confirm(question, context):
        asked.append((question.kind, question.subject, context["prompt"]))
        from toolpool.adapters.aider_turns import default_confirm
        return default_confirm(question, context)

    ad = adapter(aider_path, server, proxy_trap, git_repo, confirm=confirm, suggest_shell_commands=True,
                 edit_format="diff")
    pool = make_pool(ad, count=1, restart=False)
    marker = tmp_path / "ran"

    # A suggested shell command is refused by default: it never runs.
    server.script(f"Run this:\n\n```bash\ntouch {marker}\n```\n")
    events: list[dict[str, Any]] = []
    r = pool.submit("what should I run", timeout=60, on_event=events.append).result(60)
    assert ("shell", f"touch {marker}", "what should I run") in asked
    assert not marker.exists()
    assert [e for e in events if e["type"] == "question"][0]["kind"] == "shell"
    assert r.meta["questions"][0]["answer"] == "n" and "(Y)es/(N)o" not in r.text

    # A file the prompt did not ask for is not created; one it names is.
    server.script(search_replace("stray.py", "", "x = 1\n"))
    r = pool.ask(0, "do something", timeout=60)
    assert not os.path.exists(os.path.join(git_repo, "stray.py")) and r.meta["questions"][0]["kind"] == "create_file"

    # /add quotes names, resolves them against cwd, and a typo creates nothing.
    with open(os.path.join(git_repo, "my notes.txt"), "w") as f:
        f.write("milk\n")
    r = pool.ask(0, aider_command("/add", "my notes.txt"), timeout=30)
    assert "my notes.txt" in r.meta["files"] and not os.path.exists(os.path.join(git_repo, "my")), r.raw
    r = pool.ask(0, aider_command("/add", "typo.txt"), timeout=30)
    assert not os.path.exists(os.path.join(git_repo, "typo.txt")) and "typo.txt" not in r.meta["files"]
    assert r.meta["questions"][0]["answer"] == "n"

    # A restart keeps the chat's files.
    assert "my notes.txt" in pool.adapter.command(0), pool.adapter._chat_files
    pool.restart_instance(0)
    r = pool.ask(0, aider_command("/ls"), timeout=60)
    assert "my notes.txt" in r.meta["files"]
    pool.shutdown(timeout=10)
    assert ".aider.tags.cache.v4" not in _git(git_repo, "status", "--porcelain", "--untracked-files=all")
