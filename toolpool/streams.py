"""Reader and writer threads, and the bounded buffers they fill.

Each output stream of a tool has one :class:`StreamReader` thread that blocks
in ``poll()`` on the stream, a stop pipe and (for stdout) the process's exit
descriptor.  It never sleeps on a timer, so an idle pool costs no CPU, and it
hands every chunk to a :class:`Sink` the moment it arrives.  Because it also
watches the exit descriptor, a tool's death is seen at once even when a
grandchild keeps the pipe open.

Writes go straight from the caller's thread with a non-blocking ``write``; only
when the pipe is full does the rest go to a :class:`Writer` thread, so a
multi-MiB prompt never blocks the caller nor deadlocks against a tool that is
busy printing.
"""

from __future__ import annotations

import collections
import errno
import os
import select
import threading
from collections.abc import Callable
from typing import Protocol

READ_CHUNK = 65536
#: After the process exits, read at most this much more before reporting the
#: exit: enough for what it wrote before dying, bounded against a grandchild
#: that keeps writing.
EXIT_DRAIN_LIMIT = 4 * 1024 * 1024


class Sink(Protocol):
    """What a :class:`StreamReader` reports to.  Called on the reader thread."""

    def on_data(self, chunk: bytes) -> float | None:
        """New bytes.  Return a quiet period (seconds) to be told about, or None."""

    def on_quiet(self) -> float | None:
        """No byte arrived during the quiet period last asked for; return another to wait for, or None."""

    def on_eof(self) -> None:
        """The stream closed."""

    def on_exit(self) -> None:
        """The process exited (only for the reader given an ``exit_fd``)."""

    def on_error(self, exc: BaseException) -> None:
        """Reading or handling a chunk raised: the reader stops after this call."""


class StopSignal:
    """A pipe whose readability tells every reader of one process to stop."""

    def __init__(self) -> None:
        self.read_fd, self._write_fd = os.pipe()

    def set(self) -> None:
        if self._write_fd >= 0:
            try:
                os.write(self._write_fd, b"x")
            except OSError:
                pass

    def close(self) -> None:
        for fd in (self.read_fd, self._write_fd):
            if fd >= 0:
                os.close(fd)
        self.read_fd = self._write_fd = -1


class StreamReader(threading.Thread):
    """Drains one file descriptor into a sink until EOF and stop."""

    def __init__(self, fd: int, sink: Sink, stop: StopSignal, name: str, exit_fd: int | None = None) -> None:
        super().__init__(name=name, daemon=True)  # daemon: a forgotten pool must not block exit
        self._fd = fd
        self._sink = sink
        self._stop_fd = stop.read_fd
        self._exit_fd = exit_fd
        self.eof = threading.Event()

    def _read(self) -> bytes | None:
        """One read; b"" at EOF, None if nothing is there right now."""
        try:
            return os.read(self._fd, READ_CHUNK)
        except BlockingIOError:
            return None
        except OSError as exc:
            if exc.errno == errno.EIO:  # pty: the terminal's other side is gone
                return b""
            raise

    def _drain_now(self) -> None:
        """Read whatever is already buffered, without waiting for more."""
        got = 0
        while got < EXIT_DRAIN_LIMIT and not self.eof.is_set():
            ready, _, _ = select.select([self._fd], [], [], 0)
            if not ready:
                return
            chunk = self._read()
            if chunk is None:
                return
            if not chunk:
                self.eof.set()
                self._sink.on_eof()
                return
            got += len(chunk)
            self._sink.on_data(chunk)

    def run(self) -> None:
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        poller.register(self._stop_fd, select.POLLIN)
        if self._exit_fd is not None:
            poller.register(self._exit_fd, select.POLLIN)
        quiet_ms: int | None = None
        try:
            while True:
                events = poller.poll(quiet_ms)
                if not events:
                    quiet = self._sink.on_quiet()  # it may ask for another quiet period
                    quiet_ms = None if quiet is None else max(1, int(quiet * 1000))
                    continue
                # Data first, then exit: what a tool printed before dying belongs
                # to its last response.
                ready = {fd for fd, _ in events}
                if self._fd in ready and not self.eof.is_set():
                    chunk = self._read()
                    if chunk == b"":
                        self.eof.set()
                        poller.unregister(self._fd)
                        self._sink.on_eof()
                    elif chunk:
                        quiet = self._sink.on_data(chunk)
                        quiet_ms = None if quiet is None else max(1, int(quiet * 1000))
                if self._exit_fd is not None and self._exit_fd in ready:
                    poller.unregister(self._exit_fd)
                    self._exit_fd = None
                    self._drain_now()
                    self._sink.on_exit()
                if self._stop_fd in ready:
                    return
                if self.eof.is_set() and self._exit_fd is None:
                    return
        except Exception as exc:  # a bug somewhere downstream: never leave a caller waiting
            self.eof.set()
            self._sink.on_error(exc)


class Writer:
    """Writes prompts to a tool's stdin in order, without blocking the caller.

    ``write`` tries one non-blocking ``os.write`` on the caller's thread (the
    common case: the whole prompt fits in the pipe).  Whatever does not fit is
    queued for a writer thread, started on first need and joined by
    :meth:`close`.
    """

    def __init__(self, write_some: Callable[[memoryview], int], fd: int, stop: StopSignal,
                 on_error: Callable[[BaseException], None], name: str) -> None:
        self._write_some = write_some
        self._fd = fd
        self._stop_fd = stop.read_fd
        self._on_error = on_error
        self._name = name
        self._cond = threading.Condition()
        self._pending: collections.deque[memoryview] = collections.deque()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._close_input: Callable[[], None] | None = None
        self.failed: BaseException | None = None

    def write(self, data: bytes) -> None:
        """Queue ``data``; raise BrokenPipeError if the tool's input is closed."""
        view = memoryview(data)
        with self._cond:
            if self.failed is not None:
                raise BrokenPipeError(errno.EPIPE, f"tool input closed: {self.failed}")
            if self._closed:
                raise BrokenPipeError(errno.EPIPE, "writer closed")
            if not self._pending:
                view = view[self._write_some(view):]
                if not view:
                    return
            self._pending.append(view)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            self._cond.notify()

    def close_input_when_drained(self, close_input: Callable[[], None]) -> None:
        """Call ``close_input`` once everything queued so far is written (one-shot tools)."""
        with self._cond:
            if self._pending:
                self._close_input = close_input
                return
        close_input()

    def has_pending(self) -> bool:
        """True while some written data has not reached the pipe yet."""
        return bool(self._pending)

    @property
    def pending_bytes(self) -> int:
        with self._cond:
            return sum(len(v) for v in self._pending)

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self._fd, select.POLLOUT)
        poller.register(self._stop_fd, select.POLLIN)
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                view = self._pending[0]
            events = dict(poller.poll())
            if self._stop_fd in events:
                return
            if events.get(self._fd, 0) & (select.POLLERR | select.POLLHUP) and not events[self._fd] & select.POLLOUT:
                self._fail(BrokenPipeError(errno.EPIPE, "tool closed its input"))
                return
            try:
                n = self._write_some(view)
            except OSError as exc:
                self._fail(exc)
                return
            close_input = None
            with self._cond:
                if n == len(view):
                    self._pending.popleft()
                    if not self._pending:
                        close_input, self._close_input = self._close_input, None
                else:
                    self._pending[0] = view[n:]
            if close_input is not None:
                close_input()

    def _fail(self, exc: BaseException) -> None:
        with self._cond:
            self.failed = exc
            self._pending.clear()
        self._on_error(exc)

    def close(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._closed = True
            self._pending.clear()
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)


class Tail:
    """The last ``limit`` bytes of a stream (stderr is kept this way)."""

    def __init__(self, limit: int = 8192) -> None:
        self.limit = limit
        self._buf = bytearray()
        self.total = 0

    def append(self, chunk: bytes) -> None:
        self.total += len(chunk)
        self._buf += chunk
        if len(self._buf) > self.limit:
            del self._buf[: len(self._buf) - self.limit]

    def clear(self) -> None:
        self._buf.clear()

    def bytes(self) -> bytes:
        return bytes(self._buf)

    def text(self, max_lines: int = 20) -> str:
        lines = self._buf.decode("utf-8", "replace").splitlines()
        return "\n".join(lines[-max_lines:])
