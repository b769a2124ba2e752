"""toolpool: run a pool of long-lived interactive CLI tools from synchronous Python."""

import logging

from .adapters import Adapter, DemoAdapter, ReplAdapter, adapter_names, create_adapter, register_adapter
from .adapters.command import CommandAdapter
from .dispatch import Lease
from .errors import (
    AcquireTimeout,
    BudgetExceeded,
    InstanceBusy,
    InstanceCrashed,
    InstanceUnavailable,
    PoolClosed,
    PoolFull,
    ProtocolError,
    ResponseTimeout,
    ResponseTooLarge,
    SpawnError,
    ToolNotFoundError,
    ToolPoolError,
)
from .instance import Instance
from .pool import ToolProcessPool
from .redact import install_log_redaction
from .response import Response, Timings
from .states import State
from .supervision import RestartPolicy
from .workspaces import Directory, GitWorktrees, Workspace

__version__ = "0.1.0"

# A library logs, the application decides where it goes: silent until configured.
# Every record of the toolpool tree is redacted before any handler sees it.
logging.getLogger("toolpool").addHandler(logging.NullHandler())
install_log_redaction("toolpool")

__all__ = [
    "AcquireTimeout", "BudgetExceeded", "CommandAdapter", "Directory", "GitWorktrees", "Workspace", "Lease",
    "RestartPolicy",
    "Adapter", "DemoAdapter", "Instance", "InstanceBusy", "InstanceCrashed", "InstanceUnavailable", "PoolClosed",
    "PoolFull", "ProtocolError", "ReplAdapter", "Response", "ResponseTimeout", "ResponseTooLarge", "SpawnError",
    "State", "Timings", "ToolNotFoundError", "ToolPoolError", "ToolProcessPool", "adapter_names", "create_adapter",
    "register_adapter",
]
