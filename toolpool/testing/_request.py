"""What a fake server received: one request, and what its chat messages say."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["RecordedRequest", "ToolResult", "count_words", "last_user_text", "split_chunks"]


@dataclass(frozen=True)
class RecordedRequest:
    """One HTTP request received by a fake server, recorded when it arrived.

    Attributes:
        method: HTTP method, e.g. ``"POST"``.
        path: URL path without the query string, e.g. ``"/v1/messages"``.
        query: the raw query string (``"beta=true"``) or ``""``.
        headers: request headers with lower-cased names (a repeated header keeps its last value).
        body: the JSON-decoded body, or ``None`` when there was no body or it was not JSON.
        raw_body: the body bytes as received.
        timestamp: :func:`time.monotonic` when the request had been read, before any delay.
    """

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: Any
    raw_body: bytes
    timestamp: float

    @property
    def messages(self) -> list[dict[str, Any]]:
        """The ``messages`` list of a chat request (empty if absent)."""
        if isinstance(self.body, dict) and isinstance(self.body.get("messages"), list):
            messages: list[dict[str, Any]] = self.body["messages"]
            return messages
        return []

    @property
    def stream(self) -> bool:
        """Whether the client asked for a streamed (Server-Sent Events) response."""
        return isinstance(self.body, dict) and self.body.get("stream") is True

    @property
    def model(self) -> str:
        """The ``model`` the client asked for, or ``""``."""
        model = self.body.get("model") if isinstance(self.body, dict) else None
        return model if isinstance(model, str) else ""

    @property
    def user_text(self) -> str:
        """What the user typed last (see :func:`last_user_text`)."""
        return last_user_text(self.messages)

    @property
    def tool_results(self) -> list[ToolResult]:
        """The ``tool_result`` blocks of the last user message: what the tools the model
        called returned. Empty for a request that starts a turn."""
        users = [m for m in self.messages if isinstance(m, dict) and m.get("role") == "user"]
        if not users or not isinstance(users[-1].get("content"), list):
            return []
        calls = {b.get("id"): b for b in self.blocks("tool_use")}
        results = []
        for block in users[-1]["content"]:
            if isinstance(block, dict) and block.get("type") == "tool_result":
                call = calls.get(block.get("tool_use_id"), {})
                results.append(ToolResult(
                    tool_use_id=str(block.get("tool_use_id", "")),
                    content=block.get("content"),
                    is_error=block.get("is_error") is True,
                    name=call.get("name"),
                    input=call.get("input"),
                    request=self,
                ))
        return results

    def blocks(self, type: str) -> list[dict[str, Any]]:
        """Every content block of ``type`` (``"image"``, ``"tool_use"``, ...) in all messages,
        oldest first: e.g. to check that an image reached the API."""
        found: list[dict[str, Any]] = []
        for message in self.messages:
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, list):
                found.extend(b for b in content if isinstance(b, dict) and b.get("type") == type)
        return found


@dataclass(frozen=True)
class ToolResult:
    """A ``tool_result`` the client sent back: the outcome of a tool the model called.

    Attributes:
        tool_use_id: the id of the ``tool_use`` block it answers.
        content: as sent: a string or a list of content blocks.
        is_error: whether the client marked the result as an error (tool failed or denied).
        name: the called tool's name, from the matching ``tool_use`` in the history
            (``None`` if the history does not hold it).
        input: that call's input.
        request: the request that carried it.
    """

    tool_use_id: str
    content: Any
    is_error: bool
    name: str | None
    input: Mapping[str, Any] | None
    request: RecordedRequest = field(repr=False, compare=False)

    @property
    def text(self) -> str:
        """The result's text: the string, or its text blocks joined by newlines."""
        return "\n".join(block_texts(self.content))


def block_texts(content: Any) -> list[str]:
    """The text pieces of a message ``content``: a plain string or a list of content blocks."""
    if isinstance(content, str):
        return [content]
    if not isinstance(content, list):
        return []
    texts = []
    for block in content:
        if isinstance(block, str):
            texts.append(block)
        elif isinstance(block, dict) and block.get("type") in ("text", "input_text"):
            text = block.get("text")
            if isinstance(text, str):
                texts.append(text)
    return texts


def last_user_text(messages: Iterable[Any]) -> str:
    """What the user typed last: the last text of the last ``role == "user"`` message.

    ``content`` may be a string (returned whole) or a list of content blocks, of which the
    last ``{"type": "text"}`` block is returned; other blocks (images, tool results) are
    skipped. Taking the last block matters for Claude Code: it puts injected context in
    leading ``<system-reminder>`` blocks (skipped too), and after an interrupted turn it
    merges the interrupted prompt, ``[Request interrupted by user]`` and the next prompt
    into one user message of several blocks, the new prompt last.
    """
    for message in reversed(list(messages)):
        if not isinstance(message, dict) or message.get("role") != "user":
            continue
        texts = block_texts(message.get("content"))
        typed = [t for t in texts if not t.lstrip().startswith("<system-reminder>")]
        return (typed or texts or [""])[-1]
    return ""


def turn_prompt(messages: Iterable[Any]) -> str:
    """The prompt of the turn in progress: :func:`last_user_text` of the last user message
    that is not only tool results (a tool-using turn sends several requests)."""
    users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    for message in reversed(users):
        content = message.get("content")
        has_results = isinstance(content, list) and any(
            isinstance(b, dict) and b.get("type") == "tool_result" for b in content)
        if not has_results:
            return last_user_text([message])
    return ""


def count_words(text: str) -> int:
    """A deterministic stand-in for a token count: whitespace-separated words, at least 1."""
    return max(1, len(text.split()))


def split_chunks(text: str, size: int = 8) -> list[str]:
    """Split ``text`` into pieces of ``size`` characters, so streams carry several deltas."""
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]
