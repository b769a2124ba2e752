"""claude's control protocol both ways, with the real claude against the offline FakeAnthropicServer.

The fake scripts the model's tool calls (``ToolUse``); claude asks toolpool
whether it may run them (``--permission-prompt-tool stdio``), fires our hooks
and calls our in-process tools, and the fake checks what came back.
"""

from __future__ import annotations

import threading
import time

import pytest

from toolpool.adapters.claude_control import (
    Allow,
    Deny,
    Hook,
    ToolServer,
    deny_tool_hook,
    send_control,
    set_model_request,
    set_permission_mode_request,
    tool,
)
from toolpool.testing import ToolUse

pytestmark = [pytest.mark.realtools, pytest.mark.timeout(120)]


# the same real-claude fixtures as test_claude.py: the fake API, the proxy trap, cwd=tmp_path
from . import test_claude as _shared  # noqa: E402

server = _shared.server
claude = _shared.claude


def test_permission_callback_allows_one_tool_and_denies_another(make_pool, claude, server, tmp_path):
    asked = []

    def can_use_tool(name, tool_input, context):
        asked.append((name, context.instance, threading.current_thread().name))
        if name == "Write":
            return Allow()
        return Deny("no shell for you")

    target = tmp_path / "note.txt"
    server.on_prompt("write it", ToolUse("Write", {"file_path": str(target), "content": "written by claude\n"}),
                     ToolUse("Bash", {"command": "echo pwned > pwned.txt"},
                             expect=lambda r: r.is_error and "no shell for you" in r.text),
                     "done")
    pool = make_pool(claude(can_use_tool=can_use_tool), 1)
    r = pool.ask(0, "write it", timeout=60)
    server.verify()
    assert r.text == "done" and r.is_error is False
    assert target.read_text() == "written by claude\n"  # really written in the instance's cwd
    assert not (tmp_path / "pwned.txt").exists()
    assert [(n, i) for n, i, _ in asked] == [("Write", 0), ("Bash", 0)]
    assert all(not t.startswith("toolpool-0.") for _, _, t in asked)  # never on the reader thread
    decisions = r.meta["permission_decisions"]
    assert [(d["tool_name"], d["decision"]) for d in decisions] == [("Write", "allow"), ("Bash", "deny")]
    assert decisions[1]["message"] == "no shell for you"
    assert [d["tool_name"] for d in r.permission_denials] == ["Bash"]
    assert [(c["name"], c["is_error"]) for c in r.tool_calls] == [("Write", False), ("Bash", True)]
    assert "no shell for you" in r.tool_calls[1]["result"]


def test_a_callback_that_raises_or_hangs_denies_and_the_turn_goes_on(make_pool, claude, server, tmp_path):
    release = threading.Event()

    def can_use_tool(name, tool_input, context):
        if tool_input.get("command") == "touch raised.txt":
            raise RuntimeError("callback bug")
        release.wait(30)  # never answers in time
        return Allow()

    # (commands claude would not run unasked: it auto-approves read-only ones such as echo)
    server.on_prompt("go", ToolUse("Bash", {"command": "touch raised.txt"}, expect=lambda r: r.is_error),
                     ToolUse("Bash", {"command": "touch hung.txt"}, expect=lambda r: r.is_error), "survived")
    pool = make_pool(claude(can_use_tool=can_use_tool, callback_timeout=1.0), 1)
    t0 = time.monotonic()
    r = pool.ask(0, "go", timeout=60)
    release.set()
    server.verify()
    assert r.text == "survived" and time.monotonic() - t0 < 20
    errors = [d["callback_error"] for d in r.meta["permission_decisions"]]
    assert "RuntimeError: callback bug" in errors[0] and "did not answer within 1s" in errors[1]
    assert all(d["decision"] == "deny" for d in r.meta["permission_decisions"])
    assert not (tmp_path / "raised.txt").exists() and not (tmp_path / "hung.txt").exists()


def test_a_hook_blocks_a_tool(make_pool, claude, server, tmp_path):
    fired = []

    def guard(hook_input, tool_use_id, context):
        fired.append((context.event, hook_input.get("tool_name"), hook_input.get("tool_input", {}).get("command")))
        return deny_tool_hook("rm is not allowed here")

    (tmp_path / "precious").write_text("keep me")
    server.on_prompt("clean up", ToolUse("Bash", {"command": "rm precious"},
                                         expect=lambda r: r.is_error and "rm is not allowed" in r.text), "ok")
    pool = make_pool(claude(hooks=[Hook("PreToolUse", guard, matcher="Bash")], allowed_tools=["Bash"]), 1)
    r = pool.ask(0, "clean up", timeout=60)
    server.verify()
    assert (tmp_path / "precious").read_text() == "keep me"
    assert fired == [("PreToolUse", "Bash", "rm precious")]
    assert [c["event"] for c in r.meta["control_calls"] if c["kind"] == "hook_callback"] == ["PreToolUse"]
    assert r.text == "ok"


def test_an_in_process_tool_is_called_and_its_result_reaches_the_model(make_pool, claude, server):
    calls = []

    @tool("add", "Add two integers", {"type": "object", "properties": {"a": {"type": "integer"},
                                                                      "b": {"type": "integer"}},
                                      "required": ["a", "b"]})
    def add(args):
        calls.append(args)
        return str(args["a"] + args["b"])

    server.on_prompt("sum", ToolUse("mcp__calc__add", {"a": 20, "b": 22}, expect="42"), "the sum is 42")
    servers = [ToolServer("calc", [add])]
    pool = make_pool(claude(tool_servers=servers, allowed_tools=servers[0].tool_names()), 1)
    r = pool.ask(0, "sum", timeout=60)
    server.verify()
    assert calls == [{"a": 20, "b": 22}]
    assert r.text == "the sum is 42"
    assert [(c["name"], c["result"]) for c in r.tool_calls] == [("mcp__calc__add", "42")]
    # claude declared the tool to the API with our schema
    (first,) = [q for q in server.requests if q.path == "/v1/messages" and q.user_text == "sum"][:1]
    declared = {t["name"]: t for t in first.body.get("tools", [])}
    assert declared["mcp__calc__add"]["input_schema"]["required"] == ["a", "b"]


def test_control_requests_of_ours_change_the_model_and_mode(make_pool, claude, server):
    pool = make_pool(claude(), 1)
    inst = pool.instances()[0]
    assert send_control(inst, set_model_request("claude-other-model"), timeout=10) is not None
    assert send_control(inst, set_permission_mode_request("acceptEdits"), timeout=10) is not None
    pool.ask(0, "which model", timeout=60)
    (req,) = [q for q in server.requests if q.path == "/v1/messages" and q.user_text == "which model"]
    assert req.model == "claude-other-model"
    from toolpool.adapters.claude_control import ControlError
    with pytest.raises(ControlError):
        send_control(inst, {"subtype": "no_such_request"}, timeout=10)
