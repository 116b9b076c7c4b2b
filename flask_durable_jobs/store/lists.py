"""The store's statements behind the admin list and the bulk actions.

SQLAlchemy Core, the same on every database, except the payload filter: a
JSON field in string form is read differently by each database, so its
condition is the named statement ``payload_matches`` of each SQL file.
Called by :mod:`flask_durable_jobs.listing`, which checks the filters.
"""

from __future__ import annotations

import datetime as dt
import typing as t

import sqlalchemy as sa

from ..models import CANCELLED, JOB_COLUMNS, PENDING, CallbackStatus, Job

if t.TYPE_CHECKING:
    from ..listing import Filters
    from .base import Store

#: Text filters: the column of the same name equals the value.
_EQUAL = ("job_type", "queue", "owner", "idempotency_key", "batch_id")


def where(store: Store, filters: Filters) -> sa.ColumnElement[bool]:
    """The filters as one condition on the job table."""
    c = store.table.c
    conditions: list[sa.ColumnElement[bool]] = []
    if filters.status is not None:  # a literal, so that SQLite can use a partial index
        conditions.append(c.status == sa.literal(filters.status, literal_execute=True))
    for name in _EQUAL:
        value = getattr(filters, name)
        if value is not None:
            conditions.append(c[name] == value)
    if filters.payload is not None:
        field, value = filters.payload
        conditions.append(
            sa.text(store.queries["payload_matches"])
            .bindparams(payload_field=field, payload_value=value)
            .self_group()  # type: ignore[arg-type]
        )
    if filters.created_after is not None:
        conditions.append(c.created_at >= filters.created_after)
    if filters.created_before is not None:
        conditions.append(c.created_at < filters.created_before)
    if filters.ids is not None:
        conditions.append(c.id.in_(filters.ids))
    return sa.and_(sa.true(), *conditions)


def select_page(
    store: Store, filters: Filters, *, below: int | None, offset: int, limit: int
) -> list[Job]:
    """Up to ``limit`` matching jobs, newest (highest id) first, ids under ``below``."""
    c = store.table.c
    query = sa.select(*(c[name] for name in JOB_COLUMNS)).where(where(store, filters))
    if below is not None:
        query = query.where(c.id < below)
    query = query.order_by(c.id.desc()).limit(limit)
    if offset:
        query = query.offset(offset)
    with store.engine.connect() as conn:
        rows = conn.execute(query).all()
    return [store.to_job(row) for row in rows]


def count(store: Store, filters: Filters, *, limit: int | None) -> int:
    """The number of matching jobs, counting no further than ``limit``."""
    matching = sa.select(sa.literal(1)).select_from(store.table).where(where(store, filters))
    if limit is not None:
        matching = matching.limit(limit)
    with store.engine.connect() as conn:
        return int(conn.execute(
            sa.select(sa.func.count()).select_from(matching.subquery())
        ).scalar_one())


def _changes(store: Store, action: str, now: dt.datetime) -> dict[str, t.Any]:
    """The columns ``action`` writes (as ``Store.retry`` and ``Store.cancel`` do)."""
    c = store.table.c
    if action == "retry":
        return {"status": PENDING, "attempts": 0, "run_at": now, "finished_at": None,
                "started_at": None, "result": None, "updated_at": now,
                "callback_status": None, "callback_attempts": 0, "callback_error": None,
                "callback_next_at": None}
    if action == "request_cancel":  # a running job: asked to stop (jobs.cancel)
        return {"cancel_requested_at": now, "updated_at": now}
    has_callback = c.callback_url.is_not(None)
    return {"status": CANCELLED, "finished_at": now, "updated_at": now, "secrets": None,
            "callback_status": sa.case((has_callback, CallbackStatus.PENDING),
                                       else_=c.callback_status),
            "callback_next_at": sa.case((has_callback, now), else_=c.callback_next_at)}


#: Most ids one cancel batch names in its wake-up (NOTIFY takes under 8,000
#: bytes); a longer batch wakes every waiter to look again.
ANNOUNCE_MAX = 500


def bulk_batch(
    store: Store,
    filters: Filters,
    action: str,
    allowed: tuple[str, ...],
    *,
    now: dt.datetime,
    below: int | None,
    limit: int,
) -> tuple[list[tuple[int, str | None]], int | None]:
    """Apply ``action`` ("retry", "cancel", "request_cancel" or "delete") to the next batch of
    matching jobs in ``allowed`` statuses, in one transaction.

    Returns the ``(id, batch_id)`` of the jobs changed, and the lowest id
    selected when the batch was full (the next batch starts below it), else
    ``None``. Jobs another transaction holds are skipped (PostgreSQL's
    ``SKIP LOCKED``; SQLite's write lock serialises writers anyway).
    """
    c = store.table.c
    batch = sa.select(c.id).where(where(store, filters), c.status.in_(allowed))
    if action == "request_cancel":  # the first request is kept
        batch = batch.where(c.cancel_requested_at.is_(None))
    if below is not None:
        batch = batch.where(c.id < below)
    # One statement: the subquery picks and locks the batch, the outer one
    # changes exactly those rows and says which they were.
    picked = c.id.in_(
        batch.order_by(c.id.desc()).limit(limit).with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    change: sa.Delete | sa.Update = (
        sa.delete(store.table).where(picked) if action == "delete"
        else sa.update(store.table).where(picked).values(_changes(store, action, now))
    )
    with store.transaction() as conn:
        rows = [(int(job_id), batch_id)
                for job_id, batch_id in conn.execute(change.returning(c.id, c.batch_id))]
        if action == "cancel":  # wake jobs.wait() on them; a long list goes as "look again"
            ids = [job_id for job_id, _ in rows]
            store.announce_ended(conn, ids if len(ids) <= ANNOUNCE_MAX else [])
    return rows, (min(job_id for job_id, _ in rows) if len(rows) == limit else None)
