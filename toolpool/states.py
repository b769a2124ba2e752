"""The instance state machine, on one screen.

::

    STOPPED --start--> STARTING --ready--> IDLE <--answered-- BUSY
                          |                  |  --prompt sent-->  |
                          |                  |                    |
                          +--died--> EXITED <+-------died---------+
                                       |
                       restart allowed |  restart limit reached
                                       v                 v
                                    BACKOFF --wait--> STARTING      FATAL
    any live state --stop--> STOPPING --> STOPPED

* STARTING: the process is spawning and warming up; not dispatchable.
* IDLE: ready for a prompt.  BUSY: a prompt was sent, the answer is not complete.
* EXITED: the process died (or failed to start); the supervisor decides next.
* BACKOFF: waiting before the next start attempt.
* FATAL: too many failed starts in the restart window; excluded from dispatch
  until an explicit ``restart_instance``.
* STOPPING/STOPPED: being shut down / shut down on purpose.

Who may use a slot is a separate question, answered by :class:`Owner`.

:func:`check_transition` is the only place that knows which moves are legal;
:class:`toolpool.instance.Instance` calls it on every state change.
"""

from __future__ import annotations

import enum


class State(str, enum.Enum):
    STOPPED = "STOPPED"
    STARTING = "STARTING"
    IDLE = "IDLE"
    BUSY = "BUSY"
    EXITED = "EXITED"
    BACKOFF = "BACKOFF"
    FATAL = "FATAL"
    STOPPING = "STOPPING"

    def __str__(self) -> str:
        return self.value


S = State
_TRANSITIONS: dict[State, frozenset[State]] = {
    S.STOPPED: frozenset({S.STARTING, S.STOPPING}),
    S.STARTING: frozenset({S.IDLE, S.EXITED, S.STOPPING}),
    S.IDLE: frozenset({S.BUSY, S.EXITED, S.STOPPING}),
    S.BUSY: frozenset({S.IDLE, S.EXITED, S.STOPPING}),
    S.EXITED: frozenset({S.BACKOFF, S.STARTING, S.FATAL, S.STOPPING}),
    S.BACKOFF: frozenset({S.STARTING, S.STOPPING}),
    S.FATAL: frozenset({S.STARTING, S.STOPPING}),
    S.STOPPING: frozenset({S.STOPPED}),
}

#: States in which a process is running (or being started).
LIVE_STATES = frozenset({S.STARTING, S.IDLE, S.BUSY})
#: States an instance can take a request in.
DISPATCHABLE = frozenset({S.IDLE})


class Owner(str, enum.Enum):
    """Who holds a slot; only the holder may send to its instance (see :mod:`toolpool.slots`)."""

    FREE = "free"  # nobody: dispatch may hand it a queued request
    DISPATCH = "dispatch"  # running a request from submit()/map()
    LEASE = "lease"  # held by a ``with pool.lease()`` block
    INDEX = "index"  # addressed by send_prompt(i)/ask(i)/submit(instance=i)
    MAINTENANCE = "maintenance"  # being recycled, probed or restarted

    def __str__(self) -> str:
        return self.value


class InvalidTransition(RuntimeError):
    """A bug: code tried a state change the machine does not allow."""


def check_transition(old: State, new: State) -> None:
    if new not in _TRANSITIONS[old]:
        raise InvalidTransition(f"illegal instance state change {old} -> {new}")


def transitions() -> dict[str, list[str]]:
    """The transition table, for docs and status consumers."""
    return {s.value: sorted(t.value for t in targets) for s, targets in _TRANSITIONS.items()}
