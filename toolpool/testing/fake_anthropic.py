"""An offline stand-in for the Anthropic Messages API, for driving Claude Code without tokens.

Point a tool at it with ``ANTHROPIC_BASE_URL=server.url`` and any ``ANTHROPIC_API_KEY``::

    from toolpool.testing import FakeAnthropicServer

    with FakeAnthropicServer() as server:
        env = {"ANTHROPIC_BASE_URL": server.url, "ANTHROPIC_API_KEY": "sk-fake", ...}
        ...  # run `claude -p "hello" ...`; it answers "ECHO: hello"
        assert server.requests[-1].user_text == "hello"

Routes:
    ``POST /v1/messages`` (any query, e.g. ``?beta=true``): a reply as JSON, or as
    Server-Sent Events when the body has ``"stream": true`` (message_start,
    content_block_start, several content_block_delta, content_block_stop, message_delta
    with ``stop_reason: "end_turn"`` and usage, message_stop).
    ``POST /v1/messages/count_tokens``: ``{"input_tokens": N}``.
    ``GET /`` and ``HEAD /``: 200 (Claude Code probes the base URL at start).

Token counts are word counts: deterministic, not realistic.
"""

from __future__ import annotations

from typing import Any

from ._http import FakeLLMServer, RecordedRequest, _block_text, _Handler, count_words

__all__ = ["FakeAnthropicServer"]

_DEFAULT_MODEL = "claude-fake-model"


def _input_tokens(request: RecordedRequest) -> int:
    """Words in the system prompt and all messages: a stable, cheap 'token' count."""
    body = request.body if isinstance(request.body, dict) else {}
    texts = _block_text(body.get("system"))
    for message in request.messages:
        if isinstance(message, dict):
            texts.extend(_block_text(message.get("content")))
    return count_words(" ".join(texts))


class FakeAnthropicServer(FakeLLMServer):
    """Fake Anthropic Messages API on ``http://127.0.0.1:<port>`` (see the module docstring).

    ``FakeAnthropicServer(reply=None, delay=0.0, port=0, host="127.0.0.1")``; use it as a
    context manager, or call :meth:`start` and :meth:`close`. Inherited controls:
    :meth:`script`, :meth:`set_delay`, :meth:`fail_next`, :meth:`reset`, :attr:`requests`,
    :meth:`wait_for_requests`.
    """

    generation_paths = frozenset({"/v1/messages"})

    def _send_reply(self, request: RecordedRequest, handler: _Handler, text: str, chunk_delay: float) -> None:
        msg_id = f"msg_fake_{self._next_id():06d}"
        model = request.model or _DEFAULT_MODEL
        input_tokens = _input_tokens(request)
        output_tokens = count_words(text)
        if not request.stream:
            handler.send_json(
                200,
                {
                    "id": msg_id,
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [{"type": "text", "text": text}],
                    "stop_reason": "end_turn",
                    "stop_sequence": None,
                    "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens},
                },
                {"request-id": f"req_fake_{msg_id[9:]}"},
            )
            return

        handler.start_sse()
        handler.send_sse(
            {
                "type": "message_start",
                "message": {
                    "id": msg_id,
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    # Like the real API: input counted up front, output so far is 1.
                    "usage": {"input_tokens": input_tokens, "output_tokens": 1},
                },
            },
            event="message_start",
        )
        handler.send_sse(
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
            event="content_block_start",
        )
        for piece in self._chunks(text, chunk_delay):
            if piece:
                handler.send_sse(
                    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}},
                    event="content_block_delta",
                )
        handler.send_sse({"type": "content_block_stop", "index": 0}, event="content_block_stop")
        handler.send_sse(
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": output_tokens},
            },
            event="message_delta",
        )
        handler.send_sse({"type": "message_stop"}, event="message_stop")

    def _error_body(self, status: int, message: str) -> Any:
        kind = {
            400: "invalid_request_error",
            401: "authentication_error",
            403: "permission_error",
            404: "not_found_error",
            413: "request_too_large",
            429: "rate_limit_error",
            529: "overloaded_error",
        }.get(status, "api_error")
        return {"type": "error", "error": {"type": kind, "message": message}}

    def _handle_other(self, request: RecordedRequest, handler: _Handler) -> bool:
        if request.path == "/v1/messages/count_tokens" and request.method == "POST":
            handler.send_json(200, {"input_tokens": _input_tokens(request)})
            return True
        return False
