"""The node side of :mod:`toolpool.ray`: what runs inside each node's Ray actor.

Kept apart from the driver so that it needs no Ray at import time (the actor
class is wrapped with ``ray.remote`` by the driver) and stays small:

- :class:`NodeHost`, the actor body: one local :class:`~toolpool.ToolProcessPool`
  per node, plus the leases a driver holds open on it;
- :class:`GroupReaper`, a watchdog process that kills the node's tool process
  groups when the actor dies without shutting its pool down (a hard kill, a
  lost raylet), so a node's tools never outlive it;
- the shipping of adapters and exceptions across processes.
"""

from __future__ import annotations

import collections
import contextlib
import importlib
import io
import os
import subprocess
import sys
import threading
import weakref
from collections.abc import Callable, Mapping
from typing import Any

from .adapters import Adapter, create_adapter
from .errors import ToolPoolError

#: Seconds a lease turn waits for the turns numbered before it to be sent.
TURN_ORDER_WAIT = 30.0

#: What a node answers: ("ok", value) or ("error", a packed exception).
Outcome = tuple[str, Any]

_LOCK_TYPES = (type(threading.Lock()), type(threading.RLock()))


# ------------------------------------------------------------------ adapters over the wire
def _fresh_lock(kind: str) -> Any:
    return threading.RLock() if kind == "rlock" else threading.Lock()


def _reduce_lock(lock: Any) -> tuple[Callable[[str], Any], tuple[str]]:
    # A lock means "this process's threads take turns": the node gets its own, unlocked.
    return _fresh_lock, ("rlock" if isinstance(lock, _LOCK_TYPES[1]) else "lock",)


def _reduce_finalizer(_: Any) -> tuple[Callable[[], None], tuple[()]]:
    # A finalizer cleans up something of the driver's (a temporary directory); the node has none.
    return type(None), ()


def pack_adapter(adapter: Adapter) -> bytes:
    """``adapter`` as bytes a node can rebuild it from.

    Adapters hold locks (and may hold finalizers of driver-side temporary
    directories), which plain pickling refuses: each becomes a fresh lock
    (or nothing) on the node.  Anything else that cannot travel (a running
    thread) raises TypeError naming the fix.
    """
    from ray import (
        cloudpickle,  # the pickler Ray itself uses, so the node reads what the driver wrote
    )

    reductions: dict[Any, Any] = {kind: _reduce_lock for kind in _LOCK_TYPES}
    reductions[weakref.finalize] = _reduce_finalizer

    table = collections.ChainMap(reductions, cloudpickle.CloudPickler.dispatch_table)
    shipping: Any = type("ShippingPickler", (cloudpickle.CloudPickler,), {"dispatch_table": table})
    buffer = io.BytesIO()
    pickler = shipping(buffer)
    try:
        pickler.dump(adapter)
    except Exception as exc:
        raise TypeError(f"the {adapter.name} adapter cannot be shipped to the cluster's nodes ({exc}); pass it by "
                        "name with adapter_options instead, so that each node builds its own") from exc
    return buffer.getvalue()


def build_adapter(spec: tuple[str, Any]) -> Adapter:
    """The adapter a driver shipped: ("name", (name, options)) or ("pickle", bytes)."""
    kind, payload = spec
    if kind == "name":
        name, options = payload
        return create_adapter(name, **dict(options))
    from ray import cloudpickle

    adapter = cloudpickle.loads(payload)
    if not isinstance(adapter, Adapter):
        raise TypeError(f"expected an Adapter, the driver shipped {type(adapter).__name__}")
    return adapter


# ------------------------------------------------------------------ exceptions over the wire
_PLAIN = (str, bytes, int, float, bool, type(None))


def pack_error(exc: BaseException) -> dict[str, Any]:
    """An exception as plain data: toolpool's exceptions take constructor
    arguments their pickled form does not carry, so they are rebuilt by hand."""
    attrs = {k: v for k, v in vars(exc).items() if isinstance(v, _PLAIN)}
    return {"module": type(exc).__module__, "name": type(exc).__qualname__, "message": str(exc), "attrs": attrs}


def unpack_error(packed: Mapping[str, Any], where: str = "") -> BaseException:
    """The exception :func:`pack_error` described, ``where`` appended to its message."""
    message = str(packed.get("message", "")) + (f" [{where}]" if where else "")
    try:
        cls = getattr(importlib.import_module(str(packed["module"])), str(packed["name"]))
    except (ImportError, AttributeError, KeyError):
        cls = None
    if not (isinstance(cls, type) and issubclass(cls, BaseException)):
        return ToolPoolError(f"{packed.get('name')}: {message}")
    exc = cls.__new__(cls)
    BaseException.__init__(exc, message)
    for key, value in dict(packed.get("attrs", {})).items():
        setattr(exc, key, value)
    return exc


# ------------------------------------------------------------------ the reaper
_REAPER_SOURCE = r"""
import os, signal, sys
groups = set()
for line in sys.stdin:
    word, _, pgid = line.partition(" ")
    if word == "add":
        groups.add(int(pgid))
    elif word == "del":
        groups.discard(int(pgid))
# stdin closed: the actor is gone (or shut down cleanly, with no groups left).
for pgid in groups:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass
"""


class GroupReaper:
    """A small child process holding the process groups of this node's tools.

    The actor tells it each group it starts and stops; when the actor dies in
    any way, the kernel closes the pipe, and the reaper kills what is left.
    Each tool leads its own process group, so its grandchildren go too.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc = subprocess.Popen([sys.executable, "-c", _REAPER_SOURCE], stdin=subprocess.PIPE,
                                      stdout=subprocess.DEVNULL, start_new_session=True, close_fds=True)

    def _say(self, line: str) -> None:
        with self._lock:
            stdin = self._proc.stdin
            if stdin is None or stdin.closed:
                return
            try:
                stdin.write(line.encode() + b"\n")
                stdin.flush()
            except OSError:
                pass  # the reaper died: nothing to tell, and the tool is still ours to stop

    def add(self, pgid: int) -> None:
        self._say(f"add {pgid}")

    def remove(self, pgid: int) -> None:
        self._say(f"del {pgid}")

    def close(self, timeout: float = 5.0) -> None:
        """Let the reaper go (it kills any group still registered) and reap it."""
        with self._lock:
            if self._proc.stdin is not None and not self._proc.stdin.closed:
                with contextlib.suppress(OSError):
                    self._proc.stdin.close()
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(timeout)


# ------------------------------------------------------------------ the actor body
class NodeHost:
    """One node's share of a :class:`toolpool.ray.RayToolPool`.

    Every method returns an :data:`Outcome` instead of raising, so the driver
    gets toolpool's own exceptions back intact.  Methods run on the actor's
    threads (a threaded actor): requests and lease turns block on their own
    thread, status calls are answered meanwhile.
    """

    def __init__(self) -> None:
        self._pool: Any = None
        self._reaper: GroupReaper | None = None
        self._leases: dict[str, tuple[contextlib.ExitStack, Any]] = {}
        self._lock = threading.Lock()
        self._pids: dict[int, int] = {}
        # A threaded actor starts calls in any order: lease turns carry a sequence number.
        self._turns = threading.Condition(self._lock)
        self._next_turn: dict[str, int] = {}

    def _node(self) -> str:
        import ray

        return str(ray.get_runtime_context().get_node_id())

    def start(self, adapter_spec: tuple[str, Any], count: int, options: Mapping[str, Any]) -> Outcome:
        """Build the local pool; ("ok", {"node", "pid", "health"}) once every instance started."""
        from .pool import ToolProcessPool

        try:
            adapter = build_adapter(adapter_spec)
            self._reaper = GroupReaper()
            self._pool = ToolProcessPool(adapter, count, on_event=self._track, **dict(options))
        except Exception as exc:  # noqa: BLE001 - every failure goes back to the driver, intact
            self._close_reaper()
            return "error", pack_error(exc)
        return "ok", {"node": self._node(), "pid": os.getpid(), "health": self._pool.check_health()}

    def _track(self, name: str, info: dict[str, Any]) -> None:
        # Runs on toolpool's threads: only a short pipe write, never a wait.
        reaper, index = self._reaper, info.get("index")
        if reaper is None or not isinstance(index, int):
            return
        if name == "spawned" and isinstance(info.get("pid"), int):
            old = self._pids.get(index)
            if old is not None:
                reaper.remove(old)
            self._pids[index] = info["pid"]
            reaper.add(info["pid"])
        elif name in ("exited", "stopped") and index in self._pids:
            reaper.remove(self._pids.pop(index))

    def _guard(self, call: Callable[[], Any]) -> Outcome:
        try:
            return "ok", call()
        except Exception as exc:  # noqa: BLE001 - every failure goes back to the driver, intact
            return "error", pack_error(exc)

    def run(self, prompt: str, timeout: float | None) -> Outcome:
        """One queued request on the local pool: its Response, with this node's id."""
        def answer() -> Any:
            response = self._pool.submit(prompt, timeout).result()
            response.node = self._node()
            return response
        return self._guard(answer)

    def health(self) -> Outcome:
        return self._guard(lambda: self._pool.check_health())

    def status(self) -> Outcome:
        return self._guard(lambda: self._pool.get_status())

    def stats(self) -> Outcome:
        return self._guard(lambda: self._pool.stats())

    # -- leases: held open across calls, by id ---------------------------------
    def lease_open(self, lease_id: str, timeout: float | None) -> Outcome:
        def take() -> int:
            stack = contextlib.ExitStack()
            lease = stack.enter_context(self._pool.lease(timeout))
            with self._lock:
                self._leases[lease_id] = (stack, lease)
            return int(lease.index)
        return self._guard(take)

    def _lease(self, lease_id: str) -> Any:
        held = self._leases.get(lease_id)  # a dict read: safe with or without the lock held
        if held is None:
            raise ToolPoolError(f"lease {lease_id} is not held on this node (released, or the node restarted); "
                                "take a new lease")
        return held[1]

    def _in_turn(self, lease_id: str, seq: int, how: str, prompt: str) -> Any:
        """Send ``prompt`` once every lower-numbered turn of the lease was sent; its Future."""
        with self._turns:
            # Bounded: a turn lost on its way must not stall the lease for good.
            self._turns.wait_for(lambda: self._next_turn.get(lease_id, 0) >= seq, TURN_ORDER_WAIT)
            try:
                return getattr(self._lease(lease_id), how)(prompt)
            finally:
                self._next_turn[lease_id] = max(seq, self._next_turn.get(lease_id, 0)) + 1
                self._turns.notify_all()

    def lease_turn(self, lease_id: str, seq: int, how: str, prompt: str) -> Outcome:
        """One turn on the lease, ``how`` = "send" (as ``Lease.send``) or "submit"; waits for its response."""
        if how not in ("send", "submit"):
            return "error", pack_error(ValueError(f"unknown lease turn {how!r}"))

        def answer() -> Any:
            response = self._in_turn(lease_id, seq, how, prompt).result()
            response.node = self._node()
            return response
        return self._guard(answer)

    def lease_interrupt(self, lease_id: str) -> Outcome:
        return self._guard(lambda: bool(self._lease(lease_id).interrupt()))

    def lease_status(self, lease_id: str) -> Outcome:
        return self._guard(lambda: self._lease(lease_id).status())

    def lease_close(self, lease_id: str) -> Outcome:
        with self._lock:
            held = self._leases.pop(lease_id, None)
            self._next_turn.pop(lease_id, None)
        if held is not None:
            return self._guard(held[0].close)
        return "ok", None

    # -- shutdown -------------------------------------------------------------------
    def shutdown(self, timeout: float) -> Outcome:
        with self._lock:
            leases, self._leases = list(self._leases.values()), {}
        for stack, _ in leases:
            with contextlib.suppress(Exception):  # a lease of a dead instance: nothing left to release
                stack.close()
        outcome: Outcome = "ok", None
        if self._pool is not None:
            outcome = self._guard(lambda: self._pool.shutdown(timeout))
        self._close_reaper()
        return outcome

    def _close_reaper(self) -> None:
        reaper, self._reaper = self._reaper, None
        if reaper is not None:
            reaper.close()
