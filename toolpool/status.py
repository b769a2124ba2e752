"""Status snapshots: redaction of secrets, atomic dumps, schema validation.

``pool.get_status()`` builds the snapshot; this module makes it safe to write
down.  Environment values are never part of it (only variable names), and any
string that still looks like a credential, such as an API key a tool printed
on stderr, is replaced by ``***`` before it leaves the process.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from typing import Any

from . import redact as _redact

try:  # Python 3.9+: importlib.resources.files
    from importlib.resources import files as _files
except ImportError:  # pragma: no cover
    _files = None  # type: ignore[assignment]

SCHEMA_NAMES = ("pool_status.schema.json", "pool_instance.schema.json")

# The core imports these names from here; they are thin wrappers over toolpool.redact.
def secret_values(env: dict[str, str] | None = None) -> list[str]:
    """Values of environment variables whose names look secret (long enough to matter)."""
    return _redact.secret_values(env)


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    """See :func:`toolpool.redact.redact_text`."""
    return _redact.redact_text(text, secrets)


def redact(obj: Any, secrets: Iterable[str] = ()) -> Any:
    """A deep copy of ``obj`` with every string passed through :func:`redact_text`."""
    return _redact.redact(obj, secrets)


def dump_status(status: dict[str, Any], path: os.PathLike[str] | str, secrets: Iterable[str] = ()) -> str:
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


def load_schema(name: str = "pool_status.schema.json") -> dict[str, Any]:
    """One of the published JSON Schemas (shipped inside the package)."""
    if name not in SCHEMA_NAMES:
        raise ValueError(f"unknown schema {name!r}; one of {SCHEMA_NAMES}")
    if _files is not None:
        schema: dict[str, Any] = json.loads((_files("toolpool") / "schemas" / name).read_text())
        return schema
    with open(os.path.join(os.path.dirname(__file__), "schemas", name)) as f:  # pragma: no cover
        schema = json.load(f)
        return schema


def status_validator() -> Any:
    """A jsonschema Draft 2020-12 validator for pool status dumps.

    The status schema is self-contained (the instance schema is bundled under
    ``$defs``), so no registry and no network are needed.
    """
    import jsonschema

    return jsonschema.Draft202012Validator(load_schema("pool_status.schema.json"))


def validation_errors(status: Any) -> list[str]:
    """Human-readable schema violations of ``status`` (empty when valid)."""
    return [f"{'/'.join(str(p) for p in e.absolute_path) or '(root)'}: {e.message}"
            for e in sorted(status_validator().iter_errors(status), key=lambda e: list(e.absolute_path))]
