"""The store's statements for queue states, limited claims and the process
registry, used by :mod:`flask_durable_jobs.queues`, :mod:`~flask_durable_jobs.limits`
and :mod:`~flask_durable_jobs.processes`.

Functions over a :class:`~.base.Store`: they run its named statements
(``set_queue_state``, ``lock_limits``, ``claim_limited``, ``save_limits``,
``beat_process``) through :meth:`Store.send <.base.Store.send>` in
:meth:`Store.transaction <.base.Store.transaction>`, and read with
SQLAlchemy Core, the same on every database.
"""

from __future__ import annotations

import datetime as dt
import json
import time
import typing as t

import sqlalchemy as sa

from ..models import STATUSES, ControlTables, as_utc, define_control_tables
from .base import CLAIM_ORDER
from .records import ClaimedRow

if t.TYPE_CHECKING:
    from .base import Store

#: Seconds between two adoptions of a limited type's unkeyed waiting jobs
#: (``adopt_unkeyed``) by one process.
ADOPT_EVERY = 60.0

#: The concurrency a claim passes for a type with a rate limit only.
NO_CONCURRENCY_LIMIT = 2**31 - 1
#: A rate window is kept this much longer than its period: the window counts
#: claims, and a claimed job's handler starts a little later (the commit, the
#: hand-off to a thread), by more on a loaded host; without the margin that
#: lag would let more than N handlers start within one period.
RATE_WINDOW_MARGIN = 0.05


def tables(store: Store) -> ControlTables:
    """The control tables beside the store's job table (on its metadata)."""
    metadata = store.table.metadata
    return define_control_tables(metadata)


# -- queues -------------------------------------------------------------------


def set_queue_state(store: Store, name: str, paused: bool, now: dt.datetime) -> None:
    with store.transaction() as conn:
        store.send(conn, "set_queue_state", {"name": name, "paused": paused, "now": now})


def queue_states(store: Store) -> dict[str, bool]:
    queues = tables(store).queues
    with store.engine.connect() as conn:
        rows = conn.execute(sa.select(queues.c.name, queues.c.paused)).all()
    return {name: bool(paused) for name, paused in rows}


def paused_queues(store: Store) -> set[str]:
    return {name for name, paused in queue_states(store).items() if paused}


def queue_counts(store: Store, now: dt.datetime) -> dict[str, dict[str, int]]:
    """Jobs per queue and status, from :meth:`Store.counts` (no rows loaded;
    on PostgreSQL, no job row read)."""
    counts: dict[str, dict[str, int]] = {}
    for row in store.counts(now, due=False):
        by_status = counts.setdefault(row.queue, dict.fromkeys(STATUSES, 0))
        by_status[row.status] = by_status.get(row.status, 0) + row.n
    return counts


# -- limited claims -------------------------------------------------------------


def claim_limited(
    store: Store,
    *,
    job_type: str,
    concurrency: int | None,
    rate_limit: tuple[int, float] | None,
    queues: t.Sequence[str] | None,
    limit: int,
    clock: t.Callable[[], dt.datetime],
    lease: dt.timedelta,
    token: str,
    worker_id: str,
    with_secrets: bool,
) -> list[ClaimedRow]:
    """Claim up to ``limit`` due jobs of a limited type, within its free
    concurrency slots and its rate window, in one transaction that holds the
    type's limits row; returns them in claim order.

    The time is read once the row is locked (``clock``): a claim that waited
    for the lock counts its starts when they happen, not when it asked.
    """
    with store.transaction() as conn:
        starts_text = store.send(
            conn, "lock_limits", {"job_type": job_type, "now": clock()}
        ).scalar()
        now = clock()
        if time.monotonic() - store.adopted_at.get(job_type, -ADOPT_EVERY) >= ADOPT_EVERY:
            store.send(conn, "adopt_unkeyed", {"job_type": job_type})
            store.adopted_at[job_type] = time.monotonic()
        starts: list[float] = json.loads(starts_text) if starts_text else []
        stamp = now.timestamp()
        if rate_limit is not None:
            count, period = rate_limit
            starts = [s for s in starts if s > stamp - period * (1 + RATE_WINDOW_MARGIN)]
            limit = min(limit, count - len(starts))
        if limit <= 0:
            return []
        rows = store.send(conn, "claim_limited", {
            "job_type": job_type,
            "concurrency": NO_CONCURRENCY_LIMIT if concurrency is None else concurrency,
            "queues": None if queues is None else json.dumps(list(queues)),
            "with_secrets": with_secrets, "limit": limit, "now": now, "token": token,
            "lease": now + lease, "worker": worker_id,
        }).all()
        if rate_limit is not None and rows:
            starts.extend([stamp] * len(rows))
            store.send(conn, "save_limits", {
                "job_type": job_type, "starts": json.dumps(starts), "now": now,
            })
    ordered = sorted((tuple(r) for r in rows), key=CLAIM_ORDER)
    return [ClaimedRow(r[0], r[1], r[2], r[3], r[4], token, r[5], r[6]) for r in ordered]


# -- the process registry ---------------------------------------------------------


def beat_process(store: Store, values: dict[str, t.Any], forget_before: dt.datetime) -> None:
    """Make or renew this process's record; drop records not seen since
    ``forget_before`` (processes gone without a word)."""
    processes = tables(store).processes
    with store.transaction() as conn:
        store.send(conn, "beat_process", values)
        conn.execute(sa.delete(processes).where(processes.c.last_seen < forget_before))


def forget_process(store: Store, process_id: str) -> None:
    processes = tables(store).processes
    with store.engine.begin() as conn:
        conn.execute(sa.delete(processes).where(processes.c.id == process_id))


def list_processes(store: Store) -> list[dict[str, t.Any]]:
    processes = tables(store).processes
    with store.engine.connect() as conn:
        rows = conn.execute(sa.select(processes).order_by(processes.c.started_at)).all()
    return [
        {
            "id": row.id, "host": row.host, "pid": row.pid,
            "started_at": as_utc(row.started_at), "last_seen": as_utc(row.last_seen),
            "queues": None if row.queues is None else json.loads(row.queues),
            "concurrency": row.concurrency, "version": row.version,
            "jobs_in_flight": row.inflight,
        }
        for row in rows
    ]
