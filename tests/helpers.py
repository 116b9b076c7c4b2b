"""Helpers shared by the test modules (import as ``tests.helpers``)."""

from __future__ import annotations

import time
import typing as t


def wait_for(
    what: str,
    check: t.Callable[[], t.Any],
    timeout: float,
    *,
    interval: float = 0.1,
    details: t.Callable[[], str] | None = None,
) -> t.Any:
    """Poll ``check`` until it returns something truthy, at most ``timeout`` seconds.

    Returns that value; on timeout raises ``AssertionError`` naming ``what``
    (and ``details()``, when given, for the failure report).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            extra = f"\n{details()}" if details is not None else ""
            raise AssertionError(f"timed out after {timeout} s waiting for {what}{extra}")
        time.sleep(interval)
