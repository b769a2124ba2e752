"""How bytes move between toolpool and a tool process.

A transport starts one process in its own session (so it leads a process group
that holds its grandchildren too), and exposes raw file descriptors: the
reader threads in :mod:`toolpool.streams` drain them, and :meth:`write_some`
writes without blocking.  Two kinds:

* :class:`PipeTransport`: stdin/stdout/stderr pipes via :mod:`subprocess`.
  The cleanest channel for tools that do not insist on a terminal.
* :class:`PtyTransport`: a pseudo-terminal via pexpect, with echo off, a fixed
  window size and no ``delaybeforesend`` (its 50 ms default would be added to
  every prompt).  stdout and stderr arrive merged on the terminal.

``exit_fd`` becomes readable when the process exits (a pidfd on Linux), so
death is noticed even while a grandchild keeps the output pipe open, and
without a thread per process blocked in ``wait()``.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import subprocess
import threading
from typing import Dict, List, Mapping, Optional, Sequence

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


def _prepare(argv: Sequence[str], env: Mapping[str, str], cwd: Optional[str]) -> str:
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

    def __init__(self, pid: int, wait_fn) -> None:
        self._thread: Optional[threading.Thread] = None
        self._write_fd = -1
        try:
            self.fd = os.pidfd_open(pid)  # type: ignore[attr-defined]
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
    stderr_fd: Optional[int]
    exit_fd: int

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
        """Send ``sig`` to the tool's whole process group; False if none is left."""
        try:
            os.killpg(self.pid, sig)
            return True
        except ProcessLookupError:
            return False
        except PermissionError:
            return False

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
    def returncode(self) -> Optional[int]:
        raise NotImplementedError

    def reap(self) -> Optional[int]:
        """Collect the exit status if the process has exited; never blocks."""
        raise NotImplementedError

    def close_stdin(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Release every descriptor.  Call only after the reader threads stopped."""
        raise NotImplementedError


class PipeTransport(Transport):
    kind = "pipe"

    def __init__(self, argv: Sequence[str], env: Dict[str, str], cwd: Optional[str]) -> None:
        exe = _prepare(argv, env, cwd)
        try:
            self._proc = subprocess.Popen(
                [exe, *argv[1:]],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                bufsize=0,
                env=env,
                cwd=cwd,
                close_fds=True,
                start_new_session=True,  # own process group: signals reach grandchildren
            )
        except (FileNotFoundError, PermissionError) as exc:
            raise ToolNotFoundError(argv[0], str(exc)) from exc
        except OSError as exc:
            raise SpawnError(f"could not start {argv[0]!r}: {exc}") from exc
        self.pid = self._proc.pid
        assert self._proc.stdin and self._proc.stdout and self._proc.stderr
        self._stdin_fd = self._proc.stdin.fileno()
        self.stdout_fd = self._proc.stdout.fileno()
        self.stderr_fd = self._proc.stderr.fileno()
        _set_nonblocking(self._stdin_fd)
        self._exit = _ExitWatch(self.pid, self._proc.wait)
        self.exit_fd = self._exit.fd

    @property
    def returncode(self) -> Optional[int]:
        return self._proc.returncode

    def reap(self) -> Optional[int]:
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


class PtyTransport(Transport):
    kind = "pty"

    def __init__(self, argv: Sequence[str], env: Dict[str, str], cwd: Optional[str]) -> None:
        import pexpect  # imported lazily: pipe-only users never pay for it

        exe = _prepare(argv, env, cwd)
        try:
            self._child = pexpect.spawn(
                exe,
                list(argv[1:]),
                env=env,
                cwd=cwd,
                echo=False,
                dimensions=PTY_DIMENSIONS,
                encoding=None,
                use_poll=True,
            )
        except pexpect.ExceptionPexpect as exc:
            raise SpawnError(f"could not start {argv[0]!r} in a pty: {exc}") from exc
        self._child.delaybeforesend = None
        self.pid = self._child.pid
        self._stdin_fd = self.stdout_fd = self._child.child_fd
        self.stderr_fd = None
        self._returncode: Optional[int] = None
        _set_nonblocking(self._stdin_fd)
        self._exit = _ExitWatch(self.pid, self._wait_blocking)
        self.exit_fd = self._exit.fd

    def _wait_blocking(self) -> None:
        try:
            os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOWAIT)
        except ChildProcessError:
            pass

    @property
    def returncode(self) -> Optional[int]:
        return self._returncode

    def reap(self) -> Optional[int]:
        if self._returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                return self._returncode
            if pid:
                self._returncode = os.waitstatus_to_exitcode(status)
                # Tell ptyprocess so its own close()/isalive() do not wait again.
                proc = self._child.ptyproc
                proc.terminated = True
                proc.exitstatus = self._returncode if self._returncode >= 0 else None
                proc.signalstatus = -self._returncode if self._returncode < 0 else None
        return self._returncode

    def close_stdin(self) -> None:
        # A terminal has no separate input to close: send EOF (^D) instead, the
        # line discipline turns it into end-of-file for the tool's read().
        try:
            os.write(self._stdin_fd, b"\x04")
        except OSError:
            pass

    def close(self) -> None:
        # ptyprocess wraps the descriptor in a file object: close through it, or
        # its finalizer would later close the same number, by then reused.
        try:
            self._child.ptyproc.fileobj.close()
        except OSError:
            pass
        self._child.child_fd = -1
        self._child.closed = True
        self._child.ptyproc.closed = True
        self._exit.close()


def make_transport(kind: str, argv: List[str], env: Dict[str, str], cwd: Optional[str]) -> Transport:
    if kind == "pipe":
        return PipeTransport(argv, env, cwd)
    if kind == "pty":
        return PtyTransport(argv, env, cwd)
    raise ValueError(f"unknown transport {kind!r}: use 'pipe' or 'pty'")
