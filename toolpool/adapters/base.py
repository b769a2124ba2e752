"""The adapter interface: everything toolpool needs to know about one tool.

An :class:`Adapter` describes a tool; it holds no process.  For every process
it starts, the instance asks the adapter for a :class:`Framer`, a small parser
that lives on that process's stdout reader thread and cuts the byte stream
into :class:`Frame` s (one per response).  The parts, in the order an instance
uses them:

========================  ======================================================
``command(slot)``         argv list (never run through a shell)
``environment(slot)``     the complete environment for the child
``cwd``, ``transport``    working directory; ``"pipe"`` or ``"pty"``
``handshake()``           bytes that make the tool announce readiness, or None
                          when it announces itself (a REPL's first prompt)
``ready_on_spawn``        True for one-shot tools: ready as soon as spawned
``warmup_prompts()``      prompts sent before the instance counts as ready
``encode(prompt)``        the bytes to write for a prompt (ValueError if unsafe)
``new_framer()``          a parser for one process's output
``interrupt(control)``    cancel the turn in progress
``oneshot``               one process per prompt (stdin closed after it)
========================  ======================================================

Writing an adapter for a new tool is usually a subclass of
:class:`toolpool.adapters.repl.ReplAdapter` with another prompt pattern; a
tool with its own protocol (like ``claude``'s JSON lines) writes a Framer.
See ``docs/adapters.md``.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import re
import signal
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

#: 64 MiB: far above any real answer (claude turns with tool output reach a few
#: MiB), low enough that a runaway tool cannot exhaust memory.
DEFAULT_MAX_RESPONSE_BYTES = 64 * 1024 * 1024

#: Canonical-mode terminals drop input past this many bytes per line.
PTY_MAX_LINE = 4095

EventCallback = Callable[[dict[str, Any]], None]

#: The event ``type`` a framer puts in ``Cut.events`` when the tool hit a rate limit or an overloaded API
#: (with ``status`` and ``retry_after`` seconds if known): the pool then pauses dispatch for every
#: instance at once, instead of N instances hammering the API each on their own.
RATE_LIMIT_EVENT = "toolpool.rate_limit"


@dataclass
class Frame:
    """One unit cut from a tool's output by a :class:`Framer`.

    ``final`` False means: fail the current request now with ``error``, but the
    tool is still answering it; the instance stays busy until a final frame
    for the same turn arrives (which is then discarded).  ``unsolicited``: a
    turn the tool started by itself (no request of ours caused it); it goes to
    event subscribers, never to a request.
    """

    raw: bytes = b""
    text: str = ""
    fields: dict[str, Any] = field(default_factory=dict)
    error: BaseException | None = None
    final: bool = True
    unsolicited: bool = False


class Cut:
    """What a framer found in one call.  The instance acts on it; the framer never reaches back.

    ``frames``: responses (or failures) completed, oldest first.  ``events``:
    parsed output to stream to the current request's ``on_event``.
    ``quiet``: report silence after this many seconds (a candidate end that
    must settle), or None.  ``interrupt``: cut the current turn short (the
    tool went astray after its answer already failed).  ``send``: bytes to
    write to the tool now (e.g. an answer to a request it made).
    ``tool_turn``: True when the tool began a turn by itself; the instance
    holds prompts back until that turn's (unsolicited) frame arrives.
    ``calls``: work to do off the reader thread and outside every lock (e.g.
    answering a tool's permission request with a user's Python callback);
    each returns the bytes to write to the tool (b"" for none).  The callable
    must bound its own running time: it runs on a pool worker thread.
    """

    __slots__ = ("frames", "events", "quiet", "interrupt", "send", "tool_turn", "calls")

    def __init__(self, frames: list[Frame] | None = None, events: list[dict[str, Any]] | None = None,
                 quiet: float | None = None, interrupt: bool = False, send: bytes = b"",
                 tool_turn: bool = False, calls: list[Callable[[], bytes]] | None = None) -> None:
        self.frames: list[Frame] = frames if frames is not None else []
        self.events: list[dict[str, Any]] = events if events is not None else []
        self.quiet = quiet
        self.interrupt = interrupt
        self.send = send
        self.tool_turn = tool_turn
        self.calls: list[Callable[[], bytes]] = calls if calls is not None else []

    def __repr__(self) -> str:
        return (f"Cut(frames={self.frames!r}, events={len(self.events)}, quiet={self.quiet!r}, "
                f"interrupt={self.interrupt}, send={self.send[:40]!r}, tool_turn={self.tool_turn})")


class Framer:
    """Cuts one process's output into frames.  Subclass per protocol.

    Every method runs under the owning instance's lock, so a framer needs no
    locking of its own, and returns what it found (a :class:`Cut`) instead of
    setting flags for someone to poll.  ``feed``, ``on_quiet`` and ``on_exit``
    run on the reader thread; ``start_turn`` and ``interrupt_sent`` on the
    caller's.  Keep them quick: they sit between the tool and the caller.
    """

    #: Seconds of silence required after a candidate end before it counts
    #: (0: a frame ends the moment its terminator arrives).
    settle: float = 0.0

    def __init__(self, max_bytes: int = DEFAULT_MAX_RESPONSE_BYTES) -> None:
        self.max_bytes = max_bytes

    def start_turn(self, prompt: str | None, data: bytes = b"") -> None:
        """A request is about to be written: ``prompt`` (None for readiness and probes) as ``data``."""

    def feed(self, data: bytes) -> Cut:
        """Consume output; return what it completed."""
        raise NotImplementedError

    def has_candidate(self) -> bool:
        """True when the output so far ends like a response, pending ``settle``."""
        return False

    def on_quiet(self) -> Cut:
        """The quiet period asked for passed with no output; confirm the candidate."""
        return Cut()

    def on_exit(self, exit_code: int | None) -> Cut:
        """The process exited with ``exit_code``; return any frame its exit completes."""
        return Cut()

    def interrupt_sent(self) -> Cut:
        """The instance is cancelling the current turn; ``send`` carries bytes that do it, if any."""
        return Cut()

    def input_open(self) -> bool:
        """True while the tool is still reading the current turn's input (e.g. aider inside a
        ``{tag ... tag}`` block): a signal now would leave the rest to be read as new input."""
        return False

    def defer_interrupt(self) -> bool:
        """True when signalling the tool right now is unsafe (aider between two attempts of an API
        call); the framer then asks for the interrupt itself (``Cut.interrupt``) at a safe point."""
        return False

    def partial(self) -> bytes:
        """The bytes received so far of the frame in progress."""
        return b""

    def begin_control(self, request: Mapping[str, Any]) -> tuple[cf.Future[dict[str, Any]], bytes]:
        """Register a control request of ours (a tool with a control protocol, such as claude's):
        the Future of the tool's answer, and the bytes to write."""
        raise NotImplementedError(f"{type(self).__name__}: this tool takes no control requests")


class Control:
    """What :meth:`Adapter.interrupt` may do to one running process.

    One per process.  ``turn`` is the instance's current turn number and
    ``in_turn()`` whether that turn is still running, so an action deferred with
    ``call_later`` (on the pool's scheduler) can check it still applies.
    ``scratch`` is the adapter's own per-process state (e.g. when it last
    signalled).
    """

    def __init__(self, write: Callable[[bytes], None], signal_process: Callable[[int], bool],
                 signal_group: Callable[[int], bool], call_later: Callable[[float, Callable[[], None]], Any],
                 current_turn: Callable[[], int], in_turn: Callable[[], bool]) -> None:
        self.write = write
        self.signal_process = signal_process
        self.signal_group = signal_group
        self.call_later = call_later
        self._current_turn = current_turn
        self.in_turn = in_turn
        self.scratch: dict[str, Any] = {}
        #: Guards ``scratch``: interrupts come from the caller's thread and the reader's at once.
        self.lock = threading.Lock()

    @property
    def turn(self) -> int:
        return self._current_turn()


class Adapter:
    """Describes how to run and talk to one kind of tool.  See module docs."""

    name: str = "adapter"
    transport: str = "pipe"
    ready_on_spawn: bool = False
    oneshot: bool = False
    #: True when a whole prompt the tool has not read yet is harmless after an interrupt (claude: each
    #: message is a complete line whose late answer is recognised and dropped); then only a prompt
    #: still half-written makes the instance replace the process instead of interrupting it.
    unread_input_safe: bool = False
    #: False for adapters with per-slot state on disk (config dirs, private HOMEs): two pools
    #: using one at once would share slot N's state.  Such an adapter serves one pool at a time.
    shareable: bool = True

    def __init__(self, *, env: Mapping[str, str] | None = None, cwd: str | None = None,
                 start_timeout: float = 30.0, max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
                 encoding: str = "utf-8", stderr_tail_bytes: int = 8192,
                 warmup: Sequence[str] = ()) -> None:
        if start_timeout <= 0:
            raise ValueError(f"start_timeout must be > 0 seconds, got {start_timeout!r}")
        if max_response_bytes < 1024:
            raise ValueError(f"max_response_bytes must be at least 1024, got {max_response_bytes!r}")
        self.env = dict(env or {})
        self.cwd = os.fspath(cwd) if cwd is not None else None
        self.start_timeout = float(start_timeout)
        self.max_response_bytes = int(max_response_bytes)
        self.encoding = encoding
        self.stderr_tail_bytes = stderr_tail_bytes
        self._warmup = list(warmup)
        self._users = 0
        self._users_lock = threading.Lock()

    # -- lifetime (called by the pool) -------------------------------------------------
    def attach(self) -> None:
        """A pool starts using this adapter."""
        with self._users_lock:
            if self._users and not self.shareable:
                raise ValueError(f"this {self.name} adapter is already used by another pool, and its slots keep "
                                 "state on disk; create one adapter per pool")
            self._users += 1

    def detach(self) -> None:
        """A pool is done with this adapter; the last one out calls :meth:`close`."""
        with self._users_lock:
            self._users = max(0, self._users - 1)
            last = self._users == 0
        if last:
            self.close()

    # -- process ---------------------------------------------------------------
    def command(self, slot: int) -> list[str]:
        raise NotImplementedError

    def environment(self, slot: int) -> dict[str, str]:
        """The parent's environment with ``env`` merged over it."""
        merged = dict(os.environ)
        merged.update(self.env)
        return merged

    # -- readiness -------------------------------------------------------------
    def handshake(self) -> bytes | None:
        return None

    def warmup_prompts(self) -> list[str]:
        return list(self._warmup)

    # -- requests ----------------------------------------------------------------
    def encode(self, prompt: str) -> bytes:
        raise NotImplementedError

    def new_framer(self) -> Framer:
        raise NotImplementedError

    def framer_for(self, slot: int) -> Framer:
        """The framer for a new process of ``slot`` (default: :meth:`new_framer`; override it when the
        framer needs to know its slot)."""
        return self.new_framer()

    def interrupt(self, control: Control) -> None:
        """Cancel the turn in progress.  Default: SIGINT to the tool process.

        Called outside the instance lock, after ``framer.interrupt_sent()``
        (whose bytes, if any, were already written).
        """
        control.signal_process(signal.SIGINT)

    def observe(self, slot: int, response: Any) -> None:
        """Called with every response of ``slot`` (e.g. to remember a session id)."""

    def start_failed(self, slot: int, error: BaseException) -> None:
        """A process of ``slot`` failed to start with ``error`` (e.g. to drop a ``--resume`` that cannot work)."""

    #: Set by a pool with a ``workspace``: each slot's directory (the adapter then sees where its
    #: slot really runs, e.g. to tell a git work tree from a plain directory).
    slot_dirs: Callable[[int], str] | None = None

    def working_dir(self, slot: int) -> str | None:
        """The working directory of ``slot``'s process: the pool's workspace for it, else ``cwd``."""
        return self.slot_dirs(slot) if self.slot_dirs is not None else self.cwd

    def secret_env(self) -> dict[str, str]:
        """Variables whose secret-looking values must never appear in a status dump.

        No side effects (unlike :meth:`environment`, which may create directories).
        """
        return {**os.environ, **self.env}

    def diagnose(self, stdout_tail: str, stderr_tail: str) -> str | None:
        """A hint for a tool that did not become ready, from what it printed (or None)."""
        return None

    def liveness_probe(self) -> bytes | None:
        """Bytes that make an idle tool answer with one frame, or None (no probe)."""
        return None

    def close(self) -> None:
        """Release what the adapter made (temporary directories...)."""

    # -- status ------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """A JSON-safe description for status dumps: never environment values."""
        return {
            "name": self.name,
            "transport": self.transport,
            "command": redact_argv(self.command(0)),
            "cwd": self.cwd,
            "env_keys": sorted(self.env),
            "oneshot": self.oneshot,
        }


_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_SECRET_FLAG = re.compile(r"(key|token|secret|password|passwd|auth)", re.IGNORECASE)


def check_argv(command: Sequence[str], example: str) -> list[str]:
    """``command`` as a list, or ValueError: an argv list is never run through a shell."""
    if isinstance(command, str) or not command or not all(isinstance(a, str) for a in command):
        raise ValueError(f"command must be a non-empty list of strings (argv), e.g. {example}")
    return list(command)


def encode_text(prompt: str, encoding: str) -> bytes:
    """``prompt`` encoded, with a TypeError/ValueError that names the problem."""
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be str, got {type(prompt).__name__}")
    try:
        return prompt.encode(encoding)
    except UnicodeEncodeError as exc:
        raise ValueError(f"prompt cannot be encoded as {encoding}: {exc}") from None


def check_terminal_safe(text: str) -> None:
    """Raise ValueError if a terminal line discipline would act on ``text``.

    In a pty, Ctrl-C becomes SIGINT, Ctrl-D end-of-file, Ctrl-Z a stop and
    Ctrl-U/Ctrl-W erase input: sending them would not deliver the prompt.
    Long lines are cut by the terminal's line limit.
    """
    m = _CONTROL_CHARS.search(text)
    if m:
        ch = m.group()
        raise ValueError(
            f"prompt contains control character {ch!r} at offset {m.start()}, which a terminal "
            "would act on instead of passing it through; remove it or use transport='pipe'"
        )
    for line in text.split("\n"):
        if len(line.encode("utf-8")) > PTY_MAX_LINE:
            raise ValueError(
                f"prompt has a line of more than {PTY_MAX_LINE} bytes, which a terminal truncates; "
                "split it or use transport='pipe'"
            )


def redact_argv(argv: Sequence[str]) -> list[str]:
    """``argv`` with the values of secret-looking options replaced by ``***``."""
    out: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next:
            out.append("***")
            hide_next = False
            continue
        if arg.startswith("-") and _SECRET_FLAG.search(arg):
            if "=" in arg:
                out.append(arg.split("=", 1)[0] + "=***")
            else:
                out.append(arg)
                hide_next = True
            continue
        out.append(arg)
    return out
