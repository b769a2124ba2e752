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
(``total_cost_usd``), ``usage``, ``is_error``, ``num_turns`` and ``events``
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
import dataclasses
import json
import logging
import os
import re
import shutil
import uuid as uuidlib
import signal
import tempfile
import threading
import weakref
from typing import Any, Deque, Dict, List, Mapping, Optional, Sequence, Tuple

from ..errors import ProtocolError, ResponseTooLarge, SpawnError, ToolNotFoundError
from ..response import Response
from .base import DEFAULT_MAX_RESPONSE_BYTES, Adapter, Control, Cut, Frame, Framer, encode_text, redact_argv

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
                  "is_error": "is_error", "num_turns": "num_turns"}
_RESPONSE_ATTRS = {f.name for f in dataclasses.fields(Response)}


def text_delta(event: Mapping[str, Any]) -> Optional[str]:
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
        return delta["text"]
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


class _TurnState:
    """What the framer collects for one request's turn (or the tool's own)."""

    __slots__ = ("kind", "uuid", "events", "raw", "size", "texts", "session_id", "model", "interrupt_requested",
                 "marker_seen", "overflow", "failed")

    def __init__(self, kind: str, uuid: Optional[str] = None) -> None:
        self.kind = kind  # "ready" (readiness or probe), "prompt", or "tool" (started by claude itself)
        self.uuid = uuid
        self.events: List[Dict[str, Any]] = []
        self.raw = bytearray()
        self.size = 0
        self.texts: List[str] = []
        self.session_id: Optional[str] = None
        self.model: Optional[str] = None
        self.interrupt_requested = False
        self.marker_seen = False
        self.overflow = False
        self.failed = False


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
    """

    def __init__(self, *, session: bool = True, max_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
                 max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
                 interrupt_settle: float = DEFAULT_INTERRUPT_SETTLE) -> None:
        super().__init__(max_bytes)
        self.session = session
        self.max_line_bytes = max_line_bytes
        self.settle = interrupt_settle
        self._buf = bytearray()
        self._scanned = 0  # bytes of _buf known to hold no newline
        self._skipping = False  # dropping the rest of an over-long line
        self._turn: Optional[_TurnState] = None  # the request waiting for its answer
        self._owner: Optional[str] = None  # the running claude turn: a uuid, _PENDING, _STALE, or None (none runs)
        self._held: List[Tuple[Dict[str, Any], bytes]] = []  # lines of a claude turn not yet attributed
        self._tool: Optional[_TurnState] = None  # a turn claude started by itself
        self._ended: Deque[str] = collections.deque(maxlen=64)  # uuids of requests that ended early
        self._interrupts = 0
        self._cut = Cut()

    # -- called by the instance ------------------------------------------------------
    def start_turn(self, prompt: Optional[str], data: bytes = b"") -> None:
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
        return cut

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
        return cut

    def on_exit(self, exit_code: Optional[int]) -> Cut:
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

    def _oneshot_line(self, obj: Dict[str, Any], line: bytes) -> None:
        turn = self._turn
        if turn is None or turn.kind != "prompt":
            log.debug("claude: output with no request pending: %.200r", line)
            return
        self._prompt_line(turn, obj, line)
        if obj.get("type") == "result":
            self._cut.frames.append(self._finish(turn, obj))

    def _turn_begins(self, obj: Dict[str, Any], line: bytes) -> None:
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
        if turn is None or turn.kind == "ready":
            # Nobody of ours is waiting for an answer: claude began on its own.  Hold prompts back.
            self._tool = _TurnState("tool")
            self._cut.tool_turn = True

    def _replayed(self, obj: Dict[str, Any], line: bytes) -> None:
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

    def _route(self, obj: Dict[str, Any], line: bytes) -> None:
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
        else:
            log.debug("claude: dropped a line of a turn whose request already ended: %.200r", line)

    def _turn_ends(self, obj: Dict[str, Any]) -> None:
        """A ``result``: the running claude turn is over."""
        owner, self._owner = self._owner, None
        held, self._held = self._held, []
        turn = self._turn
        if owner is not None and owner not in (_PENDING, _STALE):
            if turn is not None and turn.kind == "prompt" and (owner == _POSITIONAL or owner == turn.uuid):
                self._cut.frames.append(self._finish(turn, obj))
            return
        if owner == _STALE:
            log.debug("claude: dropped the late result of a request that already ended")
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

    def _record(self, turn: _TurnState, obj: Dict[str, Any], line: bytes) -> None:
        """Stream ``obj`` to the caller and keep it for the Response, up to ``max_bytes``."""
        if turn.kind == "prompt":
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

    def _prompt_line(self, turn: _TurnState, obj: Dict[str, Any], line: bytes) -> None:
        self._record(turn, obj, line)
        kind = obj.get("type")
        if kind == "system" and obj.get("subtype") == "init":
            turn.session_id = obj.get("session_id", turn.session_id)
            turn.model = obj.get("model", turn.model)
        elif kind == "assistant":
            turn.texts.append(_assistant_text(obj))
        elif kind == "user" and turn.interrupt_requested and _is_interrupt_marker(obj):
            turn.marker_seen = True  # only after our interrupt: a tool result may quote the marker

    def _control_request(self, obj: Dict[str, Any], line: bytes) -> None:
        """claude asks its client something: answer with an error at once, never leave it waiting."""
        request = obj.get("request") or {}
        subtype = request.get("subtype")
        log.warning("claude asked for %r, which this adapter does not answer; it was refused so the turn goes "
                    "on (avoid options that make claude ask its client, such as --permission-prompt-tool stdio)",
                    subtype)
        answer = {"type": "control_response", "response": {
            "subtype": "error", "request_id": obj.get("request_id"),
            "error": f"toolpool: no handler for control request {subtype!r}"}}
        self._cut.send += json.dumps(answer).encode("ascii") + b"\n"
        self._route(obj, line)

    def _control_response(self, obj: Dict[str, Any], line: bytes) -> None:
        response = obj.get("response") or {}
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

    def _finish(self, turn: _TurnState, result: Optional[Dict[str, Any]]) -> Frame:
        """The final frame of ``turn``; ``result`` None for an interrupted turn without one."""
        if turn is self._turn:
            self._turn = None
        fields: Dict[str, Any] = {"session_id": turn.session_id, "events": turn.events}
        meta: Dict[str, Any] = {"model": turn.model}
        for key, value in (result or {}).items():
            if key in _RESULT_FIELDS:
                fields[_RESULT_FIELDS[key]] = value
            elif key not in ("type", "result"):
                # Never let a new result key shadow a Response attribute.
                meta[f"result_{key}" if key in _RESPONSE_ATTRS else key] = value
        if result is None:
            meta["subtype"] = "interrupted"
        fields["is_error"] = True if result is None else bool(result.get("is_error", False))
        meta["interrupted"] = turn.marker_seen or (turn.interrupt_requested and fields["is_error"])
        fields.update(meta)
        text = (result or {}).get("result")
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
        """An over-long line ends the request now; the claude turn it was in is dropped to its result."""
        if start.startswith(b'{"type":"result"') and self._owner is not None:
            self._owner, self._held = None, []  # it was the result line: that claude turn is over
        elif self._owner is not None:
            self._owner, self._held = _STALE, []
        self._protocol_error(f"claude printed a line longer than max_line_bytes={self.max_line_bytes} (it starts "
                             f"with {start[:120]!r}); the request failed and the rest of that turn was dropped. "
                             "Raise ClaudeAdapter(max_line_bytes=...) if such long replies are expected",
                             final=True)


class ClaudeAdapter(Adapter):
    shareable = False  # per-slot config directories: one pool at a time
    """Claude Code's ``claude`` CLI (see the module docs for modes and contracts).

    ``cli_path``: the executable (default: ``claude`` on PATH).  ``model``,
    ``permission_mode``, ``allowed_tools``, ``system_prompt``, ``resume`` and
    ``include_partial_messages`` map to claude's options of the same name;
    ``no_session_persistence`` adds ``--no-session-persistence``;
    ``extra_args`` are appended verbatim.  ``env`` is merged over the parent
    environment after ``CLAUDECODE``/``CLAUDE_CODE_ENTRYPOINT`` are removed
    and the quiet switches (:data:`QUIET_ENV`) set, so ``env`` can override
    them; ``max_retries`` sets ``CLAUDE_CODE_MAX_RETRIES`` (claude's default
    retries a dead server for minutes; 0 fails in well under a second).
    Each slot gets its own ``CLAUDE_CONFIG_DIR``: ``<config_dir>/slot-N`` if
    ``config_dir`` is given (kept), else a temporary directory the adapter
    removes in :meth:`close`.  It survives restarts of the slot, so a
    restarted instance can ``resume`` a session its slot saved (sessions are
    stored per config dir and working directory).  ``resume_on_restart``
    (session mode): a slot's new process resumes the last session that slot
    answered in, so a crash or recycle keeps the conversation.
    ``interrupt_settle``: see the module docs.  The liveness probe (pool
    ``health_check_interval``) is an ``initialize`` request: no API call.
    """

    name = "claude"

    def __init__(self, cli_path: Optional[str] = None, *, model: Optional[str] = None, cwd: Optional[str] = None,
                 env: Optional[Mapping[str, str]] = None, extra_args: Sequence[str] = (), mode: str = "session",
                 permission_mode: Optional[str] = None, allowed_tools: Optional[Sequence[str]] = None,
                 system_prompt: Optional[str] = None, resume: Optional[str] = None,
                 resume_on_restart: bool = False,
                 include_partial_messages: bool = False, no_session_persistence: bool = False,
                 max_retries: Optional[int] = None, start_timeout: float = 60.0,
                 max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
                 max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES, config_dir: Optional[str] = None,
                 interrupt_settle: float = DEFAULT_INTERRUPT_SETTLE, stderr_tail_bytes: int = 8192,
                 warmup: Sequence[str] = ()) -> None:
        super().__init__(env=env, cwd=cwd, start_timeout=start_timeout, max_response_bytes=max_response_bytes,
                         stderr_tail_bytes=stderr_tail_bytes, warmup=warmup)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if mode == "oneshot" and warmup:
            raise ValueError("warmup needs mode='session': a one-shot claude answers one prompt and exits, "
                             "so a warm-up would use up the process meant for the first request")
        if isinstance(extra_args, str) or not all(isinstance(a, str) for a in extra_args):
            raise ValueError("extra_args must be a list of strings (argv items), e.g. ['--effort', 'low']")
        if isinstance(allowed_tools, str):
            allowed_tools = [allowed_tools]
        if max_line_bytes < 1024:
            raise ValueError(f"max_line_bytes must be at least 1024, got {max_line_bytes!r}")
        if max_retries is not None and max_retries < 0:
            raise ValueError(f"max_retries must be >= 0 or None, got {max_retries!r}")
        if interrupt_settle <= 0:
            raise ValueError(f"interrupt_settle must be > 0 seconds, got {interrupt_settle!r}")
        if resume_on_restart and (mode != "session" or no_session_persistence):
            raise ValueError("resume_on_restart needs mode='session' with session persistence on")
        if "CLAUDE_CONFIG_DIR" in self.env:
            raise ValueError("pass config_dir= instead of CLAUDE_CONFIG_DIR in env: each slot needs a "
                             "directory of its own (claude rewrites its config file on every start)")
        self.cli_path = os.fspath(cli_path) if cli_path is not None else None
        self.mode = mode
        self.oneshot = mode == "oneshot"
        self.ready_on_spawn = self.oneshot
        self.model = model
        self.permission_mode = permission_mode
        self.allowed_tools = list(allowed_tools) if allowed_tools is not None else None
        self.system_prompt = system_prompt
        self.resume = resume
        self.resume_on_restart = resume_on_restart
        self._sessions: Dict[int, str] = {}  # slot -> last session id seen (resume_on_restart)
        self.include_partial_messages = include_partial_messages
        self.no_session_persistence = no_session_persistence
        self.max_retries = max_retries
        self.extra_args = list(extra_args)
        self.max_line_bytes = int(max_line_bytes)
        self.interrupt_settle = float(interrupt_settle)
        self.config_dir = os.fspath(config_dir) if config_dir is not None else None
        self._config_root: Optional[str] = self.config_dir
        self._owns_config_root = False
        self._cleanup: Optional[weakref.finalize] = None
        self._config_lock = threading.Lock()

    # -- process ---------------------------------------------------------------------
    def command(self, slot: int) -> List[str]:
        return self._argv(self._executable(), self._sessions.get(slot, self.resume))

    def _argv(self, executable: str, resume: Optional[str]) -> List[str]:
        argv = [executable, "-p"]
        if not self.oneshot:
            # Each turn then starts with our message echoed, uuid included: how the framer
            # tells our turns from ones claude starts by itself.
            argv += ["--input-format", "stream-json", "--replay-user-messages"]
        argv += ["--output-format", "stream-json", "--verbose"]  # stream-json requires --verbose with -p
        if self.model:
            argv += ["--model", self.model]
        if self.permission_mode:
            argv += ["--permission-mode", self.permission_mode]
        if self.allowed_tools is not None:
            # One comma-joined value: the option is variadic and would swallow later arguments.
            argv += ["--allowedTools", ",".join(self.allowed_tools)]
        if self.system_prompt is not None:
            argv += ["--system-prompt", self.system_prompt]
        if resume:
            argv += ["--resume", resume]
        if self.include_partial_messages:
            argv.append("--include-partial-messages")
        if self.no_session_persistence:
            argv.append("--no-session-persistence")
        return argv + self.extra_args

    def _executable(self) -> str:
        """``cli_path`` (or ``claude``) resolved like exec would; ToolNotFoundError with an install hint."""
        name = self.cli_path or "claude"
        if os.sep in name:
            if os.path.isfile(name) and os.access(name, os.X_OK):
                return name
            raise ToolNotFoundError(name, f"the path does not exist or is not executable; {INSTALL_HINT}")
        found = shutil.which(name, path=self.env.get("PATH", os.environ.get("PATH", os.defpath)))
        if found is None:
            raise ToolNotFoundError(name, f"it is not on PATH; {INSTALL_HINT}")
        return found

    def environment(self, slot: int) -> Dict[str, str]:
        """Parent env minus parent-session markers, quiet switches, ``env``, a private config dir."""
        env = {k: v for k, v in os.environ.items() if k not in PARENT_SESSION_ENV}
        env.update(QUIET_ENV)
        if self.max_retries is not None:
            env["CLAUDE_CODE_MAX_RETRIES"] = str(self.max_retries)
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
        """Remove the temporary config directories (never a ``config_dir`` given by the caller)."""
        with self._config_lock:
            owned, cleanup = self._owns_config_root, self._cleanup
            if owned:
                self._config_root, self._owns_config_root, self._cleanup = None, False, None
            self._sessions.clear()  # they lived in the directory being removed
        if owned and cleanup is not None:
            cleanup()

    # -- protocol --------------------------------------------------------------------
    def handshake(self) -> Optional[bytes]:
        return None if self.oneshot else _control_request(READY_REQUEST_ID, "initialize")

    def encode(self, prompt: str) -> bytes:
        """One stream-json user line (session), or the raw prompt text (oneshot).

        ``json.dumps`` escapes newlines and non-ASCII, so the line can never be
        split: a malformed line makes claude exit.  Raises ValueError for a
        prompt claude cannot take (an empty oneshot prompt makes it exit).
        """
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be str, got {type(prompt).__name__}")
        if not self.oneshot:
            # The uuid comes last: the framer finds it there without parsing the line again.
            line = {"type": "user", "message": {"role": "user", "content": prompt}, "uuid": str(uuidlib.uuid4())}
            return json.dumps(line).encode("ascii") + b"\n"
        if not prompt.strip():
            raise ValueError("prompt is empty; claude -p exits without answering an empty prompt")
        return encode_text(prompt, self.encoding)

    def new_framer(self) -> Framer:
        return ClaudeFramer(session=not self.oneshot, max_bytes=self.max_response_bytes,
                            max_line_bytes=self.max_line_bytes, interrupt_settle=self.interrupt_settle)

    def interrupt(self, control: Control) -> None:
        """Session: nothing more (the framer's control ``interrupt`` was written).  Oneshot: SIGINT."""
        if self.oneshot:
            control.signal_process(signal.SIGINT)

    def liveness_probe(self) -> Optional[bytes]:
        """Session mode: another ``initialize`` (answered in ms, no API call, context kept)."""
        return self.handshake()

    def observe(self, slot: int, response: Any) -> None:
        """Remember the slot's session, for ``resume_on_restart``."""
        session_id = getattr(response, "session_id", None)
        if self.resume_on_restart and session_id:
            self._sessions[slot] = session_id

    def diagnose(self, stdout_tail: str, stderr_tail: str) -> Optional[str]:
        if self.oneshot:
            return None
        if not stdout_tail.strip() and not stderr_tail.strip():
            return ("claude printed nothing in reply to the initialize control request; check that cli_path "
                    "is Claude Code 2.x (it must accept `-p --input-format stream-json`)")
        return "see claude's stderr tail below" if stderr_tail.strip() else None

    # -- status ----------------------------------------------------------------------
    def describe(self) -> Dict[str, Any]:
        """Mode and argv (secrets redacted), env *keys* only: never values or API keys."""
        from ..redact import redact

        return redact({
            "name": self.name,
            "mode": self.mode,
            "transport": self.transport,
            "command": redact_argv(self._argv(self.cli_path or "claude", self.resume)),
            "cwd": self.cwd,
            "env_keys": sorted(self.env),
            "oneshot": self.oneshot,
            "max_retries": self.max_retries,
            "config_dir": self.config_dir,
        })
