"""The ``toolpool`` command line: ``run``, ``doctor``, ``status``.

``toolpool run`` fans prompts over a pool and writes one JSON line per prompt;
``toolpool doctor`` checks which tools would work here and why not;
``toolpool status FILE`` validates a status dump and shows it as a table.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import inspect
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from typing import Any, TextIO

from . import __version__
from .adapters import adapter_names, create_adapter
from .errors import ToolNotFoundError, ToolPoolError
from .pool import ToolProcessPool
from .response import Response
from .testing.tools import find_tool

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

#: Seconds a prompt may take, queueing included, unless --timeout says otherwise:
#: a CLI run must end even when a tool never answers.
DEFAULT_TIMEOUT = 600.0

# Where each built-in tool's options are documented: its adapter's constructor.
_ADAPTER_CLASSES = {"demo": "DemoAdapter", "claude": "ClaudeAdapter", "aider": "AiderAdapter",
                    "command": "CommandAdapter", "repl": "ReplAdapter"}


class UsageError(Exception):
    """Bad input to the CLI: shown as one line, exit code 2."""


# ------------------------------------------------------------------------ run
def _tool_options(args: argparse.Namespace) -> dict[str, Any]:
    """Map the generic pass-through flags onto the chosen adapter's options."""
    options: dict[str, Any] = {}
    for item in args.option or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--option takes KEY=VALUE, got {item!r}")
        try:
            options[key] = json.loads(value)
        except ValueError:
            options[key] = value
    if args.model:
        options["model"] = args.model
    if args.cwd:
        options["cwd"] = args.cwd
    if args.extra_arg:
        options["extra_args"] = list(args.extra_arg)
    if args.api_base:
        if args.tool == "claude":
            env = dict(options.get("env") or {})
            env["ANTHROPIC_BASE_URL"] = args.api_base
            options["env"] = env
        else:
            options["api_base"] = args.api_base
    if args.tool in ("claude", "aider") and "cli_path" not in options:
        found = find_tool(args.tool)  # where `toolpool doctor` finds it
        if found:
            options["cli_path"] = found
    return options


def _read_prompts(args: argparse.Namespace) -> list[tuple[str, str]]:
    """[(where it came from, prompt)]: from each --prompt, then one per non-blank line of --prompts-file."""
    prompts = [(f"--prompt #{n}", p) for n, p in enumerate(args.prompt or [], 1)]
    if args.prompts_file:
        name = "stdin" if args.prompts_file == "-" else args.prompts_file
        try:
            if args.prompts_file == "-":
                data = sys.stdin.buffer.read()
            else:
                with open(args.prompts_file, "rb") as f:
                    data = f.read()
        except OSError as exc:
            raise UsageError(f"cannot read prompts from {name}: {exc.strerror or exc}") from None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise UsageError(f"{name} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
                             "save it as UTF-8") from None
        prompts += [(f"{name} line {n}", line.rstrip("\r")) for n, line in enumerate(text.split("\n"), 1)
                    if line.strip()]
        if not prompts:
            raise UsageError(f"no prompts: {name} is empty or blank; put one prompt per line in it")
    if not prompts:
        raise UsageError("no prompts: give --prompt TEXT (repeatable) or --prompts-file FILE (- for stdin)")
    return prompts


def _check_prompts(adapter: Any, tool: str, prompts: list[tuple[str, str]]) -> None:
    """Refuse what the tool cannot take before anything runs (the pool would refuse it per prompt)."""
    for where, prompt in prompts:
        try:
            adapter.encode(prompt)
        except (TypeError, ValueError) as exc:
            if "\n" in prompt and where.startswith("--prompt"):
                raise UsageError(f"{where} spans {prompt.count(chr(10)) + 1} lines, but the {tool} tool takes "
                                 "one line per prompt: pass each line as its own --prompt, or one per line in "
                                 "--prompts-file") from None
            raise UsageError(f"{where}: the {tool} tool cannot take this prompt: {exc}") from None


def _seconds(option: str, value: float | None) -> float | None:
    if value is not None and not (math.isfinite(value) and value > 0):
        raise UsageError(f"{option} takes a positive number of seconds, got {value!r}")
    return value


def _adapter_error(tool: str, exc: TypeError) -> str:
    """A TypeError from an adapter's constructor, said in terms of --option."""
    options: list[str] = []
    cls_name = _ADAPTER_CLASSES.get(tool)
    if cls_name:
        from . import adapters

        params = inspect.signature(getattr(adapters, cls_name).__init__).parameters
        options = [n for n, p in params.items() if n != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
    listed = f" (its options: {', '.join(options)})" if options else " (see docs/adapters.md)"
    unexpected = re.search(r"unexpected keyword argument '(\w+)'", str(exc))
    if unexpected:
        name = unexpected.group(1)
        return f"cannot set up tool {tool!r}: it has no option {name!r} (unexpected keyword argument {name!r}){listed}"
    missing = re.findall(r"'(\w+)'", str(exc)) if "missing" in str(exc) else []
    if missing:
        needed = ", ".join(f"--option {m}=..." for m in missing)
        return f"cannot set up tool {tool!r}: it needs {needed}{listed}"
    return f"cannot set up tool {tool!r}: {exc}{listed}"


def _record(prompt: str, position: int, fut: cf.Future[Response]) -> dict[str, Any]:
    rec: dict[str, Any] = {"n": position, "prompt": prompt}
    if fut.cancelled():
        rec.update(ok=False, error="cancelled", text=None, instance=None, timings=None)
        return rec
    exc = fut.exception()
    if exc is None:
        r = fut.result()
        rec.update(ok=not r.is_error, text=r.text, instance=r.index, timings=r.timings.as_dict(),
                   error="tool reported an error" if r.is_error else None)
        for key in ("session_id", "cost_usd", "tokens_sent", "tokens_received"):
            if getattr(r, key) is not None:
                rec[key] = getattr(r, key)
    else:
        rec.update(ok=False, text=None, instance=getattr(exc, "index", None), timings=None,
                   error=f"{type(exc).__name__}: {exc}")
    return rec


class _Progress:
    """tqdm on a terminal, plain lines otherwise (logs, CI)."""

    def __init__(self, total: int, stream: TextIO) -> None:
        self.total = total
        self.done = 0
        self.stream = stream
        self.bar = None
        if stream.isatty():
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, file=stream, unit="prompt", dynamic_ncols=True)
            except ImportError:  # pragma: no cover - tqdm is a dependency
                pass

    def update(self, rec: dict[str, Any]) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
            if not rec["ok"]:
                self.bar.write(f"prompt {rec['n']} failed: {rec['error']}")
            return
        status = "ok" if rec["ok"] else f"FAILED: {rec['error']}"
        where = f" instance {rec['instance']}" if rec["instance"] is not None else ""
        seconds = f" {rec['timings']['total']:.3f}s" if rec["timings"] else ""
        print(f"[{self.done}/{self.total}] prompt {rec['n']}{where}{seconds} {status}", file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _summary(records: Iterable[dict[str, Any]], total: int, elapsed: float, stream: TextIO) -> None:
    records = list(records)
    ok = sum(r["ok"] for r in records)
    failed = len(records) - ok
    times = sorted(r["timings"]["total"] for r in records if r["timings"])
    per_instance: dict[Any, int] = {}
    for r in records:
        if r["instance"] is not None:
            per_instance[r["instance"]] = per_instance.get(r["instance"], 0) + 1

    def pct(p: float) -> str:
        return f"{times[min(len(times) - 1, int(p * len(times)))]:.3f}s" if times else "-"

    rows = [("prompts", str(total)), ("succeeded", str(ok)), ("failed", str(failed)),
            ("not run", str(total - len(records))), ("wall time", f"{elapsed:.2f}s"),
            ("latency p50", pct(0.5)), ("latency p95", pct(0.95)), ("latency max", pct(1.0)),
            ("per instance", ", ".join(f"{k}: {v}" for k, v in sorted(per_instance.items())) or "-")]
    width = max(len(k) for k, _ in rows)
    print("-" * (width + 30), file=stream)
    for key, value in rows:
        print(f"{key:<{width}}  {value}", file=stream)


def _setup(args: argparse.Namespace) -> tuple[Any, list[tuple[str, str]]]:
    """The adapter and the prompts, or UsageError: everything checked before a process starts."""
    _seconds("--timeout", args.timeout)
    _seconds("--start-timeout", args.start_timeout)
    if args.cwd and not os.path.isdir(args.cwd):
        raise UsageError(f"--cwd {args.cwd}: no such directory")
    prompts = _read_prompts(args)
    try:
        options = _tool_options(args)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    try:
        adapter = create_adapter(args.tool, **options)
    except TypeError as exc:  # an option the adapter does not take, or one it needs
        raise UsageError(_adapter_error(args.tool, exc)) from None
    except ValueError as exc:
        raise UsageError(f"cannot set up tool {args.tool!r}: {exc}") from None
    _check_prompts(adapter, args.tool, prompts)
    return adapter, prompts


def cmd_run(args: argparse.Namespace) -> int:
    try:
        adapter, prompts = _setup(args)
    except UsageError as exc:
        print(f"toolpool: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        out = open(args.out, "w", encoding="utf-8") if args.out else sys.stdout
        if args.status_file:  # fail now, not after the first answer
            open(args.status_file, "a").close()
    except OSError as exc:
        print(f"toolpool: cannot write output: {exc}", file=sys.stderr)
        return EXIT_USAGE
    started = time.perf_counter()
    records: list[dict[str, Any]] = []
    interrupted = False
    pool: ToolProcessPool | None = None
    try:
        pool = ToolProcessPool(adapter, args.instances, start_timeout=args.start_timeout)
        with pool:
            interrupted = _run_prompts(pool, prompts, args, out, records)
    except KeyboardInterrupt:  # during start-up or shutdown
        interrupted = True
        print("\ntoolpool: interrupted", file=sys.stderr)
    except ToolNotFoundError as exc:
        print(f"toolpool: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ToolPoolError as exc:
        print(f"toolpool: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        if out is not sys.stdout:
            out.close()
        if pool is not None and args.status_file:
            _final_status(pool, args.status_file)
    _summary(records, len(prompts), time.perf_counter() - started, sys.stderr)
    if interrupted:
        return EXIT_INTERRUPTED
    return EXIT_OK if all(r["ok"] for r in records) and len(records) == len(prompts) else EXIT_FAILED


def _run_prompts(pool: ToolProcessPool, prompts: list[tuple[str, str]], args: argparse.Namespace, out: TextIO,
                 records: list[dict[str, Any]]) -> bool:
    """Submit every prompt, write records as they complete; True when Ctrl-C stopped it."""
    futures = {pool.submit(p, timeout=args.timeout): (n, p) for n, (_, p) in enumerate(prompts)}
    progress = _Progress(len(prompts), sys.stderr)
    try:
        for fut in cf.as_completed(futures):
            n, prompt = futures[fut]
            rec = _record(prompt, n, fut)
            records.append(rec)
            out.write(json.dumps(rec, ensure_ascii=False) + "\n")
            out.flush()
            progress.update(rec)
            if args.status_file:
                pool.dump_status(args.status_file)
    except KeyboardInterrupt:
        for fut in futures:
            fut.cancel()
        print("\ntoolpool: interrupted; stopping the pool and keeping finished results", file=sys.stderr)
        return True
    finally:
        progress.close()
    return False


def _final_status(pool: ToolProcessPool, path: str) -> None:
    """The end state (closed, final counts), written once the pool is shut down, even after Ctrl-C."""
    for _ in range(2):  # a second Ctrl-C while writing: write it again, it is quick
        try:
            pool.shutdown()
            pool.dump_status(path)
            return
        except KeyboardInterrupt:
            continue
        except OSError as exc:
            print(f"toolpool: cannot write the status file: {exc}", file=sys.stderr)
            return


# --------------------------------------------------------------------- doctor
def _version(path: str) -> str:
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30,
                             stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc.__class__.__name__})"
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0] if text else f"unknown (exit {out.returncode})"


def doctor_report() -> list[dict[str, Any]]:
    """What would work here: one entry per adapter with problems and fixes."""
    env = os.environ
    rows: list[dict[str, Any]] = [{"tool": "demo", "executable": sys.executable, "found": True,
                                   "version": f"built in (toolpool {__version__})", "problems": []}]
    claude = find_tool("claude")
    problems = []
    if not claude:
        problems.append("`claude` not found: npm install -g @anthropic-ai/claude-code (or set TOOLPOOL_CLAUDE)")
    if env.get("CLAUDECODE") or env.get("CLAUDE_CODE_ENTRYPOINT"):
        problems.append("running inside a Claude Code session (CLAUDECODE set): toolpool strips it for its "
                        "children, but other scripts you start may not")
    if not (env.get("ANTHROPIC_API_KEY") or env.get("ANTHROPIC_AUTH_TOKEN") or env.get("ANTHROPIC_BASE_URL")):
        problems.append("no ANTHROPIC_API_KEY: set it, log in with `claude`, or point ANTHROPIC_BASE_URL at "
                        "toolpool.testing.FakeAnthropicServer for offline runs")
    rows.append({"tool": "claude", "executable": claude, "found": bool(claude),
                 "version": _version(claude) if claude else None, "problems": problems})
    aider = find_tool("aider")
    problems = []
    if not aider:
        problems.append("`aider` not found: pipx install aider-chat (or set TOOLPOOL_AIDER)")
    if not (env.get("OPENAI_API_KEY") or env.get("ANTHROPIC_API_KEY") or env.get("OPENAI_API_BASE")):
        problems.append("no OPENAI_API_KEY / ANTHROPIC_API_KEY: aider needs a model key, or api_base pointing "
                        "at toolpool.testing.FakeOpenAIServer for offline runs")
    rows.append({"tool": "aider", "executable": aider, "found": bool(aider),
                 "version": _version(aider) if aider else None, "problems": problems})
    known = {r["tool"] for r in rows}
    for name in adapter_names():
        if name not in known:
            rows.append({"tool": name, "executable": None, "found": None,
                         "version": None, "problems": [] if name == "command" else ["custom adapter: not checked"],
                         "note": "runs the command you give it" if name == "command" else ""})
    return rows


def cmd_doctor(args: argparse.Namespace) -> int:
    rows = doctor_report()
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    for row in rows:
        found = {True: "found", False: "MISSING", None: "-"}[row["found"]]
        print(f"{row['tool']:<8} {found:<8} {row['version'] or ''}")
        if row["executable"]:
            print(f"         at {row['executable']}")
        for problem in row["problems"]:
            print(f"         ! {problem}")
        if row.get("note"):
            print(f"         {row['note']}")
    from . import containment  # which kill-the-whole-tree mechanism this machine allows, and why

    for line in containment.iter_lines(containment.describe()):
        print(line)
    return EXIT_OK


# --------------------------------------------------------------------- status
def cmd_status(args: argparse.Namespace) -> int:
    from .status import validation_errors

    try:
        with open(args.file, encoding="utf-8") as f:
            status = json.load(f)
    except (OSError, ValueError) as exc:
        print(f"toolpool: cannot read status file {args.file}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    errors = validation_errors(status)
    if errors:
        print(f"toolpool: {args.file} is not a valid toolpool status dump:", file=sys.stderr)
        for err in errors:
            print(f"  {err}", file=sys.stderr)
        return EXIT_USAGE
    h = status["health"]
    adapter = status["adapter"]
    print(f"tool {adapter['name']} ({adapter['transport']}): {h['total']} instances, {h['alive']} alive, "
          f"{h['busy']} busy, {h['idle']} idle, {h.get('fatal', 0)} fatal"
          f"{' (closed)' if status.get('closed') else ''}")
    header = ("#", "pid", "state", "requests", "restarts", "exit", "last error")
    rows = [(str(i["index"]), str(i["pid"] or "-"), i["state"], str(i["requests"]), str(i["restarts"]),
             "-" if i.get("last_exit_code") is None else str(i["last_exit_code"]),
             (i["last_error"] or "").splitlines()[0][:60] if i["last_error"] else "") for i in status["instances"]]
    widths = [max(len(r[c]) for r in [header, *rows]) for c in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return EXIT_OK


# ----------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="toolpool", description="Run a pool of interactive CLI tools.")
    parser.add_argument("--version", action="version", version=f"toolpool {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log to stderr (-vv: debug)")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="fan prompts over a pool, one JSON line per prompt")
    run.add_argument("--tool", default="demo", help=f"adapter name ({', '.join(adapter_names())}); default demo")
    run.add_argument("-n", "--instances", type=int, default=2, help="pool size (default 2)")
    run.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    run.add_argument("--prompts-file", help="file with one prompt per line, or - for stdin")
    run.add_argument("--out", help="write JSON lines here instead of stdout")
    run.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                     help="seconds per prompt, queueing included (default %(default)g)")
    run.add_argument("--start-timeout", type=float, default=None,
                     help="seconds for each instance to start (default: the tool's own, e.g. 30 for a REPL)")
    run.add_argument("--status-file", help="keep an atomic status dump here while running, and the end state "
                     "(closed, final counts) after the run")
    run.add_argument("--model", help="model name passed to the tool")
    run.add_argument("--cwd", help="working directory of the tool")
    run.add_argument("--api-base", help="API base URL (e.g. a local fake server)")
    run.add_argument("--extra-arg", action="append", help="extra argument for the tool (repeatable)")
    run.add_argument("--option", action="append", metavar="KEY=VALUE",
                     help="any adapter option, VALUE parsed as JSON when it can be (repeatable)")
    run.set_defaults(func=cmd_run)

    doctor = sub.add_parser("doctor", help="check which tools work here, and what would break them")
    doctor.add_argument("--json", action="store_true", help="machine-readable output")
    doctor.set_defaults(func=cmd_doctor)

    status = sub.add_parser("status", help="validate a status dump and show it as a table")
    status.add_argument("file")
    status.set_defaults(func=cmd_status)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.verbose:
        import logging

        logging.basicConfig(level=logging.DEBUG if args.verbose > 1 else logging.INFO, stream=sys.stderr,
                            format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if getattr(args, "instances", 1) < 1:
        print("toolpool: --instances must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    # Ctrl-C must reach the main thread as KeyboardInterrupt, also when started from a shell script.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
