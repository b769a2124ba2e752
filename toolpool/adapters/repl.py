"""Any REPL-like tool: write a line, read until the prompt shows again."""

from __future__ import annotations

import re
import signal
from collections.abc import Mapping, Sequence
from re import Pattern
from typing import Any

from ..errors import ResponseTooLarge
from .base import (
    DEFAULT_MAX_RESPONSE_BYTES,
    Adapter,
    Control,
    Cut,
    Frame,
    Framer,
    check_argv,
    check_terminal_safe,
    encode_text,
)

PromptPattern = str | Pattern[str]


def compile_prompt(prompt: PromptPattern) -> Pattern[str]:
    """Compile a prompt pattern so that it only matches at the very end of output.

    ``^`` and ``$`` work per line (MULTILINE); ``\\Z`` is appended, so ``tp> $``
    cannot match a ``tp> `` that text follows.
    """
    source = prompt.pattern if isinstance(prompt, re.Pattern) else prompt
    flags = prompt.flags if isinstance(prompt, re.Pattern) else 0
    try:
        return re.compile(f"(?:{source})\\Z", flags | re.MULTILINE)
    except re.error as exc:
        raise ValueError(f"prompt is not a valid regular expression: {source!r}: {exc}") from None


class PromptFramer(Framer):
    """A response is everything up to a prompt at the end of the output.

    Only the last ``window`` bytes are searched, so a 5 MB answer costs the
    same per chunk as a short one.  With ``settle`` > 0, the prompt must also
    be followed by that much silence (for tools whose answers may contain
    text that looks like their prompt).
    """

    def __init__(self, pattern: Pattern[str], *, max_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
                 window: int = 4096, settle: float = 0.0, encoding: str = "utf-8",
                 crlf: bool = False, strip: bool = True) -> None:
        super().__init__(max_bytes)
        self.pattern = pattern
        self.window = window
        self.settle = settle
        self.encoding = encoding
        self.crlf = crlf
        self.strip = strip
        self._buf = bytearray()
        self._overflow = False
        self._cut_at: int | None = None  # candidate end of the response body
        self._echo: bytes | None = None

    def start_turn(self, prompt: str | None, data: bytes = b"") -> None:
        # With echo off nothing is echoed, but a tool that turns echo back on
        # (readline does) repeats the line: remember it to strip it.
        self._echo = prompt.encode(self.encoding, "replace") if (self.crlf and prompt) else None
        # Output that came while no turn ran (a tool printing on its own) cannot answer
        # this prompt: it must not be glued to the front of its response.
        if self._buf and not self._overflow:
            del self._buf[:]
            self._cut_at = None

    def _find_prompt(self) -> int | None:
        start = max(0, len(self._buf) - self.window)
        tail = self._buf[start:].decode(self.encoding, "surrogateescape")
        m = self.pattern.search(tail)
        if m is None:
            return None
        return start + len(tail[: m.start()].encode(self.encoding, "surrogateescape"))

    def feed(self, data: bytes) -> Cut:
        frames: list[Frame] = []
        self._buf += data
        if self._overflow:
            del self._buf[: max(0, len(self._buf) - self.window)]
        elif len(self._buf) > self.max_bytes:
            self._overflow = True
            frames.append(Frame(error=ResponseTooLarge(self.max_bytes, bytes(self._buf[:65536])), final=False))
            del self._buf[: max(0, len(self._buf) - self.window)]
        self._cut_at = self._find_prompt()
        if self._cut_at is None:
            return Cut(frames)
        if not self.settle:
            frames.append(self._cut())
            return Cut(frames)
        return Cut(frames, quiet=self.settle)

    def has_candidate(self) -> bool:
        return self._cut_at is not None

    def on_quiet(self) -> Cut:
        return Cut([self._cut()]) if self._cut_at is not None else Cut()

    def _cut(self) -> Frame:
        assert self._cut_at is not None
        raw = bytes(self._buf[: self._cut_at])
        del self._buf[:]
        self._cut_at = None
        if self._overflow:
            self._overflow = False
            return Frame(raw=b"", text="")  # the rest of a response already failed
        return Frame(raw=raw, text=self.clean(raw))

    def clean(self, raw: bytes) -> str:
        if self._echo and raw.startswith(self._echo):
            raw = raw[len(self._echo):]
        text = raw.decode(self.encoding, "replace")
        if self.crlf:
            text = text.replace("\r\n", "\n")
        return text.strip("\r\n") if self.strip else text

    def partial(self) -> bytes:
        return bytes(self._buf)


class ReplAdapter(Adapter):
    """A line-oriented interactive tool that prints ``prompt`` when it waits for input.

    ``command``: argv list, never run through a shell.  ``prompt``: a regular
    expression matching the END of the tool's output when it waits for input
    (``^``/``$`` match per line).  ``env``: extra variables merged over the
    parent's environment.  ``multiline``: allow newlines inside a prompt (off by
    default, since a REPL answers each line separately, which would split the
    response).  ``settle``: seconds of silence required after the prompt.
    ``strip``: remove leading and trailing newlines from ``Response.text``
    (``raw`` is always exact).
    """

    name = "repl"

    def __init__(self, command: Sequence[str], prompt: PromptPattern, transport: str = "pipe",
                 env: Mapping[str, str] | None = None, cwd: str | None = None,
                 start_timeout: float = 30.0, *, max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
                 encoding: str = "utf-8", line_ending: str = "\n", multiline: bool = False,
                 settle: float = 0.0, prompt_window: int = 4096, strip: bool = True,
                 warmup: Sequence[str] = (), interrupt_signal: int = signal.SIGINT,
                 stderr_tail_bytes: int = 8192, name: str | None = None) -> None:
        super().__init__(env=env, cwd=cwd, start_timeout=start_timeout, max_response_bytes=max_response_bytes,
                         encoding=encoding, stderr_tail_bytes=stderr_tail_bytes, warmup=warmup)
        self._command = check_argv(command, "['python3', '-u', 'tool.py']")
        if transport not in ("pipe", "pty"):
            raise ValueError(f"transport must be 'pipe' or 'pty', got {transport!r}")
        if settle < 0:
            raise ValueError(f"settle must be >= 0 seconds, got {settle!r}")
        self.prompt = compile_prompt(prompt)
        self.transport = transport
        self.line_ending = line_ending
        self.multiline = multiline
        self.settle = settle
        self.prompt_window = prompt_window
        self.strip = strip
        self.interrupt_signal = interrupt_signal
        if name:
            self.name = name

    def command(self, slot: int) -> list[str]:
        return list(self._command)

    def encode(self, prompt: str) -> bytes:
        encode_text(prompt, self.encoding)  # type and encodability first
        prompt = prompt.replace("\r\n", "\n")
        if not self.multiline and "\n" in prompt:
            raise ValueError(
                "prompt contains a newline, and this REPL answers each line separately; "
                "send one line per prompt, or create the adapter with multiline=True"
            )
        if self.transport == "pty":
            check_terminal_safe(prompt)
        return encode_text(prompt + self.line_ending, self.encoding)

    def diagnose(self, stdout_tail: str, stderr_tail: str) -> str | None:
        if self.transport == "pipe" and self.prompt.search(stderr_tail.rstrip("\n")):
            return ("the prompt appeared on stderr, not stdout (CPython's REPL does this); use "
                    "transport='pty', or make the tool print its prompt on stdout")
        if stdout_tail and not self.prompt.search(stdout_tail):
            return f"the output does not end with a match of the prompt pattern {self.prompt.pattern!r}"
        return None

    def liveness_probe(self) -> bytes | None:
        # An empty line makes a REPL print its prompt again.
        return self.line_ending.encode(self.encoding)

    def new_framer(self) -> Framer:
        return PromptFramer(self.prompt, max_bytes=self.max_response_bytes, window=self.prompt_window,
                            settle=self.settle, encoding=self.encoding, crlf=self.transport == "pty",
                            strip=self.strip)

    def interrupt(self, control: Control) -> None:
        control.signal_process(self.interrupt_signal)

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d["prompt"] = self.prompt.pattern
        return d
