"""Tests of toolpool.testing's fake LLM servers, over real HTTP on 127.0.0.1 (stdlib urllib)."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import pytest

from toolpool.testing import (
    FakeAnthropicServer,
    FakeOpenAIServer,
    Reply,
    last_user_text,
)

# Never route test traffic through a proxy configured in the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http(
    method: str, url: str, body: Any = None, headers: dict[str, str] | None = None, timeout: float = 10
) -> tuple[int, dict[str, str], bytes]:
    """One request; returns (status, lower-cased headers, body) also for HTTP errors."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with _OPENER.open(req, timeout=timeout) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, {k.lower(): v for k, v in err.headers.items()}, err.read()


def sse_events(raw: bytes) -> list[tuple[str | None, str]]:
    """Split a Server-Sent Events body into (event name, data) pairs."""
    events = []
    for block in raw.decode().split("\n\n"):
        if not block.strip():
            continue
        name, data = None, []
        for line in block.split("\n"):
            if line.startswith("event: "):
                name = line[len("event: ") :]
            elif line.startswith("data: "):
                data.append(line[len("data: ") :])
        events.append((name, "\n".join(data)))
    return events


def anthropic_body(text: Any = "hello", stream: bool = False) -> dict[str, Any]:
    return {"model": "claude-test", "max_tokens": 100, "stream": stream,
            "messages": [{"role": "user", "content": text}]}


def openai_body(text: Any = "hello", stream: bool = False) -> dict[str, Any]:
    return {"model": "fake-model", "stream": stream, "messages": [{"role": "user", "content": text}]}


def ask_anthropic(server: FakeAnthropicServer, text: Any = "hello", timeout: float = 10) -> str:
    status, _, raw = http("POST", server.url + "/v1/messages", anthropic_body(text), timeout=timeout)
    assert status == 200, raw
    return json.loads(raw)["content"][0]["text"]


# -- Anthropic ------------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_anthropic_non_streaming_reply_and_usage() -> None:
    with FakeAnthropicServer() as server:
        status, headers, raw = http(
            "POST", server.url + "/v1/messages?beta=true", anthropic_body("hello there\nsecond line")
        )
        assert status == 200
        assert headers["content-type"] == "application/json"
        msg = json.loads(raw)
        assert msg["type"] == "message" and msg["role"] == "assistant"
        assert msg["model"] == "claude-test"
        assert msg["content"] == [{"type": "text", "text": "ECHO: hello there"}]  # first line only
        assert msg["stop_reason"] == "end_turn"
        assert msg["usage"] == {"input_tokens": 4, "output_tokens": 3}
        (req,) = server.requests
        assert (req.method, req.path, req.query) == ("POST", "/v1/messages", "beta=true")
        assert req.body["messages"][0]["content"] == "hello there\nsecond line"


@pytest.mark.timeout(30)
def test_anthropic_streaming_events_in_order() -> None:
    text = "a reply long enough to need several deltas"
    with FakeAnthropicServer(reply=text) as server:
        status, headers, raw = http("POST", server.url + "/v1/messages?beta=true", anthropic_body(stream=True))
    assert status == 200
    assert headers["content-type"].startswith("text/event-stream")
    events = sse_events(raw)
    names = [name for name, _ in events]
    assert names[:2] == ["message_start", "content_block_start"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    deltas = names[2:-3]
    assert len(deltas) >= 3 and set(deltas) == {"content_block_delta"}
    payloads = [json.loads(data) for _, data in events]
    assert all(p["type"] == name for p, name in zip(payloads, names, strict=True))  # data type matches event name
    assert payloads[0]["message"]["content"] == []
    assert "".join(p["delta"]["text"] for p in payloads[2:-3]) == text
    assert all(p["delta"]["type"] == "text_delta" and p["index"] == 0 for p in payloads[2:-3])
    message_delta = payloads[-2]
    assert message_delta["delta"]["stop_reason"] == "end_turn"
    assert message_delta["usage"]["output_tokens"] == len(text.split())


@pytest.mark.timeout(30)
def test_anthropic_echo_uses_typed_text_of_content_blocks() -> None:
    # Claude Code sends the prompt as content blocks after a <system-reminder> block.
    blocks = [
        {"type": "text", "text": "<system-reminder>\ncontext\n</system-reminder>\n"},
        {"type": "image", "source": {}},
        {"type": "text", "text": "the prompt\nmore", "cache_control": {"type": "ephemeral"}},
    ]
    with FakeAnthropicServer() as server:
        assert ask_anthropic(server, blocks) == "ECHO: the prompt"


@pytest.mark.timeout(30)
def test_anthropic_probe_routes_count_tokens_and_404() -> None:
    with FakeAnthropicServer() as server:
        assert http("HEAD", server.url + "/")[0] == 200
        assert http("GET", server.url + "/")[0] == 200
        count_url = server.url + "/v1/messages/count_tokens?beta=true"
        status, _, raw = http("POST", count_url, anthropic_body("one two three"))
        assert status == 200 and json.loads(raw) == {"input_tokens": 3}
        status, _, raw = http("GET", server.url + "/nope")
        assert status == 404 and json.loads(raw)["type"] == "error"
        assert [(r.method, r.path) for r in server.requests] == [
            ("HEAD", "/"), ("GET", "/"), ("POST", "/v1/messages/count_tokens"), ("GET", "/nope")
        ]


# -- OpenAI ---------------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_openai_non_streaming_reply() -> None:
    with FakeOpenAIServer() as server:
        status, _, raw = http("POST", server.url + "/v1/chat/completions", openai_body("hi\nfiles: a.py b.py"))
    assert status == 200
    completion = json.loads(raw)
    assert completion["object"] == "chat.completion"
    assert completion["choices"][0]["message"] == {"role": "assistant", "content": "ECHO: hi"}
    assert completion["choices"][0]["finish_reason"] == "stop"
    assert completion["usage"]["total_tokens"] == completion["usage"]["prompt_tokens"] + 2


@pytest.mark.timeout(30)
def test_openai_streaming_chunks_and_done() -> None:
    text = "streamed answer in a few pieces"
    with FakeOpenAIServer(reply=text) as server:
        status, headers, raw = http("POST", server.url + "/v1/chat/completions", openai_body(stream=True))
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    datas = [data for _, data in sse_events(raw)]
    assert datas[-1] == "[DONE]"
    chunks = [json.loads(d) for d in datas[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    content_chunks = [c for c in chunks if c["choices"][0]["delta"].get("content")]
    assert len(content_chunks) >= 3
    assert "".join(c["choices"][0]["delta"]["content"] for c in content_chunks) == text
    final = chunks[-1]
    assert final["choices"][0]["finish_reason"] == "stop"
    assert final["usage"]["completion_tokens"] == len(text.split())
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])


@pytest.mark.timeout(30)
def test_openai_models_and_list_content() -> None:
    with FakeOpenAIServer() as server:
        status, _, raw = http("GET", server.url + "/v1/models")
        assert status == 200 and json.loads(raw)["data"][0]["id"] == "fake-model"
        body = openai_body([{"type": "text", "text": "from blocks"}])
        status, _, raw = http("POST", server.url + "/v1/chat/completions", body)
        assert json.loads(raw)["choices"][0]["message"]["content"] == "ECHO: from blocks"


# -- shared behaviour -----------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_scripted_replies_in_order_then_default() -> None:
    with FakeAnthropicServer(reply="default") as server:
        server.script("one", lambda req: f"computed from {req.user_text}", Reply("three"))
        answers = [ask_anthropic(server, f"q{i}") for i in range(5)]
    assert answers == ["one", "computed from q1", "three", "default", "default"]


@pytest.mark.timeout(30)
def test_callable_default_reply() -> None:
    with FakeOpenAIServer(reply=lambda req: req.user_text.upper()) as server:
        status, _, raw = http("POST", server.url + "/chat/completions", openai_body("shout"))
    assert status == 200 and json.loads(raw)["choices"][0]["message"]["content"] == "SHOUT"


@pytest.mark.timeout(30)
def test_delayed_reply_does_not_block_other_requests() -> None:
    with FakeAnthropicServer() as server:
        server.script(Reply("slow", delay=2.0))
        slow: dict[str, Any] = {}

        def ask_slow() -> None:
            start = time.monotonic()
            slow["text"] = ask_anthropic(server, "first")
            slow["took"] = time.monotonic() - start

        thread = threading.Thread(target=ask_slow)
        thread.start()
        server.wait_for_requests(1, timeout=5)  # recorded on arrival, before the delay
        start = time.monotonic()
        assert ask_anthropic(server, "fast") == "ECHO: fast"
        assert time.monotonic() - start < 1.0
        assert "text" not in slow  # the slow one is still waiting
        thread.join(10)
        assert slow["text"] == "slow" and slow["took"] >= 1.9


@pytest.mark.timeout(30)
def test_set_delay_applies_to_every_generation() -> None:
    with FakeOpenAIServer(delay=0.3) as server:
        start = time.monotonic()
        http("POST", server.url + "/v1/chat/completions", openai_body())
        assert time.monotonic() - start >= 0.3
        server.set_delay(0)
        start = time.monotonic()
        http("POST", server.url + "/v1/chat/completions", openai_body())
        assert time.monotonic() - start < 0.3
        server.set_delay(0.3)
        start = time.monotonic()
        assert http("GET", server.url + "/v1/models")[0] == 200  # not a generation: no delay
        assert time.monotonic() - start < 0.3


@pytest.mark.timeout(30)
def test_chunk_delay_spreads_a_stream_over_time() -> None:
    with FakeAnthropicServer() as server:
        server.script(Reply("x" * 32, chunk_delay=0.1))  # 4 chunks of 8 characters
        start = time.monotonic()
        _, _, raw = http("POST", server.url + "/v1/messages", anthropic_body(stream=True))
        assert time.monotonic() - start >= 0.3
    deltas = [json.loads(d) for name, d in sse_events(raw) if name == "content_block_delta"]
    assert len(deltas) == 4


@pytest.mark.timeout(30)
def test_fail_next_injects_errors_without_consuming_script() -> None:
    with FakeAnthropicServer() as server:
        server.script("scripted")
        server.fail_next(status=529)
        status, _, raw = http("POST", server.url + "/v1/messages", anthropic_body())
        assert status == 529
        assert json.loads(raw)["error"]["type"] == "overloaded_error"
        assert ask_anthropic(server) == "scripted"
        server.fail_next(status=400, body={"custom": True}, times=2, headers={"x-should-retry": "false"})
        for _ in range(2):
            status, headers, raw = http("POST", server.url + "/v1/messages", anthropic_body())
            assert (status, json.loads(raw)) == (400, {"custom": True})
            assert headers["x-should-retry"] == "false"
        assert ask_anthropic(server) == "ECHO: hello"
        # Probes are not generations: an injected error waits for the next generation.
        server.fail_next(status=503)
        assert http("HEAD", server.url + "/")[0] == 200
        assert http("POST", server.url + "/v1/messages", anthropic_body())[0] == 503


@pytest.mark.timeout(30)
def test_openai_error_body_shape() -> None:
    with FakeOpenAIServer() as server:
        server.fail_next()
        status, _, raw = http("POST", server.url + "/v1/chat/completions", openai_body())
    assert status == 500 and json.loads(raw)["error"]["type"] == "server_error"


@pytest.mark.timeout(30)
def test_requests_are_recorded_and_waitable() -> None:
    with FakeOpenAIServer() as server:
        before = time.monotonic()
        http("POST", server.url + "/v1/chat/completions?x=1", openai_body("one"), headers={"X-Custom": "v"})
        http("GET", server.url + "/v1/models")
        snapshot = server.requests
        http("POST", server.url + "/v1/chat/completions", openai_body("two"))
        assert len(snapshot) == 2  # a snapshot, not a live view
        first = snapshot[0]
        assert first.headers["x-custom"] == "v" and first.query == "x=1"
        assert first.body == openai_body("one") and first.user_text == "one" and not first.stream
        assert json.loads(first.raw_body) == first.body
        assert before <= first.timestamp <= snapshot[1].timestamp
        chats = server.wait_for_requests(2, timeout=1, path="/v1/chat/completions")
        assert [r.user_text for r in chats] == ["one", "two"]
        with pytest.raises(TimeoutError):
            server.wait_for_requests(4, timeout=0.2)
        server.script("pending")
        server.set_delay(5)
        server.fail_next()
        server.reset()
        assert server.requests == []
        assert ask_anthropic_like_openai(server) == "ECHO: after reset"  # no script, error or delay


def ask_anthropic_like_openai(server: FakeOpenAIServer) -> str:
    start = time.monotonic()
    status, _, raw = http("POST", server.url + "/v1/chat/completions", openai_body("after reset"))
    assert status == 200 and time.monotonic() - start < 2
    return json.loads(raw)["choices"][0]["message"]["content"]


@pytest.mark.timeout(30)
def test_wait_for_requests_wakes_on_arrival() -> None:
    with FakeAnthropicServer() as server:
        timer = threading.Timer(0.3, lambda: http("HEAD", server.url + "/"))
        timer.start()
        start = time.monotonic()
        (req,) = server.wait_for_requests(1, timeout=5)
        assert req.method == "HEAD" and time.monotonic() - start < 3
        timer.join()


@pytest.mark.timeout(30)
def test_close_joins_thread_and_cuts_delays_short() -> None:
    server = FakeAnthropicServer(delay=60).start()
    url, serving = server.url, server.thread
    assert serving is not None and serving.is_alive() and not serving.daemon
    outcome: dict[str, Any] = {}

    def ask() -> None:
        try:
            outcome["status"] = http("POST", url + "/v1/messages", anthropic_body(), timeout=20)[0]
        except (urllib.error.URLError, ConnectionError, OSError) as err:
            outcome["error"] = err

    client = threading.Thread(target=ask)
    client.start()
    server.wait_for_requests(1, timeout=5)
    start = time.monotonic()
    server.close()
    assert time.monotonic() - start < 3  # the 60 s delay was interrupted
    assert not serving.is_alive() and server.thread is None
    assert not [t for t in threading.enumerate() if t.name.startswith("FakeAnthropicServer")]
    client.join(10)
    assert "error" in outcome  # the waiting request was dropped, not answered
    server.close()  # idempotent
    with pytest.raises(OSError):
        http("GET", url + "/", timeout=2)


@pytest.mark.timeout(30)
def test_context_manager_and_port() -> None:
    with FakeOpenAIServer() as server:
        assert server.url == f"http://127.0.0.1:{server.port}" and server.port > 0
        thread = server.thread
    assert thread is not None and not thread.is_alive()
    with pytest.raises(RuntimeError):
        _ = FakeOpenAIServer().url  # not started yet


def test_last_user_text_shapes() -> None:
    assert last_user_text([]) == ""
    assert last_user_text([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]) == "a"
    merged_after_interrupt = [
        {"role": "user", "content": [
            {"type": "text", "text": "slow\n"},
            {"type": "text", "text": "[Request interrupted by user]\n"},
            {"type": "text", "text": "after"},
        ]},
        {"role": "system", "content": "injected"},
    ]
    assert last_user_text(merged_after_interrupt) == "after"
    only_reminder = [{"role": "user", "content": [{"type": "text", "text": "<system-reminder>x</system-reminder>"}]}]
    assert last_user_text(only_reminder).startswith("<system-reminder>")


@pytest.mark.timeout(30)
def test_failing_reply_function_answers_500() -> None:
    def broken(request: Any) -> str:
        raise ValueError("bug in the test's reply function")

    with FakeOpenAIServer(reply=broken) as server:
        status, _, raw = http("POST", server.url + "/v1/chat/completions", openai_body())
        assert status == 500 and "bug in the test" in json.loads(raw)["error"]["message"]
        server.script("fine")
        assert http("POST", server.url + "/v1/chat/completions", openai_body())[0] == 200


@pytest.mark.timeout(30)
def test_a_closed_server_can_start_again():
    server = FakeOpenAIServer()
    server.start()
    server.close()
    with pytest.raises(RuntimeError, match="not started"):
        _ = server.url  # no stale address
    with server:
        assert server.url.startswith("http://127.0.0.1:")
