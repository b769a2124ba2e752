"""The claude stream-json framer and adapter, without processes.

The captures in tests/captures/ (recorded from the real claude by
scripts/record-captures.py, offline against FakeAnthropicServer, with the
adapter's own command line) are replayed through the framer.  In a capture a
``>>> `` line is what was written to claude's stdin at that point and ``# ``
lines are the recorder's comments.  The assertions hold for any re-recording:
texts and token counts come from the fake, ids and durations from the capture.
"""

from __future__ import annotations

import collections
import json
import os
from typing import Any

import pytest

from toolpool.adapters.claude import QUIET_ENV, READY_REQUEST_ID, ClaudeAdapter, ClaudeFramer, text_delta
from toolpool.errors import ProtocolError, ResponseTooLarge, SpawnError, ToolNotFoundError

pytestmark = pytest.mark.timeout(30)

CAPTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "captures")


class Driver:
    """Plays the instance's part: each frame completes the oldest turn, errors fail it."""

    def __init__(self, framer: ClaudeFramer) -> None:
        self.framer = framer
        self.unsolicited: list[Any] = []  # frames of turns claude ran by itself
        self.tool_turns = 0  # how often the framer said claude began a turn by itself
        self.sent = b""  # what the framer asked to write (control responses, interrupts)
        self.turns: collections.deque[str] = collections.deque()
        self.failed: set = set()
        self.results: list[tuple[str, Any]] = []  # (turn name, Frame or exception), in completion order
        self.events: list[dict] = []

    def begin(self, name: str, prompt: str | None, data: bytes = b"") -> None:
        assert not self.turns, f"instance would refuse a send while {list(self.turns)} is pending"
        self.turns.append(name)
        self.framer.start_turn(prompt, data)

    def feed(self, data: bytes, chunk: int = 0) -> None:
        pieces = [data[i:i + chunk] for i in range(0, len(data), chunk)] if chunk else [data]
        for piece in pieces:
            self._apply(self.framer.feed(piece))

    def quiet(self) -> None:
        """The settle period passed in silence (the reader thread calls on_quiet)."""
        if self.framer.has_candidate():
            self._apply(self.framer.on_quiet())

    def exit(self, code: int = 0) -> None:
        self._apply(self.framer.on_exit(code))

    def interrupt(self) -> bytes:
        return self.framer.interrupt_sent().send

    def _apply(self, cut) -> None:
        self.events += cut.events
        self.sent += cut.send
        self.tool_turns += cut.tool_turn
        for frame in cut.frames:
            if frame.unsolicited:
                self.unsolicited.append(frame)
                continue
            assert self.turns, f"a frame with no turn pending: {frame}"
            name = self.turns[0]
            if frame.error is not None and name not in self.failed:
                self.failed.add(name)
                self.results.append((name, frame.error))
            if frame.final:
                self.turns.popleft()
                if name not in self.failed:
                    self.results.append((name, frame))

    def result(self, name: str) -> Any:
        found = [r for n, r in self.results if n == name]
        assert len(found) == 1, f"{name}: {found}"
        return found[0]


def capture(name: str) -> list[str]:
    with open(os.path.join(CAPTURES, name), encoding="utf-8") as f:
        return f.read().splitlines()


def output(name: str) -> list[dict[str, Any]]:
    """What claude printed, parsed."""
    return [json.loads(line) for line in capture(name) if not line.startswith(("# ", ">>> "))]


def of_type(name: str, kind: str, subtype: str | None = None) -> list[dict[str, Any]]:
    return [o for o in output(name) if o["type"] == kind and (subtype is None or o.get("subtype") == subtype)]


def sent(name: str) -> list[dict[str, Any]]:
    """What was written to claude's stdin, parsed (a str: a oneshot prompt, then stdin was closed)."""
    return [json.loads(line[4:]) for line in capture(name) if line.startswith(">>> ")]


def after_prompt(name: str, prompt: str, results: int = 1) -> list[dict[str, Any]]:
    """What claude printed after ``prompt`` was sent, up to and including the ``results``-th result line."""
    lines, found = capture(name), []
    start = next(i for i, line in enumerate(lines) if line.startswith(">>> ") and
                 json.loads(line[4:]).get("message", {}).get("content") == prompt)
    for line in lines[start + 1:]:
        if not line.startswith(("# ", ">>> ")):
            found.append(json.loads(line))
            results -= found[-1]["type"] == "result"
            if not results:
                return found
    raise AssertionError(f"{name}: no result after {prompt!r}")


def check_turn(events: list[dict[str, Any]], uuid: str | None) -> None:
    """A claude turn as toolpool sees it: system/init first, our echoed message in it, the result last."""
    assert events[0]["type"] == "system" and events[0]["subtype"] == "init"
    assert events[-1]["type"] == "result" and "assistant" in [e["type"] for e in events]
    assert [e["uuid"] for e in events if e.get("isReplay")] == ([uuid] if uuid else [])


def exit_code(name: str) -> int:
    [code] = [int(line.rsplit(" ", 1)[1]) for line in capture(name) if line.startswith("# stdin closed; exit code")]
    return code


def words(text: str) -> int:
    """The fake's token count for ``text``."""
    return len(text.split())


def replay(name: str, chunk: int = 0, session: bool = True) -> Driver:
    """Feed a capture through a framer, acting on its ``>>>`` stdin lines like an instance would."""
    driver = Driver(ClaudeFramer(session=session))
    for line in capture(name):
        if line.startswith("# "):
            continue
        if not line.startswith(">>> "):
            driver.feed((line + "\n").encode(), chunk)
            continue
        data = (line[4:] + "\n").encode()
        message = json.loads(line[4:])
        if isinstance(message, str):  # a prompt written as plain text (then stdin was closed)
            driver.begin(message, message, data)
        elif message["type"] == "control_request" and message["request"]["subtype"] == "initialize":
            driver.begin("ready", None)
        elif message["type"] == "control_request" and message["request"]["subtype"] == "interrupt":
            assert driver.interrupt() == data  # the recording sent what the framer asks for
        else:
            # The instance only sends once the previous turn is over, so any
            # settle period has passed by now.
            driver.quiet()
            driver.begin(message["message"]["content"], message["message"]["content"], data)
    driver.exit(exit_code(name))
    return driver


def test_one_turn_fields():
    name = "claude_stream_sample.jsonl"
    d = replay(name)
    assert d.result("ready").fields["control_response"]["request_id"] == READY_REQUEST_ID
    r = d.result("hello")
    [init], [result] = of_type(name, "system", "init"), of_type(name, "result")
    assert r.text == "ECHO: hello" and r.final
    f = r.fields
    assert f["session_id"] == init["session_id"] == result["session_id"]
    assert f["is_error"] is False and f["num_turns"] == 1
    assert f["cost_usd"] == result["total_cost_usd"] and f["usage"] == result["usage"]
    assert f["usage"]["output_tokens"] == words("ECHO: hello")
    expected = after_prompt(name, "hello")
    assert f["events"] == expected and d.events == expected  # every line of the turn, in order
    check_turn(f["events"], sent(name)[1]["uuid"])
    assert f["subtype"] == "success" and f["duration_ms"] == result["duration_ms"] and f["model"] == init["model"]
    assert f["interrupted"] is False
    assert r.raw.count(b"\n") == len(expected)
    assert not d.turns and not d.unsolicited and d.tool_turns == 0


@pytest.mark.parametrize("chunk", [0, 1, 7, 4096])
def test_two_turns_any_chunking(chunk):
    name = "claude_stream_input_sample.jsonl"
    d = replay(name, chunk)
    first, second = d.result("first prompt"), d.result("second prompt")
    assert first.text == "ECHO: first prompt" and second.text == "ECHO: second prompt"
    assert first.fields["session_id"] == second.fields["session_id"] == of_type(name, "result")[1]["session_id"]
    assert [r.fields["usage"]["output_tokens"] for r in (first, second)] == [3, 3]  # the fake counts words
    assert first.fields["events"] == after_prompt(name, "first prompt")
    assert second.fields["events"] == after_prompt(name, "second prompt")
    assert not d.turns and [n for n, _ in d.results] == ["ready", "first prompt", "second prompt"]


def test_partial_messages_stream_text_deltas():
    name = "claude_stream_partial_sample.jsonl"
    d = replay(name)
    assert d.result("hello").text == "ECHO: hello"
    assert "".join(filter(None, map(text_delta, d.events))) == "ECHO: hello"
    streamed = [e["event"]["type"] for e in d.events if e["type"] == "stream_event"]
    assert streamed == [o["event"]["type"] for o in of_type(name, "stream_event")]
    assert streamed[:2] == ["message_start", "content_block_start"] and "content_block_delta" in streamed
    assert text_delta({"type": "assistant"}) is None


def test_replayed_user_lines_are_not_interrupts():
    name = "claude_replay_sample.jsonl"
    d = replay(name)
    one, two = d.result("replay one"), d.result("replay two")
    assert one.text == "ECHO: replay one" and two.text == "ECHO: replay two"
    assert not one.fields["interrupted"] and not two.fields["interrupted"]
    # each answer is the turn whose echo carries the uuid its message was sent with
    for response, message in zip((one, two), sent(name)[1:], strict=True):
        check_turn(response.fields["events"], message["uuid"])


def test_oneshot_capture():
    name = "claude_oneshot_sample.jsonl"
    [prompt] = sent(name)  # then stdin was closed
    assert (prompt if isinstance(prompt, str) else prompt["message"]["content"]) == "hello" and exit_code(name) == 0
    d = replay(name, session=False)
    r = d.result("hello")
    [init] = of_type(name, "system", "init")
    assert r.text == "ECHO: hello" and r.fields["session_id"] == init["session_id"]
    assert r.fields["events"] == after_prompt(name, "hello")
    check_turn(r.fields["events"], None)  # no --replay-user-messages for a one-shot process
    assert r.fields["usage"]["output_tokens"] == words("ECHO: hello") and not d.turns


def interrupted_turn_result_line(name: str) -> tuple[int, int]:
    """(index of the interrupted turn's result line, index of the next prompt's >>> line) in the capture."""
    lines = capture(name)
    nxt = next(i for i, line in enumerate(lines) if line.startswith(">>> ") and "after interrupt" in line)
    result = next(i for i, line in enumerate(lines) if line.startswith('{"type":"result"') and
                  json.loads(line)["is_error"])
    return result, nxt


@pytest.mark.parametrize("chunk", [0, 1, 100])
def test_interrupt_with_prompt_result(chunk):
    name = "claude_interrupt_sample.jsonl"
    result_at, next_prompt_at = interrupted_turn_result_line(name)
    assert result_at < next_prompt_at  # the common case: the result before the next prompt
    d = replay(name, chunk)
    assert d.result("ready").fields["control_response"]["subtype"] == "success"
    slow = d.result("slow one")
    assert slow.fields["is_error"] is True and slow.fields["interrupted"] is True
    assert slow.fields["subtype"] == "error_during_execution"  # ended by its own result
    assert slow.text == ""  # the fake had not answered yet
    assert d.result("after interrupt").text == "ECHO: after interrupt"
    assert not d.turns


@pytest.mark.parametrize("chunk", [0, 1, 100])
def test_interrupt_with_late_result(chunk):
    """The interrupted turn's result arrives only after the next prompt: it must not end that turn."""
    name = "claude_interrupt_delayed_result_sample.jsonl"
    result_at, next_prompt_at = interrupted_turn_result_line(name)
    assert result_at > next_prompt_at  # the capture shows the race (recorded, or synthesised: see its comments)
    d = replay(name, chunk)
    slow = d.result("slow one")
    assert slow.fields["is_error"] is True and slow.fields["interrupted"] is True
    assert slow.fields["subtype"] == "interrupted" and slow.text == ""
    after = d.result("after interrupt")
    assert after.text == "ECHO: after interrupt" and after.fields["is_error"] is False
    late, *rest = after_prompt(name, "after interrupt", results=2)
    assert late["type"] == "result" and late["is_error"] is True  # the interrupted turn's, printed late
    assert after.fields["events"] == rest
    check_turn(after.fields["events"], sent(name)[3]["uuid"])
    # the late result reached no turn's callback
    assert sum(1 for e in d.events if e["type"] == "result") == 1
    assert not d.turns and not d.unsolicited


def _line(obj: dict) -> bytes:
    return (json.dumps(obj) + "\n").encode()


INIT = _line({"type": "system", "subtype": "init", "session_id": "s1", "model": "m"})
MARKER = _line({"type": "user", "message": {"role": "user", "content": [
    {"type": "text", "text": "[Request interrupted by user]"}]}})
ERR_RESULT = _line({"type": "result", "subtype": "error_during_execution", "is_error": True, "num_turns": 1,
                    "session_id": "s1"})


def ok_result(text: str) -> bytes:
    return _line({"type": "result", "subtype": "success", "is_error": False, "result": text, "session_id": "s1",
                  "total_cost_usd": 0.5, "usage": {"output_tokens": 1}, "num_turns": 1})


def assistant(text: str) -> bytes:
    return _line({"type": "assistant", "message": {"role": "assistant", "content": [{"type": "text", "text": text}]}})


def interrupted_driver() -> Driver:
    d = Driver(ClaudeFramer())
    d.begin("slow", "slow")
    d.feed(INIT + assistant("partial ans"))
    d.framer.interrupt_sent()
    d.feed(_line({"type": "control_response", "response": {"subtype": "success", "request_id": "x"}}) + MARKER)
    assert d.framer.has_candidate() and d.turns
    d.quiet()
    assert not d.turns
    return d


def test_late_result_between_turns_is_discarded():
    d = interrupted_driver()
    slow = d.result("slow")
    assert slow.text == "partial ans" and slow.fields["interrupted"] and slow.fields["session_id"] == "s1"
    assert [e["type"] for e in slow.fields["events"]] == ["system", "assistant", "control_response", "user"]
    assert d.events == slow.fields["events"]  # what streamed is what the Response holds
    d.feed(ERR_RESULT)  # late, with no turn pending
    d.begin("next", "next")
    d.feed(INIT + assistant("hi") + ok_result("hi"))
    assert d.result("next").text == "hi"


def test_result_that_never_comes_does_not_eat_the_next_one():
    d = interrupted_driver()
    d.begin("next", "next")
    d.feed(INIT + ok_result("mine"))  # no late result: system/init cleared the debt
    assert d.result("next").text == "mine"


def test_interrupt_is_only_sent_for_a_prompt_turn():
    f = ClaudeFramer()
    f.start_turn(None)
    assert f.interrupt_sent().send == b""
    f.start_turn("p")
    data = f.interrupt_sent().send + f.interrupt_sent().send
    requests = [json.loads(line) for line in data.splitlines()]
    assert [r["request"]["subtype"] for r in requests] == ["interrupt", "interrupt"]
    assert requests[0]["request_id"] != requests[1]["request_id"]


def test_interrupt_after_the_result_is_harmless():
    d = Driver(ClaudeFramer())
    d.begin("p", "p")
    d.feed(INIT + ok_result("done"))
    assert d.interrupt() == b""  # too late: nothing to cancel
    d.feed(_line({"type": "control_response", "response": {"subtype": "success", "request_id": "i"}}))
    assert d.result("p").fields["interrupted"] is False and not d.framer.has_candidate()


def test_non_json_line_fails_the_request_and_framing_goes_on():
    d = Driver(ClaudeFramer())
    d.begin("p", "p")
    d.feed(INIT + b"Warning: something odd\n" + assistant("x"))
    err = d.result("p")
    assert isinstance(err, ProtocolError) and "not a stream-json object" in str(err)
    assert "Warning: something odd" in str(err)
    assert d.turns == collections.deque(["p"])  # still busy until the result
    d.feed(ok_result("x"))
    assert not d.turns
    d.begin("q", "q")
    d.feed(INIT + ok_result("fine"))
    assert d.result("q").text == "fine"


@pytest.mark.parametrize("chunk", [0, 100])
def test_over_long_line(chunk):
    d = Driver(ClaudeFramer(max_line_bytes=1024))
    d.begin("p", "p")
    d.feed(INIT + b'{"type":"assistant","junk":"' + b"x" * 5000 + b'"}\n' + ok_result("after"), chunk)
    err = d.result("p")
    assert isinstance(err, ProtocolError) and "max_line_bytes=1024" in str(err)
    assert '{"type":"assistant","junk":"xxx' in str(err)
    assert not d.turns  # the result after the long line still ended the turn


def test_output_with_no_turn_is_ignored():
    d = Driver(ClaudeFramer())
    d.feed(b"garbage\n" + INIT + _line({"type": "control_response", "response": {"request_id": "zz"}}))
    assert d.results == [] and d.events == []


def test_readiness():
    d = Driver(ClaudeFramer())
    d.begin("ready", None)
    d.feed(_line({"type": "control_response", "response": {"subtype": "success", "request_id": "other"}}))
    assert d.turns
    d.feed(_line({"type": "control_response", "response": {"subtype": "success", "request_id": READY_REQUEST_ID}}))
    assert not d.turns and d.result("ready").error is None


def test_garbage_during_readiness_fails_the_start():
    d = Driver(ClaudeFramer())
    d.begin("ready", None)
    d.feed(b"Usage: something-else [options]\n")
    err = d.result("ready")
    assert isinstance(err, SpawnError) and "Usage: something-else" in str(err) and "Claude Code" in str(err)


def test_readiness_failures():
    d = Driver(ClaudeFramer())
    d.begin("ready", None)
    d.feed(_line({"type": "result", "subtype": "error_during_execution", "is_error": True,
                  "errors": ["No conversation found with session ID: abc"]}))
    err = d.result("ready")
    assert isinstance(err, SpawnError) and "No conversation found" in str(err) and not d.turns
    d.begin("ready2", None)
    d.feed(_line({"type": "control_response", "response": {"subtype": "error", "request_id": READY_REQUEST_ID,
                                                           "error": "nope"}}))
    assert isinstance(d.result("ready2"), SpawnError)


def test_response_too_large():
    d = Driver(ClaudeFramer(max_bytes=2048))
    d.begin("p", "p")
    d.feed(INIT + b"".join(assistant("y" * 500) for _ in range(6)))
    assert isinstance(d.result("p"), ResponseTooLarge) and d.turns
    d.feed(ok_result("end"))
    assert not d.turns


def test_exit_flushes_a_last_line_without_newline():
    d = Driver(ClaudeFramer(session=False))
    d.begin("p", "p")
    d.feed(INIT + ok_result("last").rstrip(b"\n"))
    assert d.turns
    d.exit()
    assert d.result("p").text == "last"


def test_oneshot_exit():
    d = Driver(ClaudeFramer(session=False))
    d.begin("p", "p")
    d.feed(INIT)
    d.exit()
    assert d.turns  # no result and no interrupt: the instance reports InstanceCrashed
    assert d.interrupt() == b""  # oneshot interrupts by SIGINT
    d.exit()
    r = d.result("p")
    assert r.fields["interrupted"] is True and r.fields["is_error"] is True


# -- adapter ---------------------------------------------------------------------------------


def test_encode_session_line_is_one_json_line():
    a = ClaudeAdapter(cli_path="/bin/true")
    data = a.encode("two\nlines \u2028 ünï")
    assert data.endswith(b"\n") and data.count(b"\n") == 1
    line = json.loads(data)
    assert line["message"] == {"role": "user", "content": "two\nlines \u2028 ünï"} and line["type"] == "user"
    assert len(line["uuid"]) == 36 and json.loads(a.encode("x"))["uuid"] != line["uuid"]  # one per message
    with pytest.raises(TypeError):
        a.encode(b"bytes")  # type: ignore[arg-type]


def test_encode_oneshot():
    a = ClaudeAdapter(cli_path="/bin/true", mode="oneshot")
    assert a.oneshot and a.ready_on_spawn and a.handshake() is None
    # a stream-json line (no uuid): a pre-spawned one-shot claude waits for it indefinitely
    assert json.loads(a.encode("hi\nthere")) == {"type": "user", "message": {"role": "user", "content": "hi\nthere"}}
    with pytest.raises(ValueError, match="empty"):
        a.encode("  \n")


def test_command_lines():
    a = ClaudeAdapter(cli_path="/bin/true", model="m", permission_mode="plan", allowed_tools=["Read", "Bash(git *)"],
                      system_prompt="be brief", resume="abc", include_partial_messages=True,
                      no_session_persistence=True, extra_args=["--effort", "low"])
    assert a.command(0) == ["/bin/true", "-p", "--input-format", "stream-json", "--replay-user-messages",
                            "--output-format", "stream-json",
                            "--verbose", "--model", "m", "--permission-mode", "plan", "--allowedTools",
                            "Read,Bash(git *)", "--system-prompt-file", a.slot_config_dir(0) + "/system-prompt.txt",
                            "--include-partial-messages", "--resume", "abc", "--no-session-persistence",
                            "--effort", "low"]
    with open(a.slot_config_dir(0) + "/system-prompt.txt", encoding="utf-8") as f:
        assert f.read() == "be brief"  # through a file: no argv item can reach Linux's 128 KiB limit
    assert json.loads(a.handshake())["request"]["subtype"] == "initialize"
    one = ClaudeAdapter(cli_path="/bin/true", mode="oneshot")
    assert one.command(3) == ["/bin/true", "-p", "--input-format", "stream-json", "--output-format", "stream-json",
                              "--verbose"]
    with pytest.raises(ValueError, match="mode"):
        ClaudeAdapter(mode="chat")


def test_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("CLAUDECODE", "1")
    monkeypatch.setenv("CLAUDE_CODE_ENTRYPOINT", "cli")
    a = ClaudeAdapter(cli_path="/bin/true", env={"ANTHROPIC_API_KEY": "sk-secret-123", "DISABLE_TELEMETRY": "0"},
                      max_retries=0)
    try:
        e0, e1 = a.environment(0), a.environment(1)
        assert "CLAUDECODE" not in e0 and "CLAUDE_CODE_ENTRYPOINT" not in e0
        assert e0["DISABLE_TELEMETRY"] == "0"  # the caller's env wins
        assert all(e0[k] == v for k, v in QUIET_ENV.items() if k != "DISABLE_TELEMETRY")
        assert e0["CLAUDE_CODE_MAX_RETRIES"] == "0" and e0["ANTHROPIC_API_KEY"] == "sk-secret-123"
        assert e0["CLAUDE_CONFIG_DIR"] != e1["CLAUDE_CONFIG_DIR"]
        assert os.path.isdir(e0["CLAUDE_CONFIG_DIR"]) and a.environment(0) == e0  # stable across restarts
        assert "sk-secret" not in json.dumps(a.describe())
    finally:
        a.close()
    assert not os.path.exists(e0["CLAUDE_CONFIG_DIR"])

    b = ClaudeAdapter(cli_path="/bin/true", config_dir=str(tmp_path))
    assert b.environment(2)["CLAUDE_CONFIG_DIR"] == str(tmp_path / "slot-2")
    b.close()
    assert (tmp_path / "slot-2").is_dir()  # the caller's directory is kept
    with pytest.raises(ValueError, match="config_dir"):
        ClaudeAdapter(env={"CLAUDE_CONFIG_DIR": "/tmp/x"})


def test_missing_executable_hint(tmp_path, monkeypatch):
    monkeypatch.setenv("TOOLPOOL_CLAUDE", str(tmp_path / "no-claude"))  # the lookup looks only there
    with pytest.raises(ToolNotFoundError, match="TOOLPOOL_CLAUDE.*cli_path=.*npm install @anthropic-ai/claude-code"):
        ClaudeAdapter(env={"PATH": str(tmp_path)}).command(0)
    with pytest.raises(ToolNotFoundError, match="npm install @anthropic-ai/claude-code"):
        ClaudeAdapter(cli_path=str(tmp_path / "nope")).command(0)
    assert ClaudeAdapter(env={"PATH": str(tmp_path)}).describe()["command"][0] == "claude"


def test_probe_observe_diagnose():
    a = ClaudeAdapter(cli_path="/bin/true", resume_on_restart=True)
    assert json.loads(a.liveness_probe())["request"]["subtype"] == "initialize"
    assert "--resume" not in a.command(0)

    class R:
        session_id = "sess-1"

    a.observe(0, R())
    assert a.command(0)[-2:] == ["--resume", "sess-1"] and "--resume" not in a.command(1)
    assert "initialize" in a.diagnose("", "")
    assert ClaudeAdapter(cli_path="/bin/true", mode="oneshot").liveness_probe() is None
    with pytest.raises(ValueError, match="resume_on_restart"):
        ClaudeAdapter(cli_path="/bin/true", mode="oneshot", resume_on_restart=True)


def test_pool_reports_a_missing_claude(tmp_path, monkeypatch):
    from toolpool import ToolProcessPool

    monkeypatch.setenv("TOOLPOOL_CLAUDE", str(tmp_path / "no-claude"))

    with pytest.raises(ToolNotFoundError, match="npm install @anthropic-ai/claude-code"):
        ToolProcessPool(ClaudeAdapter(env={"PATH": str(tmp_path)}), 1)


def test_an_interrupt_marker_quoted_by_a_tool_does_not_end_the_turn():
    driver = Driver(ClaudeFramer(session=True))
    driver.begin("t1", "run the tool")
    quoted = {"type": "user", "message": {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "x", "content": "[Request interrupted by user]"}]}}
    lines = [{"type": "system", "subtype": "init", "session_id": "s"}, quoted,
             {"type": "result", "subtype": "success", "is_error": False, "result": "done", "session_id": "s"}]
    driver.feed(b"".join(json.dumps(line).encode() + b"\n" for line in lines))
    driver.quiet()
    frame = driver.result("t1")
    assert frame.text == "done" and not frame.fields.get("meta", {}).get("interrupted") \
        and frame.fields.get("is_error") is False


# -- turns attributed by the uuid claude echoes (--replay-user-messages) -------------------------
def _message(a: ClaudeAdapter, text: str) -> tuple[bytes, str]:
    data = a.encode(text)
    return data, json.loads(data)["uuid"]


def replay_line(text: str, uuid: str) -> bytes:
    return _line({"type": "user", "message": {"role": "user", "content": text}, "uuid": uuid, "isReplay": True})


def test_a_turn_claude_starts_by_itself_while_idle_is_unsolicited():
    a = ClaudeAdapter(cli_path="/bin/true")
    d = Driver(a.new_framer())  # type: ignore[arg-type]
    notice = _line({"type": "system", "subtype": "task_notification", "task_id": "b1"})
    d.feed(notice + INIT)
    assert d.tool_turns == 1  # the instance holds prompts back from here
    d.feed(assistant("the job finished") + ok_result("the job finished"))
    assert [f.text for f in d.unsolicited] == ["the job finished"] and d.results == []
    data, uuid = _message(a, "mine")
    d.begin("mine", "mine", data)
    d.feed(INIT + replay_line("mine", uuid) + assistant("ECHO: mine") + ok_result("ECHO: mine"))
    assert d.result("mine").text == "ECHO: mine"


def test_a_tool_turn_that_began_just_before_our_message_does_not_shift_answers():
    a = ClaudeAdapter(cli_path="/bin/true")
    d = Driver(a.new_framer())  # type: ignore[arg-type]
    answers = []
    for n in range(3):
        data, uuid = _message(a, f"q{n}")
        d.begin(f"q{n}", f"q{n}", data)
        # claude started a turn of its own a moment before reading our message ...
        d.feed(INIT + assistant(f"background {n}") + ok_result(f"background {n}"))
        assert d.turns, "our request must not take the tool's answer"
        # ... then answers ours.
        d.feed(INIT + replay_line(f"q{n}", uuid) + assistant(f"ECHO: q{n}") + ok_result(f"ECHO: q{n}"))
        answers.append(d.result(f"q{n}").text)
    assert answers == ["ECHO: q0", "ECHO: q1", "ECHO: q2"]
    assert [f.text for f in d.unsolicited] == ["background 0", "background 1", "background 2"]


def test_late_result_of_an_interrupted_turn_is_dropped_by_uuid():
    a = ClaudeAdapter(cli_path="/bin/true", interrupt_settle=0.01)
    d = Driver(a.new_framer())  # type: ignore[arg-type]
    data, uuid = _message(a, "slow")
    d.begin("slow", "slow", data)
    d.feed(INIT + replay_line("slow", uuid))
    assert b'"interrupt"' in d.interrupt()
    d.feed(_line({"type": "user", "message": {"role": "user", "content": [
        {"type": "text", "text": "[Request interrupted by user]"}]}}))
    d.quiet()
    assert d.result("slow").fields["interrupted"] is True
    data2, uuid2 = _message(a, "next")
    d.begin("next", "next", data2)
    d.feed(_line({"type": "result", "subtype": "error_during_execution", "is_error": True, "result": "late"}))
    assert d.turns == collections.deque(["next"])  # the late result is not the next answer
    d.feed(INIT + replay_line("next", uuid2) + ok_result("ECHO: next"))
    assert d.result("next").text == "ECHO: next" and d.unsolicited == []


@pytest.mark.parametrize("chunk", [0, 333])
def test_over_long_result_line_ends_the_request_and_the_next_one_is_framed(chunk):
    a = ClaudeAdapter(cli_path="/bin/true", max_line_bytes=1024)
    d = Driver(a.new_framer())  # type: ignore[arg-type]
    data, uuid = _message(a, "big")
    d.begin("big", "big", data)
    big = "y" * 3000
    d.feed(INIT + replay_line("big", uuid) + assistant(big) + ok_result(big), chunk)
    err = d.result("big")
    assert isinstance(err, ProtocolError) and "max_line_bytes=1024" in str(err) and not d.turns
    data2, uuid2 = _message(a, "small")
    d.begin("small", "small", data2)
    d.feed(INIT + replay_line("small", uuid2) + ok_result("ECHO: small"), chunk)
    assert d.result("small").text == "ECHO: small"


def test_control_requests_from_claude_are_refused_at_once():
    d = Driver(ClaudeFramer())
    d.begin("p", "p")
    d.feed(INIT + _line({"type": "control_request", "request_id": "r9",
                         "request": {"subtype": "can_use_tool", "tool_name": "Bash"}}))
    answer = json.loads(d.sent)
    assert answer["response"]["request_id"] == "r9" and answer["response"]["subtype"] == "error"
