"""Prometheus metrics for a pool: ``REGISTRY.register(PoolCollector(pool))``.

Needs the optional extra: ``pip install 'toolpool[prometheus]'``.  The
collector reads the pool's lifetime figures at scrape time (monotonic
counters, latency histograms) and its current health (gauges), so it adds no
work to the request path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Dict, Iterator, Mapping, Union

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

    def __init__(self, pool: "Union[ToolProcessPool, Mapping[str, ToolProcessPool]]", name: str = "default") -> None:
        self.pools: Dict[str, "ToolProcessPool"] = dict(pool) if isinstance(pool, Mapping) else {name: pool}
        if not self.pools:
            raise ValueError("PoolCollector needs at least one pool")

    def collect(self) -> Iterator[Metric]:
        labels = ["pool", "tool"]
        snapshots = [([name, pool.adapter.name], pool.metrics.lifetime(), pool.check_health())
                     for name, pool in self.pools.items()]
        for key, doc in _COUNTERS.items():
            family = CounterMetricFamily(f"toolpool_{key}", doc, labels=labels)
            for values, life, _ in snapshots:
                family.add_metric(values, life["counters"][key])
            yield family
        for key, direction in (("bytes_in", "written to"), ("bytes_out", "read from")):
            family = CounterMetricFamily(f"toolpool_{key}", f"Bytes {direction} tools", labels=labels)
            for values, life, _ in snapshots:
                family.add_metric(values, life["counters"][key])
            yield family
        for key, doc in _HISTOGRAMS.items():
            family = HistogramMetricFamily(f"toolpool_{key}_seconds", doc, labels=labels)
            for values, life, _ in snapshots:
                hist = life["histograms"][key]
                buckets = [("+Inf" if bound == float("inf") else repr(bound), count)
                           for bound, count in hist["buckets"]]
                family.add_metric(values, buckets, hist["sum"])
            yield family
        family = GaugeMetricFamily("toolpool_instances", "Instances by condition", labels=labels + ["condition"])
        for values, _, health in snapshots:
            for condition in ("total", "alive", "idle", "busy", "starting", "backoff", "fatal"):
                family.add_metric(values + [condition], health[condition])
        yield family
        waiting = GaugeMetricFamily("toolpool_requests_waiting", "Requests queued for an instance", labels=labels)
        for values, _, health in snapshots:
            waiting.add_metric(values, health["waiting"])
        yield waiting
