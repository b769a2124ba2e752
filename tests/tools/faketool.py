#!/usr/bin/env python3
"""A real, misbehaving REPL for toolpool's tests.

Start-up behaviour comes from flags; per-prompt behaviour from the prompt's
first word.  The prompt is ``tp> ``.  Everything else is echoed as
``you said: <line>``.
"""

import argparse
import os
import signal
import subprocess
import sys
import time

PROMPT = b"tp> "
in_command = False
interrupted = False


def on_sigint(signum, frame):
    # Inside a command: cancel it.  Between commands: the prompt it was meant
    # for is already written and not yet read, so cancel that one when read.
    global interrupted
    if in_command:
        raise KeyboardInterrupt
    interrupted = True
out = sys.stdout.buffer
err = sys.stderr.buffer


def w(data: bytes) -> None:
    out.write(data)
    out.flush()


def spawn_grandchild(seconds: str) -> None:
    # Inherits stdout/stderr: the pipe stays open after this tool dies.
    subprocess.Popen([sys.executable, "-c", f"import time; time.sleep({seconds})"])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--startup", type=float, default=0.0)
    ap.add_argument("--crash-on-start", type=int, default=None)
    ap.add_argument("--no-prompt", action="store_true")
    ap.add_argument("--ignore-term", action="store_true")
    ap.add_argument("--ignore-int", action="store_true", help="SIGINT does nothing (an uninterruptible tool)")
    ap.add_argument("--banner", default="faketool ready")
    ap.add_argument("--grandchild", default=None, help="spawn a sleeping grandchild at start")
    ap.add_argument("--only-once", default=None, metavar="PATH",
                    help="start normally only if PATH can be created; otherwise crash on start (code 4)")
    args = ap.parse_args()

    global in_command, interrupted
    signal.signal(signal.SIGINT, signal.SIG_IGN if args.ignore_int else on_sigint)
    if args.ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if args.grandchild:
        spawn_grandchild(args.grandchild)
    time.sleep(args.startup)
    if args.only_once:
        try:
            os.close(os.open(args.only_once, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            args.crash_on_start = 4
    if args.crash_on_start is not None:
        err.write(b"fatal: cannot start (simulated)\n")
        err.flush()
        return args.crash_on_start
    w(args.banner.encode() + b"\n")
    if args.no_prompt:
        time.sleep(3600)
    w(PROMPT)
    stdin = sys.stdin.buffer
    while True:
        line = stdin.readline()
        if not line:
            return 0
        line = line.rstrip(b"\n")
        try:
            in_command = True
            if interrupted:
                raise KeyboardInterrupt
            handle(line)
        except KeyboardInterrupt:  # SIGINT cancels the command, like aider
            w(b"[interrupted]\n" + PROMPT)
        finally:
            in_command = interrupted = False


def handle(line: bytes) -> None:
    """One command; see the module docstring."""
    word, _, rest = line.partition(b" ")
    if word == b"crash":  # partial answer, a word on stderr, then die
        w(b"working on it...")
        err.write(b"boom: simulated crash\n")
        err.flush()
        os._exit(int(rest or 3))
    elif word == b"crash-once":  # crash unless the marker file exists (create it first)
        try:
            os.close(os.open(rest, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            w(b"survived\n" + PROMPT)
            return
        os._exit(6)
    elif word == b"kill-self":
        w(b"about to die")
        os.kill(os.getpid(), signal.SIGKILL)
    elif word == b"big":  # N bytes of output in lines
        n = int(rest)
        line_ = b"x" * 99 + b"\n"
        full, part = divmod(n, 100)
        for _ in range(full):
            out.write(line_)
        out.write(b"y" * part)
        w(b"\n" + PROMPT)
    elif word == b"stderr":  # flood stderr, then answer
        n = int(rest)
        chunk = b"e" * 65535 + b"\n"
        for _ in range(n // 65536):
            err.write(chunk)
        err.flush()
        w(b"done flooding\n" + PROMPT)
    elif word == b"sleep":
        time.sleep(float(rest))
        w(b"slept\n" + PROMPT)
    elif word == b"nonl":  # answer with no newline before the prompt
        w(b"no newline here" + PROMPT)
    elif word == b"len":
        w(b"len=%d\n" % len(line) + PROMPT)
    elif word == b"hang":
        time.sleep(3600)
    elif word == b"flood":  # endless stdout, never a prompt
        chunk = b"z" * 65535 + b"\n"
        while True:
            out.write(chunk)
    elif word == b"partial":
        w(b"half a line")
        time.sleep(3600)
    elif word == b"closeout":  # close stdout, keep living
        w(b"closing\n")
        os.close(1)
        time.sleep(3600)
    elif word == b"grandchild":  # a grandchild keeps stdout open; then die
        spawn_grandchild(rest.decode() or "60")
        w(b"spawned")
        os._exit(5)
    elif word == b"fakeprompt":  # the answer contains the prompt mid-way
        w(b"first part tp> ")
        time.sleep(float(rest or 0.05))
        w(b"second part\n" + PROMPT)
    elif word == b"unicode":
        w("héllo wörld ✓\n".encode() + PROMPT)
    elif word == b"exit":
        sys.exit(int(rest or 0))
    else:
        w(b"you said: " + line + b"\n" + PROMPT)


if __name__ == "__main__":
    sys.exit(main())
