"""The owner's watchdog: kill every tool process once the owner is gone.

Run by :func:`toolpool.containment.ensure_watchdog` as
``python -I -S _watchdog.py <marker prefix> <cgroup dir or "">`` in a session of
its own, with stdin the read end of a pipe whose write end only the owner holds.
EOF on stdin therefore means the owner exited, however it died (SIGKILL
included) or closed the pipe on purpose.  Then:

1. ``cgroup.kill`` on the owner's cgroup directory (every tool's scope below it);
2. SIGKILL to every process whose environment carries the owner's marker
   prefix, scanned again until none is left (a process forking while we kill);
3. remove the cgroup directories, and exit.

Standalone on purpose (stdlib only, isolated mode): it must start fast and
must not import toolpool, whose import could fail or be slow in odd setups.
"""

from __future__ import annotations

import os
import signal
import sys
import time

MARKER_VAR = b"TOOLPOOL_INSTANCE="
SWEEP_SECONDS = 1.5  # the owner's promise is "gone within 2 s"


def marked(entry: bytes, exact: bool = False) -> list[int]:
    """Live processes (not us) whose environment has ``entry`` (or, unless ``exact``, an entry
    starting with it).  Zombies never match: their environment reads empty."""
    me = os.getpid()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                env = f.read()
        except OSError:
            continue
        entries = env.split(b"\0")
        if entry in entries if exact else any(e.startswith(entry) for e in entries):
            found.append(int(name))
    return found


def kill_cgroups(root: str) -> None:
    try:
        with open(os.path.join(root, "cgroup.kill"), "w") as f:
            f.write("1")
    except OSError:
        pass


def remove_cgroups(root: str, deadline: float) -> None:
    dirs = sorted((d for d, _, _ in os.walk(root)), key=len, reverse=True)
    for path in dirs:
        while True:
            try:
                os.rmdir(path)
                break
            except FileNotFoundError:
                break
            except OSError:
                if time.monotonic() >= deadline:
                    break
                time.sleep(0.01)  # killed processes leave their cgroup asynchronously


def sweep(prefix: bytes, cgroup_root: str) -> None:
    deadline = time.monotonic() + SWEEP_SECONDS
    if cgroup_root:
        kill_cgroups(cgroup_root)
    quiet_rounds = 0
    while quiet_rounds < 2 and time.monotonic() < deadline:
        pids = marked(MARKER_VAR + prefix)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        quiet_rounds = 0 if pids else quiet_rounds + 1
        if pids:
            time.sleep(0.005)
    if cgroup_root:
        remove_cgroups(cgroup_root, deadline + 0.5)


def main() -> int:
    prefix, cgroup_root = sys.argv[1].encode(), sys.argv[2]
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_IGN)  # a terminal's signals are for the owner, not for us
    while True:
        try:
            data = os.read(0, 4096)
        except InterruptedError:
            continue
        except OSError:
            break
        if not data:
            break
    sweep(prefix, cgroup_root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
