"""A multi-turn Claude Code conversation on one leased instance (context kept).

Run:  python examples/claude_conversation.py

``with pool.lease() as lease:`` gives this block one ``claude`` session for
as long as it runs: every ``lease.ask`` goes to the same process, so claude
sends the whole conversation so far with each new prompt, and no other
caller's prompt can slip in between.  Meanwhile the pool's other instances keep
serving ``submit()``.  The example also streams a reply as it is generated,
with ``include_partial_messages=True`` and an ``on_event`` callback.

Without ANTHROPIC_API_KEY it runs offline against
:class:`toolpool.testing.FakeAnthropicServer`, whose reply function here
counts the user messages it was sent: the count growing turn after turn is
the proof that context is kept.  Without ``claude`` it says so and exits 0.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile

from toolpool import ToolProcessPool
from toolpool.adapters import ClaudeAdapter
from toolpool.adapters.claude import text_delta
from toolpool.testing import FakeAnthropicServer, RecordedRequest, find_tool


def fake_model(request: RecordedRequest) -> str:
    """What the offline stand-in answers: how much of the conversation it was sent."""
    turns = sum(1 for m in request.messages if m.get("role") == "user")
    return f"This conversation has {turns} user message(s) so far; the last one was: {request.user_text}"


def main() -> int:
    claude = find_tool("claude")
    if claude is None:
        print("SKIPPED: claude (Claude Code) not found: set TOOLPOOL_CLAUDE, put claude on PATH, "
              "or run scripts/install-real-tools.sh")
        return 0

    with contextlib.ExitStack() as stack:
        env = {}
        server = None
        if os.environ.get("ANTHROPIC_API_KEY"):
            print("using the real Anthropic API (ANTHROPIC_API_KEY is set)")
        else:
            server = stack.enter_context(FakeAnthropicServer(reply=fake_model))
            env = {"ANTHROPIC_BASE_URL": server.url, "ANTHROPIC_API_KEY": "sk-fake-offline"}
            print(f"offline: FakeAnthropicServer at {server.url} stands in for the API")
        workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="claude-chat-"))
        adapter = ClaudeAdapter(cli_path=claude, cwd=workdir, env=env, no_session_persistence=True,
                                include_partial_messages=True, max_retries=2)
        pool = stack.enter_context(ToolProcessPool(adapter, count=2))

        questions = [
            "My project is called toolpool. Remember that.",
            "It runs interactive CLI tools in a pool. What is it called?",
            "Summarise our conversation in one sentence.",
        ]
        with pool.lease(timeout=30) as lease:
            print(f"leased instance {lease.index}")
            session = None
            for n, question in enumerate(questions, 1):
                print(f"\nyou> {question}")
                print("claude> ", end="", flush=True)
                # on_event runs on the instance's reader thread for every stream-json line;
                # text_delta() picks out the pieces of the answer as they are generated.
                r = lease.ask(question, timeout=120,
                              on_event=lambda e: print(text_delta(e) or "", end="", flush=True))
                print(f"\n        (turn {n}, {r.elapsed:.2f}s, session {r.session_id}, is_error={r.is_error})")
                assert session in (None, r.session_id), "a lease keeps one claude session"
                session = r.session_id

            # While the lease is held, the other instance still serves the pool.
            other = pool.submit("A separate question from another caller", timeout=120).result()
            print(f"\nmeanwhile submit() ran on instance {other.index} (not {lease.index}): {other.text}")

        if server is not None:
            conversation = [r for r in server.requests if r.path == "/v1/messages"
                            and "toolpool" in str(r.messages)]
            sizes = [len(r.messages) for r in conversation]
            print(f"\nmessages sent to the API per turn of the leased session: {sizes} (growing: context kept)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
