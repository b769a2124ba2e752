"""The Supervisor: restarts, backoff, FATAL, recycling, probes, stuck detection, sizing.

Learned from supervisor (startretries, FATAL) and jupyter_client's restarter
(a restarter object of its own, a restart limit, a stable-start window that
resets the count): crash loops are bounded, and a tool that ran fine for a
while earns a fresh budget.  Backoff between attempts is exponential with
jitter (tenacity's ``wait_exponential`` plus ``wait_random``), so instances
failing together do not restart in lockstep.

Every timer the Supervisor arms is bound to the slot's *epoch*: a counter
bumped by every decision about the slot (a crash handled, a caller's
``restart_instance``, a recycle).  A timer that fires for an older epoch does
nothing, so a restart scheduled for a process that is long gone can never
start a second process on a slot, or stop one a caller just started.

The Supervisor decides under the slot table's lock and does the slow work
(spawning, stopping) on the pool's executor, never on a reader thread.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tenacity import RetryCallState, Retrying, wait_exponential, wait_random

from .errors import ToolNotFoundError, ToolPoolError
from .scheduler import Scheduler
from .slots import Slot, SlotTable
from .states import Owner, State
from .timeouts import check_seconds

if TYPE_CHECKING:  # pragma: no cover
    from .instance import Instance
    from .metrics import Stats

log = logging.getLogger("toolpool.supervision")

Notify = Callable[[str, dict[str, Any]], None]


@dataclass
class RestartPolicy:
    """Automatic restart settings for a pool's instances.

    ``enabled``: restart instances that die (False: they stay EXITED).
    ``limit``: at most this many failures within ``window`` seconds; one more
    makes the instance FATAL (excluded from dispatch until an explicit
    ``restart_instance``).  ``stable_after``: a process that ran at least this
    long before dying resets the failure count.  ``initial``/``maximum``:
    backoff bounds in seconds; ``jitter``: up to this many seconds added.
    """

    enabled: bool = True
    limit: int = 5
    window: float = 60.0
    stable_after: float = 10.0
    initial: float = 0.1
    maximum: float = 10.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if isinstance(self.limit, bool) or not isinstance(self.limit, int) or self.limit < 0:
            raise ValueError(f"RestartPolicy.limit must be an int >= 0, got {self.limit!r}")
        self.window = check_seconds("RestartPolicy.window", self.window, positive=True, allow_none=False) or 0.0
        for name in ("stable_after", "initial", "maximum", "jitter"):
            setattr(self, name, check_seconds(f"RestartPolicy.{name}", getattr(self, name), allow_none=False))
        if self.maximum < self.initial:
            raise ValueError(f"RestartPolicy.maximum ({self.maximum}) must be >= initial ({self.initial})")
        # Composed from tenacity's small strategies: exponential growth, capped, plus jitter.
        self._retrying = Retrying(wait=wait_exponential(multiplier=self.initial, max=self.maximum)
                                  + wait_random(0, self.jitter))

    def backoff(self, attempt: int) -> float:
        """Seconds to wait before restart attempt ``attempt`` (1-based)."""
        state = RetryCallState(self._retrying, fn=None, args=(), kwargs={})
        state.attempt_number = attempt
        wait = self._retrying.wait
        return float(wait(state)) if wait is not None else 0.0


@dataclass
class FailureLog:
    """Per-slot record of recent failures, judged against a policy."""

    policy: RestartPolicy
    _failures: dict[int, collections.deque[float]] = field(default_factory=dict)

    def record(self, index: int, ran_for: float | None) -> int | None:
        """Note a failure of ``index``; return the restart attempt number, or None to give up."""
        now = time.monotonic()
        failures = self._failures.setdefault(index, collections.deque())
        if ran_for is not None and ran_for >= self.policy.stable_after:
            failures.clear()
        failures.append(now)
        while failures and now - failures[0] > self.policy.window:
            failures.popleft()
        if not self.policy.enabled or len(failures) > self.policy.limit:
            return None
        return len(failures)

    def reset(self, index: int) -> None:
        self._failures.pop(index, None)


class Supervisor:
    """Keeps a pool's slots running; see the module docs.

    ``wake``: called when a slot may have become usable (the dispatcher pumps);
    ``hopeless``: called when a slot gave up for good (the dispatcher then fails
    queued requests if no slot can ever serve them).
    """

    def __init__(self, table: SlotTable, policy: RestartPolicy, scheduler: Scheduler, executor: cf.Executor,
                 stats: Stats, notify: Notify, wake: Callable[[], None], hopeless: Callable[[], None], *,
                 start_timeout: float | None, min_size: int, max_idle: float | None,
                 max_requests: int | None, max_lifetime: float | None, stuck_timeout: float | None,
                 health_check_interval: float | None, oneshot: bool) -> None:
        self.table = table
        self.policy = policy
        self.failures = FailureLog(policy)
        self.scheduler = scheduler
        self.executor = executor
        self.stats = stats
        self.notify = notify
        self.wake = wake
        self.hopeless = hopeless
        self.start_timeout = start_timeout
        self.min_size = min_size
        self.max_idle = max_idle
        self.max_requests = max_requests
        self.max_lifetime = max_lifetime
        self.stuck_timeout = stuck_timeout
        self.health_check_interval = health_check_interval
        self.oneshot = oneshot
        self.closed = False
        self.growing = False
        self._epoch: list[int] = [0] * len(table)
        if stuck_timeout or health_check_interval:
            periods = [p for p in (health_check_interval, stuck_timeout and stuck_timeout / 4) if p]
            self._period = max(0.05, min(periods))
            self.scheduler.call_later(self._period, self._health_tick)

    # ------------------------------------------------------------ helpers
    def _bump(self, index: int) -> int:
        """Lock held.  A new decision about slot ``index``: older timers become void."""
        self._epoch[index] += 1
        return self._epoch[index]

    def _current(self, index: int, epoch: int) -> bool:
        return not self.closed and self._epoch[index] == epoch

    def _submit(self, fn: Callable[..., Any], *args: Any) -> None:
        try:
            self.executor.submit(fn, *args)
        except RuntimeError:  # the executor shut down: the pool is closing
            pass

    # ------------------------------------------------------------ events from instances
    def on_ready(self, inst: Instance) -> None:
        """A process became ready: arm its stability and lifetime timers (bound to its generation)."""
        generation = inst.generation
        with self.table.lock:
            slot = self.table[inst.index]
            slot.recycle_due = False
            self.growing = False

        def stable() -> None:
            if inst.generation == generation and inst.alive:
                self.failures.reset(inst.index)

        self.scheduler.call_later(self.policy.stable_after, stable)
        if self.max_lifetime:
            lifetime = self.max_lifetime * random.uniform(0.9, 1.0)  # jitter: no synchronised recycling
            self.scheduler.call_later(lifetime, lambda: self._lifetime_up(inst, generation))

    def on_exited(self, inst: Instance, info: dict[str, Any]) -> None:
        """A process exited outside a stop (reader thread: decide, never block)."""
        if self.closed:
            return
        if info.get("crashed"):
            self.stats.incr("crashes")
        retired = info.get("retired") is not None
        if retired or (self.oneshot and not info.get("crashed")):
            # Replaced on purpose (stuck, ignored an interrupt, input not consumed: counted as
            # a restart, not as a failure), or a one-shot process used up by its answer.
            with self.table.lock:
                slot = self.table[inst.index]
                if not slot.active or inst.state is not State.EXITED:
                    return
                epoch = self._bump(inst.index)
            self._submit(self._respawn, inst, epoch, retired)
            return
        ran_for = None if inst.ready_at is None else time.perf_counter() - inst.ready_at
        self.on_failure(inst, ran_for)

    def on_failure(self, inst: Instance, ran_for: float | None) -> None:
        """A process died or failed to start: back off and restart, or give up (FATAL)."""
        with self.table.lock:
            slot = self.table[inst.index]
            if self.closed or not slot.active or inst.state is not State.EXITED:
                return  # already handled (each failure is recorded once)
            epoch = self._bump(inst.index)
        attempt = self.failures.record(inst.index, ran_for)
        if attempt is None:
            if self.policy.enabled:
                if not inst.set_supervised_state(State.FATAL):
                    return
                log.error("instance %d is FATAL: %d failures within %ss (last exit code %s)", inst.index,
                          self.policy.limit + 1, self.policy.window, inst.last_exit_code,
                          extra={"instance": inst.index, "exit_code": inst.last_exit_code})
                self.notify("fatal", {"index": inst.index, "exit_code": inst.last_exit_code,
                                      "stderr_tail": inst.status()["stderr_tail"]})
            self.hopeless()
            return
        if not inst.set_supervised_state(State.BACKOFF):
            return
        delay = self.policy.backoff(attempt)
        log.info("instance %d restarting in %.2fs (attempt %d)", inst.index, delay, attempt,
                 extra={"instance": inst.index, "attempt": attempt, "delay": delay})
        self.notify("restarting", {"index": inst.index, "attempt": attempt, "delay": delay})
        self.scheduler.call_later(delay, lambda: self._submit(self._respawn, inst, epoch, True))

    def _respawn(self, inst: Instance, epoch: int, counted: bool) -> None:
        """Executor thread: start a new process, if this decision still stands."""
        if not self._current(inst.index, epoch) or inst.state not in (State.BACKOFF, State.EXITED):
            return  # superseded (restart_instance, shutdown) meanwhile
        if counted:
            inst.restarts += 1
            self.stats.incr("restarts")
        try:
            inst.start(self.start_timeout)
        except ToolPoolError as exc:
            if self._current(inst.index, epoch) and inst.state is State.EXITED:
                log.warning("instance %d restart failed: %s", inst.index, exc)
                self.on_failure(inst, None)

    # ------------------------------------------------------------ explicit restarts
    def restart(self, inst: Instance, timeout: float | None, why: str = "") -> None:
        """A caller's ``restart_instance``: supersedes any pending automatic restart.

        If it fails or is interrupted (Ctrl-C), the slot goes back to
        supervision instead of staying EXITED for good.
        """
        with self.table.lock:
            epoch = self._bump(inst.index)
            self.table[inst.index].active = True
        self.failures.reset(inst.index)
        self.stats.incr("restarts")
        try:
            inst.restart(timeout if timeout is not None else self.start_timeout, why=why)
        except BaseException:
            if inst.state is State.EXITED:
                self.on_failure(inst, None)
            elif inst.state is State.STOPPED and self._current(inst.index, epoch):
                # Interrupted between the stop and the start: start it from here instead.
                self._submit(self._start_again, inst, epoch)
            raise

    def _start_again(self, inst: Instance, epoch: int) -> None:
        if not self._current(inst.index, epoch) or not _in_state(inst, State.STOPPED):
            return
        try:
            inst.start(self.start_timeout)
        except ToolPoolError:
            if self._current(inst.index, epoch) and _in_state(inst, State.EXITED):
                self.on_failure(inst, None)

    def retire_if_on(self, inst: Instance, turn: int, why: str) -> None:
        """Scheduler: the request turn ``turn`` ignored its interrupt; replace the process."""
        if not self.closed and inst.retire(why, expect_turn=turn):
            log.warning("instance %d: %s; replacing its process", inst.index, why,
                        extra={"instance": inst.index})

    # ------------------------------------------------------------ recycling
    def after_request(self, slot: Slot) -> None:
        """Lock held.  A dispatched request finished on ``slot``: is a recycle due?"""
        if self.max_requests and slot.instance.served >= self.max_requests:
            slot.recycle_due = True

    def _lifetime_up(self, inst: Instance, generation: int) -> None:
        if inst.generation != generation or self.closed:
            return
        with self.table.lock:
            self.table[inst.index].recycle_due = True
        self.maybe_recycle(self.table[inst.index])

    def maybe_recycle(self, slot: Slot) -> bool:
        """Recycle ``slot`` now if it is due and free; True if it was taken for it."""
        if not slot.recycle_due:  # the common case, without the lock; rechecked below
            return False
        with self.table.lock:
            if (self.closed or not slot.recycle_due or slot.owner is not Owner.FREE
                    or slot.instance.state is not State.IDLE):
                return False
            slot.owner = Owner.MAINTENANCE
            slot.recycle_due = False
            epoch = self._bump(slot.index)
        log.info("recycling instance %d (%d requests served)", slot.index, slot.instance.served,
                 extra={"instance": slot.index})
        self._submit(self._recycle, slot, epoch)
        return True

    def _recycle(self, slot: Slot, epoch: int) -> None:
        inst = slot.instance
        try:
            if self._current(slot.index, epoch):
                inst.restart(self.start_timeout, why="recycled")
        except ToolPoolError as exc:
            log.warning("recycling instance %d failed: %s", slot.index, exc)
        finally:
            with self.table.lock:
                self.table.release(slot.index, Owner.MAINTENANCE)
            if inst.state is State.EXITED:
                self.on_failure(inst, None)
            self.wake()

    # ------------------------------------------------------------ probes and stuck detection
    def _health_tick(self) -> None:
        """Periodic only when stuck_timeout or health_check_interval is set."""
        if self.closed:
            return
        now = time.monotonic()
        for slot in self.table:
            inst = slot.instance
            if (self.stuck_timeout and inst.state is State.BUSY
                    and now - inst.last_output_at > self.stuck_timeout):
                turn = inst.current_turn
                if turn:
                    self.retire_if_on(inst, turn, f"stuck: no output while busy for {now - inst.last_output_at:.1f}s")
        if self.health_check_interval:
            for slot in self.table:
                with self.table.lock:
                    if not slot.dispatchable():
                        continue
                    slot.owner = Owner.MAINTENANCE
                self._submit(self._probe, slot)
        self.scheduler.call_later(self._period, self._health_tick)

    def _probe(self, slot: Slot) -> None:
        inst = slot.instance
        ok = inst.probe(timeout=max(1.0, self.health_check_interval or 1.0))
        if not ok and not self.closed:
            log.warning("instance %d failed its liveness probe; restarting it", inst.index)
            try:
                self.restart(inst, None, why="failed liveness probe")
            except ToolPoolError:
                pass
        with self.table.lock:
            self.table.release(slot.index, Owner.MAINTENANCE)
        self.wake()

    # ------------------------------------------------------------ elastic sizing
    def grow_slot(self) -> Slot | None:
        """Lock held.  A parked slot to start for waiting requests (one at a time)."""
        if self.growing or self.closed or all(s.active for s in self.table.slots):
            return None  # nothing parked (a fixed-size pool, or an elastic one at max_size)
        if any(s.active and s.instance.state in (State.STARTING, State.BACKOFF) for s in self.table):
            return None  # a process is already on its way
        for slot in self.table:
            if not slot.active and slot.owner is Owner.FREE and slot.instance.state is State.STOPPED:
                slot.active = True
                self.growing = True
                return slot
        return None

    def grow(self, slot: Slot) -> None:
        log.info("growing the pool: starting instance %d", slot.index, extra={"instance": slot.index})
        self._submit(self._grow, slot)

    def _grow(self, slot: Slot) -> None:
        try:
            slot.instance.start(self.start_timeout)
        except Exception as exc:
            # No retry from here: the next submit or completion tries again, so a tool
            # that cannot start does not spin.
            log.warning("growing the pool failed: %s", exc)
            slot.instance.stop(0.5)
            with self.table.lock:
                self.growing = False
                slot.active = False
            if isinstance(exc, ToolNotFoundError):
                self.hopeless()

    def idle_soon(self, slot: Slot) -> None:
        """A slot went idle: shrink it if it stays idle for ``max_idle``."""
        if not self.max_idle:
            return
        since = slot.instance.state_since
        self.scheduler.call_later(self.max_idle, lambda: self._idle_check(slot, since))

    def _idle_check(self, slot: Slot, since: float) -> None:
        inst = slot.instance
        with self.table.lock:
            if (self.closed or self.table.active_count() <= self.min_size or not slot.active
                    or slot.owner is not Owner.FREE or inst.state is not State.IDLE or inst.state_since != since):
                return
            slot.owner = Owner.MAINTENANCE  # stays active (not growable) until it has stopped
        log.info("shrinking the pool: instance %d idle for %ss", slot.index, self.max_idle,
                 extra={"instance": slot.index})
        self._submit(self._shrink, slot)

    def _shrink(self, slot: Slot) -> None:
        try:
            slot.instance.stop()
        finally:
            with self.table.lock:
                slot.active = False
                self.table.release(slot.index, Owner.MAINTENANCE)

    def close(self) -> None:
        with self.table.lock:
            self.closed = True
            for i in range(len(self._epoch)):
                self._bump(i)


def _in_state(inst: Instance, state: State) -> bool:
    """``inst.state is state``, read afresh (it changes under our feet: no narrowing)."""
    return inst.state is state
