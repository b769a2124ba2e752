"""Seconds values at the API edge: checked once, so no timer ever sees NaN or infinity.

Every public parameter that is a number of seconds goes through
:func:`check_seconds`: it must be a finite number >= 0 (or > 0 where zero makes
no sense), or None for "no limit".  ``inf`` is refused rather than read as "no
limit" because it is usually a computation gone wrong, and because
``threading`` waits overflow on it.  Internally, waits are clamped with
:func:`wait_limit` so that even a huge finite value cannot overflow.
"""

from __future__ import annotations

import math
import threading

#: The longest single wait threading accepts; longer waits are cut to this and looped.
MAX_WAIT = min(threading.TIMEOUT_MAX, 365 * 24 * 3600.0)


def check_seconds(name: str, value: object, *, positive: bool = False, allow_none: bool = True) -> float | None:
    """``value`` as a float of seconds, or ValueError/TypeError naming ``name``.

    ``positive``: zero is refused too.  ``allow_none``: None means no limit.
    """
    if value is None:
        if allow_none:
            return None
        raise TypeError(f"{name} must be a number of seconds, got None")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        accepts = "a number of seconds" + (" or None (no limit)" if allow_none else "")
        raise TypeError(f"{name} must be {accepts}, got {type(value).__name__} {value!r}")
    seconds = float(value)
    if math.isnan(seconds) or math.isinf(seconds):
        hint = "; use None for no limit" if allow_none else ""
        raise ValueError(f"{name} must be a finite number of seconds, got {value!r}{hint}")
    if seconds < 0 or (positive and seconds == 0):
        raise ValueError(f"{name} must be {'> 0' if positive else '>= 0'} seconds, got {value!r}")
    # Beyond what a thread can wait (about a year here) means "as good as no limit": cap it, so
    # no wait downstream overflows.
    return min(seconds, MAX_WAIT)


def wait_limit(seconds: float | None) -> float | None:
    """A timeout safe to pass to ``Event.wait``/``Condition.wait`` (None stays None)."""
    if seconds is None:
        return None
    if seconds != seconds:  # NaN: never reaches here through check_seconds; do not spin on it
        return MAX_WAIT
    return min(max(seconds, 0.0), MAX_WAIT)
