"""A pool of REPLs: Python in a pseudo-terminal, and Node.js (if installed) over pipes.

Run:  python examples/repl_pool.py

Any line-oriented interactive tool fits :class:`toolpool.ReplAdapter`: an argv
list (never a shell) and a regular expression that matches the END of the
tool's output when it waits for input.

* CPython's REPL prints its ``>>> `` prompt on stderr when stdin is a pipe, so
  it runs in a pty (``transport="pty"``), where stdout and stderr are one
  stream.  In a pty a prompt must be one line of at most 4095 bytes without
  control characters; toolpool refuses others with ValueError before sending.
* ``node -i`` prints its ``> `` prompt on stdout; with ``NODE_NO_READLINE=1``
  it needs no terminal, so plain pipes work.
"""

from __future__ import annotations

import shutil
import sys
import time

from toolpool import ReplAdapter, ToolProcessPool


def python_pool() -> None:
    python = ReplAdapter([sys.executable, "-u", "-i", "-q"], prompt=r">>> $", transport="pty", name="python")
    with ToolProcessPool(python, count=2) as pool:
        # Each instance is its own interpreter: state stays per instance.
        pool.ask(0, "x = 6", timeout=10)
        pool.ask(1, "x = 100", timeout=10)
        print("python[0] x * 7      ->", pool.ask(0, "x * 7", timeout=10).text)
        print("python[1] x * 7      ->", pool.ask(1, "x * 7", timeout=10).text)
        squares = [r.text for r in pool.map([f"{n} ** 2" for n in range(6)], timeout=10)]
        print("map n ** 2           ->", squares)

        # A block of code is several lines; a REPL answers each line on its own, so
        # send it as one line (exec) rather than with newlines (refused: ValueError).
        try:
            pool.ask(0, "for i in range(3):\n    print(i)", timeout=10)
        except ValueError as exc:
            print("multi-line prompt    -> ValueError:", exc)
        out = pool.ask(0, "exec('for i in range(3):\\n    print(i * i)')", timeout=10)
        print("exec(...)            ->", out.text.split("\n"))

        # Errors are just output: the REPL prints a traceback and prompts again.
        print("1/0                  ->", pool.ask(0, "1/0", timeout=10).text.splitlines()[-1])

        # Interrupt a long computation: SIGINT -> KeyboardInterrupt -> prompt again.
        pool.send_prompt(1, "import time; time.sleep(30)")
        time.sleep(0.3)
        t0 = time.perf_counter()
        pool.interrupt(1)
        r = pool.read_response(1, timeout=10)
        print(f"interrupted in {time.perf_counter() - t0:.2f}s ->", r.text.splitlines()[-1])
        print("python[1] still has x ->", pool.ask(1, "x", timeout=10).text)


def node_pool() -> None:
    node = shutil.which("node")
    if node is None:
        print("node is not installed: skipping the Node.js pool")
        return
    adapter = ReplAdapter([node, "-i"], prompt=r"^> $", env={"NODE_NO_READLINE": "1"}, name="node")
    with ToolProcessPool(adapter, count=2) as pool:
        print("node 6 * 7           ->", pool.ask(0, "6 * 7", timeout=10).text)
        results = [r.text for r in pool.map(["[1, 2, 3].map(n => n * 2)", "'pool'.toUpperCase()",
                                             "console.log('printed'); 1 + 1"], timeout=10)]
        print("node map             ->", results)


def main() -> int:
    python_pool()
    node_pool()
    return 0


if __name__ == "__main__":
    sys.exit(main())
