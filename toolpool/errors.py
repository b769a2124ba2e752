"""Exceptions raised by toolpool.

Every error a caller can see derives from :class:`ToolPoolError`, so one
``except ToolPoolError`` catches them all.  Each message names the problem and,
where there is one, the fix.
"""

from __future__ import annotations

from .redact import redact_text


class ToolPoolError(Exception):
    """Base class of every toolpool error."""


class ToolNotFoundError(ToolPoolError, FileNotFoundError):
    """The tool's executable does not exist or is not executable."""

    def __init__(self, executable: str, hint: str = "") -> None:
        self.executable = executable
        msg = f"tool executable not found: {executable!r}"
        msg += f"; {hint}" if hint else "; install it or pass its full path"
        super().__init__(msg)


class SpawnError(ToolPoolError):
    """The tool could not be started, or never became ready.

    ``exit_code`` is None when the process was still running (it never showed
    readiness within ``start_timeout`` and was killed).  The message and
    ``stderr_tail`` are redacted (a tool may print the key it was given).
    """

    def __init__(self, message: str, exit_code: int | None = None, stderr_tail: str = "") -> None:
        message, stderr_tail = redact_text(message), redact_text(stderr_tail)
        self.exit_code = exit_code
        self.stderr_tail = stderr_tail
        if exit_code is not None:
            message += f" (exit code {exit_code})"
        if stderr_tail:
            message += f"; stderr tail:\n{stderr_tail}"
        super().__init__(message)


class ResponseTimeout(ToolPoolError, TimeoutError):
    """No complete response arrived before the deadline.

    The request is still pending: a later ``read_response`` on the same
    instance keeps waiting for the same response.  ``partial`` holds the bytes
    that had arrived; ``phase`` says which part of the request ran out of time
    ("queue" while waiting for an instance, "response" while the tool worked).
    """

    def __init__(self, message: str, partial: bytes = b"", phase: str = "response",
                 index: int | None = None) -> None:
        self.partial = partial
        self.phase = phase
        self.index = index  # the instance it ran on (None while still queued)
        super().__init__(message)


class InstanceCrashed(ToolPoolError):
    """The tool process exited while a request was pending or being sent.

    ``stderr_tail`` is redacted; ``partial`` is the tool's own output, as it came.
    """

    def __init__(self, index: int, exit_code: int | None, stderr_tail: str = "", partial: bytes = b"") -> None:
        stderr_tail = redact_text(stderr_tail)
        self.index = index
        self.exit_code = exit_code
        self.stderr_tail = stderr_tail
        self.partial = partial
        msg = f"instance {index} exited with code {exit_code} while a request was pending"
        if stderr_tail:
            msg += f"; stderr tail:\n{stderr_tail}"
        super().__init__(msg)


class InstanceBusy(ToolPoolError):
    """The instance has not finished its previous request, or someone else holds it."""


class InstanceUnavailable(ToolPoolError):
    """The instance cannot take requests now (stopped, restarting or FATAL)."""


class PoolClosed(ToolPoolError):
    """The pool has been shut down."""


class PoolFull(ToolPoolError):
    """Too many requests are already waiting for an instance (``max_waiting``)."""


class ResponseTooLarge(ToolPoolError):
    """A response exceeded ``max_response_bytes``; the rest of it was discarded."""

    def __init__(self, limit: int, partial: bytes = b"") -> None:
        self.limit = limit
        self.partial = partial
        super().__init__(
            f"response exceeded max_response_bytes={limit}; the rest was discarded. "
            "Raise max_response_bytes on the adapter if such responses are expected"
        )


class ProtocolError(ToolPoolError):
    """The tool printed something its adapter cannot parse (a malformed or over-long line)."""


class AcquireTimeout(ToolPoolError, TimeoutError):
    """No instance became free for a lease within its timeout."""


class BudgetExceeded(ToolPoolError):
    """The pool's ``max_cost_usd`` is spent: queued and new requests fail (running ones finish)."""

    def __init__(self, spent: float, limit: float) -> None:
        self.spent = spent
        self.limit = limit
        super().__init__(f"the pool's budget is spent: ${spent:.4f} of max_cost_usd=${limit:.4f}; no more "
                         "requests are sent (raise max_cost_usd, or make a new pool)")
