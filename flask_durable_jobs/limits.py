"""Concurrency and rate limits per job type, enforced by the database.

A handler registered with ``concurrency=N`` (and optionally
``concurrency_key=fn``) or ``rate_limit="N/s"`` is *limited*: its jobs carry
a ``concurrency_key`` column (``fn(payload)``, computed at enqueue, or ``''``
for one limit per type) and are claimed by their own statement
(``claim_limited``), one type at a time, while the claim holds the type's
row in ``durable_jobs_limits``: it counts the running jobs per key whose
lease has not expired, takes each key's next jobs up to its free slots, and
keeps the rate window's recent start times in that row. Nothing is counted
in memory, so the limits hold across every process and host. Plain handlers
keep the plain claim and pay nothing for this.
"""

from __future__ import annotations

import datetime as dt
import typing as t

from .store.control import claim_limited

if t.TYPE_CHECKING:
    from .handlers import HandlerSpec
    from .store import ClaimedRow, Store

#: Longest concurrency key, in characters (the column's size).
MAX_KEY_LENGTH = 200


def default_key(spec: HandlerSpec) -> str | None:
    """The key of a job whose payload is not at hand: ``''`` (the type's
    one limit) for a limited handler, ``None`` (a plain job) otherwise."""
    return "" if spec.limited else None


def key_for(spec: HandlerSpec, payload: dict[str, t.Any]) -> str | None:
    """The ``concurrency_key`` column of a new job of ``spec`` with ``payload``."""
    if spec.concurrency_key is None:
        return default_key(spec)
    key = spec.concurrency_key(payload)
    if not isinstance(key, str):
        raise TypeError(
            f"concurrency_key of handler {spec.name!r} must return a string, returned"
            f" {type(key).__name__} {key!r}"
        )
    if len(key) > MAX_KEY_LENGTH or "\x00" in key:
        raise ValueError(
            f"concurrency_key of handler {spec.name!r} returned {key[:50]!r}...: a key must"
            f" be at most {MAX_KEY_LENGTH} characters, without NUL"
        )
    return key


def group_by_key(
    spec: HandlerSpec, payloads: t.Sequence[dict[str, t.Any]]
) -> dict[str | None, list[int]]:
    """Positions of ``payloads`` by their concurrency key (one insert per key)."""
    groups: dict[str | None, list[int]] = {}
    for index, payload in enumerate(payloads):
        try:
            key = key_for(spec, payload)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"payloads[{index}]: {exc}") from None
        groups.setdefault(key, []).append(index)
    return groups


def claim(
    store: Store,
    specs: t.Iterable[HandlerSpec],
    *,
    queues: t.Sequence[str] | None,
    limit: int,
    clock: t.Callable[[], dt.datetime],
    lease: dt.timedelta,
    token: str,
    worker_id: str,
    with_secrets: bool,
    threads: int,
) -> list[ClaimedRow]:
    """Claim up to ``limit`` due jobs of the limited types ``specs``, each
    type within its limits.

    A rate-limited type is claimed at most ``threads`` jobs at a time (the
    idle handler threads): the rate window counts claims, so a claimed job
    should start at once, not wait in this process while the window moves on.
    """
    rows: list[ClaimedRow] = []
    for spec in specs:
        room = limit - len(rows)
        if room <= 0:
            break
        if spec.rate_limit is not None:
            room = min(room, threads)
        rows.extend(claim_limited(
            store, job_type=spec.name, concurrency=spec.concurrency,
            rate_limit=spec.rate_limit, queues=queues, limit=room, clock=clock,
            lease=lease, token=token, worker_id=worker_id,
            with_secrets=with_secrets,
        ))
    return rows
