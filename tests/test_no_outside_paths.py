"""No file of the repository names a path outside it.

Tests and sources that read from a folder of the machine they were written on
fail or skip in a user's clone.  Everything the suite needs lives in the
repository (the real tools' captures are in tests/captures/, re-recorded by
scripts/record-captures.py).  Only docs that explain where old figures came
from may name the outside reference folder.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Split so that this file does not name them itself.
OUTSIDE = ("/wo" "rk/", "shared/" "reference")

#: Docs that explain history: measured figures compared with the old reference notes.
HISTORY = frozenset({"docs/performance.md", "tests/integration/REAL_TOOLS_NOTES.md"})

#: Directories that are not the project's files (caches, builds, virtual environments).
SKIP_DIRS = frozenset({".git", "__pycache__", "build", "dist", "node_modules"})


def repository_files(root: str) -> list[str]:
    """Tracked and untracked-but-not-ignored files (git), else every file outside caches and builds."""
    if os.path.isdir(os.path.join(root, ".git")) and shutil.which("git"):
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                             capture_output=True, timeout=60, check=True, stdin=subprocess.DEVNULL).stdout
        return sorted({p for p in out.decode("utf-8", "surrogateescape").split("\0") if p})
    found = []
    for top, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.startswith(".") and not d.endswith(".egg-info")]
        found += [os.path.relpath(os.path.join(top, name), root) for name in files]
    return sorted(found)


def outside_paths(root: str, allowed: frozenset[str] = HISTORY) -> list[str]:
    """``path:line: text`` for every line naming a path outside the repository."""
    hits = []
    for rel in repository_files(root):
        if rel in allowed:
            continue
        try:
            with open(os.path.join(root, rel), "rb") as f:
                data = f.read()
        except OSError:  # removed since it was listed (another checkout's work in progress)
            continue
        if b"\0" in data:
            continue  # binary
        for number, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
            if any(needle in line for needle in OUTSIDE):
                hits.append(f"{rel}:{number}: {line.strip()[:160]}")
    return hits


def test_no_file_names_a_path_outside_the_repository() -> None:
    hits = outside_paths(ROOT)
    assert not hits, ("these lines name a path outside the repository, which a user's clone does not have; put "
                      "what they need under tests/ (captures: scripts/record-captures.py) and refer to it "
                      "relative to the file:\n" + "\n".join(hits))


def test_the_check_finds_such_a_path(tmp_path: pathlib.Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "ok.py").write_text("CAPTURES = os.path.join(HERE, 'captures')\n")
    (tmp_path / "bad.py").write_text("x = 1\nSAMPLES = '" + OUTSIDE[0] + "elsewhere/samples'\n")
    (tmp_path / "docs" / "history.md").write_text("compared with " + OUTSIDE[1] + "/notes.md\n")
    (tmp_path / "blob.bin").write_bytes(b"\0" + OUTSIDE[0].encode())
    bad = f"bad.py:2: SAMPLES = '{OUTSIDE[0]}elsewhere/samples'"
    assert outside_paths(str(tmp_path), frozenset()) == [bad, f"docs/history.md:1: compared with {OUTSIDE[1]}/notes.md"]
    assert outside_paths(str(tmp_path), frozenset({"docs/history.md"})) == [bad]
