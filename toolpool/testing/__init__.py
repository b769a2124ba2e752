"""Offline fake LLM servers for testing scripts that drive CLI tools, without spending tokens.

Both servers run in-process on ``127.0.0.1`` with only the standard library, answer
deterministically (by default ``"ECHO: <first line of the last user message>"``) and record
every request they receive::

    from toolpool.testing import FakeAnthropicServer, FakeOpenAIServer, Reply

    with FakeAnthropicServer() as server:          # for Claude Code: ANTHROPIC_BASE_URL=server.url
        server.script("first answer", Reply("slow answer", delay=2.0))
        server.fail_next(status=529)               # the next request gets an "overloaded" error
        ...
        server.wait_for_requests(1, timeout=10, path="/v1/messages")

    with FakeOpenAIServer() as server:             # for aider: --openai-api-base server.url + "/v1"
        ...

See :class:`FakeAnthropicServer` and :class:`FakeOpenAIServer` (controls are documented on
their shared base, :class:`FakeLLMServer`).
"""

from ._http import FakeLLMServer, RecordedRequest, Reply, last_user_text
from .fake_anthropic import FakeAnthropicServer
from .fake_openai import FakeOpenAIServer
from .tools import find_tool, tools_dir

__all__ = [
    "FakeAnthropicServer",
    "FakeLLMServer",
    "FakeOpenAIServer",
    "RecordedRequest",
    "Reply",
    "find_tool",
    "last_user_text",
    "tools_dir",
]
