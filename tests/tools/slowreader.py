#!/usr/bin/env python3
"""A REPL that reads its input slowly, like a tool busy parsing a huge paste.

It reads stdin at most ``--rate`` bytes per second (default 64 KiB/s) in
4 KiB reads, and answers each complete line with ``GOT <length> <first 16
bytes>`` and the prompt ``tp> ``.  A prompt of megabytes therefore stays
queued in the pool's writer for seconds: if any of it were left behind when a
turn is cut short, the next request would be answered ``GOT <huge> AAAA...``.
SIGINT, as in a REPL, drops the line being read (``[interrupted]`` and the
prompt) and reading goes on: the rest of that line then reads as a new one.
"""

import argparse
import os
import signal
import sys
import time

CHUNK = 4096


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=float, default=64 * 1024, help="bytes per second read from stdin")
    args = ap.parse_args()
    out = sys.stdout.buffer
    out.write(b"slowreader ready\ntp> ")
    out.flush()
    pause = CHUNK / args.rate
    interrupted = []
    signal.signal(signal.SIGINT, lambda signum, frame: interrupted.append(signum))
    pending = b""
    while True:
        data = os.read(0, CHUNK)  # PEP 475: retried after the handler runs
        if not data:
            return 0
        if interrupted:
            interrupted.clear()
            pending = b""
            out.write(b"[interrupted]\ntp> ")
            out.flush()
        pending += data
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            out.write(b"GOT %d %s\ntp> " % (len(line), line[:16]))
            out.flush()
        if len(data) == CHUNK:  # more is probably waiting: keep to the rate
            time.sleep(pause)


if __name__ == "__main__":
    sys.exit(main())
