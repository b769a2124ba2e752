"""The Dispatcher: the request queue, deadlines, retries, leases and per-slot message queues.

Requests wait in one FIFO queue (``submit``/``map``/``lease``) or in a slot's own
queue (``Lease.submit``, ``submit(instance=i)``).  :meth:`Dispatcher.pump`
decides under the slot table's lock which request goes to which free, idle
slot and sends it outside the lock (httpcore's rule: decide under the lock, do
I/O after it).

Every request with a deadline has ONE expiry path, :meth:`Dispatcher._expire`:
a queued request fails with ``phase="queue"``; a running one fails with
``phase="response"`` and its turn is *abandoned*: interrupted (or, if the tool
is still reading its input, the process is replaced), and if the tool is still
on that turn ``interrupt_grace`` seconds later, the process is replaced.  A
released lease abandons its running turn the same way.  The first outcome of a
request wins, decided under the lock.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import logging
import random
import time
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from .adapters.base import EventCallback
from .errors import (
    AcquireTimeout,
    BudgetExceeded,
    InstanceBusy,
    InstanceCrashed,
    InstanceUnavailable,
    PoolClosed,
    PoolFull,
    ResponseTimeout,
    ResponseTooLarge,
    ToolPoolError,
)
from .response import Response, Timings
from .scheduler import Scheduler, Timer
from .slots import Slot, SlotTable
from .states import Owner, State
from .timeouts import check_seconds

if TYPE_CHECKING:  # pragma: no cover
    from .instance import Instance
    from .metrics import Stats
    from .supervision import Supervisor

log = logging.getLogger("toolpool.dispatch")

QUEUED, RUNNING, DONE = "queued", "running", "done"


class Request:
    """A prompt (or a lease) waiting for an instance, then running on one.

    ``future`` is what the caller holds: PENDING while queued (so it can be
    cancelled), RUNNING once taken.  ``deadline`` (monotonic) covers queueing
    plus answering.  ``target``: the only slot it may run on; ``holder``: the
    Lease it belongs to (a lease's requests run only while it holds the slot).
    """

    __slots__ = ("kind", "prompt", "data", "future", "timeout", "deadline", "created", "on_event", "timer",
                 "retries", "target", "holder", "slot", "turn", "state")

    def __init__(self, kind: str, prompt: str | None, data: bytes | None, timeout: float | None,
                 on_event: EventCallback | None = None, retries: int = 0, target: int | None = None,
                 holder: object | None = None) -> None:
        self.kind = kind
        self.prompt = prompt
        self.data = data
        self.future: cf.Future[Any] = cf.Future()
        self.timeout = timeout
        self.created = time.perf_counter()
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.on_event = on_event
        self.timer: Timer | None = None
        self.retries = retries
        self.target = target
        self.holder = holder
        self.slot: Slot | None = None
        self.turn = 0  # the instance's turn number once sent
        self.state = QUEUED


class Dispatcher:
    """Hands requests to slots; see the module docs."""

    def __init__(self, table: SlotTable, scheduler: Scheduler, stats: Stats, *, max_waiting: int,
                 interrupt_grace: float, retry_on_crash: bool, max_cost_usd: float | None = None,
                 max_requests_per_minute: int | None = None) -> None:
        self.table = table
        self.lock = table.lock  # one mutex for slots and queues
        self.scheduler = scheduler
        self.stats = stats
        self.max_waiting = max_waiting
        self.interrupt_grace = interrupt_grace
        self.retries = 1 if retry_on_crash else 0
        self.supervisor: Supervisor | None = None  # set by the pool (they know each other)
        #: Called with a slot before an independent request (submit/map) or a new lease runs on it.
        self.before_independent: Callable[[int], None] | None = None
        self.queue: collections.deque[Request] = collections.deque()
        self.targeted = 0  # requests waiting in slots' own queues
        self.closed: BaseException | None = None
        # One budget and one rate limit for the whole pool.
        self.max_cost_usd = max_cost_usd
        self.spent_usd = 0.0
        self.max_per_minute = max_requests_per_minute
        self._sent_at: collections.deque[float] = collections.deque()  # dispatch times within the last minute
        self.paused_until = 0.0  # monotonic: no dispatch before (a rate limit was hit)
        self._pause_timer: Timer | None = None
        self._rate_strikes = 0  # rate limits in a row: the shared backoff doubles with each

    # ------------------------------------------------------------------ queueing
    def submit(self, req: Request, bounded: bool = True) -> cf.Future[Any]:
        """Queue ``req``; raise :class:`PoolFull`/:class:`PoolClosed` at once."""
        with self.lock:
            if self.closed is not None:
                raise PoolClosed("the pool has been shut down")
            if self._over_budget():
                raise BudgetExceeded(self.spent_usd, self.max_cost_usd or 0.0)
            if req.target is not None:
                self.table[req.target].targeted.append(req)
                self.targeted += 1
            else:
                if bounded and self.max_waiting and len(self.queue) >= self.max_waiting:
                    self.stats.incr("requests_rejected")
                    raise PoolFull(f"{len(self.queue)} requests already wait for an instance (max_waiting="
                                   f"{self.max_waiting}); retry later, or raise max_waiting or the pool size")
                self.queue.append(req)
        self.stats.incr("requests_queued")
        if req.deadline is not None:
            req.timer = self.scheduler.call_at(req.deadline, lambda: self._expire(req))
        req.future.add_done_callback(lambda f: self._on_done(req))
        self.pump()
        return req.future

    def _on_done(self, req: Request) -> None:
        if req.timer is not None:
            req.timer.cancel()
        if req.future.cancelled():
            self.stats.incr("requests_cancelled")
            with self.lock:
                self._unqueue(req)
                req.state = DONE

    def _unqueue(self, req: Request) -> bool:
        """Lock held.  Take ``req`` out of whichever queue holds it; True if it was queued."""
        if req.state is not QUEUED:
            return False
        if req.target is not None:
            queue = self.table[req.target].targeted
            if req in queue:
                queue.remove(req)
                self.targeted -= 1
                return True
            return False
        try:
            self.queue.remove(req)
            return True
        except ValueError:
            return False

    # ------------------------------------------------------------------ dispatch
    def pump(self) -> None:
        """Hand waiting requests to free, idle slots.  Safe to call from anywhere, any time."""
        if not self.queue and not self.targeted:  # unlocked peek: the common case after a completion
            return
        grow: Slot | None = None
        while True:
            with self.lock:
                if self.closed is not None:
                    return
                picked = self._pick()
                if picked is None:
                    if self.queue and self.supervisor is not None:
                        grow = self.supervisor.grow_slot()
                    break
                req, slot = picked
            if req.kind == "lease":
                if self.before_independent is not None:
                    try:
                        self.before_independent(slot.index)
                    except Exception:
                        log.exception("preparing slot %d for a new lease failed", slot.index)
                req.future.set_result(slot)
            else:
                self._run(req, slot)
        if grow is not None and self.supervisor is not None:
            self.supervisor.grow(grow)
        elif self.queue or self.targeted:
            self.fail_if_hopeless()  # nothing free: is anything ever going to be?

    def _pick(self) -> tuple[Request, Slot] | None:
        """Lock held.  The next (request, slot) pair, with the slot already taken for it."""
        if self.paused_until or self.max_per_minute:
            now = time.monotonic()
            if self.max_per_minute:
                while self._sent_at and now - self._sent_at[0] >= 60.0:
                    self._sent_at.popleft()
                if len(self._sent_at) >= self.max_per_minute:
                    self._pause(self._sent_at[0] + 60.0)
            if self.paused_until > now:
                return None
            self.paused_until = 0.0
        picked = self._pick_now()
        if picked is not None and self.max_per_minute and picked[0].kind == "prompt":
            self._sent_at.append(time.monotonic())
        return picked

    def _pause(self, until: float) -> None:
        """Lock held.  No dispatch before ``until`` (monotonic); a timer pumps then."""
        if until <= self.paused_until:
            return
        self.paused_until = until
        if self._pause_timer is not None:
            self._pause_timer.cancel()
        self._pause_timer = self.scheduler.call_at(until, self.pump)

    def rate_limited(self, retry_after: float | None) -> None:
        """An instance hit a rate limit or an overloaded API: every instance waits, with one shared,
        jittered backoff (doubling while it keeps happening) instead of each hammering on its own."""
        with self.lock:
            self._rate_strikes += 1
            delay = min(60.0, 1.0 * 2 ** (self._rate_strikes - 1))
            if retry_after is not None and retry_after == retry_after and retry_after > 0:
                delay = max(delay, min(float(retry_after), 300.0))
            delay *= random.uniform(1.0, 1.25)
            self._pause(time.monotonic() + delay)
        log.warning("rate limit: dispatch paused for %.1fs for every instance", delay, extra={"delay": delay})
        self.stats.incr("rate_limited")

    def _over_budget(self) -> bool:
        """Lock held."""
        return self.max_cost_usd is not None and self.spent_usd >= self.max_cost_usd

    def _pick_now(self) -> tuple[Request, Slot] | None:
        for slot in self.table.slots:
            if not slot.active or slot.instance.state is not State.IDLE:
                continue
            while slot.targeted:
                req = slot.targeted[0]
                wanted = Owner.LEASE if req.holder is not None else Owner.INDEX
                if slot.owner is not wanted or slot.holder is not req.holder:
                    break
                slot.targeted.pop(0)
                self.targeted -= 1
                if self._take(req, slot):
                    return req, slot
            if slot.owner is not Owner.FREE or slot.recycle_due:
                continue
            while self.queue:
                req = self.queue.popleft()
                if self._take(req, slot):
                    if req.kind == "lease":
                        slot.owner, slot.holder = Owner.LEASE, req.holder
                    else:
                        slot.owner = Owner.DISPATCH
                    return req, slot
        return None

    @staticmethod
    def _take(req: Request, slot: Slot) -> bool:
        """Lock held.  Mark ``req`` running on ``slot``; False if it was cancelled or ended meanwhile."""
        if req.state is DONE:
            return False
        if not req.future.running() and not req.future.set_running_or_notify_cancel():  # a retry is running already
            req.state = DONE
            return False
        req.state, req.slot = RUNNING, slot
        return True

    def _run(self, req: Request, slot: Slot) -> None:
        inst = slot.instance
        now = time.perf_counter()
        waited = now - req.created
        # A process that became ready after the request arrived was started for it (or
        # for its turn in the queue): that wait is spawn time, not queueing.
        cold = inst.ready_at is not None and inst.ready_at > req.created
        started = max(req.created, inst.spawn_started_at or req.created)
        spawn = max(0.0, (inst.ready_at or 0.0) - started) if cold else 0.0
        timings = Timings(queued=max(0.0, waited - spawn), acquire=waited, spawn=spawn, warm=not cold)
        try:
            if req.target is None and self.before_independent is not None:
                self.before_independent(slot.index)
            fut = inst.send(req.prompt or "", on_event=req.on_event, timings=timings, data=req.data, unread=False)
        except (InstanceBusy, InstanceUnavailable):
            # Lost a race with a crash or with a turn the tool started itself: back to the head.
            with self.lock:
                if req.target is None:
                    self.table.release(slot.index, Owner.DISPATCH)
                requeue = self.closed is None and req.state is RUNNING
                if requeue:
                    req.state, req.slot = QUEUED, None
                    if req.target is None:
                        self.queue.appendleft(req)
                    else:
                        slot.targeted.insert(0, req)
                        self.targeted += 1
            if not requeue:
                self._complete(req, exc=PoolClosed("the pool was shut down before this request was sent"))
            return
        except Exception as exc:
            with self.lock:
                if req.target is None:
                    self.table.release(slot.index, Owner.DISPATCH)
            self._complete(req, exc=exc)
            self.pump()
            return
        turn = getattr(fut, "number", 0)
        with self.lock:
            req.turn = turn
            expired = req.state is DONE  # its deadline passed while it was being sent
        self.stats.record({"bytes_in": len(req.data or b""), "spawns_cold" if cold else "spawns_warm": 1},
                          {"queue_wait": timings.queued})
        if log.isEnabledFor(logging.DEBUG):
            log.debug("request dispatched to instance %d: acquire %.6fs (%s, spawn %.6fs)", slot.index, waited,
                      "cold" if cold else "warm", spawn,
                      extra={"instance": slot.index, "acquire": waited, "warm": not cold, "spawn": spawn})
        if expired:
            self.abandon(inst, turn, "its request timed out")
        fut.add_done_callback(lambda f: self._finished(req, slot, f))

    def _finished(self, req: Request, slot: Slot, fut: cf.Future[Any]) -> None:
        exc = fut.exception()
        inst = slot.instance
        with self.lock:
            retry = (isinstance(exc, InstanceCrashed) and req.retries > 0 and req.state is RUNNING
                     and self.closed is None)
            if req.target is None:
                self.table.release(slot.index, Owner.DISPATCH)
            if self.supervisor is not None:
                self.supervisor.after_request(slot)
            if retry:
                req.retries -= 1
                req.state, req.slot = QUEUED, None
                self.queue.appendleft(req)
        result: Response | None = None if (exc is not None or retry) else fut.result()
        if not retry and self.queue:
            # The next request goes out before this one's caller is woken: the tool never waits on us.
            if self.supervisor is None or not self.supervisor.maybe_recycle(slot):
                self.pump()
        if retry:
            log.info("retrying a request from crashed instance %d on another instance", slot.index)
        else:
            self._complete(req, result, exc)
        if isinstance(exc, ResponseTooLarge) and inst.state is State.BUSY:
            self.abandon(inst, req.turn, "its response exceeded max_response_bytes")  # the rest may never end
        if req.target is not None and not slot.targeted:
            self.unclaim_index(slot)
        if self.supervisor is None or not self.supervisor.maybe_recycle(slot):
            self.pump()
        if self.supervisor is not None and inst.state is State.IDLE:
            self.supervisor.idle_soon(slot)

    def _complete(self, req: Request, result: Response | None = None,
                  exc: BaseException | None = None) -> bool:
        """End a request: count it, then resolve the caller's future (first outcome wins).

        Counting first means that a caller who sees the result also sees it
        in the pool's stats.
        """
        with self.lock:
            if req.state is DONE or req.future.done():
                return False
            req.state = DONE
        if exc is not None:
            self.stats.record({"requests": 1, "errors": 1, "timeouts": int(isinstance(exc, ResponseTimeout))})
        elif result is not None:
            self.stats.record({"requests": 1, "bytes_out": len(result.raw)}, {"response": result.elapsed})
        else:
            self.stats.record({"requests": 1})
        try:
            if exc is not None:
                req.future.set_exception(exc)
            else:
                req.future.set_result(result)
        except cf.InvalidStateError:  # cancelled meanwhile
            return False
        return True

    def account(self, result: Response) -> None:
        """Spend and rate-limit bookkeeping of every answered request, however it was sent (the
        instance calls it before the Response reaches anyone, so a spent budget stops the next)."""
        if not result.cost_usd and not self._rate_strikes:
            return
        spent_now = False
        with self.lock:
            if not result.is_error:
                self._rate_strikes = 0  # the API answers again: the next limit starts the backoff afresh
            cost = result.cost_usd
            if isinstance(cost, (int, float)) and cost == cost and cost > 0:
                self.spent_usd += float(cost)
                spent_now = self._over_budget()
        if spent_now:
            self.fail_queued(BudgetExceeded(self.spent_usd, self.max_cost_usd or 0.0))

    def fail_queued(self, exc: BaseException) -> None:
        """Fail every queued request (running ones finish)."""
        with self.lock:
            waiting = list(self.queue)
            self.queue.clear()
            for slot in self.table:
                waiting += slot.targeted
                slot.targeted.clear()
            self.targeted = 0
        for req in waiting:
            self._complete(req, exc=exc)

    # ------------------------------------------------------------------ the one expiry path
    def _expire(self, req: Request) -> None:
        """A request's deadline passed (scheduler thread)."""
        with self.lock:
            if req.state is DONE:
                return
            queued = self._unqueue(req)
            slot = req.slot
            turn = req.turn
            why = self.table.who_holds() if queued else ""
        if queued or slot is None:
            where = f"for instance {req.target}" if req.target is not None else "for an instance"
            err = ResponseTimeout(f"no response within {req.timeout}s: the request was still queued {where} "
                                  f"({why or 'nothing free'})", phase="queue")
        else:
            err = ResponseTimeout(f"instance {slot.index} gave no complete response within {req.timeout}s "
                                  "(including queueing); the turn was cut short", slot.instance.partial_output(),
                                  phase="response", index=slot.index)
        if self._complete(req, exc=err):
            log.info("request timed out in %s after %ss", err.phase, req.timeout,
                     extra={"phase": err.phase, "timeout": req.timeout})
        if slot is not None and not queued and turn:
            self.abandon(slot.instance, turn, "its request timed out")

    def abandon(self, inst: Instance, turn: int, why: str) -> None:
        """Nobody waits for request turn ``turn`` any more: cut it short, and replace the
        process if the tool is still on that turn ``interrupt_grace`` seconds later."""
        if not turn or not inst.interrupt(expect_turn=turn):
            return
        supervisor = self.supervisor
        if supervisor is not None:
            self.scheduler.call_later(self.interrupt_grace, lambda: supervisor.retire_if_on(
                inst, turn, f"did not stop within interrupt_grace={self.interrupt_grace}s after {why}"))

    # ------------------------------------------------------------------ leases
    def acquire(self, lease: object, timeout: float | None) -> Slot:
        """Wait (FIFO, with ``submit``) for a slot for ``lease``.  Ctrl-C safe: nothing is left behind."""
        req = Request("lease", None, None, None, holder=lease)
        future = self.submit(req, bounded=True)
        try:
            try:
                slot: Slot = future.result(timeout)
                return slot
            except cf.TimeoutError:
                with self.lock:
                    queued = self._unqueue(req)
                    if queued:
                        req.state = DONE
                    held = self.table.who_holds()
                if queued:
                    future.cancel()
                    raise AcquireTimeout(f"no instance became free for a lease within {timeout}s ({held}); "
                                         "raise the timeout or max_size") from None
                slot = future.result()  # handed over just as the timeout ran out: use it
                return slot
        except BaseException:
            # KeyboardInterrupt (or any error) while waiting: the queued request must not
            # later take a slot for a lease nobody holds.
            with self.lock:
                queued = self._unqueue(req)
                req.state = DONE
            if queued:
                future.cancel()
            elif future.done() and not future.cancelled() and future.exception() is None:
                self.release(lease, future.result())
            raise

    def release(self, lease: object, slot: Slot) -> None:
        """``lease`` is over: fail its queued prompts, cut its running turn short, free the slot."""
        with self.lock:
            mine = [r for r in slot.targeted if r.holder is lease]
            for r in mine:
                slot.targeted.remove(r)
                self.targeted -= 1
        for r in mine:
            self._complete(r, exc=ToolPoolError(f"the lease of instance {slot.index} was released before this "
                                                "prompt was sent"))
        inst = slot.instance
        turn = inst.current_turn
        if turn:
            self.abandon(inst, turn, "its lease was released")
        inst.discard_unread()  # the holder is gone; nobody will read these
        with self.lock:
            self.table.release(slot.index, Owner.LEASE, lease)
        if self.supervisor is None or not self.supervisor.maybe_recycle(slot):
            self.pump()

    # ------------------------------------------------------------------ by-index holders
    def unclaim_index(self, slot: Slot) -> None:
        """Give up a by-index claim once nothing of the caller's is left on the slot."""
        inst = slot.instance
        if slot.owner is not Owner.INDEX or slot.targeted:
            return
        if inst.has_unread() or inst.state is State.BUSY:
            if inst.state is State.BUSY and not inst.has_unread():
                inst.when_idle(lambda: self.unclaim_index(slot))  # nobody will read it: free it once idle
            return
        with self.lock:
            if slot.targeted or not self.table.release(slot.index, Owner.INDEX):
                return
        self.pump()

    # ------------------------------------------------------------------ the end
    def fail_if_hopeless(self) -> None:
        """If no slot can ever serve again, fail queued requests instead of letting them hang."""
        supervisor = self.supervisor
        with self.lock:
            if not self.targeted and not all(_hopeless(slot, supervisor) for slot in self.table):
                return  # the common case (a busy pool): some slot will serve
            dead = {slot.index for slot in self.table if _hopeless(slot, supervisor)}
            growable = any(not slot.active and slot.instance.state is State.STOPPED for slot in self.table)
            everyone = len(dead) == len(self.table) and not growable and not (supervisor and supervisor.growing)
            failed: list[Request] = []
            if everyone:
                failed += list(self.queue)
                self.queue.clear()
            for index in dead:
                targeted = self.table[index].targeted
                failed += targeted
                self.targeted -= len(targeted)
                targeted.clear()
            states = ", ".join(sorted({slot.instance.state.value for slot in self.table if slot.active}))
        for req in failed:
            self._complete(req, exc=InstanceUnavailable(
                f"no instance of the pool can take requests (states: {states}); see get_status() for exit codes "
                "and stderr, then restart_instance() after fixing the cause"))

    def close(self, exc: BaseException) -> None:
        """Fail every queued request with ``exc``; later submits raise :class:`PoolClosed`."""
        with self.lock:
            self.closed = exc
            if self._pause_timer is not None:
                self._pause_timer.cancel()
        self.fail_queued(exc)

    def waiting(self) -> int:
        return len(self.queue) + self.targeted


def ordered_results(futures: list[cf.Future[Any]], return_exceptions: bool) -> Iterator[Response]:
    """The results of ``futures`` in their order (``map``): an error raised at its position, or
    yielded with ``return_exceptions``; closing the iterator early cancels those not done."""
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


def _hopeless(slot: Slot, supervisor: Supervisor | None) -> bool:
    """Lock held.  True when ``slot`` will never take a request again without a caller's restart."""
    if not slot.active:
        return True
    state = slot.instance.state
    if state in (State.FATAL, State.STOPPED):
        return True
    return state is State.EXITED and supervisor is not None and not supervisor.policy.enabled


class Lease:
    """Exclusive use of one instance, from ``with pool.lease() as lease:``.

    The instance takes no other work while leased.  ``ask``/``send``/``read``
    behave like the pool's by-index calls; ``submit`` queues prompts that are
    sent one after another.  Leaving the ``with`` block releases it, also on
    an exception; a turn still running is cut short first (interrupted, or the
    process replaced if it is still reading the turn's input).
    """

    def __init__(self, dispatcher: Dispatcher, encode: Callable[[str], bytes],
                 is_closed: Callable[[], bool]) -> None:
        self._dispatcher = dispatcher
        self._encode = encode
        self._is_closed = is_closed
        self._slot: Slot | None = None
        self._released = False

    def _bind(self, slot: Slot) -> None:
        self._slot = slot

    @property
    def instance(self) -> Instance:
        assert self._slot is not None, "lease not acquired"
        return self._slot.instance

    @property
    def index(self) -> int:
        assert self._slot is not None, "lease not acquired"
        return self._slot.index

    def _check(self) -> Instance:
        if self._released:
            raise ToolPoolError(f"this lease of instance {self.index} was released; take a new one")
        if self._is_closed():
            raise PoolClosed("the pool has been shut down")
        return self.instance

    def send(self, prompt: str, *, on_event: EventCallback | None = None) -> cf.Future[Response]:
        """Send ``prompt`` now and return a Future; the response is also kept for :meth:`read`."""
        inst = self._check()
        return inst.send(prompt, on_event=on_event, data=self._encode(prompt))

    def read(self, timeout: float | None = None) -> Response:
        return self._check().read(timeout)

    def ask(self, prompt: str, timeout: float | None = None, *,
            on_event: EventCallback | None = None) -> Response:
        """Send ``prompt`` and wait at most ``timeout`` s; on timeout the response stays pending."""
        inst = self._check()
        return inst.ask(prompt, timeout, on_event=on_event, data=self._encode(prompt))

    def submit(self, prompt: str, on_event: EventCallback | None = None,
               timeout: float | None = None) -> cf.Future[Response]:
        """Queue ``prompt``; it is sent after every earlier one is answered.

        ``timeout`` covers waiting plus answering (:class:`ResponseTimeout`
        with ``phase`` "queue" or "response"; a running turn is cut short).
        """
        self._check()
        timeout = check_seconds("timeout", timeout)
        req = Request("prompt", prompt, self._encode(prompt), timeout, on_event, target=self.index, holder=self)
        return self._dispatcher.submit(req)

    def interrupt(self) -> bool:
        return self._check().interrupt()

    def control(self, request: Mapping[str, Any], timeout: float | None = 10.0) -> dict[str, Any]:
        """A control request to the leased tool (claude: set_model, set_permission_mode...)."""
        return self._check().control(request, timeout)

    def status(self) -> dict[str, Any]:
        return self.instance.status()

    def release(self) -> None:
        if self._released or self._slot is None:
            return
        self._released = True
        self._dispatcher.release(self, self._slot)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.release()
