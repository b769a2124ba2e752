"""Shared plumbing for the fake LLM servers: a threaded HTTP server whose threads are joined.

The request log, scripting and fault injection are in :mod:`toolpool.testing._base`; wire
formats in :mod:`toolpool.testing.fake_anthropic` and :mod:`toolpool.testing.fake_openai`.
"""

from __future__ import annotations

import json
import select
import socket
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from ._request import RecordedRequest

if TYPE_CHECKING:
    from ._base import FakeLLMServer

__all__ = ["ClientGone", "HTTPServer", "Handler", "ServerClosing"]


class ClientGone(Exception):
    """The client closed its connection (e.g. a tool aborted a request it interrupted)."""


class ServerClosing(Exception):
    """The fake server is shutting down while a request waits; drop the connection."""


class HTTPServer(ThreadingHTTPServer):
    """ThreadingHTTPServer whose handler threads are joined on close and can be cut short."""

    daemon_threads = False  # server_close() joins handler threads: nothing outlives close()
    block_on_close = True

    def handle_error(self, request: Any, client_address: Any) -> None:
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
        super().__init__(address, Handler)

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


class Handler(BaseHTTPRequestHandler):
    # HTTP/1.0: one request per connection, so no idle keep-alive thread outlives a
    # response, and a streamed body simply ends when the connection closes.
    protocol_version = "HTTP/1.0"
    server: HTTPServer
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
            parts: list[bytes] = []
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
        except (ClientGone, ServerClosing):
            self.close_connection = True

    # -- response helpers used by the provider classes -------------------------------------

    def _write(self, data: bytes) -> None:
        try:
            self.wfile.write(data)
            self.wfile.flush()
        except OSError as exc:  # BrokenPipe / ConnectionReset: the client went away
            raise ClientGone() from exc

    def send_json(self, status: int, obj: Any, headers: dict[str, str] | None = None,
                  truncate: int | None = None) -> None:
        """Send a JSON (or str/bytes) body; ``truncate`` sends only that many of its bytes
        after a Content-Length announcing them all (a connection dropped mid-body)."""
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
            raise ClientGone() from exc
        if self.command != "HEAD":
            self._write(data if truncate is None else data[:truncate])

    def start_sse(self) -> None:
        try:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.flush()
        except OSError as exc:
            raise ClientGone() from exc

    def send_sse(self, data: Any, event: str | None = None) -> None:
        """Write one Server-Sent Event; ``data`` is JSON-encoded unless it is a str."""
        payload = data if isinstance(data, str) else json.dumps(data)
        prefix = f"event: {event}\n" if event else ""
        self._write(f"{prefix}data: {payload}\n\n".encode())



    def client_closed(self) -> bool:
        """Whether the client has closed its side (given up waiting for an answer).

        One request per connection (HTTP/1.0), so once the request is read anything
        readable on the socket is its end-of-file.
        """
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):  # closed or reset under us: gone too
            return True

    def cut(self, reset: bool) -> None:
        """End the connection now, mid-response: an orderly close, or a TCP reset."""
        try:
            if reset:  # linger 0: close() sends RST instead of FIN
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.connection.close()
            else:
                self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # the client went first
        self.close_connection = True
