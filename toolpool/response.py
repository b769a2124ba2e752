"""The :class:`Response` a caller gets back for one prompt."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Timings:
    """Where a request's time went, in seconds (``time.perf_counter`` differences).

    ``queued``: waiting for a free instance; ``acquire``: taking the instance
    (including a cold spawn when no warm process was ready); ``spawn``: the
    part of acquire spent starting a process (0.0 when warm); ``first_byte``:
    from sending the prompt to the first byte of output; ``total``: from the
    request's creation to its completion.
    """

    queued: float = 0.0
    acquire: float = 0.0
    spawn: float = 0.0
    first_byte: float | None = None
    total: float = 0.0
    warm: bool = True
    process_age: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "queued": self.queued,
            "acquire": self.acquire,
            "spawn": self.spawn,
            "first_byte": self.first_byte,
            "total": self.total,
            "warm": self.warm,
            "process_age": self.process_age,
        }


@dataclass
class Response:
    """One complete answer from a tool.

    ``text`` is what the tool printed in reply, decoded, with any terminal echo
    and the trailing prompt removed (adapters may strip more, such as aider's
    token line).  ``raw`` is the undecoded bytes the text came from.
    ``elapsed`` is the seconds from sending the prompt to the end of the
    response.  Adapter-specific fields are None when the tool does not report
    them.
    """

    text: str
    raw: bytes
    index: int
    elapsed: float
    prompt: str | None = None
    timings: Timings = field(default_factory=Timings)
    # Claude stream-json fields
    session_id: str | None = None
    cost_usd: float | None = None
    usage: dict[str, Any] | None = None
    is_error: bool = False
    num_turns: int | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    # aider's "Tokens: N sent, M received."
    tokens_sent: int | None = None
    tokens_received: int | None = None
    #: aider: the files it applied edits to, and the edit blocks that failed to apply
    #: (``{"path", "error"}``); None for other tools.  Its own commit goes to ``commit``.
    edited_files: list[str] | None = None
    edit_errors: list[dict[str, Any]] | None = None
    # anything else an adapter wants to report
    meta: dict[str, Any] = field(default_factory=dict)
    #: True for a turn the tool started by itself (e.g. claude after a background
    #: task finished): delivered to event subscribers, never to a request.
    unsolicited: bool = False
    #: The cluster node that answered (``toolpool.ray``); None for a local pool.
    node: str | None = None
    #: claude: the tool calls the model made in this turn, in order: ``{"id", "name", "input",
    #: "result" (text, None if none came back), "is_error"}``.
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    #: claude: the tool uses that were refused (its result's ``permission_denials``), or None.
    permission_denials: list[dict[str, Any]] | None = None
    #: claude: the answer as JSON matching ``json_schema=`` (its result's ``structured_output``), or None.
    structured_output: Any = None
    #: claude: why the model stopped (``end_turn``, ``tool_use``, ``max_tokens``...), or None.
    stop_reason: str | None = None

    #: With a pool ``workspace``: the slot's working directory, the files this turn added, modified
    #: or deleted (``{"path", "status"}``, paths relative to it), a bounded unified diff, and the
    #: commit that holds the turn's result (GitWorktrees), else None / empty.
    workspace: str | None = None
    changes: list[dict[str, Any]] = field(default_factory=list)
    diff: str | None = None
    commit: str | None = None

    def __str__(self) -> str:
        return self.text
