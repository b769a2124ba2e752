"""Tool adapters: what each tool speaks.  See :mod:`toolpool.adapters.base`.

A registry maps short names to adapter factories, so ``ToolProcessPool("demo")``
works; :func:`register_adapter` adds your own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .base import Adapter, Control, Cut, Frame, Framer, check_terminal_safe, redact_argv
from .demo import DemoAdapter
from .repl import PromptFramer, ReplAdapter

_REGISTRY: dict[str, Callable[..., Adapter]] = {}


def register_adapter(name: str, factory: Callable[..., Adapter]) -> None:
    """Make ``ToolProcessPool(name, ...)`` build its adapter with ``factory(**options)``."""
    if not name or not isinstance(name, str):
        raise ValueError("adapter name must be a non-empty string")
    _REGISTRY[name] = factory


def adapter_names() -> list[str]:
    return sorted(_REGISTRY)


def create_adapter(name: str, **options: Any) -> Adapter:
    """Build the adapter registered as ``name``."""
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown adapter {name!r}; registered: {', '.join(adapter_names())}") from None
    return factory(**options)


def _lazy(module: str, cls: str) -> Callable[..., Adapter]:
    """A factory that imports its adapter module only when used."""

    def factory(**options: Any) -> Adapter:
        import importlib

        adapter: Adapter = getattr(importlib.import_module(f"{__name__}.{module}"), cls)(**options)
        return adapter

    factory.__name__ = cls
    return factory


register_adapter("demo", DemoAdapter)
register_adapter("claude", _lazy("claude", "ClaudeAdapter"))
register_adapter("aider", _lazy("aider", "AiderAdapter"))
register_adapter("command", _lazy("command", "CommandAdapter"))


def __getattr__(name: str) -> Any:
    # ``from toolpool.adapters import ClaudeAdapter`` without importing every tool module up front.
    lazy = {"ClaudeAdapter": "claude", "AiderAdapter": "aider", "CommandAdapter": "command"}
    if name in lazy:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{lazy[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = ["Adapter", "Control", "Cut", "DemoAdapter", "Frame", "Framer", "PromptFramer", "ReplAdapter",
           "adapter_names", "check_terminal_safe", "create_adapter", "redact_argv", "register_adapter"]
