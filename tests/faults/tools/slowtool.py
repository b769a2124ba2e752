#!/usr/bin/env python3
"""tests/tools/faketool.py with two more misbehaviours.

Usage: slowtool.py ECHO_DELAY_MS [faketool flags...]

* Every echo answer ("you said: ...") comes after 0 to 2 x ECHO_DELAY_MS ms,
  so that a chaos thread can catch requests in flight.
* ``last-words N``: close stdin, answer "last words" with a prompt, exit with
  code N: the tool dies right after a complete answer, and the next prompt
  written to it meets a closed pipe.

The other commands (crash, hang, ...) behave exactly as in faketool.
"""

import os
import random
import runpy
import sys
import time

FAKETOOL = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                        "tools", "faketool.py")
COMMANDS = {b"crash", b"crash-once", b"kill-self", b"big", b"stderr", b"sleep", b"nonl", b"len", b"hang",
            b"flood", b"partial", b"closeout", b"grandchild", b"fakeprompt", b"unicode", b"exit"}

delay = float(sys.argv[1]) / 1000.0
sys.argv = [FAKETOOL, *sys.argv[2:]]
tool = runpy.run_path(FAKETOOL, run_name="faketool")
handle, w = tool["handle"], tool["w"]


def more_handle(line: bytes) -> None:
    word, _, rest = line.partition(b" ")
    if word == b"last-words":
        os.close(0)
        w(b"last words\n" + tool["PROMPT"])
        os._exit(int(rest or 3))
    if word not in COMMANDS:
        time.sleep(random.uniform(0, 2 * delay))
    handle(line)


tool["main"].__globals__["handle"] = more_handle  # main() looks handle up at call time
sys.exit(tool["main"]())
