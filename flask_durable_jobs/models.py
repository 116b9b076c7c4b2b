"""The job table and the :class:`Job` value returned to users.

The table is defined with SQLAlchemy Core on the app's ``db.metadata``, so
``db.create_all()`` creates it and Alembic autogenerate sees it. The queue's
statements live in :mod:`.sql` (one file per database) and run in
:mod:`.store`; nothing per row goes through the ORM. Statuses are
:class:`Status` members, which are the strings stored.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import typing as t

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from . import sql

TABLE_NAME = "durable_jobs"


class Status(str, enum.Enum):
    """A job's status. A member is the very string stored in the ``status``
    column, so it compares equal to it and goes to either driver as text."""

    PENDING = "pending"
    RUNNING = "running"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    DEAD = "dead"
    CANCELLED = "cancelled"

    def __str__(self) -> str:
        return self.value


# The members by their old names; typed as the strings they are, to be
# compared with and used as keys beside statuses read from the database.
PENDING: str = Status.PENDING
RUNNING: str = Status.RUNNING
RETRYING: str = Status.RETRYING
SUCCEEDED: str = Status.SUCCEEDED
DEAD: str = Status.DEAD
CANCELLED: str = Status.CANCELLED

#: Every status, in lifecycle order.
STATUSES: tuple[str, ...] = tuple(Status)
#: Statuses whose jobs wait to be claimed.
WAITING: tuple[str, ...] = (PENDING, RETRYING)
#: Statuses a job never leaves on its own.
TERMINAL: tuple[str, ...] = (SUCCEEDED, DEAD, CANCELLED)


class CallbackStatus(str, enum.Enum):
    """Where a job's completion callback stands (``callback_status``; none
    without a ``callback_url``)."""

    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"

    def __str__(self) -> str:
        return self.value


def sql_literal(value: str) -> str:
    """A status as an SQL string literal (the library's own words: no quote
    inside to escape)."""
    return f"'{value}'"


# The conditions of the partial indexes, as SQL. Queries meant to read an
# index repeat its condition word for word: SQLite (and PostgreSQL once it
# plans a prepared statement generically) matches a query to a partial index
# only on literal values, never on bound parameters.
#: Jobs waiting to be claimed (the claim's index).
WAITING_SQL = f"status IN ({', '.join(map(sql_literal, WAITING))})"
#: Jobs running under a lease.
RUNNING_SQL = f"status = {sql_literal(RUNNING)}"
#: Jobs that ended. Not an ``IN`` list: for a list of three or more values,
#: SQLite builds a temporary table each time a statement that writes a row
#: tests the condition.
ENDED_SQL = "(" + " OR ".join(f"status = {sql_literal(s)}" for s in TERMINAL) + ")"
#: Jobs whose completion callback waits to be sent.
CALLBACK_DUE_SQL = f"callback_status = {sql_literal(CallbackStatus.PENDING)}"

#: Waiting jobs of handlers with a concurrency or rate limit (their own claim's index).
LIMITED_WAITING_SQL = f"{WAITING_SQL} AND concurrency_key IS NOT NULL"
#: Running jobs of those handlers (counted per key by their claim).
LIMITED_RUNNING_SQL = f"{RUNNING_SQL} AND concurrency_key IS NOT NULL"
#: The columns an enqueue writes besides the payload, in the order every
#: insert statement lists them (``{INSERT_COLUMNS}`` and its values in the
#: SQL files): a new column of a new job is added here once. Each maps to the
#: type a statement must cast its bind to where the database cannot infer it
#: (a value selected rather than given in ``VALUES``), or ``None``.
INSERT_COLUMNS: dict[str, str | None] = {
    "job_type": None,
    "queue": None,
    "status": None,
    "priority": "INTEGER",
    "max_attempts": "INTEGER",
    "attempts": "INTEGER",
    "orphan_policy": None,
    "callback_attempts": "INTEGER",
    "run_at": None,
    "created_at": None,
    "updated_at": None,
    "batch_id": None,
    "idempotency_key": None,
    "owner": None,
    "secrets": None,
    "callback_url": None,
    "concurrency_key": None,
}

#: What the ``{NAME}`` placeholders of the SQL files (:mod:`flask_durable_jobs.sql`)
#: stand for: each status as a literal (``{RUNNING}`` is ``'running'``,
#: ``{CALLBACK_PENDING}`` a callback's), the index conditions above, and the
#: new job's columns with their binds (:data:`INSERT_COLUMNS`).
SQL_NAMES: dict[str, str] = {
    **{status.name: sql_literal(status) for status in Status},
    **{f"CALLBACK_{status.name}": sql_literal(status) for status in CallbackStatus},
    "WAITING_SQL": WAITING_SQL,
    "RUNNING_SQL": RUNNING_SQL,
    "ENDED_SQL": ENDED_SQL,
    "CALLBACK_DUE_SQL": CALLBACK_DUE_SQL,
    "LIMITED_WAITING_SQL": LIMITED_WAITING_SQL,
    "LIMITED_RUNNING_SQL": LIMITED_RUNNING_SQL,
    "INSERT_COLUMNS": ", ".join(INSERT_COLUMNS),
    "INSERT_VALUES": ", ".join(f":{name}" for name in INSERT_COLUMNS),
    "INSERT_VALUES_CAST": ", ".join(
        f":{name}" if cast is None else f"CAST(:{name} AS {cast})"
        for name, cast in INSERT_COLUMNS.items()
    ),
}

#: What PostgreSQL's ``after_create`` statements (:mod:`flask_durable_jobs.sql`)
#: make beside the job table, like its triggers: the kept counts of ended jobs
#: and the payloads' GIN indexes. They are not in the models (SQLite has
#: neither), so schema comparisons leave them out by these names.
MADE_BY_SQL_FILE = frozenset({
    "durable_jobs_counts", "ix_durable_jobs_payload_waiting", "ix_durable_jobs_payload_ended",
})

UTC = dt.timezone.utc


def utcnow() -> dt.datetime:
    return dt.datetime.now(UTC)


@t.overload
def as_utc(value: None) -> None: ...
@t.overload
def as_utc(value: dt.datetime | str) -> dt.datetime: ...
def as_utc(value: dt.datetime | str | None) -> dt.datetime | None:
    """A timestamp as either driver returns it (aware, naive UTC, or SQLite's
    text) as an aware UTC datetime."""
    if value is None:
        return None
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _json_type() -> sa.types.TypeEngine[t.Any]:
    return sa.JSON(none_as_null=True).with_variant(
        postgresql.JSONB(none_as_null=True), "postgresql"
    )


def _id_type() -> sa.types.TypeEngine[int]:
    # On SQLite only INTEGER PRIMARY KEY is the rowid alias (autoincrementing).
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def define_table(metadata: sa.MetaData) -> sa.Table:
    """Return the job table on ``metadata``, defining it the first time.

    The statements a database needs beside the table (PostgreSQL's insert
    trigger, which announces new jobs to waiting processes) come from its SQL
    file (:mod:`flask_durable_jobs.sql`) and run with the table's own
    ``CREATE`` and ``DROP``, so ``db.create_all()`` makes them too.
    """
    existing = metadata.tables.get(TABLE_NAME)
    if existing is not None:
        return existing
    table = _define_table(metadata)
    for dialect in sql.DIALECTS:
        for name, statement in sql.load(dialect).items():
            event, _, _ = name.partition(".")
            if event in ("after_create", "before_drop"):
                ddl = sa.DDL(statement.format_map(SQL_NAMES)).execute_if(  # type: ignore[no-untyped-call]
                    dialect=dialect)
                sa.event.listen(table, event, ddl)
    return table


def _define_table(metadata: sa.MetaData) -> sa.Table:
    # One declarative table: its columns and indexes read best in one place,
    # as the migration that creates them does.
    waiting = sa.text(WAITING_SQL)
    running = sa.text(RUNNING_SQL)
    finished = sa.text("finished_at IS NOT NULL")
    ended = sa.text(ENDED_SQL)
    keyed = sa.text("idempotency_key IS NOT NULL")
    in_batch = sa.text("batch_id IS NOT NULL")
    callback_due = sa.text(CALLBACK_DUE_SQL)
    limited_waiting = sa.text(LIMITED_WAITING_SQL)
    limited_running = sa.text(LIMITED_RUNNING_SQL)
    owned = sa.text("owner IS NOT NULL")
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
        # what a sweep does with an orphan of this job: 'retry' or 'dead'
        sa.Column("orphan_policy", sa.String(8), nullable=False),
        sa.Column("owner", sa.String(200), nullable=True),
        sa.Column("batch_id", sa.String(64), nullable=True),
        sa.Column("callback_url", sa.Text(), nullable=True),
        sa.Column("callback_status", sa.String(16), nullable=True),
        sa.Column("callback_attempts", sa.Integer(), nullable=False),
        sa.Column("callback_error", sa.Text(), nullable=True),
        sa.Column("callback_next_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("secrets", sa.Text(), nullable=True),  # encrypted; never returned
        # what the handler last told of its progress: {"fraction", "message", "data", "at"}
        sa.Column("progress", _json_type(), nullable=True),
        # when a cancel was asked for while the job ran (it ends cancelled, never retried)
        sa.Column("cancel_requested_at", sa.DateTime(timezone=True), nullable=True),
        # the concurrency limit's key ('' for one limit per type); NULL for
        # jobs of handlers without concurrency or rate limits
        sa.Column("concurrency_key", sa.String(200), nullable=True),
        # Partial: most jobs have no key, and a full index would take an entry
        # for every row version the queue writes.
        sa.Index(
            "uq_durable_jobs_idempotency_key",
            "idempotency_key",
            unique=True,
            postgresql_where=keyed,
            sqlite_where=keyed,
        ),
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
        # Counts and filters over ended jobs (stats, the admin list). Partial, so
        # claims never plan through it and running jobs never write to it;
        # waiting and running jobs are counted through their own indexes.
        sa.Index(
            "ix_durable_jobs_ended",
            "status",
            "job_type",
            postgresql_where=ended,
            sqlite_where=ended,
        ),
        sa.Index(
            "ix_durable_jobs_finished",
            "finished_at",
            postgresql_where=finished,
            sqlite_where=finished,
        ),
        sa.Index(
            "ix_durable_jobs_batch",
            "batch_id",
            "status",
            postgresql_where=in_batch,
            sqlite_where=in_batch,
        ),
        sa.Index(
            "ix_durable_jobs_callback",
            "callback_next_at",
            postgresql_where=callback_due,
            sqlite_where=callback_due,
        ),
        # The limited claim: the keys with waiting jobs (a loose index scan),
        # then each key's next jobs in claim order. Plain jobs have no key, so
        # they never enter it.
        sa.Index(
            "ix_durable_jobs_limited",
            "job_type",
            "concurrency_key",
            "priority",
            "run_at",
            "id",
            postgresql_where=limited_waiting,
            sqlite_where=limited_waiting,
        ),
        # The running jobs of limited types, counted per key at each limited claim.
        sa.Index(
            "ix_durable_jobs_limited_running",
            "job_type",
            "concurrency_key",
            postgresql_where=limited_running,
            sqlite_where=limited_running,
        ),
        # The admin list's owner filter, newest first (keyset on id). Partial:
        # jobs without an owner never write to it.
        sa.Index(
            "ix_durable_jobs_owner",
            "owner",
            "id",
            postgresql_where=owned,
            sqlite_where=owned,
        ),
        # The admin list's created_after / created_before window.
        sa.Index("ix_durable_jobs_created", "created_at"),
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
    orphan_policy: str = "retry"
    owner: str | None = None
    batch_id: str | None = None
    callback_url: str | None = None
    callback_status: str | None = None
    callback_attempts: int = 0
    callback_error: str | None = None
    #: The process running the job (host:pid:...), while it is ``running``.
    worker_id: str | None = None
    #: What the handler last reported through ``current_job().progress()``:
    #: ``{"fraction", "message", "data", "at"}``, or ``None``.
    progress: dict[str, t.Any] | None = None
    #: When ``jobs.cancel()`` asked the running job to stop (``None``: never).
    cancel_requested_at: dt.datetime | None = None

    def to_dict(self) -> dict[str, t.Any]:
        """A JSON-ready dict; datetimes as ISO 8601 strings."""
        out: dict[str, t.Any] = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            out[field.name] = value.isoformat() if isinstance(value, dt.datetime) else value
        return out


@dataclasses.dataclass(frozen=True)
class Batch:
    """Jobs enqueued together by ``enqueue_batch``."""

    id: str
    job_ids: list[int]


#: Columns in the order :class:`Job` takes them; the store selects these.
JOB_COLUMNS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Job))


BATCH_TABLE_NAME = "durable_jobs_batches"


def define_batch_table(metadata: sa.MetaData) -> sa.Table:
    """Batches: jobs enqueued together, and the job to run when all have ended."""
    return sa.Table(
        BATCH_TABLE_NAME,
        metadata,
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("on_complete", sa.String(200), nullable=True),
        sa.Column("on_complete_payload", _json_type(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        keep_existing=True,  # defined once per metadata; later calls get it
    )


QUEUES_TABLE_NAME = "durable_jobs_queues"
LIMITS_TABLE_NAME = "durable_jobs_limits"
PROCESSES_TABLE_NAME = "durable_jobs_processes"


class ControlTables(t.NamedTuple):
    queues: sa.Table
    limits: sa.Table
    processes: sa.Table


def define_control_tables(metadata: sa.MetaData) -> ControlTables:
    """The tables of queue states, limits and live processes on ``metadata``.

    ``durable_jobs_queues``: a queue's stored state (paused), read by every
    claim. ``durable_jobs_limits``: one row per limited job type, locked by its
    claim, holding the recent start times its rate limit counts.
    ``durable_jobs_processes``: every process that runs the processor,
    renewed by its heartbeat.
    """
    found = [metadata.tables.get(name)
             for name in (QUEUES_TABLE_NAME, LIMITS_TABLE_NAME, PROCESSES_TABLE_NAME)]
    if all(table is not None for table in found):
        return ControlTables(*t.cast("list[sa.Table]", found))
    queues = sa.Table(
        QUEUES_TABLE_NAME,
        metadata,
        sa.Column("name", sa.String(100), primary_key=True),
        sa.Column("paused", sa.Boolean(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        keep_existing=True,
    )
    limits = sa.Table(
        LIMITS_TABLE_NAME,
        metadata,
        sa.Column("job_type", sa.String(200), primary_key=True),
        # JSON array of the start times (epoch seconds) within the rate window
        sa.Column("starts", sa.Text(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        keep_existing=True,
    )
    processes = sa.Table(
        PROCESSES_TABLE_NAME,
        metadata,
        sa.Column("id", sa.String(200), primary_key=True),  # the runner's worker id
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("queues", sa.Text(), nullable=True),  # JSON list; NULL: every queue
        sa.Column("concurrency", sa.Integer(), nullable=False),
        sa.Column("version", sa.String(50), nullable=False),
        sa.Column("inflight", sa.Integer(), nullable=False),
        keep_existing=True,
    )
    return ControlTables(queues, limits, processes)
