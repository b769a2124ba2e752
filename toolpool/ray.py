"""The same pool over a Ray cluster: :class:`RayToolPool`.

One Ray actor per node (pinned there with ``NodeAffinitySchedulingStrategy``)
hosts a local :class:`~toolpool.ToolProcessPool` built from the adapter, which
is shipped to the node, so tools are looked up and started there.  This
driver-side object keeps what must be decided once for the whole cluster:

- one FIFO queue; each request goes to the actor with the most free
  instances (``max_waiting`` bounds the queue, ``PoolFull`` beyond it);
- deadlines: the queue phase is timed here, the answering phase by the node's
  pool as locally, and a backstop here fails a request whose node stopped
  answering altogether;
- leases: the node holds a local lease open across calls, by lease id; it is
  released by ``release()``, by garbage collection of the driver's lease, or
  (the actors belong to the driver's Ray job) by the driver's death;
- supervision: a lost actor fails its in-flight requests with
  :class:`NodeLost` naming the node (or retries them elsewhere with
  ``retry_on_crash``), queued requests go to the actors that remain, a new
  actor is started when Ray can place one, and with ``nodes=None`` the pool
  grows onto nodes that join.

Ray is imported only when a pool is made: ``pip install 'toolpool[ray]'``.
"""

from __future__ import annotations

import atexit
import collections
import concurrent.futures as cf
import functools
import importlib
import itertools
import logging
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from . import AcquireTimeout
from .adapters import Adapter, create_adapter
from .dispatch import ordered_results
from .errors import (
    InstanceUnavailable,
    PoolClosed,
    PoolFull,
    ResponseTimeout,
    ToolPoolError,
)
from .metrics import Stats
from .ray_node import NodeHost, Outcome, pack_adapter, unpack_error
from .response import Response

log = logging.getLogger("toolpool.ray")

#: Seconds a node may take beyond a request's own deadline (interrupt, grace,
#: the trip back) before the driver gives up on it.
BACKSTOP_GRACE = 15.0
#: Seconds between liveness checks of each actor (and looks for new nodes).
HEALTH_INTERVAL = 1.0
#: Seconds an actor may leave a liveness check unanswered before it counts as lost.
PING_TIMEOUT = 30.0
#: Longest wait before trying again to start an actor on a node that failed.
MAX_BACKOFF = 30.0


def _ray() -> Any:
    try:
        return importlib.import_module("ray")
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError("toolpool.ray needs Ray: pip install 'toolpool[ray]'") from exc


class NodeLost(InstanceUnavailable):
    """The node (or its actor) hosting the instance went away while a request was on it.

    ``node`` is the Ray node id, ``address`` its IP.  With ``retry_on_crash``
    the request is retried once on another node before this is raised.
    """

    def __init__(self, node: str, address: str, detail: str = "") -> None:
        self.node = node
        self.address = address
        super().__init__(f"node {node} ({address}) was lost while handling this request{detail}; resubmit it, "
                         "or create the pool with retry_on_crash=True for idempotent prompts")


@dataclass(eq=False)
class _Request:
    kind: str  # "run" or "lease"
    prompt: str | None
    timeout: float | None
    deadline: float | None  # time.monotonic()
    future: cf.Future[Any] = field(default_factory=cf.Future)
    created: float = field(default_factory=time.perf_counter)
    attempts: int = 0
    lease_id: str = ""
    slot: _Slot | None = None  # while in flight
    sent_at: float = 0.0
    abandoned: bool = False  # a lease nobody waits for any more
    started: bool = False  # its Future is running: sent once, no longer cancellable

    def remaining(self) -> float | None:
        return None if self.deadline is None else max(0.001, self.deadline - time.monotonic())


@dataclass(eq=False)
class _Slot:
    """One node's actor, and what the driver knows of it."""

    number: int
    node_id: str
    address: str
    handle: Any = None
    state: str = "starting"  # starting, ready, lost, failed, stopped
    generation: int = 0
    capacity: int = 0
    inflight: set[_Request] = field(default_factory=set)
    leases: set[str] = field(default_factory=set)
    health: dict[str, Any] = field(default_factory=dict)
    start_ref: Any = None
    started_at: float = 0.0
    ping_ref: Any = None
    ping_sent: float = 0.0
    failures: int = 0
    retry_at: float = 0.0
    last_error: str | None = None
    last_exc: BaseException | None = None  # the toolpool error behind last_error, if any

    def free(self) -> int:
        return self.capacity - len(self.inflight) - len(self.leases) if self.state == "ready" else 0

    def where(self) -> str:
        return f"node {self.node_id[:12]} ({self.address})"


class RayToolPool:
    """A pool of tool instances spread over the nodes of a Ray cluster.

    ``adapter``: an :class:`~toolpool.Adapter` (shipped to the nodes) or a
    registered name built there with ``adapter_options``.  ``count_per_node``:
    instances on each node.  ``nodes``: None for every alive node, growing
    onto nodes that join; or how many nodes to use.  ``pool_options``: other
    :class:`~toolpool.ToolProcessPool` options for each node's pool
    (``restart``, ``max_requests``, ``stuck_timeout``...).  ``actor_options``:
    Ray options for the actors (``num_cpus``, ``resources``, ``runtime_env``);
    by default they reserve no CPU, since the tools' work is not Ray tasks.

    Blocks until the actors started (each bounded by ``start_timeout`` plus
    Ray's placement); raises the first node's error if none did.
    """

    def __init__(self, adapter: Adapter | str, count_per_node: int = 4, nodes: int | None = None, *,
                 adapter_options: Mapping[str, Any] | None = None, max_waiting: int = 0,
                 retry_on_crash: bool = False, start_timeout: float | None = None,
                 interrupt_grace: float = 5.0, pool_options: Mapping[str, Any] | None = None,
                 actor_options: Mapping[str, Any] | None = None) -> None:
        if isinstance(count_per_node, bool) or not isinstance(count_per_node, int) or count_per_node < 1:
            raise ValueError(f"count_per_node must be a positive integer, got {count_per_node!r}")
        if nodes is not None and (isinstance(nodes, bool) or not isinstance(nodes, int) or nodes < 1):
            raise ValueError(f"nodes must be None (every alive node) or a positive integer, got {nodes!r}")
        if max_waiting < 0:
            raise ValueError(f"max_waiting must be >= 0 (0: unbounded), got {max_waiting!r}")
        self.ray = _ray()
        if not self.ray.is_initialized():
            raise ToolPoolError("Ray is not initialised: call ray.init(address='auto') (or ray.init() for a "
                                "local cluster) before creating a RayToolPool")
        if isinstance(adapter, str):
            self._spec: tuple[str, Any] = ("name", (adapter, dict(adapter_options or {})))
            self.adapter = create_adapter(adapter, **dict(adapter_options or {}))
        elif isinstance(adapter, Adapter):
            if adapter_options:
                raise ValueError("adapter_options are only for an adapter given by name")
            self._spec = ("pickle", pack_adapter(adapter))
            self.adapter = adapter
        else:
            raise TypeError(f"adapter must be an Adapter or a registered name, got {type(adapter).__name__}")
        self.count_per_node = count_per_node
        self.nodes = nodes
        self.max_waiting = max_waiting
        self.retry_on_crash = retry_on_crash
        self.interrupt_grace = interrupt_grace
        self.start_timeout = start_timeout if start_timeout is not None else self.adapter.start_timeout
        options = dict(pool_options or {})
        options.update(start_timeout=self.start_timeout, interrupt_grace=interrupt_grace,
                       retry_on_crash=retry_on_crash)
        self._pool_options = options
        self._actor_options = {"num_cpus": 0, **dict(actor_options or {})}
        self.created_at = time.time()

        self._cond = threading.Condition()
        self._queue: collections.deque[_Request] = collections.deque()
        self._slots: dict[str, _Slot] = {}  # node id -> slot
        self._numbers = itertools.count()
        self._done: collections.deque[tuple[_Slot, int, _Request, cf.Future[Any]]] = collections.deque()
        self._released: collections.deque[tuple[_Slot, str]] = collections.deque()  # leases dropped by GC
        # Ray calls must never be made holding self._cond (their callbacks take it): queued here.
        self._ray_work: collections.deque[Callable[[], Any]] = collections.deque()
        self._closed = False
        self._stats = Stats()
        self._extra = {"node_losses": 0, "retries": 0, "actor_starts": 0}

        self._supervise(first=True)
        self._wait_started()
        self._dispatcher = threading.Thread(target=self._dispatch_loop, name="toolpool-ray-dispatch", daemon=True)
        self._supervisor = threading.Thread(target=self._supervise_loop, name="toolpool-ray-supervise", daemon=True)
        self._dispatcher.start()
        self._supervisor.start()
        _live_pools.add(self)

    # ================================================================= requests
    def submit(self, prompt: str, timeout: float | None = None) -> cf.Future[Response]:
        """Queue ``prompt`` for the least-loaded node; a Future of its :class:`Response`.

        As :meth:`ToolProcessPool.submit`: ``timeout`` covers queueing and
        answering; the Future fails with ``ResponseTimeout`` (``phase``
        "queue" or "response"), the node pool's errors, or :class:`NodeLost`.
        Raises at once ``ValueError``/``TypeError`` for a prompt the adapter
        rejects, ``PoolFull``, ``PoolClosed``.
        """
        return self._submit(prompt, timeout, bounded=True)

    def _submit(self, prompt: str, timeout: float | None, bounded: bool) -> cf.Future[Response]:
        self.adapter.encode(prompt)  # rejects a bad prompt here, before it travels
        req = _Request("run", prompt, timeout, _deadline(timeout))
        self._enqueue(req, bounded)
        return req.future

    def _enqueue(self, req: _Request, bounded: bool) -> None:
        with self._cond:
            if self._closed:
                raise PoolClosed("the pool has been shut down")
            if bounded and self.max_waiting:
                waiting = sum(not r.future.cancelled() for r in self._queue)
                if waiting >= self.max_waiting:
                    self._stats.incr("requests_rejected")
                    raise PoolFull(f"{waiting} requests already wait (max_waiting={self.max_waiting}); retry later "
                                   "or raise max_waiting")
            self._queue.append(req)
            self._stats.incr("requests_queued")
            self._cond.notify_all()

    def map(self, prompts: Iterable[str], timeout: float | None = None, *,
            return_exceptions: bool = False) -> Iterator[Response]:
        """Submit every prompt now, then yield the responses in input order.

        As :meth:`ToolProcessPool.map`: ``max_waiting`` does not apply;
        closing the iterator early cancels the requests still queued.
        """
        futures = [self._submit(p, timeout, bounded=False) for p in prompts]
        return ordered_results(futures, return_exceptions)

    def lease(self, timeout: float | None = None) -> RayLease:
        """One instance of one node, exclusively, for several turns: ``with pool.lease() as lease:``.

        Waits in the same FIFO queue as :meth:`submit`, at most ``timeout``
        seconds (``AcquireTimeout``); ``PoolFull``, ``PoolClosed`` as locally.
        """
        req = _Request("lease", None, timeout, _deadline(timeout), lease_id=uuid.uuid4().hex)
        self._enqueue(req, bounded=True)
        try:
            slot, index = req.future.result(timeout)
        except cf.TimeoutError:
            with self._cond:
                queued = req in self._queue
                if queued:
                    self._queue.remove(req)
            if queued:
                raise AcquireTimeout(f"no instance became free for a lease within {timeout}s; raise the timeout "
                                     "or add instances") from None
            try:  # on its way: the node bounds the open by the same deadline
                slot, index = req.future.result(BACKSTOP_GRACE)
            except cf.TimeoutError:
                req.abandoned = True
                raise AcquireTimeout(f"no instance became free for a lease within {timeout}s") from None
        return RayLease(self, slot, req.lease_id, slot.number * self.count_per_node + index)

    def _release(self, slot: _Slot, lease_id: str, timeout: float) -> None:
        """Close a lease on its node and give its instance back to dispatch."""
        ref = None
        if slot.handle is not None and slot.state == "ready":
            ref = slot.handle.lease_close.remote(lease_id)
        if ref is not None and timeout > 0:
            try:
                self.ray.get(ref, timeout=timeout)
            except Exception as exc:  # noqa: BLE001 - the node is gone: its lease went with it
                log.debug("releasing lease %s on %s: %s", lease_id, slot.where(), exc)
        with self._cond:
            slot.leases.discard(lease_id)
            self._cond.notify_all()

    # ================================================================= dispatch
    def _dispatch_loop(self) -> None:
        while True:
            sends: list[tuple[_Slot, _Request]] = []
            resolve: list[tuple[_Request, Any, BaseException | None]] = []
            with self._cond:
                if self._closed and not self._has_inflight():
                    return
                self._take_completions(resolve)
                self._take_releases()
                self._expire(resolve)
                if not self._closed:
                    self._assign(sends, resolve)
                wait = self._next_wakeup() if not sends and not resolve and not self._done else 0.0
                if wait > 0:
                    self._cond.wait(wait)
            self._run_ray_work()
            for slot, req in sends:
                self._send(slot, req)
            for req, value, exc in resolve:
                _settle(req.future, value, exc)

    def _has_inflight(self) -> bool:
        return bool(self._done) or any(s.inflight for s in self._slots.values())

    def _next_wakeup(self) -> float:
        now = time.monotonic()
        horizon = now + 1.0  # leases dropped by garbage collection are seen within a second
        for req in self._queue:
            if req.deadline is not None:
                horizon = min(horizon, req.deadline)
        for slot in self._slots.values():
            for req in slot.inflight:
                if req.deadline is not None:
                    horizon = min(horizon, req.deadline + BACKSTOP_GRACE + self.interrupt_grace)
        return max(0.0, horizon - now)

    def _assign(self, sends: list[tuple[_Slot, _Request]],
                resolve: list[tuple[_Request, Any, BaseException | None]]) -> None:
        """FIFO: the head of the queue goes to the slot with the most free instances."""
        while self._queue:
            slot = max(self._slots.values(), key=lambda s: (s.free(), -s.number), default=None)
            if slot is None or slot.free() <= 0:
                if self._queue and not self._placeable():
                    for req in list(self._queue):
                        resolve.append((req, None, InstanceUnavailable(
                            "no node of the cluster can host this pool any more (every actor failed or was "
                            "lost): see get_status()['nodes'] for the errors")))
                    self._queue.clear()
                return
            req = self._queue.popleft()
            if not req.started:  # a retried request was started (and could not be cancelled) already
                if not req.future.set_running_or_notify_cancel():
                    self._stats.incr("requests_cancelled")
                    continue
                req.started = True
            req.slot, req.sent_at = slot, time.perf_counter()
            slot.inflight.add(req)
            if req.kind == "lease":
                slot.leases.add(req.lease_id)
            sends.append((slot, req))

    def _placeable(self) -> bool:
        """False once no slot is ready, starting or due for another start."""
        return any(s.state in ("ready", "starting", "lost", "failed") for s in self._slots.values())

    def _send(self, slot: _Slot, req: _Request) -> None:
        generation = slot.generation
        try:
            if req.kind == "run":
                ref = slot.handle.run.remote(req.prompt, req.remaining())
            else:
                ref = slot.handle.lease_open.remote(req.lease_id, req.remaining())
            fut = ref.future()
        except Exception as exc:  # noqa: BLE001 - the handle is dead already
            fut = cf.Future()
            fut.set_exception(exc)

        def done(f: cf.Future[Any]) -> None:  # on Ray's thread: hand over, nothing else
            with self._cond:
                self._done.append((slot, generation, req, f))
                self._cond.notify_all()
        fut.add_done_callback(done)

    def _take_completions(self, resolve: list[tuple[_Request, Any, BaseException | None]]) -> None:
        while self._done:
            slot, generation, req, fut = self._done.popleft()
            if req not in slot.inflight:
                continue  # already settled (backstop, node loss)
            slot.inflight.discard(req)
            exc = fut.exception()
            if exc is not None:
                if self._is_actor_death(exc):
                    if slot.generation == generation:
                        self._lose(slot, f"its actor died: {_first_line(exc)}", resolve)
                    self._after_loss(slot, req, resolve)
                    continue
                resolve.append((req, None, ToolPoolError(f"{slot.where()} failed the request: {exc}")))
                continue
            self._settle_outcome(slot, req, fut.result(), resolve)

    def _settle_outcome(self, slot: _Slot, req: _Request, outcome: Outcome,
                        resolve: list[tuple[_Request, Any, BaseException | None]]) -> None:
        status, value = outcome
        if req.kind == "lease":
            if status == "ok" and not req.abandoned:
                resolve.append((req, (slot, int(value)), None))
                return
            slot.leases.discard(req.lease_id)
            if status == "ok":  # taken after its caller gave up: give it straight back
                self._released.append((slot, req.lease_id))
                return
            resolve.append((req, None, unpack_error(value, slot.where())))
            return
        elapsed = time.perf_counter() - req.created
        if status == "ok":
            response: Response = value
            response.index = slot.number * self.count_per_node + response.index
            self._stats.record({"requests": 1}, {"queue_wait": req.sent_at - req.created, "response": elapsed})
            resolve.append((req, response, None))
            return
        exc = unpack_error(value, slot.where())
        self._stats.record({"requests": 1, "errors": 1, "timeouts": int(isinstance(exc, ResponseTimeout))})
        resolve.append((req, None, exc))

    def _is_actor_death(self, exc: BaseException) -> bool:
        exceptions = self.ray.exceptions
        deaths = tuple(getattr(exceptions, name) for name in ("RayActorError", "ActorUnschedulableError")
                       if hasattr(exceptions, name))  # the second is newer than some supported Ray versions
        return isinstance(exc, deaths)

    def _after_loss(self, slot: _Slot, req: _Request,
                    resolve: list[tuple[_Request, Any, BaseException | None]]) -> None:
        """A request whose node went away: retried elsewhere once, or failed naming the node."""
        if req.kind == "run" and self.retry_on_crash and req.attempts == 0 and not self._closed:
            req.attempts += 1
            req.slot = None
            self._extra["retries"] += 1
            self._queue.appendleft(req)  # first in line: it was sent before everything still queued
            return
        if req.kind == "lease":
            slot.leases.discard(req.lease_id)
        self._stats.record({"requests": int(req.kind == "run"), "errors": int(req.kind == "run")})
        resolve.append((req, None, NodeLost(slot.node_id, slot.address)))

    def _expire(self, resolve: list[tuple[_Request, Any, BaseException | None]]) -> None:
        now = time.monotonic()
        expired = [r for r in self._queue if r.deadline is not None and r.deadline <= now]
        for req in expired:
            self._queue.remove(req)
            if req.kind == "lease":
                resolve.append((req, None, AcquireTimeout(
                    f"no instance became free for a lease within {req.timeout}s; raise the timeout or add instances")))
                continue
            self._stats.record({"requests": 1, "errors": 1, "timeouts": 1})
            resolve.append((req, None, ResponseTimeout(
                f"no instance became free within {req.timeout}s (queued behind {len(self._queue)} more); raise "
                "the timeout or add instances", phase="queue")))
        for slot in self._slots.values():
            late = [r for r in slot.inflight
                    if r.deadline is not None and now > r.deadline + BACKSTOP_GRACE + self.interrupt_grace]
            for req in late:
                slot.inflight.discard(req)
                if req.kind == "lease":
                    slot.leases.discard(req.lease_id)
                self._stats.record({"requests": 1, "errors": 1, "timeouts": 1})
                resolve.append((req, None, ResponseTimeout(
                    f"{slot.where()} did not answer within {req.timeout}s, nor report back in the "
                    f"{BACKSTOP_GRACE + self.interrupt_grace:.0f}s after; it may be overloaded or cut off",
                    phase="response")))

    def _take_releases(self) -> None:
        while self._released:
            slot, lease_id = self._released.popleft()
            slot.leases.discard(lease_id)
            if slot.handle is not None and slot.state == "ready":
                close: Callable[[str], Any] = slot.handle.lease_close.remote
                self._ray_work.append(functools.partial(close, lease_id))  # fire and forget: nobody waits

    # ================================================================= supervision
    def _supervise_loop(self) -> None:
        while True:
            with self._cond:
                if self._closed:
                    return
                self._cond.wait(HEALTH_INTERVAL)
                if self._closed:
                    return
            try:
                self._supervise()
            except Exception:
                log.exception("supervising the Ray pool's actors failed; trying again")

    def _supervise(self, first: bool = False) -> None:
        ray = self.ray
        alive = {n["NodeID"]: n.get("NodeManagerAddress", "?") for n in ray.nodes() if n.get("Alive")}
        resolve: list[tuple[_Request, Any, BaseException | None]] = []
        to_start: list[_Slot] = []
        with self._cond:
            if self._closed:
                return
            for node_id, slot in list(self._slots.items()):
                if node_id not in alive and slot.state in ("ready", "starting"):
                    self._lose(slot, "its node left the cluster", resolve)
                if node_id not in alive and slot.state in ("lost", "failed") and not slot.inflight:
                    slot.state = "stopped"  # the node is gone for good: a returning node has a new id
            used = [s for s in self._slots.values() if s.state != "stopped"]
            for node_id, address in sorted(alive.items()):
                if self.nodes is not None and len(used) >= self.nodes:
                    break
                if node_id not in self._slots or self._slots[node_id].state == "stopped":
                    old = self._slots.get(node_id)
                    slot = _Slot(old.number if old else next(self._numbers), node_id, address)
                    self._slots[node_id] = slot
                    used.append(slot)
                    to_start.append(slot)
            now = time.monotonic()
            for slot in self._slots.values():
                if slot.state in ("lost", "failed") and slot.node_id in alive and now >= slot.retry_at:
                    to_start.append(slot)
                    slot.state = "starting"
            self._cond.notify_all()
        for slot in to_start:
            self._start_actor(slot)
        if not first:
            self._check_actors(resolve)
        self._run_ray_work()
        for req, value, exc in resolve:
            _settle(req.future, value, exc)

    def _start_actor(self, slot: _Slot) -> None:
        ray = self.ray
        strategy = importlib.import_module("ray.util.scheduling_strategies").NodeAffinitySchedulingStrategy
        concurrency = 3 * self.count_per_node + 8  # requests, lease turns, and status calls beside them
        host = _remote_host(ray).options(scheduling_strategy=strategy(slot.node_id, soft=False),
                                         max_concurrency=concurrency, max_restarts=0, **self._actor_options)
        handle = host.remote()
        start_ref = handle.start.remote(self._spec, self.count_per_node, self._pool_options)
        with self._cond:
            slot.generation += 1
            slot.state = "starting"
            slot.handle, slot.start_ref = handle, start_ref
            slot.started_at = time.monotonic()
            slot.ping_ref = None
            self._extra["actor_starts"] += 1
        log.info("starting %d instances on %s", self.count_per_node, slot.where())

    def _wait_started(self) -> None:
        """The constructor's wait: every first actor started, or the first error if none did."""
        refs = [s.start_ref for s in self._slots.values() if s.start_ref is not None]
        if not refs:
            raise ToolPoolError("the Ray cluster has no alive node to run the pool on")
        self.ray.wait(refs, num_returns=len(refs), timeout=self.start_timeout + PING_TIMEOUT)
        self._check_actors([])
        self._run_ray_work()
        with self._cond:
            ready = [s for s in self._slots.values() if s.state == "ready"]
            errors = [s for s in self._slots.values() if s.state != "ready"]
        if ready:
            for slot in errors:
                log.warning("%s did not start (%s); running on %d nodes and retrying it", slot.where(),
                            slot.last_error, len(ready))
            return
        first = errors[0]
        self._stop_actors(timeout=1.0)
        if first.last_exc is not None:
            raise first.last_exc
        raise ToolPoolError(f"no actor of the pool started: {first.last_error}")

    def _check_actors(self, resolve: list[tuple[_Request, Any, BaseException | None]]) -> None:
        """Collect start results and liveness answers; send the next liveness checks."""
        ray = self.ray
        now = time.monotonic()
        with self._cond:
            slots = list(self._slots.values())
        for slot in slots:
            if slot.state == "starting" and slot.start_ref is not None:
                ready, _ = ray.wait([slot.start_ref], timeout=0)
                if ready:
                    self._started(slot, ready[0], resolve)
                elif now - slot.started_at > self.start_timeout + PING_TIMEOUT:
                    self._failed(slot, f"its actor did not start within {self.start_timeout + PING_TIMEOUT:.0f}s "
                                       "(Ray could not place it, or the node is overloaded)", None)
            elif slot.state == "ready":
                if slot.ping_ref is None:
                    slot.ping_ref, slot.ping_sent = slot.handle.health.remote(), now
                    continue
                ready, _ = ray.wait([slot.ping_ref], timeout=0)
                if ready:
                    self._pinged(slot, ready[0], resolve)
                    slot.ping_ref, slot.ping_sent = slot.handle.health.remote(), now
                elif now - slot.ping_sent > PING_TIMEOUT:
                    with self._cond:
                        self._lose(slot, f"it left a liveness check unanswered for {PING_TIMEOUT:.0f}s", resolve)

    def _started(self, slot: _Slot, ref: Any, resolve: list[tuple[_Request, Any, BaseException | None]]) -> None:
        try:
            status, value = self.ray.get(ref, timeout=PING_TIMEOUT)
        except Exception as exc:  # noqa: BLE001 - any Ray failure here means the same
            self._failed(slot, f"its actor could not start: {_first_line(exc)}", exc)
            return
        if status != "ok":
            error = unpack_error(value, slot.where())
            self._failed(slot, str(error), error)
            return
        with self._cond:
            slot.state, slot.start_ref, slot.failures, slot.last_error = "ready", None, 0, None
            slot.last_exc = None
            slot.health = dict(value.get("health", {}))
            slot.capacity = int(slot.health.get("alive", self.count_per_node))
            self._cond.notify_all()
        log.info("%s ready with %d instances", slot.where(), slot.capacity)

    def _failed(self, slot: _Slot, why: str, exc: BaseException | None) -> None:
        with self._cond:
            slot.failures += 1
            slot.state, slot.start_ref, slot.last_error = "failed", None, why
            slot.last_exc = exc if isinstance(exc, (ToolPoolError, FileNotFoundError)) else None
            slot.retry_at = time.monotonic() + min(MAX_BACKOFF, 0.5 * 2 ** (slot.failures - 1))
            handle, slot.handle = slot.handle, None
            self._cond.notify_all()
        log.error("%s: %s; retrying in %.1fs", slot.where(), why, slot.retry_at - time.monotonic())
        if handle is not None:
            self._kill(handle)

    def _pinged(self, slot: _Slot, ref: Any, resolve: list[tuple[_Request, Any, BaseException | None]]) -> None:
        try:
            status, value = self.ray.get(ref, timeout=PING_TIMEOUT)
        except Exception as exc:  # noqa: BLE001 - any Ray failure here means the same
            with self._cond:
                self._lose(slot, f"its actor died: {_first_line(exc)}", resolve)
            return
        if status == "ok":
            with self._cond:
                slot.health = dict(value)
                slot.capacity = int(value.get("alive", slot.capacity))
                self._cond.notify_all()

    def _lose(self, slot: _Slot, why: str, resolve: list[tuple[_Request, Any, BaseException | None]]) -> None:
        """Under the lock: ``slot``'s actor is gone; fail (or retry) what it held, start again later."""
        if slot.state not in ("ready", "starting"):
            return
        log.error("%s lost: %s; %d requests in flight there", slot.where(), why, len(slot.inflight))
        self._extra["node_losses"] += 1
        slot.state, slot.last_error, slot.ping_ref, slot.start_ref = "lost", why, None, None
        slot.failures += 1
        slot.retry_at = time.monotonic() + min(MAX_BACKOFF, 0.5 * 2 ** (slot.failures - 1))
        handle, slot.handle = slot.handle, None
        for req in list(slot.inflight):
            slot.inflight.discard(req)
            self._after_loss(slot, req, resolve)
        slot.leases.clear()
        slot.health = {}
        slot.generation += 1  # late answers of the old actor are ignored
        self._cond.notify_all()
        if handle is not None:
            # Not here: ray.kill fails the actor's pending calls at once, and their callbacks
            # take this lock.  Killed by whichever thread next runs _ray_work().
            self._ray_work.append(lambda: self._kill(handle))

    def _run_ray_work(self) -> None:
        """Ray calls decided under the lock, made outside it."""
        while self._ray_work:
            try:
                work = self._ray_work.popleft()
            except IndexError:
                return
            work()

    def _kill(self, handle: Any) -> None:
        try:
            self.ray.kill(handle, no_restart=True)
        except Exception as exc:  # noqa: BLE001 - already dead, or the cluster went away
            log.debug("ray.kill: %s", exc)

    # ================================================================= health and status
    def check_health(self) -> dict[str, Any]:
        """Counts over every ready node's instances, as of their last liveness check (never blocks)."""
        with self._cond:
            healths = [s.health for s in self._slots.values() if s.state == "ready"]
            waiting = len(self._queue)
            closed = self._closed
            nodes = {state: sum(s.state == state for s in self._slots.values())
                     for state in ("ready", "starting", "lost", "failed")}
        health: dict[str, Any] = {key: sum(int(h.get(key, 0)) for h in healths)
                                  for key in ("total", "alive", "dead", "busy", "idle", "starting", "backoff", "fatal")}
        health.update(waiting=waiting, closed=closed, nodes=nodes)
        health["healthy"] = not closed and health["total"] > 0 and health["alive"] == health["total"] and not (
            nodes["lost"] or nodes["failed"])
        health["degraded"] = not closed and not health["healthy"] and health["alive"] > 0
        return health

    def stats(self) -> dict[str, Any]:
        """The driver's figures for queued requests (as :meth:`ToolProcessPool.stats`), plus
        ``node_losses``, ``retries`` and ``actor_starts``."""
        out = self._stats.snapshot()
        with self._cond:
            out.update(self._extra)
        return out

    def get_status(self, timeout: float = 10.0) -> dict[str, Any]:
        """A snapshot valid against ``pool_status.schema.json``; each instance carries its ``node``.

        Asks every ready node for its pool's status, waiting at most ``timeout``
        seconds; a node that does not answer in time is listed in ``nodes``
        with its error and without instances.
        """
        with self._cond:
            slots = sorted(self._slots.values(), key=lambda s: s.number)
            ready = [(s, s.handle) for s in slots if s.state == "ready" and s.handle is not None]
        asked = [(slot, handle.status.remote()) for slot, handle in ready]
        deadline = time.monotonic() + timeout
        instances: list[dict[str, Any]] = []
        adapter: dict[str, Any] | None = None
        answers: dict[int, str] = {}
        for slot, ref in asked:
            try:
                status, value = self.ray.get(ref, timeout=max(0.0, deadline - time.monotonic()))
            except Exception as exc:  # noqa: BLE001 - any Ray failure here means the same
                answers[slot.number] = f"no status: {_first_line(exc)}"
                continue
            if status != "ok":
                answers[slot.number] = f"no status: {value.get('message')}"
                continue
            adapter = adapter or value.get("adapter")
            for entry in value.get("instances", []):
                entry["node"] = slot.node_id
                entry["node_index"] = entry["index"]
                entry["index"] = slot.number * self.count_per_node + entry["index"]
                instances.append(entry)
        with self._cond:
            nodes = [{"node": s.node_id, "address": s.address, "state": s.state, "first_index":
                      s.number * self.count_per_node, "in_flight": len(s.inflight), "leases": len(s.leases),
                      "actor_starts": s.generation, "error": answers.get(s.number, s.last_error)} for s in slots]
        return {
            "schema_version": 1,
            "generated_at": time.time(),
            "created_at": self.created_at,
            "closed": self._closed,
            "adapter": adapter or {"name": self.adapter.name, "transport": self.adapter.transport, "command": []},
            "sizing": {"count_per_node": self.count_per_node, "nodes": self.nodes, "max_waiting": self.max_waiting,
                       "active": len(instances)},
            "health": self.check_health(),
            "stats": self.stats(),
            "nodes": nodes,
            "instances": sorted(instances, key=lambda e: e["index"]),
        }

    def dump_status(self, path: str) -> str:
        """Write :meth:`get_status` to ``path`` atomically, owner-only, secrets redacted."""
        from .status import dump_status, secret_values

        return dump_status(self.get_status(), path, secret_values(self.adapter.secret_env()))

    # ================================================================= shutdown
    @property
    def closed(self) -> bool:
        return self._closed

    def shutdown(self, timeout: float = 5.0) -> None:
        """Stop every node's pool and actor; every Future resolves.  Idempotent.

        Queued requests fail with ``PoolClosed``, running ones with the node
        pool's ``InstanceUnavailable`` (or ``PoolClosed`` if their node does
        not report back within ``timeout`` plus a few seconds).
        """
        with self._cond:
            if self._closed:
                return
            self._closed = True
            queued, self._queue = list(self._queue), collections.deque()
            self._cond.notify_all()
        _live_pools.discard(self)
        for req in queued:
            _settle(req.future, None, PoolClosed("the pool was shut down before this request reached a node"))
        self._stop_actors(timeout)
        with self._cond:  # whatever a node did not report back on
            leftovers = [r for s in self._slots.values() for r in s.inflight]
            for slot in self._slots.values():
                slot.inflight.clear()
                slot.leases.clear()
            self._cond.notify_all()
        for req in leftovers:
            _settle(req.future, None, PoolClosed("the pool was shut down before this request's node answered"))
        for thread in (getattr(self, "_dispatcher", None), getattr(self, "_supervisor", None)):
            if thread is not None and thread is not threading.current_thread():
                thread.join(timeout + 5.0)
                if thread.is_alive():
                    log.warning("%s did not stop within %.0fs", thread.name, timeout + 5.0)
        log.info("Ray pool shut down (%d nodes)", len(self._slots))

    close = shutdown

    def _stop_actors(self, timeout: float) -> None:
        with self._cond:
            slots = [s for s in self._slots.values() if s.handle is not None]
        refs = []
        for slot in slots:
            try:
                refs.append(slot.handle.shutdown.remote(timeout))
            except Exception as exc:  # noqa: BLE001 - any Ray failure here means the same
                log.debug("shutdown of %s: %s", slot.where(), exc)
        if refs:
            self.ray.wait(refs, num_returns=len(refs), timeout=timeout + 5.0)
        # The answers of requests the nodes failed at shutdown arrive now: let dispatch settle them.
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            with self._cond:
                if not self._has_inflight() or not getattr(self, "_dispatcher", None):
                    break
                self._cond.wait(0.05)
        for slot in slots:
            with self._cond:
                handle, slot.handle = slot.handle, None
                slot.state = "stopped"
            if handle is not None:
                self._kill(handle)
        self._run_ray_work()

    def __enter__(self) -> RayToolPool:  # noqa: PYI034 - Python 3.10 has no typing.Self
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        h = self.check_health()
        return f"<RayToolPool {self.adapter.name} nodes={h['nodes']['ready']} x{h['total']} busy={h['busy']}>"


class RayLease:
    """One instance of one node, held by ``with pool.lease() as lease:``.

    ``index`` is its index in :meth:`RayToolPool.get_status`; ``node`` its
    node's id.  ``ask``/``send``/``read``/``submit`` behave as on a local
    :class:`~toolpool.Lease`.  Released by ``release()`` (leaving the block),
    or, if forgotten, when this object is garbage-collected.
    """

    def __init__(self, pool: RayToolPool, slot: _Slot, lease_id: str, index: int) -> None:
        self._pool = pool
        self._slot = slot
        self._generation = slot.generation
        self.lease_id = lease_id
        self.index = index
        self.node = slot.node_id
        self._unread: collections.deque[cf.Future[Response]] = collections.deque()
        self._turns = itertools.count()  # the node sends turns in this order
        self._released = False
        # Forgotten without release(): the dispatch thread closes it on the node.
        self._finalizer = weakref.finalize(self, pool._released.append, (slot, lease_id))

    def _call(self, method: str, *args: Any) -> cf.Future[Any]:
        if self._released:
            raise ToolPoolError(f"this lease of instance {self.index} was released; take a new one")
        if self._pool.closed:
            raise PoolClosed("the pool has been shut down")
        slot = self._slot
        if slot.state != "ready" or slot.generation != self._generation or slot.handle is None:
            raise NodeLost(slot.node_id, slot.address, " (the lease was held there)")
        result: cf.Future[Any] = cf.Future()
        where = slot.where()

        def done(f: cf.Future[Any]) -> None:
            exc = f.exception()
            if exc is not None:
                lost = self._pool._is_actor_death(exc)
                _settle(result, None, NodeLost(slot.node_id, slot.address, " (the lease was held there)")
                        if lost else ToolPoolError(f"{where}: {exc}"))
                return
            status, value = f.result()
            if status == "ok":
                if isinstance(value, Response):
                    value.index = self.index
                _settle(result, value, None)
            else:
                _settle(result, None, unpack_error(value, where))
        getattr(slot.handle, method).remote(self.lease_id, *args).future().add_done_callback(done)
        return result

    def send(self, prompt: str) -> cf.Future[Response]:
        """Send ``prompt`` now; its response is also kept for :meth:`read`."""
        self._pool.adapter.encode(prompt)
        fut = self._call("lease_turn", next(self._turns), "send", prompt)
        self._unread.append(fut)
        return fut

    def read(self, timeout: float | None = None) -> Response:
        """The oldest response not yet returned by ``read()``/``ask()``; on ``ResponseTimeout`` it stays pending."""
        if not self._unread:
            raise ToolPoolError(f"no response is pending on leased instance {self.index}; send() a prompt first")
        fut = self._unread[0]
        try:
            response: Response = fut.result(timeout)
        except cf.TimeoutError:
            raise ResponseTimeout(f"no response from leased instance {self.index} on node {self.node[:12]} within "
                                  f"{timeout}s; it is still pending: read() again to keep waiting") from None
        finally:
            if fut.done():
                self._unread.popleft()
        return response

    def ask(self, prompt: str, timeout: float | None = None) -> Response:
        """``send()`` then ``read(timeout)``."""
        self.send(prompt)
        return self.read(timeout)

    def submit(self, prompt: str) -> cf.Future[Response]:
        """Queue ``prompt`` on the node; sent after every earlier one is answered.  Not kept for ``read()``."""
        self._pool.adapter.encode(prompt)
        return self._call("lease_turn", next(self._turns), "submit", prompt)

    def interrupt(self, timeout: float = 10.0) -> bool:
        """Ask the tool to cancel the running turn (False if idle)."""
        return bool(self._call("lease_interrupt").result(timeout))

    def status(self, timeout: float = 10.0) -> dict[str, Any]:
        """The instance's status entry on its node."""
        entry: dict[str, Any] = self._call("lease_status").result(timeout)
        entry.update(node=self.node, node_index=entry.get("index"), index=self.index)
        return entry

    def release(self, timeout: float = 10.0) -> None:
        """Give the instance back (a running turn is interrupted on the node).  Idempotent."""
        if self._released:
            return
        self._released = True
        self._finalizer.detach()
        self._pool._release(self._slot, self.lease_id, timeout)

    def __enter__(self) -> RayLease:  # noqa: PYI034 - Python 3.10 has no typing.Self
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


# ===================================================================== helpers
def _deadline(timeout: float | None) -> float | None:
    if timeout is not None and timeout < 0:
        raise ValueError(f"timeout must be >= 0 seconds or None, got {timeout!r}")
    return None if timeout is None else time.monotonic() + timeout


def _settle(fut: cf.Future[Any], value: Any, exc: BaseException | None) -> None:
    if fut.done():
        return
    if not fut.running() and not fut.set_running_or_notify_cancel():
        return
    try:
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(value)
    except cf.InvalidStateError:  # settled meanwhile by another path
        pass


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


_HOST_CLASS: dict[int, Any] = {}


def _remote_host(ray: Any) -> Any:
    """``NodeHost`` as a Ray actor class (made once: Ray exports a class per definition)."""
    if 0 not in _HOST_CLASS:
        _HOST_CLASS[0] = ray.remote(NodeHost)
    return _HOST_CLASS[0]


_live_pools: weakref.WeakSet[RayToolPool] = weakref.WeakSet()


@atexit.register
def _shutdown_forgotten_pools() -> None:
    for pool in list(_live_pools):
        try:
            pool.shutdown(timeout=2.0)
        except Exception:
            log.debug("shutting down a forgotten Ray pool at exit failed", exc_info=True)
