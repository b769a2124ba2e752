"""One thread per pool that runs small callbacks at absolute times.

Deadlines of queued requests, restart backoff, lifetime recycling and idle
shrinking are all "do X at time T".  The thread sleeps on a Condition until
the earliest T (or a new, earlier entry), so it costs nothing while nothing
is due: no polling.  Callbacks must be quick; slow work (spawning) goes to the
pool's executor.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable

from .timeouts import MAX_WAIT

log = logging.getLogger("toolpool.scheduler")


class Timer:
    """A handle to cancel a scheduled call."""

    __slots__ = ("when", "fn", "cancelled", "_scheduler")

    def __init__(self, when: float, fn: Callable[[], None], scheduler: Scheduler | None = None) -> None:
        self.when = when
        self.fn: Callable[[], None] | None = fn
        self.cancelled = False
        self._scheduler = scheduler

    def cancel(self) -> None:
        if self.cancelled:
            return
        self.cancelled = True
        self.fn = None  # drop what the callback holds (a request, its response) now, not at its due time
        if self._scheduler is not None:
            self._scheduler._note_cancelled()


class Scheduler:
    def __init__(self, name: str = "toolpool-scheduler") -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Timer]] = []
        self._seq = itertools.count()
        self._closed = False
        self._cancelled = 0  # cancelled entries still in the heap
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def call_at(self, when: float, fn: Callable[[], None]) -> Timer:
        """Run ``fn`` on the scheduler thread at ``time.monotonic()`` ``when``.

        A ``when`` beyond what a wait can express is kept (it simply never comes
        due in practice); NaN is refused, since it would never compare as due.
        """
        if when != when:
            raise ValueError("scheduler: a NaN time can never come due")
        timer = Timer(when, fn, self)
        with self._cond:
            if self._closed:
                timer.cancelled = True
                return timer
            heapq.heappush(self._heap, (when, next(self._seq), timer))
            if self._heap[0][2] is timer:
                self._cond.notify()
        return timer

    def _note_cancelled(self) -> None:
        """Rebuild the heap when cancelled entries outnumber live ones: bounded memory
        for long timeouts that are almost always cancelled (request deadlines)."""
        with self._cond:
            self._cancelled += 1
            if self._cancelled > 64 and self._cancelled * 2 > len(self._heap):
                self._heap = [entry for entry in self._heap if not entry[2].cancelled]
                heapq.heapify(self._heap)
                self._cancelled = 0

    def __len__(self) -> int:
        with self._cond:
            return len(self._heap)

    def call_later(self, delay: float, fn: Callable[[], None]) -> Timer:
        if delay != delay:
            raise ValueError("scheduler: a NaN delay can never come due")
        return self.call_at(time.monotonic() + min(max(0.0, delay), MAX_WAIT), fn)

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._closed:
                        return
                    while self._heap and self._heap[0][2].cancelled:
                        heapq.heappop(self._heap)
                        self._cancelled = max(0, self._cancelled - 1)
                    if not self._heap:
                        self._cond.wait()
                        continue
                    delay = self._heap[0][0] - time.monotonic()
                    if delay <= 0:
                        timer = heapq.heappop(self._heap)[2]
                        break
                    self._cond.wait(min(delay, MAX_WAIT))  # an overflowing wait would kill this thread
            fn = timer.fn
            if timer.cancelled or fn is None:
                continue
            try:
                fn()
            except BaseException:  # a bug in one callback must not stop every other timer
                log.exception("scheduled callback failed")

    def close(self, timeout: float | None = 5.0) -> None:
        with self._cond:
            self._closed = True
            self._heap.clear()
            self._cond.notify()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)
