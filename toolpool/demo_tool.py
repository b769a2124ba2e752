"""toolpool's built-in demo tool: an offline stand-in for an AI coding CLI.

Run it yourself with ``python -m toolpool.demo_tool``.  It prints a banner and
a ``demo> `` prompt, "thinks" for ``--think`` seconds per prompt, streams a
deterministic answer in small pieces, and prints the prompt again.  Commands:
``/help``, ``/stats``, ``/quit``.  It needs no network and no API key, and
depends on nothing outside the standard library (it runs as a plain script).
"""

from __future__ import annotations

import argparse
import hashlib
import signal
import sys
import time
from collections.abc import Sequence
from types import FrameType

PROMPT = "demo> "


def answer(prompt: str, turn: int) -> str:
    words = prompt.split()
    digest = hashlib.sha256(prompt.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return (
        f"[turn {turn}] You asked: {prompt}\n"
        f"That is {len(words)} word(s) and {len(prompt)} character(s); fingerprint {digest}.\n"
        f"Suggestion: {' '.join(reversed(words)) or '(nothing to suggest)'}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="toolpool-demo", description=__doc__.splitlines()[0])
    parser.add_argument("--think", type=float, default=0.05, help="seconds to 'think' per prompt")
    parser.add_argument("--startup", type=float, default=0.0, help="seconds to wait before the banner")
    parser.add_argument("--chunk", type=int, default=16, help="characters per streamed piece")
    args = parser.parse_args(argv)

    interrupted = False

    def on_sigint(signum: int, frame: FrameType | None) -> None:
        nonlocal interrupted
        interrupted = True

    signal.signal(signal.SIGINT, on_sigint)
    out = sys.stdout
    time.sleep(args.startup)
    out.write("toolpool demo tool - an offline stand-in for an AI coding CLI (type /help)\n")
    out.write(PROMPT)
    out.flush()
    turn = 0
    for line in sys.stdin:
        prompt = line.rstrip("\n")
        if prompt == "/quit":
            return 0
        if prompt == "/help":
            reply = "Type a prompt and get a deterministic answer. Commands: /help /stats /quit"
        elif prompt == "/stats":
            reply = f"turns answered: {turn}"
        else:
            turn += 1
            interrupted = False
            deadline = time.monotonic() + args.think
            while not interrupted and time.monotonic() < deadline:
                time.sleep(min(0.01, max(0.0, deadline - time.monotonic())))
            reply = "[interrupted]" if interrupted else answer(prompt, turn)
        for i in range(0, len(reply), max(1, args.chunk)):
            out.write(reply[i:i + args.chunk])
            out.flush()
        out.write("\n" + PROMPT)
        out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
