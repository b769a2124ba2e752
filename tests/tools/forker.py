#!/usr/bin/env python3
"""A program that forks while it owns a pool; the child exits normally (atexit runs).

``forker.py [--multiprocessing]``: prints one JSON line with what the parent
still has after the child is gone: each instance's answer (or error), and
whether the claude adapter's private directory survived.
"""

import json
import multiprocessing
import os
import sys

from toolpool import ReplAdapter, ToolProcessPool
from toolpool.adapters import ClaudeAdapter

HERE = os.path.dirname(os.path.abspath(__file__))


def child_work() -> None:
    print("child ran", file=sys.stderr)


def main() -> int:
    adapter = ReplAdapter([sys.executable, "-u", os.path.join(HERE, "escaper.py")], prompt=r"tp> $",
                          start_timeout=20)
    pool = ToolProcessPool(adapter, 3)
    claude = ClaudeAdapter(cli_path=sys.executable)
    private = os.path.dirname(claude.slot_config_dir(0))
    if "--multiprocessing" in sys.argv:
        proc = multiprocessing.get_context("fork").Process(target=child_work)
        proc.start()
        proc.join(30)
    else:
        pid = os.fork()
        if pid == 0:
            sys.exit(0)  # a normal exit: atexit hooks and finalizers run in the child
        os.waitpid(pid, 0)
    answers = []
    for i in range(3):
        try:
            answers.append(pool.ask(i, f"still there {i}", timeout=10).text)
        except Exception as exc:  # noqa: BLE001 - reported to the test
            answers.append(f"{type(exc).__name__}: {exc}")
    print(json.dumps({"answers": answers, "private_dir_kept": os.path.isdir(private)}), flush=True)
    pool.shutdown()
    claude.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
