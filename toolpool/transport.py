"""How bytes move between toolpool and a tool process.

A transport starts one process in its own session (so it leads a process group
that holds its grandchildren too), and exposes raw file descriptors: the
reader threads in :mod:`toolpool.streams` drain them, and :meth:`write_some`
writes without blocking.  Two kinds:

* :class:`PipeTransport`: stdin/stdout/stderr pipes via :mod:`subprocess`.
  The cleanest channel for tools that do not insist on a terminal.
* :class:`PtyTransport`: a pseudo-terminal, with echo off, a fixed window size
  and ``TERM=dumb`` unless the adapter sets ``TERM``.  stdout and stderr arrive
  merged on the terminal.  Spawned with ``os.posix_spawn``: no Python code runs
  in the child between fork and exec, which is what makes forking safe while
  other threads run (a Python-level fork, as pexpect's, can deadlock the child).

Every process runs in a :class:`toolpool.containment.Scope`: :meth:`Transport.signal_group`
reaches its whole tree, including descendants that called ``setsid()``.

``exit_fd`` becomes readable when the process exits (a pidfd on Linux), so
death is noticed even while a grandchild keeps the output pipe open, and
without a thread per process blocked in ``wait()``.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import struct
import subprocess
import termios
import threading
from collections.abc import Callable, Mapping, Sequence

from . import lifecycle
from .containment import Scope, default_signals
from .errors import SpawnError, ToolNotFoundError

#: Terminal size given to pty tools: wide enough that tools do not wrap lines.
PTY_DIMENSIONS = (40, 200)


def resolve_executable(argv0: str, env: Mapping[str, str]) -> str:
    """Find ``argv0`` the way exec would, or raise :class:`ToolNotFoundError`."""
    if os.sep in argv0:
        if os.path.isfile(argv0) and os.access(argv0, os.X_OK):
            return argv0
        raise ToolNotFoundError(argv0, "the path does not exist or is not executable")
    found = shutil.which(argv0, path=env.get("PATH", os.defpath))
    if found is None:
        raise ToolNotFoundError(argv0, "it is not on PATH; install it or pass its full path")
    return found


def _prepare(argv: Sequence[str], env: Mapping[str, str], cwd: str | None) -> str:
    """Check what exec would trip on, with errors that say so; return the executable."""
    exe = resolve_executable(argv[0], env)
    if cwd is not None and not os.path.isdir(cwd):
        raise SpawnError(f"working directory does not exist: {cwd!r}")
    return exe


def _set_nonblocking(fd: int) -> None:
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)


class _ExitWatch:
    """A file descriptor that becomes readable once the process has exited.

    On Linux >= 5.3 this is a pidfd and costs nothing.  Elsewhere a small
    waiter thread blocks until the process exits and then writes to a pipe;
    the transport owns it and joins it on close.
    """

    def __init__(self, pid: int, wait_fn: Callable[[], object]) -> None:
        self._thread: threading.Thread | None = None
        self._write_fd = -1
        try:
            self.fd = os.pidfd_open(pid)
            return
        except (AttributeError, OSError):
            pass
        self.fd, self._write_fd = os.pipe()

        def waiter() -> None:
            try:
                wait_fn()
            finally:
                os.write(self._write_fd, b"x")

        self._thread = threading.Thread(target=waiter, name=f"toolpool-exit-{pid}", daemon=True)
        self._thread.start()

    def close(self) -> None:
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        for fd in (self.fd, self._write_fd):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.fd = self._write_fd = -1


class Transport:
    """One running tool process and its file descriptors."""

    kind = "abstract"
    pid: int
    stdout_fd: int
    stderr_fd: int | None
    exit_fd: int
    scope: Scope

    def write_some(self, data: memoryview) -> int:
        """Write without blocking; return bytes written (0 if the pipe is full).

        Raises BrokenPipeError when the tool has closed its input.
        """
        try:
            return os.write(self._stdin_fd, data)
        except BlockingIOError:
            return 0
        except OSError as exc:
            # EIO: a pty whose child is gone; EBADF: stdin already closed (one-shot tools).
            if exc.errno in (errno.EIO, errno.EBADF):
                raise BrokenPipeError(errno.EPIPE, "tool input closed") from exc
            raise

    @property
    def stdin_fd(self) -> int:
        return self._stdin_fd

    def signal_group(self, sig: int) -> bool:
        """Send ``sig`` to every process of the tool's tree; False if none is left.

        The process group first (cheap, and enough for most tools), then the
        containment scope: its cgroup, or every process carrying its marker,
        which reaches descendants that left the group with ``setsid()``.
        """
        try:
            os.killpg(self.pid, sig)
            hit = True
        except (ProcessLookupError, PermissionError):
            hit = False
        return self.scope.signal(sig) or hit

    def signal_process(self, sig: int) -> bool:
        """Send ``sig`` to the tool process alone (not its children)."""
        if self.returncode is not None:
            return False
        try:
            os.kill(self.pid, sig)
            return True
        except ProcessLookupError:
            return False

    # Subclasses implement these.
    _stdin_fd: int

    @property
    def returncode(self) -> int | None:
        raise NotImplementedError

    def reap(self) -> int | None:
        """Collect the exit status if the process has exited; never blocks."""
        raise NotImplementedError

    def close_stdin(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Release every descriptor.  Call only after the reader threads stopped."""
        raise NotImplementedError


class PipeTransport(Transport):
    kind = "pipe"

    def __init__(self, argv: Sequence[str], env: dict[str, str], cwd: str | None, scope: Scope) -> None:
        exe = _prepare(argv, env, cwd)
        self.scope = scope
        try:
            self._proc = subprocess.Popen(
                [exe, *argv[1:]],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                bufsize=0,
                env=scope.environ(env),
                cwd=cwd,
                close_fds=True,
                start_new_session=True,  # own process group: signals reach grandchildren
            )
        except (FileNotFoundError, PermissionError) as exc:
            raise ToolNotFoundError(argv[0], str(exc)) from exc
        except OSError as exc:
            raise SpawnError(f"could not start {argv[0]!r}: {exc}") from exc
        self.pid = self._proc.pid
        scope.adopt(self.pid)
        assert self._proc.stdin and self._proc.stdout and self._proc.stderr
        self._stdin_fd = self._proc.stdin.fileno()
        self.stdout_fd = self._proc.stdout.fileno()
        self.stderr_fd = self._proc.stderr.fileno()
        _set_nonblocking(self._stdin_fd)
        self._exit = _ExitWatch(self.pid, self._proc.wait)
        self.exit_fd = self._exit.fd

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode

    def reap(self) -> int | None:
        return self._proc.poll()

    def close_stdin(self) -> None:
        self._stdin_fd = -1  # a late write must fail cleanly, never reach a reused fd number
        try:
            assert self._proc.stdin is not None
            self._proc.stdin.close()
        except OSError:
            pass

    def close(self) -> None:
        for f in (self._proc.stdin, self._proc.stdout, self._proc.stderr):
            try:
                if f is not None:
                    f.close()
            except OSError:
                pass
        self._exit.close()
        self.scope.release()


class PtyTransport(Transport):
    kind = "pty"

    def __init__(self, argv: Sequence[str], env: dict[str, str], cwd: str | None, scope: Scope) -> None:
        exe = _prepare(argv, env, cwd)
        self.scope = scope
        path, spawn_argv = exe, [exe, *argv[1:]]
        if cwd is not None:
            # posix_spawn has no chdir action in Python: env(1) changes directory, then execs.
            path = _ENV_BIN
            spawn_argv = [path, "-C", cwd, "--", *spawn_argv]
        master, slave = os.openpty()
        try:
            _configure_terminal(slave)
            # setsid happens before the file actions (glibc), so opening the slave in the
            # child makes it the child's controlling terminal, as a terminal app expects.
            self.pid = os.posix_spawn(
                path, spawn_argv, scope.environ(env),
                file_actions=[(os.POSIX_SPAWN_OPEN, 0, os.ttyname(slave), os.O_RDWR, 0),
                              (os.POSIX_SPAWN_DUP2, 0, 1), (os.POSIX_SPAWN_DUP2, 0, 2)],
                setsid=True, setsigdef=default_signals(), setsigmask=())
        except OSError as exc:
            os.close(master)
            raise SpawnError(f"could not start {argv[0]!r} in a pty: {exc}") from exc
        finally:
            os.close(slave)  # the child has its own; ours would hide the child's exit (no EIO)
        scope.adopt(self.pid)
        self._stdin_fd = self.stdout_fd = self._master = master
        self.stderr_fd = None
        self._returncode: int | None = None
        _set_nonblocking(master)
        self._exit = _ExitWatch(self.pid, self._wait_blocking)
        self.exit_fd = self._exit.fd

    def _wait_blocking(self) -> None:
        try:
            os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOWAIT)
        except ChildProcessError:
            pass

    @property
    def returncode(self) -> int | None:
        return self._returncode

    def reap(self) -> int | None:
        if self._returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                return self._returncode
            if pid:
                self._returncode = os.waitstatus_to_exitcode(status)
        return self._returncode

    def close_stdin(self) -> None:
        # A terminal has no separate input to close: send EOF (^D) instead, the
        # line discipline turns it into end-of-file for the tool's read().
        try:
            os.write(self._stdin_fd, b"\x04")
        except OSError:
            pass

    def close(self) -> None:
        if self._master >= 0:
            try:
                os.close(self._master)
            except OSError:
                pass
            self._master = -1
        self._exit.close()
        self.scope.release()


_ENV_BIN = shutil.which("env") or "/usr/bin/env"


def _configure_terminal(fd: int) -> None:
    """Echo off (we never want our prompts back) and a wide window (tools do not wrap)."""
    attrs = termios.tcgetattr(fd)
    attrs[3] &= ~termios.ECHO
    termios.tcsetattr(fd, termios.TCSANOW, attrs)
    rows, cols = PTY_DIMENSIONS
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def pty_environment(env: dict[str, str], adapter_env: Mapping[str, str] | None = None) -> dict[str, str]:
    """``env`` with ``TERM=dumb`` unless the adapter chose a TERM.

    A plain terminal: Python 3.13's REPL and ``bash -i`` otherwise paint their
    prompts with escape sequences.  Without ``adapter_env``, a TERM that differs
    from ours counts as the adapter's choice.
    """
    chosen = ("TERM" in adapter_env) if adapter_env is not None else (
        "TERM" in env and env["TERM"] != os.environ.get("TERM"))
    return env if chosen else {**env, "TERM": "dumb"}


def make_transport(kind: str, argv: list[str], env: dict[str, str], cwd: str | None, *,
                   adapter_env: Mapping[str, str] | None = None,
                   memory_max: int | None = None) -> Transport:
    """Start ``argv`` over a ``"pipe"`` or ``"pty"`` transport, contained.

    ``adapter_env``: the adapter's own variables (only to tell whether it chose
    ``TERM``); ``memory_max``: a per-process memory cap in bytes, applied where
    a cgroup scope with the memory controller is available (see
    :func:`toolpool.containment.describe`).
    """
    if kind not in ("pipe", "pty"):
        raise ValueError(f"unknown transport {kind!r}: use 'pipe' or 'pty'")
    lifecycle.check_sigchld()
    scope = Scope(memory_max)
    if kind == "pipe":
        return PipeTransport(argv, env, cwd, scope)
    return PtyTransport(argv, pty_environment(env, adapter_env), cwd, scope)
