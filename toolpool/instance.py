"""One slot of a pool: a tool process, its state, and its requests.

Data flows one way.  ``send`` encodes the prompt with the adapter and writes
it; the stdout reader thread feeds every chunk to the process's framer, which
cuts frames; each frame completes the oldest outstanding turn, whose Future
the caller is waiting on.  Decisions are made under ``self._lock``; futures
are resolved, callbacks run and processes signalled outside it.

Each started process is a *generation* (:class:`_Process`).  Callbacks from a
generation that is no longer current are ignored, so a late chunk from a
killed process can never reach a new request.

Turn accounting: every byte written belongs to a turn, and a process is
reused only when its turn has ended *and* the tool has consumed that turn's
input.  A turn cut short (interrupted, expired, its lease released) while
input is still unwritten or unread (the writer has bytes pending, the pipe
holds unread bytes, aider has not closed a ``{tag`` block) is not interrupted
at all: the process is *retired* (killed and replaced, never reused), because
whatever it had not read yet would be read as the next request's input.  A
frame nobody asked for (a turn the tool started itself) is *unsolicited*: it
goes to the listener, never to a waiting request, and while the tool runs such
a turn the instance is BUSY so no prompt is sent into it.
"""

from __future__ import annotations

import array
import collections
import concurrent.futures as cf
import dataclasses
import fcntl
import functools
import logging
import select
import signal
import termios
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from .adapters.base import RATE_LIMIT_EVENT, Adapter, Control, Cut, EventCallback, Frame, Framer
from .errors import (
    InstanceBusy,
    InstanceCrashed,
    InstanceUnavailable,
    ResponseTimeout,
    SpawnError,
    ToolNotFoundError,
    ToolPoolError,
)
from .redact import redact_text
from .response import Response, Timings
from .scheduler import Scheduler, Timer
from .states import LIVE_STATES, State, check_transition
from .streams import StopSignal, StreamReader, Tail, Writer
from .timeouts import check_seconds
from .transport import Transport, make_transport

log = logging.getLogger("toolpool.instance")

_RESPONSE_FIELDS = {f.name for f in dataclasses.fields(Response)}
#: How long to wait for stderr's last bytes once the process has exited, so a
#: crash report carries them.  Bounded: a grandchild may hold stderr open.
STDERR_SETTLE = 0.1

Listener = Callable[["Instance", str, dict[str, Any]], None]


class TurnHooks(Protocol):
    """Work around every request turn (a pool's workspace: a snapshot before, the changes after)."""

    def begin(self, slot: int) -> object:
        """Before the prompt is written (caller's thread); returns a token for :meth:`end`."""

    def end(self, slot: int, token: object, response: Response) -> None:
        """After the turn answered, before its caller sees the Response (no lock held); may fill it."""

CallLater = Callable[[float, Callable[[], None]], Timer]
Completion = tuple["cf.Future[Any]", Any, bool]  # (future, value, is_exception)


class _TurnFuture(cf.Future):  # type: ignore[type-arg]
    """A Future that knows whether its outcome was taken, so a response a caller
    got through the Future is not kept for :meth:`Instance.read` as well."""

    consumed = False
    number = 0  # the instance's turn number: to act on this turn only (interrupt, abandon)

    def result(self, timeout: float | None = None) -> Any:
        value = super().result(timeout)
        self.consumed = True
        return value

    def exception(self, timeout: float | None = None) -> BaseException | None:
        exc = super().exception(timeout)
        self.consumed = True
        return exc


class _Turn:
    """One exchange with the tool: readiness, a warm-up prompt, a probe, a request, or a
    turn the tool started by itself ("tool")."""

    __slots__ = ("kind", "prompt", "future", "on_event", "created", "sent_at", "first_byte_at", "failed",
                 "timings", "number", "cut_short", "token")

    def __init__(self, kind: str, prompt: str | None, on_event: EventCallback | None = None,
                 timings: Timings | None = None, number: int = 0) -> None:
        self.kind = kind
        self.number = number
        self.cut_short = False  # interrupted: its input must be fully consumed before reuse
        self.token: object = None  # what TurnHooks.begin returned for it
        self.prompt = prompt
        self.future: _TurnFuture = _TurnFuture()
        self.future.number = number
        self.future.set_running_or_notify_cancel()  # sent turns cannot be cancelled, only interrupted
        self.on_event = on_event
        self.created = time.perf_counter()
        self.sent_at = self.created
        self.first_byte_at: float | None = None
        self.failed = False
        self.timings = timings


class _Process:
    """One generation of an instance: a running process and its threads."""

    def __init__(self, transport: Transport, framer: Framer, generation: int) -> None:
        self.transport = transport
        self.framer = framer
        self.generation = generation
        self.stop = StopSignal()
        self.exited = threading.Event()
        self.readers: list[StreamReader] = []
        self.writer: Writer | None = None
        self.started_at = time.time()
        self.disposed = False
        self.dispose_lock = threading.Lock()
        self.input_error: str | None = None  # set when a write found the tool's input closed
        self.retired: str | None = None  # why this process is being replaced (never reused)
        self.control: Control | None = None


class Instance:
    """A supervised tool process in slot ``index``.  Thread-safe.

    Normally used through :class:`toolpool.ToolProcessPool`; usable alone.
    ``listener(instance, event, info)`` hears lifecycle events ("spawned",
    "ready", "exited", "start_failed", "stopped", "restarting",
    "unsolicited" with ``info["response"]``); ``on_idle(instance)`` is called
    (outside every lock) each time the instance becomes IDLE; ``call_later``
    schedules deferred work (the pool passes its scheduler's; alone, the
    instance runs a scheduler of its own, stopped with ``stop(final=True)``);
    ``run_call`` runs a framer's off-thread work (:attr:`Cut.calls`; the pool
    passes a worker pool's ``submit``; alone, a thread per call);
    ``turn_hooks`` run around every request turn (a pool's workspace).
    """

    def __init__(self, adapter: Adapter, index: int, listener: Listener | None = None, *,
                 on_idle: Callable[[Instance], None] | None = None,
                 call_later: CallLater | None = None,
                 run_call: Callable[[Callable[[], None]], Any] | None = None,
                 turn_hooks: TurnHooks | None = None,
                 on_answer: Callable[[Response], None] | None = None) -> None:
        self.adapter = adapter
        self.index = index
        self._listener = listener
        self._on_idle = on_idle
        self._call_later = call_later
        self._run_call = run_call
        self._hooks = turn_hooks
        self._on_answer = on_answer  # every request's Response, before its caller sees it (the pool's budget)
        self._observes = type(adapter).observe is not Adapter.observe  # most adapters do not
        self._hook_work: list[tuple[object, Response]] = []  # (token, response): TurnHooks.end to run
        self._own_scheduler: Scheduler | None = None
        self._lock = threading.Lock()
        self._state = State.STOPPED
        self._proc: _Process | None = None
        self._generation = 0
        self._turn_number = 0
        self._turns: collections.deque[_Turn] = collections.deque()  # sent, not yet answered
        self._unread: collections.deque[_Turn] = collections.deque()  # requests not yet returned by read()
        self.stderr = Tail(adapter.stderr_tail_bytes)
        # Figures for status and stats.
        self.started_at: float | None = None
        self.restarts = 0
        self.requests = 0
        self.errors = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.unsolicited = 0
        self.retirements = 0
        self.last_error: str | None = None
        self.last_exit_code: int | None = None
        self.busy_since: float | None = None
        self.state_since = time.time()
        self.served = 0  # requests answered by the current process (for max_requests)
        self.ready_at: float | None = None  # perf_counter when the current process became ready
        self.spawn_started_at: float | None = None
        self.last_output_at = time.monotonic()
        self._idle_waiters: list[Callable[[], None]] = []
        self._retired = False  # stopped for good (pool shut down): never start again
        # Bumped by every start and every stop: a start whose attempt is no longer current was
        # superseded (stopped, or restarted by someone else) and must not install its process.
        self._attempt = 0
        self._spawn_lock = threading.Lock()  # a spawn and a stop never interleave (see _spawn)
        self._stop_done = threading.Event()

    # ------------------------------------------------------------------ state
    @property
    def state(self) -> State:
        return self._state

    @property
    def pid(self) -> int | None:
        proc = self._proc
        return proc.transport.pid if proc is not None and self._state in LIVE_STATES else None

    @property
    def generation(self) -> int:
        """How many processes this slot has started (identifies the current one)."""
        return self._generation

    @property
    def alive(self) -> bool:
        return self._state in LIVE_STATES

    @property
    def current_turn(self) -> int:
        """The number of the request turn in progress (0 when none): to act on *that* turn only."""
        with self._lock:
            return self._head_request_number()

    def _head_request_number(self) -> int:
        for turn in self._turns:
            if turn.kind == "prompt":
                return turn.number
        return 0

    def _set_state(self, new: State) -> None:
        """Move to ``new``; call with the lock held.  The one place states change."""
        if new is self._state:
            return
        check_transition(self._state, new)
        self._state = new
        self.state_since = now = time.time()
        self.busy_since = now if new is State.BUSY else None

    def set_supervised_state(self, new: State) -> bool:
        """Move an EXITED instance to BACKOFF or FATAL (the supervisor decides).

        Returns False, changing nothing, if the instance is no longer EXITED
        (restarted or stopped by someone else meanwhile).
        """
        with self._lock:
            if self._state is not State.EXITED:
                return False
            self._set_state(new)
            return True

    def when_idle(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the instance is IDLE (now, if it is), or when it stops for good."""
        with self._lock:
            if self._state is not State.IDLE:
                self._idle_waiters.append(callback)
                return
        callback()

    def _became_idle(self) -> list[Callable[[], None]]:
        """Lock held.  The waiters to run now that the instance is IDLE."""
        if self._state is not State.IDLE:
            return []
        waiters, self._idle_waiters = self._idle_waiters, []
        return waiters

    def _idle_now(self, waiters: list[Callable[[], None]]) -> None:
        """Outside the lock, after a move to IDLE: tell who waits."""
        for waiter in waiters:
            waiter()
        if self._on_idle is not None:
            try:
                self._on_idle(self)
            except Exception:
                log.exception("on_idle callback failed for instance %d", self.index)

    def has_unread(self) -> bool:
        with self._lock:
            self._drop_consumed()
            return bool(self._unread)

    def _emit(self, event: str, **info: Any) -> None:
        if self._listener is not None:
            try:
                self._listener(self, event, info)
            except Exception:  # a listener bug must not kill a reader thread
                log.exception("toolpool listener failed on %s for instance %d", event, self.index)

    def _later(self, delay: float, fn: Callable[[], None]) -> Timer:
        if self._call_later is not None:
            return self._call_later(delay, fn)
        with self._lock:
            if self._own_scheduler is None:
                self._own_scheduler = Scheduler(name=f"toolpool-scheduler-instance-{self.index}")
            scheduler = self._own_scheduler
        return scheduler.call_later(delay, fn)

    # -------------------------------------------------------------- lifecycle
    def start(self, timeout: float | None = None) -> None:
        """Spawn the tool and wait until it is ready (and warmed up).

        Raises :class:`ToolNotFoundError` if the executable is missing, and
        :class:`SpawnError` if the tool exits during start-up or is not ready
        within ``timeout`` (default: the adapter's ``start_timeout``).  On
        failure nothing is left running and the instance is EXITED.  Raises
        :class:`InstanceBusy` if the instance is running, starting or stopping
        (``restart()`` stops, then starts).
        """
        timeout = check_seconds("timeout", timeout, positive=True)
        limit = self.adapter.start_timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        with self._lock:
            if self._retired:
                raise InstanceUnavailable(f"instance {self.index} belongs to a pool that was shut down")
            if self._state in (State.STARTING, State.IDLE, State.BUSY, State.STOPPING):
                raise InstanceBusy(f"instance {self.index} is {self._state.value}; it can only be started when "
                                   "stopped, exited or FATAL (restart() stops it first)")
            self._set_state(State.STARTING)
            self._attempt += 1
            attempt = self._attempt
            old, self._proc = self._proc, None
        if old is not None:
            self._dispose(old, grace=0.0)
        t0 = time.perf_counter()
        self.spawn_started_at = t0
        proc: _Process | None = None
        try:
            proc, ready = self._spawn(attempt)
            if ready is not None:
                self._await_start(ready, deadline, limit, "become ready")
            for prompt in self.adapter.warmup_prompts():
                data = self.adapter.encode(prompt)
                self._await_start(self._send(prompt, data, kind="warmup", state_ok=(State.STARTING,)), deadline,
                                  limit, f"answer warm-up prompt {prompt!r}")
            with self._lock:
                if self._proc is not proc or self._state is not State.STARTING or self._attempt != attempt:
                    if self._proc is proc and self._state is State.EXITED:  # a tool ready on spawn died at once
                        raise SpawnError(f"{self.adapter.name} (instance {self.index}) exited during start-up",
                                         self.last_exit_code, self._redacted(self.stderr.text()))
                    raise InstanceUnavailable(f"instance {self.index} was stopped while starting")
                self._set_state(State.IDLE)
                self.started_at = time.time()
                self.ready_at = time.perf_counter()
                self.served = 0
                waiters = self._became_idle()
        except BaseException as exc:
            self._abort_start(exc, proc, attempt)
            raise
        spawn_s = time.perf_counter() - t0
        log.info("instance %d ready: pid %d in %.3fs", self.index, proc.transport.pid, spawn_s,
                 extra={"instance": self.index, "pid": proc.transport.pid, "spawn_seconds": spawn_s})
        self._emit("ready", pid=proc.transport.pid, seconds=spawn_s, generation=proc.generation)
        self._idle_now(waiters)

    def _spawn(self, attempt: int) -> tuple[_Process, _Turn | None]:
        """Start a process; return it and the turn that completes when it is ready.

        Serialised with :meth:`stop` by ``_spawn_lock``: a start superseded by a stop
        (or by someone else's restart) never spawns a process at all, so a slot never
        runs two, not even for a moment.
        """
        with self._spawn_lock:
            with self._lock:
                if self._state is not State.STARTING or self._attempt != attempt:
                    raise InstanceUnavailable(f"instance {self.index} was stopped while starting")
            return self._spawn_locked(attempt)

    def _spawn_locked(self, attempt: int) -> tuple[_Process, _Turn | None]:
        adapter = self.adapter
        transport = make_transport(adapter.transport, adapter.command(self.index),
                                   adapter.environment(self.index),
                                   adapter.working_dir(self.index),
                                   adapter_env=adapter.env,
                                   memory_max=getattr(adapter, "memory_max", None))
        try:
            framer = adapter.framer_for(self.index)
            with self._lock:
                self._generation += 1
                proc = _Process(transport, framer, self._generation)
        except BaseException:
            _kill_transport(transport)  # nothing else owns it yet
            raise
        try:
            name = f"toolpool-{self.index}.{proc.generation}"
            proc.writer = Writer(transport.write_some, transport.stdin_fd, proc.stop,
                                 functools.partial(self._on_write_error, proc), f"{name}-writer")
            proc.control = Control(proc.writer.write, transport.signal_process, transport.signal_group,
                                   self._later, functools.partial(self._control_turn, proc),
                                   functools.partial(self._control_in_turn, proc))
            with self._lock:
                # Stopped (or restarted by someone else) while we spawned: undo.
                stopped = self._state is not State.STARTING or self._attempt != attempt
                ready: _Turn | None = None
                if not stopped:
                    self._proc = proc
                    self.stderr.clear()
                    if not adapter.ready_on_spawn:
                        # Registered before the readers start: a prompt printed at once
                        # must find its turn waiting.
                        ready = self._new_turn("ready", None)
                        self._turns.append(ready)
                        proc.framer.start_turn(None)
            if stopped:
                raise InstanceUnavailable(f"instance {self.index} was stopped while starting")
            proc.readers.append(StreamReader(transport.stdout_fd, _StdoutSink(self, proc), proc.stop,
                                             f"{name}-stdout", exit_fd=transport.exit_fd))
            if transport.stderr_fd is not None:
                proc.readers.append(StreamReader(transport.stderr_fd, _StderrSink(self, proc), proc.stop,
                                                 f"{name}-stderr"))
            for reader in proc.readers:
                reader.start()
        except BaseException:
            self._dispose(proc, grace=0.0)
            raise
        log.info("instance %d spawned pid %d: %s", self.index, transport.pid, adapter.name,
                 extra={"instance": self.index, "pid": transport.pid, "generation": proc.generation})
        self._emit("spawned", pid=transport.pid, generation=proc.generation)
        if ready is not None:
            hello = adapter.handshake()
            if hello:
                proc.writer.write(hello)
        return proc, ready

    def _new_turn(self, kind: str, prompt: str | None, on_event: EventCallback | None = None,
                  timings: Timings | None = None) -> _Turn:
        """Lock held."""
        self._turn_number += 1
        return _Turn(kind, prompt, on_event, timings, self._turn_number)

    def _control_turn(self, proc: _Process) -> int:
        with self._lock:
            return self._head_request_number() if proc is self._proc else -1

    def _control_in_turn(self, proc: _Process) -> bool:
        with self._lock:
            return proc is self._proc and self._head_request_number() != 0

    def _await_start(self, turn: _Turn, deadline: float, limit: float, what: str) -> None:
        try:
            turn.future.result(max(0.0, deadline - time.monotonic()))
        except cf.TimeoutError:
            with self._lock:
                partial = self._proc.framer.partial() if self._proc else b""
            raise SpawnError(f"{self.adapter.name} (instance {self.index}) did not {what} within {limit:g}s"
                             + self._startup_output(partial), None, self._redacted(self.stderr.text())) from None
        except InstanceCrashed as exc:
            raise SpawnError(f"{self.adapter.name} (instance {self.index}) exited during start-up "
                             f"(while waiting to {what})" + self._startup_output(exc.partial),
                             exc.exit_code, self._redacted(exc.stderr_tail)) from None

    def _startup_output(self, partial: bytes) -> str:
        """What the tool printed on stdout, and the adapter's hint: many tools report start-up errors there."""
        shown = partial[-500:].decode(self.adapter.encoding, "replace")
        hint = self.adapter.diagnose(shown, self.stderr.text())
        return f"; last output: {self._redacted(shown)!r}" + (f"; hint: {hint}" if hint else "")

    def _redacted(self, text: str) -> str:
        """``text`` with secrets masked: the tool may echo a key it was given."""
        return redact_text(text)

    def _abort_start(self, exc: BaseException, proc: _Process | None, attempt: int) -> None:
        """Undo a failed start: this attempt's process and turns only, never a later attempt's."""
        with self._lock:
            mine = self._attempt == attempt and (proc is None or self._proc is proc)
            if mine:
                self._proc = None
                if self._state is State.STARTING:
                    self._set_state(State.EXITED)
                self.last_error = self._redacted(str(exc))
                if isinstance(exc, SpawnError):
                    self.last_exit_code = exc.exit_code
                turns = list(self._turns)
                self._turns.clear()
            else:
                turns = []
        for t in turns:
            if not t.future.done():
                t.future.set_exception(exc if isinstance(exc, Exception) else ToolPoolError(str(exc)))
        if proc is not None:
            self._dispose(proc, grace=0.0)
        try:
            self.adapter.start_failed(self.index, exc)
        except Exception:
            log.exception("adapter %s start_failed() failed (instance %d)", self.adapter.name, self.index)
        if not isinstance(exc, (ToolNotFoundError, InstanceUnavailable, InstanceBusy)):  # not: stopped on purpose
            log.warning("instance %d failed to start: %s", self.index, self._redacted(str(exc)),
                        extra={"instance": self.index})
        self._emit("start_failed", error=self._redacted(str(exc)))

    def restart(self, timeout: float | None = None, stop_timeout: float = 5.0, why: str = "") -> None:
        """Stop the current process (if any) and start a new one; see :meth:`start`.

        ``why`` is recorded in ``last_error`` and in the error of a request
        that was pending.
        """
        self.stop(stop_timeout, reason=f"restarted ({why})" if why else "restarted")
        with self._lock:
            self.restarts += 1
        log.info("instance %d restarting", self.index, extra={"instance": self.index, "restarts": self.restarts})
        self._emit("restarting")
        self.start(timeout)

    def stop(self, timeout: float = 5.0, reason: str = "stopped", final: bool = False) -> None:
        """Stop the process: close stdin, grace, SIGTERM the group, grace, SIGKILL, reap.

        Requests still pending fail with :class:`InstanceUnavailable`.
        Returns when the process, its process group and the reader threads are
        gone (or ``timeout`` passed, after SIGKILL).  A second concurrent
        ``stop`` waits for the first.  ``final``: never start again.
        """
        timeout = check_seconds("timeout", timeout, allow_none=False) or 0.0
        with self._spawn_lock, self._lock:  # after a spawn in progress has installed its process
            self._retired = self._retired or final
            self._attempt += 1  # a start in progress is superseded
            failed: list[Completion] = []
            if self._state is State.STOPPED:
                waiters = self._take_all_waiters() if final else []
                proc, done, other = None, None, None
            elif self._state is State.STOPPING:
                waiters, proc, done, other = [], None, None, self._stop_done
            else:
                self._set_state(State.STOPPING)
                self._stop_done = done = threading.Event()
                proc, self._proc = self._proc, None
                failed = self._take_turns(InstanceUnavailable(f"instance {self.index} was {reason}"))
                waiters, other = [], None
        if other is not None:
            other.wait(timeout + 10.0)  # the first stop's SIGKILL wait is bounded too
            return
        if done is None:
            for waiter in waiters:
                waiter()
            self._close_own_scheduler(final)
            return
        self._resolve(failed)
        try:
            if proc is not None:
                self._dispose(proc, grace=timeout)
        finally:
            with self._lock:
                if self._state is State.STOPPING:
                    self._set_state(State.STOPPED)
                # For good: whoever waits for this instance to become idle must hear now.
                waiters = self._take_all_waiters() if self._retired else []
            done.set()
        for waiter in waiters:
            waiter()
        self._close_own_scheduler(final)
        self._emit("stopped")

    def _close_own_scheduler(self, final: bool) -> None:
        if final and self._own_scheduler is not None:
            self._own_scheduler.close()

    def _take_all_waiters(self) -> list[Callable[[], None]]:
        waiters, self._idle_waiters = self._idle_waiters, []
        return waiters

    def retire(self, reason: str, expect_turn: int | None = None) -> bool:
        """Kill the current process so that it is replaced, never reused; False if nothing to do.

        For a process whose input is in an unknown state (a turn cut short
        while the tool still read its prompt) or that ignored an interrupt.
        Pending requests fail with :class:`InstanceUnavailable` naming
        ``reason``; the pool's supervisor starts a new process at once,
        without counting a failure.  ``expect_turn``: only if that request
        turn is still the current one.
        """
        with self._lock:
            proc = self._proc
            if proc is None or self._state not in (State.IDLE, State.BUSY) or proc.retired is not None:
                return False
            if expect_turn is not None and self._head_request_number() != expect_turn:
                return False
            proc.retired = reason
            self.retirements += 1
        log.info("instance %d: replacing pid %d: %s", self.index, proc.transport.pid, reason,
                 extra={"instance": self.index, "pid": proc.transport.pid, "reason": reason})
        proc.transport.signal_group(signal.SIGKILL)
        return True

    def _dispose(self, proc: _Process, grace: float) -> None:
        """End a generation: shutdown order, then threads joined and fds closed."""
        with proc.dispose_lock:
            if proc.disposed:
                return
            proc.disposed = True
        t = proc.transport
        deadline = time.monotonic() + max(grace, 0.0)

        def exited(timeout: float) -> bool:
            if proc.readers:  # the stdout reader watches the exit descriptor and sets the event
                return proc.exited.wait(timeout)
            # A spawn undone before its readers started: nobody else will see the exit.
            if select.select([t.exit_fd], [], [], timeout)[0] and t.reap() is not None:
                proc.exited.set()
            return proc.exited.is_set()

        if not proc.exited.is_set() and grace > 0:
            t.close_stdin()
            exited(min(0.5, grace * 0.2))
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if proc.exited.is_set() or (not proc.readers and exited(0)):
                break
            t.signal_group(sig)
            if sig == signal.SIGTERM:
                t.signal_group(signal.SIGCONT)  # a stopped (SIGSTOP) tool acts on SIGTERM only once continued
            if sig == signal.SIGKILL:
                exited(5.0)
            else:
                exited(max(0.0, deadline - time.monotonic()))
        # The tool is gone; anything left in its group is an orphaned grandchild.
        t.signal_group(signal.SIGKILL)
        proc.stop.set()
        alive = []
        for reader in proc.readers:
            if reader is not threading.current_thread():
                reader.join(5.0)
                if reader.is_alive():
                    alive.append(reader.name)
        if proc.writer is not None:
            proc.writer.close()
        if t.reap() is None:  # the reader never saw the exit: wait on the exit fd, bounded
            select.select([t.exit_fd], [], [], 5.0)
            if t.reap() is None:
                log.error("instance %d: pid %d did not exit after SIGKILL; leaving it", self.index, t.pid)
        if alive:
            # Closing descriptors a thread still reads would let it read a reused fd number.
            log.error("instance %d: reader threads %s did not stop; their descriptors are left open",
                      self.index, alive)
            return
        t.close()
        proc.stop.close()

    # --------------------------------------------------------------- requests
    def send(self, prompt: str, *, on_event: EventCallback | None = None,
             timings: Timings | None = None, data: bytes | None = None,
             unread: bool = True) -> cf.Future[Response]:
        """Write ``prompt``; return a Future for its :class:`Response`.  Never blocks.

        ``data``: the prompt already encoded by the adapter (the pool encodes
        once, at its API edge); None to encode it here.  With ``unread=True``
        the response is also kept for :meth:`read`; callers that only use the
        Future pass False.

        Raises ValueError for a prompt the adapter cannot send safely,
        :class:`InstanceBusy` while the previous prompt is unanswered, and
        :class:`InstanceUnavailable` when no process is ready.
        """
        if data is None:
            data = self.adapter.encode(prompt)
        turn = self._send(prompt, data, kind="prompt", on_event=on_event, timings=timings, unread=unread)
        return turn.future

    def _send(self, prompt: str | None, data: bytes, *, kind: str, on_event: EventCallback | None = None,
              timings: Timings | None = None, state_ok: tuple[State, ...] = (State.IDLE,),
              unread: bool = False) -> _Turn:
        token = None
        if self._hooks is not None and kind == "prompt":
            if self._state not in state_ok:
                raise self._not_ready_error()
            token = self._hooks.begin(self.index)
        with self._lock:
            if self._state not in state_ok:
                raise self._not_ready_error()
            proc = self._proc
            assert proc is not None and proc.writer is not None
            turn = self._new_turn(kind, prompt, on_event, timings)
            turn.token = token
            self._turns.append(turn)
            if kind == "prompt":
                if unread:  # only callers that will read() it back; dispatch holds the Future
                    self._drop_consumed()
                    self._unread.append(turn)
                self.requests += 1
            if kind in ("prompt", "probe"):
                self._set_state(State.BUSY)
            proc.framer.start_turn(prompt, data)
            self.bytes_in += len(data)
            turn.sent_at = time.perf_counter()
            self.last_output_at = time.monotonic()  # silence counts from the prompt, not from the last answer
            if timings is not None and self.spawn_started_at is not None:
                timings.process_age = turn.sent_at - self.spawn_started_at
        try:
            proc.writer.write(data)
            if self.adapter.oneshot:
                proc.writer.close_input_when_drained(proc.transport.close_stdin)
        except BrokenPipeError as exc:
            self._on_write_error(proc, exc)
        return turn

    def _not_ready_error(self) -> ToolPoolError:
        state = self._state
        if state is State.BUSY and self._turns and self._turns[0].kind == "tool":
            return InstanceBusy(f"instance {self.index} is running a turn the tool started by itself; "
                                "wait for it to end (submit() queues the prompt until then)")
        if state is State.BUSY and self._turns and self._turns[0].failed:
            return InstanceBusy(f"instance {self.index} is still discarding the rest of a failed response "
                                "(the tool has not finished it yet); wait, or interrupt/restart it")
        if state is State.BUSY:
            return InstanceBusy(f"instance {self.index} has not answered its previous prompt yet; "
                                "read its response first, or use submit() to queue prompts")
        detail = f" (last exit code {self.last_exit_code})" if self.last_exit_code is not None else ""
        return InstanceUnavailable(f"instance {self.index} is {state.value}{detail}, not ready for a prompt; "
                                   f"restart_instance({self.index}) starts it again")

    def read(self, timeout: float | None = None) -> Response:
        """Wait for the oldest unread response of this instance.

        Blocks at most ``timeout`` seconds (None: until it arrives).  On timeout
        raises :class:`ResponseTimeout` and the response stays pending: a later
        ``read`` waits for the same one.  Raises :class:`InstanceCrashed` at
        once if the process dies first.
        """
        timeout = check_seconds("timeout", timeout)
        with self._lock:
            self._drop_consumed()
            if not self._unread:
                raise ToolPoolError(f"instance {self.index} has no response pending: call send_prompt first")
            turn = self._unread[0]
        return self._wait(turn, timeout)

    def _drop_consumed(self) -> None:
        """Lock held.  Forget responses whose caller already took them from the Future."""
        while self._unread and self._unread[0].future.done() and self._unread[0].future.consumed:
            self._unread.popleft()

    def _wait(self, turn: _Turn, timeout: float | None) -> Response:
        try:
            result: Response = turn.future.result(timeout)
            return result
        except cf.TimeoutError:
            with self._lock:
                partial = self._proc.framer.partial() if (self._proc and turn in self._turns) else b""
                closed = self._proc.input_error if self._proc else None
            log.info("instance %d: no response within %ss", self.index, timeout,
                     extra={"instance": self.index, "timeout": timeout, "partial_bytes": len(partial)})
            why = f"; the tool closed its input ({closed}), restart it" if closed else ""
            raise ResponseTimeout(
                f"instance {self.index} gave no complete response within {timeout}s; it is still pending "
                f"(read again to keep waiting, or interrupt/restart the instance){why}", partial,
                index=self.index) from None
        finally:
            if turn.future.done():
                with self._lock:
                    try:
                        self._unread.remove(turn)
                    except ValueError:
                        pass  # another reader returned it already

    def ask(self, prompt: str, timeout: float | None = None, *, on_event: EventCallback | None = None,
            data: bytes | None = None) -> Response:
        """Send ``prompt`` and wait at most ``timeout`` seconds for *its* response.

        On timeout the response stays pending for a later :meth:`read`.
        """
        timeout = check_seconds("timeout", timeout)
        if data is None:
            data = self.adapter.encode(prompt)
        return self._wait(self._send(prompt, data, kind="prompt", on_event=on_event, unread=True), timeout)

    def partial_output(self) -> bytes:
        """What has arrived so far of the response in progress (b"" if none)."""
        with self._lock:
            return self._proc.framer.partial() if (self._proc is not None and self._turns) else b""

    def discard_unread(self) -> int:
        """Forget responses nobody will read (e.g. a released lease's); return how many."""
        with self._lock:
            n = len(self._unread)
            self._unread.clear()
        return n

    def input_pending(self) -> bool:
        """True while the tool has not consumed all input written to it (see module docs)."""
        with self._lock:
            proc = self._proc
            return proc is not None and self._input_pending(proc)

    def _input_pending(self, proc: _Process) -> bool:
        """Lock held (the framer is read under it)."""
        if proc.framer.input_open():
            return True
        writer = proc.writer
        if writer is not None and writer.has_pending():
            return True
        if proc.transport.kind != "pipe" or self.adapter.unread_input_safe:
            return False  # a terminal's queue cannot be measured; prompts there are single short lines
        fd = proc.transport.stdin_fd
        if fd < 0:
            return False  # input closed (one-shot tools): nothing more will be read
        try:
            unread = array.array("i", [0])
            fcntl.ioctl(fd, termios.FIONREAD, unread, True)
            return unread[0] > 0
        except OSError:
            return False

    def interrupt(self, expect_turn: int | None = None) -> bool:
        """Cancel the request turn in progress.  False if there is nothing to cancel.

        ``expect_turn``: only if that turn (a :attr:`current_turn` value) is
        still the one in progress, so a late interrupt never hits the next
        request.  When the tool is still reading the turn's input, it is not
        interrupted but replaced (:meth:`retire`): the rest of the input would
        otherwise be read as new input.
        """
        with self._lock:
            if self._state is not State.BUSY or self._proc is None:
                return False
            number = self._head_request_number()
            if number == 0 or (expect_turn is not None and number != expect_turn):
                return False
            proc = self._proc
            for turn in self._turns:
                if turn.number == number:
                    turn.cut_short = True
            pending = self._input_pending(proc)
            if not pending and proc.framer.defer_interrupt():
                return True  # the framer interrupts at the next safe point
            cut = Cut() if pending else proc.framer.interrupt_sent()
        if pending:
            return self.retire("interrupted while the tool was still reading the prompt", number)
        assert proc.control is not None
        if cut.send:
            self._write(proc, cut.send)
        self.adapter.interrupt(proc.control)
        return True

    def control(self, request: Mapping[str, Any], timeout: float | None = 10.0) -> dict[str, Any]:
        """Send a control request to the running tool and wait for its answer (claude: ``set_model``,
        ``set_permission_mode``, ``interrupt``...; build them with :mod:`toolpool.adapters.claude_control`).

        Raises TypeError/NotImplementedError for a tool without a control protocol,
        :class:`InstanceUnavailable` when no process runs, ``TimeoutError`` when the tool
        does not answer within ``timeout``, and the adapter's error when it refuses.
        """
        timeout = check_seconds("timeout", timeout)
        with self._lock:
            proc = self._proc
            if proc is None or self._state not in (State.IDLE, State.BUSY):
                raise self._not_ready_error()
            future, data = proc.framer.begin_control(request)
        self._write(proc, data)
        try:
            return future.result(timeout)
        except cf.TimeoutError:
            raise TimeoutError(f"instance {self.index} did not answer the control request "
                               f"{request.get('subtype')!r} within {timeout}s") from None

    def probe(self, timeout: float) -> bool:
        """Check that an idle tool still answers (the adapter's liveness probe).

        Returns True if it answered within ``timeout`` seconds, or if there is
        nothing to check (no probe for this tool, or not IDLE); False if it did
        not answer, so the caller can recycle it.
        """
        data = self.adapter.liveness_probe()
        if data is None:
            return True
        try:
            turn = self._send(None, data, kind="probe")
        except (InstanceBusy, InstanceUnavailable):
            return True
        try:
            turn.future.result(timeout)
            return True
        except (cf.TimeoutError, ToolPoolError, OSError):
            return False

    def _write(self, proc: _Process, data: bytes) -> None:
        if proc.writer is None:
            return
        try:
            proc.writer.write(data)
        except BrokenPipeError as exc:
            self._on_write_error(proc, exc)

    # ------------------------------------------------- reader-thread callbacks
    def _on_data(self, proc: _Process, chunk: bytes) -> float | None:
        with self._lock:
            if proc is not self._proc:
                return None
            self.bytes_out += len(chunk)
            self.last_output_at = time.monotonic()
            head = self._turns[0] if self._turns else None
            if head is not None and head.first_byte_at is None:
                head.first_byte_at = time.perf_counter()
            step = self._framed(proc, head, functools.partial(proc.framer.feed, chunk))
        return self._act(*step)

    def _on_quiet(self, proc: _Process) -> float | None:
        with self._lock:
            if proc is not self._proc:
                return None
            step = self._framed(proc, self._turns[0] if self._turns else None, proc.framer.on_quiet)
        return self._act(*step)

    def _framed(self, proc: _Process, head: _Turn | None, call: Callable[[], Cut]) -> tuple[
            _Process, Cut, _Turn | None, list[Completion], list[Response], str | None, bool, bool,
            list[Callable[[], None]]]:
        """Lock held.  Run one framer call and apply what it found; return what ``_act`` then does."""
        was_busy = self._state is State.BUSY
        cut = call()
        done, unsolicited, retire = self._apply(proc, cut)
        idle = was_busy and self._state is State.IDLE
        waiters = self._became_idle() if idle else []
        interrupt = cut.interrupt and self._state is State.BUSY
        return proc, cut, head, done, unsolicited, retire, interrupt, idle, waiters

    def _act(self, proc: _Process, cut: Cut, head: _Turn | None, done: list[Completion],
             unsolicited: list[Response], retire: str | None, interrupt: bool, idle: bool,
             waiters: list[Callable[[], None]]) -> float | None:
        """Outside the lock: carry out what a framer call found (the same for data and quiet);
        return the quiet period it asks for."""
        if cut.send:
            self._write(proc, cut.send)
        for call in cut.calls:
            self._call(proc, call)
        if cut.events:
            self._events(head, cut.events)
        if self._hook_work:
            self._end_hooks()
        self._after_frames(proc, unsolicited, retire)
        if interrupt:
            self.interrupt()
        if idle:
            self._idle_now(waiters)
        self._resolve(done)  # last: the woken caller does not wait for the rest of this
        return cut.quiet

    def _call(self, proc: _Process, call: Callable[[], bytes]) -> None:
        """Run a framer's off-thread work; write what it returns if the process is still the current one."""
        def run() -> None:
            try:
                data = call()
            except Exception:
                log.exception("instance %d: a tool request handler failed", self.index)
                return
            if data and proc is self._proc:
                self._write(proc, data)

        if self._run_call is not None:
            try:
                self._run_call(run)
                return
            except RuntimeError:  # the pool's workers shut down: the pool is closing
                return
        threading.Thread(target=run, name=f"toolpool-call-{self.index}", daemon=True).start()

    def _after_frames(self, proc: _Process, unsolicited: list[Response], retire: str | None) -> None:
        for response in unsolicited:
            log.info("instance %d: the tool ran a turn by itself (%d bytes); passed to subscribers",
                     self.index, len(response.raw), extra={"instance": self.index})
            self._emit("unsolicited", response=response)
        if retire is not None:
            self.retire(retire)

    def _events(self, turn: _Turn | None, events: list[dict[str, Any]]) -> None:
        """Stream events to the running request's callback; a rate limit also goes to the listener."""
        callback = turn.on_event if turn is not None else None
        for event in events:
            if event.get("type") == RATE_LIMIT_EVENT:
                self._emit("rate_limited", status=event.get("status"), retry_after=event.get("retry_after"))
            if callback is not None:
                try:
                    callback(event)
                except Exception:
                    log.exception("on_event callback failed (instance %d)", self.index)

    def _end_hooks(self) -> None:
        with self._lock:
            work, self._hook_work = self._hook_work, []
        for token, response in work:
            if self._hooks is not None:
                try:
                    self._hooks.end(self.index, token, response)
                except Exception as exc:
                    log.exception("instance %d: the turn hook failed", self.index)
                    response.meta["workspace_error"] = self._redacted(str(exc))
            if self._on_answer is not None:
                try:
                    self._on_answer(response)
                except Exception:
                    log.exception("instance %d: the answer callback failed", self.index)

    def _on_stderr(self, proc: _Process, chunk: bytes) -> None:
        with self._lock:
            if proc is self._proc:
                self.stderr.append(chunk)

    def _on_exit(self, proc: _Process) -> None:
        for reader in proc.readers[1:]:  # let stderr's last words arrive first
            reader.eof.wait(STDERR_SETTLE)
        with self._lock:
            code = proc.transport.reap()
            proc.exited.set()
            if proc is not self._proc:
                return
            self.last_exit_code = code
            prompted = self.served > 0 or any(t.kind == "prompt" for t in self._turns)
            cut = proc.framer.on_exit(code)
            done, unsolicited, _ = self._apply(proc, cut)
            expected = self._state in (State.STOPPING, State.STOPPED)
            retired = proc.retired
            if retired is not None:
                error: ToolPoolError = InstanceUnavailable(f"instance {self.index} was restarted ({retired})")
            else:
                error = InstanceCrashed(self.index, code, self._redacted(self.stderr.text()),
                                        proc.framer.partial())
            failed = self._take_turns(error)
            done += failed
            # A one-shot process ends with its prompt, whatever its exit code (a bad prompt
            # fails that request, not the slot); exiting before any prompt is a crash.
            crashed = retired is None and (not self.adapter.oneshot or not prompted)
            if not expected:
                if crashed or (failed and retired is None):
                    self.last_error = str(error)
                self._set_state(State.EXITED)
        # Orphaned grandchildren go now, not at the next restart.
        proc.transport.signal_group(signal.SIGKILL)
        if self._hook_work:
            self._end_hooks()
        self._resolve(done)
        self._after_frames(proc, unsolicited, None)
        if not expected:
            log.log(logging.WARNING if crashed else logging.DEBUG, "instance %d: pid %d exited with code %s",
                    self.index, proc.transport.pid, code,
                    extra={"instance": self.index, "pid": proc.transport.pid, "exit_code": code})
            self._emit("exited", exit_code=code, crashed=crashed, retired=retired, generation=proc.generation,
                       stderr_tail=self._redacted(self.stderr.text()))

    def _on_reader_error(self, proc: _Process, exc: BaseException) -> None:
        """A bug (in a framer, say) stopped the stdout reader: nothing would ever be read again.

        Fail what is pending, kill the process and report it as a crash, so the
        supervisor replaces it instead of the instance hanging BUSY forever.
        """
        log.error("instance %d: reading the tool's output failed: %r", self.index, exc,
                  exc_info=(type(exc), exc, exc.__traceback__), extra={"instance": self.index})
        with self._lock:
            if proc is not self._proc or self._state not in (State.STARTING, State.IDLE, State.BUSY):
                return
            failed = self._take_turns(ToolPoolError(
                f"instance {self.index}: internal error while reading the tool's output ({exc!r}); the process "
                "was killed (see the toolpool log for the traceback)"))
            self.last_error = f"reader error: {exc!r}"
            self._set_state(State.EXITED)
        proc.transport.signal_group(signal.SIGKILL)
        self._resolve(failed)
        self._emit("exited", exit_code=None, crashed=True, retired=None, generation=proc.generation,
                   stderr_tail=self._redacted(self.stderr.text()))

    def _on_write_error(self, proc: _Process, exc: BaseException) -> None:
        """The tool's input is closed: note it, decide nothing here.

        Usually the tool is dying, and its exit fails the pending turn with
        :class:`InstanceCrashed` and the real exit code.  A tool that closed
        its input and lives on keeps the turn pending until the caller's
        deadline (its ResponseTimeout says so) or stuck handling.  Never
        waits: this may run on ``proc``'s own reader thread.
        """
        with self._lock:
            if proc is not self._proc or proc.input_error is not None:
                return
            proc.input_error = str(exc) or exc.__class__.__name__
        log.info("instance %d: the tool closed its input (%s)", self.index, exc, extra={"instance": self.index})

    # ------------------------------------------------------------- plumbing
    def _apply(self, proc: _Process, cut: Cut) -> tuple[list[Completion], list[Response], str | None]:
        """Act on what the framer found; lock held.

        Returns the completions to resolve, the unsolicited responses to hand
        to the listener, and a reason to retire the process (a turn cut short
        whose input was not all consumed), all to act on outside the lock.
        """
        done: list[Completion] = []
        unsolicited: list[Response] = []
        retire: str | None = None
        if cut.tool_turn and self._state is State.IDLE and not self._turns:
            # The tool began a turn of its own: hold prompts back until it ends.
            self._turns.append(self._new_turn("tool", None))
            self._set_state(State.BUSY)
        for frame in cut.frames:
            if frame.unsolicited or not self._turns or (self._turns[0].kind == "tool" and frame.final):
                if self._turns and self._turns[0].kind == "tool":
                    self._turns.popleft()
                self.unsolicited += 1
                unsolicited.append(self._response(None, frame, unsolicited=True))
                continue
            turn = self._turns[0]
            if frame.error is not None and not turn.failed:
                turn.failed = True
                if turn.kind == "prompt":
                    self.errors += 1
                    self.last_error = self._redacted(str(frame.error))
                done.append((turn.future, frame.error, True))
            if frame.final:
                self._turns.popleft()
                if turn.kind == "prompt":
                    self.served += 1
                    if turn.cut_short and proc.writer is not None and proc.writer.has_pending():
                        retire = "a turn was cut short before all of its input was written"
                if not turn.failed:
                    done.append((turn.future, self._result(turn, frame), False))
        # A one-shot process is used up by its answer: it stays BUSY until it exits,
        # and the pool then replaces it.
        if not self._turns and self._state is State.BUSY and not self.adapter.oneshot:
            self._set_state(State.IDLE)
        return done, unsolicited, retire

    def _result(self, turn: _Turn, frame: Frame) -> Any:
        if turn.kind != "prompt":
            return frame
        now = time.perf_counter()
        timings = turn.timings or Timings()
        timings.first_byte = None if turn.first_byte_at is None else turn.first_byte_at - turn.sent_at
        timings.total = timings.acquire + (now - turn.sent_at)  # acquire already includes queueing
        response = self._response(turn, frame)
        response.elapsed = now - turn.sent_at
        response.timings = timings
        if self._hooks is not None or self._on_answer is not None:
            self._hook_work.append((turn.token, response))
        if log.isEnabledFor(logging.DEBUG):
            log.debug("instance %d answered in %.6fs (queued %.6fs, spawn %.6fs, first byte %s, %s)", self.index,
                      timings.total, timings.queued, timings.spawn,
                      "-" if timings.first_byte is None else f"{timings.first_byte:.6f}s",
                      "warm" if timings.warm else "cold",
                      extra={"instance": self.index, "timings": timings.as_dict()})
        return response

    def _response(self, turn: _Turn | None, frame: Frame, unsolicited: bool = False) -> Response:
        response = Response(text=frame.text, raw=frame.raw, index=self.index, elapsed=0.0,
                            prompt=turn.prompt if turn is not None else None, unsolicited=unsolicited)
        for key, value in frame.fields.items():  # usually empty for REPLs
            if key in _RESPONSE_FIELDS:
                setattr(response, key, value)
            else:
                response.meta[key] = value
        if not unsolicited and self._observes:
            try:
                self.adapter.observe(self.index, response)
            except Exception:  # an adapter bug must not take the reader thread down
                log.exception("adapter %s observe() failed (instance %d)", self.adapter.name, self.index)
        return response

    def _take_turns(self, error: BaseException) -> list[Completion]:
        """Fail every outstanding turn with ``error``; lock held."""
        done: list[Completion] = [(t.future, error, True) for t in self._turns if not t.failed]
        if done and any(t.kind == "prompt" for t in self._turns):
            self.errors += 1
            self.last_error = str(error)
        self._turns.clear()
        if self._state is State.BUSY:
            self._set_state(State.IDLE)
        return done

    @staticmethod
    def _resolve(done: list[Completion]) -> None:
        for future, value, is_exc in done:
            if future.done():
                continue
            if is_exc:
                future.set_exception(value)
            else:
                future.set_result(value)

    # ---------------------------------------------------------------- status
    def status(self) -> dict[str, Any]:
        with self._lock:
            proc = self._proc
            alive = self._state in LIVE_STATES
            return {
                "index": self.index,
                "pid": proc.transport.pid if (proc and alive) else None,
                "state": self._state.value,
                "alive": alive,
                "started_at": self.started_at,
                "state_since": self.state_since,
                "busy_since": self.busy_since,
                "generation": self._generation,
                "restarts": self.restarts,
                "requests": self.requests,
                "errors": self.errors,
                "pending": len(self._turns),
                "bytes_in": self.bytes_in,
                "bytes_out": self.bytes_out,
                "last_error": self.last_error,
                "last_exit_code": self.last_exit_code,
                "stderr_tail": self._redacted(self.stderr.text()),
            }


def _kill_transport(transport: Transport) -> None:
    """Clean up a transport nothing else owns yet (a spawn that failed half-way)."""
    transport.signal_group(signal.SIGKILL)
    select.select([transport.exit_fd], [], [], 5.0)
    transport.reap()
    transport.close()


class _StdoutSink:
    def __init__(self, instance: Instance, proc: _Process) -> None:
        self._i, self._p = instance, proc

    def on_data(self, chunk: bytes) -> float | None:
        return self._i._on_data(self._p, chunk)

    def on_quiet(self) -> float | None:
        return self._i._on_quiet(self._p)

    def on_eof(self) -> None:
        pass  # the exit descriptor, not EOF, says the process is gone

    def on_exit(self) -> None:
        self._i._on_exit(self._p)

    def on_error(self, exc: BaseException) -> None:
        self._i._on_reader_error(self._p, exc)


class _StderrSink:
    def __init__(self, instance: Instance, proc: _Process) -> None:
        self._i, self._p = instance, proc

    def on_data(self, chunk: bytes) -> float | None:
        self._i._on_stderr(self._p, chunk)
        return None

    def on_quiet(self) -> None:
        pass

    def on_eof(self) -> None:
        pass

    def on_exit(self) -> None:
        pass

    def on_error(self, exc: BaseException) -> None:
        log.error("instance %d: reading stderr failed: %r", self._i.index, exc)
