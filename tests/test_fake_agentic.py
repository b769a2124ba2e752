"""Scripted agentic turns and API faults of toolpool.testing's fakes, over real HTTP (urllib).

The real claude and aider against the same features are in
tests/integration/test_fake_agentic_tools.py.
"""

from __future__ import annotations

import http.client as httpc
import json
import re
import socket
import threading
import time
from typing import Any

import pytest

from test_testing_servers import anthropic_body, http, openai_body, sse_events
from toolpool.testing import (
    Drop,
    Error,
    FakeAnthropicServer,
    FakeOpenAIServer,
    Hang,
    RecordedRequest,
    Reply,
    Stall,
    ToolUse,
    search_replace,
    whole_file,
)

pytestmark = pytest.mark.timeout(30)


def post(server: Any, body: dict[str, Any], timeout: float = 10) -> tuple[int, dict[str, str], bytes]:
    path = "/v1/messages" if isinstance(server, FakeAnthropicServer) else "/v1/chat/completions"
    return http("POST", server.url + path, body, timeout=timeout)


def message(server: FakeAnthropicServer, messages: list[dict[str, Any]]) -> dict[str, Any]:
    """One non-streamed Messages call with a whole history; the answer's JSON."""
    status, _, raw = post(server, {"model": "m", "max_tokens": 10, "messages": messages})
    assert status == 200, raw
    return json.loads(raw)


def tool_result(tool_use_id: str, content: Any, is_error: bool = False) -> dict[str, Any]:
    return {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool_use_id, "content": content,
                                         "is_error": is_error}]}


def follow_up(history: list[dict[str, Any]], answer: dict[str, Any], result: Any) -> list[dict[str, Any]]:
    """The next request of an agentic loop: the history, the tool call, its result."""
    (call,) = [b for b in answer["content"] if b["type"] == "tool_use"]
    return [*history, {"role": "assistant", "content": answer["content"]}, tool_result(call["id"], result)]


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


# -- tool_use replies --------------------------------------------------------------------------


def test_tool_use_streams_input_json_deltas_and_stops_for_the_tool() -> None:
    command = {"command": "echo a fairly long command line to need several deltas", "description": "say"}
    with FakeAnthropicServer() as server:
        server.script(ToolUse("Bash", command, id="toolu_given", text="Let me run that."))
        status, _, raw = post(server, anthropic_body("run", stream=True))
    assert status == 200
    events = [(name, json.loads(data)) for name, data in sse_events(raw)]
    names = [n for n, _ in events]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    starts = [e["content_block"] for n, e in events if n == "content_block_start"]
    assert starts == [{"type": "text", "text": ""},
                      {"type": "tool_use", "id": "toolu_given", "name": "Bash", "input": {}}]
    text = "".join(e["delta"]["text"] for n, e in events if n == "content_block_delta" and e["index"] == 0)
    pieces = [e["delta"] for n, e in events if n == "content_block_delta" and e["index"] == 1]
    assert text == "Let me run that."
    assert len(pieces) >= 3 and {p["type"] for p in pieces} == {"input_json_delta"}
    assert json.loads("".join(p["partial_json"] for p in pieces)) == command
    assert [e["index"] for n, e in events if n == "content_block_stop"] == [0, 1]
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"
    (served,) = server.replies
    assert served.kind == "tool_use" and served.tool_uses[0].id == "toolu_given"


def test_tool_use_as_json_and_generated_ids_are_unique() -> None:
    with FakeAnthropicServer() as server:
        server.script(ToolUse("Read", {"file_path": "a.py"}),
                      Reply(["two calls:", ToolUse("Read", {"file_path": "b.py"}), ToolUse("Glob", {"pattern": "*"})]))
        first = message(server, [user("read a")])
        second = message(server, [user("read b")])
    assert first["stop_reason"] == "tool_use"
    (call,) = first["content"]
    assert call["type"] == "tool_use" and call["name"] == "Read" and call["input"] == {"file_path": "a.py"}
    assert [b["type"] for b in second["content"]] == ["text", "tool_use", "tool_use"]
    ids = [call["id"]] + [b["id"] for b in second["content"][1:]]
    assert len(set(ids)) == 3 and all(i.startswith("toolu_") for i in ids)


def test_a_conversation_follows_its_tool_calls_even_when_interleaved() -> None:
    with FakeAnthropicServer() as server:
        server.script([ToolUse("Bash", {"command": "echo A"}), "A done"],
                      [ToolUse("Bash", {"command": "echo B"}), ToolUse("Bash", {"command": "echo B2"}), "B done"])
        a1 = message(server, [user("task a")])
        b1 = message(server, [user("task b")])
        b2 = message(server, follow_up([user("task b")], b1, "B"))  # B goes on first
        a2 = message(server, follow_up([user("task a")], a1, "A"))
        b3 = message(server, follow_up(follow_up([user("task b")], b1, "B"), b2, "B2"))
        after = message(server, [user("unscripted")])
    assert a1["content"][0]["input"] == {"command": "echo A"} and b1["content"][0]["input"] == {"command": "echo B"}
    assert b2["content"][0]["input"] == {"command": "echo B2"}
    assert a2["content"] == [{"type": "text", "text": "A done"}] and a2["stop_reason"] == "end_turn"
    assert b3["content"][0]["text"] == "B done"
    assert after["content"][0]["text"] == "ECHO: unscripted"
    assert [(r.name, r.text) for r in server.tool_results] == [("Bash", "B"), ("Bash", "A"), ("Bash", "B2")]


def test_on_prompt_answers_each_matching_turn_from_the_first_step() -> None:
    with FakeAnthropicServer(reply="default") as server:
        server.on_prompt("deploy", ToolUse("Bash", {"command": "make deploy"}), "deployed", times=2)
        server.on_prompt(re.compile(r"^status\b"), "all green")
        server.script("queued")
        runs = []
        for _ in range(2):
            call = message(server, [user("please deploy now")])
            runs.append((call["content"][0]["name"], message(server, follow_up([user("please deploy now")], call,
                                                                                  "ok"))["content"][0]["text"]))
        third = message(server, [user("please deploy now")])  # times=2 used up: the queue answers
        assert message(server, [user("status of prod")])["content"][0]["text"] == "all green"
        assert message(server, [user("what is the status")])["content"][0]["text"] == "default"
        server.verify(all_used=True)
        server.on_prompt(lambda request: request.model == "never", "unused")
        with pytest.raises(AssertionError, match="never matched"):
            server.verify(all_used=True)
        server.reset()  # the unused script is forgotten, so leaving the block is fine
    assert runs == [("Bash", "deployed"), ("Bash", "deployed")]
    assert third["content"][0]["text"] == "queued"


def test_a_responder_sees_tool_results_and_returns_steps() -> None:
    def responder(request: RecordedRequest) -> Any:
        if not request.tool_results:
            return ToolUse("Bash", {"command": "wc -l data.txt"})
        return f"the file has {request.tool_results[0].text.split()[0]} lines"

    with FakeAnthropicServer(reply=responder) as server:
        call = message(server, [user("count")])
        answer = message(server, follow_up([user("count")], call, [{"type": "text", "text": "42 data.txt"}]))
    assert answer["content"][0]["text"] == "the file has 42 lines"


# -- checks on tool results ----------------------------------------------------------------------


def test_passing_checks_and_what_is_recorded() -> None:
    with FakeAnthropicServer() as server:
        server.script([ToolUse("Bash", {"command": "echo hi"}, expect="hi"), "ok"],
                      [ToolUse("Bash", {"command": "date"}, expect=re.compile(r"\d{4}")), "ok"],
                      [ToolUse("Bash", {"command": "false"}, expect=lambda r: r.is_error), "ok"])
        for prompt, result, is_error in (("a", "hi\n", False), ("b", "Tue 2025", False), ("c", "exit 1", True)):
            call = message(server, [user(prompt)])
            messages = follow_up([user(prompt)], call, result)
            messages[-1]["content"][0]["is_error"] = is_error
            server.fail_next(529)  # the client retries the same request: checked and recorded once
            assert post(server, {"model": "m", "max_tokens": 1, "messages": messages})[0] == 529
            assert message(server, messages)["content"][0]["text"] == "ok"
            assert message(server, messages)["content"][0]["text"].startswith("ECHO")  # conversation over
        server.verify()
    recorded = server.tool_results
    assert [(r.input, r.text, r.is_error) for r in recorded] == [
        ({"command": "echo hi"}, "hi\n", False), ({"command": "date"}, "Tue 2025", False),
        ({"command": "false"}, "exit 1", True)]  # once each, though each came twice
    assert recorded[0].request.tool_results[0].tool_use_id == recorded[0].tool_use_id


def test_a_failed_check_answers_400_and_fails_the_with_block() -> None:
    server = FakeAnthropicServer()
    with (
        pytest.raises(AssertionError, match=r"tool_result for Bash .*expected 'hi' in 'permission denied'"),
        server,
    ):
        server.script([ToolUse("Bash", {"command": "echo hi"}, expect="hi"), "never sent"])
        call = message(server, [user("go")])
        status, _, raw = post(server, {"model": "m", "max_tokens": 1,
                                       "messages": follow_up([user("go")], call, "permission denied")})
        assert status == 400
        error = json.loads(raw)
        assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
        assert "expected 'hi'" in error["error"]["message"]
        assert server.replies[-1].kind == "check_failed"
    assert server.thread is None  # closed before raising


def test_a_failing_test_is_not_hidden_by_a_failed_check() -> None:
    with pytest.raises(KeyError), FakeAnthropicServer() as server:
        server.script([ToolUse("Bash", {"command": "x"}, expect="never"), "no"])
        call = message(server, [user("go")])
        post(server, {"model": "m", "max_tokens": 1, "messages": follow_up([user("go")], call, "other")})
        raise KeyError("the test's own failure")


def test_image_blocks_are_findable_in_the_recorded_request() -> None:
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
    with FakeAnthropicServer() as server:
        message(server, [{"role": "user", "content": [image, {"type": "text", "text": "what is this?"}]}])
    (request,) = server.requests
    assert request.blocks("image") == [image] and request.user_text == "what is this?"


# -- HTTP errors and broken connections ---------------------------------------------------------


@pytest.mark.parametrize("status, kind, text", [
    (401, "authentication_error", "invalid x-api-key"),
    (429, "rate_limit_error", "rate limit"),
    (529, "overloaded_error", "Overloaded"),
    (500, "api_error", "Internal server error"),
])
def test_anthropic_errors_have_the_real_shape(status: int, kind: str, text: str) -> None:
    with FakeAnthropicServer() as server:
        server.script(Error(status, retry_after=7 if status == 429 else None))
        got, headers, raw = post(server, anthropic_body(stream=True))
        assert message(server, [user("next")])["content"][0]["text"] == "ECHO: next"  # one request only
    body = json.loads(raw)
    assert got == status and body["type"] == "error" and body["error"]["type"] == kind
    assert text in body["error"]["message"]
    assert body["request_id"].startswith("req_") and headers["request-id"] == body["request_id"]
    assert headers.get("retry-after") == ("7" if status == 429 else None)
    assert server.replies[0].kind == "error" and server.replies[0].status == status


def test_fail_next_takes_retry_after_and_an_error_can_come_mid_stream() -> None:
    with FakeAnthropicServer() as server:
        server.fail_next(429, retry_after=0.5)
        status, headers, _ = post(server, anthropic_body())
        assert (status, headers["retry-after"]) == (429, "0.5")
        server.script(Error(529, in_stream=True))
        status, _, raw = post(server, anthropic_body(stream=True))
    events = sse_events(raw)
    assert status == 200 and [name for name, _ in events] == ["message_start", "error"]
    assert json.loads(events[1][1])["error"] == {"type": "overloaded_error", "message": "Overloaded"}


def raw_post(server: Any, body: dict[str, Any], timeout: float) -> httpc.HTTPConnection:
    path = "/v1/messages" if isinstance(server, FakeAnthropicServer) else "/v1/chat/completions"
    conn = httpc.HTTPConnection("127.0.0.1", server.port, timeout=timeout)
    conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    return conn


def test_a_hang_never_answers_and_ends_when_the_client_gives_up() -> None:
    with FakeAnthropicServer() as server:
        server.script(Hang())
        conn = raw_post(server, anthropic_body(stream=True), timeout=0.5)
        start = time.monotonic()
        with pytest.raises(socket.timeout):
            conn.getresponse()  # not even a status line
        assert time.monotonic() - start >= 0.45
        conn.close()
        deadline = time.monotonic() + 5
        while not server.replies and time.monotonic() < deadline:
            time.sleep(0.02)
        (served,) = server.replies
        assert served.kind == "hang" and served.status is None and served.ended == "client_closed"
        assert message(server, [user("after")])["content"][0]["text"] == "ECHO: after"


def test_close_ends_hangs_and_stalls_at_once_and_joins_their_threads() -> None:
    server = FakeAnthropicServer().start()
    server.script(Hang(), Stall())
    conns = [raw_post(server, anthropic_body(stream=True), timeout=20) for _ in range(2)]
    server.wait_for_requests(2)
    time.sleep(0.2)  # both handlers are holding their connection
    start = time.monotonic()
    server.close()
    assert time.monotonic() - start < 3
    assert not [t for t in threading.enumerate() if t.name.startswith("FakeAnthropicServer")]
    assert sorted((r.kind, r.ended) for r in server.replies) == [("hang", "server_closed"),
                                                                ("stall", "server_closed")]
    for conn in conns:
        conn.close()


def test_a_stall_sends_headers_and_message_start_then_nothing() -> None:
    with FakeAnthropicServer() as server:
        server.script(Stall(), Stall("partial words here", after=2))
        for expected in (["message_start"], ["message_start", "content_block_start", "content_block_delta",
                                             "content_block_delta"]):
            conn = raw_post(server, anthropic_body(stream=True), timeout=0.6)
            response = conn.getresponse()
            assert response.status == 200 and response.getheader("content-type") == "text/event-stream"
            got = b""
            with pytest.raises(socket.timeout):
                while True:
                    got += response.read1(1024)
            assert [name for name, _ in sse_events(got)] == expected
            conn.close()


def test_drop_cuts_the_stream_before_it_ends() -> None:
    with FakeAnthropicServer() as server:
        server.script(Drop("one two three four five six", after=2), Drop(after=1, reset=True))
        status, _, raw = post(server, anthropic_body(stream=True))
        names = [name for name, _ in sse_events(raw)]
        assert status == 200 and names.count("content_block_delta") == 2 and "message_stop" not in names
        conn = raw_post(server, anthropic_body(stream=True), timeout=5)
        with pytest.raises((ConnectionResetError, httpc.IncompleteRead, httpc.RemoteDisconnected)):
            conn.getresponse().read()
        conn.close()
    assert [(r.kind, r.ended) for r in server.replies] == [("drop", "cut"), ("drop", "cut")]


def test_non_streamed_drop_and_stall_break_the_json_body() -> None:
    with FakeAnthropicServer() as server:
        server.script(Drop("cut json"), Stall())
        conn = raw_post(server, anthropic_body(), timeout=5)
        with pytest.raises(httpc.IncompleteRead):
            conn.getresponse().read()
        conn.close()
        conn = raw_post(server, anthropic_body(), timeout=0.5)
        response = conn.getresponse()
        assert response.status == 200 and int(response.getheader("content-length")) > 0
        with pytest.raises(socket.timeout):
            response.read()
        conn.close()


# -- OpenAI: aider's edit formats, rate limits, cuts --------------------------------------------


def test_edit_format_helpers_write_what_aider_parses() -> None:
    assert whole_file("src/calc.py", "x = 1", intro="Done.") == "Done.\n\nsrc/calc.py\n```\nx = 1\n```\n"
    assert search_replace("calc.py", "a - b\n", "a + b", lang="python") == (
        "calc.py\n```python\n<<<<<<< SEARCH\na - b\n=======\na + b\n>>>>>>> REPLACE\n```\n")


def test_openai_replies_by_prompt_and_in_order_with_usage_recorded() -> None:
    edit = whole_file("hello.py", "print('bye')\n")
    with FakeOpenAIServer() as server:
        server.on_prompt("say bye", edit)
        server.script("first in order", "second in order")
        answers = []
        for prompt in ("one", "please say bye\nfiles: hello.py", "two"):
            status, _, raw = post(server, openai_body(prompt, stream=True))
            assert status == 200
            chunks = [json.loads(d) for _, d in sse_events(raw)[:-1]]
            answers.append("".join(c["choices"][0]["delta"].get("content") or "" for c in chunks))
    assert answers == ["first in order", edit, "second in order"]
    assert [r.text for r in server.replies] == answers
    assert all(r.usage["completion_tokens"] == len(a.split()) for r, a in zip(server.replies, answers, strict=True))
    assert server.total_usage["completion_tokens"] == sum(len(a.split()) for a in answers)


def test_openai_rate_limit_cut_stream_and_empty_reply() -> None:
    with FakeOpenAIServer() as server:
        server.script(Error(429, retry_after=1), Drop("a whole-file edit cut in the middle", after=2), "")
        status, headers, raw = post(server, openai_body(stream=True))
        error = json.loads(raw)["error"]
        assert (status, headers["retry-after"], error["code"]) == (429, "1", "rate_limit_exceeded")
        assert "Rate limit" in error["message"]
        status, _, raw = post(server, openai_body(stream=True))
        datas = [d for _, d in sse_events(raw)]
        assert status == 200 and "[DONE]" not in datas and len(datas) == 3  # role chunk + 2 pieces
        status, _, raw = post(server, openai_body(stream=True))
        chunks = [json.loads(d) for d in [d for _, d in sse_events(raw)][:-1]]
        assert status == 200 and not [c for c in chunks if c["choices"][0]["delta"].get("content")]
        assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_a_tool_use_step_on_the_openai_fake_is_reported_as_a_test_mistake() -> None:
    server = FakeOpenAIServer()
    with pytest.raises(AssertionError, match="ToolUse steps are Anthropic tool calls"), server:
        server.script(ToolUse("Bash", {}))
        status, _, raw = post(server, openai_body())
        assert status == 500 and "whole_file" in json.loads(raw)["error"]["message"]
