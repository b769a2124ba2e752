"""What one aider turn did, read from aider's own messages: questions, edits, commits, failures.

aider prints its bookkeeping as plain lines between and after the model's
reply.  This module knows those lines (aider 0.86.2, ``aider/io.py``,
``coders/base_coder.py``, ``repo.py``): the confirm questions aider asks, and
the notes that say a turn edited, committed or failed.  The framer calls
:func:`question_at_end` on the output tail and :func:`turn_report` on a
finished turn; the adapter calls :func:`read_usage` on aider's analytics log
for exact token and cost figures.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["AiderQuestion", "ConfirmPolicy", "default_confirm", "question_at_end", "rate_limit_status", "read_usage",
           "turn_report"]

#: ``confirm(question, context) -> bool | str``: True/False answer yes/no; a str is typed as is
#: (e.g. ``"d"``: don't ask again, ``"a"``: all, ``"s"``: skip all).
ConfirmPolicy = Callable[["AiderQuestion", dict[str, Any]], bool | str]

# confirm_ask() appends " (Y)es/(N)o[/(A)ll/(S)kip all][/(D)on't ask again] [Default]: " to the question.
_QUESTION = re.compile(r"(?P<question>[^\n]*?) \(Y\)es/\(N\)o(?P<options>(?:/\([A-Z]\)[^/\n\[]*)*) "
                       r"\[(?P<default>[^\]\n]*)\]: \Z")
_KINDS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("shell", re.compile(r"^Run shell commands?\?$")),
    ("create_file", re.compile(r"^Create new file\?$|^No files matched '.*'\. Do you want to create .*\?$")),
    ("edit_unadded_file", re.compile(r"^Allow edits to file that has not been added to the chat\?$")),
    ("add_file", re.compile(r"^Add file to the chat\?$")),
    ("add_url", re.compile(r"^Add URL to the chat\?$")),
    ("command_output", re.compile(r"^Add (?:[\d.]+k tokens of )?command output to the chat\?$")),
    ("open_url", re.compile(r"^Open (?:URL|documentation url) for more info\??.*$")),
    ("fix_errors", re.compile(r"^(?:Attempt to fix (?:lint|test) errors|Fix lint errors in .*)\?$")),
    ("proceed", re.compile(r"^Try to proceed anyway\?$")),
    ("install", re.compile(r"^(?:Run pip install|Install playwright)\?$")),
)


# litellm's class names in aider's error line (``litellm.RateLimitError: ...``): a 429, an overloaded
# server (OpenAI's 503).  Other classes count when their message says so (Anthropic's 529 "Overloaded").
_LIMIT_CLASSES = {"RateLimitError": 429, "RouterRateLimitError": 429, "ServiceUnavailableError": 529}
_ERROR_CLASS = re.compile(r"^litellm\.(\w+): ")


def rate_limit_status(error_lines: list[str]) -> int | None:
    """429 or 529 when aider's error lines (its ``litellm.*Error:`` line and what follows, up
    to its "Retrying in" notice) report a rate limit or an overloaded API, else None.

    aider's own hint lines ("The API provider's servers are down or overloaded.") are
    skipped: aider prints that one for any 500 too, which is no reason to slow the pool.
    """
    m = _ERROR_CLASS.match(error_lines[0]) if error_lines else None
    if m is None:
        return None
    if m[1] in _LIMIT_CLASSES:
        return _LIMIT_CLASSES[m[1]]
    message = " ".join(line for line in error_lines if not line.startswith("The API provider"))
    return 529 if re.search(r"\boverloaded", message, re.IGNORECASE) else None

@dataclass
class AiderQuestion:
    """One confirm question aider asked.  ``kind`` is one of ``shell``, ``create_file``,
    ``edit_unadded_file``, ``add_file``, ``add_url``, ``command_output``, ``open_url``,
    ``fix_errors``, ``proceed``, ``install`` or ``other``; ``subject`` the line(s) aider
    showed above it (a file name, the shell commands), or None; ``default`` aider's own
    default (``"Yes"``/``"No"``); ``text`` the exact question line as printed."""

    question: str
    kind: str
    subject: str | None
    default: str
    options: list[str] = field(default_factory=list)
    text: str = ""
    answer: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"question": self.question, "kind": self.kind, "subject": self.subject, "default": self.default,
                "options": list(self.options), "answer": self.answer}


def question_at_end(tail: str) -> AiderQuestion | None:
    """The confirm question ``tail`` ends with (aider is waiting for its answer), or None."""
    m = _QUESTION.search(tail)
    if m is None:
        return None
    question = m["question"]
    kind = next((name for name, pattern in _KINDS if pattern.match(question)), "other")
    options = ["yes", "no"] + [o.strip("/()").lower() for o in re.findall(r"/\([A-Z]\)[^/]*", m["options"])]
    # confirm_ask prints an empty line, then the subject, right above the question.
    before = tail[: m.start()]
    subject = None
    if before.endswith("\n"):
        block = before[:-1].rsplit("\n\n", 1)
        if len(block) == 2 and block[1].strip():
            subject = "\n".join(line.rstrip() for line in block[1].split("\n"))
    return AiderQuestion(question, kind, subject, m["default"], options, text=m.group(0))


def default_confirm(question: AiderQuestion, context: dict[str, Any]) -> bool | str:
    """The default policy: what aider's ``--yes-always`` would do, except three refusals.

    Refused: running shell commands, creating a file the prompt did not name
    (``/add`` of a missing file: a typo must not create it), opening URLs and
    installing packages.  Everything else gets aider's own default answer.
    """
    prompt = context.get("prompt") or ""
    if question.kind in ("shell", "open_url", "install"):
        return False
    if question.kind == "create_file":
        if context.get("command") or not question.subject:
            return False  # /add's "No files matched": never create on a typo
        name = question.subject.strip()
        return bool(name) and (name in prompt or os.path.basename(name) in prompt)
    return question.default.lower().startswith("y")


def answer_bytes(answer: bool | str) -> bytes:
    """The line to type for a policy's answer."""
    if isinstance(answer, bool):
        return b"y\n" if answer else b"n\n"
    text = str(answer).strip().lower()
    if not text or "\n" in text:
        raise ValueError(f"a confirm answer is one word (yes/no/all/skip/don't), got {answer!r}")
    return (text + "\n").encode()


# -- what a finished turn did -------------------------------------------------------
_APPLIED = re.compile(r"^Applied edit to (?P<path>.+)$", re.MULTILINE)
_COMMIT = re.compile(r"^Commit (?P<hash>[0-9a-f]{7,40}) (?P<message>.*)$", re.MULTILINE)
_COMMIT_FAILED = re.compile(r"^Unable to commit: (?P<detail>.*)$", re.MULTILINE)
_NO_MATCH = re.compile(r"^## (?P<kind>SearchReplaceNoExactMatch): This SEARCH block failed to exactly match "
                       r"lines in\n(?P<path>[^\n]+)$", re.MULTILINE)
_NONCONFORM = "The LLM did not conform to the edit format."
_REFLECTIONS = re.compile(r"^Only \d+ reflections allowed, stopping\.$", re.MULTILINE)
_EMPTY = "Empty response received from LLM. Check your provider account?"
_FENCE = re.compile(r"^(?:```|~~~)", re.MULTILINE)


def turn_report(body: str) -> dict[str, Any]:
    """Fields for one turn's output: ``edited_files``, ``edit_errors``, ``commit``, and
    ``is_error`` with ``meta["error"]`` when aider says the turn failed."""
    fields: dict[str, Any] = {}
    edited = list(dict.fromkeys(m["path"].strip() for m in _APPLIED.finditer(body)))
    errors = [{"path": m["path"].strip(), "error": m["kind"]} for m in _NO_MATCH.finditer(body)]
    if _NONCONFORM in body and not errors:
        errors.append({"path": None, "error": "the reply did not follow the edit format"})
    commits = [m["hash"] for m in _COMMIT.finditer(body)]
    fields["edited_files"] = edited
    fields["edit_errors"] = errors
    fields["commit"] = commits[-1] if commits else None
    problems: list[str] = []
    if _REFLECTIONS.search(body):
        problems.append("aider gave up on the edits after its reflections (Only N reflections allowed): "
                        f"{len(errors)} edit block(s) never applied")
    elif errors and not edited:
        problems.append(f"{len(errors)} edit block(s) failed to apply")
    if body.strip() == _EMPTY or (_EMPTY in body and not edited):
        problems.append("the model sent an empty reply")
    failed = _COMMIT_FAILED.search(body)
    if failed:
        problems.append(f"aider could not commit the edit: {failed['detail'].strip()}")
    if problems:
        fields["is_error"] = True
        fields["error"] = "; ".join(problems)
    return fields


def unclosed_fence(reply: str) -> bool:
    """True when the reply opened a code block it never closed (a stream cut mid-edit)."""
    return len(_FENCE.findall(reply)) % 2 == 1


# -- exact figures from aider's analytics log -----------------------------------------
def read_usage(path: str, offset: int, limit: int = 1 << 20) -> tuple[dict[str, Any], int]:
    """Sum the ``message_send`` events written to ``path`` after byte ``offset``.

    aider logs every model call there with the exact ``prompt_tokens``,
    ``completion_tokens`` and ``cost`` it printed rounded (``--analytics-log``;
    nothing leaves the machine with ``--no-analytics``).  Returns the fields
    (empty when no call was logged) and the new offset.  Reads at most
    ``limit`` bytes; a torn last line is left for the next call.
    """
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read(limit)
    except OSError:
        return {}, offset
    end = data.rfind(b"\n") + 1
    calls: list[dict[str, Any]] = []
    started = 0
    for line in data[:end].splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") == "message_send_starting":
            started += 1
        elif event.get("event") == "message_send":
            calls.append(event.get("properties") or {})
    fields: dict[str, Any] = {}
    if calls or started:
        fields["tokens_sent"] = sum(int(c.get("prompt_tokens") or 0) for c in calls)
        fields["tokens_received"] = sum(int(c.get("completion_tokens") or 0) for c in calls)
        fields["cost_usd"] = sum(float(c.get("cost") or 0.0) for c in calls)
        fields["model_calls"] = started
        fields["calls"] = [(int(c.get("prompt_tokens") or 0), int(c.get("completion_tokens") or 0)) for c in calls]
        if calls:
            fields["session_cost_usd"] = float(calls[-1].get("total_cost") or 0.0)
    return fields, offset + end


def format_tokens(count: int) -> str:
    """aider's rounding of a token count (``aider/utils.py``)."""
    if count < 1000:
        return f"{count}"
    if count < 10000:
        return f"{count / 1000:.1f}k"
    return f"{round(count / 1000)}k"


def remove_usage_lines(text: str, calls: list[tuple[int, int]], skip_last: bool = True) -> str:
    """Remove aider's ``Tokens:`` lines for ``calls`` (exact figures), searching from the end.

    aider prints each call's line after that call's reply, so the match
    nearest the end (before the previous one removed) is aider's, not a
    look-alike inside a reply.  ``skip_last``: the framer already removed the
    last call's line.
    """
    lines = text.split("\n")
    pos = len(lines)
    todo = calls[:-1] if skip_last else calls
    for sent, received in reversed(todo):
        want = re.compile(rf"^Tokens: {re.escape(format_tokens(sent))} sent(?:, [\d.k]+ cache (?:write|hit))*"
                          rf", {re.escape(format_tokens(received))} received\.")
        for i in range(pos - 1, -1, -1):
            if want.match(lines[i]):
                del lines[i]
                pos = i
                break
    return "\n".join(lines)
