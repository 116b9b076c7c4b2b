"""The job table and the :class:`Job` value returned to users.

The table is defined with SQLAlchemy Core on the app's ``db.metadata``, so
``db.create_all()`` creates it and Alembic autogenerate sees it. The queue's
hot path (claim, finish, heartbeat) uses plain SQL in :mod:`.store`; nothing
per row goes through the ORM.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import typing as t

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

TABLE_NAME = "durable_jobs"

PENDING = "pending"
RUNNING = "running"
RETRYING = "retrying"
SUCCEEDED = "succeeded"
DEAD = "dead"
CANCELLED = "cancelled"

#: Every status, in lifecycle order.
STATUSES: tuple[str, ...] = (PENDING, RUNNING, RETRYING, SUCCEEDED, DEAD, CANCELLED)
#: Statuses whose jobs wait to be claimed.
WAITING: tuple[str, ...] = (PENDING, RETRYING)
#: Statuses a job never leaves on its own.
TERMINAL: tuple[str, ...] = (SUCCEEDED, DEAD, CANCELLED)

UTC = dt.timezone.utc


def utcnow() -> dt.datetime:
    return dt.datetime.now(UTC)


def _json_type() -> sa.types.TypeEngine[t.Any]:
    return sa.JSON(none_as_null=True).with_variant(
        postgresql.JSONB(none_as_null=True), "postgresql"
    )


def _id_type() -> sa.types.TypeEngine[int]:
    # On SQLite only INTEGER PRIMARY KEY is the rowid alias (autoincrementing).
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def define_table(metadata: sa.MetaData) -> sa.Table:
    """Return the job table on ``metadata``, defining it the first time."""
    existing = metadata.tables.get(TABLE_NAME)
    if existing is not None:
        return existing
    waiting = sa.text("status IN ('pending', 'retrying')")
    running = sa.text("status = 'running'")
    finished = sa.text("finished_at IS NOT NULL")
    return sa.Table(
        TABLE_NAME,
        metadata,
        sa.Column("id", _id_type(), primary_key=True, autoincrement=True),
        sa.Column("job_type", sa.String(200), nullable=False),
        sa.Column("queue", sa.String(100), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("payload", _json_type(), nullable=False),
        sa.Column("result", _json_type(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("run_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("idempotency_key", sa.String(255), nullable=True),
        sa.Column("lease_token", sa.String(32), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("worker_id", sa.String(200), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.UniqueConstraint("idempotency_key", name="uq_durable_jobs_idempotency_key"),
        # The claim query reads only this index: it holds waiting jobs alone,
        # so finished rows never slow a claim down.
        sa.Index(
            "ix_durable_jobs_due",
            "priority",
            "run_at",
            "id",
            postgresql_where=waiting,
            sqlite_where=waiting,
        ),
        sa.Index(
            "ix_durable_jobs_lease",
            "lease_expires_at",
            postgresql_where=running,
            sqlite_where=running,
        ),
        sa.Index("ix_durable_jobs_status_type", "status", "job_type"),
        sa.Index(
            "ix_durable_jobs_finished",
            "finished_at",
            postgresql_where=finished,
            sqlite_where=finished,
        ),
    )


@dataclasses.dataclass
class Job:
    """A snapshot of one job row. Every datetime is timezone-aware UTC."""

    id: int
    job_type: str
    queue: str
    status: str
    payload: dict[str, t.Any]
    result: t.Any
    attempts: int
    max_attempts: int
    priority: int
    run_at: dt.datetime
    last_error: str | None
    idempotency_key: str | None
    created_at: dt.datetime
    updated_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    lease_expires_at: dt.datetime | None = None

    def to_dict(self) -> dict[str, t.Any]:
        """A JSON-ready dict; datetimes as ISO 8601 strings."""
        out: dict[str, t.Any] = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            out[field.name] = value.isoformat() if isinstance(value, dt.datetime) else value
        return out


#: Columns in the order :class:`Job` takes them; the store selects these.
JOB_COLUMNS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Job))
