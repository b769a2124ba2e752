"""Round trips, transports, thread safety and status on real processes."""

import concurrent.futures as cf
import json
import os
import threading

import jsonschema
import pytest

import toolpool
from toolkit import fake_adapter, fake_cmd
from toolpool import InstanceBusy, ReplAdapter, Response, ResponseTimeout, ToolPoolError, ToolProcessPool

SCHEMA_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "schema")
pytestmark = pytest.mark.timeout(60)


def load_schema(name):
    with open(os.path.join(SCHEMA_DIR, name)) as f:
        return json.load(f)


def status_validator():
    status = load_schema("pool_status.schema.json")
    instance = load_schema("pool_instance.schema.json")
    registry = __import__("referencing").Registry().with_resources([
        (status["$id"], __import__("referencing").Resource.from_contents(status)),
        (instance["$id"], __import__("referencing").Resource.from_contents(instance)),
    ])
    return jsonschema.Draft202012Validator(status, registry=registry)


@pytest.mark.parametrize("transport", ["pipe", "pty"])
def test_ask_frames_exact_text(make_pool, transport):
    pool = make_pool(fake_adapter(transport=transport), 2)
    r = pool.ask(1, "hello world", timeout=10)
    assert isinstance(r, Response)
    assert r.text == "you said: hello world"
    assert r.index == 1 and r.prompt == "hello world"
    assert r.elapsed > 0 and r.timings.first_byte is not None
    if transport == "pipe":
        assert r.raw == b"you said: hello world\n"
    else:  # terminal line endings, and no echo of the prompt
        assert r.raw == b"you said: hello world\r\n"
    assert pool.ask(0, "unicode", timeout=10).text == "héllo wörld ✓"
    assert pool.ask(0, "nonl", timeout=10).text == "no newline here"


def test_send_then_read_and_future(make_pool):
    pool = make_pool(fake_adapter(), 1)
    fut = pool.send_prompt(0, "abc")
    r = pool.read_response(0, timeout=10)
    assert r.text == "you said: abc"
    assert fut.result(0) is r


def test_instance_busy_until_answered(make_pool):
    pool = make_pool(fake_adapter(), 1)
    pool.send_prompt(0, "sleep 0.3")
    with pytest.raises(InstanceBusy, match="has not answered"):
        pool.send_prompt(0, "again")
    assert pool.read_response(0, timeout=10).text == "slept"
    assert pool.ask(0, "again", timeout=10).text == "you said: again"


def test_timeout_partial_and_later_read(make_pool):
    pool = make_pool(fake_adapter(), 1)
    pool.send_prompt(0, "sleep 0.5")
    with pytest.raises(ResponseTimeout) as info:
        pool.read_response(0, timeout=0.1)
    assert info.value.partial == b""
    assert "still pending" in str(info.value)
    assert pool.read_response(0, timeout=10).text == "slept"  # the same response


def test_partial_output_is_reported_on_timeout(make_pool):
    pool = make_pool(fake_adapter(), 1)
    pool.send_prompt(0, "partial")
    with pytest.raises(ResponseTimeout) as info:
        pool.read_response(0, timeout=0.3)
    assert info.value.partial == b"half a line"


def test_read_without_send_is_a_clear_error(make_pool):
    pool = make_pool(fake_adapter(), 1)
    with pytest.raises(ToolPoolError, match="call send_prompt first"):
        pool.read_response(0, timeout=1)


def test_settle_waits_out_prompt_lookalikes(make_pool):
    pool = make_pool(fake_adapter(settle=0.3), 1)
    r = pool.ask(0, "fakeprompt 0.05", timeout=10)
    assert r.text == "first part tp> second part"


def test_demo_tool_by_name(make_pool):
    pool = make_pool("demo", 2, adapter_options={"think": 0.01})
    a = pool.ask(0, "write a test", timeout=10)
    b = pool.ask(1, "write a test", timeout=10)
    assert a.text.startswith("[turn 1] You asked: write a test")
    assert a.text == b.text  # deterministic
    assert "Suggestion: test a write" in a.text


def test_repl_adapter_signature_matches_the_contract(make_pool, tmp_path):
    # ReplAdapter(command, prompt, transport="pipe", env=None, cwd=None, start_timeout=30.0, ...)
    adapter = ReplAdapter(fake_cmd(), r"tp> $", "pipe", {"X_FLAG": "1"}, str(tmp_path), 15.0)
    assert (adapter.transport, adapter.env, adapter.cwd, adapter.start_timeout) == \
        ("pipe", {"X_FLAG": "1"}, str(tmp_path), 15.0)
    assert make_pool(adapter, 1).ask(0, "positional", timeout=10).text == "you said: positional"


def test_bad_arguments_are_clear():
    with pytest.raises(ValueError, match="unknown adapter 'nope'"):
        ToolProcessPool("nope")
    with pytest.raises(ValueError, match="count must be a positive integer"):
        ToolProcessPool("demo", count=0)
    with pytest.raises(ValueError, match="command must be a non-empty list"):
        ReplAdapter("python3 tool.py", prompt="> $")
    with pytest.raises(ValueError, match="not a valid regular expression"):
        ReplAdapter(["x"], prompt="(")
    with pytest.raises(ValueError, match="transport must be"):
        ReplAdapter(["x"], prompt="> $", transport="tcp")


def test_bad_index_and_prompt(make_pool):
    pool = make_pool(fake_adapter(), 1)
    with pytest.raises(IndexError, match="out of range"):
        pool.ask(3, "x")
    with pytest.raises(TypeError):
        pool.ask(0, b"bytes")
    with pytest.raises(ValueError, match="newline"):
        pool.send_prompt(0, "two\nlines")
    assert pool.ask(0, "still fine", timeout=10).text == "you said: still fine"


@pytest.mark.parametrize("char", ["\x03", "\x04", "\x1a", "\x15", "\x1c", "\x7f"])
def test_pty_rejects_terminal_control_characters(make_pool, char):
    pool = make_pool(fake_adapter(transport="pty"), 1)
    with pytest.raises(ValueError, match="control character"):
        pool.send_prompt(0, f"before{char}after")
    # nothing was sent: the instance is idle and answers the next prompt
    assert pool.check_health()["idle"] == 1
    assert pool.ask(0, "ok", timeout=10).text == "you said: ok"


def test_pty_rejects_lines_the_terminal_would_truncate(make_pool):
    pool = make_pool(fake_adapter(transport="pty"), 1)
    with pytest.raises(ValueError, match="use transport='pipe'"):
        pool.send_prompt(0, "a" * 5000)


def test_many_threads_share_a_pool(make_pool):
    pool = make_pool(fake_adapter(), 4)

    def worker(index):
        return [pool.ask(index, f"w{index} n{n}", timeout=20).text for n in range(25)]

    with cf.ThreadPoolExecutor(4) as ex:
        results = list(ex.map(worker, range(4)))
    for index, texts in enumerate(results):
        assert texts == [f"you said: w{index} n{n}" for n in range(25)]


def test_racing_senders_one_wins_the_rest_get_busy(make_pool):
    pool = make_pool(fake_adapter(), 1)
    barrier = threading.Barrier(8)
    outcomes = []

    def racer(n):
        barrier.wait()
        try:
            pool.send_prompt(0, "sleep 0.2")
            outcomes.append("sent")
        except InstanceBusy:
            outcomes.append("busy")

    threads = [threading.Thread(target=racer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["busy"] * 7 + ["sent"]
    assert pool.read_response(0, timeout=10).text == "slept"


def test_health_status_and_schema(make_pool):
    pool = make_pool(fake_adapter(env={"MY_API_KEY": "sk-secret-value"}), 3)
    pool.ask(2, "hi", timeout=10)
    health = pool.check_health()
    assert {k: health[k] for k in ("total", "alive", "dead", "busy", "idle")} == \
        {"total": 3, "alive": 3, "dead": 0, "busy": 0, "idle": 3}
    status = pool.get_status()
    status_validator().validate(status)
    inst = status["instances"][2]
    assert inst["index"] == 2 and inst["state"] == "IDLE" and inst["alive"] is True
    assert inst["requests"] == 1 and inst["pid"] > 0 and inst["restarts"] == 0
    assert "sk-secret-value" not in json.dumps(status)
    assert status["adapter"]["env_keys"] == ["MY_API_KEY"]


def test_schema_rejects_broken_status(make_pool):
    pool = make_pool(fake_adapter(), 1)
    status = pool.get_status()
    validator = status_validator()
    broken = json.loads(json.dumps(status))
    broken["instances"][0]["state"] = "SLEEPY"
    assert not validator.is_valid(broken)
    del broken["instances"][0]["pid"]
    assert not validator.is_valid(broken)
    missing = dict(status)
    del missing["health"]
    assert not validator.is_valid(missing)


def test_restart_instance_gives_new_pid(make_pool):
    pool = make_pool(fake_adapter(), 2)
    old = pool.get_status()["instances"][1]["pid"]
    pool.restart_instance(1)
    inst = pool.get_status()["instances"][1]
    assert inst["pid"] != old and inst["restarts"] == 1 and inst["state"] == "IDLE"
    assert pool.ask(1, "after", timeout=10).text == "you said: after"


def test_public_names_are_exported():
    for name in ["ToolProcessPool", "ReplAdapter", "Response", "ToolPoolError", "ToolNotFoundError", "SpawnError",
                 "ResponseTimeout", "InstanceCrashed", "InstanceBusy", "PoolClosed"]:
        assert hasattr(toolpool, name), name
    for name in ["ToolNotFoundError", "SpawnError", "ResponseTimeout", "InstanceCrashed", "InstanceBusy",
                 "PoolClosed"]:
        assert issubclass(getattr(toolpool, name), ToolPoolError)
