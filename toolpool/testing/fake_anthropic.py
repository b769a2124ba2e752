"""An offline stand-in for the Anthropic Messages API, for driving Claude Code without tokens.

Point a tool at it with ``ANTHROPIC_BASE_URL=server.url`` and any ``ANTHROPIC_API_KEY``::

    from toolpool.testing import FakeAnthropicServer

    with FakeAnthropicServer() as server:
        env = {"ANTHROPIC_BASE_URL": server.url, "ANTHROPIC_API_KEY": "sk-fake", ...}
        ...  # run `claude -p "hello" ...`; it answers "ECHO: hello"
        assert server.requests[-1].user_text == "hello"

An agentic turn, checked (claude runs the tool, the fake sees its result)::

    server.script([ToolUse("Bash", {"command": "echo hi"}, expect="hi"), "done"])

Routes:
    ``POST /v1/messages`` (any query, e.g. ``?beta=true``): a reply as JSON, or as
    Server-Sent Events when the body has ``"stream": true`` (message_start, then per
    content block content_block_start, several content_block_delta (``text_delta`` or, for
    a :class:`~toolpool.testing.ToolUse`, ``input_json_delta``), content_block_stop, then
    message_delta with ``stop_reason`` ``"end_turn"`` or ``"tool_use"`` and usage,
    message_stop).
    ``POST /v1/messages/count_tokens``: ``{"input_tokens": N}``.
    ``GET /`` and ``HEAD /``: 200 (Claude Code probes the base URL at start).

Token counts are word counts: deterministic, not realistic.
"""

from __future__ import annotations

import json
from typing import Any

from ._base import FakeLLMServer, Rendered, SseEvent
from ._http import Handler
from ._request import RecordedRequest, block_texts, count_words, split_chunks
from ._steps import ToolUse

__all__ = ["FakeAnthropicServer"]

_DEFAULT_MODEL = "claude-fake-model"

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}
# What the real API says, so a test can match the text the tool prints.
_ERROR_MESSAGES = {
    401: "invalid x-api-key",
    403: "Your API key does not have permission to use the specified resource.",
    413: "Request exceeds the maximum allowed number of bytes.",
    429: "This request would exceed the rate limit for your organization. Please slow down.",
    500: "Internal server error",
    529: "Overloaded",
}


def _input_tokens(request: RecordedRequest) -> int:
    """Words in the system prompt and all messages: a stable, cheap 'token' count."""
    body = request.body if isinstance(request.body, dict) else {}
    texts = block_texts(body.get("system"))
    for message in request.messages:
        if isinstance(message, dict):
            texts.extend(block_texts(message.get("content")))
    return count_words(" ".join(texts))


class FakeAnthropicServer(FakeLLMServer):
    """Fake Anthropic Messages API on ``http://127.0.0.1:<port>`` (see the module docstring).

    ``FakeAnthropicServer(reply=None, delay=0.0, port=0, host="127.0.0.1")``; use it as a
    context manager, or call :meth:`start` and :meth:`close`. Inherited controls:
    :meth:`script`, :meth:`on_prompt`, :meth:`set_delay`, :meth:`fail_next`,
    :meth:`reset`, :meth:`verify`, :attr:`requests`, :attr:`replies`,
    :attr:`tool_results`, :meth:`wait_for_requests`.
    """

    generation_paths = frozenset({"/v1/messages"})

    def _render(self, request: RecordedRequest, blocks: list[str | ToolUse]) -> Rendered:
        msg_id = f"msg_fake_{self._next_id():06d}"
        content = [_content_block(b) for b in blocks]
        calls = [b for b in blocks if isinstance(b, ToolUse)]
        said = " ".join([b for b in blocks if isinstance(b, str)] + [json.dumps(dict(c.input)) for c in calls])
        usage = {"input_tokens": _input_tokens(request), "output_tokens": count_words(said)}
        stop_reason = "tool_use" if calls else "end_turn"
        message = {
            "id": msg_id,
            "type": "message",
            "role": "assistant",
            "model": request.model or _DEFAULT_MODEL,
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": usage,
        }
        # Like the real API: input counted up front, output so far is 1.
        opening = {**message, "content": [], "stop_reason": None, "usage": {**usage, "output_tokens": 1}}
        events = [SseEvent({"type": "message_start", "message": opening}, "message_start", "head")]
        for index, block in enumerate(content):
            events += _block_events(index, block)
        events.append(SseEvent({"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                                "usage": {"output_tokens": usage["output_tokens"]}}, "message_delta"))
        events.append(SseEvent({"type": "message_stop"}, "message_stop"))
        return Rendered(message, events, usage)

    def _error_body(self, status: int, message: str) -> Any:
        return {"type": "error", "error": {"type": _ERROR_TYPES.get(status, "api_error"), "message": message},
                "request_id": f"req_fake_{self._next_id():06d}"}

    def _error_message(self, status: int) -> str:
        return _ERROR_MESSAGES.get(status) or super()._error_message(status)

    def _send_stream_error(self, handler: Handler, body: Any) -> None:
        handler.send_sse(body, event="error")

    def _reply_headers(self, body: Any) -> dict[str, str]:
        if not isinstance(body, dict):
            return {}
        request_id = body.get("request_id") or str(body.get("id", "")).replace("msg_fake_", "req_fake_")
        return {"request-id": request_id} if request_id else {}

    def _handle_other(self, request: RecordedRequest, handler: Handler) -> bool:
        if request.path == "/v1/messages/count_tokens" and request.method == "POST":
            handler.send_json(200, {"input_tokens": _input_tokens(request)})
            return True
        return False


def _content_block(block: str | ToolUse) -> dict[str, Any]:
    if isinstance(block, str):
        return {"type": "text", "text": block}
    return {"type": "tool_use", "id": block.id, "name": block.name, "input": dict(block.input)}


def _block_events(index: int, block: dict[str, Any]) -> list[SseEvent]:
    """content_block_start, the deltas, content_block_stop for one content block."""
    start: dict[str, Any]
    if block["type"] == "text":
        start = {"type": "text", "text": ""}
        deltas = [{"type": "text_delta", "text": piece} for piece in split_chunks(block["text"]) if piece]
    else:  # tool_use: the input arrives as pieces of its JSON text, the block starts with {}
        start = {**block, "input": {}}
        deltas = [{"type": "input_json_delta", "partial_json": piece}
                  for piece in split_chunks(json.dumps(block["input"]), 16)]
    events = [SseEvent({"type": "content_block_start", "index": index, "content_block": start}, "content_block_start")]
    events += [SseEvent({"type": "content_block_delta", "index": index, "delta": d}, "content_block_delta", "delta")
               for d in deltas]
    events.append(SseEvent({"type": "content_block_stop", "index": index}, "content_block_stop"))
    return events
