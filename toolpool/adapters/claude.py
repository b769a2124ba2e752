"""Claude Code's ``claude`` CLI, driven through its stream-json protocol.

Two modes:

``mode="session"`` (default): one long-lived process per slot,
``claude -p --input-format stream-json --output-format stream-json --verbose``.
Each prompt is one JSON line on stdin; claude keeps the conversation's context
across prompts.  Readiness is an ``initialize`` control request answered by a
``control_response``.  A turn's output is ``system/init``, ``assistant`` (and
``user``/``stream_event``/``system/*``) lines and ends at its ``result`` line.

``mode="oneshot"``: one process per prompt, ``claude -p --output-format
stream-json --verbose``; the prompt is written to stdin as plain text, stdin is
closed, claude answers once and exits.  No context is kept between prompts.

What a caller gets (both modes): a :class:`~toolpool.response.Response` whose
``text`` is the result's ``result`` text (or, when the result carries none, the
text of the turn's assistant messages), with ``session_id``, ``cost_usd``
(what this turn cost: claude's ``total_cost_usd`` counts the whole process so
far, kept in ``meta["session_cost_usd"]``), ``usage``, ``is_error``, ``num_turns`` and ``events``
(every parsed line of the turn, in order); the result's other keys
(``subtype``, ``duration_ms``, ``stop_reason``...) plus ``model`` and
``interrupted`` are in ``Response.meta``.

Failure contract: an API failure that claude reports (server down, HTTP
errors after retries, refused request) is a *Response* with
``is_error=True`` and the error message in ``text``; judge by ``is_error``,
never by ``subtype`` (claude reports a refused connection as subtype
"success").  Exceptions are for toolpool-level failures: :class:`ProtocolError`
(a line that is not JSON or longer than ``max_line_bytes``),
:class:`ResponseTooLarge`, :class:`InstanceCrashed` (claude exited mid-turn,
with its exit code and stderr tail), :class:`SpawnError` (claude did not
become ready, e.g. ``resume`` names an unknown session).

Interrupts (:meth:`ToolProcessPool.interrupt`): in session mode a control
``interrupt`` request; the interrupted request ends with a Response with
``is_error=True`` and ``meta["interrupted"] = True`` (text: what the model
had said so far), and the process stays usable.  Claude normally prints the
interrupted turn's ``result`` right after ``[Request interrupted by user]``,
but sometimes only after the *next* stdin message; so the framer ends the turn
when that marker has been followed by ``interrupt_settle`` seconds of silence,
and then discards the late ``result`` when it shows up before the next turn's
``system/init`` (it never ends the next turn).  In oneshot mode an interrupt
is SIGINT, on which claude exits at once without a result; the request ends
the same way.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import dataclasses
import json
import logging
import os
import re
import shutil
import signal
import tempfile
import threading
import uuid as uuidlib
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeAlias, TypeVar

from ..errors import InstanceCrashed, ProtocolError, ResponseTooLarge, SpawnError, ToolNotFoundError
from ..response import Response
from ..tools import find_tool, where_looked
from .base import DEFAULT_MAX_RESPONSE_BYTES, RATE_LIMIT_EVENT, Adapter, Control, Cut, Frame, Framer, redact_argv
from .claude_content import content_of, is_empty
from .claude_control import (
    DEFAULT_CALLBACK_TIMEOUT,
    CanUseTool,
    ControlBroker,
    ControlError,
    Hook,
    ToolServer,
    control_line,
)

log = logging.getLogger("toolpool.adapters.claude")

#: Longest single stdout line accepted.  claude prints one JSON object per
#: line; a tool result can make one line several MiB, nothing sane reaches this.
DEFAULT_MAX_LINE_BYTES = 16 * 1024 * 1024

#: Silence after ``[Request interrupted by user]`` before an interrupted turn
#: ends without its ``result`` (the result normally follows within ms).
DEFAULT_INTERRUPT_SETTLE = 0.5

INSTALL_HINT = ("install Claude Code with `npm install @anthropic-ai/claude-code` (then use "
                "node_modules/.bin/claude) and put it on PATH, or pass cli_path=")

#: Environment switches that keep claude from talking to anything but the API.
QUIET_ENV = {
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    "DISABLE_TELEMETRY": "1",
    "DISABLE_AUTOUPDATER": "1",
    "DISABLE_ERROR_REPORTING": "1",
}

#: Set by a parent Claude Code session; inherited, they change how the child behaves.
PARENT_SESSION_ENV = ("CLAUDECODE", "CLAUDE_CODE_ENTRYPOINT")

READY_REQUEST_ID = "toolpool-init"
INTERRUPT_MARKER = "[Request interrupted by user"
MODES = ("session", "oneshot")

#: Result keys that map onto Response fields; the others go to Response.meta.
_RESULT_FIELDS = {"session_id": "session_id", "total_cost_usd": "cost_usd", "usage": "usage",
                  "is_error": "is_error", "num_turns": "num_turns", "permission_denials": "permission_denials",
                  "structured_output": "structured_output", "stop_reason": "stop_reason"}

#: Result subtypes for a turn claude stopped at a limit of ours: is_error, and text that says why.
_LIMIT_STOPS = {
    "error_max_turns": "claude stopped after {num_turns} turns: it reached max_turns before finishing the task; "
                       "raise ClaudeAdapter(max_turns=...) or split the task",
    "error_max_budget_usd": "claude stopped: the turn reached max_budget_usd (spent ${cost}); raise "
                            "ClaudeAdapter(max_budget_usd=...) if the task needs more",
    "error_max_structured_output_retries": "claude could not produce output matching json_schema after several "
                                           "attempts; check the schema or the prompt",
}
_RESPONSE_ATTRS = {f.name for f in dataclasses.fields(Response)}


def text_delta(event: Mapping[str, Any]) -> str | None:
    """The text a streamed event adds to the answer, else None.

    Only ``stream_event`` lines carry deltas, and claude prints them only with
    ``include_partial_messages=True``.  Use it in an ``on_event`` callback::

        pool.ask(0, "hi", on_event=lambda e: print(text_delta(e) or "", end=""))
    """
    if event.get("type") != "stream_event":
        return None
    inner = event.get("event")
    if not isinstance(inner, dict) or inner.get("type") != "content_block_delta":
        return None
    delta = inner.get("delta")
    if isinstance(delta, dict) and delta.get("type") == "text_delta" and isinstance(delta.get("text"), str):
        text: str = delta["text"]
        return text
    return None


def _control_request(request_id: str, subtype: str) -> bytes:
    line = {"type": "control_request", "request_id": request_id, "request": {"subtype": subtype}}
    return json.dumps(line).encode("ascii") + b"\n"


def _assistant_text(message: Mapping[str, Any]) -> str:
    content = (message.get("message") or {}).get("content")
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    return "".join(b.get("text", "") for b in content if isinstance(b, dict) and b.get("type") == "text")


def _blocks(line: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The content blocks of an assistant or user line (none for plain-string content)."""
    content = (line.get("message") or {}).get("content")
    return [b for b in content if isinstance(b, dict)] if isinstance(content, list) else []


def _result_text(content: Any) -> str:
    """A tool_result's content as text (its text blocks joined)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(b.get("text", "") for b in content if isinstance(b, dict) and b.get("type") == "text")
    return ""


def _is_interrupt_marker(line: Mapping[str, Any]) -> bool:
    """True for claude's ``[Request interrupted by user...]`` user line (not a replayed prompt)."""
    if line.get("type") != "user" or line.get("isReplay"):
        return False
    content = (line.get("message") or {}).get("content")
    blocks = content if isinstance(content, list) else [{"type": "text", "text": content}]
    for block in blocks:
        if not isinstance(block, dict):
            continue
        texts = [block.get("text")]
        if block.get("type") == "tool_result":  # interrupted during a tool call
            inner = block.get("content")
            texts = [inner] if isinstance(inner, str) else [b.get("text") for b in inner or [] if isinstance(b, dict)]
        if any(isinstance(t, str) and t.startswith(INTERRUPT_MARKER) for t in texts):
            return True
    return False


def _rate_limit_event(obj: dict[str, Any]) -> dict[str, Any] | None:
    """A ``RATE_LIMIT_EVENT`` for claude's ``system/api_retry`` line after a 429 or 529, else None.

    claude's ``retry_delay_ms`` is how long it waits before its own retry (the server's
    ``retry-after`` when it sent one): the other instances should not call sooner.
    """
    if obj.get("type") != "system" or obj.get("subtype") != "api_retry":
        return None
    status = obj.get("error_status")
    if status not in (429, 529):
        return None
    delay = obj.get("retry_delay_ms")
    retry_after = delay / 1000.0 if isinstance(delay, (int, float)) and not isinstance(delay, bool) else None
    return {"type": RATE_LIMIT_EVENT, "status": status, "retry_after": retry_after}


class _TurnState:
    """What the framer collects for one request's turn (or the tool's own)."""

    __slots__ = ("kind", "uuid", "events", "raw", "size", "texts", "session_id", "model", "interrupt_requested",
                 "marker_seen", "overflow", "failed", "tool_calls", "open_tools", "control_calls", "retries",
                 "stalled")

    def __init__(self, kind: str, uuid: str | None = None) -> None:
        self.kind = kind  # "ready" (readiness or probe), "prompt", or "tool" (started by claude itself)
        self.uuid = uuid
        self.events: list[dict[str, Any]] = []
        self.raw = bytearray()
        self.size = 0
        self.texts: list[str] = []
        self.session_id: str | None = None
        self.model: str | None = None
        self.interrupt_requested = False
        self.marker_seen = False
        self.overflow = False
        self.failed = False
        self.tool_calls: list[dict[str, Any]] = []  # {"id", "name", "input", "result", "is_error"}
        self.open_tools: dict[str, dict[str, Any]] = {}  # tool_use id -> its call, until its result arrives
        self.control_calls: list[dict[str, Any]] = []  # appended by the broker's answers, off the reader thread
        self.retries: list[dict[str, Any]] = []  # claude's api_retry lines
        self.stalled: float | None = None  # seconds of silence that ended the turn (stall watchdog)


#: What a claude turn (``system/init`` ... ``result``) belongs to, until its replayed
#: user message names it: a request of ours, nobody (the tool started it), or a
#: request that already ended (interrupted, or failed on an over-long line).
_PENDING, _STALE, _POSITIONAL = "pending", "stale", "positional"

_UUID_AT_END = re.compile(rb'"uuid": "([0-9a-f-]{36})"\}\n\Z')


class ClaudeFramer(Framer):
    """Cuts claude's stream-json output into one frame per turn, each for the request that caused it.

    ``session``: True for the long-lived mode.  There every user message
    carries a ``uuid`` and claude (``--replay-user-messages``) echoes it at the
    start of the turn that answers it.  A claude turn runs from ``system/init``
    to ``result``; it is attributed to a request only when that request's
    echo appears in it.  So a turn claude starts by itself (a background task
    finished) becomes an *unsolicited* frame, the late ``result`` of an
    interrupted turn is dropped, and neither can shift a later answer.

    A line that is not a JSON object fails the current request with
    :class:`ProtocolError` (the turn goes on to its ``result``).  A line
    longer than ``max_line_bytes`` ends the current request at once with a
    :class:`ProtocolError` naming the limit; the rest of that claude turn is
    dropped, so the instance is reusable straight away.

    ``broker``: answers claude's ``control_request`` lines (permission
    callback, hooks, in-process tools) as :attr:`Cut.calls`, off the reader
    thread; without one they are refused at once.  ``slot``: the instance
    index the broker's callbacks are told.  ``stall_timeout``: while claude
    waits on the API (no tool running, no request of its own unanswered), this
    many seconds without a line end the turn as an ``is_error`` Response
    (``meta["stalled"]``) and interrupt claude, which would otherwise wait
    for a stalled stream for 5 minutes.  It needs a line per streamed chunk:
    the adapter adds ``--include-partial-messages`` and, unless the caller
    asked for them, ``keep_stream_events=False`` drops those lines from the
    Response.  :meth:`begin_control` sends a control request of ours.
    """

    def __init__(self, *, session: bool = True, max_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
                 max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
                 interrupt_settle: float = DEFAULT_INTERRUPT_SETTLE, broker: ControlBroker | None = None,
                 slot: int = -1, stall_timeout: float | None = None, keep_stream_events: bool = True) -> None:
        super().__init__(max_bytes)
        self.session = session
        self.broker = broker if broker is not None and broker.active else None
        self.slot = slot
        self.stall_timeout = stall_timeout
        self.keep_stream_events = keep_stream_events
        self._answering: set[Any] = set()  # ids of claude's requests a broker call is answering
        self._controls: dict[str, cf.Future[dict[str, Any]]] = {}  # our control requests awaiting answers
        self._control_ids = 0
        self._cost_so_far = 0.0  # claude's last total_cost_usd in this process
        self.max_line_bytes = max_line_bytes
        self.settle = interrupt_settle
        self._buf = bytearray()
        self._scanned = 0  # bytes of _buf known to hold no newline
        self._skipping = False  # dropping the rest of an over-long line
        self._turn: _TurnState | None = None  # the request waiting for its answer
        self._owner: str | None = None  # the running claude turn: a uuid, _PENDING, _STALE, or None (none runs)
        self._held: list[tuple[dict[str, Any], bytes]] = []  # lines of a claude turn not yet attributed
        self._streamed: set[int] = set()  # ids of held lines already streamed ahead (see _stream_ahead)
        self._tool: _TurnState | None = None  # a turn claude started by itself
        self._ended: collections.deque[str] = collections.deque(maxlen=64)  # uuids of requests that ended early
        self._interrupts = 0
        self._cut = Cut()

    # -- called by the instance ------------------------------------------------------
    def start_turn(self, prompt: str | None, data: bytes = b"") -> None:
        uuid = None
        if prompt is not None and self.session:
            m = _UUID_AT_END.search(data)
            uuid = m.group(1).decode() if m else None
        self._turn = _TurnState("ready" if prompt is None else "prompt", uuid)

    def interrupt_sent(self) -> Cut:
        """A control ``interrupt`` for the prompt turn in progress (session mode)."""
        turn = self._turn
        if turn is None or turn.kind != "prompt":
            return Cut()
        turn.interrupt_requested = True
        if not self.session:
            return Cut()
        self._interrupts += 1
        return Cut(send=_control_request(f"toolpool-interrupt-{self._interrupts}", "interrupt"))

    def feed(self, data: bytes) -> Cut:
        cut = self._cut = Cut()
        self._buf += data
        while True:
            nl = self._buf.find(b"\n", self._scanned)
            if nl < 0:
                break
            line = bytes(self._buf[:nl])
            del self._buf[: nl + 1]
            self._scanned = 0
            if self._skipping:  # the end of a line already reported as too long
                self._skipping = False
                continue
            self._line(line)
        self._scanned = len(self._buf)
        if len(self._buf) > self.max_line_bytes and not self._skipping:
            self._too_long(bytes(self._buf[:200]))
            self._skipping = True
        if self._skipping:
            del self._buf[:]
            self._scanned = 0
        if self.has_candidate():
            cut.quiet = self.settle
        elif self._waiting_on_api():
            cut.quiet = self.stall_timeout
        return cut

    def _waiting_on_api(self) -> bool:
        """True while silence means the API stream stalled: our turn runs, no tool or callback is busy."""
        turn = self._turn
        return (self.stall_timeout is not None and self.session and turn is not None and turn.kind == "prompt"
                and not turn.failed and not turn.interrupt_requested and not turn.open_tools
                and not self._answering and self._tool is None
                # with partial messages claude may echo our message late: a pending turn counts as ours
                and self._owner is not None and self._owner in (turn.uuid, _PENDING))

    def begin_control(self, request: Mapping[str, Any]) -> tuple[cf.Future[dict[str, Any]], bytes]:
        """Register a control request of ours: the Future of claude's answer, and the line to write.

        The Future gets the ``response`` of claude's ``control_response``, or
        :class:`ControlError` when claude answers with an error, or
        :class:`InstanceCrashed` if claude exits first.  Call under the
        instance lock, like every framer method; write the bytes after.
        """
        if not self.session:
            raise ValueError("control requests need mode='session' (a one-shot claude's stdin is closed)")
        self._control_ids += 1
        request_id = f"toolpool-control-{self._control_ids}"
        future: cf.Future[dict[str, Any]] = cf.Future()
        self._controls[request_id] = future
        return future, control_line(request_id, request)

    def has_candidate(self) -> bool:
        return self._turn is not None and self._turn.marker_seen

    def on_quiet(self) -> Cut:
        """The interrupt marker was followed by silence: end the request; its late result is dropped."""
        cut = self._cut = Cut()
        turn = self._turn
        if turn is not None and turn.marker_seen:
            log.debug("claude: interrupted turn ended without its result; the late result will be dropped")
            self._end_early(turn)
            cut.frames.append(self._finish(turn, None))
        elif turn is not None and self._waiting_on_api():
            assert self.stall_timeout is not None
            log.warning("claude: no output for %gs while waiting on the API; the turn ends with an error and "
                        "claude is interrupted (stall_timeout)", self.stall_timeout)
            turn.stalled = self.stall_timeout
            self._end_early(turn)
            cut.frames.append(self._finish(turn, None))
            self._interrupts += 1
            cut.send = _control_request(f"toolpool-interrupt-{self._interrupts}", "interrupt")
        return cut

    def on_exit(self, exit_code: int | None) -> Cut:
        """Parse a last unterminated line.  An interrupted oneshot turn ends here.

        Otherwise a turn still open is left to the instance, which reports
        :class:`InstanceCrashed` with claude's exit code and stderr tail.
        """
        cut = self._cut = Cut()
        if self._buf and not self._skipping:
            line = bytes(self._buf)
            del self._buf[:]
            self._line(line)
        turn = self._turn
        if turn is not None and turn.kind == "prompt" and (turn.marker_seen or
                                                            (turn.interrupt_requested and not self.session)):
            cut.frames.append(self._finish(turn, None))
        controls, self._controls = self._controls, {}
        for future in controls.values():  # only waiters block on these: resolving under the lock is safe
            future.set_exception(InstanceCrashed(self.slot, exit_code, "", b""))
        return cut

    def partial(self) -> bytes:
        raw = bytes(self._turn.raw) if self._turn is not None else b""
        return raw + bytes(self._buf[:65536])

    # -- parsing -------------------------------------------------------------------------
    def _line(self, line: bytes) -> None:
        if not line.strip():
            return
        if len(line) > self.max_line_bytes:
            self._too_long(line[:200])
            return
        try:
            obj = json.loads(line)
            if not isinstance(obj, dict):
                raise ValueError("not a JSON object")
        except (ValueError, UnicodeDecodeError) as exc:
            self._protocol_error(f"claude printed a line that is not a stream-json object ({exc}): {line[:200]!r}"
                                 f"{' (truncated)' if len(line) > 200 else ''}", final=False)
            return
        kind = obj.get("type")
        limit = _rate_limit_event(obj)
        if limit is not None:  # at once, whoever's turn it is: the pool pauses every instance
            self._cut.events.append(limit)
        if kind == "control_response":
            self._control_response(obj, line)
        elif kind == "control_request":
            self._control_request(obj, line)
        elif not self.session:
            self._oneshot_line(obj, line)
        elif kind == "system" and obj.get("subtype") == "init":
            self._turn_begins(obj, line)
        elif kind == "user" and obj.get("isReplay"):
            self._replayed(obj, line)
        else:
            self._route(obj, line)
            if kind == "result":
                self._turn_ends(obj)

    def _oneshot_line(self, obj: dict[str, Any], line: bytes) -> None:
        turn = self._turn
        if turn is None or turn.kind != "prompt":
            log.debug("claude: output with no request pending: %.200r", line)
            return
        self._prompt_line(turn, obj, line)
        if obj.get("type") == "result":
            self._cut.frames.append(self._finish(turn, obj))

    def _turn_begins(self, obj: dict[str, Any], line: bytes) -> None:
        """``system/init``: claude starts a turn; whose it is, its replayed message will say."""
        if self._owner is not None and self._owner not in (_PENDING, _STALE):
            self._route(obj, line)  # a second init inside an attributed turn (claude repeats it)
            return
        if self._owner == _PENDING and self._held:
            self._route(obj, line)
            return
        turn = self._turn
        if turn is not None and turn.kind == "prompt" and turn.uuid is None:
            # A message sent without a uuid (a capture, a subclass's own encoding): the next
            # claude turn is taken to be its answer, as claude answers messages in order.
            self._owner = _POSITIONAL
            self._prompt_line(turn, obj, line)
            return
        self._owner = _PENDING
        self._held = [(obj, line)]
        self._stream_ahead(obj)
        if turn is None or turn.kind == "ready":
            # Nobody of ours is waiting for an answer: claude began on its own.  Hold prompts back.
            self._tool = _TurnState("tool")
            self._cut.tool_turn = True

    def _replayed(self, obj: dict[str, Any], line: bytes) -> None:
        """Our user message, echoed: the running claude turn answers it."""
        if self._owner == _POSITIONAL:
            self._route(obj, line)
            return
        uuid = obj.get("uuid")
        turn = self._turn
        held, self._held = self._held, []
        if turn is not None and turn.kind == "prompt" and uuid is not None and uuid == turn.uuid:
            self._owner = uuid
            if self._tool is not None:  # claude had started on its own, then took our message
                self._tool = None
            for held_obj, held_line in held:
                self._prompt_line(turn, held_obj, held_line)
            self._prompt_line(turn, obj, line)
            return
        self._owner = _STALE if uuid in self._ended else (self._owner or _PENDING)
        if self._owner == _STALE:
            log.debug("claude: a turn for a request that already ended; dropping it")
            return
        self._held = held + [(obj, line)]

    def _route(self, obj: dict[str, Any], line: bytes) -> None:
        """A line inside (or between) claude turns: to its owner, or held until the owner is known."""
        owner = self._owner
        turn = self._turn
        if turn is not None and turn.kind == "prompt" and (owner == _POSITIONAL or (owner == turn.uuid
                                                                                  and owner is not None)):
            self._prompt_line(turn, obj, line)
        elif owner == _STALE:
            log.debug("claude: dropped a line of a turn whose request already ended: %.200r", line)
        elif owner == _PENDING or owner is None:
            if len(self._held) < 10000:
                self._held.append((obj, line))
                self._stream_ahead(obj)
        else:
            log.debug("claude: dropped a line of a turn whose request already ended: %.200r", line)

    def _stream_ahead(self, obj: dict[str, Any]) -> None:
        """Stream a line of a claude turn not yet attributed, when it is almost surely ours.

        With ``--include-partial-messages`` claude echoes our message only after the
        text deltas, so waiting for the echo would hold back all streaming.  While our
        request waits and claude had not begun a turn of its own, the turn is streamed
        at once; the *answer* is still given only once the echo proves whose it is.
        """
        turn = self._turn
        if turn is not None and turn.kind == "prompt" and turn.uuid is not None and self._tool is None:
            if self.keep_stream_events or obj.get("type") != "stream_event":
                self._cut.events.append(obj)
                self._streamed.add(id(obj))

    def _turn_ends(self, obj: dict[str, Any]) -> None:
        """A ``result``: the running claude turn is over."""
        owner, self._owner = self._owner, None
        held, self._held = self._held, []
        if owner != _PENDING:
            self._streamed.clear()
        turn = self._turn
        if owner is not None and owner not in (_PENDING, _STALE):
            if turn is not None and turn.kind == "prompt" and (owner == _POSITIONAL or owner == turn.uuid):
                self._cut.frames.append(self._finish(turn, obj))
            return
        if owner == _STALE:
            log.debug("claude: dropped the late result of a request that already ended")
            if self._tool is not None:  # claude's own turn, cut short: end it (the instance holds prompts)
                tool, self._tool = self._tool, None
                frame = self._finish(tool, obj)
                frame.unsolicited = True
                self._cut.frames.append(frame)
            return
        if turn is not None and turn.kind == "ready" and self._tool is None:
            # claude gave up before it was ready (e.g. an unknown --resume id).
            self._turn = None
            detail = "; ".join(map(str, obj.get("errors") or [])) or obj.get("result") or obj.get("subtype")
            self._cut.frames.append(Frame(raw=json.dumps(obj).encode(), error=SpawnError(
                f"claude failed to start: {detail}")))
            return
        # No message of ours in it: a turn claude ran by itself.
        tool = self._tool or _TurnState("tool")
        self._tool = None
        for held_obj, held_line in held:
            self._prompt_line(tool, held_obj, held_line)
        frame = self._finish(tool, obj)
        frame.unsolicited = True
        self._cut.frames.append(frame)

    def _record(self, turn: _TurnState, obj: dict[str, Any], line: bytes) -> None:
        """Stream ``obj`` to the caller and keep it for the Response, up to ``max_bytes``."""
        if not self.keep_stream_events and obj.get("type") == "stream_event":
            return  # asked for by the stall watchdog only
        if turn.kind == "prompt":
            if self._streamed and id(obj) in self._streamed:
                self._streamed.discard(id(obj))  # streamed ahead already
            else:
                self._cut.events.append(obj)
        turn.size += len(line) + 1
        if turn.overflow:  # past the limit, events still stream but are not kept
            return
        if turn.size > self.max_bytes:
            turn.overflow = True
            error = ResponseTooLarge(self.max_bytes, bytes(turn.raw[:65536]))
            turn.raw, turn.events = bytearray(), []
            if turn.kind == "prompt":
                turn.failed = True
                self._cut.frames.append(Frame(error=error, final=False))
            return
        turn.raw += line + b"\n"
        turn.events.append(obj)

    def _prompt_line(self, turn: _TurnState, obj: dict[str, Any], line: bytes) -> None:
        self._record(turn, obj, line)
        kind = obj.get("type")
        if kind == "system" and obj.get("subtype") == "init":
            turn.session_id = obj.get("session_id", turn.session_id)
            turn.model = obj.get("model", turn.model)
        elif kind == "assistant":
            turn.texts.append(_assistant_text(obj))
            for block in _blocks(obj):
                if block.get("type") == "tool_use" and isinstance(block.get("id"), str):
                    call = {"id": block["id"], "name": block.get("name"), "input": block.get("input"),
                            "result": None, "is_error": None}
                    turn.tool_calls.append(call)
                    turn.open_tools[block["id"]] = call
        elif kind == "user":
            if turn.interrupt_requested and _is_interrupt_marker(obj):
                turn.marker_seen = True  # only after our interrupt: a tool result may quote the marker
            for block in _blocks(obj):
                done = turn.open_tools.pop(str(block.get("tool_use_id")), {}) \
                    if block.get("type") == "tool_result" else {}
                if done:
                    done["result"] = _result_text(block.get("content"))
                    done["is_error"] = bool(block.get("is_error", False))
        elif kind == "system" and obj.get("subtype") == "api_retry":
            turn.retries.append({k: v for k, v in obj.items() if k not in ("type", "subtype", "uuid", "session_id")})

    def _control_request(self, obj: dict[str, Any], line: bytes) -> None:
        """claude asks its client something: the broker answers off this thread; without one, refuse at once."""
        request = obj.get("request") or {}
        subtype = request.get("subtype")
        broker = self.broker
        if broker is not None:
            turn = self._turn if self._turn is not None and self._turn.kind == "prompt" else None
            records = turn.control_calls if turn is not None else None
            request_id, answering, slot = obj.get("request_id"), self._answering, self.slot
            answering.add(request_id)

            def answer() -> bytes:
                try:
                    data, record = broker.answer(slot, obj)
                finally:
                    answering.discard(request_id)  # set.discard is atomic: no lock needed
                if records is not None:
                    records.append(record)  # before claude gets the answer, so before the result line
                return data

            self._cut.calls.append(answer)
            self._route(obj, line)
            return
        log.warning("claude asked for %r, which this adapter does not answer; it was refused so the turn goes "
                    "on (avoid options that make claude ask its client, such as --permission-prompt-tool stdio)",
                    subtype)
        refusal = {"type": "control_response", "response": {
            "subtype": "error", "request_id": obj.get("request_id"),
            "error": f"toolpool: no handler for control request {subtype!r}"}}
        self._cut.send += json.dumps(refusal).encode("ascii") + b"\n"
        self._route(obj, line)

    def _control_response(self, obj: dict[str, Any], line: bytes) -> None:
        response = obj.get("response") or {}
        future = self._controls.pop(str(response.get("request_id")), None)
        if future is not None:  # one of ours (begin_control): resolved off the reader thread
            error = response.get("error") if response.get("subtype") == "error" else None
            body: dict[str, Any] = response["response"] if isinstance(response.get("response"), dict) else {}

            def resolve() -> bytes:
                if error is not None:
                    future.set_exception(ControlError(f"claude refused the control request: {error}"))
                else:
                    future.set_result(body)
                return b""

            self._cut.calls.append(resolve)
            return
        turn = self._turn
        if turn is not None and turn.kind == "ready" and response.get("request_id") == READY_REQUEST_ID:
            self._turn = None
            if response.get("subtype") == "error":
                self._cut.frames.append(Frame(raw=line, error=SpawnError(
                    f"claude refused initialize: {response.get('error')}")))
            else:
                self._cut.frames.append(Frame(raw=line, fields={"control_response": response}))
            return
        if response.get("subtype") == "error":
            log.warning("claude answered control request %r with an error: %s",
                        response.get("request_id"), response.get("error"))
        if turn is not None and turn.kind == "prompt":
            self._record(turn, obj, line)  # e.g. the interrupt's acknowledgement
        else:
            log.debug("claude: control response with no request pending: %.200r", line)

    def _end_early(self, turn: _TurnState) -> None:
        """``turn`` ends before its claude turn does: whatever of it still comes is dropped."""
        if turn.uuid is not None:
            self._ended.append(turn.uuid)
        if self._owner is not None and self._owner in (turn.uuid, _POSITIONAL):
            self._owner = _STALE

    def _finish(self, turn: _TurnState, result: dict[str, Any] | None) -> Frame:
        """The final frame of ``turn``; ``result`` None for an interrupted turn without one."""
        if turn is self._turn:
            self._turn = None
        fields: dict[str, Any] = {"session_id": turn.session_id, "events": turn.events}
        meta: dict[str, Any] = {"model": turn.model}
        for key, value in (result or {}).items():
            if key in _RESULT_FIELDS:
                fields[_RESULT_FIELDS[key]] = value
            elif key not in ("type", "result"):
                # Never let a new result key shadow a Response attribute.
                meta[f"result_{key}" if key in _RESPONSE_ATTRS else key] = value
        total = fields.get("cost_usd")
        if isinstance(total, (int, float)) and not isinstance(total, bool):
            # A session's total_cost_usd grows turn by turn: summing it (the pool's budget) would
            # count every earlier turn again, so the Response gets this turn's share.
            meta["session_cost_usd"] = total
            fields["cost_usd"] = max(0.0, total - self._cost_so_far)
            self._cost_so_far = max(self._cost_so_far, float(total))
        if result is None:
            meta["subtype"] = "stalled" if turn.stalled is not None else "interrupted"
        fields["is_error"] = True if result is None else bool(result.get("is_error", False))
        meta["interrupted"] = turn.marker_seen or (turn.interrupt_requested and fields["is_error"])
        fields["tool_calls"] = turn.tool_calls
        meta["control_calls"] = turn.control_calls
        meta["permission_decisions"] = [c for c in turn.control_calls if c.get("kind") == "can_use_tool"]
        meta["api_retries"] = turn.retries
        meta["stalled"] = turn.stalled is not None
        fields.update(meta)
        text = (result or {}).get("result")
        limit = _LIMIT_STOPS.get(str(meta.get("subtype")))
        if limit is not None:  # a limit of ours stopped it: an error that says which, never an empty text
            fields["is_error"] = True
            if not (isinstance(text, str) and text.strip()):
                text = limit.format(num_turns=fields.get("num_turns"), cost=fields.get("cost_usd"))
        elif turn.stalled is not None:
            text = (f"the API stream stalled: claude printed nothing for {turn.stalled:g}s while waiting on the "
                    "API, so the turn was ended and claude interrupted; raise ClaudeAdapter(stall_timeout=...) "
                    "for a slow API, or None to wait as long as claude does (5 minutes)")
        if not isinstance(text, str):  # interrupted: what the model had said so far
            text = "\n".join(t for t in turn.texts if t)
        return Frame(raw=bytes(turn.raw), text=text, fields=fields)

    def _protocol_error(self, message: str, final: bool) -> None:
        turn = self._turn
        if turn is None:
            log.warning("%s (no request pending; ignored)", message)
            return
        if turn.kind == "ready":  # e.g. cli_path is not Claude Code: fail the start, clearly
            self._cut.frames.append(Frame(error=SpawnError(f"{message}; is cli_path Claude Code?"), final=False))
            return
        if final:
            self._end_early(turn)
            self._turn = None
            self._cut.frames.append(Frame(error=ProtocolError(message), final=True))
        elif not turn.failed:
            turn.failed = True
            self._cut.frames.append(Frame(error=ProtocolError(message), final=False))

    def _too_long(self, start: bytes) -> None:
        """An over-long line fails the request whose turn it is in, at once; the rest of that turn is dropped.

        A line of a turn nobody waits for any more (its request already ended, or claude
        ran it by itself) fails nobody: the next request may already be waiting.
        """
        owner, turn = self._owner, self._turn
        is_result = start.startswith(b'{"type":"result"')
        ours = turn is not None and turn.kind == "prompt" and owner is not None and (
            owner == _POSITIONAL or owner == turn.uuid)
        if owner == _STALE or (owner == _PENDING and not ours):
            log.warning("claude printed a line longer than max_line_bytes=%d in a turn no request waits for; "
                        "dropped", self.max_line_bytes)
            if is_result:
                self._owner, self._held = None, []  # that claude turn is over
                if self._tool is not None:  # it was claude's own turn: end it (the instance holds prompts)
                    tool, self._tool = self._tool, None
                    frame = self._finish(tool, {"is_error": True, "subtype": "error_line_too_long"})
                    frame.unsolicited = True
                    self._cut.frames.append(frame)
            else:
                self._owner, self._held = _STALE if owner == _STALE or self._tool is None else owner, []
            return
        if owner is not None:
            self._owner, self._held = (None if is_result else _STALE), []
        self._protocol_error(f"claude printed a line longer than max_line_bytes={self.max_line_bytes} (it starts "
                             f"with {start[:120]!r}); the request failed and the rest of that turn was dropped. "
                             "Raise ClaudeAdapter(max_line_bytes=...) if such long replies are expected",
                             final=True)


T = TypeVar("T")
#: An option given for the whole pool, or per slot as a function of the slot index.
PerSlot: TypeAlias = T | Callable[[int], T]

#: Pool-suited failure defaults: an API that is down, hangs or stays overloaded reaches the
#: caller as an is_error Response in well under a minute instead of claude's 3 to 10 minutes.
DEFAULT_MAX_RETRIES = 2
DEFAULT_API_TIMEOUT = 10.0
DEFAULT_STALL_TIMEOUT = 30.0

#: Longest value we put in one argv item; Linux refuses one of 128 KiB (E2BIG).
MAX_ARG_BYTES = 64 * 1024

RESUME_FAILED = "resume_failed"


def _for_slot(value: PerSlot[Any], slot: int) -> Any:
    return value(slot) if callable(value) else value


def _names(value: Any, option: str) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    if not all(isinstance(v, str) for v in value):
        raise ValueError(f"{option} must be a list of strings, got {value!r}")
    return list(value)


class ClaudeAdapter(Adapter):
    """Claude Code's ``claude`` CLI (see the module docs for modes and contracts).

    ``cli_path``: the executable; None finds it like ``toolpool doctor``
    (``$TOOLPOOL_CLAUDE``, PATH, the install cache).

    Options mapped onto claude's (each may be a function of the slot index,
    for per-instance values): ``cwd``, ``model``, ``fallback_model``,
    ``system_prompt`` / ``append_system_prompt`` (written to a file in the
    slot's config dir and passed with ``--system-prompt-file``: no argv item
    can get too long), ``allowed_tools``, ``disallowed_tools``, ``tools``,
    ``permission_mode``, ``max_turns``, ``max_budget_usd``, ``mcp_config``
    (path, JSON text or dict), ``settings`` (same), ``add_dirs``, ``effort``,
    ``json_schema`` (dict: the answer lands in ``Response.structured_output``).
    ``extra_args`` are appended verbatim.

    Failure defaults suited to a pool: ``max_retries`` (``CLAUDE_CODE_MAX_RETRIES``,
    default 2), ``api_timeout`` (``API_TIMEOUT_MS``, seconds per API request
    before headers, default 10) and ``stall_timeout`` (seconds without output
    while waiting on the API before the turn ends in an error, default 30;
    None turns the watchdog off).  None for ``max_retries``/``api_timeout``
    leaves claude's own defaults (10 retries over minutes, 600 s).

    Control protocol (session mode): ``can_use_tool`` (adds
    ``--permission-prompt-tool stdio``), ``hooks`` and ``tool_servers``
    (in-process MCP tools) are answered by one :class:`ControlBroker` for the
    whole pool, each callback bounded by ``callback_timeout``.

    ``env`` is merged over the parent environment after ``CLAUDECODE``/
    ``CLAUDE_CODE_ENTRYPOINT`` are removed and the quiet switches
    (:data:`QUIET_ENV`) set, so ``env`` can override them.  Each slot gets
    its own ``CLAUDE_CONFIG_DIR``: ``<config_dir>/slot-N`` if ``config_dir`` is
    given (kept), else a temporary directory removed in :meth:`close`.
    ``resume_on_restart`` (session mode): a slot's new process resumes the
    last session that slot answered in.  A resume that fails (the transcript
    is gone) is dropped for that slot's next start, which begins a fresh
    session; the next Response says so in ``meta["session_reset"]``.
    ``interrupt_settle``: see the module docs.  The liveness probe (pool
    ``health_check_interval``) is an ``initialize`` request: no API call.

    Prompts: a ``str`` or a list of content blocks (strings, :class:`Image`,
    Messages API block dicts).  ``mode="oneshot"`` sends its one prompt as a
    stream-json line too, so a pre-spawned process waits for it indefinitely.
    """

    name = "claude"
    shareable = False  # per-slot config directories: one pool at a time
    unread_input_safe = True  # whole stream-json lines; a late answer to one is dropped by its uuid

    def __init__(self, cli_path: str | None = None, *, model: PerSlot[str | None] = None,
                 cwd: PerSlot[str | None] = None, env: Mapping[str, str] | None = None,
                 extra_args: Sequence[str] = (), mode: str = "session",
                 permission_mode: PerSlot[str | None] = None,
                 allowed_tools: PerSlot[Sequence[str] | None] = None,
                 disallowed_tools: PerSlot[Sequence[str] | None] = None,
                 tools: PerSlot[Sequence[str] | None] = None,
                 system_prompt: PerSlot[str | None] = None,
                 append_system_prompt: PerSlot[str | None] = None,
                 fallback_model: PerSlot[str | None] = None, effort: PerSlot[str | None] = None,
                 max_turns: int | None = None, max_budget_usd: float | None = None,
                 mcp_config: PerSlot[Any] = None, settings: PerSlot[Any] = None,
                 add_dirs: PerSlot[Sequence[str] | None] = None,
                 json_schema: Mapping[str, Any] | None = None,
                 can_use_tool: CanUseTool | None = None, hooks: Sequence[Hook] = (),
                 tool_servers: Sequence[ToolServer] = (), callback_timeout: float = DEFAULT_CALLBACK_TIMEOUT,
                 resume: str | None = None, resume_on_restart: bool = False,
                 include_partial_messages: bool = False, no_session_persistence: bool = False,
                 max_retries: int | None = DEFAULT_MAX_RETRIES,
                 api_timeout: float | None = DEFAULT_API_TIMEOUT,
                 stall_timeout: float | None = DEFAULT_STALL_TIMEOUT, start_timeout: float = 60.0,
                 max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
                 max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES, config_dir: str | None = None,
                 interrupt_settle: float = DEFAULT_INTERRUPT_SETTLE, stderr_tail_bytes: int = 8192,
                 warmup: Sequence[str] = ()) -> None:
        super().__init__(env=env, cwd=None if callable(cwd) else cwd, start_timeout=start_timeout,
                         max_response_bytes=max_response_bytes, stderr_tail_bytes=stderr_tail_bytes,
                         warmup=warmup)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if mode == "oneshot" and warmup:
            raise ValueError("warmup needs mode='session': a one-shot claude answers one prompt and exits, "
                             "so a warm-up would use up the process meant for the first request")
        if isinstance(extra_args, str) or not all(isinstance(a, str) for a in extra_args):
            raise ValueError("extra_args must be a list of strings (argv items), e.g. ['--effort', 'low']")
        if max_line_bytes < 1024:
            raise ValueError(f"max_line_bytes must be at least 1024, got {max_line_bytes!r}")
        if max_retries is not None and max_retries < 0:
            raise ValueError(f"max_retries must be >= 0 or None, got {max_retries!r}")
        for option, seconds in (("api_timeout", api_timeout), ("stall_timeout", stall_timeout)):
            if seconds is not None and not seconds > 0:
                raise ValueError(f"{option} must be > 0 seconds or None, got {seconds!r}")
        if max_turns is not None and max_turns < 1:
            raise ValueError(f"max_turns must be >= 1 or None, got {max_turns!r}")
        if max_budget_usd is not None and not max_budget_usd > 0:
            raise ValueError(f"max_budget_usd must be > 0 or None, got {max_budget_usd!r}")
        if interrupt_settle <= 0:
            raise ValueError(f"interrupt_settle must be > 0 seconds, got {interrupt_settle!r}")
        if resume_on_restart and (mode != "session" or no_session_persistence):
            raise ValueError("resume_on_restart needs mode='session' with session persistence on")
        if "CLAUDE_CONFIG_DIR" in self.env:
            raise ValueError("pass config_dir= instead of CLAUDE_CONFIG_DIR in env: each slot needs a "
                             "directory of its own (claude rewrites its config file on every start)")
        self.broker = ControlBroker(can_use_tool=can_use_tool, hooks=hooks, tool_servers=tool_servers,
                                    callback_timeout=callback_timeout)
        if self.broker.active and mode != "session":
            raise ValueError("can_use_tool, hooks and tool_servers need mode='session': a one-shot claude's "
                             "stdin is closed after its prompt, so it could not get the answers")
        self.json_schema = dict(json_schema) if json_schema is not None else None
        if self.json_schema is not None and len(json.dumps(self.json_schema)) > MAX_ARG_BYTES:
            raise ValueError(f"json_schema is larger than {MAX_ARG_BYTES} bytes as JSON; claude takes it as one "
                             "argument, which Linux limits")
        self.cli_path = os.fspath(cli_path) if cli_path is not None else None
        self.mode = mode
        self.oneshot = mode == "oneshot"
        self.ready_on_spawn = self.oneshot
        self._cwd_option = cwd
        self.options: dict[str, Any] = {
            "model": model, "fallback_model": fallback_model, "permission_mode": permission_mode,
            "allowed_tools": allowed_tools, "disallowed_tools": disallowed_tools, "tools": tools,
            "system_prompt": system_prompt, "append_system_prompt": append_system_prompt, "effort": effort,
            "mcp_config": mcp_config, "settings": settings, "add_dirs": add_dirs,
        }
        self.model = model  # kept as attributes: older code reads them
        self.permission_mode = permission_mode
        self.allowed_tools = _names(allowed_tools, "allowed_tools") if not callable(allowed_tools) else None
        self.system_prompt = system_prompt
        self.max_turns = max_turns
        self.max_budget_usd = max_budget_usd
        self.resume = resume
        self.resume_on_restart = resume_on_restart
        self._sessions: dict[int, str] = {}  # slot -> last session id seen (resume_on_restart)
        self._no_resume: set[int] = set()  # slots whose resume failed: their next start is fresh
        self._notes: dict[int, str] = {}  # slot -> what its next Response must tell (a dropped resume)
        self.include_partial_messages = include_partial_messages
        self.no_session_persistence = no_session_persistence
        self.max_retries = max_retries
        self.api_timeout = api_timeout
        self.stall_timeout = stall_timeout if mode == "session" else None
        self.extra_args = list(extra_args)
        self.max_line_bytes = int(max_line_bytes)
        self.interrupt_settle = float(interrupt_settle)
        self.config_dir = os.fspath(config_dir) if config_dir is not None else None
        self._config_root: str | None = self.config_dir
        self._owns_config_root = False
        self._cleanup: weakref.finalize[Any, Any] | None = None
        self._config_lock = threading.Lock()

    # -- process ---------------------------------------------------------------------
    def command(self, slot: int) -> list[str]:
        return self._argv(self._executable(), self._resume_for(slot), slot, files=True)

    def _resume_for(self, slot: int) -> str | None:
        if slot in self._no_resume:
            return None
        return self._sessions.get(slot, self.resume)

    def _argv(self, executable: str, resume: str | None, slot: int, files: bool) -> list[str]:
        """claude's argv for ``slot``; ``files`` False (status dumps) names the files without writing them."""
        opt = {key: _for_slot(value, slot) for key, value in self.options.items()}
        argv = [executable, "-p", "--input-format", "stream-json"]
        if not self.oneshot:
            # Each turn then starts with our message echoed, uuid included: how the framer
            # tells our turns from ones claude starts by itself.
            argv.append("--replay-user-messages")
        argv += ["--output-format", "stream-json", "--verbose"]  # stream-json requires --verbose with -p
        for key, flag in (("model", "--model"), ("fallback_model", "--fallback-model"),
                          ("permission_mode", "--permission-mode"), ("effort", "--effort")):
            if opt[key]:
                argv += [flag, str(opt[key])]
        # Each list as one comma-joined value: the options are variadic and would swallow later arguments.
        for key, flag in (("allowed_tools", "--allowedTools"), ("disallowed_tools", "--disallowedTools"),
                          ("tools", "--tools")):
            names = _names(opt[key], key)
            if names is not None:
                argv += [flag, ",".join(names)]
        for key, flag in (("system_prompt", "--system-prompt-file"),
                          ("append_system_prompt", "--append-system-prompt-file")):
            if opt[key] is not None:
                argv += [flag, self._slot_file(slot, f"{key.replace('_', '-')}.txt", str(opt[key]), files)]
        for key, flag in (("mcp_config", "--mcp-config"), ("settings", "--settings")):
            if opt[key] is not None:
                argv += [flag, self._json_arg(slot, key, opt[key], files)]
        sdk_servers = self.broker.mcp_config()
        if sdk_servers is not None:
            argv += ["--mcp-config", sdk_servers]
        if self.broker.can_use_tool is not None:
            argv += ["--permission-prompt-tool", "stdio"]
        for directory in _names(opt["add_dirs"], "add_dirs") or []:
            argv += ["--add-dir", directory]
        if self.max_turns is not None:
            argv += ["--max-turns", str(self.max_turns)]
        if self.max_budget_usd is not None:
            argv += ["--max-budget-usd", repr(float(self.max_budget_usd))]
        if self.json_schema is not None:
            argv += ["--json-schema", json.dumps(self.json_schema)]
        if self.include_partial_messages or self.stall_timeout is not None:
            argv.append("--include-partial-messages")  # the stall watchdog needs a line per streamed chunk
        if resume:
            argv += ["--resume", resume]
        if self.no_session_persistence:
            argv.append("--no-session-persistence")
        return argv + self.extra_args

    def _slot_file(self, slot: int, name: str, text: str, write: bool) -> str:
        """A file in the slot's config dir holding ``text`` (rewritten at each start)."""
        if not write:
            return f"<slot {slot} config dir>/{name}"
        path = os.path.join(self.slot_config_dir(slot), name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    def _json_arg(self, slot: int, key: str, value: Any, write: bool) -> str:
        """A path or JSON text as given; a dict (or long text) through a file in the slot's config dir."""
        if isinstance(value, (str, os.PathLike)):
            text = os.fspath(value)
            if len(text.encode()) <= MAX_ARG_BYTES:
                return text
        else:
            text = json.dumps(value)
        return self._slot_file(slot, f"{key.replace('_', '-')}.json", text, write)

    def _executable(self) -> str:
        """``cli_path`` (or claude found like ``toolpool doctor`` does); ToolNotFoundError naming the fixes."""
        if self.cli_path is None:
            found = find_tool("claude")
            if found is None:
                raise ToolNotFoundError("claude", f"{where_looked('claude')}; {INSTALL_HINT}")
            return found
        name = self.cli_path
        if os.sep in name:
            if os.path.isfile(name) and os.access(name, os.X_OK):
                return name
            raise ToolNotFoundError(name, f"cli_path does not exist or is not executable; {INSTALL_HINT}")
        found = shutil.which(name, path=self.env.get("PATH", os.environ.get("PATH", os.defpath)))
        if found is None:
            raise ToolNotFoundError(name, f"cli_path={name!r} is not on PATH; {INSTALL_HINT}")
        return found

    def working_dir(self, slot: int) -> str | None:
        if self.slot_dirs is not None:  # the pool's workspace decides
            return self.slot_dirs(slot)
        cwd = _for_slot(self._cwd_option, slot)
        return os.fspath(cwd) if cwd is not None else None

    def environment(self, slot: int) -> dict[str, str]:
        """Parent env minus parent-session markers, quiet switches, failure defaults, ``env``, a config dir."""
        env = {k: v for k, v in os.environ.items() if k not in PARENT_SESSION_ENV}
        env.update(QUIET_ENV)
        if self.max_retries is not None:
            env["CLAUDE_CODE_MAX_RETRIES"] = str(self.max_retries)
        if self.api_timeout is not None:
            env["API_TIMEOUT_MS"] = str(int(self.api_timeout * 1000))
        env.update(self.env)
        env["CLAUDE_CONFIG_DIR"] = self.slot_config_dir(slot)
        return env

    def slot_config_dir(self, slot: int) -> str:
        """Slot ``slot``'s ``CLAUDE_CONFIG_DIR``, created on first use."""
        with self._config_lock:
            if self._config_root is None:
                from .. import lifecycle  # 0700, named after its owner; dead owners' dirs are reclaimed
                self._config_root = lifecycle.private_dir("claude", tempfile.gettempdir())
                self._owns_config_root = True
                # Removed at close(), or when the adapter is garbage-collected or the program exits.
                self._cleanup = weakref.finalize(self, lifecycle.remove_private_dir, self._config_root)
            path = os.path.join(self._config_root, f"slot-{slot}")
        os.makedirs(path, mode=0o700, exist_ok=True)
        return path

    def close(self) -> None:
        """Stop the callback threads; remove the temporary config directories (never a given ``config_dir``)."""
        self.broker.close()
        with self._config_lock:
            owned, cleanup = self._owns_config_root, self._cleanup
            if owned:
                self._config_root, self._owns_config_root, self._cleanup = None, False, None
            self._sessions.clear()  # they lived in the directory being removed
        if owned and cleanup is not None:
            cleanup()

    # -- protocol --------------------------------------------------------------------
    def handshake(self) -> bytes | None:
        """``initialize``, registering the pool's hooks (session mode)."""
        return None if self.oneshot else control_line(READY_REQUEST_ID, self.broker.initialize_request())

    def encode(self, prompt: Any) -> bytes:
        """One stream-json user line; ``prompt`` is a str or a list of content blocks.

        ``json.dumps`` escapes newlines and non-ASCII, so the line can never be
        split: a malformed line makes claude exit.  Raises TypeError/ValueError
        for a prompt claude cannot take (an empty one-shot prompt, a bad block).
        """
        content = content_of(prompt)
        line: dict[str, Any] = {"type": "user", "message": {"role": "user", "content": content}}
        if self.oneshot:
            if is_empty(content):
                raise ValueError("prompt is empty; claude -p exits without answering an empty prompt")
        else:
            # The uuid comes last: the framer finds it there without parsing the line again.
            line["uuid"] = str(uuidlib.uuid4())
        return json.dumps(line).encode("ascii") + b"\n"

    def framer_for(self, slot: int) -> Framer:
        return self.new_framer(slot)

    def new_framer(self, slot: int | None = None) -> Framer:
        return ClaudeFramer(session=not self.oneshot, max_bytes=self.max_response_bytes,
                            max_line_bytes=self.max_line_bytes, interrupt_settle=self.interrupt_settle,
                            broker=self.broker, slot=slot if slot is not None else -1,
                            stall_timeout=self.stall_timeout, keep_stream_events=self.include_partial_messages)

    def interrupt(self, control: Control) -> None:
        """Session: nothing more (the framer's control ``interrupt`` was written).  Oneshot: SIGINT."""
        if self.oneshot:
            control.signal_process(signal.SIGINT)

    def liveness_probe(self) -> bytes | None:
        """Session mode: another ``initialize`` (answered in ms, no API call, context kept)."""
        return None if self.oneshot else _control_request(READY_REQUEST_ID, "initialize")

    def observe(self, slot: int, response: Any) -> None:
        """Remember the slot's session (``resume_on_restart``); tell of a resume that was dropped."""
        note = self._notes.pop(slot, None)
        if note is not None and isinstance(getattr(response, "meta", None), dict):
            response.meta["session_reset"] = note
        session_id = getattr(response, "session_id", None)
        if self.resume_on_restart and session_id:
            self._sessions[slot] = session_id
            self._no_resume.discard(slot)

    def start_failed(self, slot: int, error: BaseException) -> None:
        """A start that resumed a session failed: the slot's next start is a fresh session, never FATAL."""
        resumed = self._resume_for(slot)
        if resumed is None or isinstance(error, ToolNotFoundError):
            return
        self._no_resume.add(slot)
        self._sessions.pop(slot, None)
        why = str(error).splitlines()[0][:300] if str(error) else type(error).__name__
        self._notes[slot] = (f"resuming session {resumed} failed ({why}); instance {slot} started a fresh "
                             "session without the earlier conversation")
        log.warning("claude instance %d: %s", slot, self._notes[slot])

    def diagnose(self, stdout_tail: str, stderr_tail: str) -> str | None:
        if self.oneshot:
            return None
        if not stdout_tail.strip() and not stderr_tail.strip():
            return ("claude printed nothing in reply to the initialize control request; check that cli_path "
                    "is Claude Code 2.x (it must accept `-p --input-format stream-json`)")
        return "see claude's stderr tail below" if stderr_tail.strip() else None

    # -- status ----------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """Mode and argv (secrets redacted), env *keys* only: never values or API keys."""
        from ..redact import redact

        return redact({
            "name": self.name,
            "mode": self.mode,
            "transport": self.transport,
            "command": redact_argv(self._argv(self.cli_path or "claude", self.resume, 0, files=False)),
            "cwd": self.cwd,
            "env_keys": sorted(self.env),
            "oneshot": self.oneshot,
            "max_retries": self.max_retries,
            "api_timeout": self.api_timeout,
            "stall_timeout": self.stall_timeout,
            "config_dir": self.config_dir,
        })
