"""RayToolPool on a real local Ray cluster: a head and one more node, on loopback only.

The cluster's own processes are started without this run's process marker, so
the leftover check (tests/conftest.py) sees only tool processes: every adapter
here carries the marker in its env.  Ray missing: skipped locally, a failure in
CI (CI=true), like the real-tool tests.
"""

from __future__ import annotations

import concurrent.futures as cf
import gc
import ipaddress
import json
import os
import re
import shutil
import subprocess

import pytest

from toolkit import MARK, marked_processes, wait_until
from toolpool import DemoAdapter, PoolFull, ResponseTimeout
from toolpool.adapters import ClaudeAdapter
from toolpool.testing import FakeAnthropicServer, find_tool

# Read by Ray when it is imported: loopback for every node (without it nodes bind the
# machine's address), and no usage report.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MARK_KEY, MARK_VALUE = MARK.split("=")
SMALL_NODE = {"num_cpus": 1, "object_store_memory": 80 * 1024 * 1024, "node_ip_address": "127.0.0.1"}
# Notice a lost node within about 2 s instead of Ray's default 30 s.
FAST_FAILURE_DETECTION = {"health_check_period_ms": 500, "health_check_timeout_ms": 1000,
                          "health_check_failure_threshold": 3, "health_check_initial_delay_ms": 0}


def _require_ray():
    try:
        import ray
        from ray.cluster_utils import Cluster
    except ImportError:
        why = "Ray not installed: pip install -e '.[ray]'"
        if os.environ.get("CI") == "true":
            pytest.fail(why, pytrace=False)
        pytest.skip(why)
    return ray, Cluster


@pytest.fixture(scope="module")
def cluster():
    ray, Cluster = _require_ray()
    os.environ.pop(MARK_KEY, None)  # Ray's daemons are not ours to count as leftovers
    try:
        cl = Cluster(initialize_head=True, head_node_args={**SMALL_NODE, "include_dashboard": False,
                                                           "_system_config": FAST_FAILURE_DETECTION})
        cl.add_node(**SMALL_NODE)
        ray.init(address=cl.address, _node_ip_address="127.0.0.1", logging_level="warning", log_to_driver=False)
        cl.wait_for_nodes()
    finally:
        os.environ[MARK_KEY] = MARK_VALUE
    yield cl
    ray.shutdown()
    cl.shutdown()


@pytest.fixture
def make_ray_pool(cluster):
    from toolpool.ray import RayToolPool

    pools = []

    def factory(adapter, count_per_node=2, **options):
        pool = RayToolPool(adapter, count_per_node, **options)
        pools.append(pool)
        return pool

    yield factory
    for pool in pools:
        pool.shutdown(timeout=3.0)


def demo(think=0.02):
    """The demo tool, marked so that a tool process left behind is found."""
    return DemoAdapter(think=think, env={MARK_KEY: MARK_VALUE})


def alive_nodes(ray):
    return {n["NodeID"] for n in ray.nodes() if n["Alive"]}


def tool_pids(pool, node=None):
    return {e["pid"] for e in pool.get_status()["instances"] if e["pid"] and (node is None or e["node"] == node)}


def gone(pids):
    return not set(pids) & set(marked_processes())


@pytest.mark.timeout(120)
def test_map_of_100_prompts_over_two_nodes_answers_each_prompt(make_ray_pool):
    import ray

    pool = make_ray_pool(demo(), count_per_node=2)
    prompts = [f"prompt number {n}" for n in range(100)]
    responses = list(pool.map(prompts, timeout=60))
    for prompt, response in zip(prompts, responses, strict=True):
        assert f"You asked: {prompt}\n" in response.text + "\n", (prompt, response.text)
        assert response.prompt == prompt
    used = {r.node for r in responses}
    assert used == alive_nodes(ray) and len(used) == 2
    assert {r.index for r in responses} == {0, 1, 2, 3}
    # Each global index lives on one node: the attribution is consistent.
    assert len({(r.index, r.node) for r in responses}) == 4
    stats = pool.stats()
    assert stats["requests"] == 100 and stats["errors"] == 0 and stats["node_losses"] == 0


@pytest.mark.timeout(120)
def test_lease_keeps_one_instance_for_a_conversation(make_ray_pool):
    pool = make_ray_pool(demo(), count_per_node=2)
    with pool.lease(timeout=10) as lease:
        first = lease.ask("first question", timeout=10)
        turn = int(re.match(r"\[turn (\d+)\]", first.text).group(1))
        others = list(pool.map([f"meanwhile {n}" for n in range(12)], timeout=30))
        second = lease.ask("a follow-up", timeout=10)
        later = [lease.submit(f"step {n}") for n in (1, 2)]
        texts = [f.result(10).text for f in later]
        assert lease.status()["index"] == lease.index
        assert pool.get_status()["instances"][lease.index]["owner"] == "lease"
    assert second.text.startswith(f"[turn {turn + 1}]"), second.text
    assert [t.splitlines()[0] for t in texts] == [f"[turn {turn + 2}] You asked: step 1",
                                                  f"[turn {turn + 3}] You asked: step 2"]
    assert first.index == second.index == lease.index and first.node == second.node == lease.node
    assert lease.index not in {r.index for r in others}, "a leased instance took other work"
    with pytest.raises(Exception, match="released"):
        lease.ask("after release")


@pytest.mark.timeout(120)
def test_a_forgotten_lease_is_released_when_collected(make_ray_pool):
    pool = make_ray_pool(demo(), count_per_node=1, nodes=1)
    lease = pool.lease(timeout=10)
    lease.ask("hello", timeout=10)
    assert sum(n["leases"] for n in pool.get_status()["nodes"]) == 1
    with pytest.raises(Exception, match="lease within"):
        pool.lease(timeout=0.5)  # the only instance is held
    del lease
    gc.collect()
    assert wait_until(lambda: sum(n["leases"] for n in pool.get_status()["nodes"]) == 0, 10.0)
    with pool.lease(timeout=10) as again:
        assert again.ask("mine now", timeout=10).text.startswith("[turn 2]")


@pytest.mark.timeout(120)
def test_backpressure_deadlines_and_cancel(make_ray_pool):
    pool = make_ray_pool(demo(think=1.0), count_per_node=1, nodes=1, max_waiting=2)
    running = pool.submit("runs first", timeout=30)
    assert wait_until(lambda: pool.get_status()["nodes"][0]["in_flight"] == 1, 10.0)
    late = pool.submit("gives up queued", timeout=0.3)
    queued = pool.submit("waits its turn", timeout=30)
    with pytest.raises(PoolFull, match="max_waiting=2"):
        pool.submit("one too many")
    with pytest.raises(ResponseTimeout) as info:
        late.result(10)
    assert info.value.phase == "queue"
    cancelled = pool.submit("cancelled while queued")
    assert cancelled.cancel()
    assert "You asked: runs first" in running.result(30).text
    assert "You asked: waits its turn" in queued.result(30).text
    with pytest.raises(ResponseTimeout) as info:
        pool.submit("too slow", timeout=0.3).result(30)
    assert info.value.phase == "response"
    with pytest.raises(ValueError):
        pool.submit("two\nlines")  # rejected on the driver, before it travels
    assert pool.stats()["requests_rejected"] == 1


@pytest.mark.timeout(120)
def test_status_is_valid_and_names_each_instances_node(make_ray_pool, tmp_path):
    import jsonschema
    import ray

    pool = make_ray_pool(demo(), count_per_node=2)
    pool.submit("warm", timeout=30).result(30)
    status = pool.get_status()
    with open(os.path.join(ROOT, "schema", "pool_status.schema.json")) as f:
        jsonschema.validate(status, json.load(f))  # the published schema, self-contained
    from toolpool.status import validation_errors
    assert validation_errors(status) == []
    assert [e["index"] for e in status["instances"]] == [0, 1, 2, 3]
    assert {e["node"] for e in status["instances"]} == alive_nodes(ray)
    assert all(e["state"] == "IDLE" and e["pid"] for e in status["instances"])
    assert status["health"]["total"] == 4 and status["health"]["healthy"]
    path = pool.dump_status(str(tmp_path / "status.json"))
    assert os.stat(path).st_mode & 0o777 == 0o600
    with open(path) as f:
        assert json.load(f)["instances"][0]["node"] in alive_nodes(ray)


@pytest.mark.timeout(120)
def test_no_tool_process_is_left_after_shutdown(make_ray_pool):
    pool = make_ray_pool(demo(), count_per_node=2)
    pids = tool_pids(pool)
    assert len(pids) == 4 and pids <= set(marked_processes())
    pending = pool.submit("queued at shutdown", timeout=30)
    pool.shutdown(timeout=3.0)
    assert wait_until(lambda: gone(pids), 10.0), f"left running: {pids & set(marked_processes())}"
    assert pending.done()
    with pytest.raises(Exception, match="shut down"):
        pool.submit("after shutdown")


def _lose_a_node_mid_run(cluster, pool, think_prompts=24):
    """Grow onto a new node, start a batch, remove that node while it answers."""
    import ray

    before = alive_nodes(ray)
    extra = cluster.add_node(**SMALL_NODE)
    assert wait_until(lambda: pool.check_health()["nodes"]["ready"] == 3, 30.0), pool.get_status()["nodes"]
    extra_id = (alive_nodes(ray) - before).pop()
    extra_pids = tool_pids(pool, extra_id)
    assert len(extra_pids) == 2
    futures = [pool.submit(f"batch prompt {n}", timeout=60) for n in range(think_prompts)]
    assert wait_until(lambda: any(n["node"] == extra_id and n["in_flight"] for n in pool.get_status()["nodes"]),
                      10.0)
    cluster.remove_node(extra, allow_graceful=False)
    _, not_done = cf.wait(futures, timeout=60)
    assert not not_done, f"{len(not_done)} futures never resolved after the node was removed"
    # The removed node's tools die with it, even though its actor never shut its pool down.
    assert wait_until(lambda: gone(extra_pids), 10.0), f"left running: {extra_pids & set(marked_processes())}"
    return extra_id, futures


@pytest.mark.timeout(150)
def test_node_removed_mid_run_fails_its_requests_and_the_pool_goes_on(cluster, make_ray_pool):
    from toolpool.ray import NodeLost

    pool = make_ray_pool(demo(think=0.3), count_per_node=2)
    extra_id, futures = _lose_a_node_mid_run(cluster, pool)
    lost = [f.exception() for f in futures if f.exception() is not None]
    assert lost, "the removed node was answering, some requests must have failed"
    for exc in lost:
        assert isinstance(exc, NodeLost) and exc.node == extra_id and extra_id in str(exc), repr(exc)
    for n, fut in enumerate(futures):
        if fut.exception() is None:
            assert f"You asked: batch prompt {n}" in fut.result(0).text
    after = list(pool.map([f"after {n}" for n in range(8)], timeout=60))
    assert all(f"You asked: after {n}" in r.text for n, r in enumerate(after))
    assert extra_id not in {r.node for r in after}
    assert pool.stats()["node_losses"] == 1
    assert pool.check_health()["nodes"]["ready"] == 2


@pytest.mark.timeout(150)
def test_node_removed_mid_run_with_retry_on_crash_answers_everything(cluster, make_ray_pool):
    pool = make_ray_pool(demo(think=0.3), count_per_node=2, retry_on_crash=True)
    _, futures = _lose_a_node_mid_run(cluster, pool)
    for n, fut in enumerate(futures):
        assert f"You asked: batch prompt {n}" in fut.result(0).text
    # Those the removed node was answering were answered again elsewhere.
    assert pool.stats()["retries"] >= 1 and pool.stats()["errors"] == 0


@pytest.mark.timeout(60)
def test_every_node_listens_on_loopback_only(cluster):
    if shutil.which("ss") is None:
        pytest.skip("ss (iproute2) is not installed")
    ours = _descendants(os.getpid())
    listening = []
    sockets = subprocess.run(["ss", "-ltnpH"], check=True, capture_output=True, text=True, timeout=10).stdout
    for line in sockets.splitlines():
        pids = {int(p) for p in re.findall(r"pid=(\d+)", line)}
        if pids & ours:
            listening.append(line)
    assert listening, "found no listening socket of the cluster's processes"
    outside = [line for line in listening if not _is_loopback(line.split()[3])]
    assert not outside, "\n".join(outside)


def _is_loopback(address):
    """``127.0.0.1:80``, ``[::ffff:127.0.0.1]:80`` (IPv4-mapped) or ``[::1]:80``; not ``*:80`` or ``0.0.0.0:80``."""
    host = address.rsplit(":", 1)[0].strip("[]")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback


def _descendants(root):
    parents = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    parents[int(name)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
    found, frontier = set(), {root}
    while frontier:
        frontier = {pid for pid, ppid in parents.items() if ppid in frontier} - found
        found |= frontier
    return found


@pytest.mark.realtools
@pytest.mark.timeout(240)
def test_real_claude_on_two_nodes(make_ray_pool, tmp_path):
    import ray

    claude = find_tool("claude")
    if claude is None:
        why = "real claude not installed: run scripts/install-real-tools.sh"
        if os.environ.get("CI") == "true":
            pytest.fail(why, pytrace=False)
        pytest.skip(why)
    with FakeAnthropicServer() as server:
        env = {"ANTHROPIC_BASE_URL": server.url, "ANTHROPIC_API_KEY": "sk-fake-ray-test", MARK_KEY: MARK_VALUE}
        pool = make_ray_pool(ClaudeAdapter(cli_path=claude, env=env, cwd=str(tmp_path)), count_per_node=1)
        prompts = [f"question {n} for the cluster" for n in range(4)]
        responses = list(pool.map(prompts, timeout=120))
        assert [r.text for r in responses] == [f"ECHO: {p}" for p in prompts]
        assert {r.node for r in responses} == alive_nodes(ray)
        assert all(r.session_id and not r.is_error for r in responses)
        pids = tool_pids(pool)
        pool.shutdown(timeout=5.0)
        assert wait_until(lambda: gone(pids), 15.0)
