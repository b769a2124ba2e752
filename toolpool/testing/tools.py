"""Where the real CLI tools are: the lookup toolpool's CLI, tests and examples share."""

from __future__ import annotations

import os
import shutil
from typing import Dict, Optional, Tuple

#: name -> (environment variable, path inside the tools directory of scripts/install-real-tools.sh)
KNOWN_TOOLS: Dict[str, Tuple[str, str]] = {
    "claude": ("TOOLPOOL_CLAUDE", "claude/node_modules/.bin/claude"),
    "aider": ("TOOLPOOL_AIDER", "aider-venv/bin/aider"),
}


def tools_dir() -> str:
    """``$TOOLPOOL_TOOLS_DIR``, default ``~/.cache/toolpool/real-tools``."""
    return os.environ.get("TOOLPOOL_TOOLS_DIR") or os.path.expanduser("~/.cache/toolpool/real-tools")


def _executable(path: Optional[str]) -> Optional[str]:
    return os.path.abspath(path) if path and os.path.isfile(path) and os.access(path, os.X_OK) else None


def find_tool(name: str) -> Optional[str]:
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
