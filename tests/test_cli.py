"""The toolpool command line, run as a real subprocess."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.timeout(120)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def toolpool(*args, input=None, timeout=60):
    return subprocess.run([sys.executable, "-m", "toolpool", *args], capture_output=True, text=True,
                          input=input, timeout=timeout, cwd=ROOT)


def test_run_demo_writes_jsonl_summary_and_status(tmp_path):
    out, status = tmp_path / "out.jsonl", tmp_path / "status.json"
    res = toolpool("run", "-n", "2", "--prompt", "alpha", "--prompt", "beta gamma", "--out", str(out),
                   "--status-file", str(status), "--option", "think=0.01")
    assert res.returncode == 0, res.stderr
    lines = [json.loads(text) for text in out.read_text().splitlines()]
    assert sorted(line["prompt"] for line in lines) == ["alpha", "beta gamma"]
    for line in lines:
        assert line["ok"] and line["error"] is None and line["instance"] in (0, 1)
        assert line["text"].startswith("[turn 1] You asked: " + line["prompt"])
        assert set(line["timings"]) >= {"queued", "acquire", "spawn", "first_byte", "total", "warm"}
    assert "[2/2]" in res.stderr and "succeeded     2" in res.stderr  # plain progress lines, no tty
    # the status file holds the end state: written after the pool shut down, every instance stopped
    final = json.loads(status.read_text())
    assert final["closed"] is True
    assert [i["state"] for i in final["instances"]] == ["STOPPED", "STOPPED"]
    assert sum(i["requests"] for i in final["instances"]) == 2
    shown = toolpool("status", str(status))
    assert shown.returncode == 0 and "tool demo" in shown.stdout and "(closed)" in shown.stdout
    assert shown.stdout.count("STOPPED") == 2 and "IDLE" not in shown.stdout


def test_run_reads_prompts_from_stdin_and_fails_nonzero_on_errors():
    res = toolpool("run", "--tool", "command", "--option", f'command=["{sys.executable}", "-c", '
                   '"import sys; p=sys.stdin.read(); sys.exit(3 if p.startswith(\'bad\') else print(p.upper()))"]',
                   "--prompts-file", "-", input="ok one\nbad two\nok three\n")
    assert res.returncode == 1, res.stderr
    records = {r["prompt"]: r for r in map(json.loads, res.stdout.splitlines())}
    assert records["ok one"]["text"] == "OK ONE" and records["ok three"]["ok"]
    assert not records["bad two"]["ok"] and "exited with code 3" in records["bad two"]["error"]
    assert "failed        1" in res.stderr


def test_run_without_prompts_exits_2_before_starting_any_tool(tmp_path):
    """No invented sample prompts: nothing to do is a usage error, and no tool process is started for it."""
    started = tmp_path / "started"
    # a one-shot tool that leaves a mark when it runs, so a started process is seen even if it answers nothing
    tool = ["--tool", "command", "--option",
            "command=" + json.dumps([sys.executable, "-c", f"open({str(started)!r}, 'a').close(); print('ok')"])]
    res = toolpool("run", "-n", "3", *tool)
    assert res.returncode == 2, res.stderr
    assert "no prompts" in res.stderr and "Traceback" not in res.stderr and res.stdout == ""
    assert not started.exists()
    # the same command with a prompt does start the tool: the mark above can appear
    res = toolpool("run", "-n", "1", *tool, "--prompt", "go")
    assert res.returncode == 0, res.stderr
    assert started.exists() and json.loads(res.stdout)["text"] == "ok"


def test_ctrl_c_keeps_finished_results(tmp_path):
    out, prompts = tmp_path / "out.jsonl", tmp_path / "prompts.txt"
    prompts.write_text("\n".join(f"p{n}" for n in range(40)))
    proc = subprocess.Popen([sys.executable, "-m", "toolpool", "run", "-n", "1", "--option", "think=0.2",
                             "--prompts-file", str(prompts), "--out", str(out)], stdin=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (not out.exists() or len(out.read_text().splitlines()) < 2):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    kept = [json.loads(line) for line in out.read_text().splitlines()]
    assert 2 <= len(kept) < 40 and all(r["ok"] for r in kept)
    assert "interrupted" in err and "not run" in err


def test_bad_usage_is_clear():
    res = toolpool("run", "--tool", "nope", "--prompt", "x")
    assert res.returncode == 2 and "unknown adapter 'nope'" in res.stderr
    res = toolpool("run", "--tool", "command", "--prompt", "x")
    assert res.returncode == 2 and "cannot set up tool" in res.stderr


def test_status_rejects_an_invalid_dump(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"schema_version": 1, "instances": []}))
    res = toolpool("status", str(bad))
    assert res.returncode == 2 and "not a valid toolpool status dump" in res.stderr and "health" in res.stderr


def test_doctor_lists_every_adapter():
    res = toolpool("doctor", "--json", timeout=120)
    assert res.returncode == 0, res.stderr
    rows = {r["tool"]: r for r in json.loads(res.stdout)}
    assert set(rows) >= {"demo", "claude", "aider", "command"}
    assert rows["demo"]["found"] is True
    env = dict(os.environ, CLAUDECODE="1")
    res = subprocess.run([sys.executable, "-m", "toolpool", "doctor"], capture_output=True, text=True, env=env,
                         timeout=120, cwd=ROOT)
    assert "CLAUDECODE set" in res.stdout


def test_progress_bar_on_a_terminal():
    import pexpect

    prompts = [arg for n in range(6) for arg in ("--prompt", f"task {n}")]  # "prompt" on screen is tqdm's unit
    child = pexpect.spawn(sys.executable, ["-m", "toolpool", "run", "-n", "2", "--option", "think=0.05",
                                           *prompts, "--out", os.devnull],
                          cwd=ROOT, env=dict(os.environ, COLUMNS="100"), dimensions=(24, 100), timeout=60,
                          encoding="utf-8")
    child.expect(pexpect.EOF)
    child.close()
    screen = child.before
    assert child.exitstatus == 0, screen
    assert "6/6" in screen and "prompt" in screen and "100%" in screen  # tqdm's bar, not plain lines
    assert "[6/6] prompt" not in screen
    assert "succeeded     6" in screen


def test_usage_errors_exit_2_with_the_problem_named(tmp_path):
    cases = [(["--option", "foo", "--prompt", "x"], "--option takes KEY=VALUE"),
             (["--prompts-file", str(tmp_path / "missing.txt")], "cannot read prompts"),
             (["--prompt", "x", "--out", str(tmp_path / "no" / "dir.jsonl")], "cannot write output"),
             (["--prompt", "x", "--model", "m"], "unexpected keyword argument 'model'")]
    for extra, message in cases:
        res = toolpool("run", *extra)
        assert res.returncode == 2 and message in res.stderr and "Traceback" not in res.stderr, (extra, res.stderr)
