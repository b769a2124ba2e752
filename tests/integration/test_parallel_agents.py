"""Parallel coding agents: the real aider and the real claude, three of each, each in its own git worktree.

The fakes script the model's edits (aider: whole-file replies; claude: Write tool calls); the pool's
GitWorktrees workspace gives every slot a worktree and branch of one repository.  Each response
must carry exactly its own turn's changes and the commit holding them, on its own branch; the
user's checkout must stay as it was, and the worktrees must be gone after shutdown.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import subprocess
from pathlib import Path

import pytest

from toolpool import Response, ToolProcessPool
from toolpool.adapters import AiderAdapter, ClaudeAdapter
from toolpool.testing import FakeAnthropicServer, FakeOpenAIServer, ToolUse, whole_file
from toolpool.workspaces import GitWorktrees

pytestmark = [pytest.mark.realtools, pytest.mark.timeout(240)]

BUGGY = {
    "calc.py": "def add(a, b):\n    return a - b\n",
    "shout.py": "def shout(text):\n    return text.lower()\n",
    "twice.py": "def twice(x):\n    return x * 3\n",
}
FIXED = {
    "calc.py": "def add(a, b):\n    return a + b\n",
    "shout.py": "def shout(text):\n    return text.upper()\n",
    "twice.py": "def twice(x):\n    return x * 2\n",
}


def git(cwd: Path | str, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True,
                          timeout=30).stdout


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "repo"
    path.mkdir()
    for name, text in BUGGY.items():
        (path / name).write_text(text)
    git(path, "init", "-q", "-b", "main")
    git(path, "config", "user.name", "Test User")
    git(path, "config", "user.email", "test@example.invalid")
    git(path, "add", ".")
    git(path, "commit", "-qm", "three bugs")
    return path


def branch_heads(repo: Path) -> dict[str, str]:
    out = git(repo, "for-each-ref", "--format=%(refname:short) %(objectname)", "refs/heads")
    return dict(line.split() for line in out.splitlines())


def check_user_checkout_untouched(repo: Path, head: str) -> None:
    assert git(repo, "rev-parse", "HEAD").strip() == head
    assert git(repo, "status", "--porcelain", "--untracked-files=all") == ""
    assert {name: (repo / name).read_text() for name in BUGGY} == BUGGY


def check_worktrees_gone(repo: Path, paths: list[str]) -> None:
    listed = [line[9:] for line in git(repo, "worktree", "list", "--porcelain").splitlines()
              if line.startswith("worktree ")]
    assert listed == [str(repo)]
    assert not any(os.path.exists(p) for p in paths)


def test_three_aider_instances_fix_three_files_in_three_worktrees(aider_path: str, proxy_trap, repo: Path) -> None:
    head = git(repo, "rev-parse", "HEAD").strip()
    workspace = GitWorktrees(repo)
    with FakeOpenAIServer() as server:
        server.set_delay(0.5)  # the three model calls overlap
        for name, text in FIXED.items():
            server.on_prompt(f"fix {name}", whole_file(name, text, intro=f"Fixed {name}."))
        adapter = AiderAdapter(aider_path, model="openai/fake-model", api_base=server.url + "/v1",
                               api_key="sk-fake", env=proxy_trap.env(), files=list(BUGGY), start_timeout=90.0)
        with ToolProcessPool(adapter, count=3, workspace=workspace) as pool:
            futures = {name: pool.submit(f"fix {name}: it has a bug", timeout=150) for name in FIXED}
            responses = {name: f.result(timeout=180) for name, f in futures.items()}
            paths = [workspace.path(slot) for slot in range(3)]
            names = [workspace.branch(slot) for slot in range(3)]
    assert proxy_trap.requests == []
    assert sorted(r.index for r in responses.values()) == [0, 1, 2]  # one task per instance, at once
    for name, response in responses.items():
        assert response.is_error is False, response.text
        assert response.workspace == paths[response.index]
        assert response.changes == [{"path": name, "status": "modified"}]
        assert f"+{FIXED[name].splitlines()[1]}" in (response.diff or "")
        assert response.commit and branch_heads(repo)[names[response.index]] == response.commit
        tree = {n: git(repo, "show", f"{response.commit}:{n}") for n in BUGGY}
        assert tree == {**BUGGY, name: FIXED[name]}  # its own fix, nobody else's
    check_user_checkout_untouched(repo, head)
    check_worktrees_gone(repo, paths)


def test_three_claude_instances_write_files_in_three_worktrees(claude_path: str, proxy_trap, repo: Path) -> None:
    head = git(repo, "rev-parse", "HEAD").strip()
    workspace = GitWorktrees(repo)
    with FakeAnthropicServer() as server:
        env = {"ANTHROPIC_BASE_URL": server.url, "ANTHROPIC_API_KEY": "sk-fake-parallel", **proxy_trap.env()}
        adapter = ClaudeAdapter(cli_path=claude_path, env=env, start_timeout=90.0, max_retries=0,
                                allowed_tools=["Write"])
        with ToolProcessPool(adapter, count=3, workspace=workspace) as pool:
            paths = [workspace.path(slot) for slot in range(3)]  # made before the spawns
            for slot, path in enumerate(paths):
                server.on_prompt(f"task {slot}:", ToolUse("Write", {"file_path": f"{path}/notes-{slot}.md",
                                                                   "content": f"notes of agent {slot}\n"}),
                                 f"wrote notes-{slot}.md")
            with cf.ThreadPoolExecutor(3) as threads:
                asks = [threads.submit(pool.ask, slot, f"task {slot}: write your notes", timeout=150)
                        for slot in range(3)]
                responses: list[Response] = [f.result(timeout=180) for f in asks]
            names = [workspace.branch(slot) for slot in range(3)]
        results = server.tool_results
    assert proxy_trap.requests == []
    assert sorted(r.name for r in results) == ["Write"] * 3 and not any(r.is_error for r in results)
    for slot, response in enumerate(responses):
        assert response.is_error is False and response.text == f"wrote notes-{slot}.md", response.text
        assert response.index == slot and response.workspace == paths[slot]
        assert response.changes == [{"path": f"notes-{slot}.md", "status": "added"}]
        assert f"+notes of agent {slot}" in (response.diff or "")
        assert response.commit and branch_heads(repo)[names[slot]] == response.commit
        files = git(repo, "ls-tree", "--name-only", response.commit).split()
        assert sorted(files) == sorted([*BUGGY, f"notes-{slot}.md"])
    check_user_checkout_untouched(repo, head)
    check_worktrees_gone(repo, paths)
