"""ToolProcessPool: N supervised tool instances behind one thread-safe object.

Who may use an instance is decided under ``self._lock`` and recorded in
``self._owner``: None (free for dispatch), "dispatch" (running a submitted
request), "lease" (held by a ``with pool.lease()`` block), "index" (addressed
by ``send_prompt(i)``), "maint" (being recycled or probed).  Everything slow
(writing, spawning, stopping) happens outside the lock: spawns on the pool's
executor, timed work on its scheduler thread.
"""

from __future__ import annotations

import atexit
import collections
import concurrent.futures as cf
import contextlib
import logging
import random
import threading
import time
import weakref
from typing import (Any, Callable, Deque, Dict, Iterable, Iterator, List, Mapping, Optional, Union)

from .adapters import Adapter, create_adapter
from .adapters.base import EventCallback
from .dispatch import Lease, MessageQueue, Request
from .errors import (InstanceBusy, InstanceCrashed, InstanceUnavailable, PoolClosed, PoolFull, ResponseTimeout,
                     ResponseTooLarge, ToolNotFoundError, ToolPoolError)
from .instance import Instance
from .metrics import Stats
from .response import Response, Timings
from .scheduler import Scheduler
from .states import LIVE_STATES, State
from .streams import StreamReader
from .supervision import FailureLog, RestartPolicy

log = logging.getLogger("toolpool.pool")

STATUS_SCHEMA_VERSION = 1
PoolListener = Callable[[str, Dict[str, Any]], None]

_live_pools: "weakref.WeakSet[ToolProcessPool]" = weakref.WeakSet()
_background_shutdowns: List[threading.Thread] = []


@atexit.register
def _shutdown_forgotten_pools() -> None:
    """A pool the program forgot to shut down is cleaned up at interpreter exit."""
    for pool in list(_live_pools):
        try:
            pool.shutdown(timeout=2.0)
        except Exception:  # pragma: no cover - best effort at exit
            pass
    for thread in list(_background_shutdowns):
        thread.join(30.0)


def _on_pool_thread() -> bool:
    """True on a toolpool reader, scheduler or spawn thread (where callbacks run)."""
    current = threading.current_thread()
    return isinstance(current, StreamReader) or current.name.startswith(("toolpool-scheduler", "toolpool-spawn"))


class AcquireTimeout(ToolPoolError, TimeoutError):
    """No instance became free for a lease within its timeout."""


class ToolProcessPool:
    """A pool of long-lived tool processes.

    ``adapter``: an :class:`~toolpool.adapters.Adapter`, or a registered name
    (``"demo"``, ``"claude"``, ``"aider"``, ``"command"``) built with
    ``adapter_options``.  ``count``: a fixed number of instances; or
    ``min_size``/``max_size`` for an elastic pool that grows one instance at a
    time while requests wait and shrinks instances idle for ``max_idle``
    seconds.

    The constructor starts ``count`` (or ``min_size``) instances in parallel
    and returns when they are ready.  If every one fails it raises the
    failure (:class:`SpawnError` with exit code and stderr tail, or
    :class:`ToolNotFoundError`) after cleaning up; if only some fail, the
    pool runs degraded while supervision retries them (see ``restart``).

    Dispatch: :meth:`submit` / :meth:`map` hand prompts to idle instances in
    FIFO order; :meth:`lease` gives one instance to one caller; the by-index
    calls (:meth:`send_prompt`, :meth:`read_response`, :meth:`ask`) address
    an instance directly.  An instance serves one of these at a time, and a
    collision raises :class:`InstanceBusy` saying which.

    Other options: ``max_waiting`` (0 = unbounded) queued requests before
    :class:`PoolFull`; ``max_requests`` per process and a jittered
    ``max_lifetime`` (seconds) before an idle instance is recycled;
    ``restart``: a :class:`RestartPolicy` (or False) for dead instances;
    ``retry_on_crash``: retry a request once on another instance if its
    instance died (only for idempotent prompts); ``stuck_timeout``: recycle
    an instance that is BUSY with no output for this long;
    ``health_check_interval``: probe idle instances this often with the
    adapter's liveness probe; ``on_event``: called as ``on_event(name, info)``
    for spawned, ready, exited, restarting, fatal, start_failed, stopped.
    """

    def __init__(self, adapter: Union[Adapter, str], count: Optional[int] = None, *,
                 min_size: Optional[int] = None, max_size: Optional[int] = None,
                 adapter_options: Optional[Mapping[str, Any]] = None, start_timeout: Optional[float] = None,
                 max_waiting: int = 0, max_idle: Optional[float] = None, max_requests: Optional[int] = None,
                 max_lifetime: Optional[float] = None, restart: Union[RestartPolicy, bool] = True,
                 retry_on_crash: bool = False, stuck_timeout: Optional[float] = None,
                 health_check_interval: Optional[float] = None, interrupt_grace: float = 5.0,
                 on_event: Optional[PoolListener] = None) -> None:
        self.min_size, self.max_size = _sizes(count, min_size, max_size)
        for name, value in (("max_idle", max_idle), ("max_lifetime", max_lifetime),
                            ("stuck_timeout", stuck_timeout), ("health_check_interval", health_check_interval)):
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be a positive number of seconds or None, got {value!r}")
        if max_requests is not None and max_requests < 1:
            raise ValueError(f"max_requests must be >= 1 or None, got {max_requests!r}")
        if max_waiting < 0:
            raise ValueError(f"max_waiting must be >= 0 (0 = unbounded), got {max_waiting!r}")
        if isinstance(adapter, str):
            adapter = create_adapter(adapter, **dict(adapter_options or {}))
        elif adapter_options:
            raise ValueError("adapter_options only applies when adapter is given by name")
        if not isinstance(adapter, Adapter):
            raise TypeError(f"adapter must be an Adapter or a registered name, got {type(adapter).__name__}")
        adapter.attach()  # detached (and closed, when last) at shutdown
        self.adapter = adapter
        self.start_timeout = start_timeout
        self.max_waiting = max_waiting
        self.max_idle = max_idle
        self.max_requests = max_requests
        self.max_lifetime = max_lifetime
        self.policy = restart if isinstance(restart, RestartPolicy) else RestartPolicy(enabled=bool(restart))
        self.retry_on_crash = retry_on_crash
        self.stuck_timeout = stuck_timeout
        self.health_check_interval = health_check_interval
        self.interrupt_grace = interrupt_grace
        self.created_at = time.time()
        self._listeners: List[PoolListener] = [on_event] if on_event else []
        self._stats = Stats()
        self._failures = FailureLog(self.policy)
        self._lock = threading.Lock()
        self._closed = False
        self._waiting: Deque[Request] = collections.deque()
        self._slots: List[Instance] = [Instance(adapter, i, self._on_instance_event) for i in range(self.max_size)]
        self._active = [i < self.min_size for i in range(self.max_size)]
        self._owner: List[Optional[str]] = [None] * self.max_size
        self._recycle_due = [False] * self.max_size
        self._queues: Dict[int, MessageQueue] = {}
        self._growing = False
        self._leases: "weakref.WeakSet[Lease]" = weakref.WeakSet()
        self._background_shutdown: Optional[threading.Thread] = None
        self._scheduler = Scheduler()
        self._executor = cf.ThreadPoolExecutor(max_workers=self.max_size, thread_name_prefix="toolpool-spawn")
        _live_pools.add(self)
        try:
            self._start_initial()
        except BaseException:
            self.shutdown(timeout=2.0)
            raise
        if self.stuck_timeout or self.health_check_interval:
            self._scheduler.call_later(self._check_period(), self._health_tick)

    # ------------------------------------------------------------- start-up
    def _start_initial(self) -> None:
        """Start the first instances in parallel; raise only if all fail."""
        first = self._slots[: self.min_size]
        futures = [self._executor.submit(inst.start, self.start_timeout) for inst in first]
        errors = [f.exception() for f in futures]
        failed = [(inst, e) for inst, e in zip(first, errors) if e is not None]
        if len(failed) == len(first):
            raise failed[0][1]  # type: ignore[misc]
        for inst, exc in failed:
            if isinstance(exc, ToolNotFoundError):
                raise exc
            log.warning("pool degraded: instance %d failed to start: %s", inst.index, exc)
            self._supervise(inst, ran_for=None)

    # ---------------------------------------------------------------- events
    def subscribe(self, listener: PoolListener) -> None:
        """Call ``listener(event, info)`` on lifecycle events (see class docs)."""
        self._listeners.append(listener)

    def _notify(self, event: str, info: Dict[str, Any]) -> None:
        for listener in list(self._listeners):
            try:
                listener(event, info)
            except Exception:
                log.exception("pool event listener failed on %s", event)

    def _on_instance_event(self, inst: Instance, event: str, info: Dict[str, Any]) -> None:
        """From instances (reader threads, spawn threads): never blocks."""
        info = dict(info, index=inst.index)
        self._notify(event, info)  # first: subscribers see causes before effects
        if event == "exited" and not self._closed:
            if info.get("crashed"):
                self._stats.incr("crashes")
            ran_for = None if inst.ready_at is None else time.perf_counter() - inst.ready_at
            if not info.get("crashed") and self.adapter.oneshot:
                self._respawn_soon(inst, delay=0.0, count_restart=False)  # keep a warm process
            else:
                self._supervise(inst, ran_for)
        elif event == "ready":
            self._after_ready(inst)

    # ----------------------------------------------------------- supervision
    def _supervise(self, inst: Instance, ran_for: Optional[float]) -> None:
        """A process died or failed to start: back off and restart, or give up."""
        with self._lock:
            if self._closed or not self._active[inst.index] or inst.state is not State.EXITED:
                return  # already handled (each failure is recorded once)
            if self._owner[inst.index] == "dispatch":
                self._owner[inst.index] = None
        attempt = self._failures.record(inst.index, ran_for)
        if attempt is None:
            if not self.policy.enabled:
                inst.release_waiters()  # it will not become idle by itself
                self._fail_waiters_if_hopeless()
                return
            if not inst.set_supervised_state(State.FATAL):
                return
            log.error("instance %d is FATAL: %d failures within %ss (last exit code %s)", inst.index,
                      self.policy.limit + 1, self.policy.window, inst.last_exit_code,
                      extra={"instance": inst.index, "exit_code": inst.last_exit_code})
            self._notify("fatal", {"index": inst.index, "exit_code": inst.last_exit_code,
                                   "stderr_tail": inst.stderr.text()})
            inst.release_waiters()
            self._fail_waiters_if_hopeless()
            return
        if not inst.set_supervised_state(State.BACKOFF):
            return
        delay = self.policy.backoff(attempt)
        log.info("instance %d restarting in %.2fs (attempt %d)", inst.index, delay, attempt,
                 extra={"instance": inst.index, "attempt": attempt, "delay": delay})
        self._notify("restarting", {"index": inst.index, "attempt": attempt, "delay": delay})
        self._respawn_soon(inst, delay, count_restart=True)

    def _respawn_soon(self, inst: Instance, delay: float, count_restart: bool) -> None:
        def submit() -> None:
            try:
                if not self._closed:
                    self._executor.submit(self._respawn, inst, count_restart)
            except RuntimeError:  # the executor shut down: the pool is closing
                pass

        if delay <= 0:
            submit()
        else:
            self._scheduler.call_later(delay, submit)

    def _respawn(self, inst: Instance, count_restart: bool) -> None:
        if self._closed or inst.state not in (State.BACKOFF, State.EXITED):
            return  # restarted by other means meanwhile (restart_instance)
        if count_restart:
            inst.restarts += 1
            self._stats.incr("restarts")
        try:
            inst.start(self.start_timeout)
        except ToolPoolError as exc:
            if not self._closed and inst.state is State.EXITED:
                log.warning("instance %d restart failed: %s", inst.index, exc)
                self._supervise(inst, ran_for=None)

    def _after_ready(self, inst: Instance) -> None:
        with self._lock:
            self._failures_reset_later(inst)
            self._recycle_due[inst.index] = False
            if self._owner[inst.index] == "maint":
                self._owner[inst.index] = None
            self._growing = False
        if self.max_lifetime:
            lifetime = self.max_lifetime * random.uniform(0.9, 1.0)  # jitter: no synchronized recycling
            generation = inst.generation
            self._scheduler.call_later(lifetime, lambda: self._lifetime_up(inst, generation))
        self._dispatch()

    def _failures_reset_later(self, inst: Instance) -> None:
        """Lock held.  A process that stays up ``stable_after`` seconds earns a fresh budget."""
        generation = inst.generation
        self._scheduler.call_later(self.policy.stable_after, lambda: (
            self._failures.reset(inst.index) if inst.generation == generation and inst.alive else None))

    def _hopeless(self) -> bool:
        """Lock held.  True when no instance can ever take a request without a caller's restart."""
        if self._growing or not all(self._active):
            return False  # an elastic pool can still start one
        for inst in self._slots:
            state = inst.state
            if state is State.FATAL or state is State.STOPPED:
                continue
            if state is State.EXITED and not self.policy.enabled:
                continue
            return False
        return True

    def _fail_waiters_if_hopeless(self) -> None:
        """If no instance can ever serve again, fail queued requests instead of hanging."""
        with self._lock:
            if not self._waiting or not self._hopeless():
                return
            waiting, self._waiting = list(self._waiting), collections.deque()
        states = ", ".join(sorted({inst.state.value for inst in self._slots}))
        for req in waiting:
            self._complete(req, exc=InstanceUnavailable(
                f"no instance of the pool can take requests (states: {states}); see get_status() for exit codes "
                "and stderr, then restart_instance() after fixing the cause"))

    # ------------------------------------------------------------- recycling
    def _lifetime_up(self, inst: Instance, generation: int) -> None:
        if inst.generation != generation or self._closed:
            return
        with self._lock:
            self._recycle_due[inst.index] = True
        self._maybe_recycle(inst)

    def _maybe_recycle(self, inst: Instance) -> bool:
        """Recycle ``inst`` now if it is due and free; True if it was taken for it."""
        if not self._recycle_due[inst.index]:  # the common case, without the lock; rechecked below
            return False
        with self._lock:
            i = inst.index
            if not (self._recycle_due[i] and self._owner[i] is None and inst.state is State.IDLE) or self._closed:
                return False
            self._owner[i] = "maint"
            self._recycle_due[i] = False
        log.info("recycling instance %d (%d requests served)", i, inst.served, extra={"instance": i})
        self._executor.submit(self._recycle, inst)
        return True

    def _recycle(self, inst: Instance) -> None:
        try:
            inst.restart(self.start_timeout)
        except ToolPoolError as exc:
            log.warning("recycling instance %d failed: %s", inst.index, exc)
            with self._lock:
                self._owner[inst.index] = None
            if inst.state is State.EXITED:
                self._supervise(inst, ran_for=None)

    def _check_period(self) -> float:
        periods = [p for p in (self.health_check_interval, self.stuck_timeout and self.stuck_timeout / 4) if p]
        return max(0.05, min(periods))

    def _health_tick(self) -> None:
        """Periodic only when stuck_timeout or health_check_interval is set."""
        if self._closed:
            return
        now = time.monotonic()
        for inst in self._slots:
            if self.stuck_timeout and inst.state is State.BUSY and now - inst.last_output_at > self.stuck_timeout:
                log.warning("instance %d stuck: busy with no output for %.1fs; recycling", inst.index,
                            now - inst.last_output_at, extra={"instance": inst.index})
                self._executor.submit(self._force_restart, inst, "stuck: no output while busy")
        if self.health_check_interval:
            for inst in self._slots:
                with self._lock:
                    if self._owner[inst.index] is not None or inst.state is not State.IDLE:
                        continue
                    self._owner[inst.index] = "maint"
                self._executor.submit(self._probe, inst)
        self._scheduler.call_later(self._check_period(), self._health_tick)

    def _probe(self, inst: Instance) -> None:
        ok = inst.probe(timeout=max(1.0, self.health_check_interval or 1.0))
        if not ok and not self._closed:
            log.warning("instance %d failed its liveness probe; recycling", inst.index)
            self._force_restart(inst, "failed liveness probe")
            return
        with self._lock:
            if self._owner[inst.index] == "maint":
                self._owner[inst.index] = None
        self._dispatch()

    def _force_restart(self, inst: Instance, why: str) -> None:
        with self._lock:
            if self._closed:
                return
            # A lease or by-index caller keeps its instance across the restart.
            took = self._owner[inst.index] in (None, "dispatch")
            if took:
                self._owner[inst.index] = "maint"
        self._stats.incr("restarts")
        try:
            inst.restart(self.start_timeout, why=why)
        except ToolPoolError:
            if inst.state is State.EXITED:
                self._supervise(inst, ran_for=None)
        finally:
            with self._lock:
                if took and self._owner[inst.index] == "maint":
                    self._owner[inst.index] = None
            self._dispatch()

    # -------------------------------------------------------------- dispatch
    def submit(self, prompt: str, timeout: Optional[float] = None, *, on_event: Optional[EventCallback] = None,
               instance: Optional[int] = None) -> "cf.Future[Response]":
        """Queue ``prompt`` for the next idle instance; return a Future[Response].

        Requests are served in FIFO order.  ``timeout`` covers waiting plus
        answering; when it runs out the future fails with
        :class:`ResponseTimeout` whose ``phase`` is "queue" or "response"
        (a running turn is then interrupted).  The future can be cancelled
        while queued.  Raises at once: ValueError for a prompt the adapter
        rejects, :class:`PoolFull` past ``max_waiting``, :class:`PoolClosed`.
        ``instance=i`` queues the prompt for that instance only, sent after
        its earlier prompts are answered.
        """
        if instance is not None:
            return self._queue_for(instance).submit(prompt, on_event, timeout)
        return self._enqueue(Request("prompt", prompt, self.adapter.encode(prompt), timeout, on_event,
                                     retries=1 if self.retry_on_crash else 0))

    def map(self, prompts: Iterable[str], timeout: Optional[float] = None, *,
            return_exceptions: bool = False) -> Iterator[Response]:
        """Submit every prompt now; yield their responses in input order.

        ``timeout`` applies to each prompt.  An error is raised when its
        position is reached (or yielded, with ``return_exceptions=True``);
        the remaining futures are cancelled when the iterator is closed early.
        ``max_waiting`` does not apply to map, which queues the whole batch.
        """
        batch = [(p, self.adapter.encode(p)) for p in prompts]  # reject bad input before queueing any
        futures = [self._enqueue(Request("prompt", p, data, timeout, retries=1 if self.retry_on_crash else 0),
                                 bounded=False) for p, data in batch]

        def results() -> Iterator[Response]:
            try:
                for fut in futures:
                    try:
                        yield fut.result()
                    except Exception as exc:
                        if not return_exceptions:
                            raise
                        yield exc  # type: ignore[misc]
            finally:
                for fut in futures:
                    fut.cancel()

        return results()

    @contextlib.contextmanager
    def lease(self, timeout: Optional[float] = None) -> Iterator[Lease]:
        """Hold one instance exclusively for several turns.

        Waits in the same FIFO queue as :meth:`submit`, at most ``timeout``
        seconds (:class:`AcquireTimeout`).  Released when the block ends, also
        on an exception; a turn still running then is interrupted.
        """
        req = Request("lease", None, None, None)
        self._enqueue(req, bounded=True)
        try:
            inst = req.future.result(timeout)
        except cf.TimeoutError:
            with self._lock:
                queued = req in self._waiting
                if queued:
                    self._waiting.remove(req)
            if queued:
                raise AcquireTimeout(f"no instance became free for a lease within {timeout}s "
                                     f"({self.check_health()['busy']} busy); raise the timeout or max_size") from None
            inst = req.future.result()  # handed over just as the timeout ran out: use it
        lease = Lease(self, inst)
        self._leases.add(lease)
        try:
            yield lease
        finally:
            lease.release()

    def _release_lease(self, lease: Lease) -> None:
        inst = lease.instance
        if inst.state is State.BUSY:
            self._interrupt_or_recycle(inst)  # a tool that ignores the interrupt is restarted
        inst.discard_unread()  # the holder is gone; nobody will read these
        with self._lock:
            if self._owner[inst.index] == "lease":
                self._owner[inst.index] = None
        if not self._maybe_recycle(inst):
            inst.when_idle(self._dispatch)

    def _enqueue(self, req: Request, bounded: bool = True) -> cf.Future:
        with self._lock:
            if self._closed:
                raise PoolClosed("the pool has been shut down")
            if bounded and self.max_waiting and len(self._waiting) >= self.max_waiting:
                self._stats.incr("requests_rejected")
                raise PoolFull(f"{len(self._waiting)} requests already wait for an instance (max_waiting="
                               f"{self.max_waiting}); retry later, or raise max_waiting or the pool size")
            self._waiting.append(req)
            self._stats.incr("requests_queued")
        if req.deadline is not None:
            req.timer = self._scheduler.call_at(req.deadline, lambda: self._expire(req))
        req.future.add_done_callback(lambda f: self._on_request_done(req))
        self._dispatch()
        return req.future

    def _on_request_done(self, req: Request) -> None:
        if req.future.cancelled():
            self._stats.incr("requests_cancelled")
            with self._lock:
                if req in self._waiting:
                    self._waiting.remove(req)
        if req.timer is not None:
            req.timer.cancel()

    def _free_instance(self) -> Optional[Instance]:
        """Lock held.  The lowest-numbered idle instance nobody owns."""
        for i, inst in enumerate(self._slots):
            if self._active[i] and self._owner[i] is None and inst.state is State.IDLE and not self._recycle_due[i]:
                return inst
        return None

    def _dispatch(self) -> None:
        """Hand waiting requests to free instances.  Decide under the lock, send outside it."""
        while True:
            with self._lock:
                if self._closed or not self._waiting:
                    return
                inst = self._free_instance()
                if inst is None:
                    grow = self._grow_slot()
                    hopeless = grow is None and self._hopeless()
                    break
                req = self._waiting.popleft()
                if not req.running:
                    if not req.future.set_running_or_notify_cancel():
                        continue  # cancelled while queued
                    req.running = True
                self._owner[inst.index] = "dispatch" if req.kind == "prompt" else "lease"
                req.instance = inst
            if req.kind == "lease":
                if req.timer is not None:
                    req.timer.cancel()
                req.future.set_result(inst)
            else:
                self._run(req, inst)
        if grow is not None:
            self._executor.submit(self._grow, grow)
        elif hopeless:
            self._fail_waiters_if_hopeless()

    def _run(self, req: Request, inst: Instance) -> None:
        now = time.perf_counter()
        waited = now - req.created
        # A process that became ready after the request arrived was started for
        # it (or for its turn in the queue): that wait is spawn time, not queueing.
        cold = inst.ready_at is not None and inst.ready_at > req.created
        spawn = max(0.0, inst.ready_at - max(req.created, inst.spawn_started_at or req.created)) if cold else 0.0
        timings = Timings(queued=max(0.0, waited - spawn), acquire=waited, spawn=spawn, warm=not cold)
        try:
            fut = inst.send(req.prompt or "", on_event=req.on_event, timings=timings, data=req.data, unread=False)
        except (InstanceBusy, InstanceUnavailable):
            # Lost a race with a crash or a by-index caller: back to the head of the queue.
            with self._lock:
                if self._owner[inst.index] == "dispatch":
                    self._owner[inst.index] = None
                closed = self._closed
                if not closed:
                    self._waiting.appendleft(req)
            if closed:
                self._complete(req, exc=PoolClosed("the pool was shut down before this request was sent"))
            elif inst.state is State.BUSY:
                inst.when_idle(self._dispatch)
            return
        except Exception as exc:
            with self._lock:
                self._owner[inst.index] = None
            self._complete(req, exc=exc)
            self._dispatch()
            return
        self._stats.record({"bytes_in": len(req.data or b""), "spawns_cold" if cold else "spawns_warm": 1},
                           {"queue_wait": timings.queued})
        if log.isEnabledFor(logging.DEBUG):
            log.debug("request dispatched to instance %d: acquire %.6fs (%s, spawn %.6fs)", inst.index, waited,
                      "cold" if cold else "warm", spawn,
                      extra={"instance": inst.index, "acquire": waited, "warm": not cold, "spawn": spawn})
        fut.add_done_callback(lambda f: self._finished(req, inst, f))

    def _finished(self, req: Request, inst: Instance, fut: cf.Future) -> None:
        exc = fut.exception()
        with self._lock:
            retry = (isinstance(exc, InstanceCrashed) and req.retries > 0 and not req.future.done()
                     and not self._closed)  # decided under the lock: shutdown drains _waiting under it
            if self._owner[inst.index] == "dispatch":
                self._owner[inst.index] = None
            if self.max_requests and inst.served >= self.max_requests:
                self._recycle_due[inst.index] = True
            if retry:
                req.retries -= 1
                self._waiting.appendleft(req)
        if retry:
            log.info("retrying a request from crashed instance %d on another instance", inst.index)
        else:
            self._complete(req, None if exc else fut.result(), exc)
        if inst.state is State.BUSY:  # still draining a failed response
            if isinstance(exc, ResponseTooLarge):
                self._interrupt_or_recycle(inst)  # the rest may never end: cut it short
            inst.when_idle(self._dispatch)
        if not self._maybe_recycle(inst) and self._waiting:
            self._dispatch()  # unlocked peek: a request queued after the release dispatches itself
        if self.max_idle and inst.state is State.IDLE:
            since = inst.state_since
            self._scheduler.call_later(self.max_idle, lambda: self._idle_check(inst, since))

    def _complete(self, req: Request, result: Optional[Response] = None,
                  exc: Optional[BaseException] = None) -> bool:
        """End a request: count it, then resolve the caller's future (first outcome wins).

        Counting first means that a caller who sees the result also sees it
        in :meth:`stats`.
        """
        with self._lock:
            if req.future.done() or req._completed:
                return False
            req._completed = True
        if exc is not None:
            self._stats.record({"requests": 1, "errors": 1, "timeouts": int(isinstance(exc, ResponseTimeout))})
        elif result is not None:
            self._stats.record({"requests": 1, "bytes_out": len(result.raw)}, {"response": result.elapsed})
        else:
            self._stats.record({"requests": 1})
        try:
            if exc is not None:
                req.future.set_exception(exc)
            else:
                req.future.set_result(result)
        except cf.InvalidStateError:  # cancelled meanwhile
            return False
        return True

    def _expire(self, req: Request) -> None:
        """A request's deadline passed (scheduler thread)."""
        with self._lock:
            queued = req in self._waiting
            if queued:
                self._waiting.remove(req)
            inst = req.instance
        if req.future.done():
            return
        # Which request the instance is on now: resolving the future below runs callbacks
        # that may dispatch the next one, which the interrupt must not hit.
        on_request = inst.requests if inst is not None else 0
        if queued or inst is None:
            err = ResponseTimeout(f"no instance became free within {req.timeout}s (request still queued): "
                                  f"{self._who_holds()}", phase="queue")
        else:
            partial = inst.partial_output()
            err = ResponseTimeout(f"instance {inst.index} gave no complete response within {req.timeout}s "
                                  "(including queueing); the turn was interrupted", partial, phase="response")
        if self._complete(req, exc=err):
            log.info("request timed out in %s after %ss", err.phase, req.timeout,
                     extra={"phase": err.phase, "timeout": req.timeout})
        if inst is not None and not queued:
            self._interrupt_or_recycle(inst, on_request)

    def _who_holds(self) -> str:
        """Why no instance is free, for error messages."""
        with self._lock:
            owners = list(self._owner)
            active = list(self._active)
        parts = []
        for i, inst in enumerate(self._slots):
            if not active[i]:
                continue
            owner = owners[i]
            if owner == "index":
                what = f"held by a by-index caller (read_response({i}) releases it)"
            elif owner == "lease":
                what = "leased"
            elif owner == "dispatch":
                what = "answering a submitted request"
            elif owner == "maint":
                what = "being recycled or health-checked"
            else:
                what = inst.state.value
            parts.append(f"instance {i} {what}")
        return "; ".join(parts) or "no active instances"

    def _interrupt_or_recycle(self, inst: Instance, requests: Optional[int] = None) -> None:
        """Free an instance whose request timed out: interrupt, then restart if still stuck.

        ``requests``: the instance's request count when that request was on it; nothing
        is done once it has moved on to another.
        """
        generation = inst.generation
        requests = inst.requests if requests is None else requests
        if not inst.interrupt(expect_requests=requests):
            return

        def still_stuck() -> None:
            if (inst.generation == generation and inst.requests == requests and inst.state is State.BUSY
                    and not self._closed):
                log.warning("instance %d did not stop after an interrupt; restarting it", inst.index)
                self._executor.submit(self._force_restart, inst, "did not answer an interrupt")

        self._scheduler.call_later(self.interrupt_grace, still_stuck)

    # ------------------------------------------------------------ elasticity
    def _grow_slot(self) -> Optional[Instance]:
        """Lock held.  A parked slot to start for waiting requests (one at a time)."""
        if self._growing or all(self._active):  # fixed size, or elastic at max_size
            return None
        if any(self._active[i] and s.state in (State.STARTING, State.BACKOFF) for i, s in enumerate(self._slots)):
            return None  # a process is already on its way
        for i, inst in enumerate(self._slots):
            if not self._active[i] and self._owner[i] is None and inst.state is State.STOPPED:
                self._active[i] = True
                self._growing = True
                return inst
        return None

    def _grow(self, inst: Instance) -> None:
        log.info("growing the pool: starting instance %d", inst.index, extra={"instance": inst.index})
        try:
            inst.start(self.start_timeout)
        except Exception as exc:
            # No retry from here: the next submit or completion tries again, so a tool
            # that cannot start does not spin.
            log.warning("growing the pool failed: %s", exc)
            inst.stop(0.5)
            with self._lock:
                self._growing = False
                self._active[inst.index] = False

    def _idle_check(self, inst: Instance, since: float) -> None:
        """Scheduler thread: shrink if ``inst`` stayed idle; the stop itself runs on the executor."""
        with self._lock:
            active = sum(self._active)
            i = inst.index
            if (self._closed or active <= self.min_size or not self._active[i] or self._owner[i] is not None
                    or inst.state is not State.IDLE or inst.state_since != since):
                return
            self._owner[i] = "maint"  # stays active (not growable) until it has stopped
        log.info("shrinking the pool: instance %d idle for %ss", i, self.max_idle, extra={"instance": i})
        try:
            self._executor.submit(self._shrink, inst)
        except RuntimeError:  # shutting down
            pass

    def _shrink(self, inst: Instance) -> None:
        try:
            inst.stop()
        finally:
            with self._lock:
                self._active[inst.index] = False
                if self._owner[inst.index] == "maint":
                    self._owner[inst.index] = None

    # ---------------------------------------------------------- by index
    def _get(self, index: int) -> Instance:
        if self._closed:
            raise PoolClosed("the pool has been shut down")
        if isinstance(index, bool) or not isinstance(index, int):
            raise TypeError(f"instance index must be an int, got {type(index).__name__}")
        if not 0 <= index < len(self._slots):
            raise IndexError(f"instance index {index} out of range: the pool has {len(self._slots)} instances")
        return self._slots[index]

    def _claim(self, index: int) -> Instance:
        """Take instance ``index`` for by-index use, or say who has it."""
        inst = self._get(index)
        with self._lock:
            owner = self._owner[index]
            if owner not in (None, "index"):
                what = {"dispatch": "running a request dispatched by submit()/map()",
                        "lease": "leased by a `with pool.lease()` block",
                        "maint": "being recycled or health-checked"}[owner]
                raise InstanceBusy(f"instance {index} is {what}; by-index calls cannot use it now")
            self._owner[index] = "index"
        return inst

    def _unclaim(self, inst: Instance) -> None:
        """Give up a by-index claim once nothing of the caller's is left on ``inst``."""
        if inst.has_unread() or inst.state is State.BUSY:
            return
        with self._lock:
            if self._owner[inst.index] != "index":
                return
            self._owner[inst.index] = None
            waiting = bool(self._waiting)
        # Released under the lock first, so a request queued from now on finds the
        # instance free when it dispatches itself; only earlier ones need us.
        if waiting:
            self._dispatch()

    def _queue_for(self, index: int) -> MessageQueue:
        inst = self._claim(index)
        with self._lock:
            queue = self._queues.get(index)
            if queue is None:  # the by-index claim ends when the queue drains
                queue = self._queues[index] = MessageQueue(inst, self._scheduler.call_later,
                                                           lambda: self._unclaim(inst))
        return queue

    def send_prompt(self, index: int, prompt: str, **kwargs: Any) -> "cf.Future[Response]":
        """Send ``prompt`` to instance ``index`` and return at once.

        The returned Future resolves to the :class:`Response` (the same one
        :meth:`read_response` returns).  Raises ValueError for a prompt the
        adapter rejects, :class:`InstanceBusy` if the instance has not answered
        its previous prompt (or is leased/dispatched), and
        :class:`InstanceUnavailable` if it is not running.
        """
        inst = self._claim(index)
        try:
            return inst.send(prompt, **kwargs)
        except BaseException:
            self._unclaim(inst)
            raise

    def read_response(self, index: int, timeout: Optional[float] = None) -> Response:
        """Wait up to ``timeout`` seconds for instance ``index``'s pending response.

        Raises :class:`ResponseTimeout` (the response stays pending: read again
        to keep waiting), :class:`InstanceCrashed` at once if the process dies,
        or the adapter's error (e.g. :class:`ResponseTooLarge`).
        """
        inst = self._get(index)
        try:
            return inst.read(timeout)
        finally:
            self._unclaim(inst)

    def ask(self, index: int, prompt: str, timeout: Optional[float] = None, **kwargs: Any) -> Response:
        """:meth:`send_prompt` then wait at most ``timeout`` seconds for that prompt's response.

        On :class:`ResponseTimeout` the response stays pending for a later
        :meth:`read_response`.
        """
        inst = self._claim(index)
        try:
            return inst.ask(prompt, timeout, **kwargs)
        finally:
            self._unclaim(inst)

    def interrupt(self, index: int) -> bool:
        """Ask instance ``index`` to cancel its current turn (False if idle)."""
        return self._get(index).interrupt()

    def restart_instance(self, index: int, timeout: Optional[float] = None) -> None:
        """Replace instance ``index``'s process with a new one; return when it is ready.

        Works in any state, FATAL included (the failure count is reset).  A
        request pending on it fails with :class:`InstanceUnavailable`.
        """
        inst = self._get(index)
        self._failures.reset(index)
        with self._lock:
            self._active[index] = True
        self._stats.incr("restarts")
        inst.restart(timeout if timeout is not None else self.start_timeout)
        self._unclaim(inst)

    # ---------------------------------------------------------- health & status
    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def size(self) -> int:
        """Instances currently active (started or being started)."""
        return sum(self._active)

    def instances(self) -> List[Instance]:
        return [inst for i, inst in enumerate(self._slots) if self._active[i]]

    def check_health(self) -> Dict[str, Any]:
        """Counts of active instances by condition.

        ``healthy``: every instance alive and the pool open; ``degraded``:
        some, not all, alive (e.g. FATAL instances); ``waiting``: queued requests.
        """
        states = [inst.state for i, inst in enumerate(self._slots) if self._active[i]]
        alive = sum(s in LIVE_STATES for s in states)
        health = {
            "total": len(states),
            "alive": alive,
            "dead": len(states) - alive,
            "busy": states.count(State.BUSY),
            "idle": states.count(State.IDLE),
            "starting": states.count(State.STARTING),
            "backoff": states.count(State.BACKOFF),
            "fatal": states.count(State.FATAL),
            "waiting": len(self._waiting),
            "closed": self._closed,
        }
        health["healthy"] = not self._closed and alive == len(states) and alive > 0
        health["degraded"] = not self._closed and 0 < alive < len(states)
        return health

    def stats(self) -> Dict[str, Any]:
        """Counters and latency summaries since the pool started (or the last :meth:`pop_stats`)."""
        return self._stats.snapshot()

    def pop_stats(self) -> Dict[str, Any]:
        """Like :meth:`stats`, then reset the counters and summaries."""
        return self._stats.snapshot(reset=True)

    def get_status(self) -> Dict[str, Any]:
        """A JSON-safe snapshot valid against ``schema/pool_status.schema.json``."""
        with self._lock:
            owners = list(self._owner)
            active = list(self._active)
        instances = []
        for i, inst in enumerate(self._slots):
            if active[i]:
                entry = inst.status()
                entry["owner"] = owners[i]
                instances.append(entry)
        return {
            "schema_version": STATUS_SCHEMA_VERSION,
            "generated_at": time.time(),
            "created_at": self.created_at,
            "closed": self._closed,
            "adapter": self.adapter.describe(),
            "sizing": {"min_size": self.min_size, "max_size": self.max_size, "active": sum(active),
                       "max_waiting": self.max_waiting},
            "health": self.check_health(),
            "stats": self.stats(),
            "instances": instances,
        }

    def dump_status(self, path: str) -> str:
        """Write :meth:`get_status` to ``path`` atomically (owner-only, secrets redacted).

        Returns the path.  See :func:`toolpool.status.dump_status`.
        """
        from .status import dump_status, secret_values

        secrets = secret_values(self.adapter.secret_env())
        return dump_status(self.get_status(), path, secrets)

    # ---------------------------------------------------------------- shutdown
    def shutdown(self, timeout: float = 5.0) -> None:
        """Stop every instance (in parallel) and release everything.  Idempotent.

        Queued requests fail with :class:`PoolClosed`; running ones with
        :class:`InstanceUnavailable`.  Per instance: close stdin, short grace,
        SIGTERM to its process group, grace, SIGKILL, reap; reader threads
        joined and descriptors closed.  The scheduler and spawn threads are
        joined too.
        """
        if _on_pool_thread():
            # Called from a callback on one of toolpool's threads: waiting here for the
            # threads to finish would wait on ourselves.  Finish in the background.
            with self._lock:
                if self._closed or self._background_shutdown is not None:
                    return
                thread = threading.Thread(target=self.shutdown, args=(timeout,), name="toolpool-shutdown",
                                          daemon=True)
                self._background_shutdown = thread
                _background_shutdowns.append(thread)
            thread.start()
            return
        with self._lock:
            if self._closed:
                return
            self._closed = True
            waiting, self._waiting = list(self._waiting), collections.deque()
            queues = list(self._queues.values()) + [lease._queue for lease in list(self._leases)]
        _live_pools.discard(self)
        for req in waiting:
            self._complete(req, exc=PoolClosed("the pool was shut down before this request reached an instance"))
        for queue in queues:
            queue.close(PoolClosed("the pool was shut down"))
        self._scheduler.close()
        # Stop for good (in parallel) before joining the spawn threads: a start in
        # progress then fails fast instead of finishing, and none can begin.
        threads = [threading.Thread(target=inst.stop, args=(timeout, "stopped", True),
                                    name=f"toolpool-stop-{inst.index}", daemon=True) for inst in self._slots]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self._executor.shutdown(wait=True, cancel_futures=True)
        self.adapter.detach()
        log.info("pool shut down (%d instances)", len(self._slots))

    close = shutdown

    def __enter__(self) -> "ToolProcessPool":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        h = self.check_health()
        return f"<ToolProcessPool {self.adapter.name} x{h['total']} alive={h['alive']} busy={h['busy']}>"


def _sizes(count: Optional[int], min_size: Optional[int], max_size: Optional[int]) -> "tuple[int, int]":
    def check(name: str, value: Optional[int]) -> None:
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be a positive integer, got {value!r}")

    for name, value in (("count", count), ("min_size", min_size), ("max_size", max_size)):
        check(name, value)
    if count is not None and (min_size is not None or max_size is not None):
        raise ValueError("give either count (a fixed size) or min_size/max_size (an elastic pool), not both")
    if count is not None:
        return count, count
    lo = min_size if min_size is not None else 1
    hi = max_size if max_size is not None else max(lo, 1)
    if hi < lo:
        raise ValueError(f"max_size ({hi}) must be >= min_size ({lo})")
    return lo, hi
