"""The :class:`Response` a caller gets back for one prompt."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional


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
    first_byte: Optional[float] = None
    total: float = 0.0
    warm: bool = True
    process_age: Optional[float] = None

    def as_dict(self) -> Dict[str, Any]:
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
    prompt: Optional[str] = None
    timings: Timings = field(default_factory=Timings)
    # Claude stream-json fields
    session_id: Optional[str] = None
    cost_usd: Optional[float] = None
    usage: Optional[Dict[str, Any]] = None
    is_error: bool = False
    num_turns: Optional[int] = None
    events: List[Dict[str, Any]] = field(default_factory=list)
    # aider's "Tokens: N sent, M received."
    tokens_sent: Optional[int] = None
    tokens_received: Optional[int] = None
    # anything else an adapter wants to report
    meta: Dict[str, Any] = field(default_factory=dict)
    #: True for a turn the tool started by itself (e.g. claude after a background
    #: task finished): delivered to event subscribers, never to a request.
    unsolicited: bool = False
    #: The cluster node that answered (``toolpool.ray``); None for a local pool.
    node: Optional[str] = None

    def __str__(self) -> str:
        return self.text
