"""Status dumps: write one, validate it against the published JSON Schema, show it.

Run:  python examples/status_dump.py

``pool.dump_status(path)`` writes ``pool.get_status()`` as JSON atomically
(temporary file, fsync, rename: a reader never sees half a file), readable by
the owner only (mode 0600), with secrets redacted.  The schemas ship inside
the package (``toolpool/schemas/``); :func:`toolpool.status.validation_errors`
checks a dump against them, and ``toolpool status FILE`` validates and prints
one as a table.

The pool here runs a small tool that prints an API key to stderr on start-up,
and is given another one in its environment: neither value reaches the dump.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import tempfile

from toolpool import ReplAdapter, ToolProcessPool
from toolpool.status import load_schema, validation_errors

# A tool that leaks a credential on stderr, then behaves like a REPL.
LEAKY_TOOL = r"""
import os, sys
print("debug: using api_key=sk-live-0123456789abcdef", file=sys.stderr, flush=True)
sys.stdout.write("tool> "); sys.stdout.flush()
for line in sys.stdin:
    sys.stdout.write("done: " + line + "tool> "); sys.stdout.flush()
"""
SECRET_ENV = "sk-env-secret-value-42"


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="toolpool-status-") as tmp:
        script = os.path.join(tmp, "leaky_tool.py")
        with open(script, "w") as f:
            f.write(LEAKY_TOOL)
        adapter = ReplAdapter([sys.executable, "-u", script], prompt=r"tool> $", name="leaky",
                              env={"MY_API_KEY": SECRET_ENV})
        path = os.path.join(tmp, "status.json")
        with ToolProcessPool(adapter, count=2) as pool:
            pool.ask(0, "some work", timeout=10)
            pool.send_prompt(1, "more work")
            pool.read_response(1, timeout=10)
            pool.dump_status(path)

        mode = stat.S_IMODE(os.stat(path).st_mode)
        with open(path) as f:
            text = f.read()
        status = json.loads(text)
        print(f"wrote {os.path.basename(path)}: {len(text)} bytes, mode {oct(mode)}, "
              f"schema_version {status['schema_version']}")
        print(f"top-level keys: {sorted(status)}")
        print(f"adapter: {status['adapter']}")
        print(f"instance 0: state {status['instances'][0]['state']}, requests {status['instances'][0]['requests']}, "
              f"stderr_tail {status['instances'][0]['stderr_tail']!r}")
        leaked = [s for s in ("sk-live-0123456789abcdef", SECRET_ENV) if s in text]
        print(f"secrets in the dump: {leaked or 'none'}")

        schema = load_schema("pool_status.schema.json")
        print(f"schema {schema['$id']}: errors {validation_errors(status)}")

        broken = dict(status, schema_version=2,
                      instances=[dict(status["instances"][0], index="zero", state="SLEEPING")])
        print("a broken dump is reported:")
        for err in validation_errors(broken):
            print(f"  {err}")

        # The command line: validate and render as a table (exit 0 when valid, 2 when not).
        shown = subprocess.run([sys.executable, "-m", "toolpool", "status", path],
                               capture_output=True, text=True, timeout=60)
        print(f"$ toolpool status status.json   (exit {shown.returncode})")
        print(shown.stdout.rstrip())
        if leaked or validation_errors(status) or shown.returncode != 0:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
