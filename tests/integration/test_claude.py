"""The real ``claude`` CLI in a pool, against the offline FakeAnthropicServer.

Nothing leaves 127.0.0.1: the adapter sets claude's quiet switches, the fake
server is its only API, and a proxy trap fails a test if claude tried any other
host.  Two cases the real claude will not produce on
demand (a malformed stdout line, an interrupted turn's ``result`` arriving only
after the next prompt) use a tiny fake ``claude`` script instead.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import textwrap
import threading
import time

import pytest

from toolpool import Instance, InstanceCrashed, ProtocolError, SpawnError, State
from toolpool.adapters import ClaudeAdapter
from toolpool.adapters.claude import text_delta
from toolpool.testing import FakeAnthropicServer, Reply

pytestmark = [pytest.mark.realtools, pytest.mark.timeout(60)]

SECRET = "sk-fake-integration-secret"


@pytest.fixture
def server():
    with FakeAnthropicServer() as srv:
        yield srv


@pytest.fixture
def claude(claude_path, server, tmp_path, proxy_trap):
    """Build a ClaudeAdapter for the real claude, talking to ``server`` only.

    Any other host claude tried to reach would go to ``proxy_trap`` (and fail the test).
    """

    def make(**options) -> ClaudeAdapter:
        env = {"ANTHROPIC_BASE_URL": server.url, "ANTHROPIC_API_KEY": SECRET, **proxy_trap.env()}
        env.update(options.pop("env", {}))
        options.setdefault("start_timeout", 30.0)
        return ClaudeAdapter(cli_path=claude_path, env=env, cwd=str(tmp_path), **options)

    return make


def generations(server, text=None):
    """The /v1/messages requests the fake received (whose last user text is ``text``, if given)."""
    return [r for r in server.requests
            if r.path == "/v1/messages" and (text is None or r.user_text == text)]


def all_text(request) -> str:
    return json.dumps(request.messages)


def wait_idle(pool, index: int, timeout: float = 10.0) -> None:
    """After a failed request the instance stays busy until claude's ``result`` line."""
    deadline = time.monotonic() + timeout
    while pool.get_status()["instances"][index]["state"].lower() != "idle":
        assert time.monotonic() < deadline, pool.get_status()["instances"][index]
        time.sleep(0.01)


def test_instances_keep_their_own_context(make_pool, claude, server):
    pool = make_pool(claude(), 2)
    first = [pool.ask(i, f"hello from {i}", timeout=30) for i in range(2)]
    assert [r.text for r in first] == ["ECHO: hello from 0", "ECHO: hello from 1"]
    server.script("a scripted answer")
    second = [pool.ask(i, f"second for {i}", timeout=30) for i in range(2)]
    assert second[0].text == "a scripted answer" and second[1].text == "ECHO: second for 1"

    for i in range(2):
        (req,) = generations(server, f"second for {i}")
        sent = all_text(req)
        # the earlier exchange of the same instance went along, the other instance's did not
        assert f"hello from {i}" in sent and f"ECHO: hello from {i}" in sent
        assert f"hello from {1 - i}" not in sent
    assert pool.ask(0, "third", timeout=30).text == "ECHO: third"
    (req,) = generations(server, "third")
    assert "a scripted answer" in all_text(req) and "hello from 0" in all_text(req)

    for a, b in zip(first, second, strict=True):
        assert a.session_id and a.session_id == b.session_id  # one session per instance
        assert a.is_error is False and a.num_turns == 1
        assert isinstance(a.cost_usd, float) and a.cost_usd > 0
        assert a.usage["output_tokens"] >= 1 and a.usage["input_tokens"] >= 1
        assert [e["type"] for e in a.events][0] == "system" and a.events[-1]["type"] == "result"
        assert a.meta["subtype"] == "success" and a.meta["interrupted"] is False
    assert first[0].session_id != first[1].session_id

    texts = sorted(r.text for r in pool.map(["m1", "m2", "m3", "m4"], timeout=30))
    assert texts == ["ECHO: m1", "ECHO: m2", "ECHO: m3", "ECHO: m4"]
    assert SECRET not in json.dumps(pool.get_status())


def test_streaming_events_and_text_deltas(make_pool, claude, server):
    pool = make_pool(claude(include_partial_messages=True), 1)
    server.script(Reply("one two three four five six seven eight", chunk_delay=0.15))
    seen = []  # (time, event) as the callback got them
    response = pool.ask(0, "stream please", timeout=30, on_event=lambda e: seen.append((time.monotonic(), e)))
    done = time.monotonic()
    events = [e for _, e in seen]
    assert events == response.events
    assert [e["type"] for e in events][0] == "system" and events[-1]["type"] == "result"
    deltas = [(t, text_delta(e)) for t, e in seen if text_delta(e)]
    assert "".join(d for _, d in deltas) == response.text == "one two three four five six seven eight"
    assert len(deltas) >= 4
    # streamed: the first piece reached the callback well before the answer was complete
    assert done - deltas[0][0] > 0.3


def test_interrupt_slow_turn_then_next_turn(make_pool, claude, server):
    pool = make_pool(claude(), 1)
    assert pool.interrupt(0) is False  # idle: nothing to cancel
    server.set_delay(30)
    pool.send_prompt(0, "a slow question")
    server.wait_for_requests(1, timeout=20, path="/v1/messages")  # the turn is waiting on the API
    server.set_delay(0)
    t0 = time.monotonic()
    assert pool.interrupt(0) is True
    pool.interrupt(0)  # a second interrupt is harmless
    r = pool.read_response(0, timeout=20)
    assert time.monotonic() - t0 < 5
    assert r.is_error is True and r.meta["interrupted"] is True and r.text == ""

    after = pool.ask(0, "after the interrupt", timeout=30)
    assert after.text == "ECHO: after the interrupt" and after.is_error is False
    assert after.meta["interrupted"] is False and after.session_id == r.session_id
    assert pool.interrupt(0) is False  # finished: nothing to cancel
    assert pool.ask(0, "and once more", timeout=30).text == "ECHO: and once more"


def test_restarted_instance_resumes_its_session(make_pool, claude, server):
    pool = make_pool(claude(resume_on_restart=True), 1)
    first = pool.ask(0, "remember 42", timeout=30)
    assert pool.instances()[0].probe(10) is True  # the liveness probe: answered, no API call
    pool.restart_instance(0)
    again = pool.ask(0, "what was it", timeout=30)
    assert again.session_id == first.session_id
    (req,) = generations(server, "what was it")
    assert "remember 42" in all_text(req) and "ECHO: remember 42" in all_text(req)
    assert len(generations(server)) == 2


def test_crash_mid_turn_is_reported_at_once(make_pool, claude, server):
    pool = make_pool(claude(), 1, restart=False)
    server.set_delay(30)
    pool.send_prompt(0, "never answered")
    server.wait_for_requests(1, timeout=20, path="/v1/messages")
    os.killpg(pool.get_status()["instances"][0]["pid"], signal.SIGKILL)
    t0 = time.monotonic()
    with pytest.raises(InstanceCrashed) as info:
        pool.read_response(0, timeout=40)
    assert time.monotonic() - t0 < 5
    assert info.value.exit_code == -signal.SIGKILL


def test_dead_server_gives_an_error_response_quickly(make_pool, claude):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead_url = f"http://127.0.0.1:{s.getsockname()[1]}"
    pool = make_pool(claude(env={"ANTHROPIC_BASE_URL": dead_url}, max_retries=0), 1)
    t0 = time.monotonic()
    r = pool.ask(0, "anyone there?", timeout=50)
    assert time.monotonic() - t0 < 10
    assert r.is_error is True and "Unable to connect" in r.text
    assert r.meta["interrupted"] is False
    again = pool.ask(0, "still there?", timeout=50)  # the process stays usable
    assert again.is_error is True


def test_oneshot_mode(claude, server):
    adapter = claude(mode="oneshot")
    inst = Instance(adapter, 0)
    try:
        sessions = []
        for prompt in ("first\nwith two lines", "second"):
            inst.start()
            r = inst.ask(prompt, timeout=30)
            assert r.text == "ECHO: " + prompt.split("\n")[0] and r.is_error is False
            sessions.append(r.session_id)
            deadline = time.monotonic() + 10  # claude exits after its one answer
            while inst.state is not State.EXITED and time.monotonic() < deadline:
                time.sleep(0.02)
            assert inst.state is State.EXITED and inst.last_exit_code == 0
        assert sessions[0] != sessions[1]  # one process, one session per prompt
        assert generations(server, "first\nwith two lines")

        server.set_delay(30)
        inst.start()
        inst.send("slow oneshot")
        server.wait_for_requests(3, timeout=20, path="/v1/messages")
        assert inst.interrupt() is True  # SIGINT: claude exits without a result
        r = inst.read(timeout=20)
        assert r.is_error is True and r.meta["interrupted"] is True
    finally:
        inst.stop()
        adapter.close()


# -- a fake claude for what the real one does not do on demand ---------------------------------

FAKE_CLAUDE = textwrap.dedent('''\
    import json, sys

    def out(obj):
        sys.stdout.write((obj if isinstance(obj, str) else json.dumps(obj)) + "\\n")
        sys.stdout.flush()

    def result(text, is_error=False):
        return {"type": "result", "subtype": "error_during_execution" if is_error else "success",
                "is_error": is_error, "result": text, "session_id": "fake", "num_turns": 1}

    slow = False
    late = None
    while True:
        line = sys.stdin.readline()
        if not line:
            break
        msg = json.loads(line)
        if msg["type"] == "control_request":
            out({"type": "control_response", "response": {"subtype": "success", "request_id": msg["request_id"]}})
            if msg["request"]["subtype"] == "interrupt" and slow:
                # like the real claude in the rare case: the result waits for the next stdin line
                out({"type": "user", "message": {"role": "user", "content": [
                    {"type": "text", "text": "[Request interrupted by user]"}]}})
                late, slow = result("LATE RESULT", True), False
            continue
        if late:
            out(late)
            late = None
        text = msg["message"]["content"]
        out({"type": "system", "subtype": "init", "session_id": "fake", "model": "fake"})
        if "--replay-user-messages" in sys.argv:  # as the real claude: the message, its uuid included
            out(dict(msg, isReplay=True))
        if text == "bad":
            out("Warning: this line is not JSON")
        elif text == "long":
            out(json.dumps({"type": "assistant", "pad": "x" * 5000}))
        elif text == "slow":
            slow = True
            continue
        reply = [{"type": "text", "text": "fake: " + text}]
        out({"type": "assistant", "message": {"role": "assistant", "content": reply}})
        out(result("fake: " + text))
''')


@pytest.fixture
def fake_claude(tmp_path):
    path = tmp_path / "claude"
    path.write_text(f"#!{sys.executable}\n" + FAKE_CLAUDE)
    path.chmod(0o755)
    return str(path)


def test_malformed_and_over_long_lines_give_protocol_error(make_pool, fake_claude, tmp_path):
    pool = make_pool(ClaudeAdapter(cli_path=fake_claude, cwd=str(tmp_path), max_line_bytes=1024), 1)
    with pytest.raises(ProtocolError, match="not a stream-json object.*Warning: this line is not JSON"):
        pool.ask(0, "bad", timeout=10)
    wait_idle(pool, 0)
    with pytest.raises(ProtocolError, match=r"longer than max_line_bytes=1024.*\{\"type\": \"assistant\""):
        pool.ask(0, "long", timeout=10)
    wait_idle(pool, 0)
    # framing went on to each turn's result: the instance is in step and usable
    assert pool.ask(0, "fine", timeout=10).text == "fake: fine"


def test_late_result_of_an_interrupted_turn_does_not_end_the_next(make_pool, fake_claude, tmp_path):
    pool = make_pool(ClaudeAdapter(cli_path=fake_claude, cwd=str(tmp_path), interrupt_settle=0.2), 1)
    events = []
    pool.send_prompt(0, "slow", on_event=events.append)
    assert pool.interrupt(0) is True
    r = pool.read_response(0, timeout=10)
    assert r.is_error and r.meta["interrupted"] and r.meta["subtype"] == "interrupted"
    nxt = pool.ask(0, "next", timeout=10)
    assert nxt.text == "fake: next" and not nxt.is_error
    assert "LATE RESULT" not in json.dumps(nxt.events) + json.dumps(events)
    assert pool.ask(0, "and another", timeout=10).text == "fake: and another"


def test_a_tool_that_is_not_claude_fails_to_start_at_once(make_pool, tmp_path):
    impostor = tmp_path / "claude"
    impostor.write_text("#!/bin/sh\necho 'Usage: impostor [options]'\nexec sleep 30\n")
    impostor.chmod(0o755)
    t0 = time.monotonic()
    with pytest.raises(SpawnError, match="Usage: impostor"):
        make_pool(ClaudeAdapter(cli_path=str(impostor), cwd=str(tmp_path)), 1)
    assert time.monotonic() - t0 < 10


def test_events_arrive_on_a_reader_thread_before_the_response(make_pool, fake_claude, tmp_path):
    pool = make_pool(ClaudeAdapter(cli_path=fake_claude, cwd=str(tmp_path)), 1)
    threads = set()
    r = pool.ask(0, "hi", timeout=10, on_event=lambda e: threads.add(threading.current_thread().name))
    assert r.text == "fake: hi" and threads and threading.current_thread().name not in threads
