#!/usr/bin/env python3
"""A minimal tool for toolpool's benchmarks (standard library only).

REPL mode (default): prints ``bench> ``; answers each input line with
``echo: <line> t=<ns>`` and the prompt again, in ONE ``write`` syscall.
``<ns>`` is ``clock_gettime_ns(CLOCK_MONOTONIC)`` read just before that write:
CLOCK_MONOTONIC is system-wide on Linux, so the caller can compute how long
after the tool's last byte it got the answer back.

``--oneshot``: reads stdin to EOF, answers once (same format, no prompt), exits.

``--startup S`` sleeps S seconds first (a CLI loading its runtime).
``--delay S`` sleeps S seconds before each answer (a tool that does some work).
"""

import os
import sys
import time

PROMPT = b"bench> "
CLOCK = time.CLOCK_MONOTONIC


def main() -> int:
    argv = sys.argv[1:]
    startup = float(argv[argv.index("--startup") + 1]) if "--startup" in argv else 0.0
    delay = float(argv[argv.index("--delay") + 1]) if "--delay" in argv else 0.0
    if startup:
        time.sleep(startup)
    stdin = sys.stdin.buffer
    if "--oneshot" in argv:
        prompt = stdin.read().rstrip(b"\n")
        os.write(1, b"echo: %s t=%d\n" % (prompt, time.clock_gettime_ns(CLOCK)))
        return 0
    os.write(1, PROMPT)
    readline = stdin.readline
    while True:
        line = readline()
        if not line:
            return 0
        if delay:
            time.sleep(delay)
        os.write(1, b"echo: %s t=%d\n%s" % (line.rstrip(b"\n"), time.clock_gettime_ns(CLOCK), PROMPT))


if __name__ == "__main__":
    sys.exit(main())
