"""Requests waiting for an instance, leases, and per-instance message queues."""

from __future__ import annotations

import collections
import concurrent.futures as cf
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Deque, Optional

from .adapters.base import EventCallback
from .errors import InstanceBusy, PoolClosed, ResponseTimeout, ToolPoolError
from .response import Response
from .scheduler import Timer

if TYPE_CHECKING:  # pragma: no cover
    from .instance import Instance
    from .pool import ToolProcessPool


class Request:
    """A prompt (or a lease) waiting for an instance, then running on one.

    ``future`` is what the caller holds: PENDING while queued (so it can be
    cancelled), RUNNING once sent.  ``deadline`` (monotonic) covers queueing
    plus answering.
    """

    __slots__ = ("kind", "prompt", "data", "future", "timeout", "deadline", "created", "created_mono", "on_event",
                 "timer", "retries", "instance", "running", "_completed")

    def __init__(self, kind: str, prompt: Optional[str], data: Optional[bytes], timeout: Optional[float],
                 on_event: Optional[EventCallback] = None, retries: int = 0) -> None:
        self.kind = kind
        self.prompt = prompt
        self.data = data
        self.future: cf.Future = cf.Future()
        self.timeout = timeout
        self.created = time.perf_counter()
        self.created_mono = time.monotonic()
        self.deadline = None if timeout is None else self.created_mono + timeout
        self.on_event = on_event
        self.timer: Optional[Timer] = None
        self.retries = retries
        self.instance: Optional["Instance"] = None
        self.running = False
        self._completed = False


class _Queued:
    __slots__ = ("prompt", "on_event", "future", "started", "timer")

    def __init__(self, prompt: str, on_event: Optional[EventCallback]) -> None:
        self.prompt = prompt
        self.on_event = on_event
        self.future: cf.Future = cf.Future()
        self.started = False
        self.timer: Optional[Timer] = None


class MessageQueue:
    """Sends queued prompts to one instance, each after the previous answer.

    Used by :meth:`Lease.submit` and ``pool.submit(prompt, instance=i)``: the
    caller gets a Future at once; the prompt goes out when the instance is
    idle.  Futures are cancellable until their prompt is sent.
    """

    def __init__(self, instance: "Instance", call_later: Callable[[float, Callable[[], None]], Timer],
                 on_drained: Optional[Callable[[], None]] = None) -> None:
        self._instance = instance
        self._call_later = call_later
        self._on_drained = on_drained
        self._lock = threading.Lock()
        self._queue: Deque[_Queued] = collections.deque()
        self._pumping = False
        self._closed: Optional[BaseException] = None

    def submit(self, prompt: str, on_event: Optional[EventCallback] = None,
               timeout: Optional[float] = None) -> "cf.Future[Response]":
        """Queue ``prompt``; ``timeout`` covers waiting in this queue plus answering."""
        self._instance.adapter.encode(prompt)  # bad input fails here, not later
        entry = _Queued(prompt, on_event)
        if timeout is not None:
            entry.timer = self._call_later(timeout, lambda: self._expire(entry, timeout))
        with self._lock:
            if self._closed is not None:
                raise self._closed
            self._queue.append(entry)
            if self._pumping:
                return entry.future
            self._pumping = True
        self._instance.when_idle(self._pump)
        return entry.future

    def _expire(self, entry: _Queued, timeout: float) -> None:
        with self._lock:
            queued = not entry.started
            if queued and entry in self._queue:
                self._queue.remove(entry)
        if entry.future.done():
            return
        index = self._instance.index
        on_request = self._instance.requests  # before callbacks can send the next prompt
        if queued:
            err = ResponseTimeout(f"prompt still queued for instance {index} after {timeout}s", phase="queue")
        else:
            err = ResponseTimeout(f"instance {index} gave no complete response within {timeout}s (including "
                                  "queueing); the turn was interrupted", self._instance.partial_output(),
                                  phase="response")
        try:
            entry.future.set_exception(err)
        except cf.InvalidStateError:
            return
        if not queued:
            self._instance.interrupt(expect_requests=on_request)

    def __len__(self) -> int:
        with self._lock:
            return len(self._queue)

    def _pump(self) -> None:
        """Send the head of the queue; runs when the instance is idle."""
        while True:
            with self._lock:
                if not self._queue:
                    self._pumping = False
                    drained = self._on_drained
                    break
                entry = self._queue[0]
                if not entry.started:
                    if not entry.future.set_running_or_notify_cancel():
                        self._queue.popleft()  # cancelled while queued
                        continue
                    entry.started = True
            try:
                inner = self._instance.send(entry.prompt, on_event=entry.on_event, unread=False)
            except InstanceBusy:
                # Another prompt (e.g. lease.send) is in flight: go again when idle.
                self._instance.when_idle(self._pump)
                return
            except Exception as exc:
                with self._lock:
                    self._queue.popleft()
                entry.future.set_exception(exc)
                continue
            with self._lock:
                self._queue.popleft()
            inner.add_done_callback(lambda f, e=entry: _finish(f, e))
            inner.add_done_callback(lambda f: self._instance.when_idle(self._pump))
            return
        if drained is not None:
            drained()

    def close(self, exc: BaseException) -> None:
        """Fail every queued prompt with ``exc``; later submits raise it."""
        with self._lock:
            self._closed = exc
            queued, self._queue = list(self._queue), collections.deque()
        for entry in queued:
            if not entry.future.done():
                try:
                    entry.future.set_exception(exc)
                except cf.InvalidStateError:
                    pass


def _finish(source: cf.Future, entry: _Queued) -> None:
    if entry.timer is not None:
        entry.timer.cancel()
    _copy(source, entry.future)


def _copy(source: cf.Future, target: cf.Future) -> None:
    if target.done():
        return
    exc = source.exception()
    try:
        if exc is not None:
            target.set_exception(exc)
        else:
            target.set_result(source.result())
    except cf.InvalidStateError:
        pass


class Lease:
    """Exclusive use of one instance, from ``with pool.lease() as lease:``.

    The instance takes no other work while leased.  ``ask``/``send``/``read``
    behave like the pool's by-index calls; ``submit`` queues prompts that are
    sent one after another.  Leaving the ``with`` block releases it, also on
    an exception; a turn still running is interrupted first.
    """

    def __init__(self, pool: "ToolProcessPool", instance: "Instance") -> None:
        self._pool = pool
        self.instance = instance
        self.index = instance.index
        self._queue = MessageQueue(instance, pool._scheduler.call_later)
        self._released = False

    def _check(self) -> "Instance":
        if self._released:
            raise ToolPoolError(f"this lease of instance {self.index} was released; take a new one")
        if self._pool.closed:
            raise PoolClosed("the pool has been shut down")
        return self.instance

    def send(self, prompt: str, **kwargs: Any) -> "cf.Future[Response]":
        return self._check().send(prompt, **kwargs)

    def read(self, timeout: Optional[float] = None) -> Response:
        return self._check().read(timeout)

    def ask(self, prompt: str, timeout: Optional[float] = None, **kwargs: Any) -> Response:
        return self._check().ask(prompt, timeout, **kwargs)

    def submit(self, prompt: str, on_event: Optional[EventCallback] = None,
               timeout: Optional[float] = None) -> "cf.Future[Response]":
        """Queue ``prompt``; it is sent after every earlier one is answered.

        ``timeout`` covers waiting plus answering (:class:`ResponseTimeout`
        with ``phase`` "queue" or "response"; a running turn is interrupted).
        """
        self._check()
        return self._queue.submit(prompt, on_event, timeout)

    def interrupt(self) -> bool:
        return self._check().interrupt()

    def status(self) -> dict:
        return self.instance.status()

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        self._queue.close(ToolPoolError(f"the lease of instance {self.index} was released"))
        self._pool._release_lease(self)

    def __enter__(self) -> "Lease":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.release()
