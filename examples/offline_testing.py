"""Testing your own toolpool script offline, with toolpool.testing's fake LLM server.

Run:  python examples/offline_testing.py

Suppose your script triages issues with Claude Code: ``triage(pool, issues)``
below asks one question per issue and parses the answer.  To test it without
an API key, tokens or network, start a
:class:`toolpool.testing.FakeAnthropicServer` and point the real ``claude`` at
it (``ANTHROPIC_BASE_URL``).  The fake lets a test:

* decide the replies: ``script(...)`` queues replies in the order requests
  arrive, and a ``reply=`` function answers from the request itself (better
  when several instances run at once, since the arrival order is not fixed);
* see what was sent: ``server.requests`` (``user_text``, ``model``, ``messages``);
* inject failures: ``fail_next(status)``; slow answers: ``set_delay`` or ``Reply(delay=...)``.

The checks are plain functions with asserts, run here by ``main()``; in a
pytest suite the server and pool would be module-scoped fixtures and each
test would start with ``server.reset()``.  Without ``claude`` the example
says so and exits 0.
"""

from __future__ import annotations

import sys
import tempfile

from toolpool import ResponseTimeout, ToolProcessPool
from toolpool.adapters import ClaudeAdapter
from toolpool.testing import FakeAnthropicServer, RecordedRequest, Reply, find_tool


# --------------------------------------------------------------- the code under test
def triage(pool: ToolProcessPool, issues: list[str], timeout: float = 60) -> dict[str, str]:
    """Label each issue "bug", "feature" or "unknown" (on an error or an unclear answer)."""
    prompts = [f"Answer with one word, bug or feature. Issue: {issue}" for issue in issues]
    labels = {}
    for issue, result in zip(issues, pool.map(prompts, timeout=timeout, return_exceptions=True), strict=True):
        if isinstance(result, Exception) or result.is_error:
            labels[issue] = "unknown"
            continue
        word = result.text.strip().lower().rstrip(".")
        labels[issue] = word if word in ("bug", "feature") else "unknown"
    return labels


# --------------------------------------------------------------------- the checks
def check_scripted_replies(server: FakeAnthropicServer, pool: ToolProcessPool) -> None:
    server.reset()
    server.script("Bug.", "feature")  # used in arrival order: one prompt at a time here
    assert triage(pool, ["crash on start"]) == {"crash on start": "bug"}
    assert triage(pool, ["add dark mode"]) == {"add dark mode": "feature"}


def check_reply_function_and_recorded_requests(server: FakeAnthropicServer, pool: ToolProcessPool) -> None:
    server.reset()
    issues = ["segfault in parser", "please support YAML", "typo crash in --help", "new export format"]
    labels = triage(pool, issues)
    assert labels == {"segfault in parser": "bug", "please support YAML": "feature",
                      "typo crash in --help": "bug", "new export format": "feature"}, labels
    sent = sorted(r.user_text for r in server.requests if r.path == "/v1/messages")
    assert sent == sorted(f"Answer with one word, bug or feature. Issue: {i}" for i in issues), sent
    assert all(r.stream for r in server.requests if r.path == "/v1/messages")  # claude always streams


def check_api_error_is_handled(server: FakeAnthropicServer, pool: ToolProcessPool) -> None:
    server.reset()
    server.fail_next(status=400)  # claude does not retry a 400: the turn ends with is_error=True
    assert triage(pool, ["crash when saving"]) == {"crash when saving": "unknown"}
    assert triage(pool, ["crash when saving"]) == {"crash when saving": "bug"}  # the next one works


def check_timeout_is_handled(server: FakeAnthropicServer, pool: ToolProcessPool) -> None:
    server.reset()
    server.script(Reply("bug", delay=30))  # far slower than the caller's deadline
    assert triage(pool, ["slow one"], timeout=2) == {"slow one": "unknown"}
    try:
        pool.submit("is anyone there", timeout=0.001).result()
    except ResponseTimeout as exc:  # what triage() turned into "unknown" above
        assert exc.phase in ("queue", "response")


def fake_model(request: RecordedRequest) -> str:
    """Deterministic answers computed from the request: independent of arrival order."""
    return "bug" if "crash" in request.user_text or "segfault" in request.user_text else "feature"


def main() -> int:
    claude = find_tool("claude")
    if claude is None:
        print("SKIPPED: claude (Claude Code) not found: set TOOLPOOL_CLAUDE, put claude on PATH, "
              "or run scripts/install-real-tools.sh")
        return 0
    checks = [check_scripted_replies, check_reply_function_and_recorded_requests, check_api_error_is_handled,
              check_timeout_is_handled]
    with FakeAnthropicServer(reply=fake_model) as server, tempfile.TemporaryDirectory() as workdir:
        # max_retries=0: an injected 5xx fails at once instead of being retried for minutes.
        adapter = ClaudeAdapter(cli_path=claude, cwd=workdir, no_session_persistence=True, max_retries=0,
                                env={"ANTHROPIC_BASE_URL": server.url, "ANTHROPIC_API_KEY": "sk-fake-test"})
        with ToolProcessPool(adapter, count=2) as pool:
            failed = 0
            for check in checks:
                try:
                    check(server, pool)
                    print(f"PASS {check.__name__}")
                except AssertionError as exc:
                    failed += 1
                    print(f"FAIL {check.__name__}: {exc}")
            print(f"{len(checks) - failed} of {len(checks)} checks passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
