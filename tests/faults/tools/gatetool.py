#!/usr/bin/env python3
"""faketool behind a gate file, for crash loops that begin after a healthy start.

Usage: gatetool.py GATE [faketool flags...].  While the file GATE exists,
every start fails at once: a line on stderr, exit code 4.  Otherwise it runs
tests/tools/faketool.py (same process, so the pid is the tool's).
"""

import os
import runpy
import sys

FAKETOOL = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                        "tools", "faketool.py")

gate = sys.argv[1]
if os.path.exists(gate):
    sys.stderr.write("fatal: gate closed (simulated start-up failure)\n")
    sys.stderr.flush()
    sys.exit(4)
sys.argv = [FAKETOOL, *sys.argv[2:]]
runpy.run_path(FAKETOOL, run_name="__main__")
