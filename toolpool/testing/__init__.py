"""Offline fake LLM servers for testing scripts that drive CLI tools, without spending tokens.

Both servers run in-process on ``127.0.0.1`` with only the standard library, answer
deterministically (by default ``"ECHO: <first line of the last user message>"``) and record
every request they receive::

    from toolpool.testing import FakeAnthropicServer, FakeOpenAIServer, Reply, ToolUse

    with FakeAnthropicServer() as server:          # for Claude Code: ANTHROPIC_BASE_URL=server.url
        server.script("first answer", Reply("slow answer", delay=2.0))
        server.fail_next(status=529)               # the next request gets an "overloaded" error
        # an agentic turn: claude runs Bash, the fake checks what came back, then answers
        server.on_prompt("say hi", ToolUse("Bash", {"command": "echo hi"}, expect="hi"), "done")
        ...
        server.wait_for_requests(1, timeout=10, path="/v1/messages")
        print(server.tool_results)

    with FakeOpenAIServer() as server:             # for aider: --openai-api-base server.url + "/v1"
        server.script(whole_file("hello.py", "print('hi')\\n"))   # aider writes hello.py
        ...

Script steps: text, :class:`Reply`, :class:`ToolUse`, and the failures :class:`Error`,
:class:`Hang`, :class:`Stall`, :class:`Drop`. See :class:`FakeAnthropicServer` and
:class:`FakeOpenAIServer` (controls are documented on their shared base,
:class:`FakeLLMServer`).
"""

from ._base import FakeLLMServer, ServedReply
from ._request import RecordedRequest, ToolResult, last_user_text
from ._steps import Drop, Error, Hang, Reply, Stall, ToolUse
from .edits import search_replace, whole_file
from .fake_anthropic import FakeAnthropicServer
from .fake_openai import FakeOpenAIServer
from .tools import find_tool, tools_dir

__all__ = [
    "Drop",
    "Error",
    "FakeAnthropicServer",
    "FakeLLMServer",
    "FakeOpenAIServer",
    "Hang",
    "RecordedRequest",
    "Reply",
    "ServedReply",
    "Stall",
    "ToolResult",
    "ToolUse",
    "find_tool",
    "last_user_text",
    "search_replace",
    "tools_dir",
    "whole_file",
]
