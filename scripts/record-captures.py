#!/usr/bin/env python3
"""Re-record tests/captures/ from the real claude and aider, offline.

The framer tests (tests/test_claude_framer.py, tests/test_aider_framer.py)
replay these captures.  Re-record them when a tool changes::

    bash scripts/install-real-tools.sh        # pinned claude and aider
    python scripts/record-captures.py         # writes tests/captures/*
    python -m pytest tests/test_claude_framer.py tests/test_aider_framer.py -q

Both tools run with the adapters' own command lines and environments
(``ClaudeAdapter.command``/``encode``, ``AiderAdapter.command``/``encode``)
against the fake LLM servers of :mod:`toolpool.testing` on 127.0.0.1, with
every proxy variable pointing at a closed loopback port, so nothing leaves the
machine and no API key is needed.  Paths of this machine (work tree, private
config dirs, HOME, the tools' install dir) are replaced with /home/user/...

Formats:

``claude_*.jsonl``: stdout lines as read, in order.  ``>>> X`` is the line
written to stdin at that point (a JSON string when the adapter wrote plain
text); in ``oneshot`` captures stdin is closed right after the prompt.
``# `` lines are comments: the tool version, the sanitised command line, how
the run ended.

``aider_pipe_transcript.txt``: ``T out REPR`` for each chunk read from stdout
(T: seconds since spawn, REPR: the bytes' repr); ``## T SEND LABEL REPR`` when
the recorder typed something, other ``## `` lines are the recorder's notes.

``aider_multiline_probe.txt``: ``T >>> REPR`` typed text, ``T REPR`` output,
``## T ANSWER REPR`` an answer the adapter's framer typed (a confirm question).

Both aider captures say in a ``# marker: REPR`` header line which
end-of-turn marker the recording's command line made aider print (None when
the adapter ran without one), so that a replay frames it as that adapter did.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)  # run from a checkout without installing

from toolpool.adapters import AiderAdapter, ClaudeAdapter  # noqa: E402
from toolpool.adapters.aider import AiderCommand  # noqa: E402
from toolpool.adapters.base import Cut  # noqa: E402
from toolpool.testing import FakeAnthropicServer, FakeOpenAIServer, Reply, find_tool  # noqa: E402

DEFAULT_OUT = os.path.join(REPO, "tests", "captures")
#: Longest wait for any one thing a tool should do in well under a second.
STEP_TIMEOUT = 60.0
#: Bytes of a tool's stderr kept for error messages.
STDERR_TAIL = 8192
#: Nobody listens on the discard port: a tool that tries to go around the fake fails at once.
DEAD_PROXY = "http://127.0.0.1:9"
OFFLINE_ENV = {"HTTP_PROXY": DEAD_PROXY, "HTTPS_PROXY": DEAD_PROXY, "http_proxy": DEAD_PROXY,
               "https_proxy": DEAD_PROXY, "ALL_PROXY": DEAD_PROXY, "NO_PROXY": "127.0.0.1,localhost",
               "no_proxy": "127.0.0.1,localhost"}
SLOW_SECONDS = 4.0  # the fake's delay for the turn that gets interrupted
INTERRUPT_MARKER = "[Request interrupted by user"


class RecordError(RuntimeError):
    """A recording step failed; the message says which and shows the tool's stderr."""


class Sanitizer:
    """Replaces this machine's paths (and claude's dash-encoded project dirs) with /home/user/... ones."""

    def __init__(self) -> None:
        self.pairs: list[tuple[str, str]] = []

    def add(self, real: str, fake: str) -> None:
        for r in {real, os.path.realpath(real)}:
            self.pairs.append((r, fake))
            # claude names a project's memory dir after its path: /tmp/x/project -> -tmp-x-project
            self.pairs.append((r.replace("/", "-"), fake.replace("/", "-")))
        self.pairs.sort(key=lambda p: -len(p[0]))

    def __call__(self, text: str) -> str:
        for real, fake in self.pairs:
            text = text.replace(real, fake)
        return text

    def check(self, name: str, text: str) -> None:
        """Refuse to write a capture that still names a path of this machine."""
        leaks = {real for real, _ in self.pairs if real.startswith("/") and real in text}
        # HOME and the folder holding this checkout: where a machine's own files usually are
        around = (os.path.expanduser("~"), os.path.dirname(os.path.realpath(REPO)))
        leaks |= {p + "/" for p in around if p not in ("", "/", "/home/user") and p + "/" in text}
        if leaks:
            raise RecordError(f"{name} would name paths of this machine {sorted(leaks)}; add them to the Sanitizer")


class Tool:
    """A tool process on pipes: stdout read by a thread into a queue of (seconds since spawn, chunk)."""

    #: Every tool started, so that a failed recording leaves none running (see :func:`kill_all`).
    started: list[Tool] = []

    def __init__(self, argv: Sequence[str], env: dict[str, str], cwd: str) -> None:
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=env, cwd=cwd, start_new_session=True)
        Tool.started.append(self)
        self.chunks: queue.Queue[tuple[float, bytes]] = queue.Queue()
        self.stderr = bytearray()
        self._threads = [threading.Thread(target=self._read_stdout, daemon=True),
                         threading.Thread(target=self._read_stderr, daemon=True)]
        for thread in self._threads:
            thread.start()

    def now(self) -> float:
        return time.monotonic() - self.t0

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while True:
            data = os.read(fd, 65536)
            self.chunks.put((self.now(), data))  # b"" last: end of output
            if not data:
                return

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr += line
            del self.stderr[:-STDERR_TAIL]

    def write(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def next_chunk(self, timeout: float) -> tuple[float, bytes] | None:
        try:
            return self.chunks.get(timeout=max(timeout, 0.0))
        except queue.Empty:
            return None

    def fail(self, what: str) -> RecordError:
        tail = self.stderr.decode("utf-8", "replace")[-2000:]
        return RecordError(f"{what} (exit code {self.proc.poll()}); stderr tail:\n{tail}")

    def close(self, timeout: float = 30.0) -> int:
        """Close stdin and wait for the exit; kill the process group if it does not come."""
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            rc = self.proc.wait(10)
        for thread in self._threads:
            thread.join(10)
        return rc


def kill_all() -> None:
    """Kill the process group of every tool still running (a recording failed half-way) and reap it."""
    for tool in Tool.started:
        if tool.proc.poll() is None:
            try:
                os.killpg(tool.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            tool.proc.wait(10)
    Tool.started.clear()


# -- claude ---------------------------------------------------------------------------------
class ClaudeRun:
    """One claude process: stdout split into lines, logged in order with what was written."""

    def __init__(self, adapter: ClaudeAdapter, cwd: str) -> None:
        env = {**adapter.environment(0), **OFFLINE_ENV}
        self.argv = adapter.command(0)
        self.tool = Tool(self.argv, env, cwd)
        self.log: list[str] = []
        self.lines: list[dict[str, Any]] = []  # parsed stdout lines, for the recorder's own waits
        self._partial = b""

    def send(self, data: bytes) -> None:
        self._pump(0.0)  # whatever was read before the write comes before it in the log
        self.log.append(">>> " + data.decode("utf-8").rstrip("\n"))
        self.tool.write(data)

    def note(self, text: str) -> None:
        self.log.append(f"# {text}")

    def _pump(self, timeout: float) -> bool:
        """Move stdout read so far into the log; False at end of output."""
        got = self.tool.next_chunk(timeout)
        while got is not None:
            _, data = got
            if not data:
                return False
            self._partial += data
            *whole, self._partial = self._partial.split(b"\n")
            for line in whole:
                text = line.decode("utf-8")
                self.log.append(text)
                self.lines.append(json.loads(text))
            got = self.tool.next_chunk(0.0)
        return True

    def wait_for(self, what: str, match: Callable[[dict[str, Any]], bool], timeout: float = STEP_TIMEOUT,
                 start: int = 0) -> int | None:
        """Index of the first parsed line from ``start`` on that matches; None after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            for i in range(start, len(self.lines)):
                if match(self.lines[i]):
                    return i
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            if not self._pump(min(left, 0.05)):
                raise self.tool.fail(f"claude ended its output while the recorder waited for {what}")

    def need(self, what: str, match: Callable[[dict[str, Any]], bool], start: int = 0) -> int:
        found = self.wait_for(what, match, start=start)
        if found is None:
            raise self.tool.fail(f"claude did not print {what} within {STEP_TIMEOUT:.0f} s")
        return found

    def finish(self) -> list[str]:
        rc = self.tool.close()
        while self._pump(0.5):
            pass
        if self._partial:
            self.log.append(self._partial.decode("utf-8"))
        self.note(f"stdin closed; exit code {rc}")
        return self.log


def is_result(line: dict[str, Any]) -> bool:
    return line.get("type") == "result"


def is_marker(line: dict[str, Any]) -> bool:
    content = (line.get("message") or {}).get("content")
    return line.get("type") == "user" and not line.get("isReplay") and INTERRUPT_MARKER in json.dumps(content)


def claude_session(claude: str, url: str, cwd: str, config_dir: str, prompts: Sequence[str],
                   partial: bool = False) -> list[str]:
    """Ready, then each prompt in turn, each after the previous turn's result (as an instance sends)."""
    adapter = ClaudeAdapter(claude, env=claude_env(url), config_dir=config_dir, max_retries=0,
                            include_partial_messages=partial)
    run = ClaudeRun(adapter, cwd)
    handshake = adapter.handshake()
    assert handshake is not None
    run.send(handshake)
    run.need("the initialize control_response", lambda o: o.get("type") == "control_response")
    for prompt in prompts:
        start = len(run.lines)
        run.send(adapter.encode(prompt))
        run.need(f"the result for {prompt!r}", is_result, start)
    log = run.finish()
    return header(adapter, run) + log


def claude_interrupt(claude: str, server: FakeAnthropicServer, cwd: str, config_dir: str) -> tuple[bool, list[str]]:
    """A slow turn interrupted like an instance does it; (its result came late?, capture).

    After ``[Request interrupted by user]`` the recorder waits the framer's
    interrupt settle for the result, as the instance would, then sends the next
    prompt.  Usually the result is there by then; sometimes it comes only after
    that next message.
    """
    adapter = ClaudeAdapter(claude, env=claude_env(server.url), config_dir=config_dir, max_retries=0)
    framer = adapter.new_framer()
    run = ClaudeRun(adapter, cwd)
    handshake = adapter.handshake()
    assert handshake is not None
    run.send(handshake)
    run.need("the initialize control_response", lambda o: o.get("type") == "control_response")
    asked = len(server.requests)
    start = len(run.lines)
    data = adapter.encode("slow one")
    framer.start_turn("slow one", data)
    run.send(data)
    server.wait_for_requests(asked + 1, timeout=STEP_TIMEOUT, path="/v1/messages")
    time.sleep(0.5)  # claude is waiting for the fake's slow answer
    run.send(framer.interrupt_sent().send)
    marker = run.need("the interrupt marker", is_marker, start)
    late = run.wait_for("the interrupted turn's result", is_result, getattr(framer, "settle", 0.5), marker) is None
    start = len(run.lines)
    run.send(adapter.encode("after interrupt"))
    run.need("the result for 'after interrupt'",
             lambda o: is_result(o) and o.get("result") == "ECHO: after interrupt", start)
    log = run.finish()
    return late, header(adapter, run) + log


def claude_oneshot(claude: str, url: str, cwd: str, config_dir: str, prompt: str) -> list[str]:
    adapter = ClaudeAdapter(claude, env=claude_env(url), config_dir=config_dir, max_retries=0, mode="oneshot")
    run = ClaudeRun(adapter, cwd)
    data = adapter.encode(prompt)
    text = data.decode("utf-8")
    # A stream-json line is logged as written; plain text (older adapters) as a JSON string.
    run.log.append(">>> " + (text.rstrip("\n") if text.startswith("{") else json.dumps(text)))
    run.tool.write(data)
    log = run.finish()
    return header(adapter, run) + log


def synthesise_late(capture: list[str]) -> list[str]:
    """The late-result case made from a normal interrupt: its result moved after the next prompt."""
    lines = list(capture)
    marker = next(i for i, line in enumerate(lines) if not line.startswith(("#", ">>>")) and
                  is_marker(json.loads(line)))
    result = next(i for i in range(marker, len(lines)) if lines[i].startswith('{"type":"result"'))
    moved = lines.pop(result)
    nxt = next(i for i in range(result, len(lines)) if lines[i].startswith(">>> "))
    lines.insert(nxt + 1, moved)
    head = next(i for i, line in enumerate(lines) if not line.startswith("# "))  # after the header comments
    lines.insert(head, "# synthesised: the race did not happen while recording, so the interrupted turn's result line "
                 "was moved after the next prompt, where claude printed it in 3 of 27 observed runs")
    return lines


def claude_env(url: str) -> dict[str, str]:
    return {"ANTHROPIC_BASE_URL": url, "ANTHROPIC_API_KEY": "sk-fake"}


def header(adapter: ClaudeAdapter, run: ClaudeRun) -> list[str]:
    version = next((o.get("claude_code_version") for o in run.lines if o.get("claude_code_version")), "?")
    return [f"# claude {version} ({adapter.mode} mode), offline against toolpool.testing.FakeAnthropicServer",
            "# argv: " + json.dumps(["claude"] + run.argv[1:])]


def record_claude(out: str, sanitize: Sanitizer, work: str, late_tries: int) -> None:
    claude = find_tool("claude")
    if claude is None:
        raise RecordError("claude is not installed: run scripts/install-real-tools.sh (or set TOOLPOOL_CLAUDE)")
    cwd = os.path.join(work, "project")
    config = os.path.join(work, "claude-config")
    os.makedirs(cwd)
    sanitize.add(cwd, "/home/user/project")
    sanitize.add(os.path.join(config, "slot-0"), "/home/user/.claude")
    sanitize.add(os.path.dirname(claude), "/home/user/.local/bin")
    with FakeAnthropicServer() as server:
        server.on_prompt("slow one", Reply("ECHO: slow one", delay=SLOW_SECONDS))
        write(out, "claude_stream_sample.jsonl", claude_session(claude, server.url, cwd, config, ["hello"]), sanitize)
        write(out, "claude_stream_input_sample.jsonl",
              claude_session(claude, server.url, cwd, config, ["first prompt", "second prompt"]), sanitize)
        write(out, "claude_stream_partial_sample.jsonl",
              claude_session(claude, server.url, cwd, config, ["hello"], partial=True), sanitize)
        write(out, "claude_replay_sample.jsonl",
              claude_session(claude, server.url, cwd, config, ["replay one", "replay two"]), sanitize)
        write(out, "claude_oneshot_sample.jsonl", claude_oneshot(claude, server.url, cwd, config, "hello"), sanitize)
        captures: dict[bool, list[str]] = {}
        for attempt in range(1, late_tries + 1):
            late, capture = claude_interrupt(claude, server, cwd, config)
            print(f"claude interrupt, run {attempt}: result {'late' if late else 'on time'}", flush=True)
            captures.setdefault(late, capture + [f"# recorded on run {attempt} of at most {late_tries}"])
            if len(captures) == 2:
                break
        if False not in captures:
            raise RecordError(f"no interrupted turn of {late_tries} printed its result on time")
        write(out, "claude_interrupt_sample.jsonl", captures[False], sanitize)
        write(out, "claude_interrupt_delayed_result_sample.jsonl",
              captures.get(True) or synthesise_late(captures[False]), sanitize)


# -- aider ----------------------------------------------------------------------------------
#: aider's prompt at the end of its output (after the adapter's turn marker, if it sets one):
#: the turn is over once it is followed by quiet.
AIDER_PROMPT = re.compile(rb"(?:^|\n)(?:\x1e[^\x1e\n]*\x1e)?[a-z -]*> \Z")
AIDER_QUIET = 0.8  # far above aider's own gaps inside a turn (< 0.2 s), so no turn is cut early


class AiderRun:
    """One aider process, logged as a transcript: chunks with timestamps, and the recorder's marks."""

    def __init__(self, adapter: AiderAdapter, argv: list[str], env: dict[str, str], cwd: str,
                 probe: bool = False) -> None:
        # The adapter's framer reads along, so that whatever it answers (a confirm question) is
        # written as the instance would; the recorder decides by itself where a turn ends.
        self.framer = adapter.new_framer()
        self.tool = Tool(argv, env, cwd)
        self.probe = probe
        self.log: list[str] = []
        self.turn = b""  # output since the last send

    def act(self, cut: Cut) -> None:
        """Write what the framer asks to write, as the instance does, and note it (in both formats)."""
        for data in [cut.send] + [call() for call in cut.calls]:
            if data:
                self.mark(f"ANSWER {data.decode('utf-8', 'replace')!r}", always=True)
                self.tool.write(data)

    def mark(self, text: str, always: bool = False) -> None:
        while self.pump(0.0):  # output read before the mark comes before it
            pass
        if always or not self.probe:
            self.log.append(f"## {self.tool.now():.3f} {text}")

    def send(self, label: str, typed: str) -> None:
        self.mark(f"SEND {label} {typed!r}")
        if self.probe:
            self.log.append(f"{self.tool.now():.3f} >>> {typed!r}")
        self.turn = b""
        if typed != "<EOF>":
            data = typed.encode("utf-8")
            self.framer.start_turn(typed_prompt(typed), data)
            self.tool.write(data)

    def pump(self, timeout: float) -> bool | None:
        """One chunk into the log: True if one came, None on a timeout, False at end of output."""
        got = self.tool.next_chunk(timeout)
        if got is None:
            return None
        t, data = got
        if not data:
            return False
        self.log.append(f"{t:.3f} {data!r}" if self.probe else f"{t:.3f} out {data!r}")
        self.turn += data
        self.act(self.framer.feed(data))
        return True

    def wait_prompt(self, label: str) -> None:
        """Until the output ends with aider's prompt and then stays quiet."""
        deadline = time.monotonic() + STEP_TIMEOUT
        start = self.tool.now()
        while time.monotonic() < deadline:
            got = self.pump(AIDER_QUIET if AIDER_PROMPT.search(self.turn) else 0.1)
            if got is False:
                raise self.tool.fail(f"aider ended its output during {label}")
            if got is None and self.framer.has_candidate():
                self.act(self.framer.on_quiet())
            if got is None and AIDER_PROMPT.search(self.turn):
                self.mark(f"{label} -> prompt after {self.tool.now() - start - AIDER_QUIET:.3f}s")
                return
        raise self.tool.fail(f"aider did not prompt again within {STEP_TIMEOUT:.0f} s after {label}; its output "
                             f"since: {self.turn[-300:]!r}")

    def finish(self) -> list[str]:
        self.mark("close stdin (EOF)")
        if self.probe:
            self.send("eof", "<EOF>")
        rc = self.tool.close()
        while self.pump(0.5):
            pass
        self.log.append(f"## {self.tool.now():.3f} exit rc={rc}" if not self.probe else f"rc {rc}")
        return self.log


def typed_prompt(typed: str) -> str:
    """The prompt behind text the recorder types (for the framer's turn bookkeeping)."""
    text = typed[:-1] if typed.endswith("\n") else typed
    block = re.fullmatch(r"\{(tp\d*)\n(.*)\n\1\}", text, re.DOTALL)
    if block:
        return block.group(2)
    return AiderCommand(text) if text.startswith(("/", "!")) else text


def git_repo(path: str) -> None:
    """A work tree like a user's: README.md and calc.py committed."""
    os.makedirs(path)
    with open(os.path.join(path, "README.md"), "w") as f:
        f.write("# calc\n\nA tiny calculator.\n")
    with open(os.path.join(path, "calc.py"), "w") as f:
        f.write("def add(a, b):\n    return a + b\n")
    git = ["git", "-c", "user.name=toolpool", "-c", "user.email=toolpool@example.invalid", "-c",
           "init.defaultBranch=main"]
    for args in (["init", "-q"], ["add", "README.md", "calc.py"], ["commit", "-q", "-m", "calc"]):
        subprocess.run(git + args, cwd=path, check=True, timeout=60, stdin=subprocess.DEVNULL)


def aider_adapter(aider: str, url: str, repo: str) -> AiderAdapter:
    return AiderAdapter(aider, model="openai/fake-model", api_base=url + "/v1", api_key="sk-fake", cwd=repo)


def aider_header(kind: str, argv: list[str]) -> list[str]:
    """The command line, and the end-of-turn marker it makes aider print (the replay's framer needs it)."""
    cmd = " ".join(["aider"] + argv[1:])
    return [f"# aider interactive over {kind}, offline against toolpool.testing.FakeOpenAIServer, cmd: {cmd}",
            f"# marker: {aider_marker(argv)!r}"]


def aider_marker(argv: list[str]) -> bytes | None:
    """The marker the adapter's ``--notifications-command`` prints (octal escapes for printf), or None."""
    if "--notifications-command" not in argv:
        return None
    found = re.search(r"printf '((?:\\[0-7]{3})+)'", argv[argv.index("--notifications-command") + 1])
    if found is None:
        raise RecordError(f"cannot read the marker from aider's notifications command {argv!r}")
    return bytes(int(code, 8) for code in found.group(1).split("\\")[1:])


def aider_transcript(aider: str, server: FakeOpenAIServer, repo: str, sanitize: Sanitizer) -> list[str]:
    """What a pool does with one aider instance: ready, warm-up, commands, messages, an interrupt."""
    adapter = aider_adapter(aider, server.url, repo)
    try:
        argv, env = adapter.command(0), {**adapter.environment(0), **OFFLINE_ENV}
        add_aider_paths(sanitize, argv, env)
        run = AiderRun(adapter, argv, env, repo)
        run.wait_prompt("startup")
        steps = [("warmup", adapter.warmup_prompts()[0]), ("ls", AiderCommand("/ls")),
                 ("add", AiderCommand("/add calc.py")), ("prompt1", "hello there"),
                 ("multiline", "line one\nline two"), ("mention", "please look at README.md")]
        for label, prompt in steps:
            run.send(label, adapter.encode(prompt).decode("utf-8"))
            run.wait_prompt(label)
        asked = len(server.requests)
        run.send("slow", adapter.encode("slow reply please").decode("utf-8"))
        server.wait_for_requests(asked + 1, timeout=STEP_TIMEOUT, path="/v1/chat/completions")
        time.sleep(0.5)
        run.mark("SIGINT busy")
        run.act(run.framer.interrupt_sent())
        os.killpg(run.tool.proc.pid, signal.SIGINT)  # to the group, as AiderAdapter.interrupt does
        run.wait_prompt("sigint busy")
        run.send("after-interrupt", adapter.encode("after interrupt").decode("utf-8"))
        run.wait_prompt("after-interrupt")
        return aider_header("plain pipes (stdin/stdout/stderr PIPE, no tty)", argv) + [
            "# each line: t_seconds stream repr(raw bytes chunk); '##' lines are driver marks"] + run.finish()
    finally:
        adapter.close()


def aider_probe(aider: str, server: FakeOpenAIServer, repo: str, sanitize: Sanitizer) -> list[str]:
    """How aider reads typed text: a block whose first line is a command, a shell line, the adapter's fix."""
    adapter = aider_adapter(aider, server.url, repo)
    try:
        argv, env = adapter.command(0), {**adapter.environment(0), **OFFLINE_ENV}
        add_aider_paths(sanitize, argv, env)
        run = AiderRun(adapter, argv, env, repo, probe=True)
        run.wait_prompt("startup")
        for typed in ("/tokens\n", "{tp\n/ls is text here\n}\ntp}\n", "!echo shell-bang\n",
                      adapter.encode("/ls is text here\n}").decode("utf-8")):
            run.send("probe", typed)
            run.wait_prompt("probe")
        return aider_header("plain pipes, typed text sent as is", argv) + [
            "# each line: t_seconds >>> repr(typed) or t_seconds repr(raw bytes chunk)"] + run.finish()
    finally:
        adapter.close()


def add_aider_paths(sanitize: Sanitizer, argv: list[str], env: dict[str, str]) -> None:
    slot_dir = os.path.dirname(argv[argv.index("--chat-history-file") + 1])
    sanitize.add(env["HOME"], "/home/user")
    sanitize.add(slot_dir, "/home/user/.cache/toolpool/aider/slot-0")


def record_aider(out: str, sanitize: Sanitizer, work: str) -> None:
    aider = find_tool("aider")
    if aider is None:
        raise RecordError("aider is not installed: run scripts/install-real-tools.sh (or set TOOLPOOL_AIDER)")
    sanitize.add(os.path.dirname(aider), "/home/user/.local/bin")
    with FakeOpenAIServer() as server:
        server.on_prompt("slow reply please", Reply("ECHO: slow reply please", delay=6.0))
        repo = os.path.join(work, "repo")
        git_repo(repo)
        sanitize.add(repo, "/home/user/project")
        write(out, "aider_pipe_transcript.txt", aider_transcript(aider, server, repo, sanitize), sanitize,
              port=server.port)
        probe_repo = os.path.join(work, "probe")
        git_repo(probe_repo)
        sanitize.add(probe_repo, "/home/user/project")
        write(out, "aider_multiline_probe.txt", aider_probe(aider, server, probe_repo, sanitize), sanitize,
              port=server.port)


# -- main -----------------------------------------------------------------------------------
def write(out: str, name: str, lines: list[str], sanitize: Sanitizer, port: int | None = None) -> None:
    text = sanitize("\n".join(lines) + "\n")
    if port is not None:  # a fresh port every run: keep re-recordings comparable
        text = text.replace(f"127.0.0.1:{port}", "127.0.0.1:8080")
    sanitize.check(name, text)
    path = os.path.join(out, name)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(path + ".tmp", path)
    print(f"wrote {os.path.relpath(path, REPO)} ({len(lines)} lines)", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=DEFAULT_OUT, help="directory to write (default: tests/captures)")
    parser.add_argument("--only", choices=("claude", "aider"), help="record one tool only")
    parser.add_argument("--late-tries", type=int, default=20,
                        help="interrupted claude turns to try for a late result before synthesising one "
                             "(default 20; it happened in about 1 of 9 runs)")
    args = parser.parse_args(argv)
    if args.late_tries < 1:
        parser.error("--late-tries must be at least 1")
    os.makedirs(args.out, exist_ok=True)
    work = tempfile.mkdtemp(prefix="toolpool-captures-")
    sanitize = Sanitizer()
    sanitize.add(work, "/home/user/work")
    try:
        if args.only in (None, "claude"):
            record_claude(args.out, sanitize, work, args.late_tries)
        if args.only in (None, "aider"):
            record_aider(args.out, sanitize, work)
    except RecordError as exc:
        print(f"record-captures: {exc}", file=sys.stderr)
        return 1
    finally:
        kill_all()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
