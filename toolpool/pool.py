"""ToolProcessPool: the facade users import; the work is done by the parts it wires together.

::

    caller --prompt--> ToolProcessPool --Request--> Dispatcher --send--> Instance --bytes--> tool
                            |                          |   ^                 |
                            |                     SlotTable (owners)   reader thread -> Framer -> Cut
                            |                          |   |                 |
                            +------------------> Supervisor <---events-------+
                                        (restarts, backoff, FATAL, recycling, probes, sizing)

:class:`~toolpool.slots.SlotTable` says who holds each slot,
:class:`~toolpool.dispatch.Dispatcher` queues requests and leases and owns
their deadlines, :class:`~toolpool.supervision.Supervisor` keeps processes
running, :class:`~toolpool.instance.Instance` runs one process and its turns.
Nothing else in the package imports this module.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from . import lifecycle
from .adapters import Adapter, create_adapter
from .adapters.base import EventCallback
from .dispatch import Dispatcher, Lease, Request, ordered_results
from .errors import PoolClosed, ResponseTimeout, ToolNotFoundError
from .instance import Instance
from .metrics import Stats
from .redact import adapter_secrets, redact, register_secrets, unregister_secrets
from .response import Response
from .scheduler import Scheduler
from .slots import SlotTable
from .states import LIVE_STATES, Owner, State
from .streams import StreamReader
from .supervision import RestartPolicy, Supervisor
from .timeouts import MAX_WAIT, check_seconds

log = logging.getLogger("toolpool.pool")

STATUS_SCHEMA_VERSION = 1
PoolListener = Callable[[str, dict[str, Any]], None]


def _on_pool_thread() -> bool:
    """True on a toolpool reader, scheduler or spawn thread (where callbacks run)."""
    current = threading.current_thread()
    return isinstance(current, StreamReader) or current.name.startswith(("toolpool-scheduler", "toolpool-spawn",
                                                                          "toolpool-call"))


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

    Every seconds option must be a finite number >= 0 (or None for no limit):
    NaN, infinity or a negative value raise ValueError naming the option.
    Other options: ``max_waiting`` (0 = unbounded) queued requests before
    :class:`PoolFull`; ``max_requests`` per process and a jittered
    ``max_lifetime`` (seconds) before an idle instance is recycled;
    ``restart``: a :class:`RestartPolicy` (or False) for dead instances;
    ``retry_on_crash``: retry a request once on another instance if its
    instance died (only for idempotent prompts); ``stuck_timeout``: replace
    an instance that is BUSY with no output for this long;
    ``health_check_interval``: probe idle instances this often with the
    adapter's liveness probe; ``interrupt_grace``: after a turn was cut short,
    seconds before a tool still on it is replaced; ``on_event``: called as
    ``on_event(name, info)`` for spawned, ready, exited, restarting, fatal,
    start_failed, stopped and unsolicited (a turn the tool ran by itself,
    ``info["response"]``).
    """

    def __init__(self, adapter: Adapter | str, count: int | None = None, *,
                 min_size: int | None = None, max_size: int | None = None,
                 adapter_options: Mapping[str, Any] | None = None, start_timeout: float | None = None,
                 max_waiting: int = 0, max_idle: float | None = None, max_requests: int | None = None,
                 max_lifetime: float | None = None, restart: RestartPolicy | bool = True,
                 retry_on_crash: bool = False, stuck_timeout: float | None = None,
                 health_check_interval: float | None = None, interrupt_grace: float = 5.0,
                 on_event: PoolListener | None = None, workspace: Any = None,
                 max_cost_usd: float | None = None, max_requests_per_minute: int | None = None,
                 start_stagger: float = 0.0) -> None:
        self.min_size, self.max_size = _sizes(count, min_size, max_size)
        self.start_timeout = check_seconds("start_timeout", start_timeout, positive=True)
        self.max_idle = check_seconds("max_idle", max_idle, positive=True)
        self.max_lifetime = check_seconds("max_lifetime", max_lifetime, positive=True)
        self.stuck_timeout = check_seconds("stuck_timeout", stuck_timeout, positive=True)
        self.health_check_interval = check_seconds("health_check_interval", health_check_interval, positive=True)
        self.interrupt_grace = check_seconds("interrupt_grace", interrupt_grace, allow_none=False) or 0.0
        self.start_stagger = check_seconds("start_stagger", start_stagger, allow_none=False) or 0.0
        if max_cost_usd is not None and (isinstance(max_cost_usd, bool) or not isinstance(max_cost_usd, (int, float))
                                         or not 0 < max_cost_usd < float("inf")):
            raise ValueError(f"max_cost_usd must be a finite number of dollars > 0 or None, got {max_cost_usd!r}")
        if max_requests_per_minute is not None and (isinstance(max_requests_per_minute, bool)
                                                    or not isinstance(max_requests_per_minute, int)
                                                    or max_requests_per_minute < 1):
            raise ValueError(f"max_requests_per_minute must be an int >= 1 or None, got {max_requests_per_minute!r}")
        if max_requests is not None and (isinstance(max_requests, bool) or not isinstance(max_requests, int)
                                         or max_requests < 1):
            raise ValueError(f"max_requests must be an int >= 1 or None, got {max_requests!r}")
        if isinstance(max_waiting, bool) or not isinstance(max_waiting, int) or max_waiting < 0:
            raise ValueError(f"max_waiting must be an int >= 0 (0 = unbounded), got {max_waiting!r}")
        if on_event is not None and not callable(on_event):
            raise TypeError(f"on_event must be callable(name, info), got {type(on_event).__name__}")
        if not isinstance(restart, (RestartPolicy, bool)):
            raise TypeError(f"restart must be a RestartPolicy or a bool, got {type(restart).__name__}")
        if isinstance(adapter, str):
            adapter = create_adapter(adapter, **dict(adapter_options or {}))
        elif adapter_options:
            raise ValueError("adapter_options only applies when adapter is given by name")
        if not isinstance(adapter, Adapter):
            raise TypeError(f"adapter must be an Adapter or a registered name, got {type(adapter).__name__}")
        lifecycle.check_sigchld()
        adapter.attach()  # detached (and closed, when last) at shutdown
        # Values of the adapter's secrets are masked in every string leaving the library.
        self._secrets = register_secrets(adapter_secrets(adapter))
        self.adapter = adapter
        self.max_waiting = max_waiting
        self.max_requests = max_requests
        self.policy = restart if isinstance(restart, RestartPolicy) else RestartPolicy(enabled=bool(restart))
        self.retry_on_crash = retry_on_crash
        self.created_at = time.time()
        self._owner_pid = os.getpid()  # a forked child's copy must not stop the parent's tools
        self._listeners: list[PoolListener] = [on_event] if on_event else []
        self._stats = Stats()
        self._closed = False
        self._shutdown_lock = threading.Lock()
        self._shutdown_done = threading.Event()
        self._shutdown_thread: threading.Thread | None = None
        self._scheduler = Scheduler()
        self._executor = cf.ThreadPoolExecutor(max_workers=self.max_size, thread_name_prefix="toolpool-spawn")
        # Answers to a tool's own requests (permission callbacks...): apart from spawns, so neither starves.
        self._workers = cf.ThreadPoolExecutor(max_workers=max(2, self.max_size), thread_name_prefix="toolpool-call")
        self._workspace = _WorkspaceTurns(workspace) if workspace is not None else None
        if self._workspace is not None:
            adapter.slot_dirs = self._workspace.path  # the adapter sees where each slot runs
        instances = [Instance(adapter, i, self._on_instance_event, on_idle=self._on_idle,
                              call_later=self._scheduler.call_later, run_call=self._workers.submit,
                              turn_hooks=self._workspace, on_answer=self._on_answer)
                     for i in range(self.max_size)]
        self._table = SlotTable(instances, self.min_size)
        self._dispatcher = Dispatcher(self._table, self._scheduler, self._stats, max_waiting=max_waiting,
                                      interrupt_grace=self.interrupt_grace, retry_on_crash=retry_on_crash,
                                      max_cost_usd=max_cost_usd, max_requests_per_minute=max_requests_per_minute)
        self._supervisor = Supervisor(
            self._table, self.policy, self._scheduler, self._executor, self._stats, self._notify,
            wake=self._dispatcher.pump, hopeless=self._dispatcher.fail_if_hopeless,
            start_timeout=self.start_timeout, min_size=self.min_size, max_idle=self.max_idle,
            max_requests=max_requests, max_lifetime=self.max_lifetime, stuck_timeout=self.stuck_timeout,
            health_check_interval=self.health_check_interval, oneshot=adapter.oneshot)
        self._dispatcher.supervisor = self._supervisor
        if self._workspace is not None:
            self._dispatcher.before_independent = self._workspace.reset
        lifecycle.register_pool(self)
        try:
            self._start_initial()
        except BaseException:
            self.shutdown(timeout=2.0)
            raise

    def _start_initial(self) -> None:
        """Start the first instances in parallel; raise only if all fail."""
        first = [slot.instance for slot in self._table.slots[: self.min_size]]

        def start(inst: Instance) -> None:
            if self.start_stagger and inst.index:
                # Spaced out, so N tools do not all hit the API (or the disk) in the same instant.
                self._shutdown_done.wait(self.start_stagger * inst.index)
            inst.start(self.start_timeout)

        futures = [self._executor.submit(start, inst) for inst in first]
        errors = [f.exception() for f in futures]
        failed = [(inst, e) for inst, e in zip(first, errors, strict=True) if e is not None]
        if len(failed) == len(first):
            raise failed[0][1]
        for inst, exc in failed:
            if isinstance(exc, ToolNotFoundError):
                raise exc
            log.warning("pool degraded: instance %d failed to start: %s", inst.index, exc)
            self._supervisor.on_failure(inst, None)

    # ---------------------------------------------------------------- events
    def subscribe(self, listener: PoolListener) -> None:
        """Call ``listener(event, info)`` on lifecycle events (see class docs)."""
        if not callable(listener):
            raise TypeError(f"listener must be callable(name, info), got {type(listener).__name__}")
        self._listeners.append(listener)

    def _notify(self, event: str, info: dict[str, Any]) -> None:
        # Redacted (stderr tails, errors), except the tool's own answer of an unsolicited turn.
        info = {k: v if k == "response" else redact(v) for k, v in info.items()}
        for listener in list(self._listeners):
            try:
                listener(event, info)
            except Exception:
                log.exception("pool event listener failed on %s", event)

    def _on_instance_event(self, inst: Instance, event: str, info: dict[str, Any]) -> None:
        """From instances (reader threads, spawn threads): never blocks."""
        info = dict(info, index=inst.index)
        if event == "unsolicited":
            self._stats.incr("unsolicited")
        elif event == "rate_limited":  # paused before anyone hears of it: a listener's next submit waits too
            retry_after = info.get("retry_after")
            self._dispatcher.rate_limited(retry_after if isinstance(retry_after, (int, float)) else None)
        self._notify(event, info)  # first: subscribers see causes before effects
        if event == "exited":
            self._supervisor.on_exited(inst, info)
        elif event == "ready":
            self._supervisor.on_ready(inst)

    def _on_answer(self, response: Response) -> None:
        self._dispatcher.account(response)

    def _on_idle(self, inst: Instance) -> None:
        slot = self._table[inst.index]
        if slot.owner is not Owner.FREE and not slot.targeted:
            return  # its holder (a dispatched request finishing, a lease) pumps when it lets go
        if not self._supervisor.maybe_recycle(slot):
            self._dispatcher.pump()

    # ---------------------------------------------------------------- requests
    def _encode(self, prompt: str) -> bytes:
        return self.adapter.encode(prompt)

    def submit(self, prompt: str, timeout: float | None = None, *, on_event: EventCallback | None = None,
               instance: int | None = None) -> cf.Future[Response]:
        """Queue ``prompt`` for the next idle instance; return a Future[Response].

        Requests are served in FIFO order.  ``timeout`` covers waiting plus
        answering; when it runs out the future fails with
        :class:`ResponseTimeout` whose ``phase`` is "queue" or "response"
        (a running turn is then cut short, and its process replaced if it
        does not stop within ``interrupt_grace``).  The future can be
        cancelled while queued.  Raises at once: ValueError/TypeError for a
        prompt the adapter rejects or a bad timeout, :class:`PoolFull` past
        ``max_waiting``, :class:`PoolClosed`.  ``instance=i`` queues the
        prompt for that instance only, sent after its earlier prompts are
        answered.
        """
        timeout = check_seconds("timeout", timeout)
        if on_event is not None and not callable(on_event):
            raise TypeError(f"on_event must be callable(event), got {type(on_event).__name__}")
        data = self._encode(prompt)
        if instance is None:
            return self._dispatcher.submit(Request("prompt", prompt, data, timeout, on_event,
                                                   retries=self._dispatcher.retries))
        slot = self._claim(instance)
        try:
            return self._dispatcher.submit(Request("prompt", prompt, data, timeout, on_event, target=instance))
        except BaseException:
            self._dispatcher.unclaim_index(slot)
            raise

    def map(self, prompts: Iterable[str], timeout: float | None = None, *,
            return_exceptions: bool = False) -> Iterator[Response]:
        """Submit every prompt now; yield their responses in input order.

        ``timeout`` applies to each prompt.  An error is raised when its
        position is reached (or yielded, with ``return_exceptions=True``);
        the remaining futures are cancelled when the iterator is closed early.
        ``max_waiting`` does not apply to map, which queues the whole batch.
        """
        timeout = check_seconds("timeout", timeout)
        batch = [(p, self._encode(p)) for p in prompts]  # reject bad input before queueing any
        futures = [self._dispatcher.submit(Request("prompt", p, data, timeout, retries=self._dispatcher.retries),
                                           bounded=False) for p, data in batch]
        return ordered_results(futures, return_exceptions)

    @contextlib.contextmanager
    def lease(self, timeout: float | None = None) -> Iterator[Lease]:
        """Hold one instance exclusively for several turns.

        Waits in the same FIFO queue as :meth:`submit`, at most ``timeout``
        seconds (:class:`AcquireTimeout`; None waits as long as it takes).
        Released when the block ends, also on an exception or Ctrl-C; a turn
        still running then is cut short.
        """
        timeout = check_seconds("timeout", timeout)
        lease = Lease(self._dispatcher, self._encode, lambda: self._closed)
        slot = self._dispatcher.acquire(lease, timeout)
        lease._bind(slot)
        try:
            yield lease
        finally:
            lease.release()

    # ---------------------------------------------------------------- by index
    def _instance(self, index: int) -> Instance:
        if self._closed:
            raise PoolClosed("the pool has been shut down")
        if isinstance(index, bool) or not isinstance(index, int):
            raise TypeError(f"instance index must be an int, got {type(index).__name__}")
        if not 0 <= index < len(self._table):
            raise IndexError(f"instance index {index} out of range: the pool has {len(self._table)} instances")
        return self._table[index].instance

    def _claim(self, index: int) -> Any:
        self._instance(index)
        with self._table.lock:
            return self._table.claim(index, Owner.INDEX, reentrant=True)

    def send_prompt(self, index: int, prompt: str, *,
                    on_event: EventCallback | None = None) -> cf.Future[Response]:
        """Send ``prompt`` to instance ``index`` and return at once.

        The returned Future resolves to the :class:`Response` (the same one
        :meth:`read_response` returns).  Raises ValueError for a prompt the
        adapter rejects, :class:`InstanceBusy` if the instance has not answered
        its previous prompt (or is leased/dispatched), and
        :class:`InstanceUnavailable` if it is not running.
        """
        data = self._encode(prompt)
        slot = self._claim(index)
        try:
            future: cf.Future[Response] = slot.instance.send(prompt, on_event=on_event, data=data)
            return future
        except BaseException:
            self._dispatcher.unclaim_index(slot)
            raise

    def read_response(self, index: int, timeout: float | None = None) -> Response:
        """Wait up to ``timeout`` seconds for instance ``index``'s pending response.

        Raises :class:`ResponseTimeout` (the response stays pending: read again
        to keep waiting), :class:`InstanceCrashed` at once if the process dies,
        or the adapter's error (e.g. :class:`ResponseTooLarge`).
        """
        timeout = check_seconds("timeout", timeout)
        inst = self._instance(index)
        try:
            return inst.read(timeout)
        finally:
            self._dispatcher.unclaim_index(self._table[index])

    def ask(self, index: int, prompt: str, timeout: float | None = None, *,
            on_event: EventCallback | None = None) -> Response:
        """:meth:`send_prompt` then wait at most ``timeout`` seconds for that prompt's response.

        On :class:`ResponseTimeout` the response stays pending for a later
        :meth:`read_response`.  On Ctrl-C (or any other exception while
        waiting) the turn is cut short and the instance freed.
        """
        timeout = check_seconds("timeout", timeout)
        data = self._encode(prompt)
        slot = self._claim(index)
        inst = slot.instance
        future: cf.Future[Response] | None = None
        try:
            future = inst.send(prompt, on_event=on_event, data=data)
            return inst.read(timeout) if timeout is not None else future.result()
        except ResponseTimeout:
            raise
        except BaseException:
            if future is not None and not future.done():
                inst.discard_unread()
                self._dispatcher.abandon(inst, getattr(future, "number", 0), "its caller stopped waiting")
            raise
        finally:
            self._dispatcher.unclaim_index(slot)

    def interrupt(self, index: int) -> bool:
        """Ask instance ``index`` to cancel its current turn (False if idle)."""
        return self._instance(index).interrupt()

    def control(self, index: int, request: Mapping[str, Any], timeout: float | None = 10.0) -> dict[str, Any]:
        """Send a control request to instance ``index``'s tool and return its answer.

        claude: ``set_model``, ``set_permission_mode``, ``interrupt`` (build them with
        :mod:`toolpool.adapters.claude_control`).  Raises :class:`InstanceBusy` if the
        instance is leased or running a dispatched request (use ``Lease.control``),
        ``TimeoutError`` when the tool does not answer in time.
        """
        slot = self._claim(index)
        try:
            answer: dict[str, Any] = slot.instance.control(request, timeout)
            return answer
        finally:
            self._dispatcher.unclaim_index(slot)

    def restart_instance(self, index: int, timeout: float | None = None) -> None:
        """Replace instance ``index``'s process with a new one; return when it is ready.

        Works in any state, FATAL included (the failure count is reset), and
        supersedes an automatic restart that was pending.  A request pending
        on it fails with :class:`InstanceUnavailable`.  If the new process
        fails to start (or the call is interrupted), supervision takes the
        slot over again.
        """
        timeout = check_seconds("timeout", timeout, positive=True)
        inst = self._instance(index)
        try:
            self._supervisor.restart(inst, timeout)
        finally:
            self._dispatcher.unclaim_index(self._table[index])

    # ---------------------------------------------------------------- health & status
    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def size(self) -> int:
        """Instances currently active (started or being started)."""
        return self._table.active_count()

    def instances(self) -> list[Instance]:
        return [slot.instance for slot in self._table if slot.active]

    def check_health(self) -> dict[str, Any]:
        """Counts of active instances by condition.

        ``healthy``: every instance alive and the pool open; ``degraded``:
        some, not all, alive (e.g. FATAL instances); ``waiting``: queued requests.
        """
        states = [slot.instance.state for slot in self._table if slot.active]
        alive = sum(s in LIVE_STATES for s in states)
        health: dict[str, Any] = {
            "total": len(states),
            "alive": alive,
            "dead": len(states) - alive,
            "busy": states.count(State.BUSY),
            "idle": states.count(State.IDLE),
            "starting": states.count(State.STARTING),
            "backoff": states.count(State.BACKOFF),
            "fatal": states.count(State.FATAL),
            "waiting": self._dispatcher.waiting(),
            "closed": self._closed,
        }
        health["healthy"] = not self._closed and alive == len(states) and alive > 0
        health["degraded"] = not self._closed and 0 < alive < len(states)
        return health

    def stats(self) -> dict[str, Any]:
        """Counters and latency summaries since the pool started (or the last :meth:`pop_stats`),
        with the pool's spend (``cost_usd``, ``max_cost_usd``)."""
        return self._with_spend(self._stats.snapshot())

    def pop_stats(self) -> dict[str, Any]:
        """Like :meth:`stats`, then reset the counters and summaries (the spend is never reset)."""
        return self._with_spend(self._stats.snapshot(reset=True))

    def _with_spend(self, stats: dict[str, Any]) -> dict[str, Any]:
        stats["cost_usd"] = self._dispatcher.spent_usd
        stats["max_cost_usd"] = self._dispatcher.max_cost_usd
        return stats

    @property
    def metrics(self) -> Stats:
        """The pool's live counters (for :mod:`toolpool.prometheus`)."""
        return self._stats

    def get_status(self) -> dict[str, Any]:
        """A JSON-safe snapshot valid against ``schema/pool_status.schema.json``."""
        with self._table.lock:
            owners: list[tuple[bool, str | None]] = [
                (slot.active, None if slot.owner is Owner.FREE else slot.owner.value) for slot in self._table]
        instances = []
        for slot, (active, owner) in zip(self._table, owners, strict=True):
            if active:
                entry = slot.instance.status()
                entry["owner"] = owner
                instances.append(entry)
        from . import containment

        return {
            "schema_version": STATUS_SCHEMA_VERSION,
            "generated_at": time.time(),
            "created_at": self.created_at,
            "closed": self._closed,
            "adapter": redact(self.adapter.describe()),
            "sizing": {"min_size": self.min_size, "max_size": self.max_size, "active": sum(a for a, _ in owners),
                       "max_waiting": self.max_waiting},
            "health": self.check_health(),
            "stats": self.stats(),
            "instances": redact(instances),
            "containment": containment.describe(),
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
        joined and descriptors closed; the scheduler and spawn threads are
        joined too.  Every caller, also a concurrent second one, returns only
        when all of that is done.  Ctrl-C while it runs does not stop the kill:
        shutdown finishes, then the KeyboardInterrupt is raised.  Called from a
        callback on one of the pool's own threads, it finishes in the background.
        """
        timeout = check_seconds("timeout", timeout, allow_none=False) or 0.0
        if os.getpid() != self._owner_pid:
            # A forked child's copy of its parent's pool: the tools are the parent's, not ours to stop.
            return
        with self._shutdown_lock:
            if self._shutdown_thread is None:
                self._closed = True
                self._shutdown_thread = threading.Thread(target=self._shutdown_now, args=(timeout,),
                                                         name="toolpool-shutdown")
                self._shutdown_thread.start()
                lifecycle.track_background(self._shutdown_thread)
        if _on_pool_thread():
            return  # waiting here would wait on ourselves
        interrupted: BaseException | None = None
        while not self._shutdown_done.is_set():
            try:
                self._shutdown_done.wait(MAX_WAIT)
            except KeyboardInterrupt as exc:  # finish killing the tools first
                interrupted = exc
        if interrupted is not None:
            raise interrupted

    def _shutdown_now(self, timeout: float) -> None:
        try:
            lifecycle.unregister_pool(self)
            self._supervisor.close()
            self._dispatcher.close(PoolClosed("the pool was shut down before this request reached an instance"))
            self._scheduler.close()
            # Stop for good (in parallel) before joining the spawn threads: a start in
            # progress then fails fast instead of finishing, and none can begin.
            threads = [threading.Thread(target=slot.instance.stop, args=(timeout, "stopped", True),
                                        name=f"toolpool-stop-{slot.index}", daemon=True) for slot in self._table]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._workers.shutdown(wait=True, cancel_futures=True)
            if self._workspace is not None:
                self._workspace.close()
            if self._workspace is not None:
                self.adapter.slot_dirs = None
            self.adapter.detach()
            unregister_secrets(self._secrets)
            log.info("pool shut down (%d instances)", len(self._table))
        except BaseException:  # pragma: no cover - must never leave callers waiting
            log.exception("pool shutdown failed")
        finally:
            self._shutdown_done.set()

    close = shutdown

    def __enter__(self) -> ToolProcessPool:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        h = self.check_health()
        return f"<ToolProcessPool {self.adapter.name} x{h['total']} alive={h['alive']} busy={h['busy']}>"


class _WorkspaceTurns:
    """A pool's workspace seen from its instances: each slot's directory, and the changes of each turn."""

    def __init__(self, value: Any) -> None:
        from .workspaces import as_workspace  # only pools with a workspace need it

        self.workspace = as_workspace(value)
        self._paths: dict[int, str] = {}
        self._lock = threading.Lock()
        self._turns = 0

    def path(self, slot: int) -> str:
        with self._lock:
            if slot not in self._paths:
                self._paths[slot] = self.workspace.prepare(slot)
            return self._paths[slot]

    def begin(self, slot: int) -> object:
        return self.workspace.snapshot(slot)

    def end(self, slot: int, token: object, response: Response) -> None:
        with self._lock:
            self._turns += 1
            label = f"toolpool slot {slot} turn {self._turns}"
        found = self.workspace.changes(slot, token, label)
        response.workspace = found.workspace
        response.changes = [{"path": c.path, "status": c.status} for c in found.changes]
        response.diff = found.diff
        response.commit = found.commit
        if found.diff_truncated:
            response.meta["diff_truncated"] = True

    def reset(self, slot: int) -> None:
        """Before an independent request (submit/map) or a new lease: back to the base, if the
        workspace resets between requests (``GitWorktrees(reset_between=True)``)."""
        self.workspace.reset(slot)

    def close(self) -> None:
        try:
            self.workspace.close()
        except Exception:
            log.exception("closing the pool's workspace failed")


def _sizes(count: int | None, min_size: int | None, max_size: int | None) -> tuple[int, int]:
    def check(name: str, value: int | None) -> None:
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


