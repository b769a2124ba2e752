"""aider (the ``aider-chat`` package, verified with 0.86.2) driven over plain pipes.

Over pipes aider is a plain ``input()`` REPL: no echo, no colour, no spinner,
output streamed live.  After every turn it prints the chat's files, one per
line, then its prompt: ``> ``, prefixed by the chat mode when it differs from
the model's edit format (``ask> ``) and by ``multi`` in multi-line mode.  A
reply ends with ``Tokens: N sent, M received.`` (plus ``Cost: ...`` when the
model has prices).  :class:`AiderFramer` cuts responses at that prompt after a
quiet period and turns the bookkeeping into :class:`~toolpool.Response`
fields; :class:`AiderAdapter` builds a non-interactive command line and an
offline-safe environment.

Prompts are messages for the model, whatever they start with.  aider's own
commands (``/add``, ``/ls``, ``!cmd``...) are sent as :class:`AiderCommand`
values (a ``str`` subclass, so they pass through every ``str`` API of the pool
unchanged)::

    pool.ask(0, aider_command("/add", "calc.py"))   # runs /add, no LLM call
    pool.ask(0, "/add is a slash command")           # sent to the model as text
"""

from __future__ import annotations

import codecs
import json
import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..errors import SpawnError, ToolPoolError
from .aider_turns import (
    AiderQuestion,
    ConfirmPolicy,
    answer_bytes,
    default_confirm,
    question_at_end,
    rate_limit_status,
    read_usage,
    remove_usage_lines,
    turn_report,
    unclosed_fence,
)
from .base import DEFAULT_MAX_RESPONSE_BYTES, RATE_LIMIT_EVENT, Adapter, Control, Cut, Frame, Framer
from .repl import PromptFramer, compile_prompt

log = logging.getLogger(__name__)

#: Files of the chat copied before each message turn (to undo a truncated whole-file write): bounds.
SNAPSHOT_FILES = 64
SNAPSHOT_BYTES = 1 << 20
NONCONFORM_NOTE = "The LLM did not conform to the edit format."
#: Quiet after a "Retrying in" notice that makes it aider's (its first retry sleeps 0.25 s).
RETRY_QUIET = 0.2
#: How long after aider's retry sleep a signal waits: aider is then inside its next attempt.
AFTER_SLEEP = 0.15

__all__ = ["AiderAdapter", "AiderApiError", "AiderCommand", "AiderFramer", "aider_command", "encode_prompt"]

#: Flags that make aider scriptable over pipes and keep it from writing to the
#: repository or the network on its own.
SCRIPTED_FLAGS: tuple[str, ...] = (
    "--no-pretty", "--no-fancy-input", "--no-auto-commits", "--no-gitignore",
    "--no-check-update", "--no-show-model-warnings", "--no-analytics", "--no-show-release-notes",
    "--no-detect-urls", "--no-auto-lint", "--no-auto-test",
)

#: How aider prints the end-of-turn marker: its notification hook runs this through ``sh -c``
#: (output captured), so it writes to aider's own stdout, the pipe toolpool reads.
MARK_COMMAND = "printf '%s' > /proc/$PPID/fd/1"

#: aider exits on a second SIGINT within 2 s of the previous one (measured on
#: its side, after it handled the first); keep a margin.
SIGINT_SPACING = 3.0

#: aider's prompt line: ``[edit format][ multi]> `` (edit formats are lower
#: case words with hyphens: ask, diff-fenced, editor-whole...).
PROMPT_PATTERN = r"^(?:[a-z][a-z-]*(?: multi)?|multi)?> "

_NUM = r"\d+(?:\.\d+)?k?"
_USAGE = re.compile(
    rf"^Tokens: (?P<sent>{_NUM}) sent(?:, (?P<write>{_NUM}) cache write)?(?:, (?P<hit>{_NUM}) cache hit)?"
    rf", (?P<received>{_NUM}) received\.(?:[ \n]Cost: \$(?P<cost>[\d.]+) message, \$(?P<session>[\d.]+) session\.)?"
    r"[ \t]*$\n?", re.MULTILINE)
_NOTICE = re.compile(r"^\^C again to exit[ \t]*$\n?", re.MULTILINE)
_API_ERROR = re.compile(r"^litellm\.\w+Error: ", re.MULTILINE)
_RETRY = re.compile(r"^Retrying in [\d.]+ seconds\.\.\.")
#: aider commands that never call the model: their turns end at the prompt after the short
#: settle.  Any other command (/ask, /code, /architect, /run...) may stream a model reply.
_LOCAL_COMMANDS = frozenset({"/add", "/drop", "/ls", "/tokens", "/clear", "/reset", "/undo", "/diff",
                             "/read-only", "/model", "/chat-mode", "/map", "/help", "/git", "/commit"})

#: Home files aider (and git, which it runs) read; linked into a private HOME
#: so that a user's aider config, keys and git identity still apply.
HOME_LINKS: tuple[str, ...] = (".aider.conf.yml", ".aider.model.settings.yml", ".aider.model.metadata.json",
                               ".env", ".aider/oauth-keys.env", ".gitconfig", ".config/git")
_PRICES = os.path.join(".aider", "caches", "model_prices_and_context_window.json")


class AiderApiError(ToolPoolError):
    """aider got no reply from the model API (refused, unreachable, rejected...).

    ``detail`` is aider's error text, e.g. ``litellm.AuthenticationError: ...``.
    ``retrying`` is True when aider is still retrying: the instance stays
    busy until it gives up (about a minute) unless it is interrupted.
    """

    def __init__(self, detail: str, retrying: bool = False) -> None:
        self.detail = detail
        self.retrying = retrying
        msg = f"aider got no reply from the model: {detail or 'unknown error'}"
        if retrying:
            msg += "; aider keeps retrying for about a minute unless interrupted (pool.interrupt(index))"
        super().__init__(msg)


class AiderCommand(str):
    """An aider in-chat command (``/add calc.py``, ``/ls``, ``!make test``), run by aider itself.

    A plain ``str`` prompt is always a message to the model, even if it starts
    with ``/`` or ``!``; wrap text in ``AiderCommand`` to run it as a command
    instead.  Being a ``str``, it needs nothing from the pool: the adapter
    recognises the type when it encodes the prompt.  Must be one line starting
    with ``/`` or ``!``.  Commands that wait for a terminal (``/editor``,
    ``/voice``) or end aider (``/exit``) do not fit a pool.
    """

    #: the file names of a command built by :func:`aider_command` (resolved by the adapter)
    paths: tuple[str, ...] = ()

    def __new__(cls, text: str) -> AiderCommand:
        text = str(text)
        if not text.startswith(("/", "!")) or "\n" in text or "\r" in text:
            raise ValueError(f"an aider command is one line starting with '/' or '!', got {text!r}")
        return super().__new__(cls, text)


#: aider commands whose arguments are file names (``parse_quoted_filenames``: ``"..."`` or a word).
FILE_COMMANDS = frozenset({"/add", "/drop", "/read-only"})


def aider_command(command: str, *args: str) -> AiderCommand:
    """``aider_command("/add", "calc.py")`` -> ``AiderCommand("/add calc.py")``; ``"add"`` means ``"/add"``.

    For ``/add``, ``/drop`` and ``/read-only`` every argument is one file name:
    quoted the way aider splits them (``"my notes.txt"``), and a relative name
    means that path relative to the adapter's ``cwd`` (the adapter rewrites it
    for aider, which reads names relative to the repository root).  A name
    holding ``"`` or a line break cannot be passed to aider: ValueError.
    """
    if not command.startswith(("/", "!")):
        command = "/" + command
    if command not in FILE_COMMANDS:
        return AiderCommand(" ".join((command,) + tuple(args)))
    for name in args:
        if not name or '"' in name or "\n" in name or "\r" in name:
            raise ValueError(f"aider cannot take the file name {name!r}: empty, or holds a double quote or "
                             "a line break (aider splits names on spaces outside double quotes); rename the file")
    cmd = AiderCommand(" ".join((command,) + tuple(_quote(a) for a in args)))
    cmd.paths = tuple(args)
    return cmd


def _quote(name: str) -> str:
    return f'"{name}"' if any(c.isspace() for c in name) else name


def encode_prompt(prompt: str) -> str:
    """The text to type into aider for ``prompt``, without the final newline.

    An :class:`AiderCommand` is typed as is.  A message is typed so that aider
    sends it whole to the model: CRLF becomes LF; a leading ``/`` or ``!``
    gets one space in front (aider would run it as a command otherwise, and
    keeps the space); a message with several lines, or starting with ``{``,
    goes in a ``{tag`` ... ``tag}`` block whose tag does not occur in it
    (aider then appends one ``\\n`` to the message).  Raises ValueError for an
    empty message, which aider ignores without printing anything.
    """
    if isinstance(prompt, AiderCommand):
        return str(prompt)
    text = prompt.replace("\r\n", "\n")
    if not text:
        raise ValueError("empty prompt: aider ignores an empty line; send some text, or an AiderCommand")
    if text[0] in "/!":
        text = " " + text
    if "\n" in text or text.lstrip("\r").startswith("{"):
        n, tag = 0, "tp"
        while tag + "}" in text:
            n += 1
            tag = f"tp{n}"
        text = f"{{{tag}\n{text}\n{tag}}}"
    return text


def _count(token: str | None) -> int:
    """aider's token figures: ``733``, ``1.2k``, ``12k`` (rounded above 1000)."""
    if not token:
        return 0
    return round(float(token[:-1]) * 1000) if token.endswith("k") else int(token)


def _trim(text: str) -> str:
    """Drop leading and trailing blank (whitespace-only) lines; keep everything else exact."""
    lines = text.split("\n")
    while lines and not lines[0].strip():
        lines.pop(0)
    while lines and not lines[-1].strip():
        lines.pop()
    return "\n".join(lines)


def _error_detail(text: str) -> str:
    """aider's last API error block as one line (it wraps long messages at 80 columns)."""
    found = list(_API_ERROR.finditer(text))
    if not found:
        return ""
    lines = [ln for ln in text[found[-1].start():].split("\n") if ln.strip() and not _RETRY.match(ln)]
    return re.sub(r"\s+", " ", " ".join(lines[:6])).strip()


def parse_output(raw: str, prompt_line: str = "> ", interrupted: bool = False, last_usage_only: bool = False
                 ) -> tuple[str, dict[str, Any], AiderApiError | None]:
    """Split one turn's output (up to, not including, the prompt line) into text, fields and error.

    The output ends with a blank line (aider's separator before the prompt)
    and the chat's files.  ``Tokens:`` lines are removed from the text and
    summed into ``tokens_sent``/``tokens_received`` (and ``cost_usd`` when
    priced; a turn can make several model calls).  With ``last_usage_only``
    only the last one is (the one aider printed after the last reply: a reply
    quoting a ``Tokens:`` line keeps it).  With ``interrupted``,
    aider's ``^C again to exit`` notice is removed and ``interrupted`` and
    ``is_error`` set.  The error is an :class:`AiderApiError` when the turn
    printed an API error and no usage line (no reply at all).
    """
    cut = raw.rfind("\n\n")
    body, block = (raw[: cut + 1], raw[cut + 2:]) if cut >= 0 else (raw, "")
    files, read_only = [], []
    for line in block.split("\n"):
        if line.endswith(" (read only)"):
            read_only.append(line[: -len(" (read only)")])
            files.append(read_only[-1])
        elif line:
            files.append(line)
    usage = list(_USAGE.finditer(body))
    if last_usage_only and usage:
        usage = usage[-1:]
        body = body[: usage[0].start()] + body[usage[0].end():]
    else:
        body = _USAGE.sub("", body)
    fields: dict[str, Any] = {"files": files, "read_only_files": read_only,
                              "mode": prompt_line[:-2].strip(), "interrupted": False}
    if interrupted and _NOTICE.search(body):
        body = _NOTICE.sub("", body)
        fields["interrupted"] = fields["is_error"] = True  # as the claude adapter reports it
    if usage:
        # "N sent" already includes any cache write/hit tokens it lists.
        fields["tokens_sent"] = sum(_count(m["sent"]) for m in usage)
        fields["tokens_received"] = sum(_count(m["received"]) for m in usage)
        fields["model_calls"] = len(usage)
        costs = [m for m in usage if m["cost"]]
        if costs:
            fields["cost_usd"] = sum(float(m["cost"]) for m in costs)
            fields["session_cost_usd"] = float(costs[-1]["session"])
    error = None
    if not usage and not fields["interrupted"] and _API_ERROR.search(body):
        error = AiderApiError(_error_detail(body))
    return _trim(body), fields, error


class AiderFramer(Framer):
    """Cuts aider's output into responses; wraps a :class:`PromptFramer` for the prompt search.

    On top of the prompt match it: skips the continuation prompts aider
    prints for each line of a ``{tag`` block (they look like the end of a
    turn); requires ``unconfirmed_settle`` seconds of quiet instead of
    ``settle`` when a message's output has shown no usage line, API error or
    interrupt notice yet (a ``> `` line inside a streamed reply is then not
    mistaken for the end); fails a turn early with :class:`AiderApiError`
    once aider announces more than ``max_api_retries`` retries; drops a
    lone ``^C again to exit`` notice that a late interrupt caused after its
    turn had already ended.
    """

    def __init__(self, *, max_bytes: int = DEFAULT_MAX_RESPONSE_BYTES, settle: float = 0.15,
                 unconfirmed_settle: float = 1.0, encoding: str = "utf-8",
                 max_api_retries: int | None = 0, mark: bytes | None = None,
                 confirm: ConfirmPolicy | None = None, root: str | None = None) -> None:
        super().__init__(max_bytes)
        self._inner = PromptFramer(compile_prompt(PROMPT_PATTERN), max_bytes=max_bytes, settle=settle,
                                   encoding=encoding, strip=False)
        self.encoding = encoding
        self.base_settle = settle
        self.unconfirmed_settle = max(settle, unconfirmed_settle)
        self.settle = settle
        self.max_api_retries = max_api_retries
        self._prefix = b"> "  # aider's current prompt prefix; continuation prompts repeat it
        self._line = bytearray()  # the last, incomplete line of output
        self._lead = bytearray()  # continuation prompts skipped at the start of the turn
        self._expect = 0  # continuation prompts the turn's input causes
        self._skip = 0  # ... still to skip
        self._message = False
        self._confirmed = False
        self._retries = 0
        self._failed = False
        self._interrupt_sent = False
        self._prompted = False  # the turn answers a prompt (not start-up)
        self._known_files: set[str] = set()  # the chat's file lines, as last listed
        self._error_text: list[str] = []
        self._want_interrupt = False
        # Marker mode (see AiderAdapter): aider prints ``mark`` (a secret the model never sees)
        # each time it is about to wait for input after a model call.
        self.mark = mark or None
        self.confirm = confirm
        self.root = root
        self._prompt: str | None = None
        self._marked = False  # the marker came since the last question: what follows is aider's prompt
        self._held = bytearray()  # the start of a marker at the end of the last read
        self._llm_seen = False  # a marker came this turn: the model call is over
        self._post_llm = False  # a question after the model call was answered
        self._expect_marker = False  # ... and another model call follows it (a reflection)
        self._bang = False  # a shell command turn (!cmd, /run): ends only after its output question
        self._output_answered = False
        self._questions: list[AiderQuestion] = []
        self._seen = 0  # bytes of this turn's output so far
        self._asked_at = -1  # ... when the last question was answered
        self._decoder = codecs.getincrementaldecoder(encoding)("replace")
        self._snapshot: dict[str, bytes] = {}
        self._retry_pending: int | None = None  # output length at a "Retrying in" notice
        # aider sleeps the printed delay after a retry notice.  A SIGINT during that sleep makes
        # aider 0.86.2 handle ^C twice and exit; one during the next attempt is handled once.  So
        # interrupts wait until the sleep is over (a quiet period armed for its end).
        self._sleep_until = 0.0  # monotonic end of aider's current retry sleep
        self._interrupt_after_sleep = False
        self._limit: int | None = None  # a rate limit aider just announced: feed() reports it to the pool

    # -- turn bookkeeping ----------------------------------------------------------
    def start_turn(self, prompt: str | None, data: bytes = b"") -> None:
        self._prompted = prompt is not None
        self._message = prompt is not None and not (
            isinstance(prompt, AiderCommand) and (prompt.startswith("!") or prompt.split()[0] in _LOCAL_COMMANDS))
        try:
            self._expect = encode_prompt(prompt).count("\n") if prompt is not None else 0
        except ValueError:
            self._expect = 0
        self._skip = self._expect
        self._confirmed = self._failed = self._interrupt_sent = self._want_interrupt = False
        self._retries = 0
        self._error_text = []
        self._prompt = prompt
        self._marked = self._llm_seen = self._post_llm = self._expect_marker = self._output_answered = False
        self._bang = isinstance(prompt, AiderCommand) and (prompt.startswith("!") or prompt.split()[0] == "/run")
        self._questions = []
        self._seen, self._asked_at = 0, -1
        self._decoder.reset()
        self._snapshot = self._take_snapshot() if (self.mark and self._message) else {}
        self._retry_pending = None
        self._sleep_until = 0.0
        self._interrupt_after_sleep = False
        self._set_settle()
        self._inner.start_turn(prompt)

    def interrupt_sent(self) -> Cut:
        self._interrupt_sent = True
        self._interrupt_after_sleep = False  # it is being done now
        return Cut()

    def input_open(self) -> bool:
        """True while aider still reads the lines of a ``{tag`` block: each line it reads prints a
        continuation prompt, and a SIGINT before the last one would leave the rest to be read
        as new top-level input (where ``!`` lines run in a shell)."""
        return self._skip > 0

    def _set_settle(self) -> None:
        self.settle = self.base_settle if (self._confirmed or not self._message) else self.unconfirmed_settle
        self._inner.settle = self.settle

    # -- output --------------------------------------------------------------------
    def feed(self, data: bytes) -> Cut:
        if self.mark:
            data = self._take_mark(data)
        if self._skip:
            data = self._skip_continuations(data)
            if not data:
                return Cut(quiet=self.settle if self.has_candidate() else None)
        self._seen += len(data)
        if self._retry_pending is not None and data.strip():
            self._retry_pending = None  # more output at once: the notice was part of a reply
        events: list[dict[str, Any]] = []
        if self._prompted and data:
            text = self._decoder.decode(data)
            if text:
                events.append({"type": "text", "text": text})
        frames = self._scan(data)
        if self._limit is not None:  # aider gives no server retry-after (its SDK already waited it out)
            events.append({"type": RATE_LIMIT_EVENT, "status": self._limit, "retry_after": None})
            self._limit = None
        self._set_settle()
        frames += self._finish(self._inner.feed(data).frames)
        calls = self._ask()
        if calls:
            events.append({"type": "question", **self._questions[-1].as_dict()})
        interrupt, self._want_interrupt = self._want_interrupt, False
        # After a retry notice, always a quiet period that ends with aider's sleep: an interrupt held
        # meanwhile (defer_interrupt, from any thread) is then sent from on_quiet.
        asleep = self._retries and time.monotonic() < self._sleep_until + AFTER_SLEEP
        if self._retry_pending is not None:
            quiet: float | None = RETRY_QUIET  # to tell aider's own notice from a quoted one
        elif self._interrupt_after_sleep or asleep:
            quiet = self._after_sleep()
        else:
            quiet = self.settle if self.has_candidate() else None
        return Cut(frames, events=events, quiet=quiet, interrupt=interrupt, calls=calls)

    # -- marker mode: which prompt ends the turn, which questions are aider's -------------
    def _take_mark(self, data: bytes) -> bytes:
        """``data`` without the marker (noting that it came), and without a marker's first bytes at
        its end: those wait for the next read.  printf writes the marker at once, but a reader that
        takes a long output in fixed-size reads may still cut it in two."""
        assert self.mark is not None
        data = bytes(self._held) + data
        self._held.clear()
        if self.mark in data:
            data = data.replace(self.mark, b"")
            self._marked = self._llm_seen = True
            self._expect_marker = False
        for size in range(min(len(self.mark) - 1, len(data)), 0, -1):
            if data.endswith(self.mark[:size]):
                self._held += data[-size:]
                return data[:-size]
        return data

    def _prompt_is_final(self) -> bool:
        """Whether the prompt at the end of the output is aider's (see :class:`AiderAdapter`)."""
        if not self.mark or not self._prompted:
            return True
        if self._bang and self.confirm is not None and not self._output_answered:
            return False  # the command's own output: aider asks about it before it prompts
        if not self._message:
            return True
        if not self._llm_seen and not _calls_the_model(self._prompt):
            # Only a model call makes aider print the marker, and this command may make none
            # (/settings, /save, /lint...): its prompt after the longer quiet ends it.
            return True
        return self._marked or (self._post_llm and not self._expect_marker)

    def _question_is_asked(self, q: AiderQuestion) -> bool:
        if not self._message or self._marked or (self._post_llm and not self._expect_marker):
            return True
        # Before the model call only aider asks: about files (URLs) the prompt mentions.
        return (not self._llm_seen and q.kind in ("add_file", "add_url") and q.subject is not None
                and q.subject.strip() in (self._prompt or ""))

    def _ask(self) -> list[Callable[[], bytes]]:
        """A confirm question at the end of the output: answer it off the reader thread."""
        if self.confirm is None or self._seen <= self._asked_at:
            return []
        tail = self._inner.partial()[-4096:].decode(self.encoding, "replace")
        q = question_at_end(tail)
        if q is None or not self._question_is_asked(q):
            return []
        self._asked_at = self._seen
        post_llm = self._marked or self._post_llm
        self._post_llm = self._post_llm or post_llm
        self._expect_marker = self._expect_marker or not post_llm  # the model call is still to come
        self._marked = False  # the bell rang for this question; the next prompt has no marker
        if q.kind == "command_output":
            self._output_answered = True
        self._questions.append(q)
        context = {"prompt": self._prompt, "command": isinstance(self._prompt, AiderCommand),
                   "output": tail[: len(tail) - len(q.text)][-2000:]}
        policy = self.confirm

        def answer() -> bytes:
            try:
                decision = policy(q, context)
                data = answer_bytes(decision)
            except Exception as exc:  # a failing policy refuses: never hang aider on its question
                log.error("aider confirm policy failed on %r (answered no): %r", q.question, exc)
                data = b"n\n"
            q.answer = data.decode().strip()
            if post_llm and q.answer[:1] in ("y", "a") and q.kind in ("add_file", "add_url", "fix_errors"):
                self._expect_marker = True  # aider now sends the model another message
            return data

        return [answer]

    def _drop_questions(self, text: str) -> str:
        """The turn's output without the questions aider asked (they are in ``meta["questions"]``)."""
        for q in self._questions:
            block = (f"\n{q.subject}\n" if q.subject else "") + q.text
            text = text.replace(block, "", 1) if block in text else text.replace(q.text, "\n", 1)
        return text

    def _take_snapshot(self) -> dict[str, bytes]:
        """The chat's files before a message turn, to undo a whole-file write cut short."""
        snap: dict[str, bytes] = {}
        if not self.root:
            return snap
        for name in sorted(self._known_files)[:SNAPSHOT_FILES]:
            path = os.path.join(self.root, name)
            try:
                if os.path.getsize(path) <= SNAPSHOT_BYTES:
                    with open(path, "rb") as f:
                        snap[name] = f.read()
            except OSError:
                continue
        return snap

    def _report(self, body: str, fields: dict[str, Any]) -> str:
        """Add what the turn did (edits, commit, failures) to ``fields``; return the text without questions."""
        fields["questions"] = [q.as_dict() for q in self._questions]
        report = turn_report(body)
        fields.update(report)
        edited = report["edited_files"]
        if edited and unclosed_fence(body) and not fields.get("interrupted"):
            restored = []
            for name in edited:
                if name in self._snapshot:
                    try:
                        with open(os.path.join(self.root or "", name), "wb") as f:
                            f.write(self._snapshot[name])
                        restored.append(name)
                    except OSError:
                        pass
            fields["is_error"] = True
            fields["restored_files"] = restored
            msg = (f"the model's reply was cut off inside an edit: aider wrote a truncated {', '.join(edited)}"
                   + (f"; restored {', '.join(restored)} from before the turn" if restored else
                      "; check the file (no copy from before the turn)"))
            fields["error"] = msg if "error" not in fields else fields["error"] + "; " + msg
        return _trim(body)

    def _skip_continuations(self, data: bytes) -> bytes:
        """Move the leading continuation prompts of ``data`` to ``_lead``; return the rest."""
        pending = bytes(self._line) + data  # a prompt split across reads waits in _line
        self._line.clear()
        while self._skip and pending.startswith(self._prefix):
            self._lead += self._prefix
            pending = pending[len(self._prefix):]
            self._skip -= 1
        if self._skip and pending and self._prefix.startswith(pending):
            self._line += pending  # part of the next continuation prompt
            return b""
        if pending:
            self._skip = 0  # something else came first: stop skipping
        return pending

    def _scan(self, data: bytes) -> list[Frame]:
        """Look at each new complete line for aider's markers."""
        frames: list[Frame] = []
        self._line += data
        if b"\n" not in data:
            return frames
        *lines, rest = bytes(self._line).split(b"\n")
        self._line[:] = rest
        for raw in lines:
            line = raw.decode(self.encoding, "replace")
            if (self._confirmed and line.strip() and not line.startswith(("Tokens: ", "Cost: "))
                    and line not in self._known_files):
                # More than usage and file lines after a usage line: aider went on with another
                # model call (it adds a file the reply mentions); wait for that one too.
                self._confirmed = False
            if not self._prompted and line.startswith("No LLM model was specified"):
                # aider would now offer an OpenRouter login and wait minutes for a browser.
                frames.append(Frame(error=SpawnError(
                    "aider has no model to use: pass model= (and api_key=/api_base=), or on the command "
                    "line --model (and --option api_key=..., --api-base)"), final=False))
            if self._post_llm and line == NONCONFORM_NOTE:
                self._expect_marker = True  # aider reflects the failed edit back to the model
            if self.mark and line.startswith("Failed to run notifications command"):
                log.warning("aider could not print toolpool's end-of-turn marker (%s); framing falls back to "
                            "the prompt and a quiet period", line)
                self.mark = None
            if line.startswith("Tokens: ") and " received." in line:
                self._confirmed = True
            elif line.startswith("^C again to exit"):
                self._confirmed = True
            elif _API_ERROR.match(line):
                self._confirmed = True
                self._error_text = [line]
            elif _RETRY.match(line) and self._error_text:  # aider's notice follows its error line
                self._retries += 1
                delay = re.search(r"[\d.]+", line[len("Retrying in "):])
                self._sleep_until = time.monotonic() + (float(delay.group()) if delay else 0.0)
                self._limit = rate_limit_status(self._error_text) or self._limit
                if (self.max_api_retries is not None and self._retries > self.max_api_retries
                        and not self._failed and self.mark):
                    # A reply may quote aider's notice: a real retry sleeps (>= 0.25 s) before
                    # anything else is printed, a quoted one streams on.  Decided in on_quiet.
                    self._retry_pending = self._seen
                elif (self.max_api_retries is not None and self._retries > self.max_api_retries
                        and not self._failed):
                    self._failed = True
                    self._interrupt_after_sleep = True  # cut aider's retry loop short, once it sleeps no more
                    frames.append(Frame(error=AiderApiError(_error_detail("\n".join(self._error_text)), True),
                                        final=False))
            elif self._error_text and len(self._error_text) < 8:
                self._error_text.append(line)
        return frames

    def has_candidate(self) -> bool:
        return self._inner.has_candidate() and self._prompt_is_final()

    def defer_interrupt(self) -> bool:
        """While aider sleeps between two attempts of an API call, hold the signal until it is over
        (the quiet period armed at its retry notice ends just after the sleep, and interrupts)."""
        if self._retries and time.monotonic() < self._sleep_until + AFTER_SLEEP:
            self._interrupt_after_sleep = True
            return True
        return False

    def _after_sleep(self) -> float:
        """Seconds of quiet that end just after aider's current retry sleep (at least RETRY_QUIET)."""
        return max(RETRY_QUIET, self._sleep_until + AFTER_SLEEP - time.monotonic())

    def on_quiet(self) -> Cut:
        if self._retry_pending is not None and not self._failed:
            self._retry_pending = None
            self._failed = True  # aider went quiet after its retry notice: it really is retrying
            # The request fails now; aider's retry loop is cut once its sleep is over (a SIGINT
            # during the sleep would end aider).
            self._interrupt_after_sleep = True
            return Cut([Frame(error=AiderApiError(_error_detail("\n".join(self._error_text)), True), final=False)],
                       quiet=self._after_sleep())
        if self._interrupt_after_sleep and not (self._inner.has_candidate() and self._prompt_is_final()):
            if time.monotonic() < self._sleep_until + AFTER_SLEEP:
                return Cut(quiet=self._after_sleep())
            self._interrupt_after_sleep = False
            return Cut(interrupt=True)
        if not self._prompt_is_final():
            return Cut()
        self._interrupt_after_sleep = False  # the turn is over: nothing left to cut short
        return Cut(self._finish(self._inner.on_quiet().frames))

    def _finish(self, frames: list[Frame]) -> list[Frame]:
        """Turn the inner framer's frames (prompt removed) into aider responses."""
        out: list[Frame] = []
        for frame in frames:
            if frame.error is not None:  # ResponseTooLarge, passed on as is
                out.append(frame)
                continue
            prompt_line = bytes(self._line)
            self._line.clear()
            if prompt_line.endswith(b"> "):
                self._prefix = prompt_line
            raw = bytes(self._lead) + frame.raw
            text = frame.raw.decode(self.encoding, "replace")
            if not self._interrupt_sent and _trim(_NOTICE.sub("", text)) == "" and _NOTICE.search(text):
                # A SIGINT that reached aider after the turn it was meant for had
                # ended: aider printed its notice and prompted again.  Not ours.
                self._skip = self._expect
                continue
            if self.mark and self._questions:
                text = self._drop_questions(text)
            body, fields, error = parse_output(text, prompt_line.decode(self.encoding, "replace"),
                                               interrupted=self._interrupt_sent, last_usage_only=bool(self.mark))
            if self.mark and self._prompted:
                body = self._report(body, fields)
            self._lead.clear()
            self._known_files = set(fields.get("files", ()))
            out.append(Frame(raw=raw, text=body, fields=fields, error=error if self._prompted else None))
        return out

    def partial(self) -> bytes:
        return bytes(self._lead) + self._inner.partial() + bytes(self._held)


#: aider commands that always call the model when given text (``/ok`` even without): aider prints
#: the marker at their end.  Without text the first four only switch the chat mode.
_MODEL_COMMANDS = frozenset({"/ask", "/code", "/architect", "/context"})


def _calls_the_model(prompt: str | None) -> bool:
    """Whether aider surely calls the model for ``prompt``: a message, or a command that always does."""
    if not isinstance(prompt, AiderCommand):
        return prompt is not None
    verb, _, text = prompt.partition(" ")
    return verb == "/ok" or (verb in _MODEL_COMMANDS and bool(text.strip()))


def _in_git_work_tree(path: str) -> bool:
    """True when ``path`` or a parent has ``.git`` (a directory, or a file for worktrees)."""
    return _work_tree_root(path) is not None


def _work_tree_root(path: str) -> str | None:
    """The nearest of ``path`` and its parents that holds ``.git``, or None."""
    path = os.path.abspath(path)
    while True:
        if os.path.exists(os.path.join(path, ".git")):
            return path
        parent = os.path.dirname(path)
        if parent == path:
            return None
        path = parent


def _proc_fds() -> bool:
    """Whether a child can reach its parent's stdout through /proc (the marker needs it)."""
    return os.path.exists(f"/proc/{os.getpid()}/fd/1") or os.path.exists(f"/proc/{os.getpid()}/fd/0")


#: aider's repo-map cache directory in the work tree (``RepoMap.TAGS_CACHE_DIR``, 0.86.2).
TAGS_CACHE = ".aider.tags.cache.v4"


class AiderAdapter(Adapter):
    """Runs ``aider`` in a pipe, one chat per instance; see the module docs.

    Serves one pool at a time (``shareable = False``): each slot has a private HOME.

    ``cli_path``: the aider executable (default ``aider`` on PATH).
    ``model``, ``api_base``: ``--model`` and ``--openai-api-base``.
    ``api_key``: given to aider in the environment (``AIDER_OPENAI_API_KEY``,
    same effect as ``--openai-api-key``) so it shows neither in ``ps`` nor in
    :meth:`describe`.  ``cwd``: the work tree; outside a git work tree
    ``--no-git`` is added (else ``--yes-always`` would ``git init`` it).
    ``files``: added to the chat at start (``--file``).  ``edit_format``:
    ``--edit-format``.  ``extra_args``: appended last, so they override.
    ``env``: merged over the parent's environment.

    ``home``: aider writes ``~/.aider`` (analytics id, installs, caches) and
    fetches a model price list from GitHub at start unless ``~/.aider/caches``
    holds a fresh one.  By default every slot gets a private HOME (removed by
    :meth:`close`) seeded with a placeholder price list, and with links to the
    user's ``~/.aider.conf.yml``, ``~/.env``, ``~/.gitconfig`` etc. (see
    ``HOME_LINKS``) so their settings still apply.  With ``home`` set, that
    directory is HOME for all slots; the adapter then only makes sure its price
    list exists and looks fresh (a real list is kept).  Either way
    ``LITELLM_LOCAL_MODEL_COST_MAP=True`` stops litellm's own fetch.  Chat and
    input history go to a private directory per slot, not into the work tree.

    ``warmup``: send ``/tokens`` (no model call) before the instance counts as
    ready, which moves aider's slow first turn (lazy imports, repo map) into
    start-up.  ``settle``, ``unconfirmed_settle``, ``max_api_retries``: see
    :class:`AiderFramer`.

    ``Response.text`` is aider's output for the turn without its bookkeeping:
    no blank lines around it, no ``Tokens:``/``Cost:`` lines (parsed into
    ``tokens_sent``, ``tokens_received``, ``cost_usd``), no file list (in
    ``meta["files"]``, read-only ones also in ``meta["read_only_files"]``), no
    prompt (``meta["mode"]``: its prefix, e.g. ``"ask"``; ``""`` normally).
    Notes aider prints around a reply (a mentioned file being added,
    ``Applied edit to x.py``) stay in the text: over a pipe they cannot be
    told apart from the reply.  An interrupted turn answers with what had
    arrived, ``is_error=True`` and ``meta["interrupted"] = True``.
    """

    name = "aider"
    transport = "pipe"

    def __init__(self, cli_path: str | None = None, model: str | None = None, api_base: str | None = None,
                 api_key: str | None = None, cwd: str | None = None, env: Mapping[str, str] | None = None,
                 extra_args: Sequence[str] = (), files: Sequence[str] = (), edit_format: str | None = None,
                 warmup: bool = True, settle: float = 0.15, start_timeout: float = 60.0, home: str | None = None,
                 *, unconfirmed_settle: float = 1.0, max_api_retries: int | None = 0,
                 max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES, encoding: str = "utf-8",
                 stderr_tail_bytes: int = 8192, confirm: ConfirmPolicy | None = None,
                 suggest_shell_commands: bool = False, restore_files: bool = True) -> None:
        super().__init__(env=env, cwd=cwd, start_timeout=start_timeout, max_response_bytes=max_response_bytes,
                         encoding=encoding, stderr_tail_bytes=stderr_tail_bytes)
        if settle < 0 or unconfirmed_settle < 0:
            raise ValueError(f"settle times must be >= 0 seconds, got {settle!r} and {unconfirmed_settle!r}")
        if max_api_retries is not None and max_api_retries < 0:
            raise ValueError(f"max_api_retries must be >= 0 or None, got {max_api_retries!r}")
        for name, seq in (("extra_args", extra_args), ("files", files)):
            if isinstance(seq, str) or not all(isinstance(a, str) for a in seq):
                raise ValueError(f"{name} must be a sequence of strings, got {seq!r}")
        self.cli_path = os.fspath(cli_path) if cli_path else "aider"
        self.model = model
        self.api_base = api_base
        self.api_key = api_key
        self.extra_args = list(extra_args)
        self.files = list(files)
        self.edit_format = edit_format
        self.warmup = warmup
        self.settle = settle
        self.unconfirmed_settle = unconfirmed_settle
        self.max_api_retries = max_api_retries
        self.home = os.fspath(home) if home else None
        self._real_home = os.path.expanduser("~")
        self._lock = threading.Lock()
        self._root: str | None = None
        self._cleanup: weakref.finalize[Any, Any] | None = None
        self._install_key: str | None = None
        if confirm is not None and not callable(confirm):
            raise ValueError(f"confirm must be a callable (question, context) -> bool | str, got {confirm!r}")
        self.confirm: ConfirmPolicy = confirm or default_confirm
        self.suggest_shell_commands = suggest_shell_commands
        self.restore_files = restore_files
        # A secret the model never sees: aider prints it (notification hook) before it reads input
        # after a model call, so no reply text can pass for the end of a turn.
        self._mark = b"\x1etoolpool-" + secrets.token_hex(8).encode() + b"\x1e" if _proc_fds() else None
        self._chat_files: dict[int, tuple[list[str], list[str]]] = {}  # slot -> (files, read-only) at last answer
        self._usage_offset: dict[int, int] = {}
        self._tags_cache: str | None = None  # aider's repo-map cache, when this adapter made it

    # -- process -------------------------------------------------------------------
    def _private_root(self) -> str:
        """A temporary directory for homes and histories, removed by close() (or at exit)."""
        with self._lock:
            if self._root is None:
                from .. import lifecycle  # 0700, named after its owner; dead owners' dirs are reclaimed
                self._root = lifecycle.private_dir("aider", tempfile.gettempdir())
                self._cleanup = weakref.finalize(self, lifecycle.remove_private_dir, self._root)
            return self._root

    def command(self, slot: int) -> list[str]:
        argv = [self.cli_path, *SCRIPTED_FLAGS]
        if not _in_git_work_tree(self.working_dir(slot) or os.getcwd()):
            argv.append("--no-git")
        for flag, value in (("--model", self.model), ("--openai-api-base", self.api_base),
                            ("--edit-format", self.edit_format)):
            if value:
                argv += [flag, value]
        slot_dir = os.path.join(self._private_root(), f"slot-{slot}")
        analytics = os.path.join(slot_dir, "analytics.jsonl")
        argv += ["--input-history-file", os.path.join(slot_dir, "input.history"),
                 "--chat-history-file", os.path.join(slot_dir, "chat.history.md"),
                 "--analytics-log", analytics]
        if not self.suggest_shell_commands:
            argv.append("--no-suggest-shell-commands")
        if self._mark is not None:
            argv += ["--notifications", "--notifications-command",
                     MARK_COMMAND % "".join(f"\\{b:03o}" for b in self._mark)]
        with self._lock:
            try:
                self._usage_offset[slot] = os.path.getsize(analytics)
            except OSError:
                self._usage_offset[slot] = 0
            files, read_only = self._chat_files.get(slot, ([], []))
            self._note_tags_cache()
        for name in dict.fromkeys([*self.files, *files]):
            argv += ["--file", name]
        for name in read_only:
            argv += ["--read", name]
        return argv + self.extra_args

    def root(self) -> str:
        """aider's root: the git work tree holding ``cwd`` (file names are relative to it), else ``cwd``."""
        return _work_tree_root(self.cwd or os.getcwd()) or os.path.abspath(self.cwd or os.getcwd())

    def _note_tags_cache(self) -> None:
        """Remember aider's repo-map cache dir if it does not exist yet: close() removes it (lock held)."""
        if self._tags_cache is None:
            path = os.path.join(self.root(), TAGS_CACHE)
            self._tags_cache = "" if os.path.exists(path) else path

    def environment(self, slot: int) -> dict[str, str]:
        env = super().environment(slot)
        if "LITELLM_LOCAL_MODEL_COST_MAP" not in self.env:
            env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"  # else litellm fetches its price list at import
        env["HOME"] = self._prepare_home(slot, env)
        if self.api_key:
            env["AIDER_OPENAI_API_KEY"] = self.api_key
        env.setdefault("PYTHONUNBUFFERED", "1")  # aider's prints and the marker reach the pipe in order
        return env

    def _prepare_home(self, slot: int, env: Mapping[str, str]) -> str:
        home = self.home or os.path.join(self._private_root(), f"slot-{slot}", "home")
        with self._lock:
            prices = os.path.join(home, _PRICES)
            os.makedirs(os.path.dirname(prices), exist_ok=True)
            try:
                with open(prices) as f:
                    valid = bool(json.load(f))
            except (OSError, ValueError):
                valid = False
            if not valid:  # aider refetches an empty list; a placeholder entry counts as a list
                with open(prices, "w") as f:
                    json.dump({"toolpool-placeholder": {"note": "keeps aider from fetching prices"}}, f)
            os.utime(prices)  # aider refetches a list older than 24 h
            if self.home is None:
                self._seed_private_home(home, env)
        return home

    def _seed_private_home(self, home: str, env: Mapping[str, str]) -> None:
        for rel in HOME_LINKS:
            src, dst = os.path.join(self._real_home, rel), os.path.join(home, rel)
            if os.path.exists(src) and not os.path.lexists(dst):
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                os.symlink(src, dst)
        installs = os.path.join(home, ".aider", "installs.json")
        if not os.path.exists(installs):
            key = self._installs_key(env)
            if key:  # else aider's first run in this HOME loads its imports synchronously (~2 s more)
                with open(installs, "w") as f:
                    json.dump({key: True}, f)

    def _installs_key(self, env: Mapping[str, str]) -> str | None:
        """aider's ``installs.json`` key, ``str((version, sys.executable))``, asked of its interpreter."""
        if self._install_key is None:
            self._install_key = ""
            exe = shutil.which(self.cli_path, path=env.get("PATH", os.defpath))
            try:
                with open(exe or "", "rb") as f:
                    first = f.readline(512)
                if first.startswith(b"#!"):
                    interp = first[2:].decode().split()[0]
                    out = subprocess.run([interp, "-c", "import sys, aider; print(str((aider.__version__, "
                                          "sys.executable)))"], capture_output=True, text=True, timeout=15,
                                         env=dict(env), stdin=subprocess.DEVNULL)
                    if out.returncode == 0:
                        self._install_key = out.stdout.strip()
            except (OSError, ValueError, IndexError, subprocess.SubprocessError):
                pass
        return self._install_key or None

    def close(self) -> None:
        with self._lock:
            if self._cleanup is not None:
                self._cleanup()
            self._root, self._cleanup = None, None
            cache, self._tags_cache = self._tags_cache, None
        if cache:  # aider puts it in the work tree (no option moves it): it was not there before us
            shutil.rmtree(cache, ignore_errors=True)

    # -- requests --------------------------------------------------------------------
    def warmup_prompts(self) -> list[str]:
        return [AiderCommand("/tokens")] if self.warmup else []

    def encode(self, prompt: str) -> bytes:
        """See :func:`encode_prompt`.  Raises TypeError for a non-str, ValueError for an unsendable prompt."""
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be str, got {type(prompt).__name__}")
        if isinstance(prompt, AiderCommand) and prompt.paths:
            prompt = self._resolve_paths(prompt)
        try:
            return (encode_prompt(prompt) + "\n").encode(self.encoding)
        except UnicodeEncodeError as exc:
            raise ValueError(f"prompt cannot be encoded as {self.encoding}: {exc}") from None

    def _resolve_paths(self, command: AiderCommand) -> AiderCommand:
        """``command``'s file names, relative to ``cwd``, rewritten relative to aider's root."""
        base, root = os.path.abspath(self.cwd or os.getcwd()), self.root()
        names = []
        for name in command.paths:
            path = os.path.normpath(os.path.join(base, os.path.expanduser(name)))
            rel = os.path.relpath(path, root)
            names.append(rel if not rel.startswith("..") else path)
        verb = command.split(" ", 1)[0]
        return aider_command(verb, *names)

    def observe(self, slot: int, response: Any) -> None:
        """Exact figures from aider's analytics log; the chat's files, for the next start of ``slot``."""
        meta = response.meta
        if "files" in meta:
            read_only = list(meta.get("read_only_files") or [])
            files = [f for f in meta["files"] if f not in read_only]
            with self._lock:
                self._chat_files[slot] = (files, read_only)
        path = os.path.join(self._private_root(), f"slot-{slot}", "analytics.jsonl")
        with self._lock:
            usage, self._usage_offset[slot] = read_usage(path, self._usage_offset.get(slot, 0))
        calls = usage.pop("calls", [])
        if not usage:
            return
        response.tokens_sent = usage.pop("tokens_sent")
        response.tokens_received = usage.pop("tokens_received")
        response.cost_usd = usage.pop("cost_usd")
        meta.update(usage, usage_source="aider analytics log")
        if len(calls) > 1 and self._mark is not None:
            response.text = remove_usage_lines(response.text, calls)

    def liveness_probe(self) -> bytes | None:
        """An empty line: aider ignores it and prompts again (no model call)."""
        return b"\n"

    def new_framer(self) -> Framer:
        return AiderFramer(max_bytes=self.max_response_bytes, settle=self.settle,
                           unconfirmed_settle=self.unconfirmed_settle, encoding=self.encoding,
                           max_api_retries=self.max_api_retries, mark=self._mark, confirm=self.confirm,
                           root=self.root() if self.restore_files else None)

    def interrupt(self, control: Control) -> None:
        """One SIGINT to aider's process group: it abandons the turn and prompts again.

        Never two within ``SIGINT_SPACING`` seconds (a second ^C within 2 s
        exits aider): a later one is deferred on the pool's scheduler and
        dropped if its turn has ended meanwhile.  The group, because a shell
        command aider runs (``!cmd``, ``/run``) reads the same stdin and would
        swallow the next prompt if it outlived the interrupt.  The instance
        never calls this while aider still reads a multi-line message
        (:meth:`AiderFramer.input_open`): it replaces the process instead.
        """
        turn = control.turn
        with control.lock:  # a caller's interrupt and the framer's own may come at once: one SIGINT
            wait = control.scratch.get("last_sigint", float("-inf")) + SIGINT_SPACING - time.monotonic()
            if wait <= 0:
                control.scratch["last_sigint"] = time.monotonic()
                log.debug("aider: SIGINT for turn %d", turn)
                control.signal_group(signal.SIGINT)
                return
            if control.scratch.get("deferred") == turn:
                return  # one is already waiting for this turn
            control.scratch["deferred"] = turn

        def deferred() -> None:
            control.scratch.pop("deferred", None)
            if control.turn == turn and control.in_turn():
                self.interrupt(control)

        control.call_later(wait, deferred)

    def secret_env(self) -> dict[str, str]:
        env = super().secret_env()
        if self.api_key:
            env["AIDER_OPENAI_API_KEY"] = self.api_key
        return env

    # -- status ------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """Options and argv with secrets redacted: the key never, a password inside ``api_base`` neither."""
        from ..redact import redact, redact_url

        d = super().describe()
        d.update(model=self.model, api_base=redact_url(self.api_base), api_key="***" if self.api_key else None,
                 home=self.home or "(private per slot)", edit_format=self.edit_format, files=list(self.files),
                 warmup=self.warmup, settle=self.settle)
        return redact(d, [self.api_key] if self.api_key else ())
