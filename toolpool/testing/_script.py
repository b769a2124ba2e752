"""Which scripted step answers a request: the queue, prompt-keyed scripts, conversations.

A *conversation* is a list of steps for one agentic turn: its first step answers the
request that starts the turn, and each later step answers the request that brings back
the ``tool_result`` of a tool the previous step called. Following tool_use ids (rather
than taking the next step of one shared queue) keeps concurrent turns, e.g. several
claude instances of a pool, from taking each other's steps.

Not thread-safe on its own: the server calls it under its lock.
"""

from __future__ import annotations

import collections
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ._request import RecordedRequest, turn_prompt
from ._steps import ReplySpec, ToolUse, check_result

__all__ = ["Conversation", "PromptMatch", "Script"]

#: Which turns a prompt-keyed script answers: a substring of the turn's prompt, a regular
#: expression searched in it, or a predicate of the request.
PromptMatch = str | re.Pattern[str] | Callable[[RecordedRequest], bool]


@dataclass
class Conversation:
    """The steps of one agentic turn and how far it got."""

    steps: Sequence[ReplySpec]
    taken: int = 0

    def take(self) -> ReplySpec | None:
        if self.taken >= len(self.steps):
            return None
        self.taken += 1
        return self.steps[self.taken - 1]


@dataclass
class _Keyed:
    match: PromptMatch
    steps: tuple[ReplySpec, ...]
    times: int | None
    used: int = 0

    def matches(self, request: RecordedRequest) -> bool:
        if self.times is not None and self.used >= self.times:
            return False
        if isinstance(self.match, str):
            return self.match in turn_prompt(request.messages)
        if isinstance(self.match, re.Pattern):
            return self.match.search(turn_prompt(request.messages)) is not None
        return bool(self.match(request))


class Script:
    """The scripted answers of one fake server and the checks still due."""

    def __init__(self) -> None:
        self.queue: collections.deque[ReplySpec | Sequence[ReplySpec]] = collections.deque()
        self._keyed: list[_Keyed] = []
        self._by_tool_id: dict[str, Conversation] = {}
        self._checks: dict[str, ToolUse] = {}

    def on_prompt(self, match: PromptMatch, steps: Sequence[ReplySpec], times: int | None) -> None:
        if not steps:
            raise ValueError("on_prompt needs at least one step to answer the matching turns with")
        self._keyed.append(_Keyed(match, tuple(steps), times))

    def unused_prompts(self) -> list[PromptMatch]:
        """The ``on_prompt`` matches that never answered a turn."""
        return [keyed.match for keyed in self._keyed if keyed.used == 0]

    def clear(self) -> None:
        self.queue.clear()
        self._keyed.clear()
        self._by_tool_id.clear()
        self._checks.clear()

    def choose(self, request: RecordedRequest) -> tuple[ReplySpec | None, Conversation | None]:
        """The step that answers ``request`` and the conversation it belongs to (None, None
        when nothing is scripted for it: the server's default reply answers)."""
        results = request.tool_results
        for result in results:  # a follow-up of a scripted conversation goes on with it
            conversation = self._by_tool_id.get(result.tool_use_id)
            if conversation is not None:
                # Once its steps are used up, the default reply: never another one's steps.
                return conversation.take(), conversation
        if not results:
            for keyed in self._keyed:
                if keyed.matches(request):
                    keyed.used += 1
                    conversation = Conversation(keyed.steps)
                    return conversation.take(), conversation
        while self.queue:
            item = self.queue.popleft()
            if not _is_conversation(item):
                return item, None  # type: ignore[return-value]  # a step, not a list of steps
            conversation = Conversation(list(item))  # type: ignore[arg-type]
            step = conversation.take()
            if step is not None:
                return step, conversation
        return None, None

    def sent(self, tool_uses: Sequence[ToolUse], conversation: Conversation | None) -> None:
        """Remember tool calls just sent: their results continue ``conversation`` and are checked."""
        for call in tool_uses:
            assert call.id is not None  # ids are assigned before sending
            if conversation is not None:
                self._by_tool_id[call.id] = conversation
            if call.expect is not None:
                self._checks[call.id] = call

    def check(self, request: RecordedRequest) -> list[str]:
        """Run the checks due on the tool results ``request`` carries; the failures."""
        failures = []
        for result in request.tool_results:
            call = self._checks.pop(result.tool_use_id, None)
            if call is None or call.expect is None:
                continue
            why = check_result(call.expect, result)
            if why is not None:
                failures.append(f"tool_result for {call.name} ({call.id}): {why}")
        return failures


def _is_conversation(item: Any) -> bool:
    return isinstance(item, (list, tuple))
