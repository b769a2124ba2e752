"""Prompts as content blocks, first-class results, fail-fast defaults and sessions that cannot die,
with the real claude against the offline FakeAnthropicServer."""

from __future__ import annotations

import base64
import time
import uuid

import pytest

from toolpool import SpawnError
from toolpool.adapters.claude_content import Image
from toolpool.testing import Hang, Stall, ToolUse

from . import test_claude as _shared

pytestmark = [pytest.mark.realtools, pytest.mark.timeout(180)]

server = _shared.server
claude = _shared.claude

# A 1x1 PNG.
PIXEL = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAAB"
                         "JRU5ErkJggg==")


def generations(server, text=None):
    return [r for r in server.requests if r.path == "/v1/messages" and (text is None or r.user_text == text)]


def test_an_image_block_reaches_the_api_request(make_pool, claude, server):
    pool = make_pool(claude(), 1)
    r = pool.ask(0, ["what is in this picture?", Image(PIXEL, "image/png")], timeout=60)
    assert r.is_error is False
    (req,) = [q for q in generations(server) if "what is in this picture?" in str(q.messages)]
    images = req.blocks("image")
    assert images and images[-1]["source"]["data"] == base64.b64encode(PIXEL).decode()
    assert images[-1]["source"]["media_type"] == "image/png"


def test_max_turns_stop_is_a_clear_error(make_pool, claude, server):
    server.on_prompt("loop", ToolUse("Bash", {"command": "echo 1"}), ToolUse("Bash", {"command": "echo 2"}),
                     ToolUse("Bash", {"command": "echo 3"}), "never reached")
    pool = make_pool(claude(max_turns=1, allowed_tools=["Bash"]), 1)
    r = pool.ask(0, "loop", timeout=60)
    assert r.is_error is True and r.meta["subtype"] == "error_max_turns"
    assert "max_turns" in r.text and r.text.strip()
    assert r.tool_calls and r.tool_calls[0]["name"] == "Bash"


def test_a_resume_whose_transcript_is_gone_starts_fresh(make_pool, claude, server):
    adapter = claude(resume_on_restart=True)
    pool = make_pool(adapter, 1)
    first = pool.ask(0, "remember me", timeout=60)
    gone = str(uuid.uuid4())
    adapter._sessions[0] = gone  # as if the slot's last session had lost its transcript
    try:
        pool.restart_instance(0)  # this start resumes, and claude refuses: "No conversation found"
    except SpawnError as exc:
        assert "No conversation found" in str(exc)
        pool.restart_instance(0)  # the next start of the slot drops the resume
    r = pool.ask(0, "hello again", timeout=60)
    assert r.text == "ECHO: hello again" and r.session_id != first.session_id
    assert gone in r.meta["session_reset"] and "fresh session" in r.meta["session_reset"]
    assert pool.get_status()["instances"][0]["state"].lower() != "fatal"
    (req,) = generations(server, "hello again")
    assert "remember me" not in str(req.messages)


def test_a_persistent_529_is_an_error_within_30s(make_pool, claude, server):
    pool = make_pool(claude(), 1)  # the defaults: max_retries=2
    server.fail_next(status=529, times=10)
    t0 = time.monotonic()
    r = pool.ask(0, "busy?", timeout=90)
    took = time.monotonic() - t0
    assert r.is_error is True and "529" in r.text and took < 30, (took, r.text)
    assert len(r.meta["api_retries"]) == 2  # the retry events, with their status
    assert all(e.get("error_status") == 529 for e in r.meta["api_retries"]), r.meta["api_retries"]


def test_a_hanging_api_is_an_error_within_bounds(make_pool, claude, server):
    pool = make_pool(claude(api_timeout=3.0, max_retries=1), 1)
    server.script(Hang(), Hang())
    t0 = time.monotonic()
    r = pool.ask(0, "hello?", timeout=90)
    took = time.monotonic() - t0
    assert r.is_error is True and took < 20, (took, r.text)
    assert pool.ask(0, "after", timeout=60).text == "ECHO: after"


def test_a_stalled_stream_ends_the_turn_within_stall_timeout(make_pool, claude, server):
    pool = make_pool(claude(stall_timeout=3.0), 1)
    server.script(Stall("never finished", after=1))
    t0 = time.monotonic()
    r = pool.ask(0, "stall", timeout=90)
    took = time.monotonic() - t0
    assert r.is_error is True and r.meta["stalled"] is True and "stalled" in r.text
    assert 3.0 <= took < 10, took
    assert pool.ask(0, "after the stall", timeout=60).text == "ECHO: after the stall"  # the process goes on


def test_prompts_of_map_share_nothing_with_a_fresh_oneshot_pool(make_pool, claude, server):
    pool = make_pool(claude(mode="oneshot"), 2)
    texts = [r.text for r in pool.map([f"task {n}" for n in range(4)], timeout=60)]
    assert texts == [f"ECHO: task {n}" for n in range(4)]
    for n in range(4):
        (req,) = generations(server, f"task {n}")
        assert all(f"task {m}" not in str(req.messages) for m in range(4) if m != n)


@pytest.mark.slow
def test_an_idle_oneshot_pool_answers_after_60s(make_pool, claude, server):
    pool = make_pool(claude(mode="oneshot"), 2)
    time.sleep(60)  # a text-prompt claude -p would have died after 3 s without stdin
    health = pool.check_health()
    assert health["alive"] == 2 and health.get("fatal", 0) == 0, health
    r = pool.ask(0, "still warm?", timeout=60)
    assert r.text == "ECHO: still warm?" and r.timings.warm is True
    assert pool.get_status()["instances"][1]["restarts"] == 0
