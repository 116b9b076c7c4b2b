"""Retry policies: how long a failed job waits before its next attempt."""

from __future__ import annotations

import random
import typing as t

#: A backoff policy takes the number of the attempt that just failed
#: (counting from 1) and returns the seconds to wait before the next one.
Backoff = t.Callable[[int], float]


def default_backoff(
    base: float, factor: float, maximum: float, jitter: float
) -> Backoff:
    """``base * factor ** (attempt - 1)``, capped at ``maximum``, +/- ``jitter``."""

    def policy(attempt: int) -> float:
        delay = min(base * factor ** min(attempt - 1, 64), maximum)
        return delay * (1 + random.uniform(-jitter, jitter))

    return policy


def delay_for(policy: Backoff, attempt: int) -> float:
    """Call a policy and check what it returns, so a bad policy fails loudly."""
    delay = policy(attempt)
    if isinstance(delay, bool) or not isinstance(delay, (int, float)) or not delay >= 0:
        raise ValueError(f"backoff policy returned {delay!r} for attempt {attempt};"
                         " it must return a number of seconds >= 0")
    return float(delay)
