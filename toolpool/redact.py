"""Redaction of secrets from every string that leaves the library.

Two ways a secret is recognised:

* **by value**: a process-wide registry of the secrets toolpool was given
  (adapters' API keys, the secret-looking variables of their environment,
  passwords inside ``--api-base`` URLs).  Pools register what their adapter
  knows with :func:`register_secrets` and drop it with
  :func:`unregister_secrets`.
* **by shape**: API keys (``sk-ant-...``, ``sk-...``), GitHub tokens
  (``ghp_``, ``gho_``, ``ghu_``, ``ghs_``, ``ghr_``, ``github_pat_``), AWS
  access key ids (``AKIA...``), Slack tokens (``xoxb-``...), HTTP
  ``Authorization`` values, URL passwords and ``NAME=value`` pairs whose name
  looks secret (``OPENAI_API_KEY=...``, ``"password": "..."``).

:func:`redact_text` runs on every error message, status field and log record,
so the common case, a string with no secret in it, costs a few substring
searches and no regular expression.
"""

from __future__ import annotations

import collections
import logging
import os
import re
import threading
import traceback
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

__all__ = ["MASK", "RedactingFilter", "adapter_secrets", "install_log_redaction", "redact", "redact_text",
           "redact_url", "register_secrets", "registered_secrets", "secret_values", "unregister_secrets"]

MASK = "***"

#: Shorter values are not registered: replacing "abc" everywhere would mangle
#: messages and protect nothing worth protecting.
MIN_SECRET_LENGTH = 6

# ----------------------------------------------------------------- by value
_registry_lock = threading.Lock()
_registry: collections.Counter[str] = collections.Counter()
# Longest first, so a secret that contains another is replaced whole.  Readers
# take this tuple without the lock; writers swap it under the lock.
_values: tuple[str, ...] = ()


def register_secrets(values: Iterable[str | None]) -> tuple[str, ...]:
    """Add ``values`` to the registry; returns what was registered, for :func:`unregister_secrets`.

    Counted: two pools registering the same key keep it registered until both
    unregister.  ``None``, empty and short values are ignored.
    """
    global _values
    kept = tuple(v for v in values if isinstance(v, str) and len(v.strip()) >= MIN_SECRET_LENGTH)
    if kept:
        with _registry_lock:
            _registry.update(kept)
            _values = tuple(sorted(_registry, key=len, reverse=True))
    return kept


def unregister_secrets(values: Iterable[str]) -> None:
    """Undo one :func:`register_secrets` of ``values`` (the tuple it returned)."""
    global _values
    with _registry_lock:
        for value in values:
            if _registry[value] > 1:
                _registry[value] -= 1
            else:
                _registry.pop(value, None)
        _values = tuple(sorted(_registry, key=len, reverse=True))


def registered_secrets() -> tuple[str, ...]:
    """The registered values (for tests and diagnostics; never log them)."""
    return _values


# ----------------------------------------------------------------- by shape
_SECRET_NAME_WORDS = (r"api[_-]?key|apikey|access[_-]?key|secret[_-]?key|private[_-]?key|auth[_-]?token|token|"
                      r"secret|password|passwd|credentials?")
# (triggers, pattern): a pattern runs only when the lower-cased text contains
# one of its triggers, so text without any is returned with no regex run.
# Group 1 of each pattern is kept, the rest of the match becomes ***.
_SHAPES: tuple[tuple[tuple[str, ...], re.Pattern[str]], ...] = tuple(
    (triggers, re.compile(pattern, re.IGNORECASE)) for triggers, pattern in (
        # An Authorization header (or a curl -H line): the whole credential, whatever the scheme.
        (("authorization",),
         r"(\bauthorization[\"']?\s*[:=]\s*[\"']?(?:(?:bearer|basic|token|digest)\s+)?)[^\s\"',;]+"),
        (("bearer",), r"(\bbearer\s+)[A-Za-z0-9._~+/=-]{16,}"),
        # Credentials in URLs: a user, a colon, a password up to the @ (a / included: users write them).
        (("://",), r"(\b[a-z][a-z0-9+.-]*://)[^\s:/@]*:[^\s@]+(?=@)"),
        # Tokens are replaced whole: a kept prefix would say which service the key is for.
        (("sk-",), r"()\bsk-(?:ant-)?[A-Za-z0-9_-]{10,}"),
        (("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"), r"()\b(?:gh[pousr]_|github_pat_)[A-Za-z0-9_]{16,}"),
        (("akia", "asia"), r"()\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
        (("xox",), r"()\bxox[abprs]-[A-Za-z0-9-]{8,}"),
        # NAME=value, NAME: value, "name": "value", --name=value: the name must END in a secret word,
        # which starts the name or follows a _ . or - (so "monkey" and "max_tokens" are not names).
        (("key", "token", "secret", "passw", "credential"),
         rf"((?<![A-Za-z0-9])(?:{_SECRET_NAME_WORDS})[\"']?\s*[=:]\s*[\"']?)(?!\*\*\*)[^\s\"',;}}&]+"),
    ))


def _mask_match(m: re.Match[str]) -> str:
    return m.group(1) + MASK


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every registered or recognisable secret replaced by ``***``.

    ``secrets``: more values to hide in this call only (not registered).
    """
    if not text or not isinstance(text, str):
        return text
    extra = tuple(v for v in secrets if v and len(v) >= MIN_SECRET_LENGTH)
    for value in (sorted(extra + _values, key=len, reverse=True) if extra else _values):
        if value in text:
            text = text.replace(value, MASK)
    low = text.lower()
    for triggers, pattern in _SHAPES:
        if any(t in low for t in triggers):
            text = pattern.sub(_mask_match, text)
    return text


_SECRET_KEY = re.compile(rf"(?:^|[_.-])(?:{_SECRET_NAME_WORDS})$", re.IGNORECASE)
T = TypeVar("T")


def redact(obj: T, secrets: Iterable[str] = ()) -> T:
    """A deep copy of ``obj`` with every string redacted.

    Dicts, lists and tuples are copied; a string under a secret-looking key
    (``api_key``, ``password``...) is replaced whole.  Other objects are
    returned as they are.
    """
    extra = tuple(secrets)
    return _redact(obj, extra)  # type: ignore[no-any-return]


def _redact(obj: Any, extra: tuple[str, ...]) -> Any:
    if isinstance(obj, str):
        return redact_text(obj, extra)
    if isinstance(obj, dict):
        return {k: (MASK if isinstance(v, str) and v and isinstance(k, str) and _SECRET_KEY.search(k)
                    else _redact(v, extra)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_redact(v, extra) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_redact(v, extra) for v in obj)
    return obj


def redact_url(url: str | None) -> str | None:
    """``url`` with the password of its user part replaced by ``***`` (None stays None)."""
    return None if url is None else _URL_USERINFO.sub(_mask_match, url)


# ----------------------------------------------------- what an adapter knows
_SECRET_ENV_NAME = re.compile(r"(?i)(key|token|secret|password|passwd|credential|auth)")
_URL_USERINFO = _SHAPES[2][1]
_URL_PASSWORD = re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s:/@]*:([^\s@]+)@", re.IGNORECASE)


def secret_values(env: Mapping[str, str] | None = None) -> list[str]:
    """Values of environment variables whose names look secret, and passwords inside URL values.

    ``env`` defaults to ``os.environ``.  Longest first.
    """
    env = os.environ if env is None else env
    found = {v for k, v in env.items() if _SECRET_ENV_NAME.search(k) and len(v) >= MIN_SECRET_LENGTH}
    for value in env.values():
        if "://" in value:
            found.update(p for p in _URL_PASSWORD.findall(value) if len(p) >= MIN_SECRET_LENGTH)
    return sorted(found, key=len, reverse=True)


def adapter_secrets(adapter: Any) -> list[str]:
    """Every secret ``adapter`` holds: its environment's (``secret_env()``) and its options'.

    Options: string attributes with secret-looking names (``api_key``...) and
    passwords inside any URL-valued attribute (``api_base``).  Reads only;
    calls nothing with side effects.
    """
    found = set()
    secret_env = getattr(adapter, "secret_env", None)
    if callable(secret_env):
        found.update(secret_values(secret_env()))
    for name, value in getattr(adapter, "__dict__", {}).items():
        if not isinstance(value, str):
            continue
        if _SECRET_KEY.search(name.strip("_")) and len(value) >= MIN_SECRET_LENGTH:
            found.add(value)
        if "://" in value:
            found.update(p for p in _URL_PASSWORD.findall(value) if len(p) >= MIN_SECRET_LENGTH)
    return sorted(found, key=len, reverse=True)


# ---------------------------------------------------------------- logging
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class RedactingFilter(logging.Filter):
    """Redacts a record's message, arguments, traceback and ``extra`` fields in place.

    The message is formatted once here (``msg % args``) and the record keeps
    the redacted text with no args, so no handler can format the secret back
    in.  Never drops a record.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_toolpool_redacted", False):
            return True
        try:
            message = record.getMessage()
        except (TypeError, ValueError, KeyError):  # a malformed format: keep it visible, just redacted
            message = f"{record.msg!r} % {record.args!r}"
        record.msg, record.args = redact_text(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact_text("".join(traceback.format_exception(*record.exc_info)).rstrip("\n"))
        elif record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        if record.stack_info:
            record.stack_info = redact_text(record.stack_info)
        for key, value in list(vars(record).items()):
            if key not in _STANDARD_ATTRS and isinstance(value, (str, dict, list, tuple)):
                setattr(record, key, redact(value))
        record._toolpool_redacted = True
        return True


class _RedactOnTheWayUp(logging.Handler):
    """Emits nothing: only runs its filter (logging.NullHandler would skip filters)."""

    def handle(self, record: logging.LogRecord) -> bool:
        return bool(self.filter(record))

    def emit(self, record: logging.LogRecord) -> None:
        pass


_installed: dict[str, RedactingFilter] = {}


def install_log_redaction(root: str = "toolpool") -> RedactingFilter:
    """Redact every record of the ``root`` logger tree before any handler sees it.  Idempotent.

    A logger's filters do not apply to its children's records, so the filter
    sits on two places: a handler of ``root`` (records of every child pass it
    on their way up to the application's handlers, which come later) and every
    ``root.*`` logger that exists now (for handlers attached to a child).
    """
    flt = _installed.get(root)
    if flt is None:
        flt = _installed[root] = RedactingFilter()
        handler = _RedactOnTheWayUp()
        handler.addFilter(flt)
        logging.getLogger(root).addHandler(handler)
    for name in [root, *(n for n in list(logging.root.manager.loggerDict) if n.startswith(root + "."))]:
        logger = logging.getLogger(name)
        if flt not in logger.filters:
            logger.addFilter(flt)
    return flt
