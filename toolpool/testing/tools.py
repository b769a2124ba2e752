"""Where the real CLI tools are (kept for old imports: the lookup lives in :mod:`toolpool.tools`)."""

from __future__ import annotations

from ..tools import KNOWN_TOOLS, find_tool, tools_dir

__all__ = ["KNOWN_TOOLS", "find_tool", "tools_dir"]
