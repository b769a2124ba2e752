"""ToolProcessPool(workspace=...): each slot's directory, every turn's changes on its Response.

The tool is a real one-shot program that appends its prompt to ``notes.txt`` in its working
directory, so what a turn changed is known exactly.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from toolpool import CommandAdapter, Directory, GitWorktrees, ReplAdapter, ToolProcessPool

pytestmark = pytest.mark.timeout(120)

# Reads its prompt first: a pre-spawned process must not touch the directory before its turn.
WRITER = ["sh", "-c", 'read -r line; printf "%s\\n" "$line" >> notes.txt; pwd']


# The same as a REPL: one process answers many prompts, each appended to notes.txt.
REPL = [sys.executable, "-u", "-c", "import os, sys\n"
        "while True:\n"
        "    sys.stdout.write('tp> '); sys.stdout.flush()\n"
        "    line = sys.stdin.readline()\n"
        "    if not line: break\n"
        "    open('notes.txt', 'a').write(line)\n"
        "    print(os.getcwd())\n"]


def git(repo, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


@pytest.fixture
def repo(tmp_path):
    path = tmp_path / "repo"
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    (path / "README").write_text("base\n")
    git(path, "add", "README")
    git(path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "base")
    return path


def test_each_slot_has_its_directory_and_every_response_its_changes(tmp_path):
    dirs = {n: tmp_path / f"slot-{n}" for n in range(2)}
    for d in dirs.values():
        d.mkdir()
    adapter = ReplAdapter(REPL, prompt=r"tp> $")
    with ToolProcessPool(adapter, 2, workspace=Directory(lambda n: str(dirs[n]))) as pool:
        with pool.lease(timeout=10) as lease:
            first = lease.ask("one", timeout=20)
            assert first.text == str(dirs[lease.index]) and first.workspace == str(dirs[lease.index])
            assert first.changes == [{"path": "notes.txt", "status": "added"}]
            assert "+one" in (first.diff or "")
            second = lease.ask("two", timeout=20)
            assert second.changes == [{"path": "notes.txt", "status": "modified"}]
            assert "+two" in (second.diff or "") and "+one" not in (second.diff or "")
        results = list(pool.map([f"p{n}" for n in range(4)], timeout=20))
        assert {r.workspace for r in results} <= {str(d) for d in dirs.values()}
        assert all(r.changes and r.changes[0]["path"] == "notes.txt" for r in results)


def test_git_worktrees_reset_between_independent_requests_and_keep_every_result(repo):
    before = git(repo, "rev-parse", "HEAD")
    workspace = GitWorktrees(str(repo), reset_between=True)
    with ToolProcessPool(CommandAdapter(WRITER), 1, workspace=workspace) as pool:
        answers = [pool.submit(f"request {n}\n", timeout=30).result(40) for n in range(3)]
        worktree = answers[0].workspace
        assert worktree is not None and not worktree.startswith(str(repo))  # outside the user's tree
    for n, r in enumerate(answers):
        # every independent request started from the base: the file is new each time
        assert r.changes == [{"path": "notes.txt", "status": "added"}], (n, r.changes)
        assert f"+request {n}" in (r.diff or "") and r.commit
        assert git(repo, "show", f"{r.commit}:notes.txt") == f"request {n}\n"  # its result is kept
    assert git(repo, "rev-parse", "HEAD") == before and git(repo, "status", "--porcelain") == ""
    assert git(repo, "worktree", "list", "--porcelain").count("worktree ") == 1  # only the user's
