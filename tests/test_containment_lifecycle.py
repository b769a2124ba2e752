"""Lifecycle: fork safety, SIGCHLD ignored, stale private dirs, background threads, the pty terminal."""

import json
import os
import signal
import stat
import subprocess
import sys
import threading

import pytest

from toolkit import HERE
from toolpool import ReplAdapter, ToolProcessPool, lifecycle

pytestmark = pytest.mark.timeout(120)

REPO = os.path.dirname(HERE)
TOOLS = os.path.join(HERE, "tools")
# The core registers its pools with toolpool.lifecycle once the rebuilt pool.py lands.


def run_script(args, env_extra=None, timeout=90) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), **(env_extra or {})}
    return subprocess.run([sys.executable, "-u", *args], check=False, capture_output=True, text=True, env=env,
                          timeout=timeout)


def last_json(out: subprocess.CompletedProcess) -> dict:
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("how", ["os.fork", "multiprocessing"])
def test_forked_child_exiting_leaves_the_parents_pool_alone(how):
    """A forked child that exits normally runs atexit hooks and finalizers: they must not touch the parent's
    pool (its tools) nor delete the claude adapter's private directory."""
    flags = ["--multiprocessing"] if how == "multiprocessing" else []
    result = last_json(run_script([os.path.join(TOOLS, "forker.py"), *flags]))
    assert result["answers"] == [f"you said: still there {i}" for i in range(3)]
    assert result["private_dir_kept"] is True


SIGCHLD_SCRIPT = r"""
import json, signal, sys
from toolpool import ToolProcessPool, ReplAdapter, lifecycle
from toolpool.adapters import CommandAdapter
signal.signal(signal.SIGCHLD, signal.SIG_IGN)
out = {}
try:
    ToolProcessPool(ReplAdapter([sys.executable, "-u", "-c", "print('tp> ', end='')"], prompt=r"tp> $"), 1)
    out["refused"] = None
except Exception as exc:
    out["refused"] = f"{type(exc).__name__}: {exc}"
lifecycle.check_sigchld(restore=True)
code = "import os, sys; sys.stdout.write('partial'); sys.stdout.flush(); os.kill(os.getpid(), 9)"
with ToolProcessPool(CommandAdapter([sys.executable, "-c", code]), 1) as pool:
    try:
        out["killed_oneshot"] = "success: " + pool.submit("x", timeout=20).result().text
    except Exception as exc:
        out["killed_oneshot"] = f"{type(exc).__name__}: exit code {getattr(exc, 'exit_code', None)}"
out["disposition_default"] = signal.getsignal(signal.SIGCHLD) == signal.SIG_DFL
print(json.dumps(out))
"""


def test_sigchld_ignored_is_refused_with_the_fix_or_restored():
    result = last_json(run_script(["-c", SIGCHLD_SCRIPT]))
    assert result["refused"] is not None, "a pool started although exit statuses are discarded"
    assert "SIGCHLD is ignored" in result["refused"] and "signal.SIG_DFL" in result["refused"]
    assert result["killed_oneshot"] == "InstanceCrashed: exit code -9"  # not a success with partial output
    assert result["disposition_default"] is True


def test_check_sigchld_accepts_the_default_setting():
    assert signal.getsignal(signal.SIGCHLD) != signal.SIG_IGN
    lifecycle.check_sigchld()  # no error, nothing changed
    assert signal.getsignal(signal.SIGCHLD) == signal.SIG_DFL


STALE_OWNER = r"""
import os, sys, time
from toolpool import lifecycle
from toolpool.adapters import ClaudeAdapter
claude = ClaudeAdapter(cli_path=sys.executable)
print(os.path.dirname(claude.slot_config_dir(0)), lifecycle.private_dir("aider", sys.argv[1]), flush=True)
time.sleep(600)
"""


def test_stale_private_dirs_of_a_killed_owner_are_reclaimed(tmp_path):
    env = {**os.environ, "PYTHONPATH": REPO, "TMPDIR": str(tmp_path)}
    owner = subprocess.Popen([sys.executable, "-c", STALE_OWNER, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                             env=env)
    claude_dir, aider_dir = owner.stdout.readline().split()
    for path in (claude_dir, aider_dir):
        assert os.path.dirname(path) == str(tmp_path)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o700
    assert lifecycle.reclaim_stale_dirs("claude", str(tmp_path)) == []  # owner alive: kept
    owner.kill()
    owner.wait()
    owner.stdout.close()
    assert os.path.isdir(claude_dir) and os.path.isdir(aider_dir)  # SIGKILL: nobody cleaned up
    mine = lifecycle.private_dir("claude", str(tmp_path))  # the next start reclaims, keeps its own
    assert not os.path.exists(claude_dir)
    assert lifecycle.reclaim_stale_dirs("aider", str(tmp_path)) == [aider_dir]
    assert os.path.isdir(mine) and lifecycle.dir_owner_alive(mine) is True
    unrelated = tmp_path / "toolpool-claude-notmine"
    unrelated.mkdir()
    assert lifecycle.reclaim_stale_dirs("claude", str(tmp_path)) == [] and unrelated.is_dir()


def test_remove_private_dir_refuses_in_a_forked_child(tmp_path):
    path = lifecycle.private_dir("claude", str(tmp_path))
    pid = os.fork()
    if pid == 0:
        lifecycle.remove_private_dir(path)
        os._exit(0 if lifecycle.in_owner_process() is False else 3)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert os.path.isdir(path)
    lifecycle.remove_private_dir(path)
    assert not os.path.exists(path)


def test_background_shutdown_threads_are_pruned():
    for _ in range(50):
        t = threading.Thread(target=lambda: None)
        t.start()
        t.join()
        lifecycle.track_background(t)
    assert len(lifecycle.background_threads()) <= 1


def test_register_pool_is_per_process(make_pool):
    pool = make_pool(ReplAdapter([sys.executable, "-u", os.path.join(TOOLS, "escaper.py")], prompt=r"tp> $"), 1)
    lifecycle.register_pool(pool)
    assert pool in lifecycle.live_pools() and lifecycle.in_owner_process(pool)
    lifecycle.unregister_pool(pool)
    assert pool not in lifecycle.live_pools()


def test_readme_python_repl_in_a_pty_answers_42():
    python = ReplAdapter(["python3", "-u", "-i", "-q"], prompt=r">>> $", transport="pty")
    with ToolProcessPool(python, count=2) as pool:
        assert pool.ask(0, "6 * 7", timeout=10).text == "42"
        term = pool.ask(1, "import os; os.environ['TERM'], os.ttyname(0) == os.ttyname(1), "
                           "os.tcgetpgrp(0) == os.getpid()", timeout=10).text
    assert term == "('dumb', True, True)"  # plain terminal, and it is the tool's controlling terminal


def test_pty_term_set_by_the_adapter_is_kept():
    chosen = "vt220" if os.environ.get("TERM") != "vt220" else "vt100"
    python = ReplAdapter(["python3", "-u", "-i", "-q"], prompt=r">>> $", transport="pty", env={"TERM": chosen})
    with ToolProcessPool(python, count=1) as pool:
        assert pool.ask(0, "__import__('os').environ['TERM']", timeout=10).text == repr(chosen)


def test_pty_spawn_runs_no_python_in_the_child():
    code = ("import sys, warnings; warnings.simplefilter('error'); from toolpool import ToolProcessPool, ReplAdapter\n"
            "a = ReplAdapter(['python3', '-u', '-i', '-q'], prompt=r'>>> $', transport='pty')\n"
            "with ToolProcessPool(a, 3) as p: print(p.ask(2, '1 + 1', timeout=10).text, 'pexpect' in sys.modules)\n")
    out = run_script(["-W", "error", "-c", code])
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["2", "False"]
