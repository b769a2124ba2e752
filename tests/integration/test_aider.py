"""The real aider CLI in a pool, against toolpool.testing.FakeOpenAIServer (offline).

Every aider process gets HTTP(S)_PROXY and ALL_PROXY pointing at the shared
``proxy_trap`` on 127.0.0.1 (the fake itself is reached through NO_PROXY), so
an unexpected fetch from aider cannot leave the machine and fails the test
that caused it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from toolpool.adapters import AiderAdapter
from toolpool.adapters.aider import AiderApiError, aider_command
from toolpool.errors import InstanceCrashed
from toolpool.states import State
from toolpool.testing import FakeOpenAIServer, Reply

from .conftest import ProxyTrap

pytestmark = pytest.mark.realtools

MODEL = "openai/fake-model"
SECRET = "sk-test-secret-4242"


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer() as s:
        yield s


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


@pytest.fixture
def git_repo(tmp_path) -> str:
    repo = str(tmp_path / "repo")
    os.makedirs(repo)
    _write(os.path.join(repo, "calc.py"), "def add(a, b):\n    return a + b\n")
    _write(os.path.join(repo, "README.md"), "# calc\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", "-c", "init.defaultBranch=main"]
    for args in (["init", "-q"], ["add", "."], ["commit", "-qm", "init"]):
        subprocess.run(git + args, cwd=repo, check=True)
    return repo


def adapter(aider_path: str, server: FakeOpenAIServer, trap: ProxyTrap, cwd: str, **kw: Any) -> AiderAdapter:
    proxy = trap.env()
    kw.setdefault("start_timeout", 45.0)
    return AiderAdapter(aider_path, model=MODEL, api_base=server.url + "/v1", api_key=SECRET, cwd=cwd,
                        env=proxy, **kw)


def generations(server: FakeOpenAIServer) -> list[Any]:
    return [r for r in server.requests if r.path.endswith("/chat/completions")]


def chat(request: Any) -> list[dict[str, str]]:
    """The conversation part of a request (aider's own set-up messages dropped)."""
    return [m for m in request.messages if m["role"] in ("user", "assistant")]


def wait_idle(pool: Any, index: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while pool.instances()[index].state is not State.IDLE:
        assert time.monotonic() < deadline, f"instance {index} is {pool.instances()[index].state}"
        time.sleep(0.02)


@pytest.mark.timeout(90)
def test_conversations_in_a_git_repo(aider_path, server, proxy_trap, git_repo, make_pool):
    t0 = time.monotonic()
    pool = make_pool(adapter(aider_path, server, proxy_trap, git_repo), count=2, restart=False)
    started = time.monotonic() - t0

    # Two instances, three turns each, run side by side; each keeps its own context.
    first_turn: list[float] = []
    for turn in range(3):
        futures = {i: pool.submit(f"instance {i} turn {turn}", timeout=30, instance=i) for i in (0, 1)}
        for i, fut in futures.items():
            r = fut.result(40)
            assert r.text == f"ECHO: instance {i} turn {turn}"
            assert r.index == i and r.tokens_sent > 500 and r.tokens_received > 0  # aider counts them itself
            assert f"Tokens: {r.tokens_sent} sent, {r.tokens_received} received.\n" in r.raw.decode()
            assert r.meta["files"] == [] and r.meta["interrupted"] is False
            if turn == 0:
                first_turn.append(r.elapsed)
    print(f"aider pool of 2 ready in {started:.2f}s (with /tokens warm-up); first prompts "
          f"{', '.join(f'{e:.2f}s' for e in first_turn)}")
    assert max(first_turn) < 10.0  # loose: the warm-up already paid for imports and the repo map
    for i in (0, 1):
        last = [r for r in generations(server) if r.user_text.startswith(f"instance {i} turn 2")][0]
        history = [m["content"] for m in chat(last)]
        k = history.index(f"instance {i} turn 0")
        assert history[k:k + 4] == [f"instance {i} turn 0", f"ECHO: instance {i} turn 0",
                               f"instance {i} turn 1", f"ECHO: instance {i} turn 1"]
        assert not any(f"instance {1 - i}" in text for text in history)

    # Exact reply text: no token line, no file list, no prompt, no blank lines around it.
    server.script("Two lines,\n  the second indented.\n")
    r = pool.ask(0, "say two lines", timeout=30)
    assert r.text == "Two lines,\n  the second indented."
    assert b"Tokens: " in r.raw and "Tokens" not in r.text
    # A reply line that looks like aider's prompt, then a pause in the stream, is not the end.
    server.script(Reply("quot:\n> and the rest", chunk_delay=0.4))  # 8-char chunks: "quot:\n> " first
    assert pool.ask(0, "quote something", timeout=30).text == "quot:\n> and the rest"

    # A multi-line prompt is one message (aider appends one newline); "/" and "{" starts are text.
    before = len(generations(server))
    assert pool.ask(0, "line one\nline two\n\nline four", timeout=30).text == "ECHO: line one"
    assert pool.ask(0, "/ls is not a command here", timeout=30).text == "ECHO: /ls is not a command here"
    assert pool.ask(0, "{json", timeout=30).text == "ECHO: {json"
    sent = generations(server)[before:]
    assert len(sent) == 3
    last = chat(generations(server)[-1])
    assert [m["content"] for m in last[-5:-1]] == [
        "line one\nline two\n\nline four\n", "ECHO: line one",
        " /ls is not a command here", "ECHO: /ls is not a command here"]
    assert last[-1]["content"].startswith("{json\n")  # the newest message also carries aider's reminder

    # Local commands run in aider: no model call; the chat's files land in meta.
    before = len(generations(server))
    r = pool.ask(1, aider_command("/add", "calc.py"), timeout=30)
    assert r.text == "Added calc.py to the chat" and r.meta["files"] == ["calc.py"]
    assert r.tokens_sent is None
    r = pool.ask(1, aider_command("/ls"), timeout=30)
    assert "Files in chat:\n\n  calc.py" in r.text and "README.md" in r.text
    assert len(generations(server)) == before
    r = pool.ask(1, "what does calc do", timeout=30)
    assert r.text == "ECHO: what does calc do" and r.meta["files"] == ["calc.py"]
    assert "def add(a, b):" in json.dumps(generations(server)[-1].messages)  # the file went to the model

    # An idle instance answers the liveness probe (an empty line re-prompts).
    requests = pool.instances()[0].requests
    assert pool.instances()[0].probe(timeout=10) is True
    assert pool.instances()[0].requests == requests and pool.instances()[0].state is State.IDLE
    assert pool.ask(0, "still fine", timeout=30).text == "ECHO: still fine"

    # The key is in aider's environment, never in argv, describe() or the status dump.
    status = json.dumps(pool.get_status())
    assert SECRET not in status and SECRET not in " ".join(pool.adapter.command(0))
    assert pool.adapter.describe()["api_key"] == "***"
    assert not os.path.exists(os.path.join(git_repo, ".aider.chat.history.md"))  # history kept private
    assert subprocess.run(["git", "status", "--porcelain"], cwd=git_repo, capture_output=True,
                          text=True).stdout.strip() in ("", "?? .aider.tags.cache.v4/")


@pytest.mark.timeout(60)
def test_non_git_dir_with_user_config(aider_path, server, proxy_trap, tmp_path, make_pool, monkeypatch):
    # The user's ~/.aider.conf.yml still applies through the private HOME, and
    # the user's HOME gets nothing written to it.
    user_home = tmp_path / "user-home"
    user_home.mkdir()
    _write(str(user_home / ".aider.conf.yml"), "chat-mode: ask\n")
    monkeypatch.setenv("HOME", str(user_home))
    work = tmp_path / "work"
    work.mkdir()
    _write(str(work / "notes.txt"), "remember the milk\n")
    ad = adapter(aider_path, server, proxy_trap, str(work), files=["notes.txt"])
    assert "--no-git" in ad.command(0)
    pool = make_pool(ad, count=1, restart=False)

    r = pool.ask(0, "first\nsecond", timeout=30)  # ask-mode continuation prompts ("ask> ask> ask> ")
    assert r.text == "ECHO: first"
    assert r.meta["mode"] == "ask" and r.meta["files"] == ["notes.txt"]
    assert chat(generations(server)[-1])[-1]["content"].startswith("first\nsecond\n")
    r = pool.ask(0, "again", timeout=30)
    assert r.text == "ECHO: again" and [m["content"] for m in chat(generations(server)[-1])][-3:-1] == [
        "first\nsecond\n", "ECHO: first"]
    assert not (work / ".git").exists()
    assert sorted(os.listdir(user_home)) == [".aider.conf.yml"]


@pytest.mark.timeout(90)
def test_interrupts_crash_and_api_errors(aider_path, server, proxy_trap, git_repo, make_pool):
    pool = make_pool(adapter(aider_path, server, proxy_trap, git_repo), count=2, restart=False)

    # Interrupt while the server has not answered yet: an empty, interrupted response.
    server.script(Reply("too late", delay=30))
    n = len(generations(server))
    pool.send_prompt(0, "slow one")
    server.wait_for_requests(n + 1, timeout=15, path="/v1/chat/completions")
    t = time.monotonic()
    assert pool.interrupt(0)
    r = pool.read_response(0, timeout=10)
    assert r.meta["interrupted"] is True and r.is_error and r.text == ""
    assert time.monotonic() - t < 3.0

    # Interrupt again mid-stream, at once: the adapter holds the SIGINT back
    # until 2.5 s after the previous one (two within 2 s would end aider).
    words = " ".join(f"w{i}" for i in range(60))
    server.script(Reply(words, chunk_delay=0.15))
    pool.send_prompt(0, "stream slowly")
    server.wait_for_requests(n + 2, timeout=15, path="/v1/chat/completions")
    assert pool.interrupt(0)
    r = pool.read_response(0, timeout=15)
    assert r.meta["interrupted"] is True
    assert r.text and words.startswith(r.text) and r.text != words
    assert time.monotonic() - t >= 2.5
    assert pool.ask(0, "after the interrupts", timeout=30).text == "ECHO: after the interrupts"

    # A rejected request (no retry): an error at once, and the instance stays usable.
    server.fail_next(status=401)
    with pytest.raises(AiderApiError, match="AuthenticationError") as info:
        pool.ask(1, "who am i", timeout=30)
    assert info.value.retrying is False
    assert pool.ask(1, "retry me", timeout=30).text == "ECHO: retry me"

    # A crash mid-turn (SIGKILL while the server delays) fails the request at once.
    server.script(Reply("never sent", delay=30))
    n = len(generations(server))
    pool.send_prompt(1, "doomed")
    server.wait_for_requests(n + 1, timeout=15, path="/v1/chat/completions")
    os.kill(pool.instances()[1].pid, signal.SIGKILL)
    t = time.monotonic()
    with pytest.raises(InstanceCrashed):
        pool.read_response(1, timeout=10)
    assert time.monotonic() - t < 2.0

    # A dead server: aider would retry for ~77 s; the adapter fails the turn at
    # its first retry announcement (after the OpenAI client's own retries).
    port = server.port
    server.close()
    t = time.monotonic()
    with pytest.raises(AiderApiError, match="Connection error") as info:
        pool.ask(0, "anyone there?", timeout=40)
    assert info.value.retrying is True
    waited = time.monotonic() - t
    print(f"dead server reported after {waited:.2f}s")
    assert waited < 20.0
    assert pool.interrupt(0)  # stops aider's retry loop
    wait_idle(pool, 0)
    with FakeOpenAIServer(port=port) as revived:
        assert pool.ask(0, "back again", timeout=30).text == "ECHO: back again"
        assert len(generations(revived)) == 1
