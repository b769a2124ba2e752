"""Secrets never leave the library: status, dumps, errors, events and log records.

A real tool (a small Python REPL) prints the API keys it was given on stdout
and stderr, then crashes or fails to start.  Every string toolpool hands back
through its public API is searched for the key values.

Two kinds of secret are used: keys with a recognisable shape (``sk-ant-...``),
which shape redaction catches wherever they appear, and keys without one,
which only the value registry catches (the pool registers its adapter's
secrets at creation).
"""

from __future__ import annotations

import json
import logging
import os
import secrets as _random
import stat
import sys
import time
from typing import Any

import pytest

from toolpool import InstanceCrashed, RestartPolicy, SpawnError, ToolProcessPool
from toolpool.adapters import AiderAdapter, ReplAdapter
from toolpool.redact import (
    RedactingFilter,
    adapter_secrets,
    redact,
    redact_text,
    redact_url,
    register_secrets,
    registered_secrets,
    secret_values,
    unregister_secrets,
)

pytestmark = pytest.mark.timeout(120)

# Shaped: caught by shape anywhere.  Unshaped: only by value.
SHAPED = {"ANTHROPIC_API_KEY": "sk-ant-api03-" + _random.token_hex(16),
          "OPENAI_API_KEY": "sk-proj-" + _random.token_hex(16)}
UNSHAPED = {"ANTHROPIC_API_KEY": "plainA" + _random.token_hex(10),
            "OPENAI_API_KEY": "plainO" + _random.token_hex(10)}

# Prints every secret-looking variable it was given, bare and as NAME=value,
# plus its argv (an api_key= and a URL password), on stdout and on stderr.
LEAKY_TOOL = r'''
import os, sys
secrets = [(k, v) for k, v in sorted(os.environ.items()) if k.endswith("_KEY")]
def leak(stream):
    for k, v in secrets:
        stream.write(f"{k}={v}\nraw value: {v}\n")
    stream.write("argv: " + " ".join(sys.argv[1:]) + "\n")
    stream.flush()
leak(sys.stderr)
if "--fail-start" in sys.argv:
    sys.exit(7)
leak(sys.stdout)
sys.stdout.write("leak> "); sys.stdout.flush()
for line in sys.stdin:
    if line.strip() == "crash":
        leak(sys.stdout); leak(sys.stderr)
        os._exit(3)
    sys.stdout.write("ok\nleak> "); sys.stdout.flush()
'''


def leaky_adapter(keys: dict[str, str], *flags: str) -> tuple[ReplAdapter, list[str]]:
    api_key = "argkey" + _random.token_hex(10)
    password = "p/w" + _random.token_hex(8)  # a password with a slash in it
    argv = [sys.executable, "-u", "-c", LEAKY_TOOL, f"api_key={api_key}",
            "--api-base", f"https://user:{password}@127.0.0.1:9/v1", *flags]
    adapter = ReplAdapter(argv, prompt=r"leak> $", env=keys, start_timeout=20.0)
    return adapter, [*keys.values(), api_key, password]


def assert_clean(what: str, text: str, values: list[str]) -> None:
    for value in values:
        assert value not in text, f"a secret leaked into {what}: ...{text[max(0, text.find(value) - 60):][:160]!r}"


def log_text(records: list[logging.LogRecord]) -> str:
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    parts = []
    for r in records:
        parts.append(formatter.format(r))
        parts.append(json.dumps({k: v for k, v in vars(r).items() if k not in ("args", "exc_info", "msg")},
                                default=str))
    return "\n".join(parts)


def crash_run(keys: dict[str, str], tmp_path: Any, caplog: Any) -> dict[str, Any]:
    """Ask the leaky tool to crash mid-request; collect everything the public API hands back."""
    caplog.set_level(logging.DEBUG, logger="toolpool")
    events: list[tuple[str, dict[str, Any]]] = []
    adapter, values = leaky_adapter(keys)
    pool = ToolProcessPool(adapter, 1, restart=False, on_event=lambda name, info: events.append((name, info)))
    try:
        with pytest.raises(InstanceCrashed) as crashed:
            pool.ask(0, "crash", timeout=30)
        status = pool.get_status()
        dump = tmp_path / "status.json"
        pool.dump_status(str(dump))
        dumped = dump.read_text()
    finally:
        pool.shutdown(timeout=5)
    exc = crashed.value
    return {"values": values, "error": f"{exc}\n{exc.stderr_tail}", "status": json.dumps(status),
            "last_error": str(status["instances"][0]["last_error"]), "dump": dumped,
            "events": json.dumps(events, default=str), "logs": log_text(caplog.records)}


# -- shaped keys: caught by shape wherever they appear --------------------------------------
@pytest.mark.parametrize("where", ["error", "last_error", "dump", "logs"])
def test_shaped_keys_redacted_after_a_crash(where, tmp_path, caplog):
    run = crash_run(SHAPED, tmp_path, caplog)
    assert "raw value: ***" in run["error"], "the tool's stderr should be in the error, redacted"
    assert_clean(where, run[where], run["values"])


@pytest.mark.parametrize("where", ["status", "events"])
def test_shaped_keys_redacted_in_status_and_events(where, tmp_path, caplog):
    run = crash_run(SHAPED, tmp_path, caplog)
    assert_clean(where, run[where], run["values"])


# -- unshaped keys: only the value registry knows them -----------------------------------------
@pytest.mark.parametrize("where", ["dump", "logs"])
def test_unshaped_keys_redacted_in_dumps_and_logs(where, tmp_path, caplog):
    run = crash_run(UNSHAPED, tmp_path, caplog)
    assert_clean(where, run[where], run["values"])


@pytest.mark.parametrize("where", ["error", "last_error", "status", "events"])
def test_unshaped_keys_redacted_everywhere(where, tmp_path, caplog):
    run = crash_run(UNSHAPED, tmp_path, caplog)
    assert_clean(where, run[where], run["values"])


def failed_start_run(caplog: Any) -> dict[str, Any]:
    """The leaky tool prints its keys and dies at start; the first failure is fatal."""
    caplog.set_level(logging.DEBUG, logger="toolpool")
    events: list[tuple[str, dict[str, Any]]] = []
    adapter, values = leaky_adapter(SHAPED, "--fail-start")
    errors: list[str] = []
    try:
        pool = ToolProcessPool(adapter, 1, restart=RestartPolicy(limit=0),
                               on_event=lambda n, i: events.append((n, i)))
    except SpawnError as exc:
        errors.append(f"{exc}\n{exc.stderr_tail}")
    else:
        try:
            deadline = time.monotonic() + 30
            while not any(name == "fatal" for name, _ in events) and time.monotonic() < deadline:
                time.sleep(0.05)
            errors.append(str(pool.get_status()["instances"][0]["last_error"]))
        finally:
            pool.shutdown(timeout=5)
    return {"values": values, "error": "\n".join(errors), "logs": log_text(caplog.records),
            "names": [name for name, _ in events],
            "events": json.dumps([(n, i) for n, i in events if n in ("start_failed", "fatal")], default=str)}


def test_spawn_error_and_its_logs_redacted(caplog):
    run = failed_start_run(caplog)
    assert "exit code 7" in run["error"] and "raw value: ***" in run["error"], run["error"]  # shown, redacted
    assert_clean("SpawnError / last_error", run["error"], run["values"])
    assert_clean("log records", run["logs"], run["values"])
    assert "start_failed" in run["names"] and "fatal" in run["names"], run["names"]


def test_start_failed_and_fatal_events_redacted(caplog):
    run = failed_start_run(caplog)
    assert "fatal" in run["names"], run["names"]
    assert_clean("start_failed / fatal events", run["events"], run["values"])


# -- adapters' describe(): no password from api_base, no api_key --------------------------------
def test_aider_describe_hides_api_base_password_and_key():
    adapter = AiderAdapter(cli_path="/bin/true", model="openai/x", api_key="hunter2-" + _random.token_hex(6),
                           api_base="https://me:pa/ss" + _random.token_hex(4) + "@127.0.0.1:9/v1")
    try:
        shown = json.dumps(adapter.describe())
        assert adapter.api_key not in shown and adapter.api_base not in shown
        assert "https://***@127.0.0.1:9/v1" in shown
        assert sorted(adapter_secrets(adapter)) == sorted([adapter.api_key, adapter.api_base.split(":", 2)[2]
                                                           .split("@")[0]])
    finally:
        adapter.close()


def test_claude_describe_hides_url_passwords_in_argv():
    from toolpool.adapters import ClaudeAdapter

    adapter = ClaudeAdapter(cli_path="/bin/true", extra_args=["--mcp-config", "https://u:s3cretpw@h.example/x"])
    assert "s3cretpw" not in json.dumps(adapter.describe())


# -- the redaction functions themselves ------------------------------------------------------
@pytest.mark.parametrize("secret, text", [
    ("sk-ant-api03-" + "a1B2" * 10, "key {}"),
    ("sk-proj-" + "x9" * 12, "openai {} end"),
    ("ghp_" + "A" * 36, "token {}"),
    ("gho_" + "b1" * 18, "{}"), ("ghu_" + "c" * 36, "{}"), ("ghs_" + "d" * 36, "{}"), ("ghr_" + "e" * 36, "{}"),
    ("github_pat_11ABCDEFG0" + "z" * 30, "pat={}"),
    ("AKIAIOSFODNN7EXAMPLE", "aws {} here"),
    ("xoxb-1234567890-abcdefghij", "slack {}"), ("xoxp-1234567890-abcdefghij", "{}"),
    ("abc.def.ghijk", "Authorization: Bearer {}"),
    ("dXNlcjpwYXNzd29yZA==", 'curl -H "Authorization: Basic {}"'),
    ("eyJhbGciOiJIUzI1NiJ9.payload", "bearer {}"),
    ("pa/ss:w0rd", "--api-base https://user:{}@host.example/v1"),
    ("hunter2horse", "ANTHROPIC_API_KEY={}"), ("hunter2horse", "OPENAI_API_KEY: '{}'"),
    ("xyzzy12345", "api_key={}"), ("xyzzy12345", "--openai-api-key={}"),
    ("s3cr3t!!", '{{"password": "{}"}}'), ("tok-123456", "GITHUB_TOKEN={}"),
    ("wJalrXUtnFEMI", "AWS_SECRET_ACCESS_KEY={}"), ("abcdef1234", "client_secret={}&x=1"),
])
def test_shapes(secret, text):
    line = text.format(secret)
    out = redact_text(line)
    assert secret not in out and "***" in out, out
    assert redact_text(out) == out  # idempotent


@pytest.mark.parametrize("text", [
    "Tokens: 1.2k sent, 12k received.", "http://127.0.0.1:8080/v1 fine", "the author wrote a keyboard passage",
    "monkey: banana", "max_tokens=100", "pwd: /home/user", "a task-runner ran", "ECHO: hello",
    "Traceback (most recent call last):\n  File \"x.py\", line 3, in <module>\nValueError: bad",
])
def test_ordinary_text_is_untouched(text):
    assert redact_text(text) == text


def test_registry_by_value_is_counted():
    value = "plain" + _random.token_hex(8)
    first = register_secrets([value, None, "short"])
    second = register_secrets([value])
    assert first == (value,) and value in registered_secrets()
    assert redact_text(f"x {value} y") == "x *** y"
    unregister_secrets(first)
    assert redact_text(f"x {value} y") == "x *** y"  # still registered by the second
    unregister_secrets(second)
    assert redact_text(f"x {value} y") == f"x {value} y"


def test_redact_deep_and_secret_keys():
    obj = {"api_key": "plainvalue", "nested": [("sk-ant-" + "q" * 20,)], "tokens_sent": 3, "note": None}
    assert redact(obj) == {"api_key": "***", "nested": [("***",)], "tokens_sent": 3, "note": None}
    assert redact_url("https://u:p/w@h/x") == "https://***@h/x" and redact_url(None) is None


def test_secret_values_from_env_and_urls():
    env = {"MY_TOKEN": "abcdef123", "PATH": "/usr/bin", "ANTHROPIC_BASE_URL": "https://u:urlpass99@h/",
           "SHORT_KEY": "abc"}
    assert sorted(secret_values(env)) == ["abcdef123", "urlpass99"]


def test_log_filter_redacts_message_args_extra_and_traceback(caplog):
    caplog.set_level(logging.DEBUG, logger="toolpool")
    log = logging.getLogger("toolpool.test_secrets_child_made_late")  # made after toolpool was imported
    key = "sk-ant-" + _random.token_hex(12)
    try:
        raise ValueError(f"OPENAI_API_KEY={key}")
    except ValueError:
        log.exception("failed with %s and %r", key, {"k": key}, extra={"stderr_tail": f"raw {key}"})
    log.debug("plain %d", 42)
    assert caplog.records[-1].getMessage() == "plain 42"
    assert_clean("log records", log_text(caplog.records) + caplog.text, [key])
    assert "failed with *** and {'k': '***'}" in caplog.text


def test_log_filter_keeps_a_malformed_record_visible():
    record = logging.LogRecord("toolpool.x", logging.INFO, __file__, 1, "two %s %s", ("sk-ant-" + "z" * 20,),
                               None)
    assert RedactingFilter().filter(record) is True
    assert "***" in record.getMessage() and "z" * 20 not in record.getMessage()


def test_status_wrappers_still_importable():
    from toolpool.status import redact as status_redact
    from toolpool.status import redact_text as status_redact_text
    from toolpool.status import secret_values as status_secret_values

    assert status_redact_text("x plain-value-1 y", ["plain-value-1"]) == "x *** y"
    assert status_redact({"a": ["plain-value-1"]}, ["plain-value-1"]) == {"a": ["***"]}
    assert status_secret_values({"X_SECRET": "abcdefgh"}) == ["abcdefgh"]


def test_private_dump_is_owner_only(tmp_path):
    from toolpool.status import dump_status

    path = dump_status({"x": "sk-ant-" + "w" * 20}, tmp_path / "s.json")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with open(path) as f:
        assert "w" * 20 not in f.read()
