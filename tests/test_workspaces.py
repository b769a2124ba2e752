"""toolpool.workspaces against real git in temporary repositories, and real directories.

Worktrees edited at once by threads, what close() keeps, per-request branches, the lock that keeps
index.lock from colliding (threads and another process), and Directory's change detection.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from toolpool.workspaces import (
    Change,
    Directory,
    GitError,
    GitWorktrees,
    TurnChanges,
    Workspace,
    WorkspaceError,
    as_workspace,
)

pytestmark = pytest.mark.timeout(120)

IDENTITY = ["-c", "user.name=Test User", "-c", "user.email=test@example.invalid"]


def git(repo: Path | str, *args: str, check: bool = True) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    done = subprocess.run(["git", *IDENTITY, *args], cwd=repo, env=env, capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise AssertionError(f"git {args}: {done.stderr}")
    return done.stdout


def make_repo(tmp_path: Path, files: dict[str, str] | None = None) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.name", "Test User")
    git(repo, "config", "user.email", "test@example.invalid")
    for name, text in (files or {"README.md": "hello\n", "src/calc.py": "def add(a, b):\n    return a - b\n"}).items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "initial")
    return repo


def worktree_paths(repo: Path) -> list[str]:
    return [line[9:] for line in git(repo, "worktree", "list", "--porcelain").splitlines()
            if line.startswith("worktree ")]


def branches(repo: Path) -> dict[str, str]:
    out = git(repo, "for-each-ref", "--format=%(refname:short) %(objectname)", "refs/heads")
    return dict(line.split() for line in out.splitlines())


def edit_turn(ws: GitWorktrees, files: dict[str, str], slot: int = 0, label: str = "r") -> TurnChanges:
    """One turn of an 'agent' that writes ``files`` into ``slot``'s worktree."""
    path = Path(ws.prepare(slot))
    before = ws.snapshot(slot)
    for name, text in files.items():
        (path / name).write_text(text)
    return ws.changes(slot, before, label)


# -- GitWorktrees -------------------------------------------------------------------------------


def test_three_worktrees_edited_at_once_keep_their_changes_apart(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    head = git(repo, "rev-parse", "HEAD").strip()
    ws = GitWorktrees(repo)
    paths = [ws.prepare(slot) for slot in range(3)]
    assert len(set(paths)) == 3 and all(not p.startswith(str(repo)) for p in paths)
    assert oct(os.stat(os.path.dirname(paths[0])).st_mode & 0o777) == "0o700"
    barrier = threading.Barrier(3)
    results: dict[int, TurnChanges] = {}
    failures: list[BaseException] = []

    def agent(slot: int) -> None:
        try:
            before = ws.snapshot(slot)
            barrier.wait(timeout=30)
            root = Path(paths[slot])
            (root / "src" / "calc.py").write_text(f"def add(a, b):\n    return a + b  # slot {slot}\n")
            (root / f"notes-{slot}.txt").write_text(f"written by slot {slot}\n")
            if slot == 2:
                (root / "README.md").unlink()
            barrier.wait(timeout=30)
            results[slot] = ws.changes(slot, before, f"req-{slot}")
        except BaseException as exc:  # reported below, with the slot
            failures.append(exc)

    threads = [threading.Thread(target=agent, args=(slot,)) for slot in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not failures, failures
    for slot in range(3):
        got = results[slot]
        expected = [Change(f"notes-{slot}.txt", "added"), Change("src/calc.py", "modified")]
        if slot == 2:
            expected.insert(0, Change("README.md", "deleted"))
        assert got.workspace == paths[slot]
        assert got.changes == expected
        assert f"+    return a + b  # slot {slot}" in got.diff and not got.diff_truncated
        assert all(f"slot {other}" not in got.diff for other in range(3) if other != slot)
        assert got.commit and git(repo, "rev-parse", ws.branch(slot)).strip() == got.commit
        assert f"req-{slot}" in git(repo, "log", "-1", "--format=%B", got.commit)
        assert git(repo, "rev-parse", f"{got.commit}^").strip() == head
        assert sorted(git(repo, "show", "--name-only", "--format=", got.commit).split()) == sorted(
            c.path for c in expected)
        others = [o for o in range(3) if o != slot]
        assert all(not (Path(paths[slot]) / f"notes-{o}.txt").exists() for o in others)
    # The user's checkout: same HEAD, clean, none of the agents' files.
    assert git(repo, "rev-parse", "HEAD").strip() == head
    assert git(repo, "status", "--porcelain", "--untracked-files=all") == ""
    assert (repo / "src" / "calc.py").read_text().endswith("return a - b\n")
    names = [ws.branch(slot) for slot in range(3)]
    ws.close()
    assert worktree_paths(repo) == [str(repo)]
    assert not os.path.exists(os.path.dirname(paths[0]))
    assert branches(repo) == {"main": head, **{names[s]: results[s].commit for s in range(3)}}


def test_close_keeps_only_branches_with_commits_and_commits_leftover_edits(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    ws = GitWorktrees(repo, commit_each_turn=False)
    idle, busy, edited = (ws.prepare(s) for s in range(3))
    names = [ws.branch(s) for s in range(3)]
    before = ws.snapshot(1)
    Path(busy, "README.md").write_text("changed\n")
    turn = ws.changes(1, before, "req-a")
    assert turn.changes == [Change("README.md", "modified")] and turn.commit is None  # not committed: asked so
    Path(edited, "new.txt").write_text("unsaved\n")
    ws.close()
    ws.close()  # twice is fine
    kept = branches(repo)
    assert names[0] not in kept  # nothing beyond base: removed
    assert "kept at close" in git(repo, "log", "-1", "--format=%s", names[1])
    assert git(repo, "show", f"{names[2]}:new.txt") == "unsaved\n"
    assert worktree_paths(repo) == [str(repo)] and not os.path.exists(idle)
    with pytest.raises(WorkspaceError, match="closed"):
        ws.prepare(0)


def test_keep_branches_false_removes_every_branch_it_made(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    ws = GitWorktrees(repo, keep_branches=False, reset_between=True)
    path = ws.prepare(0)
    before = ws.snapshot(0)
    Path(path, "x.txt").write_text("x\n")
    assert ws.changes(0, before, "req-1").commit
    assert len(ws.result_branches) == 1
    ws.close()
    assert list(branches(repo)) == ["main"]


def test_a_commit_the_tool_made_itself_is_reported(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    ws = GitWorktrees(repo)
    path = ws.prepare(0)
    before = ws.snapshot(0)
    Path(path, "src", "calc.py").write_text("def add(a, b):\n    return a + b\n")
    git(path, "commit", "-qam", "aider: fix add")  # as aider does with auto-commits
    own = git(path, "rev-parse", "HEAD").strip()
    turn = ws.changes(0, before, "req-1")
    assert turn.commit == own and turn.changes == [Change("src/calc.py", "modified")]
    assert "-    return a - b" in turn.diff
    # The tool committed part of its work, and left more: ours goes on top of its commit.
    before = ws.snapshot(0)
    Path(path, "a.txt").write_text("a\n")
    git(path, "add", "a.txt")
    git(path, "commit", "-qm", "tool commit")
    Path(path, "b.txt").write_text("b\n")
    turn = ws.changes(0, before, "req-2")
    assert [c.path for c in turn.changes] == ["a.txt", "b.txt"]
    assert turn.commit == git(repo, "rev-parse", ws.branch(0)).strip() != git(path, "rev-parse", "HEAD^").strip()
    assert "req-2" in git(repo, "log", "-1", "--format=%s", turn.commit)
    ws.close()


def test_reset_between_requests_starts_each_from_base_and_keeps_each_result(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    base = git(repo, "rev-parse", "HEAD").strip()
    ws = GitWorktrees(repo, reset_between=True)
    path = Path(ws.prepare(0))
    commits = []
    for n in range(2):
        ws.reset(0)
        assert not (path / "result-0.txt").exists() and git(path, "rev-parse", "HEAD").strip() == base
        before = ws.snapshot(0)
        (path / f"result-{n}.txt").write_text(f"result {n}\n")
        (path / "README.md").write_text(f"edited by request {n}\n")
        turn = ws.changes(0, before, f"job/{n}")
        assert [c.path for c in turn.changes] == ["README.md", f"result-{n}.txt"]
        commits.append(turn.commit)
    (path / "stray.txt").write_text("not committed yet\n")
    ws.reset(0)  # uncommitted edits are kept on a branch of their own before the reset
    assert not (path / "stray.txt").exists() and (path / "README.md").read_text() == "hello\n"
    results = ws.result_branches
    assert len(results) == 3 and results[0].endswith("/job-0") and results[1].endswith("/job-1")
    assert [git(repo, "rev-parse", b).strip() for b in results[:2]] == commits
    assert git(repo, "show", f"{results[2]}:stray.txt") == "not committed yet\n"
    ws.close()
    assert set(results) <= branches(repo).keys()
    assert ws.branch(0) not in branches(repo)  # reset to base: nothing of its own


def test_a_same_size_edit_just_after_checkout_is_seen(tmp_path: Path) -> None:
    """Files checked out in the index's own second are "racily clean": only their content tells."""
    repo = make_repo(tmp_path)
    ws = GitWorktrees(repo, commit_each_turn=False)
    path = Path(ws.prepare(0))
    first = ws.snapshot(0)
    (path / "new.txt").write_text("n\n")
    dirty = ws.snapshot(0)  # the tree of uncommitted files, through a copy of the index
    (path / "README.md").write_text("HELLO\n")  # as long as "hello\n"
    assert [c.path for c in ws.changes(0, first, "a").changes] == ["README.md", "new.txt"]
    assert ws.changes(0, dirty, "b").changes == [Change("README.md", "modified")]
    ws.close()


def test_ignored_tool_litter_is_neither_reported_nor_committed(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    ws = GitWorktrees(repo)
    path = Path(ws.prepare(0))
    before = ws.snapshot(0)
    (path / ".aider.tags.cache.v4").mkdir()
    (path / ".aider.tags.cache.v4" / "cache.db").write_text("x")
    assert ws.snapshot(0) == before  # litter alone is no change
    (path / "real.txt").write_text("r\n")
    turn = ws.changes(0, before, "r1")
    assert turn.changes == [Change("real.txt", "added")] and ".aider" not in turn.diff
    assert ".aider" not in git(repo, "show", "--name-only", "--format=", turn.commit or "HEAD")
    ws.close()


def test_the_diff_is_bounded_at_a_line_boundary(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    ws = GitWorktrees(repo, max_diff_bytes=2000)
    path = Path(ws.prepare(0))
    before = ws.snapshot(0)
    (path / "big.txt").write_text("".join(f"line {n}\n" for n in range(5000)))
    turn = ws.changes(0, before, "big")
    assert turn.diff_truncated and 1000 < len(turn.diff.encode()) <= 2000 and turn.diff.endswith("\n")
    assert git(repo, "show", f"{turn.commit}:big.txt").count("\n") == 5000  # the commit is whole
    ws.close()


def test_callers_git_environment_and_hooks_are_not_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = make_repo(tmp_path)
    (tmp_path / "decoy").mkdir()
    decoy = make_repo(tmp_path / "decoy")
    marker = tmp_path / "hook-ran"
    hook = repo / ".git" / "hooks" / "pre-commit"
    hook.write_text(f"#!/bin/sh\ntouch {marker}\nexit 1\n")
    hook.chmod(0o755)
    monkeypatch.setenv("GIT_DIR", str(decoy / ".git"))
    monkeypatch.setenv("GIT_INDEX_FILE", str(tmp_path / "decoy-index"))
    ws = GitWorktrees(repo)
    turn = edit_turn(ws, {"f.txt": "f\n"})
    assert turn.commit and not marker.exists()
    assert not (tmp_path / "decoy-index").exists()
    ws.close()
    monkeypatch.delenv("GIT_DIR")
    assert list(branches(decoy)) == ["main"]


def test_without_an_identity_commits_are_made_as_toolpool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = make_repo(tmp_path)
    git(repo, "config", "--unset", "user.name")
    git(repo, "config", "--unset", "user.email")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    ws = GitWorktrees(repo)
    turn = edit_turn(ws, {"f.txt": "f\n"})
    author = git(repo, "log", "-1", "--format=%an <%ae>", turn.commit or "HEAD").strip()
    assert author == "toolpool <toolpool@localhost>"
    ws.close()


def test_errors_name_the_problem_and_the_fix(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(GitError, match=r"`git rev-parse .*` in .*plain failed: .*not a git repository.*pass the path"):
        GitWorktrees(plain).prepare(0)
    repo = make_repo(tmp_path)
    with pytest.raises(GitError, match="base 'no-such-branch' must name a commit"):
        GitWorktrees(repo, base="no-such-branch").prepare(0)
    with pytest.raises(ValueError, match="inside the work tree"):
        GitWorktrees(repo, root=repo / "wt").prepare(0)
    with pytest.raises(WorkspaceError, match=r"call prepare\(3\) first"):
        GitWorktrees(repo).snapshot(3)
    for bad in ({"base": "-x"}, {"branch_prefix": "a b/"}, {"git_timeout": float("nan")}, {"max_diff_bytes": -1}):
        with pytest.raises((ValueError, TypeError)):
            GitWorktrees(repo, **bad)
    assert list(branches(repo)) == ["main"] and worktree_paths(repo) == [str(repo)]  # nothing left by failures


def test_a_hanging_git_is_killed_at_git_timeout_and_a_missing_git_is_named(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    repo = make_repo(tmp_path)
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "git").write_text(  # a git that hangs, and a child of it that would outlive a plain kill
        f"#!{sys.executable}\nimport subprocess, sys, time\n"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)'])\ntime.sleep(30)\n")
    (fake_bin / "git").chmod(0o755)
    monkeypatch.setenv("PATH", str(fake_bin))
    started = time.monotonic()
    with pytest.raises(GitError, match=r"`git .*rev-parse.*` in .* failed: no answer within 0.5s \(killed\)"):
        GitWorktrees(repo, git_timeout=0.5).prepare(0)
    assert time.monotonic() - started < 10
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(WorkspaceError, match=r"git is not installed .*install git"):
        GitWorktrees(repo).prepare(0)


def test_twenty_threads_committing_at_once_never_collide(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    pools = [GitWorktrees(repo, reset_between=True), GitWorktrees(repo, reset_between=True)]  # one repository lock
    slots = [(pools[n % 2], n // 2) for n in range(20)]  # the same slot numbers twice: the same worktree names
    start = threading.Barrier(20)
    failures: list[BaseException] = []
    commits: dict[tuple[int, int], list[str]] = {(n % 2, n // 2): [] for n in range(20)}

    def agent(ws: GitWorktrees, slot: int) -> None:
        try:
            start.wait(timeout=60)
            ws.prepare(slot)  # worktree add and branch creation at once, too
            for turn in range(3):
                ws.reset(slot)  # between requests: back to base, the last result kept on a branch
                before = ws.snapshot(slot)
                Path(ws.path(slot), f"out-{turn}.txt").write_text(f"{slot} {turn}\n")
                got = ws.changes(slot, before, f"s{slot}-t{turn}")
                assert got.commit, got
                commits[pools.index(ws), slot].append(got.commit)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=agent, args=s) for s in slots]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=100)
    assert not failures, failures[:3]
    for ws, slot in slots:
        mine = commits[pools.index(ws), slot]
        assert len(set(mine)) == 3 and git(repo, "log", "--format=%H", f"main..{ws.branch(slot)}").split() == mine[2:]
        assert all(git(repo, "rev-parse", f"{c}^").strip() == git(repo, "rev-parse", "main").strip() for c in mine)
    for ws in pools:
        ws.close()
    refs = branches(repo)
    assert worktree_paths(repo) == [str(repo)] and len(refs) == 1 + 20 + 60
    assert sorted(c for b, c in refs.items() if "/s" in b and "-t" in b) == sorted(sum(commits.values(), []))


def test_another_process_holding_the_repository_lock_is_waited_for(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    ws = GitWorktrees(repo, git_timeout=1.0)
    path = Path(ws.prepare(0))
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, sys, time\n"
        f"f = open({str(repo / '.git' / 'toolpool.lock')!r}, 'a')\n"
        "fcntl.flock(f, fcntl.LOCK_EX)\nprint('held', flush=True)\ntime.sleep(float(sys.argv[1]))\n"), "3"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        before = ws.snapshot(0)  # reads need no lock
        (path / "f.txt").write_text("f\n")
        with pytest.raises(WorkspaceError, match="held by another process"):
            ws.changes(0, before, "r")
    finally:
        holder.kill()
        holder.wait(timeout=10)
    turn = ws.changes(0, before, "r")
    assert turn.commit and turn.changes == [Change("f.txt", "added")]
    with open(repo / ".git" / "toolpool.lock") as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released again
    ws.close()


def test_worktrees_of_a_killed_program_are_reclaimed(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    child = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\nfrom toolpool.workspaces import GitWorktrees\n"
        f"ws = GitWorktrees({str(repo)!r})\nprint(ws.prepare(0), flush=True)\ntime.sleep(60)\n")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        orphan = child.stdout.readline().strip()
        assert os.path.isdir(orphan) and orphan in worktree_paths(repo)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
    ws = GitWorktrees(repo)
    fresh = ws.prepare(0)
    assert not os.path.exists(orphan) and orphan not in worktree_paths(repo) and fresh in worktree_paths(repo)
    ws.close()


# -- Directory ----------------------------------------------------------------------------------


def test_directory_reports_added_modified_and_deleted_files(tmp_path: Path) -> None:
    root = tmp_path / "work"
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "a.py").write_text("one\ntwo\n")
    (root / "b.txt").write_text("bee\n")
    (root / "same.txt").write_text("same\n")
    (root / ".git").mkdir()
    ws = Directory(str(root))
    assert ws.prepare(0) == str(root)
    before = ws.snapshot(0)
    (root / "pkg" / "a.py").write_text("one\nTWO\n")
    (root / "b.txt").unlink()
    (root / "c.bin").write_bytes(b"\x00\x01\x02")
    (root / "same.txt").write_text("same\n")  # rewritten, same content: no change
    os.utime(root / "same.txt", ns=(time.time_ns(), time.time_ns() + 5_000_000_000))
    (root / ".git" / "index").write_text("ignored")
    (root / "__pycache__").mkdir()
    (root / "__pycache__" / "x.pyc").write_bytes(b"ignored")
    got = ws.changes(0, before, "r1")
    assert got.changes == [Change("b.txt", "deleted"), Change("c.bin", "added"), Change("pkg/a.py", "modified")]
    assert got.workspace == str(root) and got.commit is None and not got.diff_truncated
    assert "--- a/pkg/a.py\n+++ b/pkg/a.py\n" in got.diff and "-two\n+TWO\n" in got.diff
    assert "--- a/b.txt\n+++ /dev/null\n" in got.diff and "-bee\n" in got.diff
    assert "Binary files /dev/null and b/c.bin differ" in got.diff


def test_directory_sees_a_same_size_rewrite_within_one_clock_tick(tmp_path: Path) -> None:
    root = tmp_path / "w"
    ws = Directory(root)
    ws.prepare(0)
    target = root / "f.txt"
    for n in range(3):
        target.write_text("0\n")
        before = ws.snapshot(0)
        st = target.stat()
        target.write_text(f"{n + 1}\n")  # same size, same inode, and (as within one clock tick) the same mtime:
        os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
        assert target.stat().st_mtime_ns == st.st_mtime_ns
        assert ws.changes(0, before, "r").changes == [Change("f.txt", "modified")], n  # only the content tells


def test_directory_diff_and_scan_are_bounded(tmp_path: Path) -> None:
    root = tmp_path / "w"
    ws = Directory(root, max_diff_bytes=500, max_file_bytes=10_000)
    ws.prepare(0)
    before = ws.snapshot(0)
    (root / "long.txt").write_text("".join(f"line {n}\n" for n in range(200)))
    (root / "huge.txt").write_text("x" * 20_000)
    got = ws.changes(0, before, "r")
    assert [c.path for c in got.changes] == ["huge.txt", "long.txt"]
    assert got.diff_truncated and len(got.diff.encode()) <= 500 and got.diff.endswith("\n")
    assert "not compared" in got.diff  # over max_file_bytes: named, not diffed
    few = Directory(root, max_files=1)
    few.prepare(0)
    assert few.changes(0, few.snapshot(0), "r").diff_truncated  # the scan stopped: said so


def test_directory_per_slot_paths_and_a_shared_path(tmp_path: Path) -> None:
    per_slot = Directory(lambda slot: tmp_path / f"slot{slot}")
    assert [per_slot.prepare(s) for s in range(2)] == [str(tmp_path / "slot0"), str(tmp_path / "slot1")]
    before = per_slot.snapshot(1)
    (tmp_path / "slot0" / "zero.txt").write_text("0\n")
    assert per_slot.changes(1, before, "r").changes == []  # another slot's directory
    shared = Directory(tmp_path / "shared")
    assert shared.prepare(0) == shared.prepare(1)
    b0, b1 = shared.snapshot(0), shared.snapshot(1)
    (tmp_path / "shared" / "s.txt").write_text("s\n")
    assert shared.changes(0, b0, "a").changes == shared.changes(1, b1, "b").changes == [Change("s.txt", "added")]
    with pytest.raises(TypeError, match="must return a path"):
        Directory(lambda slot: 42).prepare(0)  # type: ignore[arg-type,return-value]


def test_as_workspace() -> None:
    ws = GitWorktrees("/nonexistent")  # no side effects: nothing is checked before prepare()
    assert as_workspace(ws) is ws
    assert isinstance(as_workspace("/tmp/x"), Directory) and isinstance(as_workspace(Path("/tmp/x")), Directory)
    assert isinstance(as_workspace(lambda slot: f"/tmp/{slot}"), Directory)
    assert isinstance(Directory("/x"), Workspace)
    with pytest.raises(TypeError, match="GitWorktrees"):
        as_workspace(3)  # type: ignore[arg-type]
