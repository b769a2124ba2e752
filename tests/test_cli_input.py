"""Bad input to ``toolpool run`` gets one line and exit code 2, never a traceback; and packaging.

Every test runs the CLI as a real subprocess.  Exit codes: 2 for usage or
configuration (nothing was run), 1 when prompts ran and some failed, 130
after Ctrl-C.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import zipfile
from typing import Any

import pytest

pytestmark = pytest.mark.timeout(180)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def toolpool(*args: str, input: str | bytes | None = None, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    data = input.encode() if isinstance(input, str) else input
    res = subprocess.run([sys.executable, "-m", "toolpool", *args], capture_output=True, input=data,
                         timeout=timeout, cwd=ROOT, check=False)
    return subprocess.CompletedProcess(res.args, res.returncode, res.stdout.decode(errors="replace"),
                                       res.stderr.decode(errors="replace"))


def assert_usage_error(res: subprocess.CompletedProcess[str], *needles: str) -> None:
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2, (res.returncode, res.stderr)
    assert "Traceback" not in res.stderr and len(lines) == 1, res.stderr
    assert lines[0].startswith("toolpool: ")
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert res.stdout == "", "nothing may run on bad input"


# -- prompts ------------------------------------------------------------------------------
def test_non_utf8_prompts_file(tmp_path):
    bad = tmp_path / "prompts.txt"
    bad.write_bytes(b"fine\n\xff\xfe caf\xe9\n")
    assert_usage_error(toolpool("run", "--prompts-file", str(bad)), "not UTF-8", "offset 5")


def test_non_utf8_stdin():
    assert_usage_error(toolpool("run", "--prompts-file", "-", input=b"\xc3\x28\n"), "stdin is not UTF-8")


def test_multi_line_prompt_names_the_option_to_use():
    res = toolpool("run", "--prompt", "one", "--prompt", "first line\nsecond line")
    assert_usage_error(res, "--prompt #2", "2 lines", "its own --prompt", "--prompts-file")


@pytest.mark.parametrize("content", ["", "\n\n   \n"])
def test_empty_prompts_file_runs_nothing(tmp_path, content):
    empty = tmp_path / "prompts.txt"
    empty.write_text(content)
    assert_usage_error(toolpool("run", "--prompts-file", str(empty)), "no prompts", "prompts.txt")


def test_blank_stdin_runs_nothing():
    assert_usage_error(toolpool("run", "--prompts-file", "-", input=" \n\t\n"), "no prompts", "stdin")


def test_no_prompts_at_all_runs_no_invented_ones():
    assert_usage_error(toolpool("run", "-n", "1"), "no prompts", "--prompt", "--prompts-file")


def test_missing_prompts_file(tmp_path):
    assert_usage_error(toolpool("run", "--prompts-file", str(tmp_path / "nope.txt")), "nope.txt")


# -- options ------------------------------------------------------------------------------
@pytest.mark.parametrize("option, value", [("--timeout", "-1"), ("--timeout", "nan"), ("--timeout", "inf"),
                                           ("--timeout", "0"), ("--start-timeout", "-5"),
                                           ("--start-timeout", "nan")])
def test_bad_seconds(option, value):
    assert_usage_error(toolpool("run", "--prompt", "x", option, value), option, "positive number of seconds")


def test_missing_cwd(tmp_path):
    missing = str(tmp_path / "not-there")
    assert_usage_error(toolpool("run", "--prompt", "x", "--cwd", missing), "--cwd", "no such directory")


@pytest.mark.parametrize("args", [
    ["--tool", "command", "--option", 'command=["/nonexistent/toolpool-test-tool"]'],
    ["--tool", "aider", "--option", "cli_path=/nonexistent/toolpool-test-aider"],
])
def test_tool_executable_not_installed(args):
    assert_usage_error(toolpool("run", "--prompt", "x", *args), "not found", "/nonexistent/toolpool-test-")


def test_unknown_option_names_the_option_not_a_class():
    res = toolpool("run", "--prompt", "x", "--option", "nosuch=1")
    assert_usage_error(res, "tool 'demo': it has no option 'nosuch'", "think")
    assert "Adapter" not in res.stderr and "__init__" not in res.stderr


def test_missing_required_option():
    assert_usage_error(toolpool("run", "--prompt", "x", "--tool", "command"), "needs --option command=")


def test_malformed_option():
    assert_usage_error(toolpool("run", "--prompt", "x", "--option", "novalue"), "KEY=VALUE")


def test_help_states_the_default_timeout():
    res = toolpool("run", "--help")
    assert res.returncode == 0
    flat = " ".join(res.stdout.split())
    assert "--timeout TIMEOUT seconds per prompt, queueing included (default 600)" in flat, flat


# -- runs that fail keep exit code 1 ---------------------------------------------------------------
FAILING_COMMAND = (f'command=["{sys.executable}", "-c", "import sys; p=sys.stdin.read(); '
                   'sys.exit(3 if p.startswith(\'bad\') else print(p.upper()))"]')


def test_prompts_that_ran_and_failed_exit_1_and_keep_their_instance(tmp_path):
    res = toolpool("run", "-n", "1", "--tool", "command", "--option", FAILING_COMMAND, "--prompt", "ok one",
                   "--prompt", "bad two")
    assert res.returncode == 1, res.stderr
    records = {r["prompt"]: r for r in map(json.loads, res.stdout.splitlines())}
    assert records["ok one"]["ok"] and not records["bad two"]["ok"]
    assert records["bad two"]["instance"] == 0, records["bad two"]


def test_a_timed_out_record_keeps_its_instance():
    res = toolpool("run", "-n", "1", "--option", "think=3", "--prompt", "slow", "--timeout", "0.5")
    assert res.returncode == 1, res.stderr
    (record,) = map(json.loads, res.stdout.splitlines())
    assert "ResponseTimeout" in record["error"] and record["instance"] == 0, record


# -- the status file shows the end state ---------------------------------------------------------
def assert_end_state(path: Any, requests_at_least: int) -> dict[str, Any]:
    status = json.loads(path.read_text())
    assert status["closed"] is True and status["health"]["alive"] == 0, status["health"]
    for inst in status["instances"]:
        assert inst["pid"] is None and inst["state"] == "STOPPED" and not inst["alive"], inst
    assert sum(i["requests"] for i in status["instances"]) >= requests_at_least
    shown = toolpool("status", str(path))
    assert shown.returncode == 0 and "(closed)" in shown.stdout, shown.stdout + shown.stderr
    return status


def test_status_file_after_a_run(tmp_path):
    status = tmp_path / "status.json"
    res = toolpool("run", "-n", "2", "--prompt", "a", "--prompt", "b", "--prompt", "c", "--status-file",
                   str(status))
    assert res.returncode == 0, res.stderr
    final = assert_end_state(status, 3)
    assert sum(i["requests"] for i in final["instances"]) == 3


def test_status_file_after_ctrl_c(tmp_path):
    out, status, prompts = tmp_path / "out.jsonl", tmp_path / "status.json", tmp_path / "prompts.txt"
    prompts.write_text("".join(f"p{n}\n" for n in range(60)))
    proc = subprocess.Popen([sys.executable, "-m", "toolpool", "run", "-n", "2", "--option", "think=0.2",
                             "--prompts-file", str(prompts), "--out", str(out), "--status-file", str(status)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (out.exists() and out.read_text().count("\n") >= 2):
            time.sleep(0.05)
        assert out.read_text().count("\n") >= 2, "no results before the deadline"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 130, err.decode(errors="replace")
    done = out.read_text().count("\n")
    assert 2 <= done < 60
    assert_end_state(status, done)


# -- packaging ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_license_and_metadata_in_sdist_and_wheel(tmp_path):
    with open(os.path.join(ROOT, "LICENSE"), encoding="utf-8") as f:
        license_text = f.read()
    assert license_text.startswith("MIT License") and "toolpool developers" in license_text
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", "*.egg-info", "build", "dist", "__pycache__",
                                                             ".pytest_cache", ".ruff_cache", ".mypy_cache",
                                                             ".hypothesis"))
    built = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--sdist", "--wheel", "--outdir",
                            str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=170,
                           check=False)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    (sdist,) = (tmp_path / "dist").glob("*.tar.gz")
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    with tarfile.open(sdist) as tar:
        names = tar.getnames()
        top = names[0].split("/")[0]
        assert f"{top}/LICENSE" in names, names
        assert f"{top}/schema/pool_status.schema.json" in names
    with zipfile.ZipFile(wheel) as whl:
        names = whl.namelist()
        licenses = [n for n in names if ".dist-info/" in n and n.endswith("LICENSE")]
        assert licenses and whl.read(licenses[0]).decode() == license_text, names
        assert "toolpool/schemas/pool_status.schema.json" in names and "toolpool/py.typed" in names
        (meta,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        metadata = whl.read(meta).decode()
    assert "Author: toolpool developers" in metadata
    assert "Project-URL: Source, " in metadata and "Project-URL: Documentation, " in metadata, metadata[:1500]
    assert "License :: OSI Approved :: MIT License" in metadata
