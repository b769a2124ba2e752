#!/usr/bin/env python3
"""A REPL whose descendants try to outlive it, for the containment tests.

Flags: ``--setsid-child`` starts a grandchild in a session of its own (as the
real claude's Bash tool does), ``--child`` one in the tool's own group,
``--ignore-eof`` keeps the tool alive after stdin closes, ``--ignore-term``
ignores SIGTERM.  Commands: ``pids`` answers the grandchildren's pids, ``busy``
spins without answering, anything else is echoed.  The prompt is ``tp> ``.
"""

import argparse
import signal
import subprocess
import sys
import time

SLEEPER = [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--setsid-child", action="store_true")
    ap.add_argument("--child", action="store_true")
    ap.add_argument("--ignore-eof", action="store_true")
    ap.add_argument("--ignore-term", action="store_true")
    args = ap.parse_args()
    if args.ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    children = []
    if args.setsid_child:
        children.append(subprocess.Popen(SLEEPER, start_new_session=True, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    if args.child:
        children.append(subprocess.Popen(SLEEPER, stdin=subprocess.DEVNULL))
    out = sys.stdout
    out.write("tp> ")
    out.flush()
    while True:
        line = sys.stdin.readline()
        if not line:
            if args.ignore_eof:
                time.sleep(600)
            return 0
        word = line.strip()
        if word == "pids":
            out.write(" ".join(str(c.pid) for c in children) + "\ntp> ")
        elif word == "busy":
            while True:
                pass
        else:
            out.write(f"you said: {word}\ntp> ")
        out.flush()


if __name__ == "__main__":
    sys.exit(main())
