#!/usr/bin/env python3
"""A one-shot tool: slow start-up, reads the whole prompt from stdin, answers, exits.

``--startup S`` sleeps before reading (like a CLI loading its runtime).  A
prompt ``fail N`` exits with code N after a word on stderr.
"""
import sys
import time

startup = float(sys.argv[sys.argv.index("--startup") + 1]) if "--startup" in sys.argv else 0.0
time.sleep(startup)
prompt = sys.stdin.read()
if prompt.startswith("fail"):
    sys.stderr.write("oneshot: asked to fail\n")
    sys.exit(int(prompt.split()[1]))
sys.stdout.write(f"answer to: {prompt}\n")
