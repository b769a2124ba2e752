"""Where the real CLI tools are: one lookup for the adapters, the CLI, ``toolpool doctor`` and the tests."""

from __future__ import annotations

import os
import shutil

#: name -> (environment variable, path inside the tools directory of scripts/install-real-tools.sh)
KNOWN_TOOLS: dict[str, tuple[str, str]] = {
    "claude": ("TOOLPOOL_CLAUDE", "claude/node_modules/.bin/claude"),
    "aider": ("TOOLPOOL_AIDER", "aider-venv/bin/aider"),
}


def tools_dir() -> str:
    """``$TOOLPOOL_TOOLS_DIR``, default ``~/.cache/toolpool/real-tools``."""
    return os.environ.get("TOOLPOOL_TOOLS_DIR") or os.path.expanduser("~/.cache/toolpool/real-tools")


def _executable(path: str | None) -> str | None:
    return os.path.abspath(path) if path and os.path.isfile(path) and os.access(path, os.X_OK) else None


def find_tool(name: str) -> str | None:
    """The executable of ``name`` ("claude", "aider" or any command), or None.

    Looked up in order: its environment variable (``TOOLPOOL_CLAUDE``,
    ``TOOLPOOL_AIDER``; when set, only there), ``PATH``, then the directory
    ``scripts/install-real-tools.sh`` installs into (:func:`tools_dir`).
    """
    env_var, installed = KNOWN_TOOLS.get(name, ("", ""))
    explicit = os.environ.get(env_var) if env_var else None
    if explicit:
        return _executable(explicit)
    return _executable(shutil.which(name)) or (_executable(os.path.join(tools_dir(), installed)) if installed
                                               else None)


def where_looked(name: str) -> str:
    """The places :func:`find_tool` searched for ``name``, for an error message that names the fixes."""
    env_var, installed = KNOWN_TOOLS.get(name, ("", ""))
    if env_var and os.environ.get(env_var):
        return f"{env_var}={os.environ[env_var]!r} is not an executable file; fix {env_var} or pass cli_path="
    places = ["PATH"] + ([os.path.join(tools_dir(), installed)] if installed else [])
    how = f"pass cli_path=, set {env_var}, or put it on PATH" if env_var else "pass cli_path= or put it on PATH"
    return f"not found on {' or in '.join(places)}; {how}"
