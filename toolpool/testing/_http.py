"""Shared plumbing for the fake LLM servers: threaded HTTP server, request log, reply queue.

Provider-specific wire formats live in :mod:`toolpool.testing.fake_anthropic` and
:mod:`toolpool.testing.fake_openai`; everything both need (lifecycle, recording, scripted
replies, delays, error injection) is here, in :class:`FakeLLMServer`.
"""

from __future__ import annotations

import collections
import itertools
import json
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar

__all__ = [
    "FakeLLMServer",
    "RecordedRequest",
    "Reply",
    "ReplySpec",
    "count_words",
    "last_user_text",
    "split_chunks",
]


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
            return self.body["messages"]
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


ReplyText = str | Callable[[RecordedRequest], str]


@dataclass(frozen=True)
class Reply:
    """A reply with its own timing, for :meth:`FakeLLMServer.script`.

    Args:
        text: the reply text, or a callable ``(request) -> str`` computing it.
        delay: seconds to wait before answering (before any response byte is sent);
            ``None`` uses the server's current delay (:meth:`FakeLLMServer.set_delay`).
        chunk_delay: seconds to wait between streamed chunks, to make a reply arrive
            slowly (useful to interrupt a tool mid-reply). Ignored for non-streamed replies.
    """

    text: ReplyText
    delay: float | None = None
    chunk_delay: float = 0.0


# What callers may pass wherever a reply is expected.
ReplySpec = str | Callable[[RecordedRequest], str] | Reply


@dataclass(frozen=True)
class _Failure:
    status: int
    body: Any  # str, bytes or a JSON-able object; None means "provider default error body"
    headers: dict[str, str] = field(default_factory=dict)


def _block_text(content: Any) -> list[str]:
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
        texts = _block_text(message.get("content"))
        typed = [t for t in texts if not t.lstrip().startswith("<system-reminder>")]
        return (typed or texts or [""])[-1]
    return ""


def count_words(text: str) -> int:
    """A deterministic stand-in for a token count: whitespace-separated words, at least 1."""
    return max(1, len(text.split()))


def split_chunks(text: str, size: int = 8) -> list[str]:
    """Split ``text`` into pieces of ``size`` characters, so streams carry several deltas."""
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


class _ClientGone(Exception):
    """The client closed its connection (e.g. a tool aborted a request it interrupted)."""


class _ServerClosing(Exception):
    """The fake server is shutting down while a request waits; drop the connection."""


class _HTTPServer(ThreadingHTTPServer):
    """ThreadingHTTPServer whose handler threads are joined on close and can be cut short."""

    daemon_threads = False  # server_close() joins handler threads: nothing outlives close()
    block_on_close = True

    def handle_error(self, request, client_address) -> None:  # type: ignore[override]
        # A client that hangs up mid-reply (an interrupted claude turn) is normal here.
        if isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            return
        super().handle_error(request, client_address)

    def __init__(self, address: tuple[str, int], fake: FakeLLMServer) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.fake = fake
        self._conn_lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls socket.getfqdn(), a reverse DNS lookup that can
        # stall for seconds on an offline machine; the name is never needed here.
        super(ThreadingHTTPServer, self).server_bind()  # skip straight to TCPServer's
        self.server_name = str(self.server_address[0])
        self.server_port = int(self.server_address[1])

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._conn_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._conn_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def abort_connections(self) -> None:
        """Unblock handler threads stuck reading from or writing to a client."""
        with self._conn_lock:
            connections = list(self._connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed by the peer


class _Handler(BaseHTTPRequestHandler):
    # HTTP/1.0: one request per connection, so no idle keep-alive thread outlives a
    # response, and a streamed body simply ends when the connection closes.
    protocol_version = "HTTP/1.0"
    server: _HTTPServer
    server_version = "toolpool-fake/1"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the request log is self.server.fake.requests; keep stderr quiet

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()  # blank line after the last chunk (no trailers)
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()  # CRLF after each chunk
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _dispatch(self) -> None:
        raw = self._read_body()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        path, _, query = self.path.partition("?")
        request = RecordedRequest(
            method=self.command,
            path=path,
            query=query,
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
            raw_body=raw,
            timestamp=time.monotonic(),
        )
        fake = self.server.fake
        fake._record(request)
        try:
            fake._handle(request, self)
        except (_ClientGone, _ServerClosing):
            self.close_connection = True

    # -- response helpers used by the provider classes -------------------------------------

    def _write(self, data: bytes) -> None:
        try:
            self.wfile.write(data)
            self.wfile.flush()
        except OSError as exc:  # BrokenPipe / ConnectionReset: the client went away
            raise _ClientGone() from exc

    def send_json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        data = obj if isinstance(obj, bytes) else (
            obj.encode() if isinstance(obj, str) else json.dumps(obj).encode()
        )
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
        except OSError as exc:
            raise _ClientGone() from exc
        if self.command != "HEAD":
            self._write(data)

    def start_sse(self) -> None:
        try:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.flush()
        except OSError as exc:
            raise _ClientGone() from exc

    def send_sse(self, data: Any, event: str | None = None) -> None:
        """Write one Server-Sent Event; ``data`` is JSON-encoded unless it is a str."""
        payload = data if isinstance(data, str) else json.dumps(data)
        prefix = f"event: {event}\n" if event else ""
        self._write(f"{prefix}data: {payload}\n\n".encode())


_S = TypeVar("_S", bound="FakeLLMServer")  # so start()/__enter__ return the subclass type


class FakeLLMServer:
    """Base of the fake LLM servers: lifecycle, request log, scripted replies, delays, errors.

    Use a subclass (:class:`~toolpool.testing.FakeAnthropicServer` or
    :class:`~toolpool.testing.FakeOpenAIServer`). Replies to generation requests are chosen
    in this order: an error queued with :meth:`fail_next`, then the next reply queued with
    :meth:`script`, then the default ``reply`` given to the constructor, and if that is
    ``None`` the deterministic echo ``"ECHO: <first line of the last user message>"``
    (precisely: of :attr:`RecordedRequest.user_text`, see :func:`last_user_text`).

    Only the first line is echoed on purpose: aider appends a listing of the repository's
    files to the user message, and echoing a file listing makes it create files.
    """

    #: Paths answered as chat generations (set by subclasses).
    generation_paths: frozenset[str] = frozenset()

    def __init__(
        self,
        reply: ReplyText | None = None,
        delay: float = 0.0,
        port: int = 0,
        host: str = "127.0.0.1",
    ) -> None:
        """Configure the server; nothing listens until :meth:`start` or ``with``.

        Args:
            reply: default reply text, or a callable ``(request) -> str``; ``None`` echoes
                the first line of the last user message.
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
        self._script: collections.deque[ReplySpec] = collections.deque()
        self._failures: collections.deque[_Failure] = collections.deque()
        self._delay = float(delay)
        self._closing = threading.Event()
        self._ids = itertools.count(1)
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self: _S) -> _S:  # noqa: PYI019 (typing.Self needs Python 3.11)
        """Bind the port and serve on a background thread; returns ``self``."""
        if self._httpd is not None:
            raise RuntimeError(f"{type(self).__name__} already started")
        self._closing.clear()
        self._httpd = _HTTPServer((self._host, self._requested_port), self)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},  # how fast close() notices the shutdown request
            name=f"{type(self).__name__}:{self.port}",
        )
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving, abort requests still waiting or streaming, join every thread.

        Safe to call more than once.
        """
        httpd, thread = self._httpd, self._thread
        if httpd is None or thread is None:
            return
        self._closing.set()  # wakes delayed replies so their threads can finish
        httpd.shutdown()  # serve_forever returns within poll_interval
        httpd.abort_connections()  # unblocks handlers stuck on a slow or idle client
        httpd.server_close()  # closes the socket and joins the handler threads
        thread.join()
        self._thread = None
        self._httpd = None  # start() may serve again (on a new port when port=0)

    def __enter__(self: _S) -> _S:  # noqa: PYI019
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

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

    # -- control --------------------------------------------------------------------------

    def script(self, *replies: ReplySpec) -> None:
        """Queue replies for the next generation requests, used in order.

        Each may be a str, a callable ``(request) -> str``, or a :class:`Reply` (which
        carries its own delay). Once the queue is empty the default reply is used again.
        """
        with self._lock:
            self._script.extend(replies)

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
    ) -> None:
        """Answer the next ``times`` generation requests with an HTTP error.

        Args:
            status: HTTP status code. Clients usually retry 429 and 5xx (Claude Code up to
                ``CLAUDE_CODE_MAX_RETRIES`` times) and give up at once on other 4xx.
            body: response body (str, bytes or JSON-able object); ``None`` sends the
                provider's usual error JSON.
            times: how many consecutive generation requests fail.
            headers: extra response headers, e.g. ``{"retry-after": "0"}``.
        """
        with self._lock:
            self._failures.extend(_Failure(status, body, dict(headers or {})) for _ in range(times))

    def reset(self) -> None:
        """Forget recorded requests, queued replies and errors; restore the initial delay."""
        with self._lock:
            self._requests.clear()
            self._script.clear()
            self._failures.clear()
            self._delay = self._initial_delay

    # -- internals used by the handler and the subclasses ----------------------------------

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)
            self._lock.notify_all()

    def _next_id(self) -> int:
        return next(self._ids)

    def _handle(self, request: RecordedRequest, handler: _Handler) -> None:
        if request.path == "/" and request.method in ("GET", "HEAD"):
            handler.send_json(200, {"ok": True})  # tools probe the base URL for reachability
        elif request.path in self.generation_paths and request.method == "POST":
            self._generate(request, handler)
        elif not self._handle_other(request, handler):
            handler.send_json(404, self._error_body(404, f"no route for {request.method} {request.path}"))

    def _generate(self, request: RecordedRequest, handler: _Handler) -> None:
        with self._lock:
            # An injected error goes first and does not use up a scripted reply.
            failure = self._failures.popleft() if self._failures else None
            spec: ReplySpec | None = None
            if failure is None and self._script:
                spec = self._script.popleft()
            delay = self._delay
        if failure is not None:
            self._wait(delay)
            body = failure.body if failure.body is not None else self._error_body(
                failure.status, f"injected error {failure.status}"
            )
            handler.send_json(failure.status, body, failure.headers)
            return
        if spec is None:
            spec = self._default_reply if self._default_reply is not None else _echo
        reply = spec if isinstance(spec, Reply) else Reply(spec)
        self._wait(delay if reply.delay is None else reply.delay)
        try:
            text = reply.text(request) if callable(reply.text) else reply.text
        except Exception as exc:
            # Answer (so the tool under test does not hang), then let the server print the
            # traceback: a broken reply function is a bug in the test, not in the tool.
            handler.send_json(500, self._error_body(500, f"fake reply function raised {exc!r}"))
            raise
        self._send_reply(request, handler, str(text), reply.chunk_delay)

    def _wait(self, seconds: float) -> None:
        """Sleep without blocking close(): an Event wait returns early when closing."""
        if seconds > 0 and self._closing.wait(seconds):
            raise _ServerClosing()
        if self._closing.is_set():
            raise _ServerClosing()

    def _chunks(self, text: str, chunk_delay: float) -> Iterator[str]:
        """The text in several pieces, pausing ``chunk_delay`` between them."""
        for i, piece in enumerate(split_chunks(text)):
            if i:
                self._wait(chunk_delay)
            yield piece

    # -- provider hooks ---------------------------------------------------------------------

    def _send_reply(self, request: RecordedRequest, handler: _Handler, text: str, chunk_delay: float) -> None:
        raise NotImplementedError

    def _error_body(self, status: int, message: str) -> Any:
        raise NotImplementedError

    def _handle_other(self, request: RecordedRequest, handler: _Handler) -> bool:
        """Answer provider-specific extra routes; return False if the route is unknown."""
        return False


def _echo(request: RecordedRequest) -> str:
    """The default reply: ``ECHO: `` and the first line of the last user message."""
    return "ECHO: " + request.user_text.strip().split("\n", 1)[0].strip()
