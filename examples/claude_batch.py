"""A warm pool of Claude Code (``claude``) sessions answering a batch of prompts.

Run:  python examples/claude_batch.py

Each instance is one long-lived ``claude -p --input-format stream-json
--output-format stream-json`` process, started once and reused for every
prompt, so a prompt pays no start-up.  A response is complete at claude's
``result`` line: exact framing, no screen scraping.

Without ANTHROPIC_API_KEY the example runs offline: a
:class:`toolpool.testing.FakeAnthropicServer` on 127.0.0.1 stands in for the
Anthropic API (``ANTHROPIC_BASE_URL`` points claude at it), and nothing leaves
the machine.  With the key set it talks to the real API (and costs tokens).

Finding ``claude``: ``$TOOLPOOL_CLAUDE``, then PATH, then where
``scripts/install-real-tools.sh`` puts it.  Without it the example says so and
exits 0.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time

from toolpool import ToolProcessPool
from toolpool.adapters import ClaudeAdapter
from toolpool.testing import FakeAnthropicServer, find_tool

PROMPTS = [
    "Summarise what a connection pool is in one sentence.",
    "Name one risk of retrying a non-idempotent request.",
    "Suggest a better name for process_data().",
    "What does SIGTERM mean?",
    "Give one reason to pre-spawn worker processes.",
    "What is a zombie process?",
]


def main() -> int:
    claude = find_tool("claude")
    if claude is None:
        print("SKIPPED: claude (Claude Code) not found: set TOOLPOOL_CLAUDE, put claude on PATH, "
              "or run scripts/install-real-tools.sh")
        return 0

    with contextlib.ExitStack() as stack:
        env = {}
        if os.environ.get("ANTHROPIC_API_KEY"):
            print("using the real Anthropic API (ANTHROPIC_API_KEY is set)")
        else:
            # A deterministic stand-in model: answers name the prompt it got.
            server = stack.enter_context(FakeAnthropicServer(
                reply=lambda request: f"(fake model) an answer to: {request.user_text}"))
            env = {"ANTHROPIC_BASE_URL": server.url, "ANTHROPIC_API_KEY": "sk-fake-offline"}
            print(f"offline: FakeAnthropicServer at {server.url} stands in for the API")

        workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="claude-batch-"))
        adapter = ClaudeAdapter(cli_path=claude, cwd=workdir, env=env, no_session_persistence=True,
                                max_retries=2)
        t0 = time.perf_counter()
        pool = stack.enter_context(ToolProcessPool(adapter, count=2))
        print(f"{pool.size} claude sessions ready in {time.perf_counter() - t0:.2f}s")

        t0 = time.perf_counter()
        total_cost = 0.0
        for n, response in enumerate(pool.map(PROMPTS, timeout=120)):
            status = "ERROR" if response.is_error else "ok"
            total_cost += response.cost_usd or 0.0
            print(f"[{n}] instance {response.index} {status} {response.elapsed:.2f}s "
                  f"(warm={response.timings.warm}): {response.text}")
        wall = time.perf_counter() - t0
        stats = pool.stats()
        print(f"{len(PROMPTS)} prompts in {wall:.2f}s on {pool.size} instances; "
              f"p50 {stats['response']['p50']:.2f}s, reported cost ${total_cost:.4f}")
        sessions = {i["index"]: i["requests"] for i in pool.get_status()["instances"]}
        print(f"requests per instance: {sessions}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
