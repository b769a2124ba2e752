"""The base of the fake LLM servers: lifecycle, request log, scripted steps, faults.

Provider-specific wire formats live in :mod:`toolpool.testing.fake_anthropic` and
:mod:`toolpool.testing.fake_openai`; they say how a reply, an error and a stream look,
and this class decides what to answer and when (delays, hangs, stalls, cuts).
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from ._http import Handler, HTTPServer, ServerClosing
from ._request import RecordedRequest, ToolResult
from ._script import PromptMatch, Script
from ._steps import Drop, Error, Hang, Reply, ReplySpec, Stall, ToolUse

__all__ = ["FakeLLMServer", "Rendered", "ServedReply", "SseEvent"]


@dataclass(frozen=True)
class SseEvent:
    """One Server-Sent Event of a streamed reply, as a provider renders it.

    ``kind`` tells the server where it may pause or stop: ``"head"`` opens the stream
    (a :class:`Stall` with ``after=0`` stops after these), ``"delta"`` carries a piece of
    the reply (paced by ``chunk_delay``, counted by ``after``), ``"body"`` is the rest.
    """

    data: Any
    event: str | None = None
    kind: str = "body"


@dataclass(frozen=True)
class Rendered:
    """A reply in a provider's wire format: the JSON answer and the same as a stream."""

    message: dict[str, Any]
    events: list[SseEvent]
    usage: dict[str, int]


@dataclass(frozen=True)
class ServedReply:
    """How a fake server answered one generation request (see :attr:`FakeLLMServer.replies`).

    Attributes:
        request: the request answered.
        kind: ``"reply"``, ``"tool_use"``, ``"error"``, ``"hang"``, ``"stall"``, ``"drop"``
            or ``"check_failed"`` (a :class:`ToolUse` check failed: answered with a 400).
        status: the HTTP status sent, or ``None`` when no status line was sent (a hang).
        text: the reply's text (for an error, its message).
        tool_uses: the tool calls sent, with their ids.
        usage: the token counts reported to the client (word counts).
        ended: ``"complete"``, ``"cut"`` (the server dropped the connection),
            ``"client_closed"`` (the client gave up first) or ``"server_closed"``.
        duration: seconds from the request's arrival to the end of the answer.
    """

    request: RecordedRequest = field(repr=False)
    kind: str
    status: int | None
    text: str = ""
    tool_uses: tuple[ToolUse, ...] = ()
    usage: dict[str, int] = field(default_factory=dict)
    ended: str = "complete"
    duration: float = 0.0


_S = TypeVar("_S", bound="FakeLLMServer")  # so start()/__enter__ return the subclass type


class FakeLLMServer:
    """Base of the fake LLM servers: lifecycle, request log, scripted replies, delays, errors.

    Use a subclass (:class:`~toolpool.testing.FakeAnthropicServer` or
    :class:`~toolpool.testing.FakeOpenAIServer`). Replies to generation requests are chosen
    in this order: an error queued with :meth:`fail_next`; the next step of a scripted
    conversation whose tool call the request answers (its ``tool_result``); a script of
    :meth:`on_prompt` matching the prompt of a new turn; the next step queued with
    :meth:`script`; then the default ``reply`` given to the constructor, and if that is
    ``None`` the deterministic echo ``"ECHO: <first line of the last user message>"``
    (precisely: of :attr:`RecordedRequest.user_text`, see :func:`last_user_text`).

    Only the first line is echoed on purpose: aider appends a listing of the repository's
    files to the user message, and echoing a file listing makes it create files.
    """

    #: Paths answered as chat generations (set by subclasses).
    generation_paths: frozenset[str] = frozenset()

    def __init__(
        self,
        reply: ReplySpec | None = None,
        delay: float = 0.0,
        port: int = 0,
        host: str = "127.0.0.1",
    ) -> None:
        """Configure the server; nothing listens until :meth:`start` or ``with``.

        Args:
            reply: the default answer: text, any step (e.g. ``Error(529)``), or a callable
                ``(request) -> str | step`` (a responder); ``None`` echoes the first line
                of the last user message.
            delay: seconds to wait before answering each generation request (does not
                block other requests; cut short by :meth:`close`).
            port: TCP port to listen on; 0 picks a free one (read it from :attr:`port`).
            host: address to bind; keep the default loopback so nothing leaves the machine.
        """
        self._default_reply = reply
        self._initial_delay = float(delay)
        self._host = host
        self._requested_port = port
        self._lock = threading.Condition()
        self._requests: list[RecordedRequest] = []
        self._replies: list[ServedReply] = []
        self._tool_results: list[ToolResult] = []
        self._check_failures: list[str] = []
        self._script = Script()
        self._failures: list[Error] = []
        self._delay = float(delay)
        self._closing = threading.Event()
        self._ids = itertools.count(1)
        self._httpd: HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self: _S) -> _S:  # noqa: PYI019 (typing.Self needs Python 3.11)
        """Bind the port and serve on a background thread; returns ``self``."""
        if self._httpd is not None:
            raise RuntimeError(f"{type(self).__name__} already started")
        self._closing.clear()
        self._httpd = HTTPServer((self._host, self._requested_port), self)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},  # how fast close() notices the shutdown request
            name=f"{type(self).__name__}:{self.port}",
        )
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving, end requests still waiting, hanging or streaming, join every thread.

        Safe to call more than once.
        """
        httpd, thread = self._httpd, self._thread
        if httpd is None or thread is None:
            return
        self._closing.set()  # wakes delayed, hanging and stalled replies so their threads end
        httpd.shutdown()  # serve_forever returns within poll_interval
        httpd.abort_connections()  # unblocks handlers stuck on a slow or idle client
        httpd.server_close()  # closes the socket and joins the handler threads
        thread.join()
        self._thread = None
        self._httpd = None  # start() may serve again (on a new port when port=0)

    def __enter__(self: _S) -> _S:  # noqa: PYI019
        return self.start()

    def __exit__(self, exc_type: object, *exc_info: object) -> None:
        self.close()
        if exc_type is None:  # do not hide the error that ended the block
            self.verify()

    @property
    def thread(self) -> threading.Thread | None:
        """The serving thread (``None`` before :meth:`start` and after :meth:`close`)."""
        return self._thread

    @property
    def port(self) -> int:
        """The TCP port actually bound (useful with ``port=0``)."""
        if self._httpd is None:
            raise RuntimeError("server not started")
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        """Base URL without a trailing slash, e.g. ``http://127.0.0.1:40123``."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}"

    # -- inspection -------------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot (a new list) of every request received so far, oldest first."""
        with self._lock:
            return list(self._requests)

    @property
    def replies(self) -> list[ServedReply]:
        """A snapshot of how each generation request was answered, in the order the
        answers ended (a hang is listed when it ends)."""
        with self._lock:
            return list(self._replies)

    @property
    def tool_results(self) -> list[ToolResult]:
        """Every ``tool_result`` received, once per tool call (a retried request that
        carries it again adds nothing), oldest first."""
        with self._lock:
            return list(self._tool_results)

    @property
    def total_usage(self) -> dict[str, int]:
        """The token counts reported in all replies, summed per field."""
        totals: dict[str, int] = {}
        for served in self.replies:
            for key, value in served.usage.items():
                totals[key] = totals.get(key, 0) + value
        return totals

    def wait_for_requests(
        self, n: int, timeout: float = 10.0, path: str | None = None
    ) -> list[RecordedRequest]:
        """Block until at least ``n`` requests (to ``path``, if given) have been received.

        Requests are recorded as soon as they are read, before any delay, so this also
        returns while a delayed reply is still pending. Returns the matching requests;
        raises :class:`TimeoutError` if they do not arrive within ``timeout`` seconds.
        """

        def matching() -> list[RecordedRequest]:
            return [r for r in self._requests if path is None or r.path == path]

        with self._lock:
            if not self._lock.wait_for(lambda: len(matching()) >= n, timeout):
                got = len(matching())
                raise TimeoutError(f"expected {n} request(s) to {path or 'any path'}, got {got}")
            return matching()

    def verify(self, all_used: bool = False) -> None:
        """Raise AssertionError if a :class:`ToolUse` check failed (or, with ``all_used``,
        if scripted steps or :meth:`on_prompt` scripts were never used).

        Called by ``with`` on a clean exit, so a failed check fails the test even when
        the tool under test shrugged off the 400 it got.
        """
        with self._lock:
            problems = list(self._check_failures)
            if all_used:
                problems += [f"scripted step never used: {step!r}" for step in self._script.queue]
                problems += [f"on_prompt({m!r}) never matched" for m in self._script.unused_prompts()]
        if problems:
            raise AssertionError(f"{type(self).__name__}: " + "; ".join(problems))

    # -- control --------------------------------------------------------------------------

    def script(self, *steps: ReplySpec | Sequence[ReplySpec]) -> None:
        """Queue answers for the next generation requests, used in order.

        Each is a step: a str, a :class:`Reply`, a :class:`ToolUse`, an :class:`Error`,
        :class:`Hang`, :class:`Stall` or :class:`Drop`, or a callable ``(request) -> str |
        step``. A **list** of steps is one agentic conversation: its first step answers the
        next request that takes from the queue, and each later step answers the request
        that brings back the results of the previous step's tool calls (so concurrent
        conversations never take each other's steps)::

            server.script([ToolUse("Bash", {"command": "echo hi"}, expect="hi"), "done"])

        Once the queue is empty the default reply is used again.
        """
        with self._lock:
            self._script.queue.extend(steps)

    def on_prompt(self, match: PromptMatch, *steps: ReplySpec, times: int | None = None) -> None:
        """Answer every new turn whose prompt matches with the conversation ``steps``.

        ``match`` is a substring of the turn's prompt (the user's text, see
        :attr:`RecordedRequest.user_text`), a compiled regular expression searched in it,
        or a predicate ``(request) -> bool``. Each matching turn gets its own run through
        ``steps`` (as a list given to :meth:`script`); ``times`` limits how many turns
        (``None``: all). Checked before the :meth:`script` queue; the first match wins.
        """
        with self._lock:
            self._script.on_prompt(match, steps, times)

    def set_delay(self, seconds: float) -> None:
        """Set the wait before answering each generation request (0 to answer at once)."""
        with self._lock:
            self._delay = float(seconds)

    def fail_next(
        self,
        status: int = 500,
        body: Any = None,
        times: int = 1,
        headers: dict[str, str] | None = None,
        retry_after: float | None = None,
    ) -> None:
        """Answer the next ``times`` generation requests with an HTTP error.

        Args:
            status: HTTP status code. Clients usually retry 429 and 5xx (Claude Code up to
                ``CLAUDE_CODE_MAX_RETRIES`` times) and give up at once on other 4xx.
            body: response body (str, bytes or JSON-able object); ``None`` sends the
                provider's usual error JSON.
            times: how many consecutive generation requests fail.
            headers: extra response headers, e.g. ``{"x-should-retry": "false"}``.
            retry_after: seconds for a ``retry-after`` header.
        """
        error = Error(status, body=body, headers=dict(headers or {}), retry_after=retry_after)
        with self._lock:
            self._failures.extend(error for _ in range(times))

    def reset(self) -> None:
        """Forget recorded requests, replies, tool results and check failures, queued and
        prompt-keyed scripts and errors; restore the initial delay."""
        with self._lock:
            self._requests.clear()
            self._replies.clear()
            self._tool_results.clear()
            self._check_failures.clear()
            self._script.clear()
            self._failures.clear()
            self._delay = self._initial_delay

    # -- internals used by the handler -----------------------------------------------------

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)
            self._lock.notify_all()

    def _next_id(self) -> int:
        return next(self._ids)

    def _handle(self, request: RecordedRequest, handler: Handler) -> None:
        if request.path == "/" and request.method in ("GET", "HEAD"):
            handler.send_json(200, {"ok": True})  # tools probe the base URL for reachability
        elif request.path in self.generation_paths and request.method == "POST":
            self._generate(request, handler)
        elif not self._handle_other(request, handler):
            handler.send_json(404, self._error_body(404, f"no route for {request.method} {request.path}"))

    def _generate(self, request: RecordedRequest, handler: Handler) -> None:
        with self._lock:
            seen = {r.tool_use_id for r in self._tool_results}
            self._tool_results.extend(r for r in request.tool_results if r.tool_use_id not in seen)
            failed = self._script.check(request)
            self._check_failures.extend(failed)
            # An injected error goes first and does not use up a scripted reply.
            step: ReplySpec | None = self._failures.pop(0) if self._failures and not failed else None
            conversation = None
            if step is None and not failed:
                step, conversation = self._script.choose(request)
            delay = self._delay
        if failed:
            message = "toolpool fake server: " + "; ".join(failed)
            self._send_error(request, handler, Error(400, message), kind="check_failed")
            return
        if step is None:
            step = self._default_reply if self._default_reply is not None else _echo
        try:
            resolved = self._resolve(step, request)
        except Exception as exc:
            # Answer (so the tool under test does not hang), then let the server print the
            # traceback: a broken reply function is a bug in the test, not in the tool.
            self._send_error(request, handler, Error(500, f"fake reply function raised {exc!r}"), delay=0)
            raise
        if isinstance(resolved, Error):
            self._wait(delay if resolved.delay is None else resolved.delay)
            self._send_error(request, handler, resolved)
        elif isinstance(resolved, Hang):
            self._finish(request, "hang", None, ended=self._hold(handler))
        elif isinstance(resolved, (Stall, Drop)):
            self._wait(delay)
            self._send_broken(request, handler, resolved)
        else:
            self._wait(delay if resolved.delay is None else resolved.delay)
            self._send_reply(request, handler, resolved, conversation)

    def _resolve(self, step: ReplySpec, request: RecordedRequest) -> Reply | ToolUse | Error | Hang | Stall | Drop:
        """Call a responder, read a computed reply text: the step as it will be sent."""
        if callable(step) and not isinstance(step, (Reply, ToolUse, Error, Hang, Stall, Drop)):
            step = step(request)
            if step is None:
                raise ValueError("a reply function returned None; return a str or a step")
        if isinstance(step, Reply) and callable(step.text):
            return replace(step, text=str(step.text(request)))
        if isinstance(step, (Reply, ToolUse, Error, Hang, Stall, Drop)):
            return step
        return Reply(str(step))

    def _send_reply(self, request: RecordedRequest, handler: Handler, step: Reply | ToolUse,
                    conversation: Any) -> None:
        blocks = self._with_ids(_blocks(step))
        try:
            rendered = self._render(request, blocks)
        except ValueError as exc:  # a step this provider cannot send: a mistake in the test
            with self._lock:
                self._check_failures.append(str(exc))
            self._send_error(request, handler, Error(500, str(exc)))
            return
        calls = tuple(b for b in blocks if isinstance(b, ToolUse))
        with self._lock:
            self._script.sent(calls, conversation)  # before sending: the follow-up may come at once
        text = "".join(b for b in blocks if isinstance(b, str))
        kind = "tool_use" if calls else "reply"
        if not request.stream:
            # Recorded first: a client that has the answer may ask again at once, and the records
            # must stay in the order the requests were answered.
            self._finish(request, kind, 200, text=text, tool_uses=calls, usage=rendered.usage)
            handler.send_json(200, rendered.message, self._reply_headers(rendered.message))
            return
        handler.start_sse()
        for event in self._paced(rendered.events, step.chunk_delay):
            handler.send_sse(event.data, event.event)
        self._finish(request, kind, 200, text=text, tool_uses=calls, usage=rendered.usage)

    def _send_broken(self, request: RecordedRequest, handler: Handler, step: Stall | Drop) -> None:
        """Start a reply, then stall (hold the connection) or drop it."""
        rendered = self._render(request, [step.text] if step.text else [""])
        kind = "stall" if isinstance(step, Stall) else "drop"
        if not request.stream:
            body = self._encode(rendered.message)
            handler.send_json(200, body, truncate=0 if isinstance(step, Stall) else len(body) // 2)
        else:
            handler.start_sse()
            for event in self._paced(rendered.events, getattr(step, "chunk_delay", 0.0), stop_after=step.after):
                handler.send_sse(event.data, event.event)
        if isinstance(step, Stall):
            self._finish(request, kind, 200, text=step.text, ended=self._hold(handler))
        else:
            handler.cut(step.reset)
            self._finish(request, kind, 200, text=step.text, ended="cut")

    def _send_error(self, request: RecordedRequest, handler: Handler, error: Error, kind: str = "error",
                    delay: float | None = None) -> None:
        message = error.message or self._error_message(error.status)
        body = error.body if error.body is not None else self._error_body(error.status, message)
        headers = dict(error.headers)
        if error.retry_after is not None:
            headers["retry-after"] = f"{error.retry_after:g}"
        if error.in_stream:
            handler.start_sse()
            for event in self._render(request, [""]).events:
                if event.kind == "head":
                    handler.send_sse(event.data, event.event)
            self._send_stream_error(handler, body)
            self._finish(request, kind, 200, text=message)
            return
        self._finish(request, kind, error.status, text=message)  # recorded first, as above
        handler.send_json(error.status, body, {**self._reply_headers(body), **headers})

    def _paced(self, events: Iterable[SseEvent], chunk_delay: float,
               stop_after: int | None = None) -> Iterator[SseEvent]:
        """The events in order, pausing ``chunk_delay`` between deltas; with ``stop_after``,
        only the head and that many deltas (and what lies between them)."""
        deltas = 0
        for event in events:
            if stop_after is not None and event.kind != "head" and deltas >= stop_after:
                return
            if event.kind == "delta":
                if deltas:
                    self._wait(chunk_delay)
                deltas += 1
            yield event

    def _hold(self, handler: Handler) -> str:
        """Keep the connection open, saying nothing, until the client or the server ends it."""
        while not self._closing.wait(0.05):
            if handler.client_closed():
                return "client_closed"
        return "server_closed"

    def _wait(self, seconds: float) -> None:
        """Sleep without blocking close(): an Event wait returns early when closing."""
        if seconds > 0 and self._closing.wait(seconds):
            raise ServerClosing()
        if self._closing.is_set():
            raise ServerClosing()

    def _with_ids(self, blocks: list[str | ToolUse]) -> list[str | ToolUse]:
        return [replace(b, id=f"toolu_fake_{self._next_id():06d}") if isinstance(b, ToolUse) and b.id is None
                else b for b in blocks]

    def _finish(self, request: RecordedRequest, kind: str, status: int | None, *, text: str = "",
                tool_uses: tuple[ToolUse, ...] = (), usage: dict[str, int] | None = None,
                ended: str = "complete") -> None:
        served = ServedReply(request, kind, status, text, tool_uses, dict(usage or {}), ended,
                             time.monotonic() - request.timestamp)
        with self._lock:
            self._replies.append(served)
            self._lock.notify_all()

    @staticmethod
    def _encode(obj: Any) -> bytes:
        return obj if isinstance(obj, bytes) else (obj.encode() if isinstance(obj, str) else json.dumps(obj).encode())

    # -- provider hooks ---------------------------------------------------------------------

    def _render(self, request: RecordedRequest, blocks: list[str | ToolUse]) -> Rendered:
        """The reply made of ``blocks`` (text pieces and tool calls with ids) in the wire format."""
        raise NotImplementedError

    def _error_body(self, status: int, message: str) -> Any:
        raise NotImplementedError

    def _error_message(self, status: int) -> str:
        """The message the real API gives for ``status``."""
        return f"injected error {status}"

    def _send_stream_error(self, handler: Handler, body: Any) -> None:
        """Report an error inside a started stream."""
        handler.send_sse(body)

    def _reply_headers(self, body: Any) -> dict[str, str]:
        """Extra headers of a JSON answer (e.g. the request id the real API sends)."""
        return {}

    def _handle_other(self, request: RecordedRequest, handler: Handler) -> bool:
        """Answer provider-specific extra routes; return False if the route is unknown."""
        return False


def _blocks(step: Reply | ToolUse) -> list[str | ToolUse]:
    """The content blocks of a reply: its text, or its list of texts and tool calls."""
    if isinstance(step, ToolUse):
        return [step.text, replace(step, text="")] if step.text else [step]
    if isinstance(step.text, str):
        return [step.text]
    return [b if isinstance(b, ToolUse) else str(b) for b in step.text]  # type: ignore[union-attr]


def _echo(request: RecordedRequest) -> str:
    """The default reply: ``ECHO: `` and the first line of the last user message."""
    return "ECHO: " + request.user_text.strip().split("\n", 1)[0].strip()

