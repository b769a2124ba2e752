"""Process lifecycle: which pools this process owns, cleanup at exit, fork safety, odd signal setups.

* **Live pools.**  :func:`register_pool` / :func:`unregister_pool` keep a weak
  registry; at interpreter exit every pool still registered is shut down.
* **Background shutdowns.**  A shutdown requested from a callback runs on a
  thread of its own; :func:`track_background` keeps it so that exit waits for
  it, and forgets threads that finished (the list never grows without bound).
* **Fork.**  A child made by ``os.fork()`` (or multiprocessing's fork start
  method) shares nothing it may clean up: its copies of the parent's pools are
  dropped from the registry in the child, so its exit leaves the parent's tools
  and private directories alone.  :func:`in_owner_process` tells code that runs
  later (finalizers, ``__del__``) whether it is in the process that made them.
* **SIGCHLD.**  :func:`check_sigchld` refuses to start tools when the program
  ignores SIGCHLD, because the kernel then discards exit statuses.
* **Private directories.**  :func:`private_dir` makes the 0700 temporary
  directories adapters keep per-slot state in (claude config dirs, aider homes),
  named after their owner, and reclaims those whose owner is gone.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import shutil
import signal
import tempfile
import threading
import weakref
from typing import Any

from .errors import SpawnError

log = logging.getLogger("toolpool.lifecycle")

_lock = threading.Lock()
_pools: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()  # pool -> pid that made it
_background: list[threading.Thread] = []
_import_pid = os.getpid()


# ------------------------------------------------------------------ pools
def register_pool(pool: Any) -> None:
    """Record a pool made by this process; it is shut down at exit if still open."""
    with _lock:
        _pools[pool] = os.getpid()


def unregister_pool(pool: Any) -> None:
    """The pool shut down: nothing left to do for it at exit."""
    with _lock:
        _pools.pop(pool, None)


def live_pools() -> list[Any]:
    """The pools this process made and has not shut down."""
    me = os.getpid()
    with _lock:
        return [pool for pool, pid in list(_pools.items()) if pid == me]


def track_background(thread: threading.Thread) -> None:
    """Keep a background shutdown thread for exit to join; finished ones are dropped."""
    with _lock:
        _background[:] = [t for t in _background if t.is_alive() or not t.ident]
        _background.append(thread)


def background_threads() -> list[threading.Thread]:
    with _lock:
        return list(_background)


def in_owner_process(pool: Any = None) -> bool:
    """True in the process that made ``pool`` (or, without one, that imported toolpool).

    False in a forked child: there, the parent's pools, tools and directories are
    not ours to stop or delete.
    """
    if pool is None:
        return os.getpid() == _import_pid
    with _lock:
        return _pools.get(pool) == os.getpid()


def _shutdown_forgotten_pools() -> None:
    """A pool the program forgot to shut down is cleaned up at interpreter exit (its maker's only)."""
    for pool in live_pools():
        try:
            pool.shutdown(timeout=2.0)
        except Exception:  # pragma: no cover - best effort at exit
            log.debug("shutting down a forgotten pool at exit failed", exc_info=True)
    for thread in background_threads():
        if thread.ident and thread is not threading.current_thread():
            thread.join(30.0)


atexit.register(_shutdown_forgotten_pools)


def _after_fork_in_child() -> None:
    global _import_pid, _lock
    # A lock another thread held at fork time would never be released here: start fresh.
    _lock = threading.Lock()
    # The parent's pools are not ours; nor are its background threads (they did not survive the fork).
    _pools.clear()
    _background.clear()
    _import_pid = -1  # never a pid: in_owner_process() is False here for what the parent made


os.register_at_fork(after_in_child=_after_fork_in_child)


# ------------------------------------------------------------------ SIGCHLD
class SigchldIgnored(SpawnError):
    """The program ignores SIGCHLD, so the exit status of every child is lost."""


def check_sigchld(restore: bool = False) -> None:
    """Refuse (or, with ``restore``, repair) a process that ignores SIGCHLD.

    With ``signal.signal(SIGCHLD, SIG_IGN)`` the kernel reaps children itself and
    discards their exit statuses: a crashed tool would read as exit code 0, and a
    one-shot tool killed mid-answer would return its partial output as a success.
    No per-child fix exists (the setting is process-wide), so toolpool refuses.
    ``restore=True`` puts back the default action instead (from the main thread
    only); correct for our children, but the program's own children then need
    reaping by the program, as they would on any default setup.
    """
    if signal.getsignal(signal.SIGCHLD) != signal.SIG_IGN:
        return
    if restore:
        if threading.current_thread() is not threading.main_thread():
            raise SigchldIgnored("SIGCHLD is ignored in this program and can only be restored from the main "
                                 "thread: call signal.signal(signal.SIGCHLD, signal.SIG_DFL) there first")
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        log.warning("SIGCHLD was ignored (SIG_IGN); restored the default so tool exit codes can be read")
        return
    raise SigchldIgnored(
        "SIGCHLD is ignored in this program (signal.signal(SIGCHLD, SIG_IGN)), so the kernel discards every "
        "child's exit status and toolpool cannot tell a crashed tool from one that finished; restore it with "
        "signal.signal(signal.SIGCHLD, signal.SIG_DFL) before creating the pool")


# ------------------------------------------------------------------ private directories
_DIR_NAME = re.compile(r"^toolpool-(?P<kind>[a-z]+)-(?P<pid>\d+)-(?P<start>\d+)-")
_reclaimed: dict[str, bool] = {}


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (tells a reused pid apart), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    return int(stat.rsplit(b")", 1)[1].split()[19])


def private_dir(kind: str, parent: str | None = None) -> str:
    """A new 0700 directory ``toolpool-<kind>-<pid>-<start time>-XXXX`` in ``parent`` (the temp dir).

    The first call per kind and parent also removes such directories left by owners that
    are gone (killed before they could clean up): same user, and no live process
    with that pid and start time.
    """
    if not re.fullmatch(r"[a-z]+", kind):
        raise ValueError(f"kind must be lowercase letters, got {kind!r}")
    me = os.getpid()
    key = f"{kind}:{me}:{parent or tempfile.gettempdir()}"  # once per kind and directory
    if not _reclaimed.get(key):
        _reclaimed[key] = True
        reclaim_stale_dirs(kind, parent)
    return tempfile.mkdtemp(prefix=f"toolpool-{kind}-{me}-{_start_time(me) or 0}-", dir=parent)


def dir_owner_alive(name: str) -> bool | None:
    """For a :func:`private_dir` name: is its owner still running?  None if not such a name."""
    m = _DIR_NAME.match(os.path.basename(name))
    if m is None:
        return None
    return _start_time(int(m["pid"])) == int(m["start"])


def reclaim_stale_dirs(kind: str, parent: str | None = None) -> list[str]:
    """Remove ``kind``'s private directories whose owner is gone; return their paths."""
    parent = parent or tempfile.gettempdir()
    removed: list[str] = []
    try:
        names = os.listdir(parent)
    except OSError:
        return removed
    for name in names:
        m = _DIR_NAME.match(name)
        path = os.path.join(parent, name)
        if m is None or m["kind"] != kind or dir_owner_alive(name):
            continue
        try:
            if os.lstat(path).st_uid != os.geteuid() or not os.path.isdir(path):
                continue
        except OSError:
            continue
        shutil.rmtree(path, ignore_errors=True)
        log.info("removed %s: left by toolpool process %s, which is gone", path, m["pid"])
        removed.append(path)
    return removed


def remove_private_dir(path: str) -> None:
    """Delete a :func:`private_dir`, but only from the process that made it (never a forked child).

    Meant for ``weakref.finalize(adapter, remove_private_dir, path)``.
    """
    m = _DIR_NAME.match(os.path.basename(path))
    if m is not None and int(m["pid"]) != os.getpid():
        return
    shutil.rmtree(path, ignore_errors=True)
