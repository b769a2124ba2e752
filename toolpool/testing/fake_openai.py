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

To make aider edit files, script replies in its edit formats (see
:mod:`toolpool.testing.edits`)::

    server.script(whole_file("hello.py", "print('hi')\n"))                    # --edit-format whole
    server.script(search_replace("hello.py", "print('hi')", "print('bye')"))  # --edit-format diff

Token counts are word counts: deterministic, not realistic.
"""

from __future__ import annotations

import time
from typing import Any

from ._base import FakeLLMServer, Rendered, SseEvent
from ._http import Handler
from ._request import RecordedRequest, block_texts, count_words, split_chunks
from ._steps import ToolUse

__all__ = ["FakeOpenAIServer"]

_DEFAULT_MODEL = "fake-model"

_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
                429: "rate_limit_exceeded"}
# What the real API says, so a test can match the text the tool prints.
_ERROR_MESSAGES = {
    401: "Incorrect API key provided.",
    429: "Rate limit reached for requests. Please try again later.",
    500: "The server had an error while processing your request. Sorry about that!",
    503: "The engine is currently overloaded, please try again later.",
}


def _usage(request: RecordedRequest, text: str) -> dict[str, int]:
    texts: list[str] = []
    for message in request.messages:
        if isinstance(message, dict):
            texts.extend(block_texts(message.get("content")))
    prompt, completion = count_words(" ".join(texts)), count_words(text)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


class FakeOpenAIServer(FakeLLMServer):
    """Fake OpenAI Chat Completions API on ``http://127.0.0.1:<port>`` (see the module docstring).

    ``FakeOpenAIServer(reply=None, delay=0.0, port=0, host="127.0.0.1")``; use it as a
    context manager, or call :meth:`start` and :meth:`close`. Inherited controls:
    :meth:`script`, :meth:`on_prompt`, :meth:`set_delay`, :meth:`fail_next`,
    :meth:`reset`, :meth:`verify`, :attr:`requests`, :attr:`replies`,
    :attr:`total_usage`, :meth:`wait_for_requests`. Replies are text only: a
    :class:`~toolpool.testing.ToolUse` step is answered with a 500 naming the mistake.
    """

    generation_paths = frozenset({"/v1/chat/completions", "/chat/completions"})

    def _render(self, request: RecordedRequest, blocks: list[str | ToolUse]) -> Rendered:
        if any(isinstance(b, ToolUse) for b in blocks):
            raise ValueError("ToolUse steps are Anthropic tool calls: FakeOpenAIServer answers text "
                             "(for aider edits script whole_file(...) or search_replace(...) replies)")
        text = "".join(b for b in blocks if isinstance(b, str))
        completion_id = f"chatcmpl-fake-{self._next_id():06d}"
        model = request.model or _DEFAULT_MODEL
        created = int(time.time())
        usage = _usage(request, text)
        message = {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": usage,
        }

        def chunk(delta: dict[str, Any], finish_reason: str | None = None, **extra: Any) -> dict[str, Any]:
            return {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}], **extra}

        events = [SseEvent(chunk({"role": "assistant", "content": ""}), kind="head")]
        events += [SseEvent(chunk({"content": piece}), kind="delta") for piece in split_chunks(text) if piece]
        events += [SseEvent(chunk({}, "stop", usage=usage)), SseEvent("[DONE]")]
        return Rendered(message, events, usage)

    def _error_body(self, status: int, message: str) -> Any:
        code = "rate_limit_exceeded" if status == 429 else None
        return {"error": {"message": message, "type": _ERROR_TYPES.get(status, "server_error"), "param": None,
                          "code": code}}

    def _error_message(self, status: int) -> str:
        return _ERROR_MESSAGES.get(status) or super()._error_message(status)

    def _handle_other(self, request: RecordedRequest, handler: Handler) -> bool:
        if request.path in ("/v1/models", "/models") and request.method == "GET":
            handler.send_json(
                200,
                {"object": "list", "data": [
                    {"id": _DEFAULT_MODEL, "object": "model", "created": 0, "owned_by": "toolpool"}
                ]},
            )
            return True
        return False
