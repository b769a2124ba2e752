"""One slot of a pool: a tool process, its state, and its requests.

Data flows one way.  ``send`` encodes the prompt with the adapter and writes
it; the stdout reader thread feeds every chunk to the process's framer, which
cuts frames; each frame completes the oldest outstanding turn, whose Future
the caller is waiting on.  Decisions are made under ``self._lock``; futures
are resolved, callbacks run and processes signalled outside it.

Each started process is a *generation* (:class:`_Process`).  Callbacks from a
generation that is no longer current are ignored, so a late chunk from a
killed process can never reach a new request.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import dataclasses
import logging
import select
import signal
import threading
import time
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

from .adapters.base import Adapter, Control, EventCallback, Frame, Framer
from .errors import (InstanceBusy, InstanceCrashed, InstanceUnavailable, ResponseTimeout, SpawnError,
                     ToolNotFoundError, ToolPoolError)
from .response import Response, Timings
from .states import LIVE_STATES, State, check_transition
from .streams import StopSignal, StreamReader, Tail, Writer
from .transport import Transport, make_transport

log = logging.getLogger("toolpool.instance")

_RESPONSE_FIELDS = {f.name for f in dataclasses.fields(Response)}
#: How long to wait for stderr's last bytes once the process has exited, so a
#: crash report carries them.  Bounded: a grandchild may hold stderr open.
STDERR_SETTLE = 0.1

Listener = Callable[["Instance", str, Dict[str, Any]], None]
Completion = Tuple[cf.Future, Any, bool]  # (future, value, is_exception)


class _TurnFuture(cf.Future):
    """A Future that knows whether its outcome was taken, so a response a caller
    got through the Future is not kept for :meth:`Instance.read` as well."""

    consumed = False

    def result(self, timeout: Optional[float] = None) -> Any:
        value = super().result(timeout)
        self.consumed = True
        return value

    def exception(self, timeout: Optional[float] = None) -> Optional[BaseException]:
        exc = super().exception(timeout)
        self.consumed = True
        return exc


class _Turn:
    """One exchange with the tool: readiness, a warm-up prompt, or a request."""

    __slots__ = ("kind", "prompt", "future", "on_event", "created", "sent_at", "first_byte_at", "failed",
                 "timings")

    def __init__(self, kind: str, prompt: Optional[str], on_event: Optional[EventCallback] = None,
                 timings: Optional[Timings] = None) -> None:
        self.kind = kind
        self.prompt = prompt
        self.future: _TurnFuture = _TurnFuture()
        self.future.set_running_or_notify_cancel()  # sent turns cannot be cancelled, only interrupted
        self.on_event = on_event
        self.created = time.perf_counter()
        self.sent_at = self.created
        self.first_byte_at: Optional[float] = None
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
        self.readers: List[StreamReader] = []
        self.writer: Optional[Writer] = None
        self.started_at = time.time()
        self.disposed = False
        self.dispose_lock = threading.Lock()
        self.input_error: Optional[str] = None  # set when a write found the tool's input closed


class Instance:
    """A supervised tool process in slot ``index``.  Thread-safe.

    Normally used through :class:`toolpool.ToolProcessPool`; usable alone.
    """

    def __init__(self, adapter: Adapter, index: int, listener: Optional[Listener] = None) -> None:
        self.adapter = adapter
        self.index = index
        self._listener = listener
        self._lock = threading.Lock()
        self._state = State.STOPPED
        self._proc: Optional[_Process] = None
        self._generation = 0
        self._turns: Deque[_Turn] = collections.deque()  # sent, not yet answered
        self._unread: Deque[_Turn] = collections.deque()  # requests not yet returned by read()
        self.stderr = Tail(adapter.stderr_tail_bytes)
        # Figures for status and stats.
        self.started_at: Optional[float] = None
        self.restarts = 0
        self.requests = 0
        self.errors = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.last_error: Optional[str] = None
        self.last_exit_code: Optional[int] = None
        self.busy_since: Optional[float] = None
        self.state_since = time.time()
        self.served = 0  # requests answered by the current process (for max_requests)
        self.ready_at: Optional[float] = None  # perf_counter when the current process became ready
        self.spawn_started_at: Optional[float] = None
        self.last_output_at = time.monotonic()
        self._idle_waiters: List[Callable[[], None]] = []
        self._retired = False  # stopped for good (pool shut down): never start again
        self._stop_done = threading.Event()

    # ------------------------------------------------------------------ state
    @property
    def state(self) -> State:
        return self._state

    @property
    def pid(self) -> Optional[int]:
        proc = self._proc
        return proc.transport.pid if proc is not None and self._state in LIVE_STATES else None

    @property
    def generation(self) -> int:
        """How many processes this slot has started (identifies the current one)."""
        return self._generation

    @property
    def alive(self) -> bool:
        return self._state in LIVE_STATES

    def _set_state(self, new: State) -> None:
        """Move to ``new``; call with the lock held.  The one place states change."""
        if new is self._state:
            return
        check_transition(self._state, new)
        self._state = new
        self.state_since = time.time()
        self.busy_since = time.time() if new is State.BUSY else None

    def set_supervised_state(self, new: State) -> bool:
        """Move an EXITED instance to BACKOFF or FATAL (the pool's supervisor decides).

        Returns False, changing nothing, if the instance is no longer EXITED
        (restarted or stopped by someone else meanwhile).
        """
        with self._lock:
            if self._state is not State.EXITED:
                return False
            self._set_state(new)
            return True

    def when_idle(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the instance is IDLE (now, if it is).  Called outside locks."""
        with self._lock:
            if self._state is not State.IDLE:
                self._idle_waiters.append(callback)
                return
        callback()

    def _take_idle_waiters(self) -> List[Callable[[], None]]:
        """Lock held.  The waiters to run now that the instance is IDLE."""
        return self._take_all_waiters() if self._state is State.IDLE else []

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

    # -------------------------------------------------------------- lifecycle
    def start(self, timeout: Optional[float] = None) -> None:
        """Spawn the tool and wait until it is ready (and warmed up).

        Raises :class:`ToolNotFoundError` if the executable is missing, and
        :class:`SpawnError` if the tool exits during start-up or is not ready
        within ``timeout`` (default: the adapter's ``start_timeout``).  On
        failure nothing is left running and the instance is EXITED.  Raises
        :class:`InstanceBusy` if the instance is running, starting or stopping
        (``restart()`` stops, then starts).
        """
        limit = self.adapter.start_timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        with self._lock:
            if self._retired:
                raise InstanceUnavailable(f"instance {self.index} belongs to a pool that was shut down")
            if self._state in (State.STARTING, State.IDLE, State.BUSY, State.STOPPING):
                raise InstanceBusy(f"instance {self.index} is {self._state.value}; it can only be started when "
                                   "stopped, exited or FATAL (restart() stops it first)")
            self._set_state(State.STARTING)
            old, self._proc = self._proc, None
        if old is not None:
            self._dispose(old, grace=0.0)
        t0 = time.perf_counter()
        self.spawn_started_at = t0
        proc: Optional[_Process] = None
        try:
            proc, ready = self._spawn()
            if ready is not None:
                self._await_start(ready, deadline, limit, "become ready")
            for prompt in self.adapter.warmup_prompts():
                self._await_start(self._send(prompt, kind="warmup", state_ok=(State.STARTING,)), deadline, limit,
                                  f"answer warm-up prompt {prompt!r}")
            with self._lock:
                if self._proc is not proc or self._state is not State.STARTING:
                    if self._proc is proc and self._state is State.EXITED:  # a tool ready on spawn died at once
                        raise SpawnError(f"{self.adapter.name} (instance {self.index}) exited during start-up",
                                         self.last_exit_code, self.stderr.text())
                    raise InstanceUnavailable(f"instance {self.index} was stopped while starting")
                self._set_state(State.IDLE)
                self.started_at = time.time()
                self.ready_at = time.perf_counter()
                self.served = 0
                waiters = self._take_idle_waiters()
        except BaseException as exc:
            self._abort_start(exc, proc)
            raise
        for waiter in waiters:
            waiter()
        spawn_s = time.perf_counter() - t0
        log.info("instance %d ready: pid %d in %.3fs", self.index, proc.transport.pid, spawn_s,
                 extra={"instance": self.index, "pid": proc.transport.pid, "spawn_seconds": spawn_s})
        self._emit("ready", pid=proc.transport.pid, seconds=spawn_s)

    def _spawn(self) -> Tuple[_Process, Optional[_Turn]]:
        """Start a process; return it and the turn that completes when it is ready."""
        adapter = self.adapter
        transport = make_transport(adapter.transport, adapter.command(self.index),
                                   adapter.environment(self.index), adapter.cwd)
        try:
            framer = adapter.new_framer()
            with self._lock:
                self._generation += 1
                proc = _Process(transport, framer, self._generation)
        except BaseException:
            _kill_transport(transport)  # nothing else owns it yet
            raise
        try:
            with self._lock:
                stopped = self._state is not State.STARTING  # stopped while we spawned: undo
                ready: Optional[_Turn] = None
                if not stopped:
                    self._proc = proc
                    self.stderr.clear()
                    if not adapter.ready_on_spawn:
                        # Registered before the readers start: a prompt printed at once
                        # must find its turn waiting.
                        ready = _Turn("ready", None)
                        self._turns.append(ready)
                        proc.framer.start_turn(None)
            if stopped:
                raise InstanceUnavailable(f"instance {self.index} was stopped while starting")
            name = f"toolpool-{self.index}.{proc.generation}"
            proc.writer = Writer(transport.write_some, transport.stdin_fd, proc.stop,
                                 lambda exc, p=proc: self._on_write_error(p, exc), f"{name}-writer")
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
        from .status import redact_text, secret_values  # the tool may echo a key it was given

        return redact_text(text, secret_values(self.adapter.secret_env()))

    def _abort_start(self, exc: BaseException, proc: Optional[_Process]) -> None:
        """Undo a failed start: this attempt's process and turns only."""
        with self._lock:
            mine = proc is None or self._proc is proc
            if mine:
                self._proc = None
                if self._state is State.STARTING:
                    self._set_state(State.EXITED)
                self.last_error = str(exc)
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
        if not isinstance(exc, (ToolNotFoundError, InstanceUnavailable, InstanceBusy)):  # not: stopped on purpose
            log.warning("instance %d failed to start: %s", self.index, exc, extra={"instance": self.index})
        self._emit("start_failed", error=str(exc))

    def restart(self, timeout: Optional[float] = None, stop_timeout: float = 5.0, why: str = "") -> None:
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
        with self._lock:
            self._retired = self._retired or final
            if self._state is State.STOPPED:
                waiters = self._take_all_waiters() if final else []
                proc, failed, done, other = None, [], None, None
            elif self._state is State.STOPPING:
                waiters, proc, failed, done, other = [], None, [], None, self._stop_done
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
                # Otherwise they wait for the next start (queued messages survive a restart).
                waiters = self._take_all_waiters() if self._retired else []
            done.set()
        # Anyone waiting for this instance to become idle learns now that it will not.
        for waiter in waiters:
            waiter()
        self._emit("stopped")

    def release_waiters(self) -> None:
        """Run every when_idle callback now: the instance will not become idle by itself
        (FATAL, or dead with restarts disabled).  They find it unavailable and fail their work."""
        with self._lock:
            waiters = self._take_all_waiters()
        for waiter in waiters:
            waiter()

    def _take_all_waiters(self) -> List[Callable[[], None]]:
        waiters, self._idle_waiters = self._idle_waiters, []
        return waiters

    def _dispose(self, proc: _Process, grace: float) -> None:
        """End a generation: shutdown order, then threads joined and fds closed."""
        with proc.dispose_lock:
            if proc.disposed:
                return
            proc.disposed = True
        t = proc.transport
        deadline = time.monotonic() + max(grace, 0.0)
        if not proc.exited.is_set() and grace > 0:
            t.close_stdin()
            proc.exited.wait(min(0.5, grace * 0.2))
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if proc.exited.is_set():
                break
            t.signal_group(sig)
            if sig == signal.SIGTERM:
                t.signal_group(signal.SIGCONT)  # a stopped (SIGSTOP) tool acts on SIGTERM only once continued
            if sig == signal.SIGKILL:
                proc.exited.wait(5.0)
            else:
                proc.exited.wait(max(0.0, deadline - time.monotonic()))
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
    def send(self, prompt: str, *, on_event: Optional[EventCallback] = None,
             timings: Optional[Timings] = None, data: Optional[bytes] = None, unread: bool = True) -> cf.Future:
        """Write ``prompt``; return a Future for its :class:`Response`.  Never blocks.

        With ``unread=True`` the response is also kept for :meth:`read`;
        callers that only use the Future pass False.

        Raises ValueError for a prompt the adapter cannot send safely,
        :class:`InstanceBusy` while the previous prompt is unanswered, and
        :class:`InstanceUnavailable` when no process is ready.
        """
        turn = self._send(prompt, kind="prompt", on_event=on_event, timings=timings, data=data, unread=unread)
        return turn.future

    def _send(self, prompt: str, *, kind: str, on_event: Optional[EventCallback] = None,
              timings: Optional[Timings] = None, state_ok: Tuple[State, ...] = (State.IDLE,),
              data: Optional[bytes] = None, unread: bool = False) -> _Turn:
        if data is None:
            data = self.adapter.encode(prompt)
        with self._lock:
            if self._state not in state_ok:
                raise self._not_ready_error()
            proc = self._proc
            assert proc is not None and proc.writer is not None
            turn = _Turn(kind, prompt, on_event, timings)
            self._turns.append(turn)
            if kind == "prompt":
                if unread:  # only callers that will read() it back; dispatch holds the Future
                    self._drop_consumed()
                    self._unread.append(turn)
                self.requests += 1
                self._set_state(State.BUSY)
            proc.framer.start_turn(prompt)
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
        if state is State.BUSY and self._turns and self._turns[0].failed:
            return InstanceBusy(f"instance {self.index} is still discarding the rest of a failed response "
                                "(the tool has not finished it yet); wait, or interrupt/restart it")
        if state is State.BUSY:
            return InstanceBusy(f"instance {self.index} has not answered its previous prompt yet; "
                                "read its response first, or use submit() to queue prompts")
        detail = f" (last exit code {self.last_exit_code})" if self.last_exit_code is not None else ""
        return InstanceUnavailable(f"instance {self.index} is {state.value}{detail}, not ready for a prompt; "
                                   f"restart_instance({self.index}) starts it again")

    def read(self, timeout: Optional[float] = None) -> Response:
        """Wait for the oldest unread response of this instance.

        Blocks at most ``timeout`` seconds (None: until it arrives).  On timeout
        raises :class:`ResponseTimeout` and the response stays pending: a later
        ``read`` waits for the same one.  Raises :class:`InstanceCrashed` at
        once if the process dies first.
        """
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

    def _wait(self, turn: _Turn, timeout: Optional[float]) -> Response:
        try:
            return turn.future.result(timeout)
        except cf.TimeoutError:
            with self._lock:
                partial = self._proc.framer.partial() if (self._proc and turn in self._turns) else b""
                closed = self._proc.input_error if self._proc else None
            log.info("instance %d: no response within %ss", self.index, timeout,
                     extra={"instance": self.index, "timeout": timeout, "partial_bytes": len(partial)})
            why = f"; the tool closed its input ({closed}), restart it" if closed else ""
            raise ResponseTimeout(
                f"instance {self.index} gave no complete response within {timeout}s; it is still pending "
                f"(read again to keep waiting, or interrupt/restart the instance){why}", partial) from None
        finally:
            if turn.future.done():
                with self._lock:
                    try:
                        self._unread.remove(turn)
                    except ValueError:
                        pass  # another reader returned it already

    def ask(self, prompt: str, timeout: Optional[float] = None, **kwargs: Any) -> Response:
        """Send ``prompt`` and wait at most ``timeout`` seconds for *its* response.

        On timeout the response stays pending for a later :meth:`read`.
        """
        kwargs.setdefault("unread", True)
        return self._wait(self._send(prompt, kind="prompt", **kwargs), timeout)

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

    def interrupt(self, expect_requests: Optional[int] = None) -> bool:
        """Ask the tool to cancel the turn in progress.  False if nothing to cancel.

        ``expect_requests``: only if the instance is still on that request
        (its ``requests`` count), so a late interrupt never hits the next one.
        """
        with self._lock:
            if self._state is not State.BUSY or self._proc is None:
                return False
            if expect_requests is not None and self.requests != expect_requests:
                return False
            proc = self._proc
            proc.framer.interrupt_sent()
        assert proc.writer is not None
        control = Control(proc.writer.write, proc.transport.signal_process, proc.transport.signal_group,
                          proc.framer)
        self.adapter.interrupt(control)
        return True

    def probe(self, timeout: float) -> bool:
        """Check that an idle tool still answers (the adapter's liveness probe).

        Returns True if it answered within ``timeout`` seconds, or if there is
        nothing to check (no probe for this tool, or not IDLE); False if it did
        not answer, so the caller can recycle it.
        """
        data = self.adapter.liveness_probe()
        if data is None:
            return True
        with self._lock:
            if self._state is not State.IDLE or self._proc is None or self._proc.writer is None:
                return True
            proc = self._proc
            turn = _Turn("probe", None)
            self._turns.append(turn)
            self._set_state(State.BUSY)
            self.last_output_at = time.monotonic()
            proc.framer.start_turn(None)
        try:
            proc.writer.write(data)
            turn.future.result(timeout)
            return True
        except (cf.TimeoutError, ToolPoolError, OSError):
            return False

    # ------------------------------------------------- reader-thread callbacks
    def _on_data(self, proc: _Process, chunk: bytes) -> Optional[float]:
        with self._lock:
            if proc is not self._proc:
                return None
            self.bytes_out += len(chunk)
            self.last_output_at = time.monotonic()
            head = self._turns[0] if self._turns else None
            if head is not None and head.first_byte_at is None:
                head.first_byte_at = time.perf_counter()
            done = self._apply(proc.framer.feed(chunk))
            events, proc.framer.events = proc.framer.events, []
            quiet = proc.framer.settle if proc.framer.has_candidate() else None
            waiters = self._take_idle_waiters()
            cancel, proc.framer.wants_interrupt = proc.framer.wants_interrupt, False
        self._deliver(events, head, done)
        if cancel:
            self.interrupt()
        for waiter in waiters:
            waiter()
        return quiet

    def _on_quiet(self, proc: _Process) -> None:
        with self._lock:
            if proc is not self._proc:
                return
            done = self._apply(proc.framer.on_quiet())
            waiters = self._take_idle_waiters()
        self._resolve(done)
        for waiter in waiters:
            waiter()

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
            proc.framer.exit_code = code
            prompted = self.served > 0 or any(t.kind == "prompt" for t in self._turns)
            done = self._apply(proc.framer.on_exit())
            expected = self._state in (State.STOPPING, State.STOPPED)
            error = InstanceCrashed(self.index, code, self.stderr.text(), proc.framer.partial())
            failed = self._take_turns(error)
            done += failed
            # A one-shot process ends with its prompt, whatever its exit code (a bad prompt
            # fails that request, not the slot); exiting before any prompt is a crash.
            crashed = not self.adapter.oneshot or not prompted
            if not expected:
                if crashed or failed:
                    self.last_error = str(error)
                self._set_state(State.EXITED)
        # Orphaned grandchildren go now, not at the next restart.
        proc.transport.signal_group(signal.SIGKILL)
        self._resolve(done)
        if not expected:
            log.log(logging.WARNING if crashed else logging.DEBUG, "instance %d: pid %d exited with code %s",
                    self.index, proc.transport.pid, code,
                    extra={"instance": self.index, "pid": proc.transport.pid, "exit_code": code})
            self._emit("exited", exit_code=code, crashed=crashed, stderr_tail=self.stderr.text())

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
        self._emit("exited", exit_code=None, crashed=True, stderr_tail=self.stderr.text())

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
    def _apply(self, frames: List[Frame]) -> List[Completion]:
        """Match frames to the oldest turns; lock held.  Returns what to resolve."""
        done: List[Completion] = []
        for frame in frames:
            if not self._turns:
                log.debug("instance %d: output with no request pending: %r", self.index, frame.raw[:200])
                continue
            turn = self._turns[0]
            if frame.error is not None and not turn.failed:
                turn.failed = True
                self.errors += 1
                self.last_error = str(frame.error)
                done.append((turn.future, frame.error, True))
            if frame.final:
                self._turns.popleft()
                if turn.kind == "prompt":
                    self.served += 1
                if not turn.failed:
                    done.append((turn.future, self._result(turn, frame), False))
        # A one-shot process is used up by its answer: it stays BUSY until it exits,
        # and the pool then replaces it.
        if not self._turns and self._state is State.BUSY and not self.adapter.oneshot:
            self._set_state(State.IDLE)
        return done

    def _result(self, turn: _Turn, frame: Frame) -> Any:
        if turn.kind != "prompt":
            return frame
        now = time.perf_counter()
        timings = turn.timings or Timings()
        timings.first_byte = None if turn.first_byte_at is None else turn.first_byte_at - turn.sent_at
        timings.total = timings.acquire + (now - turn.sent_at)  # acquire already includes queueing
        response = Response(text=frame.text, raw=frame.raw, index=self.index, elapsed=now - turn.sent_at,
                            prompt=turn.prompt, timings=timings)
        for key, value in frame.fields.items():  # usually empty for REPLs
            if key in _RESPONSE_FIELDS:
                setattr(response, key, value)
            else:
                response.meta[key] = value
        try:
            self.adapter.observe(self.index, response)
        except Exception:  # an adapter bug must not take the reader thread down
            log.exception("adapter %s observe() failed (instance %d)", self.adapter.name, self.index)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("instance %d answered in %.6fs (queued %.6fs, spawn %.6fs, first byte %s, %s)", self.index,
                      timings.total, timings.queued, timings.spawn,
                      "-" if timings.first_byte is None else f"{timings.first_byte:.6f}s",
                      "warm" if timings.warm else "cold",
                      extra={"instance": self.index, "timings": timings.as_dict()})
        return response

    def _take_turns(self, error: BaseException) -> List[Completion]:
        """Fail every outstanding turn with ``error``; lock held."""
        done = [(t.future, error, True) for t in self._turns if not t.failed]
        if done and any(t.kind == "prompt" for t in self._turns):
            self.errors += 1
            self.last_error = str(error)
        self._turns.clear()
        if self._state is State.BUSY:
            self._set_state(State.IDLE)
        return done

    def _deliver(self, events: List[Dict[str, Any]], turn: Optional[_Turn], done: List[Completion]) -> None:
        if events and turn is not None and turn.on_event is not None:
            for event in events:
                try:
                    turn.on_event(event)
                except Exception:
                    log.exception("on_event callback failed (instance %d)", self.index)
        self._resolve(done)

    @staticmethod
    def _resolve(done: List[Completion]) -> None:
        for future, value, is_exc in done:
            if future.done():
                continue
            if is_exc:
                future.set_exception(value)
            else:
                future.set_result(value)

    # ---------------------------------------------------------------- status
    def status(self) -> Dict[str, Any]:
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
                "stderr_tail": self.stderr.text(),
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

    def on_data(self, chunk: bytes) -> Optional[float]:
        return self._i._on_data(self._p, chunk)

    def on_quiet(self) -> None:
        self._i._on_quiet(self._p)

    def on_eof(self) -> None:
        pass  # the exit descriptor, not EOF, says the process is gone

    def on_exit(self) -> None:
        self._i._on_exit(self._p)

    def on_error(self, exc: BaseException) -> None:
        self._i._on_reader_error(self._p, exc)


class _StderrSink:
    def __init__(self, instance: Instance, proc: _Process) -> None:
        self._i, self._p = instance, proc

    def on_data(self, chunk: bytes) -> Optional[float]:
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
