"""Answering claude's control requests with Python callbacks, and building the ones we send.

With stream-json input claude can ask its client three things, each a
``control_request`` line that waits for a ``control_response`` with the same
``request_id``:

``can_use_tool``   may a tool run (sent with ``--permission-prompt-tool stdio``)?
``hook_callback``  a hook registered in the ``initialize`` request fired
``mcp_message``    a JSON-RPC message for an in-process ("sdk") MCP server

A :class:`ControlBroker` holds the callbacks for a whole pool.  The framer
hands each request to :meth:`ControlBroker.answer` on a pool worker thread,
outside every lock; the user's callback runs on one of the broker's own
threads with a deadline, so a callback that raises or never returns becomes a
deny (or an error answer) and the turn goes on.  Every answer is recorded for
the turn's :class:`~toolpool.response.Response` (``meta["control_calls"]``).
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("toolpool.adapters.claude")

#: Seconds a user callback may take before its request is answered deny/error.
DEFAULT_CALLBACK_TIMEOUT = 30.0

#: The hook events claude's control protocol can call back for.
HOOK_EVENTS = ("PreToolUse", "PostToolUse", "UserPromptSubmit", "Stop", "SubagentStop", "PreCompact",
               "Notification", "SessionStart", "SessionEnd")

#: The MCP protocol revision our in-process servers speak.
MCP_PROTOCOL_VERSION = "2024-11-05"


@dataclass(frozen=True)
class Allow:
    """Let the tool run; ``updated_input`` replaces its input when given."""

    updated_input: dict[str, Any] | None = None


@dataclass(frozen=True)
class Deny:
    """Refuse the tool; ``message`` goes to the model.  ``interrupt`` also stops the turn."""

    message: str = "denied by the toolpool permission callback"
    interrupt: bool = False


@dataclass(frozen=True)
class PermissionContext:
    """What a ``can_use_tool`` callback knows besides the tool: which instance asked, and the raw request."""

    instance: int
    tool_use_id: str | None
    suggestions: list[Any]
    request: dict[str, Any]


CanUseTool = Callable[[str, dict[str, Any], PermissionContext], Allow | Deny]


@dataclass(frozen=True)
class HookContext:
    """Which instance a hook fired in, and the raw ``hook_callback`` request."""

    instance: int
    event: str
    request: dict[str, Any]


#: ``(hook_input, tool_use_id, context) -> output`` (the CLI's hook output JSON, or None for "no opinion").
HookCallback = Callable[[dict[str, Any], str | None, HookContext], dict[str, Any] | None]


@dataclass(frozen=True)
class Hook:
    """A Python callback for one of claude's hook events.

    ``matcher``: claude's matcher for the event (e.g. ``"Bash"`` or
    ``"Write|Edit"`` for tool events; None matches everything).
    ``timeout``: seconds claude itself waits for the hook.
    """

    event: str
    callback: HookCallback
    matcher: str | None = None
    timeout: float | None = None

    def __post_init__(self) -> None:
        if self.event not in HOOK_EVENTS:
            raise ValueError(f"unknown hook event {self.event!r}; use one of {', '.join(HOOK_EVENTS)}")
        if not callable(self.callback):
            raise TypeError("Hook callback must be callable(hook_input, tool_use_id, context)")


def deny_tool_hook(reason: str) -> dict[str, Any]:
    """The PreToolUse hook output that blocks the tool, with ``reason`` for the model."""
    return {"hookSpecificOutput": {"hookEventName": "PreToolUse", "permissionDecision": "deny",
                                   "permissionDecisionReason": reason}}


@dataclass(frozen=True)
class Tool:
    """A plain Python function the model can call: ``function(arguments) -> str | dict | list``.

    A str result is the tool's text; a dict with ``"content"`` is passed as
    the MCP result as-is; anything else is sent as JSON text.  A function
    that raises gives the model an error result naming the exception.
    """

    name: str
    description: str
    input_schema: Mapping[str, Any]
    function: Callable[[dict[str, Any]], Any]


def tool(name: str, description: str,
         input_schema: Mapping[str, Any]) -> Callable[[Callable[[dict[str, Any]], Any]], Tool]:
    """Decorator: declare ``function(arguments)`` as a :class:`Tool`."""
    def wrap(function: Callable[[dict[str, Any]], Any]) -> Tool:
        return Tool(name, description, dict(input_schema), function)
    return wrap


@dataclass(frozen=True)
class ToolServer:
    """In-process tools served to claude as an MCP server named ``name`` (no extra process).

    The model sees them as ``mcp__<name>__<tool>``; allow them with
    ``allowed_tools`` or a ``can_use_tool`` callback.
    """

    name: str
    tools: Sequence[Tool] = field(default_factory=tuple)
    version: str = "1.0.0"

    def tool_names(self) -> list[str]:
        return [f"mcp__{self.name}__{t.name}" for t in self.tools]


# -- requests we send ---------------------------------------------------------------
def interrupt_request() -> dict[str, Any]:
    return {"subtype": "interrupt"}


def set_permission_mode_request(mode: str) -> dict[str, Any]:
    return {"subtype": "set_permission_mode", "mode": mode}


def set_model_request(model: str | None) -> dict[str, Any]:
    return {"subtype": "set_model", "model": model}


class ControlError(RuntimeError):
    """claude answered one of our control requests with an error (the message is claude's)."""


def control_line(request_id: str, request: Mapping[str, Any]) -> bytes:
    """One ``control_request`` stdin line."""
    return json.dumps({"type": "control_request", "request_id": request_id,
                       "request": dict(request)}).encode("ascii") + b"\n"


def response_line(request_id: Any, response: dict[str, Any] | None = None,
                  error: str | None = None) -> bytes:
    """One ``control_response`` stdin line: success with ``response``, or an error."""
    body: dict[str, Any] = {"subtype": "error", "request_id": request_id, "error": error} if error is not None \
        else {"subtype": "success", "request_id": request_id, "response": response or {}}
    return json.dumps({"type": "control_response", "response": body}).encode("ascii") + b"\n"


class _Workers:
    """A few daemon threads running user callbacks, so a callback that never returns costs a thread, not a turn.

    Owned by the broker, which joins them (with a bound) in :meth:`close`.
    """

    def __init__(self, count: int, backlog: int = 256) -> None:
        self._count = count
        self._jobs: queue.Queue[tuple[cf.Future[Any], Callable[[], Any]] | None] = queue.Queue(backlog)
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._closed = False

    def submit(self, fn: Callable[[], Any]) -> cf.Future[Any]:
        future: cf.Future[Any] = cf.Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("the control broker is closed")
            if len(self._threads) < self._count:  # grown on demand, up to count
                thread = threading.Thread(target=self._run, name=f"toolpool-claude-callback-{len(self._threads)}",
                                          daemon=True)
                self._threads.append(thread)
                thread.start()
        self._jobs.put_nowait((future, fn))  # queue.Full: too many callbacks stuck; the caller answers error
        return future

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            future, fn = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except BaseException as exc:  # reported to the waiting request, which answers deny/error
                future.set_exception(exc)

    def close(self, timeout: float) -> None:
        with self._lock:
            self._closed = True
            threads = list(self._threads)
        for _ in threads:
            try:
                self._jobs.put_nowait(None)
            except queue.Full:
                break
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        stuck = [t.name for t in threads if t.is_alive()]
        if stuck:
            log.warning("claude callbacks still running at close (left as daemon threads): %s", ", ".join(stuck))


class ControlBroker:
    """One pool's answers to claude's control requests.  See the module docs.

    ``callback_timeout``: seconds any one callback may take; past it the
    request is answered deny (``can_use_tool``) or error (hooks, tools) and
    the callback's result, when it finally comes, is dropped.
    """

    def __init__(self, *, can_use_tool: CanUseTool | None = None, hooks: Sequence[Hook] = (),
                 tool_servers: Sequence[ToolServer] = (), callback_timeout: float = DEFAULT_CALLBACK_TIMEOUT,
                 workers: int = 4) -> None:
        if can_use_tool is not None and not callable(can_use_tool):
            raise TypeError("can_use_tool must be callable(tool_name, tool_input, context) -> Allow | Deny")
        if not callback_timeout > 0:
            raise ValueError(f"callback_timeout must be > 0 seconds, got {callback_timeout!r}")
        names = [s.name for s in tool_servers]
        if len(set(names)) != len(names):
            raise ValueError(f"tool server names must be unique, got {names}")
        self.can_use_tool = can_use_tool
        self.hooks = list(hooks)
        self.tool_servers = {s.name: s for s in tool_servers}
        self.callback_timeout = float(callback_timeout)
        self._hook_ids = {f"toolpool_hook_{n}": hook for n, hook in enumerate(self.hooks)}
        self._workers = _Workers(max(1, workers))

    @property
    def active(self) -> bool:
        return bool(self.can_use_tool or self.hooks or self.tool_servers)

    # -- what the adapter puts on the command line and in initialize -------------------
    def initialize_request(self) -> dict[str, Any]:
        """The ``initialize`` request, with our hooks registered by callback id."""
        config: dict[str, list[dict[str, Any]]] = {}
        for callback_id, hook in self._hook_ids.items():
            entry: dict[str, Any] = {"matcher": hook.matcher, "hookCallbackIds": [callback_id]}
            if hook.timeout is not None:
                entry["timeout"] = hook.timeout
            config.setdefault(hook.event, []).append(entry)
        request: dict[str, Any] = {"subtype": "initialize"}
        if config:
            request["hooks"] = config
        return request

    def mcp_config(self) -> str | None:
        """The ``--mcp-config`` JSON declaring our in-process servers, or None."""
        if not self.tool_servers:
            return None
        return json.dumps({"mcpServers": {name: {"type": "sdk", "name": name} for name in self.tool_servers}})

    # -- answering -----------------------------------------------------------------------
    def answer(self, instance: int, message: Mapping[str, Any]) -> tuple[bytes, dict[str, Any]]:
        """The ``control_response`` line for one ``control_request``, and a record of what was decided.

        Never raises and never takes much longer than ``callback_timeout``.
        """
        request_id = message.get("request_id")
        request = message.get("request")
        request = dict(request) if isinstance(request, Mapping) else {}
        subtype = request.get("subtype")
        started = time.monotonic()
        record: dict[str, Any] = {"kind": subtype, "request_id": request_id}
        try:
            if subtype == "can_use_tool":
                body, error = self._permission(instance, request, record)
            elif subtype == "hook_callback":
                body, error = self._hook(instance, request, record)
            elif subtype == "mcp_message":
                body, error = self._mcp(request, record), None
            else:
                body, error = None, f"toolpool: no handler for control request {subtype!r}"
        except Exception as exc:  # a bug of ours must still answer, or claude waits forever
            log.exception("claude control request %r failed", subtype)
            body, error = None, f"toolpool: {type(exc).__name__}: {exc}"
        if error is not None:
            record["error"] = error
        record["seconds"] = round(time.monotonic() - started, 6)
        return response_line(request_id, body, error), record

    def _call(self, what: str, fn: Callable[[], Any]) -> tuple[Any, str | None]:
        """Run a user callback with the deadline: (result, None) or (None, why it gave none)."""
        try:
            future = self._workers.submit(fn)
        except (RuntimeError, queue.Full) as exc:
            return None, f"{what} could not run ({exc or 'too many callbacks still running'})"
        try:
            return future.result(self.callback_timeout), None
        except cf.TimeoutError:
            future.cancel()
            return None, f"{what} did not answer within {self.callback_timeout:g}s (callback_timeout)"
        except Exception as exc:
            log.warning("%s raised %s: %s", what, type(exc).__name__, exc)
            return None, f"{what} raised {type(exc).__name__}: {exc}"

    def _permission(self, instance: int, request: dict[str, Any],
                    record: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
        name = str(request.get("tool_name"))
        tool_input = _dict(request.get("input"))
        record.update(tool_name=name, input=tool_input, tool_use_id=request.get("tool_use_id"))
        callback = self.can_use_tool
        if callback is None:
            decision: Allow | Deny = Deny("no can_use_tool callback is configured in toolpool")
        else:
            context = PermissionContext(instance, request.get("tool_use_id"),
                                        list(request.get("permission_suggestions") or []), request)
            result, why = self._call("can_use_tool", lambda: callback(name, dict(tool_input), context))
            if why is None and not isinstance(result, (Allow, Deny)):
                why = f"can_use_tool returned {type(result).__name__}, not Allow or Deny"
            decision = Deny(f"toolpool refused the tool: {why}") if why is not None else result
            if why is not None:
                record["callback_error"] = why
        if isinstance(decision, Allow):
            record["decision"] = "allow"
            updated = decision.updated_input if decision.updated_input is not None else tool_input
            if decision.updated_input is not None:
                record["updated_input"] = updated
            return {"behavior": "allow", "updatedInput": updated}, None
        record.update(decision="deny", message=decision.message, interrupt=decision.interrupt)
        body: dict[str, Any] = {"behavior": "deny", "message": decision.message}
        if decision.interrupt:
            body["interrupt"] = True
        return body, None

    def _hook(self, instance: int, request: dict[str, Any],
              record: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
        callback_id = request.get("callback_id")
        hook = self._hook_ids.get(str(callback_id))
        hook_input = _dict(request.get("input"))
        record.update(callback_id=callback_id, event=hook.event if hook else None,
                      tool_name=hook_input.get("tool_name"))
        if hook is None:
            return None, f"toolpool: no hook callback {callback_id!r}"
        context = HookContext(instance, hook.event, request)
        result, why = self._call(f"hook {hook.event}",
                                 lambda: hook.callback(dict(hook_input), request.get("tool_use_id"), context))
        if why is not None:
            return None, why
        if result is not None and not isinstance(result, dict):
            return None, f"hook {hook.event} returned {type(result).__name__}, not a dict or None"
        record["output"] = result or {}
        return result or {}, None

    def _mcp(self, request: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
        server_name = request.get("server_name")
        message = _dict(request.get("message"))
        method, msg_id = message.get("method"), message.get("id")
        record.update(server=server_name, method=method)
        server = self.tool_servers.get(str(server_name))

        def reply(result: dict[str, Any] | None = None, code: int = 0, error: str = "") -> dict[str, Any]:
            body: dict[str, Any] = {"jsonrpc": "2.0", "id": msg_id}
            if code:
                record["error"] = error
                body["error"] = {"code": code, "message": error}
            else:
                body["result"] = result or {}
            return {"mcp_response": body}

        if server is None:
            return reply(code=-32601, error=f"no in-process MCP server named {server_name!r}")
        if method == "initialize":
            return reply({"protocolVersion": MCP_PROTOCOL_VERSION, "capabilities": {"tools": {}},
                          "serverInfo": {"name": server.name, "version": server.version}})
        if method in ("notifications/initialized", "ping") or str(method).startswith("notifications/"):
            return reply({})
        if method == "tools/list":
            return reply({"tools": [{"name": t.name, "description": t.description,
                                     "inputSchema": dict(t.input_schema)} for t in server.tools]})
        if method == "tools/call":
            params = _dict(message.get("params"))
            name, arguments = params.get("name"), params.get("arguments") or {}
            record.update(tool=name, input=arguments)
            found = next((t for t in server.tools if t.name == name), None)
            if found is None:
                return reply(code=-32602, error=f"server {server.name!r} has no tool {name!r}")
            result, why = self._call(f"tool {name}", lambda: found.function(dict(arguments)))
            if why is not None:
                record["error"] = why
                return reply({"content": [{"type": "text", "text": why}], "isError": True})
            content = _tool_content(result)
            record["result"] = content
            return reply(content)
        return reply(code=-32601, error=f"method {method!r} is not supported by toolpool's in-process MCP server")

    def close(self, timeout: float = 2.0) -> None:
        self._workers.close(timeout)


def _dict(value: Any) -> dict[str, Any]:
    """``value`` if it is a dict (claude's JSON may carry anything), else an empty one."""
    return value if isinstance(value, dict) else {}


def _tool_content(result: Any) -> dict[str, Any]:
    if isinstance(result, dict) and "content" in result:
        return result
    text = result if isinstance(result, str) else json.dumps(result, default=str)
    return {"content": [{"type": "text", "text": text}]}


def send_control(instance: Any, request: Mapping[str, Any], timeout: float) -> dict[str, Any]:
    """Send a control request of ours to a claude instance's process and wait for claude's answer.

    A stand-in until the core offers ``Instance.control(request, timeout)``
    (which should do exactly this under its own API): it registers the request
    with the process's framer (:meth:`ClaudeFramer.begin_control`) under the
    instance lock, writes the line, and waits at most ``timeout`` seconds.
    Raises :class:`ControlError` when claude refuses, TimeoutError when it does
    not answer in time, RuntimeError when no claude process is running.
    """
    with instance._lock:  # noqa: SLF001 (stand-in for the core method; see the docstring)
        proc = instance._proc  # noqa: SLF001
        begin = getattr(getattr(proc, "framer", None), "begin_control", None)
        if proc is None or begin is None:
            raise RuntimeError(f"instance {instance.index} has no running claude process to send a control "
                               "request to (mode='session' needed)")
        future, data = begin(request)
    instance._write(proc, data)  # noqa: SLF001
    try:
        result: dict[str, Any] = future.result(timeout)
    except cf.TimeoutError:
        raise TimeoutError(f"claude (instance {instance.index}) did not answer the control request "
                           f"{request.get('subtype')!r} within {timeout}s") from None
    return result
