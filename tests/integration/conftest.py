"""Fixtures locating the real CLI tools the integration tests drive.

Each tool is looked up in this order: its environment variable (``TOOLPOOL_CLAUDE``,
``TOOLPOOL_AIDER``), PATH, then where ``scripts/install-real-tools.sh`` puts it
(``$TOOLPOOL_TOOLS_DIR``, default ``~/.cache/toolpool/real-tools``).  A missing
tool skips its tests locally and fails them in CI (``CI=true``), where a silent
skip would hide a broken install.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator

import pytest

from toolpool.testing import find_tool

INSTALL_HINT = "run scripts/install-real-tools.sh"


def _require(tool: str, path: str | None, env_var: str) -> str:
    if path is not None:
        return path
    why = f"real {tool} not installed: {INSTALL_HINT}"
    if os.environ.get(env_var):
        why = f"{env_var}={os.environ[env_var]!r} is not an executable file; {INSTALL_HINT} or fix {env_var}"
    if os.environ.get("CI") == "true":
        pytest.fail(why, pytrace=False)
    pytest.skip(why)


@pytest.fixture(scope="session")
def claude_path() -> str:
    """Absolute path of the real ``claude`` (Claude Code) executable."""
    return _require("claude", find_tool("claude"),
                    "TOOLPOOL_CLAUDE")


@pytest.fixture(scope="session")
def aider_path() -> str:
    """Absolute path of the real ``aider`` executable."""
    return _require("aider", find_tool("aider"), "TOOLPOOL_AIDER")


class ProxyTrap:
    """A fake HTTP(S) proxy on 127.0.0.1 that records and drops every connection.

    Point ``HTTP_PROXY``/``HTTPS_PROXY`` at :attr:`url` (with ``NO_PROXY`` for
    127.0.0.1): any attempt of a tool to reach a host other than the local fake
    server lands here instead of leaving the machine.
    """

    def __init__(self) -> None:
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.05)  # how fast close() is noticed
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self.requests: list[bytes] = []  # the first bytes of each connection (e.g. b"CONNECT host:443 ...")
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="proxy-trap", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._closing.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(0.5)
                try:
                    self.requests.append(conn.recv(200))
                except OSError:
                    self.requests.append(b"")

    def env(self) -> dict:
        return {"HTTP_PROXY": self.url, "HTTPS_PROXY": self.url, "http_proxy": self.url, "https_proxy": self.url,
                "ALL_PROXY": self.url, "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}

    def close(self) -> None:
        self._closing.set()
        self._thread.join(5.0)
        self._sock.close()


@pytest.fixture
def proxy_trap() -> Iterator[ProxyTrap]:
    """A :class:`ProxyTrap`; the test fails if anything tried to go through it."""
    trap = ProxyTrap()
    yield trap
    trap.close()
    assert not trap.requests, f"a tool tried to reach a non-local host: {trap.requests}"
