"""The published status schemas validate anywhere: self-contained, no remote ids, two identical copies.

A user's first try is ``jsonschema.validate(status, json.load(open(...)))``
with nothing else set up; a second validator (check-jsonschema, a separate
program) must agree.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest

from toolpool import ToolProcessPool
from toolpool.status import load_schema, validation_errors

pytestmark = pytest.mark.timeout(120)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = ("pool_status.schema.json", "pool_instance.schema.json")


def published(name: str) -> dict[str, Any]:
    with open(os.path.join(ROOT, "schema", name), encoding="utf-8") as f:
        schema: dict[str, Any] = json.load(f)
    return schema


def nodes(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from nodes(value)
    elif isinstance(node, list):
        for value in node:
            yield from nodes(value)


@pytest.fixture(scope="module")
def live_status(tmp_path_factory: Any) -> dict[str, Any]:
    """A real pool's status while open, and after shutdown (the dump a CLI run leaves)."""
    with ToolProcessPool("demo", 2) as pool:
        pool.submit("hello", timeout=30).result(30)
        running = json.loads(json.dumps(pool.get_status()))
    closed = json.loads(json.dumps(pool.get_status()))
    return {"running": running, "closed": closed}


@pytest.mark.parametrize("name", NAMES)
def test_both_copies_are_identical(name):
    with open(os.path.join(ROOT, "schema", name), "rb") as a, \
            open(os.path.join(ROOT, "toolpool", "schemas", name), "rb") as b:
        assert a.read() == b.read(), f"schema/{name} and toolpool/schemas/{name} differ: copy one over the other"
    assert load_schema(name) == published(name)  # what the installed package ships


@pytest.mark.parametrize("name", NAMES)
def test_ids_and_refs_point_nowhere_remote(name):
    schema = published(name)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$id"].startswith("urn:toolpool:"), schema["$id"]
    ids = [n["$id"] for n in nodes(schema) if isinstance(n.get("$id"), str)]
    refs = [n["$ref"] for n in nodes(schema) if isinstance(n.get("$ref"), str)]
    assert ids == [schema["$id"]], f"only the root may have an $id: {ids}"
    assert all(ref.startswith("#/") for ref in refs), f"only local references: {refs}"


def test_bundled_instance_schema_is_the_standalone_one():
    standalone = published("pool_instance.schema.json")
    bundled = published("pool_status.schema.json")["$defs"]["pool_instance"]
    assert bundled == {k: v for k, v in standalone.items() if k not in ("$schema", "$id")}
    assert published("pool_status.schema.json")["properties"]["instances"]["items"] == \
        {"$ref": "#/$defs/pool_instance"}


@pytest.mark.parametrize("when", ["running", "closed"])
def test_plain_jsonschema_validate_as_a_user_would(live_status, when):
    status = live_status[when]
    with open(os.path.join(ROOT, "schema", "pool_status.schema.json"), encoding="utf-8") as f:
        jsonschema.validate(status, json.load(f))  # no registry, no network
    with open(os.path.join(ROOT, "schema", "pool_instance.schema.json"), encoding="utf-8") as f:
        instance_schema = json.load(f)
    for entry in status["instances"]:
        jsonschema.validate(entry, instance_schema)
    assert validation_errors(status) == []
    assert status["closed"] is (when == "closed")


@pytest.mark.parametrize("mutate, where", [
    (lambda s: s["instances"][0].update(state="NAPPING"), "instances/0/state"),
    (lambda s: s["instances"][0].pop("pid"), "instances/0"),
    (lambda s: s["instances"][0].update(node=3), "instances/0/node"),
    (lambda s: s.update(containment="cgroup"), "containment"),
])
def test_broken_status_is_rejected_through_the_bundled_definition(live_status, mutate, where):
    broken = copy.deepcopy(live_status["running"])
    mutate(broken)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, published("pool_status.schema.json"))
    assert any(err.startswith(where) for err in validation_errors(broken)), validation_errors(broken)


def test_optional_extension_fields_are_accepted(live_status):
    status = copy.deepcopy(live_status["running"])
    status["containment"] = {"mechanism": "process-group", "reason": "no cgroup v2 delegation"}
    status["instances"][0].update(node=None, containment={"mechanism": "process-group"})
    status["instances"][1].update(node="worker-3")
    jsonschema.validate(status, published("pool_status.schema.json"))


def check_jsonschema(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "check_jsonschema", *args], capture_output=True, text=True,
                          check=False, timeout=120, stdin=subprocess.DEVNULL)


def test_check_jsonschema_agrees(live_status, tmp_path):
    probe = check_jsonschema("--version")
    assert probe.returncode == 0, ("check-jsonschema is missing: pip install -e '.[test]' installs it\n"
                                   + probe.stderr)
    good, bad = tmp_path / "status.json", tmp_path / "broken.json"
    good.write_text(json.dumps(live_status["closed"]))
    broken = copy.deepcopy(live_status["running"])
    broken["instances"][0]["state"] = "NAPPING"
    bad.write_text(json.dumps(broken))
    schema = os.path.join(ROOT, "schema", "pool_status.schema.json")
    ok = check_jsonschema("--schemafile", schema, str(good))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    rejected = check_jsonschema("--schemafile", schema, str(bad))
    assert rejected.returncode == 1 and "NAPPING" in rejected.stdout + rejected.stderr, rejected.stdout
    meta = check_jsonschema("--check-metaschema", schema, os.path.join(ROOT, "schema", "pool_instance.schema.json"))
    assert meta.returncode == 0, meta.stdout + meta.stderr
