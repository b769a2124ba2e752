"""Counters and latency summaries for a pool (``pool.stats()``, ``pool.pop_stats()``)."""

from __future__ import annotations

import bisect
import collections
import threading
from typing import Any

#: Counters that ``pop_stats()`` resets, as psycopg_pool does.
COUNTERS = ("requests", "errors", "timeouts", "crashes", "restarts", "spawns_warm", "spawns_cold",
            "bytes_in", "bytes_out", "requests_queued", "requests_rejected", "requests_cancelled",
            "unsolicited", "rate_limited")
#: Latencies, in seconds, summarised as count/mean/p50/p95/max.
LATENCIES = ("queue_wait", "response")
#: Histogram bucket upper bounds (seconds) for Prometheus: lifetime counts, never reset.
BUCKETS: tuple[float, ...] = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                              120.0, 300.0, float("inf"))
#: Latest samples kept per latency for percentiles: bounded memory.
RESERVOIR = 4096


class _Latency:
    __slots__ = ("samples", "count", "total", "maximum", "life_count", "life_sum", "buckets")

    def __init__(self) -> None:
        self.samples: collections.deque[float] = collections.deque(maxlen=RESERVOIR)
        self.count = 0
        self.total = 0.0
        self.maximum = 0.0
        self.life_count = 0
        self.life_sum = 0.0
        self.buckets = [0] * len(BUCKETS)

    def add(self, value: float) -> None:
        self.samples.append(value)
        self.count += 1
        self.total += value
        self.maximum = max(self.maximum, value)
        self.life_count += 1
        self.life_sum += value
        self.buckets[bisect.bisect_left(BUCKETS, value)] += 1

    def summary(self) -> dict[str, float]:
        ordered = sorted(self.samples)

        def pct(p: float) -> float:
            return ordered[min(len(ordered) - 1, int(p * len(ordered)))] if ordered else 0.0

        return {"count": self.count, "mean": self.total / self.count if self.count else 0.0,
                "p50": pct(0.50), "p95": pct(0.95), "max": self.maximum}

    def reset(self) -> None:
        self.samples.clear()
        self.count = 0
        self.total = 0.0
        self.maximum = 0.0


class Stats:
    """Thread-safe pool figures.  Counters and summaries since the last ``pop``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters = dict.fromkeys(COUNTERS, 0)
        self._lifetime = dict.fromkeys(COUNTERS, 0)
        self._latency = {name: _Latency() for name in LATENCIES}

    def incr(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counters[name] += n
            self._lifetime[name] += n

    def observe(self, name: str, seconds: float) -> None:
        with self._lock:
            self._latency[name].add(seconds)

    def record(self, counts: dict[str, int], seconds: dict[str, float] | None = None) -> None:
        """Several counters and latencies at once: one lock round-trip on the request path."""
        with self._lock:
            for name, n in counts.items():
                self._counters[name] += n
                self._lifetime[name] += n
            if seconds:
                for name, value in seconds.items():
                    self._latency[name].add(value)

    def snapshot(self, reset: bool = False) -> dict[str, Any]:
        with self._lock:
            out: dict[str, Any] = dict(self._counters)
            for name, lat in self._latency.items():
                out[name] = lat.summary()
            if reset:
                self._counters = dict.fromkeys(COUNTERS, 0)
                for lat in self._latency.values():
                    lat.reset()
        return out

    def lifetime(self) -> dict[str, Any]:
        """Monotonic totals and histogram buckets, for Prometheus."""
        with self._lock:
            hist: dict[str, dict[str, Any]] = {}
            for name, lat in self._latency.items():
                cumulative: list[tuple[float, int]] = []
                running = 0
                for bound, n in zip(BUCKETS, lat.buckets, strict=True):
                    running += n
                    cumulative.append((bound, running))
                hist[name] = {"buckets": cumulative, "sum": lat.life_sum, "count": lat.life_count}
            return {"counters": dict(self._lifetime), "histograms": hist}
