"""Handler registration: names, options, and their validation."""

from __future__ import annotations

import dataclasses
import inspect
import typing as t

from .retry import Backoff

Handler = t.Callable[[dict[str, t.Any]], t.Any]

DEFAULT_QUEUE = "default"
DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_PRIORITY = 0


@dataclasses.dataclass(frozen=True)
class HandlerSpec:
    name: str
    func: Handler
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    timeout: float | None = None
    queue: str = DEFAULT_QUEUE
    priority: int = DEFAULT_PRIORITY
    backoff: Backoff | None = None  # None: the app's default policy
    on_orphan: str = "retry"  # what the sweep does when a lease expires: retry or dead
    #: at most this many attempts with the same concurrency key run at once
    concurrency: int | None = None
    #: payload -> the key the concurrency limit counts by (None: one limit per type)
    concurrency_key: t.Callable[[dict[str, t.Any]], str] | None = None
    #: at most this many attempts start per period: (count, seconds), from "N/s|m|h"
    rate_limit: tuple[int, float] | None = None

    @property
    def limited(self) -> bool:
        """Claimed through the limited claim (a concurrency or rate limit)."""
        return self.concurrency is not None or self.rate_limit is not None


def default_name(func: t.Callable[..., t.Any]) -> str:
    module = getattr(func, "__module__", None)
    qualname = getattr(func, "__qualname__", None)
    if module == "__main__":
        raise ValueError(
            f"handler {qualname!r} is defined in __main__, whose name differs between"
            " processes; give it an explicit name: @jobs.handler('name')"
        )
    if not module or not qualname:
        raise ValueError(f"cannot derive a handler name from {func!r}; give one explicitly")
    return f"{module}.{qualname}"


def is_async(func: t.Callable[..., t.Any]) -> bool:
    """``async def`` functions, async generators, and objects whose
    ``__call__`` is one (``functools.partial`` of them too)."""
    call = None if inspect.isroutine(func) else type(func).__call__  # a callable object
    for candidate in (func, call):
        if inspect.iscoroutinefunction(candidate) or inspect.isasyncgenfunction(candidate):
            return True
    return False


def check_max_attempts(value: t.Any, what: str = "max_attempts") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} must be an integer >= 1, got {value!r}")
    return value


def check_priority(value: t.Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"priority must be an integer, got {value!r}")
    return value


def check_queue(value: t.Any) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > 100:
        raise ValueError(f"queue must be a non-empty name of at most 100 characters, got {value!r}")
    return value


def make_spec(
    name: str,
    func: Handler,
    *,
    max_attempts: int,
    timeout: float | None,
    queue: str,
    priority: int,
    backoff: Backoff | None,
    on_orphan: str = "retry",
    concurrency: int | None = None,
    concurrency_key: t.Callable[[dict[str, t.Any]], str] | None = None,
    rate_limit: str | None = None,
) -> HandlerSpec:
    if not isinstance(name, str) or not name or len(name) > 200:
        raise ValueError(f"handler name must be a non-empty string of at most 200 characters,"
                         f" got {name!r}")
    if not callable(func):
        raise TypeError(f"handler {name!r} must be callable, got {func!r}")
    if is_async(func):
        # Called on a handler thread, it would only return a coroutine that
        # nobody awaits, and every job would go dead.
        raise TypeError(
            f"handler {name!r} is an async function ({func!r}); handlers are called on"
            " threads and async handlers are not supported yet: define it with def"
            " (it may run a coroutine with asyncio.run(...))"
        )
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0
    ):
        raise ValueError(f"timeout must be a number of seconds > 0 or None, got {timeout!r}")
    if backoff is not None and not callable(backoff):
        raise TypeError(f"backoff must be a callable attempt -> seconds, got {backoff!r}")
    if on_orphan not in ("retry", "dead"):
        raise ValueError(f"on_orphan must be 'retry' or 'dead', got {on_orphan!r}")
    if concurrency is not None and (
        isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1
    ):
        raise ValueError(f"concurrency must be an integer >= 1 or None, got {concurrency!r}")
    if concurrency_key is not None:
        if not callable(concurrency_key):
            raise TypeError(f"concurrency_key must be a callable payload -> str, got"
                            f" {concurrency_key!r}")
        if concurrency is None:
            raise ValueError("concurrency_key needs concurrency=N: the most attempts with"
                             " one key that run at once")
    return HandlerSpec(
        concurrency=concurrency,
        concurrency_key=concurrency_key,
        rate_limit=None if rate_limit is None else parse_rate_limit(rate_limit),
        name=name,
        on_orphan=on_orphan,
        func=func,
        max_attempts=check_max_attempts(max_attempts),
        timeout=None if timeout is None else float(timeout),
        queue=check_queue(queue),
        priority=check_priority(priority),
        backoff=backoff,
    )


#: Seconds in each period a rate limit may name.
RATE_PERIODS = {"s": 1.0, "m": 60.0, "h": 3600.0}
#: The most starts a rate limit may allow per period (the window keeps each one).
MAX_RATE = 10_000


def parse_rate_limit(value: t.Any) -> tuple[int, float]:
    """``"N/s"``, ``"N/m"`` or ``"N/h"`` as (N, seconds in the period)."""
    count, _, unit = value.partition("/") if isinstance(value, str) else ("", "", "")
    if (not count.isdigit() or not count.isascii() or unit not in RATE_PERIODS
            or not 1 <= int(count) <= MAX_RATE):
        raise ValueError(
            f"rate_limit must be 'N/s', 'N/m' or 'N/h' with N a whole number from 1 to"
            f" {MAX_RATE} (e.g. '100/m'), got {value!r}"
        )
    return int(count), RATE_PERIODS[unit]
