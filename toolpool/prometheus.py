"""Prometheus metrics for a pool: ``REGISTRY.register(PoolCollector(pool))``.

Needs the optional extra: ``pip install 'toolpool[prometheus]'``.  The
collector reads the pool's lifetime figures at scrape time (monotonic
counters, latency histograms) and its current health (gauges), so it adds no
work to the request path.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:  # pragma: no cover
    from .pool import ToolProcessPool

_COUNTERS = {
    "requests": "Requests answered or failed",
    "errors": "Requests that ended with an error",
    "timeouts": "Requests whose deadline ran out",
    "crashes": "Tool processes that died unexpectedly",
    "restarts": "Instance restarts (automatic or requested)",
    "spawns_warm": "Requests served by a process that was already running",
    "spawns_cold": "Requests that waited for a process to start",
    "requests_rejected": "Requests refused because max_waiting was reached",
    "requests_cancelled": "Queued requests cancelled by their caller",
}
_HISTOGRAMS = {
    "queue_wait": "Seconds a request waited for a free instance",
    "response": "Seconds from sending a prompt to the end of its response",
}


class PoolCollector(Collector):
    """Exposes pools' figures under ``toolpool_*`` names, labelled by ``pool`` and ``tool``.

    ``PoolCollector(pool, name="default")`` for one pool, or
    ``PoolCollector({"batch": pool_a, "chat": pool_b})`` for several: one
    collector per registry, since each metric family may be registered once.
    """

    def __init__(self, pool: ToolProcessPool | Mapping[str, ToolProcessPool], name: str = "default") -> None:
        self.pools: dict[str, ToolProcessPool] = dict(pool) if isinstance(pool, Mapping) else {name: pool}
        if not self.pools:
            raise ValueError("PoolCollector needs at least one pool")

    def collect(self) -> Iterator[Metric]:
        labels = ["pool", "tool"]
        snapshots = [([name, pool.adapter.name], pool.metrics.lifetime(), pool.check_health())
                     for name, pool in self.pools.items()]
        counters = dict(_COUNTERS)
        counters.update({f"bytes_{way}": f"Bytes {direction} tools"
                         for way, direction in (("in", "written to"), ("out", "read from"))})
        for key, doc in counters.items():
            counter = CounterMetricFamily(f"toolpool_{key}", doc, labels=labels)
            for values, life, _ in snapshots:
                counter.add_metric(values, life["counters"][key])
            yield counter
        for key, doc in _HISTOGRAMS.items():
            histogram = HistogramMetricFamily(f"toolpool_{key}_seconds", doc, labels=labels)
            for values, life, _ in snapshots:
                hist = life["histograms"][key]
                buckets = [("+Inf" if bound == float("inf") else repr(bound), count)
                           for bound, count in hist["buckets"]]
                histogram.add_metric(values, buckets, hist["sum"])
            yield histogram
        instances = GaugeMetricFamily("toolpool_instances", "Instances by condition", labels=[*labels, "condition"])
        for values, _, health in snapshots:
            for condition in ("total", "alive", "idle", "busy", "starting", "backoff", "fatal"):
                instances.add_metric([*values, condition], health[condition])
        yield instances
        waiting = GaugeMetricFamily("toolpool_requests_waiting", "Requests queued for an instance", labels=labels)
        for values, _, health in snapshots:
            waiting.add_metric(values, health["waiting"])
        yield waiting
