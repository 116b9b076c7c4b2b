"""Controlling jobs: cancel (also of a running job), waiting for a job's end,
lookups for ``jobs.get_by_key()`` and for the handler's ``current_job()``.

A mixin of :class:`~flask_durable_jobs.store.Store`: these statements are
SQLAlchemy Core, the same on every database; an adapter overrides how the
end of a job is announced to :meth:`JobControl.watch_ended` watchers
(PostgreSQL's NOTIFY) and how they wait.
"""

from __future__ import annotations

import datetime as dt
import typing as t

import sqlalchemy as sa

from ..errors import InvalidTransition, JobNotFound
from ..models import CANCELLED, JOB_COLUMNS, RUNNING, WAITING, CallbackStatus, Job

if t.TYPE_CHECKING:
    from .records import Watcher


class JobControl:
    """Statements of ``jobs.cancel()``, ``jobs.wait()``, ``jobs.get_by_key()``
    and ``current_job()``."""

    if t.TYPE_CHECKING:
        engine: sa.Engine
        table: sa.Table

        def to_job(self, row: t.Any) -> Job: ...
        def get(self, job_id: int) -> Job | None: ...
        def watch(self) -> Watcher: ...

    def job_columns(self) -> list[sa.Column[t.Any]]:
        return [self.table.c[name] for name in JOB_COLUMNS]

    def cancel(self, job_id: int, now: dt.datetime) -> Job:
        """A waiting job ends cancelled; a running one gets a cancel request
        (``cancel_requested_at``, the first one kept) and stays running.
        One statement: a job that moves on meanwhile is judged as it is."""
        c = self.table.c
        waiting = c.status.in_(WAITING)
        call_back = sa.and_(waiting, c.callback_url.is_not(None))
        values = {
            "status": sa.case((waiting, CANCELLED), else_=c.status),
            "finished_at": sa.case((waiting, now), else_=c.finished_at),
            "secrets": sa.case((waiting, sa.null()), else_=c.secrets),
            "cancel_requested_at": sa.case(
                (c.status == RUNNING, sa.func.coalesce(c.cancel_requested_at, now)),
                else_=c.cancel_requested_at,
            ),
            "updated_at": now,
            "callback_status": sa.case((call_back, CallbackStatus.PENDING),
                                       else_=c.callback_status),
            "callback_next_at": sa.case((call_back, now), else_=c.callback_next_at),
        }
        allowed = (*WAITING, RUNNING)
        with self.engine.begin() as conn:
            row = conn.execute(
                sa.update(self.table).where(c.id == job_id, c.status.in_(allowed))
                .values(values).returning(*self.job_columns())
            ).first()
            if row is not None and row.status == CANCELLED:
                self.announce_ended(conn, [job_id])
        if row is not None:
            return self.to_job(row)
        current = self.get(job_id)
        if current is None:
            raise JobNotFound(job_id)
        raise InvalidTransition(job_id, current.status, "cancel", allowed)

    def announce_ended(self, conn: sa.Connection, ids: t.Sequence[int]) -> None:
        """Tell waiting :meth:`watch_ended` watchers that these jobs ended, on
        ``conn`` (where the database can; elsewhere they poll)."""

    def watch_ended(self, job_id: int) -> Watcher:
        """A watcher whose ``wait`` returns early when ``job_id`` may have
        ended (``jobs.wait()``); the caller reads the job again either way."""
        return self.watch()

    def get_by_key(self, idempotency_key: str) -> Job | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(*self.job_columns())
                .where(self.table.c.idempotency_key == idempotency_key)
            ).first()
        return None if row is None else self.to_job(row)

    def job_control(self, job_id: int) -> tuple[str | None, str | None, bool] | None:
        """(idempotency key, owner, whether a cancel was requested) of a job,
        for its handler (``current_job()``); ``None`` if it is gone."""
        c = self.table.c
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(c.idempotency_key, c.owner, c.cancel_requested_at)
                .where(c.id == job_id)
            ).first()
        return None if row is None else (row[0], row[1], row[2] is not None)

