"""ToolProcessPool: N supervised tool instances behind one thread-safe object."""

from __future__ import annotations

import atexit
import concurrent.futures as cf
import logging
import threading
import time
import weakref
from typing import Any, Dict, List, Mapping, Optional, Union

from .adapters import Adapter, create_adapter
from .errors import PoolClosed
from .instance import Instance
from .response import Response
from .states import State

log = logging.getLogger("toolpool.pool")

STATUS_SCHEMA_VERSION = 1

_live_pools: "weakref.WeakSet[ToolProcessPool]" = weakref.WeakSet()


@atexit.register
def _shutdown_forgotten_pools() -> None:
    """A pool the program forgot to shut down is cleaned up at interpreter exit."""
    for pool in list(_live_pools):
        try:
            pool.shutdown(timeout=2.0)
        except Exception:  # pragma: no cover - best effort at exit
            pass


class ToolProcessPool:
    """A pool of ``count`` long-lived tool processes.

    ``adapter`` is an :class:`~toolpool.adapters.Adapter` or a registered name
    (``"demo"``, ``"claude"``, ``"aider"``...), built with ``adapter_options``.
    The constructor spawns every instance in parallel and returns when all
    are ready; it raises :class:`SpawnError` / :class:`ToolNotFoundError`
    (after stopping whatever it started) if any fails.  Use it as a context
    manager, or call :meth:`shutdown`.  Every method is thread-safe.
    """

    def __init__(self, adapter: Union[Adapter, str], count: int = 1, *,
                 adapter_options: Optional[Mapping[str, Any]] = None,
                 start_timeout: Optional[float] = None) -> None:
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"count must be a positive integer, got {count!r}")
        if isinstance(adapter, str):
            adapter = create_adapter(adapter, **dict(adapter_options or {}))
        elif adapter_options:
            raise ValueError("adapter_options only applies when adapter is given by name")
        if not isinstance(adapter, Adapter):
            raise TypeError(f"adapter must be an Adapter or a registered name, got {type(adapter).__name__}")
        self.adapter = adapter
        self.created_at = time.time()
        self._lock = threading.Lock()
        self._closed = False
        self._instances: List[Instance] = [Instance(adapter, i, self._on_instance_event) for i in range(count)]
        _live_pools.add(self)
        try:
            self._start_all(self._instances, start_timeout)
        except BaseException:
            self.shutdown(timeout=2.0)
            raise

    # --------------------------------------------------------------- startup
    @staticmethod
    def _start_all(instances: List[Instance], timeout: Optional[float]) -> None:
        """Start instances in parallel; raise the first failure after all finished."""
        errors: List[BaseException] = []

        def start(inst: Instance) -> None:
            try:
                inst.start(timeout)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=start, args=(inst,), name=f"toolpool-start-{inst.index}", daemon=True)
                   for inst in instances]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]

    def _on_instance_event(self, instance: Instance, event: str, info: Dict[str, Any]) -> None:
        pass

    # ---------------------------------------------------------- by index
    def _get(self, index: int) -> Instance:
        if self._closed:
            raise PoolClosed("the pool has been shut down")
        if isinstance(index, bool) or not isinstance(index, int):
            raise TypeError(f"instance index must be an int, got {type(index).__name__}")
        if not 0 <= index < len(self._instances):
            raise IndexError(f"instance index {index} out of range: the pool has {len(self._instances)} instances")
        return self._instances[index]

    def send_prompt(self, index: int, prompt: str, **kwargs: Any) -> "cf.Future[Response]":
        """Send ``prompt`` to instance ``index`` and return at once.

        The returned Future resolves to the :class:`Response` (the same one
        :meth:`read_response` returns).  Raises ValueError for a prompt the
        adapter rejects, :class:`InstanceBusy` if the instance has not answered
        its previous prompt, :class:`InstanceUnavailable` if it is not running.
        """
        return self._get(index).send(prompt, **kwargs)

    def read_response(self, index: int, timeout: Optional[float] = None) -> Response:
        """Wait up to ``timeout`` seconds for instance ``index``'s pending response.

        Raises :class:`ResponseTimeout` (the response stays pending),
        :class:`InstanceCrashed` at once if the process dies, or the adapter's
        error (e.g. :class:`ResponseTooLarge`).
        """
        return self._get(index).read(timeout)

    def ask(self, index: int, prompt: str, timeout: Optional[float] = None, **kwargs: Any) -> Response:
        """:meth:`send_prompt` then :meth:`read_response`."""
        return self._get(index).ask(prompt, timeout, **kwargs)

    def interrupt(self, index: int) -> bool:
        """Ask instance ``index`` to cancel its current turn (False if idle)."""
        return self._get(index).interrupt()

    def restart_instance(self, index: int, timeout: Optional[float] = None) -> None:
        """Replace instance ``index``'s process with a new one; return when it is ready.

        A request pending on it fails with :class:`InstanceUnavailable`.
        """
        self._get(index).restart(timeout)

    # ---------------------------------------------------------- health & status
    @property
    def size(self) -> int:
        return len(self._instances)

    def instances(self) -> List[Instance]:
        return list(self._instances)

    def check_health(self) -> Dict[str, Any]:
        """Counts of instances by condition; ``healthy`` is True when all are alive."""
        states = [inst.state for inst in self._instances]
        alive = sum(s in (State.STARTING, State.IDLE, State.BUSY) for s in states)
        health = {
            "total": len(states),
            "alive": alive,
            "dead": len(states) - alive,
            "busy": states.count(State.BUSY),
            "idle": states.count(State.IDLE),
            "starting": states.count(State.STARTING),
            "fatal": states.count(State.FATAL),
            "closed": self._closed,
        }
        health["healthy"] = not self._closed and alive == len(states)
        health["degraded"] = not self._closed and 0 < alive < len(states)
        return health

    def get_status(self) -> Dict[str, Any]:
        """A JSON-safe snapshot valid against ``schema/pool_status.schema.json``."""
        return {
            "schema_version": STATUS_SCHEMA_VERSION,
            "generated_at": time.time(),
            "created_at": self.created_at,
            "closed": self._closed,
            "adapter": self.adapter.describe(),
            "health": self.check_health(),
            "instances": [inst.status() for inst in self._instances],
        }

    # ---------------------------------------------------------------- shutdown
    def shutdown(self, timeout: float = 5.0) -> None:
        """Stop every instance (in parallel) and release everything.  Idempotent.

        Per instance: close stdin, short grace, SIGTERM to its process group,
        grace, SIGKILL, reap; reader threads joined, descriptors closed.
        Requests still pending fail with :class:`InstanceUnavailable`.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
        _live_pools.discard(self)
        threads = [threading.Thread(target=inst.stop, args=(timeout,), name=f"toolpool-stop-{inst.index}",
                                    daemon=True) for inst in self._instances]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.adapter.close()
        log.info("pool shut down (%d instances)", len(self._instances))

    close = shutdown

    def __enter__(self) -> "ToolProcessPool":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        h = self.check_health()
        return f"<ToolProcessPool {self.adapter.name} x{h['total']} alive={h['alive']} busy={h['busy']}>"
