"""When to restart a dead instance, and when to give up.

Learned from supervisor (startretries, FATAL) and jupyter_client's restarter
(restart_limit, a stable-start window that resets the count): crash loops are
bounded, and a tool that ran fine for a while earns a fresh budget.  Backoff
between attempts is exponential with jitter (tenacity's ``wait_exponential``
plus ``wait_random``), so many instances failing together do not
restart in lockstep.
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field
from typing import Deque, Dict, Optional

from tenacity import RetryCallState, wait_exponential, wait_random


@dataclass
class RestartPolicy:
    """Automatic restart settings for a pool's instances.

    ``enabled``: restart instances that die (False: they stay EXITED).
    ``limit``: at most this many failures within ``window`` seconds; one more
    makes the instance FATAL (excluded from dispatch until an explicit
    ``restart_instance``).  ``stable_after``: a process that ran at least this
    long before dying resets the failure count.  ``initial``/``maximum``:
    backoff bounds in seconds; ``jitter``: up to this many seconds added.
    """

    enabled: bool = True
    limit: int = 5
    window: float = 60.0
    stable_after: float = 10.0
    initial: float = 0.1
    maximum: float = 10.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if self.limit < 0 or self.window <= 0 or self.initial < 0 or self.maximum < self.initial:
            raise ValueError(f"invalid RestartPolicy: {self}")
        # Composed from tenacity's small policies: exponential growth, capped, plus jitter.
        self._wait = wait_exponential(multiplier=self.initial, max=self.maximum) + wait_random(0, self.jitter)

    def backoff(self, attempt: int) -> float:
        """Seconds to wait before restart attempt ``attempt`` (1-based)."""
        state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
        state.attempt_number = attempt
        return float(self._wait(state))


@dataclass
class FailureLog:
    """Per-instance record of recent failures, judged against a policy."""

    policy: RestartPolicy
    _failures: Dict[int, Deque[float]] = field(default_factory=dict)

    def record(self, index: int, ran_for: Optional[float]) -> Optional[int]:
        """Note a failure of ``index``; return the restart attempt number, or None to give up."""
        now = time.monotonic()
        failures = self._failures.setdefault(index, collections.deque())
        if ran_for is not None and ran_for >= self.policy.stable_after:
            failures.clear()
        failures.append(now)
        while failures and now - failures[0] > self.policy.window:
            failures.popleft()
        if not self.policy.enabled or len(failures) > self.policy.limit:
            return None
        return len(failures)

    def reset(self, index: int) -> None:
        self._failures.pop(index, None)
