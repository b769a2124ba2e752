"""Containment: nothing a tool starts outlives its instance, its pool, or the program that owns it."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from toolkit import HERE, marked_processes, wait_until
from toolpool import ReplAdapter, containment
from toolpool.testing import FakeAnthropicServer, find_tool

pytestmark = pytest.mark.timeout(120)

ESCAPER = os.path.join(HERE, "tools", "escaper.py")
OWNER = os.path.join(HERE, "tools", "owner.py")
REPO = os.path.dirname(HERE)


def escaper(*flags: str) -> ReplAdapter:
    return ReplAdapter([sys.executable, "-u", ESCAPER, *flags], prompt=r"tp> $", start_timeout=20)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return b") Z " not in f.read()
    except OSError:
        return False


def start_owner(*args: str) -> "tuple[subprocess.Popen, dict]":
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    owner = subprocess.Popen([sys.executable, "-u", OWNER, *args], stdout=subprocess.PIPE, env=env, text=True)
    line = owner.stdout.readline()
    if not line.startswith("READY "):
        owner.kill()
        owner.wait()
        pytest.fail(f"owner did not start: {line!r}")
    return owner, json.loads(line[6:])


def kill_owner_and_time_cleanup(owner: subprocess.Popen, sig: int, pids: "list[int]") -> float:
    """Kill the owner; seconds until every given pid and every marked process is gone."""
    t0 = time.monotonic()
    owner.send_signal(sig)
    assert owner.wait(10) == -sig  # died of the signal: no atexit, no shutdown ran
    owner.stdout.close()
    gone = wait_until(lambda: not any(alive(p) for p in pids) and not marked_processes(), 10.0)
    took = time.monotonic() - t0
    assert gone, f"still running {took:.1f}s after the owner died: {[p for p in pids if alive(p)]}"
    return took


OWNER_CASES = {
    "idle": [],
    "busy": ["--busy"],
    "ignores-eof-and-term": ["--ignore-eof", "--ignore-term"],
    "grandchild": ["--child"],
    "setsid-grandchild": ["--setsid-child"],
    "everything": ["--busy", "--ignore-eof", "--ignore-term", "--child", "--setsid-child"],
}


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
@pytest.mark.parametrize("case", list(OWNER_CASES))
def test_owner_death_takes_every_tool_process_with_it(case, sig):
    owner, info = start_owner("escaper", *OWNER_CASES[case])
    pids = info["tools"] + info["children"]
    try:
        assert len(info["tools"]) == 2 and all(alive(p) for p in pids)
        assert len(info["children"]) == 2 * sum(f in ("--child", "--setsid-child") for f in OWNER_CASES[case])
    finally:  # whatever failed above, the owner dies here (and takes its tools with it)
        took = kill_owner_and_time_cleanup(owner, sig, pids)
    assert took < 2.0, f"cleanup took {took:.2f}s"


def test_owner_death_stops_a_real_claude_mid_turn():
    cli = find_tool("claude")
    if cli is None:
        pytest.skip("real claude not installed: run scripts/install-real-tools.sh")
    with FakeAnthropicServer(delay=60) as server:
        owner, info = start_owner("claude", cli, server.url)
        try:
            server.wait_for_requests(1, timeout=60, path="/v1/messages")  # the turn waits on the API
        finally:
            took = kill_owner_and_time_cleanup(owner, signal.SIGKILL, info["tools"])
    assert took < 2.0, f"claude outlived its owner by {took:.2f}s"


def test_shutdown_restart_and_crash_reach_a_setsid_grandchild(make_pool):
    pool = make_pool(escaper("--setsid-child"), 2)
    first = [int(pool.ask(i, "pids", timeout=10).text) for i in range(2)]
    assert all(alive(p) for p in first)
    assert os.getsid(first[0]) == first[0]  # it really left the tool's session and group

    pool.restart_instance(0)
    assert wait_until(lambda: not alive(first[0]), 5.0), "restart left the setsid grandchild running"
    assert alive(first[1])

    tool_pid = pool.get_status()["instances"][1]["pid"]
    os.kill(tool_pid, signal.SIGKILL)  # a crash: the supervisor's cleanup must reach it too
    assert wait_until(lambda: not alive(first[1]), 5.0), "a crash left the setsid grandchild running"

    assert wait_until(lambda: pool.check_health()["idle"] == 2, 20.0)
    second = [int(pool.ask(i, "pids", timeout=10).text) for i in range(2)]
    pool.shutdown()
    assert wait_until(lambda: not any(alive(p) for p in second), 5.0), "shutdown left setsid grandchildren"
    assert not marked_processes()


def test_describe_says_which_mechanism_is_active_and_why(make_pool):
    pool = make_pool(escaper(), 1)
    report = containment.describe()
    assert report["mechanism"] in ("cgroup", "marker") and report["cgroup_reason"]
    assert report["watchdog_pid"] and alive(report["watchdog_pid"])
    pid = pool.get_status()["instances"][0]["pid"]
    with open(f"/proc/{pid}/environ", "rb") as f:
        env = dict(e.split(b"=", 1) for e in f.read().split(b"\0") if b"=" in e)
    assert env[containment.MARKER_VAR.encode()].decode().startswith(containment.owner_prefix())
    if report["mechanism"] == "cgroup":
        with open(f"/proc/{pid}/cgroup") as f:
            assert os.path.basename(report["cgroup"]) in f.read()


def test_marker_fallback_alone_reaches_a_setsid_grandchild():
    """With cgroups disabled, the environment marker must still find the escapee."""
    code = (
        f"import os, sys; sys.path.insert(0, {REPO!r})\n"
        "from toolpool import ToolProcessPool, ReplAdapter, containment\n"
        f"a = ReplAdapter([sys.executable, '-u', {ESCAPER!r}, '--setsid-child'], prompt=r'tp> $', start_timeout=20)\n"
        "p = ToolProcessPool(a, 1); child = int(p.ask(0, 'pids', timeout=10).text)\n"
        "assert containment.describe()['mechanism'] == 'marker'\n"
        "p.shutdown(); import time; time.sleep(0.2)\n"
        "print(child, os.path.exists(f'/proc/{child}') and b') Z ' not in open(f'/proc/{child}/stat', 'rb').read())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60,
                         env={**os.environ, "TOOLPOOL_CONTAINMENT": "marker"})
    assert out.returncode == 0, out.stderr
    child, still_alive = out.stdout.split()
    assert still_alive == "False", f"setsid grandchild {child} survived shutdown"
