"""The built-in demo tool (``toolpool/demo_tool.py``) as a pooled REPL."""

from __future__ import annotations

import os
import sys
from typing import Any

from .repl import ReplAdapter

DEMO_TOOL = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "demo_tool.py")


class DemoAdapter(ReplAdapter):
    """Runs toolpool's offline demo tool: no network, no API key.

    ``think``: seconds the tool "thinks" per prompt; ``startup``: seconds
    before it shows its first prompt.
    """

    name = "demo"

    def __init__(self, think: float = 0.05, startup: float = 0.0, transport: str = "pipe", **kwargs: Any) -> None:
        command = [sys.executable, "-u", DEMO_TOOL, "--think", str(think), "--startup", str(startup)]
        kwargs.setdefault("name", "demo")
        super().__init__(command, prompt=r"^demo> $", transport=transport, **kwargs)
        self.think = think
