"""A pool of aider instances editing several files of a git repository in parallel.

Run:  python examples/aider_pool.py

The script makes a small git repository in a temporary directory, starts a
pool of two ``aider`` processes in it, and gives each file to one instance
under a lease: ``/add`` the file, ask for a change, ``/drop`` it again.  Two
worker threads share the pool, so two files are edited at a time.

Without OPENAI_API_KEY it runs offline: :class:`toolpool.testing.FakeOpenAIServer`
stands in for the OpenAI API, with a reply function that answers like a model
in aider's "whole file" edit format (the file name, then the new content in a
fence), so aider really applies the edits.  With the key set it uses the real
API (model ``$AIDER_MODEL``, default ``gpt-4o-mini``) and costs tokens.

Finding ``aider``: ``$TOOLPOOL_AIDER``, then PATH, then where
``scripts/install-real-tools.sh`` puts it.  Without it the example says so and
exits 0.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import os
import re
import subprocess
import sys
import tempfile
import time

from toolpool import ToolProcessPool
from toolpool.adapters import AiderAdapter
from toolpool.adapters.aider import aider_command
from toolpool.testing import FakeOpenAIServer, RecordedRequest, find_tool

FILES = {
    "calc.py": "def add(a, b):\n    return a + b\n",
    "strings.py": "def shout(text):\n    return text.upper() + '!'\n",
    "paths.py": "import os\n\n\ndef home():\n    return os.path.expanduser('~')\n",
}
TASK = "Add a one-line module docstring at the top of {name}. Change nothing else."


def make_repo(root: str) -> str:
    repo = os.path.join(root, "repo")
    os.makedirs(repo)
    for name, text in FILES.items():
        with open(os.path.join(repo, name), "w") as f:
            f.write(text)
    git = ["git", "-c", "user.name=example", "-c", "user.email=example@example.invalid",
           "-c", "init.defaultBranch=main"]
    for args in (["init", "-q"], ["add", "."], ["commit", "-qm", "initial"]):
        subprocess.run(git + args, cwd=repo, check=True)
    return repo


def fake_model(repo: str):
    """An offline 'model' that answers a docstring request with a whole-file edit."""

    def reply(request: RecordedRequest) -> str:
        m = re.search(r"docstring at the top of (\S+?)\.?\s", request.user_text + " ")
        if not m:
            return "OK."
        name = m.group(1)
        with open(os.path.join(repo, name)) as f:
            body = f.read()
        return f'{name}\n```\n"""{name}: part of the toolpool aider example."""\n{body}```\n'

    return reply


def edit(pool: ToolProcessPool, name: str) -> str:
    """One task on one instance: add the file, ask for the change, drop the file."""
    with pool.lease(timeout=120) as lease:
        lease.ask(aider_command("/add", name), timeout=60)
        r = lease.ask(TASK.format(name=name), timeout=120)
        lease.ask(aider_command("/drop", name), timeout=60)
    applied = "Applied edit" in r.text
    return (f"instance {lease.index}: {name}: {'edited' if applied else 'NOT edited'} in {r.elapsed:.2f}s, "
            f"{r.tokens_sent} tokens sent, {r.tokens_received} received")


def main() -> int:
    aider = find_tool("aider")
    if aider is None:
        print("SKIPPED: aider not found: set TOOLPOOL_AIDER, put aider on PATH, "
              "or run scripts/install-real-tools.sh")
        return 0

    with contextlib.ExitStack() as stack:
        root = stack.enter_context(tempfile.TemporaryDirectory(prefix="aider-example-"))
        repo = make_repo(root)
        if os.environ.get("OPENAI_API_KEY"):
            model, api_base, api_key = os.environ.get("AIDER_MODEL", "gpt-4o-mini"), None, None
            print(f"using the real OpenAI API with {model} (OPENAI_API_KEY is set)")
        else:
            server = stack.enter_context(FakeOpenAIServer(reply=fake_model(repo)))
            model, api_base, api_key = "openai/fake-model", server.url + "/v1", "sk-fake-offline"
            print(f"offline: FakeOpenAIServer at {server.url} stands in for the API")

        # The adapter runs aider non-interactively (--yes-always, no auto-commits, no
        # update checks), with a private HOME per slot, and warms each instance up.
        adapter = AiderAdapter(aider, model=model, api_base=api_base, api_key=api_key, cwd=repo)
        t0 = time.perf_counter()
        pool = stack.enter_context(ToolProcessPool(adapter, count=2))
        print(f"{pool.size} aider instances ready in {time.perf_counter() - t0:.2f}s")

        t0 = time.perf_counter()
        with cf.ThreadPoolExecutor(max_workers=pool.size) as workers:
            for line in workers.map(lambda name: edit(pool, name), FILES):
                print(line)
        print(f"{len(FILES)} files in {time.perf_counter() - t0:.2f}s")

        diff = subprocess.run(["git", "diff", "--stat"], cwd=repo, capture_output=True, text=True).stdout
        print("git diff --stat:\n" + diff.rstrip())
        for name in FILES:
            with open(os.path.join(repo, name)) as f:
                print(f"{name}: first line now {f.readline().rstrip()!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
