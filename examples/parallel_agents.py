"""Four coding agents fixing eight failing tests of one repository in parallel, each in its own worktree.

Run:  python examples/parallel_agents.py

The script makes a small git repository with eight bugs, each caught by its own failing test,
and starts a pool of four ``aider`` processes on it with ``workspace=GitWorktrees(repo)``: every
agent works in a git worktree and branch of its own, outside the repository's checkout, so the
agents never see each other's half-done edits.  Each task runs under a lease: ask for the fix,
then run that bug's test in the agent's worktree while nobody else can touch it.  Every
Response says which files the turn changed, its diff, and the commit holding it; the commits
whose tests pass are merged (cherry-picked) into ``main``, the others are left on their branches.

Without OPENAI_API_KEY it runs offline: :class:`toolpool.testing.FakeOpenAIServer` plays the
model with scripted whole-file edits, one of them deliberately wrong, so that one fix fails its
test and is not merged.  With the key set it uses the real API (``$AIDER_MODEL``, default
``gpt-4o-mini``) and costs tokens.

Finding ``aider``: ``$TOOLPOOL_AIDER``, then PATH, then where ``scripts/install-real-tools.sh``
puts it.  Without it the example says so and exits 0.
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
from toolpool.testing import FakeOpenAIServer, RecordedRequest, find_tool, whole_file
from toolpool.workspaces import GitWorktrees

#: module -> (buggy body, fixed body, test body).  Each test fails until its bug is fixed.
BUGS = {
    "calc": ("def add(a, b):\n    return a - b\n", "def add(a, b):\n    return a + b\n",
             "from lib.calc import add\nassert add(2, 3) == 5\n"),
    "shout": ("def shout(text):\n    return text.lower()\n", "def shout(text):\n    return text.upper()\n",
              "from lib.shout import shout\nassert shout('hi') == 'HI'\n"),
    "twice": ("def twice(x):\n    return x * 3\n", "def twice(x):\n    return x * 2\n",
              "from lib.twice import twice\nassert twice(4) == 8\n"),
    "parity": ("def is_even(n):\n    return n % 2 == 1\n", "def is_even(n):\n    return n % 2 == 0\n",
               "from lib.parity import is_even\nassert is_even(4) and not is_even(3)\n"),
    "clamp": ("def clamp(x, lo, hi):\n    return min(lo, max(hi, x))\n",
              "def clamp(x, lo, hi):\n    return max(lo, min(hi, x))\n",
              "from lib.clamp import clamp\nassert clamp(5, 0, 3) == 3 and clamp(-1, 0, 3) == 0\n"),
    "mean": ("def mean(xs):\n    return sum(xs) / (len(xs) - 1)\n", "def mean(xs):\n    return sum(xs) / len(xs)\n",
             "from lib.mean import mean\nassert mean([1, 2, 3]) == 2\n"),
    "last": ("def last(items):\n    return items[0]\n", "def last(items):\n    return items[-1]\n",
             "from lib.last import last\nassert last([1, 2, 3]) == 3\n"),
    "greet": ("def greet(name):\n    return 'Hello ' + name\n", "def greet(name):\n    return f'Hello {name}'\n",
              "from lib.greet import greet\nassert greet('Ada') == 'Hello, Ada!'\n"),  # the fake's fix is wrong
}
TASK = "Fix the bug in lib/{name}.py so that tests/test_{name}.py passes. Change nothing else."


def run(argv: list[str], cwd: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


def make_repo(root: str) -> str:
    repo = os.path.join(root, "repo")
    files = {".gitignore": "__pycache__/\n", "lib/__init__.py": "", "tests/__init__.py": ""}
    for name, (buggy, _, test) in BUGS.items():
        files[f"lib/{name}.py"] = buggy
        files[f"tests/test_{name}.py"] = "import unittest\n\n\nclass Test(unittest.TestCase):\n" \
            "    def test_it(self):\n" + "".join(f"        {line}\n" for line in test.splitlines())
    for path, text in files.items():
        os.makedirs(os.path.dirname(os.path.join(repo, path)), exist_ok=True)
        with open(os.path.join(repo, path), "w") as f:
            f.write(text)
    for argv in (["init", "-q", "-b", "main"], ["config", "user.name", "example"],
                 ["config", "user.email", "example@example.invalid"], ["add", "."], ["commit", "-qm", "eight bugs"]):
        run(["git", *argv], repo).check_returncode()
    return repo


def passes(cwd: str, name: str) -> bool:
    return run([sys.executable, "-m", "unittest", "-q", f"tests.test_{name}"], cwd).returncode == 0


def fake_model(request: RecordedRequest) -> str:
    """An offline 'model': answers each task with a whole-file edit of the file it names."""
    m = re.search(r"lib/(\w+)\.py", request.user_text)
    if not m or m.group(1) not in BUGS:
        return "OK."
    name = m.group(1)
    return whole_file(f"lib/{name}.py", BUGS[name][1], intro=f"The bug is in lib/{name}.py; fixed.")


def fix(pool: ToolProcessPool, name: str) -> tuple[str, int, list[str], bool, str | None, str]:
    """One task on one agent, under a lease so that its worktree is ours while its test runs."""
    with pool.lease(timeout=300) as lease:
        response = lease.ask(TASK.format(name=name), timeout=240)
        passed = response.workspace is not None and passes(response.workspace, name)
    changed = [f"{c['status']} {c['path']}" for c in response.changes]
    return name, lease.index, changed, passed, response.commit, response.diff or ""


def main() -> int:
    aider = find_tool("aider")
    if aider is None:
        print("SKIPPED: aider not found: set TOOLPOOL_AIDER, put aider on PATH, or run scripts/install-real-tools.sh")
        return 0
    with contextlib.ExitStack() as stack:
        repo = make_repo(stack.enter_context(tempfile.TemporaryDirectory(prefix="parallel-agents-")))
        failing = [n for n in BUGS if not passes(repo, n)]
        print(f"repository with {len(failing)} failing tests: {', '.join(failing)}")
        if os.environ.get("OPENAI_API_KEY"):
            model, api_base, api_key = os.environ.get("AIDER_MODEL", "gpt-4o-mini"), None, None
            print(f"using the real OpenAI API with {model} (OPENAI_API_KEY is set)")
        else:
            server = stack.enter_context(FakeOpenAIServer(reply=fake_model))
            model, api_base, api_key = "openai/fake-model", server.url + "/v1", "sk-fake-offline"
            print(f"offline: FakeOpenAIServer at {server.url} plays the model (scripted edits)")

        files = [f"lib/{n}.py" for n in BUGS] + [f"tests/test_{n}.py" for n in BUGS]
        adapter = AiderAdapter(aider, model=model, api_base=api_base, api_key=api_key, files=files)
        workspace = GitWorktrees(repo)  # one worktree and branch per agent, outside the checkout
        t0 = time.perf_counter()
        with ToolProcessPool(adapter, count=4, workspace=workspace, start_timeout=120) as pool:
            print(f"{pool.size} aider agents ready in {time.perf_counter() - t0:.1f}s, each in its own worktree")
            t0 = time.perf_counter()
            with cf.ThreadPoolExecutor(max_workers=pool.size) as workers:
                results = list(workers.map(lambda name: fix(pool, name), failing))
            print(f"{len(results)} tasks done in {time.perf_counter() - t0:.1f}s")
            branches = {slot: workspace.branch(slot) for slot in range(pool.size)}
        head = run(["git", "rev-parse", "--short", "HEAD"], repo).stdout.strip()
        untouched = run(["git", "status", "--porcelain"], repo).stdout == ""
        print(f"main still at {head}, checkout clean: {untouched}")
        for name, slot, changed, passed, commit, _ in results:
            print(f"  lib/{name}.py: agent {slot} on {branches[slot]}: {', '.join(changed) or 'no changes'}; "
                  f"test {'passes' if passed else 'FAILS'}; commit {commit[:10] if commit else None}")
        shown = next((diff for _, _, _, passed, _, diff in results if passed), "")
        print("one request's diff:\n" + "".join(f"    {line}\n" for line in shown.splitlines()))

        merged = 0
        for _, _, _, passed, commit, _ in results:
            if passed and commit:
                run(["git", "cherry-pick", commit], repo).check_returncode()
                merged += 1
        print(f"merged {merged} of {len(results)} fixes into main (the rest stay on their branches)")
        still = [n for n in BUGS if not passes(repo, n)]
        print(f"main now: {len(BUGS) - len(still)} of {len(BUGS)} tests pass; still failing: {', '.join(still)}")
        left = run(["git", "worktree", "list"], repo).stdout.strip().splitlines()
        print(f"worktrees left after shutdown: {len(left) - 1}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
