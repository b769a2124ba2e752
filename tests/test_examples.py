"""Every example in examples/ runs as documented: exit 0 and the output it promises.

Each example runs as a subprocess, from a temporary directory, without API
keys (so the offline fake servers are used).  The examples that drive the
real ``claude`` / ``aider`` skip here when the tool is not installed, and fail
when CI=true, where scripts/install-real-tools.sh has installed them.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

from toolpool.testing import find_tool

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")

#: Environment variables that would make an example use a real API (or another server).
API_VARS = ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_BASE_URL", "OPENAI_API_KEY",
            "OPENAI_API_BASE", "OPENAI_BASE_URL", "CLAUDECODE", "CLAUDE_CODE_ENTRYPOINT")

#: Real tools: (env var, name on PATH, path under the install dir).
TOOLS: dict[str, tuple[str, str, str]] = {
    "claude": ("TOOLPOOL_CLAUDE", "claude", "claude/node_modules/.bin/claude"),
    "aider": ("TOOLPOOL_AIDER", "aider", "aider-venv/bin/aider"),
}

#: example -> (real tool it needs or None, timeout in seconds, strings its stdout must contain)
CASES: dict[str, tuple[str | None, float, list[str]]] = {
    "basic_pool.py": (None, 60, [
        "pool of 3 ready", "ask(0)      -> instance 0", "InstanceBusy: instance 1 has not answered",
        "read(1)     -> [turn 1] You asked: a prompt sent now, read later",
        "map         -> ['[turn", "You asked: one", "lease       -> instance", "then 'turns answered:",
        "ResponseTimeout (phase 'response')", "healthy=True", "file mode 0o600", "pool shut down"]),
    "repl_pool.py": (None, 60, [
        "python[0] x * 7      -> 42", "python[1] x * 7      -> 700",
        "map n ** 2           -> ['0', '1', '4', '9', '16', '25']", "multi-line prompt    -> ValueError",
        "exec(...)            -> ['0', '1', '4']", "ZeroDivisionError: division by zero",
        "-> KeyboardInterrupt", "python[1] still has x -> 100"]),
    "status_dump.py": (None, 60, [
        "mode 0o600", "secrets in the dump: none", "errors []", "schema_version: 1 was expected",
        "'SLEEPING' is not one of", "(exit 0)", "tool leaky (pipe): 2 instances, 2 alive"]),
    "claude_batch.py": ("claude", 180, [
        "offline: FakeAnthropicServer", "2 claude sessions ready",
        "ok", "(fake model) an answer to: What is a zombie process?", "6 prompts in"]),
    "claude_conversation.py": ("claude", 180, [
        "offline: FakeAnthropicServer", "leased instance",
        "This conversation has 1 user message(s) so far", "This conversation has 3 user message(s) so far",
        "meanwhile submit() ran on instance", "(growing: context kept)"]),
    "offline_testing.py": ("claude", 180, [
        "PASS check_scripted_replies", "PASS check_reply_function_and_recorded_requests",
        "PASS check_api_error_is_handled", "PASS check_timeout_is_handled", "4 of 4 checks passed"]),
    "aider_pool.py": ("aider", 300, [
        "offline: FakeOpenAIServer", "2 aider instances ready", "calc.py: edited", "strings.py: edited",
        "paths.py: edited", "3 files changed, 3 insertions(+)",
        "calc.py: first line now '\"\"\"calc.py: part of the toolpool aider example.\"\"\"'"]),
    "parallel_agents.py": ("aider", 300, [
        "repository with 8 failing tests", "offline: FakeOpenAIServer", "4 aider agents ready",
        "each in its own worktree", "8 tasks done", "checkout clean: True", "lib/calc.py: agent",
        "modified lib/greet.py; test FAILS", "+    return a + b", "merged 7 of 8 fixes into main",
        "main now: 7 of 8 tests pass; still failing: greet",
        "worktrees left after shutdown: 0"]),
}

#: Examples that need a Python package beyond the test extra: skipped locally without it, failed in CI.
MODULES = {"ray_pool.py": "ray"}
CASES["ray_pool.py"] = (None, 180, [
    "pool of 4 instances on 2 nodes ready", "12 answers, per node", "You asked: review file 0",
    "then '[turn", "failed with NodeLost; names the node: True", "after loss  -> 4 answers from 1 node",
    "status      -> 2 instances", "pool shut down"])


def require_tool(tool: str) -> None:
    if find_tool(tool) is not None:
        return
    why = f"real {tool} not installed: run scripts/install-real-tools.sh (or set {TOOLS[tool][0]})"
    if os.environ.get("CI") == "true":
        pytest.fail(why, pytrace=False)
    pytest.skip(why)


def offline_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in API_VARS}
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.mark.timeout(10)
def test_every_example_is_tested():
    present = sorted(f for f in os.listdir(EXAMPLES) if f.endswith(".py"))
    assert present == sorted(CASES), "add new examples to CASES (and remove deleted ones)"


def _params() -> list:
    params = []
    for name in sorted(CASES):
        tool, timeout, _ = CASES[name]
        marks = [pytest.mark.timeout(timeout + 30)] + ([pytest.mark.realtools] if tool else [])
        params.append(pytest.param(name, marks=marks, id=name))
    return params


@pytest.mark.parametrize("name", _params())
def test_example_runs(name, tmp_path):
    tool, timeout, expected = CASES[name]
    if tool is not None:
        require_tool(tool)
    if name in MODULES and importlib.util.find_spec(MODULES[name]) is None:
        why = f"{name} needs {MODULES[name]}: pip install -e '.[{MODULES[name]}]'"
        if os.environ.get("CI") == "true":
            pytest.fail(why, pytrace=False)
        pytest.skip(why)
    proc = subprocess.run([sys.executable, os.path.join(EXAMPLES, name)], cwd=str(tmp_path), env=offline_env(),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
    report = f"exit {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    assert proc.returncode == 0, report
    assert "SKIPPED" not in proc.stdout, f"the example did not find {tool} although the test did\n{report}"
    missing = [s for s in expected if s not in proc.stdout]
    assert not missing, f"missing from the output: {missing}\n{report}"
    assert "Traceback" not in proc.stderr, report


@pytest.mark.timeout(90)
@pytest.mark.parametrize("name", sorted(n for n, case in CASES.items() if case[0] is not None))
def test_real_tool_example_without_the_tool_exits_0(name, tmp_path):
    """Where the tool is missing, the example says so plainly and exits 0."""
    tool = CASES[name][0]
    env = offline_env()
    env[TOOLS[tool][0]] = str(tmp_path / "no-such-tool")  # an explicit, missing path: never searched further
    proc = subprocess.run([sys.executable, os.path.join(EXAMPLES, name)], cwd=str(tmp_path), env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("SKIPPED:") and tool in proc.stdout, proc.stdout
