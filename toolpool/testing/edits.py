"""Replies in aider's edit formats, for scripting :class:`~toolpool.testing.FakeOpenAIServer`.

aider applies an edit when the model's reply names a file and gives its new content (the
"whole" format, what aider uses for an unknown model such as ``openai/fake-model``) or a
SEARCH/REPLACE block (``--edit-format diff``). These helpers write such replies; join
several (and any prose) with newlines to edit several files in one reply::

    server.script(whole_file("calc.py", "def add(a, b):\\n    return a + b\\n", intro="Fixed it."))
    server.script(search_replace("calc.py", "return a - b", "return a + b"))

The block is fenced with three backticks: content holding a line that starts with
three backticks would end it early, as it would for a real model.
"""

from __future__ import annotations

__all__ = ["search_replace", "whole_file"]


def _fenced(path: str, body: str, intro: str, lang: str) -> str:
    body = body if body.endswith("\n") or not body else body + "\n"
    head = f"{intro}\n\n" if intro else ""
    return f"{head}{path}\n```{lang}\n{body}```\n"


def whole_file(path: str, content: str, *, intro: str = "", lang: str = "") -> str:
    """A "whole" format edit: ``path`` on its own line, then its complete new content fenced.

    ``path`` is relative to aider's working directory (the git root in a repository);
    ``intro`` is prose before the block; ``lang`` the fence's language tag.
    """
    return _fenced(path, content, intro, lang)


def search_replace(path: str, search: str, replace: str, *, intro: str = "", lang: str = "") -> str:
    """A diff-format edit: replace the lines ``search`` (which must match the file exactly,
    whole lines) with ``replace`` in ``path``. An empty ``search`` creates the file."""
    def lines(text: str) -> str:
        return text if text.endswith("\n") or not text else text + "\n"

    block = f"<<<<<<< SEARCH\n{lines(search)}=======\n{lines(replace)}>>>>>>> REPLACE\n"
    return _fenced(path, block, intro, lang)
