"""stats/pop_stats, Prometheus metrics, logging, atomic redacted status dumps, schemas."""

import json
import logging
import os
import stat
import sys

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from toolkit import fake_adapter
from toolpool import ResponseTimeout, ToolPoolError
from toolpool.prometheus import PoolCollector
from toolpool.status import load_schema, redact_text, validation_errors

pytestmark = pytest.mark.timeout(60)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_stats_and_pop_stats(make_pool):
    pool = make_pool(fake_adapter(), 2)
    for n in range(5):
        pool.submit(f"s{n}").result(30)
    with pytest.raises(ResponseTimeout):
        pool.submit("sleep 2", timeout=0.2).result(30)
    s = pool.stats()
    assert s["requests"] == 6 and s["errors"] == 1 and s["timeouts"] == 1
    assert s["spawns_warm"] == 6 and s["spawns_cold"] == 0
    assert s["response"]["count"] == 5 and 0 < s["response"]["p50"] <= s["response"]["p95"] <= s["response"]["max"]
    assert s["queue_wait"]["count"] == 6
    assert s["bytes_in"] > 0 and s["bytes_out"] > 0
    popped = pool.pop_stats()
    assert popped["requests"] == 6
    after = pool.stats()
    assert after["requests"] == 0 and after["response"]["count"] == 0


def test_prometheus_collector_exposes_conventional_names(make_pool):
    pool = make_pool(fake_adapter(), 2)
    for n in range(3):
        pool.submit(f"p{n}").result(30)
    pool.pop_stats()  # Prometheus counters are lifetime totals: popping must not reset them
    registry = CollectorRegistry()
    registry.register(PoolCollector(pool, name="test"))
    text = generate_latest(registry).decode()
    assert 'toolpool_requests_total{pool="test",tool="repl"} 3.0' in text
    assert 'toolpool_response_seconds_count{pool="test",tool="repl"} 3.0' in text
    assert 'toolpool_response_seconds_bucket{le="+Inf",pool="test",tool="repl"} 3.0' in text
    assert 'toolpool_instances{condition="idle",pool="test",tool="repl"} 2.0' in text
    assert "toolpool_requests_waiting" in text


def test_one_log_line_per_spawn_exit_restart_timeout(make_pool, caplog):
    caplog.set_level(logging.DEBUG, logger="toolpool")
    pool = make_pool(fake_adapter(), 1)
    with pytest.raises(ToolPoolError):
        pool.submit("crash 3").result(30)
    pool.restart_instance(0)
    assert pool.ask(0, "hi", timeout=10).text == "you said: hi"
    with pytest.raises(ResponseTimeout):
        pool.read_response(0, timeout=0.05) if pool.send_prompt(0, "sleep 0.5") else None
    messages = [r for r in caplog.records if r.name.startswith("toolpool")]
    spawned = [r for r in messages if "spawned pid" in r.getMessage()]
    exited = [r for r in messages if "exited with code 3" in r.getMessage()]
    timeouts = [r for r in messages if "no response within" in r.getMessage()]
    assert spawned and all(hasattr(r, "pid") for r in spawned)
    assert exited and exited[0].exit_code == 3
    assert timeouts and timeouts[0].timeout == 0.05
    assert any("restarting" in r.getMessage() for r in messages)
    answered = [r for r in messages if "answered in" in r.getMessage()]
    assert answered and set(answered[0].timings) >= {"queued", "acquire", "spawn", "first_byte", "total", "warm"}


def test_dump_status_is_atomic_private_valid_and_redacted(make_pool, tmp_path, monkeypatch):
    monkeypatch.setenv("MY_SERVICE_TOKEN", "tok-abcdef123456")
    pool = make_pool(fake_adapter(env={"OPENAI_API_KEY": "sk-live-0123456789abcdef"}), 2)
    with pytest.raises(ToolPoolError):
        # the tool's stderr now carries a secret: it must not reach the dump
        pool.ask(0, "crash 1", timeout=30)
    pool.instances()[0].stderr.append(b"auth failed for sk-live-0123456789abcdef and tok-abcdef123456\n")
    path = tmp_path / "status.json"
    pool.dump_status(str(path))
    mode = stat.S_IMODE(os.stat(path).st_mode)
    assert mode == 0o600
    text = path.read_text()
    assert "sk-live-0123456789abcdef" not in text and "tok-abcdef123456" not in text
    status = json.loads(text)
    assert validation_errors(status) == []
    assert status["schema_version"] == 1
    assert status["adapter"]["env_keys"] == ["OPENAI_API_KEY"]
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".toolpool-status-")]  # no temp file left


def test_broken_dumps_are_rejected(make_pool):
    pool = make_pool(fake_adapter(), 1)
    good = json.loads(json.dumps(pool.get_status()))
    assert validation_errors(good) == []
    for mutate in (lambda s: s.pop("instances"), lambda s: s.update(schema_version=2),
                   lambda s: s["instances"][0].update(state="NAPPING"), lambda s: s["health"].update(total=-1),
                   lambda s: s["instances"][0].update(pid="12")):
        broken = json.loads(json.dumps(good))
        mutate(broken)
        assert validation_errors(broken), mutate


def test_schemas_are_published_and_shipped_identically():
    for name in ("pool_status.schema.json", "pool_instance.schema.json"):
        with open(os.path.join(ROOT, "schema", name)) as f:
            published = json.load(f)
        assert load_schema(name) == published
        assert published["$schema"] == "https://json-schema.org/draft/2020-12/schema"

        def described(node, where, schema=name):
            if isinstance(node, dict):
                for key, sub in node.get("properties", {}).items():
                    assert "description" in sub, f"{schema}: {where}/{key} has no description"
                    described(sub, f"{where}/{key}")

        described(published, "")


def test_redaction_patterns():
    assert redact_text("key=sk-ant-api03-abcdefgh") == "key=***"
    assert redact_text("Authorization: Bearer abc.def.ghi123") == "Authorization: Bearer ***"
    assert redact_text("GITHUB_TOKEN=ghp_abcdefghijklmnop") == "GITHUB_TOKEN=***"
    assert redact_text("mine is hunter2hunter", secrets=["hunter2hunter"]) == "mine is ***"
    assert redact_text("nothing secret here: 42 tokens used") == "nothing secret here: 42 tokens used"


def test_one_collector_for_several_pools(make_pool):
    a, b = make_pool(fake_adapter(), 1), make_pool(fake_adapter(), 1)
    a.submit("x").result(30)
    registry = CollectorRegistry()
    registry.register(PoolCollector({"batch": a, "chat": b}))
    text = generate_latest(registry).decode()
    assert 'toolpool_requests_total{pool="batch",tool="repl"} 1.0' in text
    assert 'toolpool_requests_total{pool="chat",tool="repl"} 0.0' in text


def test_secrets_in_json_and_urls_are_redacted():
    assert redact_text('{"JIRA_API_TOKEN": "abcd1234efgh"}') == '{"JIRA_API_TOKEN": "***"}'
    assert redact_text("https://user:pw12@host/v1") == "https://***@host/v1"


def test_an_adapter_with_per_slot_state_serves_one_pool_at_a_time(make_pool, tmp_path):
    from toolpool.adapters import ClaudeAdapter
    adapter = ClaudeAdapter(cli_path=sys.executable)  # never started here
    adapter.attach()
    with pytest.raises(ValueError, match="already used by another pool"):
        adapter.attach()
    adapter.detach()
    adapter.attach()  # free again once the first user is done
    adapter.detach()
