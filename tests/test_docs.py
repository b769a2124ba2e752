"""Every ```python block in README.md and docs/*.md runs, and the docs cover the API.

Each block runs on its own, as a script in a fresh subprocess, with a
temporary directory as its working directory and no API keys in its
environment.  Blocks that drive the real ``claude`` / ``aider`` start the
offline fake servers themselves; here they find the tools on PATH (a
directory of links to wherever the tools are installed is put first on it).
Such a block skips when its tool is not installed, and fails when CI=true.
"""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
import textwrap

import pytest

from toolpool.testing import find_tool

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")
REQUIRED_DOCS = ("quickstart.md", "concepts.md", "api.md", "adapters.md", "operations.md", "troubleshooting.md")

API_VARS = ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_BASE_URL", "OPENAI_API_KEY",
            "OPENAI_API_BASE", "OPENAI_BASE_URL", "CLAUDECODE", "CLAUDE_CODE_ENTRYPOINT")
TOOLS: dict[str, tuple[str, str]] = {
    "claude": ("TOOLPOOL_CLAUDE", "claude/node_modules/.bin/claude"),
    "aider": ("TOOLPOOL_AIDER", "aider-venv/bin/aider"),
}
_NEEDS = {
    "claude": re.compile(r"\bClaudeAdapter\(|\(\s*[\"']claude[\"']"),
    "aider": re.compile(r"\bAiderAdapter\(|\(\s*[\"']aider[\"']"),
}
_FENCE_OPEN = re.compile(r"^(?P<indent>[ \t]*)```python[ \t]*$")
_FENCE_CLOSE = re.compile(r"^[ \t]*```[ \t]*$")
BLOCK_TIMEOUT = 90
REAL_TOOL_BLOCK_TIMEOUT = 240


def doc_files() -> list[str]:
    files = [os.path.join(ROOT, "README.md")]
    if os.path.isdir(DOCS):
        files += sorted(os.path.join(DOCS, f) for f in os.listdir(DOCS) if f.endswith(".md"))
    return files


def python_blocks(path: str) -> list[tuple[int, str]]:
    """(line number of the opening fence, code) for every ```python block of a Markdown file."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    blocks, i = [], 0
    while i < len(lines):
        m = _FENCE_OPEN.match(lines[i])
        if not m:
            i += 1
            continue
        start, body = i + 1, []
        i += 1
        while i < len(lines) and not _FENCE_CLOSE.match(lines[i]):
            body.append(lines[i])
            i += 1
        if i == len(lines):
            raise ValueError(f"{path}:{start}: a ```python block is never closed")
        blocks.append((start, textwrap.dedent("\n".join(body)) + "\n"))
        i += 1
    return blocks


def tools_needed(code: str) -> list[str]:
    return [tool for tool, pattern in _NEEDS.items() if pattern.search(code)]


def _cases() -> list:
    cases = []
    for path in doc_files():
        rel = os.path.relpath(path, ROOT)
        for line, code in python_blocks(path):
            needs = tools_needed(code)
            marks = [pytest.mark.timeout((REAL_TOOL_BLOCK_TIMEOUT if needs else BLOCK_TIMEOUT) + 30)]
            if needs:
                marks.append(pytest.mark.realtools)
            cases.append(pytest.param(rel, line, code, needs, marks=marks, id=f"{rel}:{line}"))
    return cases


@pytest.fixture(scope="module")
def tool_bin(tmp_path_factory) -> str:
    """A directory holding only links named ``claude`` / ``aider`` to the installed tools."""
    path = tmp_path_factory.mktemp("tool-bin")
    for tool in TOOLS:
        found = find_tool(tool)
        if found:
            os.symlink(found, path / tool)
    return str(path)


@pytest.mark.parametrize("doc, line, code, needs", _cases())
def test_python_block_runs(doc, line, code, needs, tmp_path, tool_bin):
    for tool in needs:
        if find_tool(tool) is None:
            why = f"{doc}:{line} drives the real {tool}, which is not installed (scripts/install-real-tools.sh)"
            if os.environ.get("CI") == "true":
                pytest.fail(why, pytrace=False)
            pytest.skip(why)
    script = tmp_path / "block.py"
    script.write_text(code, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k not in API_VARS}
    env["PATH"] = tool_bin + os.pathsep + env.get("PATH", os.defpath)
    env["PYTHONUNBUFFERED"] = "1"
    timeout = REAL_TOOL_BLOCK_TIMEOUT if needs else BLOCK_TIMEOUT
    try:
        proc = subprocess.run([sys.executable, str(script)], cwd=str(tmp_path), env=env, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{doc}:{line}: the block did not finish within {timeout}s\n{exc.stdout}\n{exc.stderr}")
    assert proc.returncode == 0, (f"{doc}:{line}: the block exited {proc.returncode}\n--- code\n{code}"
                                  f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")


@pytest.mark.timeout(30)
def test_every_required_doc_exists_and_has_runnable_code():
    for name in REQUIRED_DOCS:
        path = os.path.join(DOCS, name)
        assert os.path.isfile(path), f"docs/{name} is missing"
        assert python_blocks(path), f"docs/{name} has no ```python block"


def _public_names() -> list[str]:
    names = []
    toolpool = importlib.import_module("toolpool")
    names += list(toolpool.__all__)
    adapters = importlib.import_module("toolpool.adapters")
    names += list(adapters.__all__) + ["ClaudeAdapter", "AiderAdapter", "CommandAdapter"]
    names += list(importlib.import_module("toolpool.testing").__all__)
    names += ["PoolCollector", "validation_errors", "status_validator", "load_schema", "dump_status", "redact",
              "redact_text", "secret_values"]
    names += ["submit", "map", "lease", "send_prompt", "read_response", "ask", "interrupt", "restart_instance",
              "check_health", "get_status", "stats", "pop_stats", "dump_status", "shutdown", "subscribe"]
    return sorted(set(names))


@pytest.mark.timeout(30)
def test_api_doc_names_every_public_name():
    with open(os.path.join(DOCS, "api.md"), encoding="utf-8") as f:
        text = f.read()
    missing = [name for name in _public_names() if f"`{name}" not in text and f".{name}" not in text]
    assert not missing, f"docs/api.md does not document: {missing}"


@pytest.mark.timeout(30)
def test_relative_links_point_at_files():
    link = re.compile(r"\]\((?!https?://|mailto:|#)([^)#\s]+)(?:#[^)]*)?\)")
    broken = []
    for path in doc_files():
        with open(path, encoding="utf-8") as f:
            text = f.read()
        for target in link.findall(text):
            resolved = os.path.normpath(os.path.join(os.path.dirname(path), target))
            if os.path.exists(resolved):
                continue
            if os.path.basename(resolved) == "performance.md":
                continue  # written by another engineer; may not exist yet in this checkout
            broken.append(f"{os.path.relpath(path, ROOT)} -> {target}")
    assert not broken, f"broken links: {broken}"


@pytest.mark.timeout(30)
def test_api_doc_names_every_constructor_parameter():
    """A parameter added to a public constructor must be documented too."""
    import inspect

    from toolpool import CommandAdapter, DemoAdapter, ReplAdapter, RestartPolicy, ToolProcessPool
    from toolpool.adapters import AiderAdapter, ClaudeAdapter
    from toolpool.testing import FakeLLMServer

    with open(os.path.join(DOCS, "api.md"), encoding="utf-8") as f:
        text = f.read()
    missing = []
    for cls in (ToolProcessPool, ReplAdapter, DemoAdapter, CommandAdapter, ClaudeAdapter, AiderAdapter,
                RestartPolicy, FakeLLMServer):
        for name, param in inspect.signature(cls).parameters.items():
            if param.kind in (param.VAR_KEYWORD, param.VAR_POSITIONAL):
                continue
            if not re.search(rf"\b{re.escape(name)}=", text) and f"`{name}`" not in text:
                missing.append(f"{cls.__name__}({name})")
    assert not missing, f"docs/api.md does not mention: {missing}"
