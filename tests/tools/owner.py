#!/usr/bin/env python3
"""An owning program for the containment tests: builds a pool, says READY, waits to be killed.

``owner.py <tool> [tool flags...]``: <tool> is ``escaper`` (tests/tools/escaper.py,
two instances, each flag passed through; ``--busy`` sends each instance ``busy``
first) or ``claude <cli path> <server url>`` (one real claude, sent a prompt the
slow fake server is still answering).  Prints ``READY <json>`` with the tools'
pids and their descendants' pids once everything runs.
"""

import json
import os
import sys
import time

from toolpool import ReplAdapter, ToolProcessPool

HERE = os.path.dirname(os.path.abspath(__file__))


def escaper(flags):
    busy = "--busy" in flags
    flags = [f for f in flags if f != "--busy"]
    adapter = ReplAdapter([sys.executable, "-u", os.path.join(HERE, "escaper.py"), *flags], prompt=r"tp> $",
                          start_timeout=20)
    pool = ToolProcessPool(adapter, 2)
    pids = [i["pid"] for i in pool.get_status()["instances"]]
    children = [int(p) for i in range(2) for p in pool.ask(i, "pids", timeout=10).text.split()]
    if busy:
        for i in range(2):
            pool.send_prompt(i, "busy")
    return pool, {"tools": pids, "children": children}


def claude(cli, url):
    from toolpool.adapters import ClaudeAdapter

    env = {"ANTHROPIC_BASE_URL": url, "ANTHROPIC_API_KEY": "sk-fake-owner-test", "NO_PROXY": "127.0.0.1"}
    pool = ToolProcessPool(ClaudeAdapter(cli_path=cli, env=env, start_timeout=60), 1)
    pool.send_prompt(0, "a slow question")
    return pool, {"tools": [i["pid"] for i in pool.get_status()["instances"]], "children": []}


def main() -> int:
    kind, rest = sys.argv[1], sys.argv[2:]
    pool, info = escaper(rest) if kind == "escaper" else claude(*rest)
    print("READY " + json.dumps(info), flush=True)
    time.sleep(600)
    pool.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
