"""An offline stand-in for the OpenAI Chat Completions API, for driving aider without tokens.

Point a tool at ``server.url + "/v1"``; for aider::

    from toolpool.testing import FakeOpenAIServer

    with FakeOpenAIServer() as server:
        cmd = ["aider", "--openai-api-base", server.url + "/v1", "--openai-api-key", "fake",
               "--model", "openai/fake-model", ...]
        ...  # a prompt "hello" is answered "ECHO: hello"

Routes:
    ``POST /v1/chat/completions`` (also ``/chat/completions``): a ``chat.completion`` JSON,
    or when the body has ``"stream": true`` Server-Sent Events: ``chat.completion.chunk``
    objects (role, then the text in several ``delta.content`` pieces, then a final chunk
    with ``finish_reason: "stop"`` and ``usage``) and ``data: [DONE]``.
    ``GET /v1/models`` (also ``/models``): a one-model list (``fake-model``).
    ``GET /`` and ``HEAD /``: 200.

Token counts are word counts: deterministic, not realistic.
"""

from __future__ import annotations

import time
from typing import Any

from ._http import FakeLLMServer, RecordedRequest, _block_text, _Handler, count_words

__all__ = ["FakeOpenAIServer"]

_DEFAULT_MODEL = "fake-model"


def _usage(request: RecordedRequest, text: str) -> dict[str, int]:
    texts: list[str] = []
    for message in request.messages:
        if isinstance(message, dict):
            texts.extend(_block_text(message.get("content")))
    prompt, completion = count_words(" ".join(texts)), count_words(text)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


class FakeOpenAIServer(FakeLLMServer):
    """Fake OpenAI Chat Completions API on ``http://127.0.0.1:<port>`` (see the module docstring).

    ``FakeOpenAIServer(reply=None, delay=0.0, port=0, host="127.0.0.1")``; use it as a
    context manager, or call :meth:`start` and :meth:`close`. Inherited controls:
    :meth:`script`, :meth:`set_delay`, :meth:`fail_next`, :meth:`reset`, :attr:`requests`,
    :meth:`wait_for_requests`.
    """

    generation_paths = frozenset({"/v1/chat/completions", "/chat/completions"})

    def _send_reply(self, request: RecordedRequest, handler: _Handler, text: str, chunk_delay: float) -> None:
        completion_id = f"chatcmpl-fake-{self._next_id():06d}"
        model = request.model or _DEFAULT_MODEL
        created = int(time.time())
        usage = _usage(request, text)
        if not request.stream:
            handler.send_json(
                200,
                {
                    "id": completion_id,
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": text},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": usage,
                },
            )
            return

        def chunk(delta: dict[str, Any], finish_reason: str | None = None, **extra: Any) -> dict[str, Any]:
            return {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
                **extra,
            }

        handler.start_sse()
        handler.send_sse(chunk({"role": "assistant", "content": ""}))
        for piece in self._chunks(text, chunk_delay):
            if piece:
                handler.send_sse(chunk({"content": piece}))
        handler.send_sse(chunk({}, "stop", usage=usage))
        handler.send_sse("[DONE]")

    def _error_body(self, status: int, message: str) -> Any:
        kind = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
                429: "rate_limit_exceeded"}.get(status, "server_error")
        return {"error": {"message": message, "type": kind, "param": None, "code": None}}

    def _handle_other(self, request: RecordedRequest, handler: _Handler) -> bool:
        if request.path in ("/v1/models", "/models") and request.method == "GET":
            handler.send_json(
                200,
                {"object": "list", "data": [
                    {"id": _DEFAULT_MODEL, "object": "model", "created": 0, "owned_by": "toolpool"}
                ]},
            )
            return True
        return False
