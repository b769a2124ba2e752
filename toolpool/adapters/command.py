"""One-shot tools: one process per prompt, prompt on stdin, answer until exit.

For CLIs such as ``llm -p`` or ``claude -p`` that read a prompt, answer once
and exit.  The pool keeps a process of each slot already spawned and waiting
on stdin, so a prompt never pays the tool's start-up; a used process is
replaced in the background.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from ..errors import ResponseTooLarge
from .base import DEFAULT_MAX_RESPONSE_BYTES, Adapter, Cut, Frame, Framer, check_argv, encode_text


class UntilExitFramer(Framer):
    """The response is everything printed until the process exits."""

    def __init__(self, max_bytes: int, ok_codes: Iterable[int], encoding: str, strip: bool) -> None:
        super().__init__(max_bytes)
        self.ok_codes = frozenset(ok_codes)
        self.encoding = encoding
        self.strip = strip
        self._buf = bytearray()
        self._overflow = False

    def feed(self, data: bytes) -> Cut:
        if self._overflow:
            return Cut()
        self._buf += data
        if len(self._buf) > self.max_bytes:
            self._overflow = True
            partial = bytes(self._buf[:65536])
            self._buf.clear()
            return Cut([Frame(error=ResponseTooLarge(self.max_bytes, partial), final=False)])
        return Cut()

    def on_exit(self, exit_code: int | None) -> Cut:
        if self._overflow:
            return Cut([Frame()])  # closes the already-failed turn
        if exit_code not in self.ok_codes:
            return Cut()  # the instance reports InstanceCrashed with the code and stderr tail
        raw = bytes(self._buf)
        text = raw.decode(self.encoding, "replace")
        return Cut([Frame(raw=raw, text=text.strip() if self.strip else text, fields={"exit_code": exit_code})])

    def partial(self) -> bytes:
        return bytes(self._buf)


class CommandAdapter(Adapter):
    """A tool run once per prompt: ``command`` gets the prompt on stdin, then EOF.

    The response is everything it prints on stdout until it exits; an exit
    code outside ``ok_codes`` fails the request with :class:`InstanceCrashed`
    (exit code and stderr tail).  ``suffix`` is appended to the prompt (e.g.
    ``"\\n"`` for tools that read a line).
    """

    name = "command"
    oneshot = True
    ready_on_spawn = True

    def __init__(self, command: Sequence[str], *, env: Mapping[str, str] | None = None,
                 cwd: str | None = None, start_timeout: float = 30.0,
                 max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES, encoding: str = "utf-8",
                 ok_codes: Iterable[int] = (0,), suffix: str = "", strip: bool = True,
                 name: str | None = None, stderr_tail_bytes: int = 8192) -> None:
        super().__init__(env=env, cwd=cwd, start_timeout=start_timeout, max_response_bytes=max_response_bytes,
                         encoding=encoding, stderr_tail_bytes=stderr_tail_bytes)
        self._command = check_argv(command, "['llm', '-p']")
        self.ok_codes = tuple(ok_codes)
        self.suffix = suffix
        self.strip = strip
        if name:
            self.name = name

    def command(self, slot: int) -> list[str]:
        return list(self._command)

    def encode(self, prompt: str) -> bytes:
        encode_text(prompt, self.encoding)  # a TypeError names the prompt, not the suffix
        return encode_text(prompt + self.suffix, self.encoding)

    def new_framer(self) -> Framer:
        return UntilExitFramer(self.max_response_bytes, self.ok_codes, self.encoding, self.strip)
