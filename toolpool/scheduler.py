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
from typing import Callable, List, Optional, Tuple

log = logging.getLogger("toolpool.scheduler")


class Timer:
    """A handle to cancel a scheduled call."""

    __slots__ = ("when", "fn", "cancelled")

    def __init__(self, when: float, fn: Callable[[], None]) -> None:
        self.when = when
        self.fn = fn
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Scheduler:
    def __init__(self, name: str = "toolpool-scheduler") -> None:
        self._cond = threading.Condition()
        self._heap: List[Tuple[float, int, Timer]] = []
        self._seq = itertools.count()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def call_at(self, when: float, fn: Callable[[], None]) -> Timer:
        """Run ``fn`` on the scheduler thread at ``time.monotonic()`` ``when``."""
        timer = Timer(when, fn)
        with self._cond:
            if self._closed:
                timer.cancelled = True
                return timer
            heapq.heappush(self._heap, (when, next(self._seq), timer))
            if self._heap[0][2] is timer:
                self._cond.notify()
        return timer

    def call_later(self, delay: float, fn: Callable[[], None]) -> Timer:
        return self.call_at(time.monotonic() + max(0.0, delay), fn)

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._closed:
                        return
                    while self._heap and self._heap[0][2].cancelled:
                        heapq.heappop(self._heap)
                    if not self._heap:
                        self._cond.wait()
                        continue
                    delay = self._heap[0][0] - time.monotonic()
                    if delay <= 0:
                        timer = heapq.heappop(self._heap)[2]
                        break
                    self._cond.wait(delay)
            if timer.cancelled:
                continue
            try:
                timer.fn()
            except Exception:  # a bug in one callback must not stop the others
                log.exception("scheduled callback failed")

    def close(self, timeout: Optional[float] = 5.0) -> None:
        with self._cond:
            self._closed = True
            self._heap.clear()
            self._cond.notify()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)
