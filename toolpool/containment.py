"""Containment: every process a tool starts can be found and killed, even after we die.

Three layers, each covering what the one before cannot:

1. **Process group.**  Each tool leads its own session, so ``killpg`` reaches
   every descendant that did not leave the group.
2. **cgroup v2 scope** (when the unified hierarchy is writable here): each tool
   is moved into ``<our cgroup>/toolpool-<owner>/<instance>`` right after it
   starts, and ``cgroup.kill`` ends the whole tree, ``setsid()`` or not.  An
   optional ``memory.max`` per instance comes with it where the memory
   controller can be delegated.
3. **Environment marker** (always): the tool's environment carries
   ``TOOLPOOL_INSTANCE=<owner pid>.<nonce>.<n>``, which its descendants inherit.
   A scan of ``/proc/*/environ`` finds them wherever they were reparented.
   A process that execs with a scrubbed environment escapes this layer only.

When the owning program dies without cleaning up (SIGKILL, SIGTERM with the
default handler), a small watchdog process (:mod:`toolpool._watchdog`) does it:
it holds the read end of a pipe whose only write end is ours, so it reads EOF
the moment we are gone, kills our cgroup scope and every marked process, and
exits.  Linux ``PR_SET_PDEATHSIG`` is not used: it fires when the spawning
*thread* exits, which in a thread pool is any time.

``PR_SET_CHILD_SUBREAPER`` is deliberately not set on the owner: it would make
every orphaned grandchild of *any* subprocess the host program starts a child
of the host, to be reaped by someone; toolpool cannot tell those apart from the
host's own children, and reaping one of those would steal its exit status.
The marker layer finds escapees without it.
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
import select
import signal
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

from . import _watchdog

log = logging.getLogger("toolpool.containment")

MARKER_VAR = "TOOLPOOL_INSTANCE"
_CGROUP_PREFIX = "toolpool-"
_WATCHDOG_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_watchdog.py")


# ------------------------------------------------------------------ owner identity
class _Owner:
    """Per-process state; replaced in a forked child, which is a new owner."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.nonce = secrets.token_hex(4)
        self.serial = 0
        self.lock = threading.Lock()
        self.cgroup_checked = False
        self.cgroup_root: str | None = None  # <our cgroup>/toolpool-<owner>, once created
        self.cgroup_reason = "not checked yet (checked at the first spawn)"
        self.memory_reason = "needs a cgroup scope"
        self.watchdog_pid: int | None = None
        # The pipe exists from import on, so descriptor counts do not change at the
        # first spawn.  Only this process holds the write end (both ends are close-on-exec).
        self.pipe_r, self.pipe_w = os.pipe()

    @property
    def prefix(self) -> str:
        """Marker value prefix shared by every instance of this owner."""
        return f"{self.pid}.{self.nonce}."

    def next_marker(self) -> str:
        with self.lock:
            self.serial += 1
            return f"{self.prefix}{self.serial}"


_owner = _Owner()


def _after_fork_in_child() -> None:
    """A forked child owns none of its parent's tools: forget them, keep the watchdog's pipe open
    only in the parent (the child's copy would hide the parent's death from the watchdog)."""
    global _owner
    for fd in (_owner.pipe_r, _owner.pipe_w):
        try:
            os.close(fd)
        except OSError:
            pass
    _owner = _Owner()


os.register_at_fork(after_in_child=_after_fork_in_child)


def owner_prefix() -> str:
    return _owner.prefix


# ------------------------------------------------------------------ /proc scanning
def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def marked_pids(marker: str | None = None, prefix: str | None = None) -> list[int]:
    """Live processes carrying ``TOOLPOOL_INSTANCE=marker`` (or a value starting with ``prefix``)."""
    if marker is not None:
        return _watchdog.marked(f"{MARKER_VAR}={marker}".encode(), exact=True)
    return _watchdog.marked(f"{MARKER_VAR}={prefix}".encode())


def _signal_verified(pid: int, sig: int, marker: str) -> bool:
    """Signal ``pid`` only if it still carries ``marker``: a pidfd pins the process, so a pid
    reused between the scan and the kill is never hit."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return False
    try:
        if f"{MARKER_VAR}={marker}".encode() not in _read(f"/proc/{pid}/environ").split(b"\0"):
            return False
        signal.pidfd_send_signal(pidfd, sig)
        return True
    except OSError:
        return False
    finally:
        os.close(pidfd)


def signal_marked(marker: str, sig: int) -> int:
    """Send ``sig`` to every live process carrying ``marker``; return how many."""
    return sum(_signal_verified(pid, sig, marker) for pid in marked_pids(marker))


# ------------------------------------------------------------------ cgroup v2
def _cgroup2_mount() -> str | None:
    try:
        lines = _read("/proc/self/mountinfo").decode(errors="replace").splitlines()
    except OSError:
        return None
    for line in lines:
        left, _, right = line.partition(" - ")
        if right.split(" ", 1)[0] == "cgroup2":
            return left.split()[4]
    return None


def _own_cgroup() -> str | None:
    try:
        for line in _read("/proc/self/cgroup").decode().splitlines():
            if line.startswith("0::"):
                return line[3:]
    except OSError:
        pass
    return None


def _cgroup_parent() -> tuple[str | None, str]:
    """Our own cgroup directory if scopes can be made under it, else None and why not."""
    if os.environ.get("TOOLPOOL_CONTAINMENT") == "marker":
        return None, "disabled by TOOLPOOL_CONTAINMENT=marker"
    mount, own = _cgroup2_mount(), _own_cgroup()
    if mount is None or own is None:
        return None, "no cgroup v2 (unified) hierarchy is mounted"
    parent = os.path.join(mount, own.lstrip("/"))
    if not os.access(os.path.join(parent, "cgroup.procs"), os.W_OK):
        return None, (f"{parent} is not writable; run under a delegated scope "
                      "(systemd-run --user --scope -p Delegate=yes) to enable it")
    return parent, f"scopes under {parent}"


def _setup_cgroup() -> None:
    """Create this owner's cgroup directory if the system lets us; record why not otherwise."""
    o = _owner
    o.cgroup_checked = True
    parent, o.cgroup_reason = _cgroup_parent()
    if parent is None:
        return
    root = os.path.join(parent, f"{_CGROUP_PREFIX}{o.pid}.{o.nonce}")
    usable, o.cgroup_reason = _try_cgroup(root)
    if not usable:
        return
    o.cgroup_root = root
    o.cgroup_reason = f"one scope per tool under {root}"
    controllers = _read_text(os.path.join(parent, "cgroup.subtree_control")).split()
    o.memory_reason = ("available" if "memory" in controllers and _enable_memory(root)
                       else "the memory controller is not delegated to our cgroup")
    reclaim_stale_cgroups(parent)


def _try_cgroup(path: str) -> tuple[bool, str]:
    """Create ``path`` as a cgroup that ``cgroup.kill`` works in; False and why not otherwise."""
    try:
        os.mkdir(path, 0o755)
    except OSError as exc:
        return False, f"cannot create a cgroup in {os.path.dirname(path)} ({exc.strerror}); using the marker"
    if not os.path.exists(os.path.join(path, "cgroup.kill")):
        os.rmdir(path)
        return False, "cgroup.kill is missing (kernel older than 5.14); using the marker"
    return True, ""


def _probe_cgroup() -> tuple[bool, str]:
    """What the first spawn would find, leaving nothing behind."""
    parent, reason = _cgroup_parent()
    if parent is None:
        return False, reason
    probe = os.path.join(parent, f"{_CGROUP_PREFIX}{os.getpid()}.probe-{secrets.token_hex(3)}")
    usable, why = _try_cgroup(probe)
    if usable:
        os.rmdir(probe)
    return usable, why or f"one scope per tool under {parent}"


def _read_text(path: str) -> str:
    try:
        return _read(path).decode()
    except OSError:
        return ""


def _enable_memory(root: str) -> bool:
    try:
        with open(os.path.join(root, "cgroup.subtree_control"), "w") as f:
            f.write("+memory")
        return True
    except OSError:
        return False


def _owner_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def kill_cgroup_tree(path: str, timeout: float = 1.0) -> None:
    """``cgroup.kill`` a scope (and every scope below it), then remove the directories."""
    try:
        with open(os.path.join(path, "cgroup.kill"), "w") as f:
            f.write("1")
    except OSError:
        pass
    for dirpath, _dirs, _files in sorted(os.walk(path), key=lambda entry: -len(entry[0])):
        _rmdir_when_empty(dirpath, timeout)


def _rmdir_when_empty(path: str, timeout: float) -> bool:
    """rmdir a cgroup once its killed processes are gone (they leave asynchronously)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.rmdir(path)
            return True
        except FileNotFoundError:
            return True
        except OSError as exc:
            if exc.errno != errno.EBUSY or time.monotonic() >= deadline:
                return False
        _wait_unpopulated(path, deadline - time.monotonic())


def _wait_unpopulated(path: str, timeout: float) -> None:
    """Block (bounded) until cgroup.events says ``populated 0``; the kernel signals changes as POLLPRI."""
    try:
        fd = os.open(os.path.join(path, "cgroup.events"), os.O_RDONLY)
    except OSError:
        return
    try:
        poller = select.poll()
        poller.register(fd, select.POLLPRI | select.POLLERR)
        deadline = time.monotonic() + timeout
        while b"populated 1" in os.pread(fd, 4096, 0):
            left = deadline - time.monotonic()
            if left <= 0:
                return
            poller.poll(max(1, int(left * 1000)))
    except OSError:
        return
    finally:
        os.close(fd)


def reclaim_stale_cgroups(parent: str) -> None:
    """Kill and remove the scopes of owners that died without their watchdog cleaning up."""
    try:
        names = os.listdir(parent)
    except OSError:
        return
    for name in names:
        if not name.startswith(_CGROUP_PREFIX):
            continue
        pid_text = name[len(_CGROUP_PREFIX):].split(".", 1)[0]
        if pid_text.isdigit() and int(pid_text) != os.getpid() and not _owner_alive(int(pid_text)):
            log.info("reclaiming the cgroup of a dead toolpool owner: %s", name)
            kill_cgroup_tree(os.path.join(parent, name))


class Scope:
    """One tool's containment: its marker, and its cgroup when there is one."""

    def __init__(self, memory_max: int | None = None) -> None:
        with _owner.lock:
            if not _owner.cgroup_checked:
                _setup_cgroup()
        self.marker = _owner.next_marker()
        self.cgroup: str | None = None
        self._memory_max = memory_max
        if memory_max is not None and (isinstance(memory_max, bool) or not isinstance(memory_max, int)
                                       or memory_max <= 0):
            raise ValueError(f"memory_max must be a positive number of bytes, got {memory_max!r}")
        ensure_watchdog()

    def environ(self, env: dict[str, str]) -> dict[str, str]:
        """``env`` plus this scope's marker."""
        return {**env, MARKER_VAR: self.marker}

    def adopt(self, pid: int) -> None:
        """Move the just-started tool into a cgroup of its own (if cgroups are usable here)."""
        root = _owner.cgroup_root
        if root is None:
            if self._memory_max is not None:
                log.warning("memory_max=%d ignored: %s", self._memory_max, _owner.memory_reason)
            return
        path = os.path.join(root, self.marker.rsplit(".", 1)[1])
        try:
            os.mkdir(path, 0o755)
            if self._memory_max is not None:
                self._set_memory_max(path)
            with open(os.path.join(path, "cgroup.procs"), "w") as f:
                f.write(str(pid))
            self.cgroup = path
        except OSError as exc:
            # Fall back to the marker for this tool; say why once, in describe().
            _owner.cgroup_reason = f"moving a tool into {path} failed ({exc.strerror}); using the marker"
            log.warning("containment: %s", _owner.cgroup_reason)
            _rmdir_when_empty(path, 0.0)

    def _set_memory_max(self, path: str) -> None:
        try:
            with open(os.path.join(path, "memory.max"), "w") as f:
                f.write(str(self._memory_max))
        except OSError:
            log.warning("memory_max=%s ignored: %s", self._memory_max, _owner.memory_reason)

    def signal(self, sig: int) -> bool:
        """Send ``sig`` to every process of this scope; True if there was one."""
        if self.cgroup is not None:
            pids = [int(p) for p in _read_text(os.path.join(self.cgroup, "cgroup.procs")).split()]
            if sig == signal.SIGKILL and pids:
                try:
                    with open(os.path.join(self.cgroup, "cgroup.kill"), "w") as f:
                        f.write("1")
                except OSError:
                    pass
            else:
                for pid in pids:
                    try:
                        os.kill(pid, sig)
                    except OSError:
                        pass
            return bool(pids)
        return signal_marked(self.marker, sig) > 0

    def release(self, timeout: float = 1.0) -> None:
        """Kill whatever is left and remove the cgroup (bounded)."""
        if self.cgroup is not None:
            kill_cgroup_tree(self.cgroup, timeout)
            self.cgroup = None


# ------------------------------------------------------------------ watchdog
def ensure_watchdog() -> None:
    """Start this owner's watchdog if it is not running (lazily, at the first spawn)."""
    o = _owner
    with o.lock:
        if o.watchdog_pid is not None:
            try:
                pid, _status = os.waitpid(o.watchdog_pid, os.WNOHANG)
            except ChildProcessError:
                pid = o.watchdog_pid
            if pid == 0:
                return
            log.warning("the toolpool watchdog (pid %d) died; starting a new one", o.watchdog_pid)
        argv = [sys.executable, "-I", "-S", _WATCHDOG_SCRIPT, o.prefix, o.cgroup_root or ""]
        # posix_spawn: no Python code runs between fork and exec.  A scrubbed environment
        # keeps the watchdog out of any marker scan (ours, or a test suite's).
        o.watchdog_pid = os.posix_spawn(
            sys.executable, argv, {"PATH": os.defpath},
            file_actions=[(os.POSIX_SPAWN_DUP2, o.pipe_r, 0),
                          (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
                          (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0)],
            setsid=True, setsigdef=_DEFAULT_SIGNALS, setsigmask=())


#: Signals a child should see at their default action even if the host ignores them.
_DEFAULT_SIGNALS = tuple(s for s in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGQUIT,
                                     signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD, signal.SIGUSR1,
                                     signal.SIGUSR2, signal.SIGALRM, signal.SIGTTIN, signal.SIGTTOU,
                                     signal.SIGTSTP))


def default_signals() -> tuple[int, ...]:
    """For ``posix_spawn(setsigdef=...)``: what a freshly exec'd tool expects."""
    return _DEFAULT_SIGNALS


def stop_watchdog(timeout: float = 2.0) -> None:
    """End the watchdog now and reap it: it kills whatever carries our marker, removes our
    cgroups and exits.  Only when no tool of ours runs (at exit, in tests): later spawns
    start under a new owner identity, so the old watchdog can never touch them."""
    global _owner
    o = _owner
    with o.lock:
        pid = o.watchdog_pid
        _owner = _Owner()
        os.close(o.pipe_w)  # EOF for the watchdog
        os.close(o.pipe_r)
    if pid is not None:
        _wait_child(pid, timeout)


def _wait_child(pid: int, timeout: float) -> None:
    try:
        pidfd = os.pidfd_open(pid)
        try:
            select.select([pidfd], [], [], timeout)
        finally:
            os.close(pidfd)
        os.waitpid(pid, os.WNOHANG)
    except (OSError, ChildProcessError):
        pass


def watchdog_pid() -> int | None:
    return _owner.watchdog_pid


# ------------------------------------------------------------------ report
def describe() -> dict[str, Any]:
    """Which containment is active and why, for ``toolpool doctor`` and the status dump."""
    o = _owner
    if o.cgroup_checked:
        usable, reason = o.cgroup_root is not None, o.cgroup_reason
    else:  # not spawned yet: say what the first spawn would do, without creating anything
        usable, reason = _probe_cgroup()
    return {
        "mechanism": "cgroup" if usable else "marker",
        "process_group": True,
        "cgroup": o.cgroup_root,
        "cgroup_reason": reason,
        "memory_max": o.memory_reason,
        "marker": f"{MARKER_VAR}={o.prefix}<n>",
        "subreaper": False,
        "subreaper_reason": "not set: it would make the host program's own orphaned grandchildren its "
                            "children; the marker finds escapees without it",
        "watchdog_pid": o.watchdog_pid,
        "owner_death": "a watchdog process kills every tool and descendant when this process dies",
    }


def iter_lines(report: dict[str, Any]) -> Iterator[str]:
    """``describe()`` as short lines for the doctor."""
    yield f"containment: {report['mechanism']} ({report['cgroup_reason']})"
    yield f"  marker: {report['marker']}; memory cap: {report['memory_max']}"
    yield f"  owner death: {report['owner_death']}"
