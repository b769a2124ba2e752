"""Status snapshots: redaction of secrets, atomic dumps, schema validation.

``pool.get_status()`` builds the snapshot; this module makes it safe to write
down.  Environment values are never part of it (only variable names), and any
string that still looks like a credential, such as an API key a tool printed
on stderr, is replaced by ``***`` before it leaves the process.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from typing import Any, Dict, Iterable, List, Optional

try:  # Python 3.9+: importlib.resources.files
    from importlib.resources import files as _files
except ImportError:  # pragma: no cover
    _files = None  # type: ignore[assignment]

SCHEMA_NAMES = ("pool_status.schema.json", "pool_instance.schema.json")

_SECRET_PATTERNS = [
    re.compile(r"\bsk-[A-Za-z0-9_\-]{6,}"),                       # OpenAI/Anthropic style keys
    re.compile(r"\b(?:ghp|gho|ghs|github_pat|xox[abp])_[A-Za-z0-9_]{10,}"),  # GitHub / Slack tokens
    re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9._\-+/=]{8,}"),
    re.compile(r"(?i)\b([A-Z0-9_]*(?:api[_-]?key|token|secret|password|passwd|credential)[A-Z0-9_]*)"
               r"(['\"]?\s*[=:]\s*)(['\"]?)[^\s'\",;}]{4,}"),  # NAME=v, NAME: v, "NAME": "v" (JSON)
    re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s:@]+:[^/\s@]+@"),  # credentials in a URL
]
_SECRET_NAME = re.compile(r"(?i)(key|token|secret|password|passwd|credential|auth)")


def secret_values(env: Optional[Dict[str, str]] = None) -> List[str]:
    """Values of environment variables whose names look secret (long enough to matter)."""
    env = dict(os.environ) if env is None else env
    return sorted({v for k, v in env.items() if _SECRET_NAME.search(k) and len(v) >= 6}, key=len, reverse=True)


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    for value in secrets:
        if value and value in text:
            text = text.replace(value, "***")
    for pattern in _SECRET_PATTERNS:
        if pattern.groups == 1 and "://" in pattern.pattern:
            text = pattern.sub(lambda m: f"{m.group(1)}***@", text)
        elif pattern.groups >= 3:
            text = pattern.sub(lambda m: f"{m.group(1)}{m.group(2)}{m.group(3)}***", text)
        elif pattern.groups == 1:
            text = pattern.sub(lambda m: f"{m.group(1)} ***", text)
        else:
            text = pattern.sub("***", text)
    return text


def redact(obj: Any, secrets: Iterable[str] = ()) -> Any:
    """A deep copy of ``obj`` with every string passed through :func:`redact_text`."""
    secrets = list(secrets)
    if isinstance(obj, str):
        return redact_text(obj, secrets)
    if isinstance(obj, dict):
        return {k: redact(v, secrets) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact(v, secrets) for v in obj]
    return obj


def dump_status(status: Dict[str, Any], path: "os.PathLike[str] | str", secrets: Iterable[str] = ()) -> str:
    """Write ``status`` as JSON to ``path`` atomically, readable only by the owner.

    Temporary file in the same directory, fsync, rename over ``path``, fsync
    the directory: a reader sees the old dump or the new one, never half.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    data = json.dumps(redact(status, secrets), indent=2, sort_keys=True).encode() + b"\n"
    fd, tmp = tempfile.mkstemp(prefix=".toolpool-status-", suffix=".tmp", dir=directory)  # mode 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def load_schema(name: str = "pool_status.schema.json") -> Dict[str, Any]:
    """One of the published JSON Schemas (shipped inside the package)."""
    if name not in SCHEMA_NAMES:
        raise ValueError(f"unknown schema {name!r}; one of {SCHEMA_NAMES}")
    if _files is not None:
        return json.loads((_files("toolpool") / "schemas" / name).read_text())
    with open(os.path.join(os.path.dirname(__file__), "schemas", name)) as f:  # pragma: no cover
        return json.load(f)


def status_validator():
    """A jsonschema Draft 2020-12 validator for pool status dumps."""
    import jsonschema
    from referencing import Registry, Resource

    schemas = [load_schema(n) for n in SCHEMA_NAMES]
    registry = Registry().with_resources([(s["$id"], Resource.from_contents(s)) for s in schemas])
    return jsonschema.Draft202012Validator(schemas[0], registry=registry)


def validation_errors(status: Any) -> List[str]:
    """Human-readable schema violations of ``status`` (empty when valid)."""
    return [f"{'/'.join(str(p) for p in e.absolute_path) or '(root)'}: {e.message}"
            for e in sorted(status_validator().iter_errors(status), key=lambda e: list(e.absolute_path))]
