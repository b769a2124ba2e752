"""What a fake server can answer to one generation request: the script steps.

A *step* answers exactly one request. Plain text (a ``str``) and :class:`Reply` are the
ordinary replies; :class:`ToolUse` makes the model call a tool; :class:`Error`,
:class:`Hang`, :class:`Stall` and :class:`Drop` are the ways a real API fails. A callable
``(request) -> step`` computes the step when the request arrives.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._request import RecordedRequest, ToolResult

__all__ = [
    "Drop",
    "Error",
    "Hang",
    "Reply",
    "ReplySpec",
    "ResultCheck",
    "Stall",
    "Step",
    "ToolUse",
]

#: How a :class:`ToolUse` checks the ``tool_result`` that comes back: a substring of its
#: text, a regular expression searched in it, or a predicate (returning False or raising
#: AssertionError fails the check).
ResultCheck = str | re.Pattern[str] | Callable[["ToolResult"], object]


@dataclass(frozen=True)
class ToolUse:
    """The model calls a tool: a ``tool_use`` content block (Anthropic only).

    Streamed as ``content_block_start`` (``input: {}``), ``input_json_delta`` deltas and
    ``content_block_stop``; the message ends with ``stop_reason: "tool_use"``.

    Args:
        name: the tool's name as the client declared it, e.g. ``"Bash"``.
        input: the tool's arguments, e.g. ``{"command": "echo hi"}``.
        id: the ``tool_use`` id; ``None`` makes a unique ``toolu_fake_...`` one.
        expect: a check of the ``tool_result`` the client sends back for this call (see
            :data:`ResultCheck`). A failed check is answered with HTTP 400 naming it,
            listed by :meth:`FakeLLMServer.verify`, and raised when the ``with`` block ends.
        text: text the model says before calling the tool (a text block first), if any.
        delay: seconds to wait before answering; ``None`` uses the server's delay.
        chunk_delay: seconds between streamed deltas.
    """

    name: str
    input: Mapping[str, Any] = field(default_factory=dict)
    id: str | None = None
    expect: ResultCheck | None = None
    text: str = ""
    delay: float | None = None
    chunk_delay: float = 0.0


# A reply's content: its text, or content blocks (text pieces and tool calls) in order.
Content = str | Sequence[str | ToolUse] | Callable[["RecordedRequest"], str]


@dataclass(frozen=True)
class Reply:
    """A reply with its own timing, for :meth:`FakeLLMServer.script`.

    Args:
        text: the reply text, a callable ``(request) -> str`` computing it, or (Anthropic)
            a list of content blocks: strings and :class:`ToolUse` calls, e.g.
            ``["Let me look.", ToolUse("Read", {"file_path": "a.py"})]``.
        delay: seconds to wait before answering (before any response byte is sent);
            ``None`` uses the server's current delay (:meth:`FakeLLMServer.set_delay`).
        chunk_delay: seconds to wait between streamed chunks, to make a reply arrive
            slowly (useful to interrupt a tool mid-reply). Ignored for non-streamed replies.
    """

    text: Content
    delay: float | None = None
    chunk_delay: float = 0.0


@dataclass(frozen=True)
class Error:
    """An HTTP error answer, in the provider's error JSON (``fail_next`` queues these).

    Args:
        status: HTTP status: 401 (bad key), 429 (rate limit), 529 (Anthropic overloaded),
            500 ... Clients usually retry 429 and 5xx and give up at once on other 4xx.
        message: the error message; ``None`` uses the provider's usual one.
        retry_after: seconds for a ``retry-after`` header (a 429 usually carries one).
        headers: more response headers, e.g. ``{"x-should-retry": "false"}``.
        body: the whole body (str, bytes or JSON-able) instead of the provider's shape.
        in_stream: answer 200 and start the stream, then send the error as a stream event
            (how the real API reports an overload that happens mid-reply).
        delay: seconds to wait before answering; ``None`` uses the server's delay.
    """

    status: int = 500
    message: str | None = None
    retry_after: float | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    body: Any = None
    in_stream: bool = False
    delay: float | None = None


@dataclass(frozen=True)
class Hang:
    """Read the request and never answer: no status line, no byte.

    The handler holds the connection until the client gives up (closes it) or the server
    is closed, whichever comes first.
    """


@dataclass(frozen=True)
class Stall:
    """Send the response headers and the stream's opening, then nothing more.

    ``after`` text chunks of ``text`` are sent first (0: only the headers and
    ``message_start`` / the first chunk that names the role). Held like :class:`Hang`.
    """

    text: str = ""
    after: int = 0


@dataclass(frozen=True)
class Drop:
    """Stream ``after`` chunks of ``text``, then cut the connection mid-reply.

    The stream never ends properly (no ``message_stop`` / ``[DONE]``). With ``reset=True``
    the cut is a TCP reset instead of an orderly close, which clients report as a
    connection error rather than a short stream.
    """

    text: str = "a reply cut short by a dropped connection"
    after: int = 1
    reset: bool = False
    chunk_delay: float = 0.0


#: Anything that answers one request.
Step = str | Reply | ToolUse | Error | Hang | Stall | Drop

#: What callers may pass wherever a reply is expected: a step or a callable computing one.
ReplySpec = Step | Callable[["RecordedRequest"], Any]


def check_result(expect: ResultCheck, result: ToolResult) -> str | None:
    """None when ``result`` passes ``expect``, else why it does not."""
    if isinstance(expect, str):
        return None if expect in result.text else f"expected {expect!r} in {result.text!r}"
    if isinstance(expect, re.Pattern):
        return None if expect.search(result.text) else f"expected /{expect.pattern}/ in {result.text!r}"
    try:
        passed = expect(result)
    except AssertionError as exc:
        return f"check {getattr(expect, '__name__', expect)!r} failed: {exc}"
    except Exception as exc:  # noqa: BLE001 (a broken check is a failed check, reported, not a server crash)
        return f"check {getattr(expect, '__name__', expect)!r} raised {exc!r}"
    return None if passed or passed is None else f"check {getattr(expect, '__name__', expect)!r} returned {passed!r}"
