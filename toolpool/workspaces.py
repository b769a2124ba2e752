"""Workspaces: the directory each slot's tool works in, and what every turn changed there.

A pool with a workspace asks it, per slot: :meth:`Workspace.prepare` before the first spawn (the
process's working directory), :meth:`Workspace.snapshot` before a request's turn,
:meth:`Workspace.changes` after it (the files added, modified and deleted, a bounded unified diff,
and the commit holding them), :meth:`Workspace.reset` between independent requests and
:meth:`Workspace.close` at shutdown.

* :class:`Directory`: one path for every slot, or a callable ``slot -> path``.  Changes are found
  by comparing two scans (size, mtime and inode; contents hashed only where those moved).
* :class:`GitWorktrees`: one ``git worktree`` and branch per slot, outside the user's work tree,
  so N agents can edit one repository at once without seeing each other's edits.  Every git
  command that writes to the shared repository holds one lock per repository (a threading lock
  for the process, an flock for other processes), so ``index.lock`` never collides.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import fcntl
import fnmatch
import hashlib
import logging
import os
import re
import secrets
import selectors
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Union

from . import lifecycle
from .errors import ToolPoolError
from .timeouts import check_seconds

__all__ = ["ADDED", "DELETED", "MODIFIED", "Change", "Directory", "GitError", "GitWorktrees", "TurnChanges",
           "Workspace", "WorkspaceError", "as_workspace"]

log = logging.getLogger(__name__)

ADDED, MODIFIED, DELETED = "added", "modified", "deleted"
DEFAULT_MAX_DIFF_BYTES = 256 * 1024
#: Names never reported as changes: git's own data, bytecode, aider's caches and histories.
DEFAULT_IGNORE: tuple[str, ...] = (".git", "__pycache__", "*.pyc", ".aider*")


class WorkspaceError(ToolPoolError):
    """A workspace could not be made, inspected or removed."""


class GitError(WorkspaceError):
    """A git command failed; the message names the command, where it ran, and git's stderr."""

    def __init__(self, argv: Sequence[str], cwd: str, detail: str, hint: str = "") -> None:
        self.argv = list(argv)
        self.cwd = cwd
        self.detail = detail
        message = f"`{' '.join(argv)}` in {cwd} failed: {detail.strip() or 'no message'}"
        super().__init__(message + (f"; {hint}" if hint else ""))


@dataclasses.dataclass(frozen=True)
class Change:
    """One file a turn changed: ``path`` relative to the workspace, ``status`` added/modified/deleted."""

    path: str
    status: str


@dataclasses.dataclass
class TurnChanges:
    """What one turn did to its workspace.

    ``diff`` is a unified diff of the turn's changes, at most the workspace's ``max_diff_bytes``
    (``diff_truncated`` then says so; it also says when a scan stopped at its file limit).
    ``commit``: the commit holding the turn's result (git workspaces), else None.
    """

    workspace: str
    changes: list[Change]
    diff: str
    diff_truncated: bool
    commit: str | None = None


class Workspace:
    """Where each slot's tool works.  Thread-safe; ``__init__`` has no side effects.

    The pool calls one slot's methods from one turn at a time; different slots concurrently.
    """

    def prepare(self, slot: int) -> str:
        """Make ``slot``'s directory (before its first spawn; again after a restart) and return its path."""
        raise NotImplementedError

    def snapshot(self, slot: int) -> object:
        """Before a request's turn: what :meth:`changes` compares against (cheap: a scan, no copies)."""
        raise NotImplementedError

    def changes(self, slot: int, before: object, label: str) -> TurnChanges:
        """After the turn: what changed since ``before``.  ``label`` names the request (commit messages)."""
        raise NotImplementedError

    def reset(self, slot: int) -> None:
        """Between independent requests: back to the base, if this workspace's reset policy says so."""

    def close(self) -> None:
        """At pool shutdown: remove what :meth:`prepare` made (results are kept where documented)."""


PathLike = Union[str, "os.PathLike[str]"]


def as_workspace(value: PathLike | Callable[[int], PathLike] | Workspace) -> Workspace:
    """``workspace=`` of a pool as a :class:`Workspace`: a path or callable becomes a :class:`Directory`."""
    if isinstance(value, Workspace):
        return value
    if isinstance(value, (str, os.PathLike)) or callable(value):
        return Directory(value)
    raise TypeError(f"workspace must be a path, a callable slot -> path, or a Workspace (such as "
                    f"GitWorktrees(repo)), got {type(value).__name__} {value!r}")


# ------------------------------------------------------------------ diffs


class _DiffBuilder:
    """A unified diff that stops growing at ``limit`` bytes (at a line boundary)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.parts: list[str] = []
        self.size = 0
        self.truncated = False

    def add(self, text: str) -> None:
        if self.truncated or not text:
            return
        data = text.encode("utf-8", "surrogateescape")
        if self.size + len(data) <= self.limit:
            self.parts.append(text)
            self.size += len(data)
            return
        room = data[: self.limit - self.size]
        cut = room.rfind(b"\n") + 1
        self.parts.append(room[:cut].decode("utf-8", "surrogateescape"))
        self.size += cut
        self.truncated = True

    def text(self) -> str:
        return "".join(self.parts)


def _text_lines(data: bytes) -> list[str] | None:
    """``data`` as lines for difflib, or None when it is not UTF-8 text."""
    if b"\0" in data:
        return None
    try:
        lines = data.decode("utf-8").splitlines(keepends=True)
    except UnicodeDecodeError:
        return None
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n\\ No newline at end of file\n"
    return lines


def _file_diff(path: str, before: bytes | None, after: bytes | None, status: str) -> str:
    old_name = "/dev/null" if status == ADDED else f"a/{path}"
    new_name = "/dev/null" if status == DELETED else f"b/{path}"
    old = b"" if status == ADDED else before
    new = b"" if status == DELETED else after
    if old is None or new is None:
        return f"--- {old_name}\n+++ {new_name}\n@@ content over the size limit: not compared @@\n"
    old_lines, new_lines = _text_lines(old), _text_lines(new)
    if old_lines is None or new_lines is None:
        return f"Binary files {old_name} and {new_name} differ\n"
    return "".join(difflib.unified_diff(old_lines, new_lines, old_name, new_name))


# ------------------------------------------------------------------ Directory


@dataclasses.dataclass(frozen=True)
class _FileState:
    size: int
    mtime_ns: int
    ino: int
    digest: bytes | None  # None: over max_file_bytes or unreadable, so compared by stat only
    content: bytes | None  # kept for the diff while the cache has room
    racy: bool  # modified within the scan's clock tick: its stat cannot vouch for it next time


@dataclasses.dataclass(frozen=True)
class _Scan:
    files: dict[str, _FileState]
    truncated: bool


class Directory(Workspace):
    """A plain directory: ``path`` for every slot (shared), or ``path(slot)`` for each.

    With a shared path, a turn's changes are everything that changed in the directory during the
    turn, other instances' edits included.  ``ignore``: file and directory names (glob patterns)
    never reported.  Scans stop after ``max_files`` files; contents over ``max_file_bytes`` are
    compared by size and mtime only; at most ``max_cache_bytes`` of contents are kept for diffs.
    """

    def __init__(self, path: PathLike | Callable[[int], PathLike], *, ignore: Sequence[str] = DEFAULT_IGNORE,
                 max_files: int = 20_000, max_file_bytes: int = 1 << 20, max_cache_bytes: int = 64 << 20,
                 max_diff_bytes: int = DEFAULT_MAX_DIFF_BYTES) -> None:
        for name, value in (("max_files", max_files), ("max_file_bytes", max_file_bytes),
                            ("max_cache_bytes", max_cache_bytes), ("max_diff_bytes", max_diff_bytes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an int >= 0, got {value!r}")
        self._path = path
        self.ignore = tuple(ignore)
        self.max_files, self.max_file_bytes = max_files, max_file_bytes
        self.max_cache_bytes, self.max_diff_bytes = max_cache_bytes, max_diff_bytes
        self._lock = threading.Lock()
        self._paths: dict[int, str] = {}
        self._caches: dict[str, dict[str, _FileState]] = {}  # per directory: slots sharing it share it
        self._dir_locks: dict[str, threading.Lock] = {}

    def path(self, slot: int) -> str:
        """``slot``'s directory (absolute)."""
        with self._lock:
            known = self._paths.get(slot)
        if known is not None:
            return known
        raw = self._path(slot) if callable(self._path) else self._path
        if not isinstance(raw, (str, os.PathLike)):
            raise TypeError(f"the workspace callable must return a path for slot {slot}, got {raw!r}")
        path = os.path.abspath(os.fspath(raw))
        with self._lock:
            return self._paths.setdefault(slot, path)

    def prepare(self, slot: int) -> str:
        path = self.path(slot)
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as exc:
            raise WorkspaceError(f"cannot make the workspace of slot {slot} at {path}: {exc}") from exc
        self._scan(path)  # reads the contents once now, so a turn's snapshot only stats
        return path

    def snapshot(self, slot: int) -> _Scan:
        return self._scan(self.path(slot))

    def changes(self, slot: int, before: object, label: str) -> TurnChanges:
        if not isinstance(before, _Scan):
            raise TypeError(f"before must come from this workspace's snapshot(), got {type(before).__name__}")
        path = self.path(slot)
        after = self._scan(path)
        changes: list[Change] = []
        diff = _DiffBuilder(self.max_diff_bytes)
        for rel in sorted(before.files.keys() | after.files.keys()):
            old, new = before.files.get(rel), after.files.get(rel)
            if old is None:
                status = ADDED
            elif new is None:
                status = DELETED
            elif not self._differ(old, new):
                continue
            else:
                status = MODIFIED
            changes.append(Change(rel, status))
            diff.add(_file_diff(rel, old.content if old else None, new.content if new else None, status))
        return TurnChanges(path, changes, diff.text(), diff.truncated or before.truncated or after.truncated)

    @staticmethod
    def _differ(old: _FileState, new: _FileState) -> bool:
        if old.digest is not None and new.digest is not None:
            return old.digest != new.digest
        return (old.size, old.mtime_ns, old.ino) != (new.size, new.mtime_ns, new.ino)

    def _scan(self, root: str) -> _Scan:
        with self._lock:
            cache = self._caches.setdefault(root, {})
            lock = self._dir_locks.setdefault(root, threading.Lock())
        with lock:  # one scan of a directory at a time: they share its cache
            started = time.time_ns()
            files: dict[str, _FileState] = {}
            truncated = False
            kept = sum(len(s.content) for s in cache.values() if s.content is not None)
            for rel, st in self._walk(root):
                if len(files) >= self.max_files:
                    truncated = True
                    log.warning("workspace %s: more than %d files, the rest is not compared", root, self.max_files)
                    break
                cached = cache.get(rel)
                if cached is not None and not cached.racy and (cached.size, cached.mtime_ns, cached.ino) == (
                        st.st_size, st.st_mtime_ns, st.st_ino):
                    files[rel] = cached
                    continue
                if cached is not None and cached.content is not None:
                    kept -= len(cached.content)
                state = self._read(os.path.join(root, rel), st, keep=kept < self.max_cache_bytes,
                                   racy=st.st_mtime_ns >= started - 20_000_000)
                if state.content is not None:
                    kept += len(state.content)
                files[rel] = state
            cache.clear()
            cache.update(files)
            return _Scan(files, truncated)

    def _read(self, path: str, st: os.stat_result, *, keep: bool, racy: bool) -> _FileState:
        content: bytes | None = None
        if st.st_size <= self.max_file_bytes:
            try:
                if os.path.islink(path):
                    content = os.fsencode(os.readlink(path))
                else:
                    with open(path, "rb") as f:
                        content = f.read(self.max_file_bytes + 1)
            except OSError:
                content = None
            if content is not None and len(content) > self.max_file_bytes:
                content = None  # grew while read: compare by stat
        digest = hashlib.blake2b(content, digest_size=16).digest() if content is not None else None
        return _FileState(st.st_size, st.st_mtime_ns, st.st_ino, digest, content if keep else None, racy)

    def _walk(self, root: str) -> Iterator[tuple[str, os.stat_result]]:
        """Regular files and symlinks under ``root`` (links not followed), relative paths."""
        pending = [""]
        while pending:
            rel_dir = pending.pop()
            try:
                entries = sorted(os.scandir(os.path.join(root, rel_dir)), key=lambda e: e.name)
            except OSError:
                continue
            for entry in entries:
                if any(fnmatch.fnmatchcase(entry.name, pattern) for pattern in self.ignore):
                    continue
                rel = os.path.join(rel_dir, entry.name) if rel_dir else entry.name
                try:
                    if entry.is_dir(follow_symlinks=False):
                        pending.append(rel)
                    elif entry.is_file(follow_symlinks=False) or entry.is_symlink():
                        yield rel, entry.stat(follow_symlinks=False)
                except OSError:
                    continue


# ------------------------------------------------------------------ git


_IDENTITY_VARS = ("GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME", "GIT_COMMITTER_EMAIL")
#: Settings for every git command we run: no hooks or other programs run on our behalf, no signing
#: prompts, no background maintenance racing the next command.
_GIT_CONFIG = ("core.hooksPath=/dev/null", "core.fsmonitor=false", "commit.gpgSign=false", "gc.auto=0",
               "maintenance.auto=false", "core.quotePath=false", "advice.detachedHead=false")
_STDERR_LIMIT = 8192
_OUTPUT_LIMIT = 64 << 20

_repo_locks: dict[str, threading.Lock] = {}
_repo_locks_guard = threading.Lock()


@contextlib.contextmanager
def _repository_lock(common_dir: str, timeout: float) -> Iterator[None]:
    """Exclusive use of one repository: a lock per repository in this process, an flock across processes."""
    with _repo_locks_guard:
        lock = _repo_locks.setdefault(common_dir, threading.Lock())
    deadline = time.monotonic() + timeout
    if not lock.acquire(timeout=timeout):
        raise WorkspaceError(f"the repository lock of {common_dir} was not free within {timeout:g}s: another "
                             "thread's git command is hanging; raise git_timeout or find the stuck command")
    try:
        with open(os.path.join(common_dir, "toolpool.lock"), "a") as f:
            delay = 0.002
            while True:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise WorkspaceError(
                            f"{common_dir}/toolpool.lock is held by another process for over {timeout:g}s: "
                            "another toolpool program is using this repository; raise git_timeout") from None
                    time.sleep(delay)
                    delay = min(delay * 2, 0.05)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
    finally:
        lock.release()


@dataclasses.dataclass(frozen=True)
class _Result:
    returncode: int
    out: bytes
    err: str
    truncated: bool

    @property
    def text(self) -> str:
        return self.out.decode("utf-8", "surrogateescape").strip()


def _run_bounded(argv: list[str], cwd: str, env: dict[str, str], timeout: float, limit: int) -> _Result:
    """Run ``argv`` (no shell), keeping at most ``limit`` bytes of stdout; killed at the deadline."""
    # A session of its own, so that a kill reaches whatever git started (a credential helper, a pager...).
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, close_fds=True, start_new_session=True)

    def kill() -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)

    out, err = bytearray(), bytearray()
    truncated = timed_out = False
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None and proc.stderr is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ, out)
        sel.register(proc.stderr, selectors.EVENT_READ, err)
        while sel.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            for key, _ in sel.select(left):
                chunk = os.read(key.fd, 65536)
                buf: bytearray = key.data
                if not chunk:
                    sel.unregister(key.fileobj)
                    continue
                room = (limit + 1 if buf is out else _STDERR_LIMIT) - len(buf)
                buf += chunk[: max(room, 0)]
                if buf is out and len(out) > limit:
                    truncated = True
                    sel.unregister(key.fileobj)  # enough: git gets EPIPE when it writes on
                    proc.stdout.close()
    if timed_out or truncated:
        kill()
    try:
        rc = proc.wait(timeout=max(deadline - time.monotonic(), 1.0))
    except subprocess.TimeoutExpired:
        kill()
        rc = proc.wait()
    for stream in (proc.stdout, proc.stderr):
        stream.close()
    if timed_out:
        raise GitError(argv, cwd, f"no answer within {timeout:g}s (killed)", "raise git_timeout if the "
                       "repository is that large, else look for a git process waiting on a lock")
    return _Result(0 if truncated else rc, bytes(out[:limit]), err.decode("utf-8", "replace"), truncated)


@dataclasses.dataclass(frozen=True)
class _GitState:
    """A worktree at one moment: its HEAD commit, and the tree of its files when they differ from HEAD's."""

    head: str
    tree: str | None  # None: clean, the files are HEAD's tree

    @property
    def treeish(self) -> str:
        return self.tree or f"{self.head}^{{tree}}"


@dataclasses.dataclass
class _Worktree:
    path: str
    branch: str
    index: str  # its own index file (inside the repository's git dir)
    kept: set[str] = dataclasses.field(default_factory=set)  # commits a result branch points at


def _ref_part(label: str) -> str:
    """``label`` as one safe component of a branch name."""
    part = re.sub(r"[^A-Za-z0-9._-]+", "-", label).strip(".-")[:80]
    part = re.sub(r"\.{2,}", ".", part)
    return part.removesuffix(".lock") or "request"


class GitWorktrees(Workspace):
    """One git worktree and branch per slot, made from ``base`` of the repository at ``repo``.

    Worktrees live in ``root`` (default: a private 0700 temporary directory, reclaimed when its
    owner process is gone), never inside the user's work tree, whose checkout, index and HEAD are
    never touched.  Slot ``n`` works on branch ``<branch_prefix><run>/slot-<n>``, where ``<run>``
    is a timestamp and random suffix unique to this object (see :meth:`branch`).

    ``commit_each_turn``: commit each turn's changes on the slot's branch, with a message naming
    the request, so nothing a turn produced is lost; :attr:`TurnChanges.commit` is that commit (or
    the tool's own, when it committed itself, as aider does with auto-commits).

    ``reset_between``: :meth:`reset` (which the pool calls between independent requests) puts the
    worktree back at ``base``; each request's result first gets a branch of its own,
    ``<branch_prefix><run>/<label>``, so it stays reachable.

    :meth:`close` removes the worktrees; their branches are kept when they hold commits beyond
    ``base`` (uncommitted edits are committed first), unless ``keep_branches=False``.

    ``ignore``: pathspec patterns never reported nor committed (aider's caches by default).
    """

    def __init__(self, repo: PathLike, base: str = "HEAD", *, root: PathLike | None = None,
                 branch_prefix: str = "toolpool/", keep_branches: bool = True, commit_each_turn: bool = True,
                 reset_between: bool = False, max_diff_bytes: int = DEFAULT_MAX_DIFF_BYTES,
                 ignore: Sequence[str] = (".aider*",), git_timeout: float = 60.0) -> None:
        if not isinstance(base, str) or not base or base.startswith("-"):
            raise ValueError(f"base must name a commit (a branch, tag or hash), got {base!r}")
        if branch_prefix and not re.fullmatch(r"(?:[A-Za-z0-9_][A-Za-z0-9._-]*/)*(?:[A-Za-z0-9_][A-Za-z0-9._-]*)?",
                                              branch_prefix):
            raise ValueError(f"branch_prefix must be letters, digits, '._-' and '/' (e.g. 'toolpool/'), "
                             f"got {branch_prefix!r}")
        if isinstance(max_diff_bytes, bool) or not isinstance(max_diff_bytes, int) or max_diff_bytes < 0:
            raise ValueError(f"max_diff_bytes must be an int >= 0, got {max_diff_bytes!r}")
        self.repo = os.path.abspath(os.fspath(repo))
        self.base = base
        self.root_option = os.path.abspath(os.fspath(root)) if root is not None else None
        self.branch_prefix = branch_prefix
        self.keep_branches, self.commit_each_turn, self.reset_between = keep_branches, commit_each_turn, reset_between
        self.max_diff_bytes = max_diff_bytes
        self.ignore = tuple(ignore)
        self.git_timeout = check_seconds("git_timeout", git_timeout, positive=True, allow_none=False) or 60.0
        self._lock = threading.Lock()
        self._ready = False
        self._closed = False
        self._common_dir = self._top = self._root = self._run = self.base_commit = ""
        self._env: dict[str, str] = {}
        self._worktrees: dict[int, _Worktree] = {}
        self._result_branches: list[str] = []

    # -- public

    def path(self, slot: int) -> str:
        """``slot``'s worktree (after :meth:`prepare`)."""
        return self._worktree(slot).path

    def branch(self, slot: int) -> str:
        """``slot``'s branch name (after :meth:`prepare`; still known after :meth:`close`)."""
        with self._lock:
            wt = self._worktrees.get(slot)
        if wt is None:
            raise WorkspaceError(f"slot {slot} has no worktree: call prepare({slot}) first")
        return wt.branch

    @property
    def result_branches(self) -> list[str]:
        """The per-request branches made so far (``reset_between``), oldest first."""
        with self._lock:
            return list(self._result_branches)

    def prepare(self, slot: int) -> str:
        self._setup()
        with self._lock:
            known = self._worktrees.get(slot)
        if known is not None and os.path.isdir(known.path):
            return known.path
        if known is not None:
            raise WorkspaceError(f"the worktree of slot {slot} at {known.path} was removed while in use; its branch "
                                 f"{known.branch} still holds its commits")
        path = os.path.join(self._root, f"slot-{slot}")
        branch = f"{self.branch_prefix}{self._run}/slot-{slot}"
        with self._locked():
            self._git(["worktree", "add", "--quiet", "-b", branch, path, self.base_commit], cwd=self.repo)
        index = self._git(["rev-parse", "--path-format=absolute", "--git-path", "index"], cwd=path).text
        with self._lock:
            self._worktrees[slot] = _Worktree(path, branch, index)
        return path

    def snapshot(self, slot: int) -> _GitState:
        return self._state(self._worktree(slot))

    def changes(self, slot: int, before: object, label: str) -> TurnChanges:
        if not isinstance(before, _GitState):
            raise TypeError(f"before must come from this workspace's snapshot(), got {type(before).__name__}")
        wt = self._worktree(slot)
        after = self._state(wt)
        changes: list[Change] = []
        diff, truncated = "", False
        if after != before:
            changes = self._changed_files(wt, before.treeish, after.treeish)
            if changes:
                got = self._git(["diff", "--no-color", "--no-ext-diff", "--no-renames", before.treeish,
                                 after.treeish, "--", *self._pathspec()], cwd=wt.path, limit=self.max_diff_bytes)
                diff, truncated = got.out.decode("utf-8", "surrogateescape"), got.truncated
                if truncated:
                    diff = diff[: diff.rfind("\n") + 1]
        commit = after.head if after.head != before.head else None  # the tool committed by itself
        if self.commit_each_turn and after.tree is not None:
            commit = self._commit(wt, f"toolpool: {label}\n\nThe changes of request {label} in slot {slot}.\n") \
                or commit
        if commit is not None and self.reset_between:
            self._keep(wt, commit, label)
        return TurnChanges(wt.path, changes, diff, truncated, commit)

    def reset(self, slot: int) -> None:
        if not self.reset_between:
            return
        wt = self._worktree(slot)
        state = self._state(wt)
        head = state.head
        if state.tree is not None:  # edits nobody committed: kept as a commit before they are reset away
            head = self._commit(wt, f"toolpool: uncommitted changes of slot {slot}, kept at reset\n") or head
        if head != self.base_commit and head not in wt.kept:
            self._keep(wt, head, f"slot-{slot}-kept")
        with self._locked():
            self._git(["reset", "--quiet", "--hard", self.base_commit], cwd=wt.path)
            self._git(["clean", "-fdq", "--", *self._pathspec()], cwd=wt.path)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            worktrees = dict(self._worktrees)
        errors: list[str] = []
        for slot, wt in sorted(worktrees.items()):
            try:
                self._remove(slot, wt)
            except WorkspaceError as exc:
                errors.append(str(exc))
        if not self.keep_branches and self._result_branches:
            with contextlib.suppress(WorkspaceError), self._locked():
                self._git(["branch", "-D", *self._result_branches], cwd=self.repo)
        if self._root and self.root_option is None:
            lifecycle.remove_private_dir(self._root)
        if errors:
            raise WorkspaceError("closing the worktrees failed: " + "; ".join(errors))

    # -- internals

    def _worktree(self, slot: int) -> _Worktree:
        with self._lock:
            wt = self._worktrees.get(slot)
            if self._closed:
                raise WorkspaceError("this GitWorktrees is closed (its worktrees are removed): make a new one")
        if wt is None:
            raise WorkspaceError(f"slot {slot} has no worktree: call prepare({slot}) first")
        return wt

    def _setup(self) -> None:
        with self._lock:
            if self._closed:
                raise WorkspaceError("this GitWorktrees is closed: make a new one")
            if self._ready:
                return
            self._env = self._git_env()
            got = self._git(["rev-parse", "--path-format=absolute", "--git-common-dir", "--show-toplevel"],
                            cwd=self.repo, hint=f"pass the path of a git repository (is {self.repo} one?)")
            common, _, top = got.text.partition("\n")
            self._common_dir, self._top = os.path.realpath(common), os.path.realpath(top) if top else ""
            self.base_commit = self._git(["rev-parse", "--verify", "--quiet", "--end-of-options",
                                          f"{self.base}^{{commit}}"], cwd=self.repo,
                                         hint=f"base {self.base!r} must name a commit of {self.repo}").text
            if self._identity_missing():
                self._env.update({"GIT_AUTHOR_NAME": "toolpool", "GIT_AUTHOR_EMAIL": "toolpool@localhost",
                                  "GIT_COMMITTER_NAME": "toolpool", "GIT_COMMITTER_EMAIL": "toolpool@localhost"})
            if self.root_option is None:
                lifecycle.reclaim_stale_dirs("worktrees")  # every time: a killed program's are its repo's litter
                self._root = lifecycle.private_dir("worktrees")
                self._prune_stale()
            else:
                root = os.path.realpath(self.root_option)
                if self._top and (root == self._top or root.startswith(self._top + os.sep)):
                    raise ValueError(f"root {self.root_option} is inside the work tree {self._top}: the worktrees "
                                     "would show up in it; choose a directory outside it")
                os.makedirs(root, mode=0o700, exist_ok=True)
                self._root = root
            self._run = time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)
            self._ready = True

    def _git_env(self) -> dict[str, str]:
        """The caller's environment without GIT_* (a GIT_DIR or GIT_INDEX_FILE would redirect us) but
        its identity; no prompts; messages in English for the errors we show."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_") or k in _IDENTITY_VARS}
        env.update(GIT_TERMINAL_PROMPT="0", LC_ALL="C")
        return env

    def _identity_missing(self) -> bool:
        if all(v in self._env for v in _IDENTITY_VARS):
            return False
        for key in ("user.name", "user.email"):
            if self._git(["config", key], cwd=self.repo, check=False).returncode != 0:
                return True
        return False

    def _prune_stale(self) -> None:
        """Forget worktrees of toolpool programs that are gone (their directories were reclaimed)."""
        listing = self._git(["worktree", "list", "--porcelain", "-z"], cwd=self.repo).out.split(b"\0")
        paths = [os.fsdecode(item[9:]) for item in listing if item.startswith(b"worktree ")]
        if any(not os.path.exists(p) and lifecycle.dir_owner_alive(os.path.dirname(p)) is False for p in paths):
            with self._locked():
                self._git(["worktree", "prune"], cwd=self.repo)

    def _locked(self) -> contextlib.AbstractContextManager[None]:
        return _repository_lock(self._common_dir, self.git_timeout)

    def _pathspec(self) -> list[str]:
        return ["."] + [f":(exclude,glob){pattern}" for pattern in self.ignore] + \
            [f":(exclude,glob){pattern}/**" for pattern in self.ignore]

    def _git(self, args: list[str], *, cwd: str, check: bool = True, hint: str = "", limit: int = _OUTPUT_LIMIT,
             env: dict[str, str] | None = None, refresh: bool = False) -> _Result:
        # Reads never take an index lock, except ``refresh``: git status may then save what it learnt into
        # the slot's own index (nobody else's), else files checked out in the index's second stay
        # "racily clean" and every later status rereads them all.
        argv = ["git"] if refresh else ["git", "--no-optional-locks"]
        for setting in _GIT_CONFIG:
            argv += ["-c", setting]
        argv += args
        try:
            got = _run_bounded(argv, cwd, env or self._env or self._git_env(), self.git_timeout, limit)
        except FileNotFoundError as exc:
            if not os.path.isdir(cwd):
                raise WorkspaceError(f"`git {' '.join(args)}`: directory {cwd} does not exist") from exc
            raise WorkspaceError("git is not installed (or not on PATH): install git (apt-get install git)") from exc
        if check and got.returncode != 0:
            raise GitError(["git", *args], cwd, got.err or f"exit code {got.returncode}", hint)
        return got

    def _state(self, wt: _Worktree) -> _GitState:
        status = self._git(["status", "--porcelain=v2", "--branch", "-z", "--untracked-files=all", "--",
                            *self._pathspec()], cwd=wt.path, refresh=True).out
        head = ""
        dirty = False
        for item in status.split(b"\0"):
            if item.startswith(b"# branch.oid "):
                head = item[13:].decode()
            elif item and not item.startswith(b"#"):
                dirty = True
        if not re.fullmatch(r"[0-9a-f]{40,64}", head):
            raise WorkspaceError(f"the worktree {wt.path} has no commit checked out (HEAD is {head or 'unknown'}): "
                                 "something moved it; its branch is " + wt.branch)
        if not dirty:
            return _GitState(head, None)
        return _GitState(head, self._write_tree(wt))

    def _write_tree(self, wt: _Worktree) -> str:
        """The tree of the worktree's files as they are, through a copy of its index (never its own)."""
        scratch = f"{wt.path}.index-{secrets.token_hex(4)}"
        try:
            with contextlib.suppress(FileNotFoundError):
                shutil.copy2(wt.index, scratch)  # its mtime too: git's check for racily clean entries needs it
            env = {**self._env, "GIT_INDEX_FILE": scratch}
            self._git(["add", "--all", "--", *self._pathspec()], cwd=wt.path, env=env)
            return self._git(["write-tree"], cwd=wt.path, env=env).text
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(scratch)

    def _changed_files(self, wt: _Worktree, before: str, after: str) -> list[Change]:
        out = self._git(["diff-tree", "-r", "-z", "--no-renames", "--name-status", before, after, "--",
                         *self._pathspec()], cwd=wt.path).out.split(b"\0")
        names = {"A": ADDED, "D": DELETED}
        return [Change(os.fsdecode(path), names.get(code.decode()[:1], MODIFIED))
                for code, path in zip(out[0::2], out[1::2], strict=False) if code]

    def _commit(self, wt: _Worktree, message: str) -> str | None:
        """Commit everything in the worktree on its branch; the new commit, or None if nothing was left."""
        with self._locked():
            self._git(["add", "--all", "--", *self._pathspec()], cwd=wt.path)
            if self._git(["diff", "--cached", "--quiet"], cwd=wt.path, check=False).returncode == 0:
                return None
            self._git(["commit", "--quiet", "--no-verify", "-m", message], cwd=wt.path,
                      hint="the turn's changes stay uncommitted in the worktree")
            return self._git(["rev-parse", "HEAD"], cwd=wt.path).text

    def _keep(self, wt: _Worktree, commit: str, label: str) -> None:
        """A branch of its own for ``commit``, named after ``label`` (made unique)."""
        stem = f"{self.branch_prefix}{self._run}/{_ref_part(label)}"
        with self._locked():
            for n in range(1, 1000):
                name = stem if n == 1 else f"{stem}-{n}"
                got = self._git(["branch", "--no-track", name, commit], cwd=self.repo, check=False)
                if got.returncode == 0:
                    break
                if "already exists" not in got.err:
                    raise GitError(["git", "branch", name, commit], self.repo, got.err)
            else:
                raise WorkspaceError(f"over 999 result branches named {stem}: use unique request labels")
        wt.kept.add(commit)
        with self._lock:
            self._result_branches.append(name)

    def _remove(self, slot: int, wt: _Worktree) -> None:
        head = self.base_commit
        if os.path.isdir(wt.path):
            state = self._state(wt)
            head = state.head
            if state.tree is not None and self.keep_branches:
                head = self._commit(wt, f"toolpool: uncommitted changes of slot {slot}, kept at close\n") or head
        with self._locked():
            if os.path.isdir(wt.path):
                self._git(["worktree", "remove", "--force", "--force", wt.path], cwd=self.repo)
            else:  # deleted under us: only git's record of it is left
                self._git(["worktree", "prune"], cwd=self.repo)
            if not self.keep_branches or head == self.base_commit:
                self._git(["branch", "-D", wt.branch], cwd=self.repo)
