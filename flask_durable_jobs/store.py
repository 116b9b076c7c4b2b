"""The one module that talks SQL.

Two kinds of statement live here:

* the hot path (claim, finish, heartbeat, release, sweep), written per
  dialect in plain SQL on a raw driver connection, claiming and finishing many
  jobs per statement; an enqueue's ``INSERT``, plain SQL written once per
  column set and sent through the caller's connection (or, on SQLite,
  committing alone, a connection kept for it);
* everything else (enqueue with an idempotency key, admin reads and
  transitions, prune), written once with SQLAlchemy Core.

Every write to a running job carries the claim's ``lease_token`` in its
``WHERE`` clause: a worker that lost its lease updates zero rows, so its late
result can never overwrite newer state. The token alone is the fence: a claim
sets a new one, and every write that ends the run (finish, sweep, release)
clears it, so a row holds a token only while that claim's run is current. (A
``status = 'running'`` test would add nothing, and would let PostgreSQL plan
the write through the partial index of running jobs, which holds an entry for
every job that ran since the last VACUUM.)

PostgreSQL claims with ``FOR UPDATE SKIP LOCKED``. SQLite has one writer: the
library's writes take the write lock at the start (``BEGIN IMMEDIATE``) and
wait for it through the busy timeout, so "database is locked" never surfaces.
"""

from __future__ import annotations

import abc
import collections
import contextlib
import dataclasses
import datetime as dt
import json
import logging
import operator
import threading
import time
import typing as t

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.orm import Session, scoped_session

from .errors import ConfigError, InvalidTransition, JobNotFound
from .models import (
    CANCELLED,
    DEAD,
    ENDED_SQL,
    JOB_COLUMNS,
    NOTIFY_CHANNEL,
    PENDING,
    RETRYING,
    RUNNING,
    RUNNING_SQL,
    STATUSES,
    SUCCEEDED,
    TERMINAL,
    UTC,
    WAITING,
    WAITING_SQL,
    Job,
    as_utc,
)

log = logging.getLogger("flask_durable_jobs")

#: Seconds SQLite waits for the write lock before giving up.
SQLITE_BUSY_TIMEOUT = 60.0
#: Idle SQLite connections kept per app engine for enqueues that commit on
#: their own (more are opened while more threads enqueue at once).
ENQUEUE_IDLE_CONNECTIONS = 4
#: An engine :class:`SQLiteStore` has not looked at yet.
_UNSEEN: t.Any = object()
#: Connections left behind by a fork, kept from being closed in the child.
_FORGOTTEN: list[t.Any] = []
#: A positional parameter in driver SQL, by DB-API paramstyle.
_MARKS = {"qmark": "?", "format": "%s", "pyformat": "%s"}
#: The order a claim's rows start in: the claim query's (priority, run_at, id),
#: from the two sort columns the claim returns last.
_CLAIM_ORDER = operator.itemgetter(7, 8, 0)
#: A Job's fields before the inserted values fill them in.
_NEW_JOB: dict[str, t.Any] = {**dict.fromkeys(JOB_COLUMNS), "callback_attempts": 0}
#: Rows deleted per statement when pruning, so no lock is held for long.
PRUNE_BATCH = 1000
#: Orphans recovered per statement by the sweep.
SWEEP_BATCH = 1000

#: Jobs per bulk-insert statement.
INSERT_CHUNK = 1000
#: Columns every job of one ``enqueue_many`` call shares.
BULK_SHARED_COLUMNS = (
    "job_type", "queue", "status", "priority", "max_attempts", "attempts", "orphan_policy",
    "callback_attempts", "run_at", "created_at", "updated_at", "batch_id",
)


@dataclasses.dataclass(slots=True)
class ClaimedRow:
    id: int
    job_type: str
    payload: str  # JSON text, decoded on the handler's thread
    attempts: int
    max_attempts: int
    token: str
    secrets: str | None = None  # encrypted; decrypted on the handler thread only
    batch_id: str | None = None


@dataclasses.dataclass
class Watcher:
    wait: t.Callable[[float], bool]
    close: t.Callable[[], None]


@dataclasses.dataclass(slots=True)
class Finish:
    """The outcome of one attempt, to be written if the lease still holds."""

    id: int
    token: str
    status: str  # succeeded, retrying or dead
    result: str | None = None  # JSON text
    error: str | None = None
    run_at: dt.datetime | None = None  # next attempt, for retrying
    # for signals and metrics; not written
    job_type: str = ""
    attempt: int = 0
    duration: float | None = None
    value: t.Any = None
    batch_id: str | None = None


def _is_broken(driver_conn: t.Any) -> bool:
    return bool(getattr(driver_conn, "broken", False) or getattr(driver_conn, "closed", False))


def _unobserved(conn: sa.Connection) -> bool:
    """Whether no event listener, echo or dialect hook would see a statement
    sent on ``conn``: the test SQLAlchemy itself makes before dispatching
    them. On a SQLAlchemy without these attributes, assume something would."""
    try:
        return not (conn._has_events or conn.engine._has_events or conn._echo
                    or conn.dialect._has_events)
    except AttributeError:  # pragma: no cover - another SQLAlchemy
        return False


def _send(conn: sa.Connection, sql: str, params: t.Sequence[t.Any]) -> t.Any:
    """Run ``sql`` on the connection's driver cursor and return the first
    column of its row; a driver error is raised as SQLAlchemy would raise it
    (wrapped, and the connection invalidated if it was lost)."""
    cursor = conn.connection.cursor()
    try:
        cursor.execute(sql, params)
        row: t.Any = cursor.fetchone()
        return row[0]
    except Exception as exc:
        conn._handle_dbapi_exception(exc, sql, params, cursor, None)
        raise  # pragma: no cover - the call above raises
    finally:
        cursor.close()


def _as_sqlalchemy_error(
    exc: Exception, sql: str, params: t.Any, dialect: sa.Dialect
) -> sa.exc.StatementError:
    """A driver error as SQLAlchemy raises it (``IntegrityError``,
    ``OperationalError``...)."""
    return sa.exc.DBAPIError.instance(sql, params, exc, dialect.loaded_dbapi.Error,
                                      dialect=dialect)


def _in_memory(url: sa.URL) -> bool:
    """An SQLite database that lives in one connection (or one process)."""
    return (url.database or "") in ("", ":memory:") or "mode=memory" in str(url)


def _no_connection_in_memory() -> t.Any:
    raise ConfigError(
        "flask-durable-jobs cannot run or read jobs on an in-memory SQLite database"
        " (sqlite://): it lives in the one connection the app's sessions use, which the"
        " library never shares. Enqueueing works; to run or read jobs (drain(), get(),"
        " the admin API), use a database file, e.g. sqlite:///{tmp_path}/test.db in tests."
    )


def build_engine(
    app_engine: sa.Engine, pool_size: int, connect_args: dict[str, t.Any] | None = None
) -> sa.Engine:
    """The library's own engine, on the same database as the app's.

    A separate pool keeps the worker's short transactions apart from the app's
    sessions, and lets the library pick the driver (psycopg 3) and SQLite
    settings (WAL, busy timeout, explicit ``BEGIN IMMEDIATE``). An in-memory
    SQLite database exists only in the one connection the app's sessions
    share, so the library gets none of its own there: enqueueing (in the
    caller's session) works, and anything that needs a connection of the
    library's raises :class:`ConfigError` saying why.
    """
    url = app_engine.url
    backend = url.get_backend_name()
    if backend == "postgresql":
        # Every statement the library sends is complete on its own (claim,
        # finish, heartbeat, transitions), so it runs in autocommit: one round
        # trip, no BEGIN/COMMIT. Broken connections are dropped on error
        # (see Store._raw) instead of pinging before every use.
        return sa.create_engine(
            url.set(drivername="postgresql+psycopg"),
            pool_size=pool_size,
            max_overflow=pool_size,
            isolation_level="AUTOCOMMIT",
            connect_args=dict(connect_args or {}),
        )
    if backend == "sqlite":
        if _in_memory(url):
            return sa.create_engine("sqlite://", creator=_no_connection_in_memory)
        engine = sa.create_engine(
            url,
            pool_size=pool_size,
            max_overflow=pool_size,
            connect_args={
                **(connect_args or {}),
                "timeout": SQLITE_BUSY_TIMEOUT,
                "isolation_level": None,
                "check_same_thread": False,
            },
        )

        @sa.event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: t.Any, _record: t.Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT * 1000)}")
            if cur.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                try:
                    cur.execute("PRAGMA journal_mode=WAL")
                except Exception:  # another connection is mid-transaction; next time
                    log.debug("could not switch %s to WAL yet", url.database, exc_info=True)
            # A lost finish after a power cut means a rerun, never a lost job.
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        # WAL is a property of the file: switching now also spares the app's
        # own connections the rollback journal's extra syncs on every enqueue.
        engine.connect().close()
        return engine
    raise ConfigError(
        f"unsupported database {backend!r}: flask-durable-jobs runs on PostgreSQL and SQLite"
    )


class Store(abc.ABC):
    """Queue operations on one database. Use :func:`make_store`."""

    dialect: str = ""
    #: The library's own connections commit each statement, durably, as the
    #: app's would (PostgreSQL). On SQLite they trade the last commits before
    #: a power cut for speed, which suits finishing jobs but not enqueueing.
    autocommits = False
    #: Two connections can write at once without waiting on each other: a
    #: loop's outcome write runs beside its next claim (PostgreSQL; SQLite
    #: has one writer at a time).
    concurrent_writes = False

    def __init__(self, engine: sa.Engine, table: sa.Table, batches: sa.Table) -> None:
        self.engine = engine
        self.table = table
        self.batches = batches
        self._local = threading.local()  # the connection pinned by this thread, if any
        self._columns = [table.c[name] for name in JOB_COLUMNS]
        # Built once: enqueue is on the request path.
        self._insert = sa.insert(table).returning(table.c.id)
        insert = pg_dialect.insert if self.dialect == "postgresql" else sqlite_dialect.insert
        self._insert_once = (
            insert(table)
            .on_conflict_do_nothing(
                index_elements=["idempotency_key"],
                index_where=table.c.idempotency_key.is_not(None),
            )
            .returning(table.c.id)
        )
        self._insert_many = self._bulk_insert_statement()
        self._plain_inserts: dict[tuple[tuple[str, ...], str, str], str] = {}

    def _bulk_insert_statement(self) -> sa.TextClause:
        c = self.table.c
        shared = list(BULK_SHARED_COLUMNS)
        columns = ", ".join([*shared, "payload"])
        if self.dialect == "postgresql":
            casts = {"priority": "INTEGER", "max_attempts": "INTEGER", "attempts": "INTEGER",
                     "callback_attempts": "INTEGER"}
            selected = ", ".join(
                f"CAST(:{n} AS {casts[n]})" if n in casts else f":{n}" for n in shared
            )
            source = ("CAST(p.payload AS JSONB) FROM unnest(CAST(:payloads AS TEXT[]))"
                      " WITH ORDINALITY AS p(payload, ord) ORDER BY p.ord")
        else:
            selected = ", ".join(f":{n}" for n in shared)
            source = "value FROM json_each(:payloads) ORDER BY key"
        text = sa.text(
            f"INSERT INTO {self.table.name} ({columns}) SELECT {selected}, {source}"
            " RETURNING id"
        )
        return text.bindparams(
            *(sa.bindparam(n, type_=c[n].type) for n in ("run_at", "created_at", "updated_at"))
        )

    # -- shared helpers -------------------------------------------------

    def to_job(self, row: t.Any) -> Job:
        data = dict(zip(JOB_COLUMNS, row, strict=True))
        for key in ("run_at", "created_at", "updated_at", "started_at", "finished_at",
                    "lease_expires_at"):
            data[key] = as_utc(data[key])
        return Job(**data)

    @contextlib.contextmanager
    def pinned(self) -> t.Iterator[None]:
        """Keep one pooled connection for this thread's hot-path statements.

        A worker loop sends two statements per batch; checking a connection
        out of the pool and back in around each one costs more Python time
        than building the statement.
        """
        if getattr(self._local, "conn", None) is not None:
            yield  # already pinned by an outer loop on this thread
            return
        self._local.conn = self.engine.raw_connection()
        try:
            yield
        finally:
            conn, self._local.conn = self._local.conn, None
            if conn is not None:
                conn.close()

    @contextlib.contextmanager
    def _raw(self) -> t.Iterator[t.Any]:
        """A raw driver cursor inside one write transaction."""
        pinned = getattr(self._local, "conn", None)
        conn = pinned or self.engine.raw_connection()
        try:
            cur = conn.cursor()
            self._begin(cur)
            try:
                yield cur
            except BaseException:
                if _is_broken(conn.driver_connection):
                    conn.invalidate()  # never hand a dead connection out again
                    if pinned is not None:  # closed below; the next statement checks out anew
                        self._local.conn = pinned = None
                else:
                    self._rollback(conn, cur)
                raise
            self._commit(conn, cur)
            cur.close()
        finally:
            if pinned is None:
                conn.close()

    @contextlib.contextmanager
    def transaction(self) -> t.Iterator[sa.Connection]:
        """A real write transaction for work of several statements.

        The library's PostgreSQL engine autocommits single statements; this
        one is READ COMMITTED and all-or-nothing. On SQLite it takes the
        write lock up front (``BEGIN IMMEDIATE``).
        """
        with self.engine.connect() as conn:
            if self.dialect == "postgresql":
                conn = conn.execution_options(isolation_level="READ COMMITTED")
            else:
                driver = conn.connection.driver_connection
                if driver is not None and not driver.in_transaction:
                    conn.exec_driver_sql("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.rollback()
                raise
            conn.commit()

    def close_connections(self, *, close: bool = True) -> None:  # noqa: B027
        """Close connections this store keeps outside its engine (SQLite)."""

    def _begin(self, cur: t.Any) -> None:  # noqa: B027 - no-op where statements autocommit
        """Start the write transaction."""

    def _commit(self, conn: t.Any, cur: t.Any) -> None:  # noqa: B027
        """Commit it."""

    def _rollback(self, conn: t.Any, cur: t.Any) -> None:  # noqa: B027
        """Roll it back."""

    # -- enqueue (caller's session, any driver) --------------------------

    def insert(
        self, session: Session | scoped_session[t.Any], values: dict[str, t.Any]
    ) -> tuple[Job, bool]:
        """Insert one job in the caller's transaction; returns (job, created).

        With an idempotency key, a conflicting insert does nothing and the
        existing job is returned: the unique constraint decides, also between
        processes.
        """
        # The session's own connection: the caller's transaction, without the
        # ORM's per-statement machinery (enqueue is on the request path).
        return self._insert_on(session.connection(), values)

    def insert_now(
        self, values: dict[str, t.Any], engine: sa.Engine | None = None
    ) -> tuple[Job, bool]:
        """Insert one job in a transaction of its own, on ``engine`` (by default
        the library's own, when it :attr:`autocommits` durably)."""
        with (engine or self.engine).begin() as conn:
            return self._insert_on(conn, values)

    def _insert_on(self, conn: sa.Connection, values: dict[str, t.Any]) -> tuple[Job, bool]:
        key = values.get("idempotency_key")
        mark = _MARKS.get(conn.dialect.paramstyle)
        if key is None and mark is not None:
            # SQL written once per column set and sent as is: a request's
            # enqueue skips compiling the statement and processing its
            # parameters; and, when nothing would see it go by, SQLAlchemy's
            # execution and result objects too (more than the driver's own
            # work for this statement).
            sql = self._plain_insert(tuple(values), mark)
            params = self._driver_params(values)
            if _unobserved(conn):
                job_id = _send(conn, sql, params)
            else:
                job_id = conn.exec_driver_sql(sql, params).scalar_one()
            return self._job_from(job_id, values), True
        job_id = conn.execute(self._insert if key is None else self._insert_once,
                              values).scalar()
        if job_id is not None:
            return self._job_from(job_id, values), True
        existing = conn.execute(
            sa.select(*self._columns).where(self.table.c.idempotency_key == key)
        ).one()
        return self.to_job(existing), False

    #: The payload's place in a plain INSERT; ``{}`` is the parameter mark.
    _payload_mark = "{}"

    def _plain_insert(self, names: tuple[str, ...], mark: str, returning: str = " RETURNING id"
                      ) -> str:
        """``INSERT`` of one job with these columns, then ``returning``."""
        sql = self._plain_inserts.get((names, mark, returning))
        if sql is None:
            marks = (self._payload_mark.format(mark) if n == "payload" else mark for n in names)
            sql = self._plain_inserts[names, mark, returning] = (
                f"INSERT INTO {self.table.name} ({', '.join(names)})"
                f" VALUES ({', '.join(marks)}){returning}"
            )
        return sql

    def _driver_params(self, values: dict[str, t.Any]) -> tuple[t.Any, ...]:
        """``values`` as the driver takes them: the payload as JSON text."""
        return tuple(json.dumps(v) if n == "payload" else v for n, v in values.items())

    def _job_from(self, job_id: int, values: dict[str, t.Any]) -> Job:
        """The Job just inserted, from what was sent: no columns to read back."""
        fields = {**_NEW_JOB, **values, "id": job_id}
        for name in values.keys() - _NEW_JOB.keys():  # columns a Job does not show
            del fields[name]
        return Job(**fields)

    def insert_many(
        self,
        session: Session | scoped_session[t.Any],
        shared: dict[str, t.Any],
        payloads: list[str],
    ) -> list[int]:
        """Insert jobs that differ only in payload (JSON texts): one set-based
        statement per chunk; returns ids in payload order."""
        ids: list[int] = []
        for start in range(0, len(payloads), INSERT_CHUNK):
            chunk = payloads[start:start + INSERT_CHUNK]
            params: dict[str, t.Any] = {"batch_id": None, **shared}
            if self.dialect == "postgresql":
                params["payloads"] = chunk
            else:
                params["payloads"] = "[" + ",".join(chunk) + "]"
            # ids come from one sequence in insertion order, which is payload order
            ids.extend(sorted(session.execute(self._insert_many, params).scalars()))
        return ids

    # -- admin reads and transitions ------------------------------------

    def get(self, job_id: int) -> Job | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(*self._columns).where(self.table.c.id == job_id)
            ).first()
        return None if row is None else self.to_job(row)

    def list_jobs(
        self,
        *,
        status: str | None,
        job_type: str | None,
        queue: str | None,
        offset: int,
        limit: int,
    ) -> tuple[list[Job], int]:
        c = self.table.c
        conditions = []
        if status is not None:  # a literal, so that SQLite can use a partial index
            conditions.append(c.status == sa.literal(status, literal_execute=True))
        if job_type is not None:
            conditions.append(c.job_type == job_type)
        if queue is not None:
            conditions.append(c.queue == queue)
        where = sa.and_(sa.true(), *conditions)
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(*self._columns).where(where).order_by(c.id.desc())
                .offset(offset).limit(limit)
            ).all()
            total = conn.execute(sa.select(sa.func.count()).select_from(self.table).where(where))
            count = int(total.scalar_one())
        return [self.to_job(row) for row in rows], count

    def stats(self, now: dt.datetime, handled: t.Collection[str]) -> dict[str, t.Any]:
        """Counts by status and type, and the due backlog, in two aggregate queries."""
        c = self.table.c
        by_status = dict.fromkeys(STATUSES, 0)
        by_type: dict[str, dict[str, int]] = {}
        unhandled: dict[str, int] = {}
        oldest: dt.datetime | None = None
        with self.engine.connect() as conn:
            # One aggregate per partial index (ended, waiting, running jobs),
            # in one statement: one snapshot, so a job changing status while
            # stats are read is counted exactly once.
            counts = sa.union_all(*(
                sa.select(c.job_type, c.status, sa.func.count())
                .where(sa.text(group))
                .group_by(c.status, c.job_type)
                for group in (ENDED_SQL, WAITING_SQL, RUNNING_SQL)
            ))
            for job_type, status, count in conn.execute(counts):
                by_status[status] = by_status.get(status, 0) + count
                by_type.setdefault(job_type, dict.fromkeys(STATUSES, 0))[status] = count
            for job_type, count, first in conn.execute(
                sa.select(c.job_type, sa.func.count(), sa.func.min(c.run_at))
                .where(sa.text(WAITING_SQL), c.run_at <= now)
                .group_by(c.job_type)
            ):
                first = as_utc(first)
                oldest = first if oldest is None or first < oldest else oldest
                if job_type not in handled:
                    unhandled[job_type] = count
        return {
            "by_status": by_status,
            "by_type": by_type,
            "total": sum(by_status.values()),
            "oldest_due_age_seconds": (
                None if oldest is None else max(0.0, (now - oldest).total_seconds())
            ),
            "unhandled": unhandled,
        }

    def due_backlog(self, now: dt.datetime) -> tuple[int, float | None]:
        """(number of due jobs, oldest one's age in seconds or None), in one query.

        For health checks and metrics scrapes: it reads only waiting jobs (the
        partial due index), unlike :meth:`stats`, which counts every row.
        """
        c = self.table.c
        with self.engine.connect() as conn:
            count, first = conn.execute(
                sa.select(sa.func.count(), sa.func.min(c.run_at))
                .where(sa.text(WAITING_SQL), c.run_at <= now)
            ).one()
        first = as_utc(first)
        age = None if first is None else max(0.0, (now - first).total_seconds())
        return int(count), age

    def _transition(
        self,
        job_id: int,
        action: str,
        allowed: tuple[str, ...],
        values: dict[str, t.Any],
    ) -> Job:
        c = self.table.c
        with self.engine.begin() as conn:
            row = conn.execute(
                sa.update(self.table)
                .where(c.id == job_id, c.status.in_(allowed))
                .values(values)
                .returning(*self._columns)
            ).first()
        if row is not None:
            return self.to_job(row)
        current = self.get(job_id)
        if current is None:
            raise JobNotFound(job_id)
        raise InvalidTransition(job_id, current.status, action, allowed)

    def cancel(self, job_id: int, now: dt.datetime) -> Job:
        c = self.table.c
        has_callback = c.callback_url.is_not(None)
        return self._transition(
            job_id, "cancel", WAITING,
            {"status": CANCELLED, "finished_at": now, "updated_at": now, "secrets": None,
             "callback_status": sa.case((has_callback, "pending"), else_=c.callback_status),
             "callback_next_at": sa.case((has_callback, now), else_=c.callback_next_at)},
        )

    def retry(self, job_id: int, now: dt.datetime) -> Job:
        return self._transition(
            job_id, "retry", (DEAD, CANCELLED),
            {"status": PENDING, "attempts": 0, "run_at": now, "finished_at": None,
             "started_at": None, "result": None, "updated_at": now,
             "callback_status": None, "callback_attempts": 0, "callback_error": None,
             "callback_next_at": None},
        )

    def delete(self, job_id: int) -> None:
        c = self.table.c
        with self.engine.begin() as conn:
            deleted = conn.execute(
                sa.delete(self.table).where(c.id == job_id, c.status != RUNNING)
            ).rowcount
        if deleted:
            return
        current = self.get(job_id)
        if current is None:
            raise JobNotFound(job_id)
        raise InvalidTransition(
            job_id, current.status, "delete", tuple(s for s in STATUSES if s != RUNNING)
        )

    def prune(self, finished_before: dt.datetime, dead_before: dt.datetime) -> int:
        """Delete old finished jobs in small batches; returns how many."""
        c = self.table.c
        old = sa.or_(
            sa.and_(c.status.in_((SUCCEEDED, CANCELLED)), c.finished_at < finished_before),
            sa.and_(c.status == DEAD, c.finished_at < dead_before),
        )
        batch = (
            sa.select(c.id)
            .where(c.finished_at.is_not(None), old,
                   sa.or_(c.callback_status.is_(None), c.callback_status != "pending"))
            .limit(PRUNE_BATCH)
            .scalar_subquery()
        )
        total = 0
        while True:
            with self.engine.begin() as conn:
                deleted = conn.execute(sa.delete(self.table).where(c.id.in_(batch))).rowcount
            total += deleted
            if deleted < PRUNE_BATCH:
                return total

    # -- batches ------------------------------------------------------------

    def batch_counts(self, batch_id: str) -> dict[str, int]:
        c = self.table.c
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(c.status, sa.func.count()).where(c.batch_id == batch_id)
                .group_by(c.status)
            ).all()
        counts = dict.fromkeys(STATUSES, 0)
        counts.update({status: count for status, count in rows})
        return counts

    def batch_row(self, batch_id: str) -> t.Any:
        with self.engine.connect() as conn:
            return conn.execute(
                sa.select(self.batches).where(self.batches.c.id == batch_id)
            ).first()

    def complete_batches(
        self, batch_ids: t.Iterable[str], now: dt.datetime,
        completion: t.Callable[[str, t.Any], dict[str, t.Any] | None],
    ) -> dict[str, int | None]:
        """Enqueue the completion job of each batch whose jobs have all ended.

        Run after the terminal writes committed, by every writer: the last
        one to commit sees the whole batch ended. The job's unique
        idempotency key makes the completion job exactly-once. Returns the
        batches this call completed, each with its new job's id (or None).
        """
        c = self.table.c
        done: dict[str, int | None] = {}
        for batch_id in set(batch_ids):
            with self.engine.begin() as conn:
                open_jobs = conn.execute(
                    sa.select(sa.func.count()).select_from(self.table)
                    .where(c.batch_id == batch_id, c.status.not_in(TERMINAL))
                ).scalar_one()
                if open_jobs:
                    continue
                batch = conn.execute(
                    sa.select(self.batches).where(self.batches.c.id == batch_id,
                                                  self.batches.c.completed_at.is_(None))
                ).first()
                if batch is None:
                    continue
                values = completion(batch_id, batch)
                job_id = None
                if values is not None:
                    job_id = conn.execute(self._insert_once, values).scalar()
                conn.execute(
                    sa.update(self.batches)
                    .where(self.batches.c.id == batch_id, self.batches.c.completed_at.is_(None))
                    .values(completed_at=now)
                )
            done[batch_id] = job_id
        return done

    # -- recurring schedules (periodic.py) ----------------------------------

    def schedule_marks(self, table: sa.Table, keys: list[str]) -> dict[str, t.Any]:
        """The last fire time dealt with, per schedule key (absent: never seen)."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(table.c.key, table.c.last_fire_at).where(table.c.key.in_(keys))
            ).all()
        return {key: as_utc(last) for key, last in rows}

    def start_schedule(self, table: sa.Table, values: dict[str, t.Any]) -> None:
        """Record a schedule seen for the first time (another process may have)."""
        insert = pg_dialect.insert if self.dialect == "postgresql" else sqlite_dialect.insert
        with self.transaction() as conn:
            conn.execute(
                insert(table).values(values).on_conflict_do_nothing(index_elements=["key"])
            )

    def fire_schedule(
        self,
        table: sa.Table,
        key: str,
        fire: dt.datetime,
        schedule: dict[str, t.Any],
        job: dict[str, t.Any],
    ) -> int | None:
        """Advance the schedule's watermark to ``fire`` and enqueue its job, in one
        transaction; returns the job's id, or None when this fire time was dealt
        with already (here or in another process). The job's idempotency key
        backs the watermark up."""
        c = table.c
        with self.transaction() as conn:
            advanced = conn.execute(
                sa.update(table)
                .where(c.key == key, sa.or_(c.last_fire_at.is_(None), c.last_fire_at < fire))
                .values(last_fire_at=fire, **schedule)
            ).rowcount
            if not advanced:
                return None
            job_id: int | None = conn.execute(self._insert_once, job).scalar()
            return job_id

    # -- completion callbacks ---------------------------------------------

    def claim_callbacks(
        self, now: dt.datetime, lease_until: dt.datetime, limit: int
    ) -> list[Job]:
        """Take due callback deliveries: their next time moves to ``lease_until``,
        which also fences the write of the delivery's outcome."""
        c = self.table.c
        due = (
            sa.select(c.id)
            .where(c.callback_status == "pending", c.callback_next_at <= now)
            .order_by(c.callback_next_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
        with self.engine.begin() as conn:
            rows = conn.execute(
                sa.update(self.table).where(c.id.in_(due))
                .values(callback_next_at=lease_until).returning(*self._columns)
            ).all()
        return [self.to_job(row) for row in rows]

    def record_callback(
        self,
        job_id: int,
        claimed_until: dt.datetime,
        *,
        status: str,
        attempts: int,
        error: str | None,
        next_at: dt.datetime | None,
    ) -> bool:
        """Write a delivery's outcome if this deliverer still holds it."""
        c = self.table.c
        with self.engine.begin() as conn:
            count = conn.execute(
                sa.update(self.table)
                .where(c.id == job_id, c.callback_status == "pending",
                       c.callback_next_at == claimed_until)
                .values(callback_status=status, callback_attempts=attempts,
                        callback_error=error, callback_next_at=next_at)
            ).rowcount
        return bool(count)

    # -- wake-ups ---------------------------------------------------------

    @abc.abstractmethod
    def watch(self) -> Watcher:
        """A watcher whose ``wait`` returns early when another process may
        have added jobs. A shortcut only: polling stays the correctness path."""

    # -- hot path: implemented per dialect -------------------------------

    @abc.abstractmethod
    def claim(
        self,
        *,
        job_types: t.Sequence[str],
        queues: t.Sequence[str] | None,
        limit: int,
        now: dt.datetime,
        lease_until: dt.datetime,
        token: str,
        worker_id: str,
        with_secrets: bool = True,
    ) -> list[ClaimedRow]:
        """Mark up to ``limit`` due jobs running under ``token``; returns them."""

    @abc.abstractmethod
    def finish(self, outcomes: t.Sequence[Finish], now: dt.datetime) -> set[int]:
        """Write outcomes whose lease still holds; returns the ids written."""

    @abc.abstractmethod
    def renew(self, held: t.Sequence[tuple[int, str]], lease_until: dt.datetime) -> set[int]:
        """Extend leases still held; returns the ids whose lease was extended."""

    @abc.abstractmethod
    def release(self, held: t.Sequence[tuple[int, str]], now: dt.datetime) -> int:
        """Give claimed jobs back, due at once, the attempt not counted."""

    @abc.abstractmethod
    def sweep(self, now: dt.datetime) -> list[tuple[t.Any, ...]]:
        """Recover running jobs whose lease expired; returns (id, type, status, batch)."""


# The statements below share their shape across dialects; the differences are
# parameter style, arrays vs. repeated statements, and SKIP LOCKED.

_SWEEP_SET = """
    status = CASE WHEN attempts >= max_attempts OR orphan_policy = 'dead'
        THEN 'dead' ELSE 'retrying' END,
    finished_at = CASE WHEN attempts >= max_attempts OR orphan_policy = 'dead'
        THEN {now} ELSE NULL END,
    run_at = {now},
    updated_at = {now},
    last_error = 'lease expired: worker ' || COALESCE(worker_id, '?')
        || ' stopped renewing it (the process died, was killed or froze)',
    lease_token = NULL,
    lease_expires_at = NULL,
    worker_id = NULL,
    secrets = CASE WHEN attempts >= max_attempts OR orphan_policy = 'dead'
        THEN NULL ELSE secrets END,
    callback_status = CASE WHEN (attempts >= max_attempts OR orphan_policy = 'dead')
        AND callback_url IS NOT NULL THEN 'pending' ELSE callback_status END,
    callback_next_at = CASE WHEN (attempts >= max_attempts OR orphan_policy = 'dead')
        AND callback_url IS NOT NULL THEN {now} ELSE callback_next_at END
"""

_RELEASE_SET = """
    status = CASE WHEN attempts > 1 THEN 'retrying' ELSE 'pending' END,
    attempts = attempts - 1,
    run_at = {now},
    updated_at = {now},
    started_at = NULL,
    lease_token = NULL,
    lease_expires_at = NULL,
    worker_id = NULL
"""


def _int_array(values: t.Iterable[int]) -> str:
    """A PostgreSQL array literal of integers (cast in the statement)."""
    return "{" + ",".join(map(str, map(int, values))) + "}"


def _word_array(values: t.Iterable[str]) -> str:
    """A PostgreSQL array literal of the library's own words: lease tokens
    (hex) and statuses, which need no quotes (cast in the statement)."""
    return "{" + ",".join(values) + "}"


def _text_array(values: t.Iterable[str | None]) -> str:
    """A PostgreSQL array literal of texts and NULLs (cast in the statement).

    The driver adapts a list element by element in Python; a hundred-element
    batch spends more time there than the server spends on the statement.
    """
    return "{" + ",".join(
        "NULL" if v is None else '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        for v in values
    ) + "}"


class PostgresStore(Store):
    dialect = "postgresql"
    _payload_mark = "CAST({} AS JSONB)"
    autocommits = True
    concurrent_writes = True

    def insert_now(
        self, values: dict[str, t.Any], engine: sa.Engine | None = None
    ) -> tuple[Job, bool]:
        """On the library's connections, one autocommitted INSERT on a pooled
        driver connection: the statement is the same for every job, and
        SQLAlchemy's connection and transaction objects would cost more than
        the driver's own work. Errors are raised as SQLAlchemy's."""
        if engine is not None or values.get("idempotency_key") is not None:
            return super().insert_now(values, engine)
        sql = self._plain_insert(tuple(values), "%s")
        params = self._driver_params(values)
        try:
            with self._raw() as cur:
                cur.execute(sql, params)
                job_id = cur.fetchone()[0]
        except self.engine.dialect.loaded_dbapi.Error as exc:
            raise _as_sqlalchemy_error(exc, sql, params, self.engine.dialect) from exc
        return self._job_from(job_id, values), True

    def watch(self) -> Watcher:
        import psycopg

        conninfo = self.engine.url.set(drivername="postgresql").render_as_string(
            hide_password=False
        )
        conn = psycopg.connect(conninfo, autocommit=True)
        conn.execute(f"LISTEN {NOTIFY_CHANNEL}")

        def wait(timeout: float) -> bool:
            return any(True for _ in conn.notifies(timeout=timeout, stop_after=1))

        return Watcher(wait, conn.close)

    def claim(
        self,
        *,
        job_types: t.Sequence[str],
        queues: t.Sequence[str] | None,
        limit: int,
        now: dt.datetime,
        lease_until: dt.datetime,
        token: str,
        worker_id: str,
        with_secrets: bool = True,
    ) -> list[ClaimedRow]:
        queue_filter = "AND queue = ANY(%(queues)s::text[])" if queues is not None else ""
        secrets_filter = "" if with_secrets else "AND secrets IS NULL"
        # ARRAY(...) makes the ids a one-off list the update looks up by
        # primary key; a join with the subquery can plan a scan of the table.
        sql = f"""
            UPDATE {self.table.name} AS j
            SET status = 'running', attempts = j.attempts + 1, lease_token = %(token)s,
                lease_expires_at = %(lease)s, worker_id = %(worker)s,
                started_at = %(now)s, updated_at = %(now)s
            WHERE j.id = ANY(ARRAY(
                SELECT id FROM {self.table.name}
                WHERE {WAITING_SQL} AND run_at <= %(now)s
                  AND job_type = ANY(%(types)s::text[]) {queue_filter} {secrets_filter}
                ORDER BY priority, run_at, id
                LIMIT %(limit)s
                FOR UPDATE SKIP LOCKED
            ))
            RETURNING j.id, j.job_type, j.payload::text, j.attempts, j.max_attempts,
                      j.secrets, j.batch_id,
                      -- the sort key only: an integer loads far faster than a timestamptz
                      j.priority, (extract(epoch FROM j.run_at) * 1000000)::bigint
        """
        params = {
            "now": now, "types": _text_array(job_types), "queues": _text_array(queues or ()),
            "limit": limit, "token": token, "lease": lease_until, "worker": worker_id,
        }
        with self._raw() as cur:
            cur.execute(sql, params)
            rows = cur.fetchall()
        rows.sort(key=_CLAIM_ORDER)
        # payload as text, decoded by the handler's thread: the claiming
        # thread is the one every job of the batch waits for
        return [
            ClaimedRow(r[0], r[1], r[2], r[3], r[4], token, r[5], r[6]) for r in rows
        ]

    def finish(self, outcomes: t.Sequence[Finish], now: dt.datetime) -> set[int]:
        if not outcomes:
            return set()
        sql = f"""
            UPDATE {self.table.name} AS j
            SET status = v.status, result = v.result::jsonb, last_error = v.error,
                run_at = COALESCE(v.run_at, j.run_at),
                finished_at = CASE WHEN v.status = 'retrying' THEN NULL ELSE %(now)s END,
                updated_at = %(now)s, lease_token = NULL, lease_expires_at = NULL,
                worker_id = NULL,
                secrets = CASE WHEN v.status = 'retrying' THEN j.secrets END,
                callback_status = CASE WHEN v.status <> 'retrying' AND j.callback_url IS NOT NULL
                    THEN 'pending' ELSE j.callback_status END,
                callback_next_at = CASE WHEN v.status <> 'retrying'
                    AND j.callback_url IS NOT NULL THEN %(now)s ELSE j.callback_next_at END
            FROM unnest(%(ids)s::bigint[], %(tokens)s::text[], %(statuses)s::text[],
                        %(results)s::text[], %(errors)s::text[], %(run_ats)s::timestamptz[])
                 AS v(id, token, status, result, error, run_at)
            WHERE j.id = v.id AND j.lease_token = v.token
            RETURNING j.id
        """
        params = {
            "now": now,
            "ids": _int_array([o.id for o in outcomes]),
            "tokens": _word_array([o.token for o in outcomes]),
            "statuses": _word_array([o.status for o in outcomes]),
            "results": _text_array([o.result for o in outcomes]),
            "errors": _text_array([o.error for o in outcomes]),
            "run_ats": _text_array([
                None if o.run_at is None else o.run_at.isoformat() for o in outcomes
            ]),
        }
        with self._raw() as cur:
            cur.execute(sql, params)
            return {row[0] for row in cur.fetchall()}

    def _pairs_sql(self, set_clause: str) -> str:
        return f"""
            UPDATE {self.table.name} AS j SET {set_clause}
            FROM unnest(%(ids)s::bigint[], %(tokens)s::text[]) AS v(id, token)
            WHERE j.id = v.id AND j.lease_token = v.token
            RETURNING j.id
        """

    def renew(self, held: t.Sequence[tuple[int, str]], lease_until: dt.datetime) -> set[int]:
        if not held:
            return set()
        with self._raw() as cur:
            cur.execute(
                self._pairs_sql("lease_expires_at = %(lease)s"),
                {"lease": lease_until, "ids": _int_array([h[0] for h in held]),
                 "tokens": _word_array([h[1] for h in held])},
            )
            return {row[0] for row in cur.fetchall()}

    def release(self, held: t.Sequence[tuple[int, str]], now: dt.datetime) -> int:
        if not held:
            return 0
        with self._raw() as cur:
            cur.execute(
                self._pairs_sql(_RELEASE_SET.format(now="%(now)s")),
                {"now": now, "ids": _int_array([h[0] for h in held]),
                 "tokens": _word_array([h[1] for h in held])},
            )
            return len(cur.fetchall())

    def sweep(self, now: dt.datetime) -> list[tuple[t.Any, ...]]:
        sql = f"""
            UPDATE {self.table.name} SET {_SWEEP_SET.format(now="%(now)s")}
            WHERE id = ANY(ARRAY(
                SELECT id FROM {self.table.name}
                WHERE {RUNNING_SQL} AND lease_expires_at < %(now)s
                ORDER BY id LIMIT {SWEEP_BATCH}
                FOR UPDATE SKIP LOCKED
            ))
            RETURNING id, job_type, status, batch_id
        """
        with self._raw() as cur:
            cur.execute(sql, {"now": now})
            return [tuple(row) for row in cur.fetchall()]


class SQLiteStore(Store):
    dialect = "sqlite"

    #: Seconds between two looks at the file's change counter.
    WATCH_INTERVAL = 0.02

    def __init__(self, engine: sa.Engine, table: sa.Table, batches: sa.Table) -> None:
        super().__init__(engine, table, batches)
        #: idle connections for enqueues that commit on their own, by app
        #: engine (``None`` for an engine they can't use); see :meth:`insert_now`
        self._enqueue_idle: dict[sa.Engine, collections.deque[t.Any] | None] = {}

    def watch(self) -> Watcher:
        import sqlite3

        database = self.engine.url.database or ""
        if database in ("", ":memory:"):  # one process only: nothing to watch
            def sleep(timeout: float) -> bool:
                time.sleep(timeout)
                return False

            return Watcher(sleep, lambda: None)
        conn = sqlite3.connect(database, timeout=SQLITE_BUSY_TIMEOUT, isolation_level=None,
                               check_same_thread=False)
        # data_version changes when another connection commits: a read of a
        # counter, no lock taken, cheap enough to ask every few milliseconds.
        last = [conn.execute("PRAGMA data_version").fetchone()[0]]

        def wait(timeout: float) -> bool:
            deadline = time.monotonic() + timeout
            while True:
                version = conn.execute("PRAGMA data_version").fetchone()[0]
                if version != last[0]:
                    last[0] = version
                    return True
                if time.monotonic() >= deadline:
                    return False
                time.sleep(self.WATCH_INTERVAL)

        return Watcher(wait, conn.close)

    def _begin(self, cur: t.Any) -> None:
        # Take the write lock now, waiting for it through the busy timeout; a
        # deferred transaction that reads and then writes fails at once instead.
        cur.execute("BEGIN IMMEDIATE")

    def _commit(self, conn: t.Any, cur: t.Any) -> None:
        cur.execute("COMMIT")

    def _rollback(self, conn: t.Any, cur: t.Any) -> None:
        if conn.driver_connection.in_transaction:
            cur.execute("ROLLBACK")

    @staticmethod
    def _ts(value: dt.datetime | None) -> str | None:
        if value is None:
            return None
        if value.tzinfo is not UTC:
            value = value.astimezone(UTC)
        # the text SQLAlchemy stores for a DATETIME: microseconds always shown,
        # no offset (cut off the "+00:00" of UTC)
        return value.isoformat(" ", "microseconds")[:26]

    def insert_now(
        self, values: dict[str, t.Any], engine: sa.Engine | None = None
    ) -> tuple[Job, bool]:
        """On the app's database, one plain INSERT that commits on its own:
        an enqueue outside a transaction is mostly Python time around the
        commit's sync, and the statement is the same for every job."""
        if engine is None:
            return super().insert_now(values, engine)
        idle = self._enqueue_idle.get(engine, _UNSEEN)
        if idle is _UNSEEN:  # first enqueue on this engine: can it take them?
            direct = engine.dialect.driver == "pysqlite" and not _in_memory(engine.url)
            idle = self._enqueue_idle[engine] = collections.deque() if direct else None
        if idle is None or values.get("idempotency_key") is not None:
            return super().insert_now(values, engine)
        # no RETURNING: the connection is this call's alone, so its last
        # rowid is the job's id (INTEGER PRIMARY KEY), and cheaper to read
        sql = self._plain_insert(tuple(values), "?", returning="")
        params = self._driver_params(values)
        try:
            conn = idle.pop()
        except IndexError:
            conn = self._open_like(engine)
        try:
            job_id = conn.execute(sql, params).lastrowid
        except BaseException as exc:
            conn.close()  # whatever it holds, it goes
            if isinstance(exc, engine.dialect.loaded_dbapi.Error):
                raise _as_sqlalchemy_error(exc, sql, params, engine.dialect) from exc
            raise
        if len(idle) < ENQUEUE_IDLE_CONNECTIONS:
            idle.append(conn)
        else:
            conn.close()
        return self._job_from(job_id, values), True

    def _driver_params(self, values: dict[str, t.Any]) -> tuple[t.Any, ...]:
        """Datetimes as the text SQLAlchemy stores for them, too (each one
        written once: a job's timestamps are mostly the same ``now``)."""
        params = []
        last = stamp = None
        for name, value in values.items():
            if name == "payload":
                value = json.dumps(value)
            elif type(value) is dt.datetime:
                if value is not last:
                    last, stamp = value, self._ts(value)
                value = stamp
            params.append(value)
        return tuple(params)  # a list would mean many rows to SQLAlchemy

    @staticmethod
    def _open_like(engine: sa.Engine) -> t.Any:
        """A ``sqlite3`` connection to the app's database in autocommit mode,
        for enqueues that commit on their own (:meth:`insert_now`).

        One ``INSERT`` in autocommit mode is a transaction of its own, with no
        ``BEGIN``/``COMMIT`` around it, and keeping idle connections here spares
        a check-out and check-in of the app's pool per enqueue; together about
        a fifth of a standalone enqueue's time on a fast disk. A connection is
        opened with the app engine's connection arguments, and copies the
        durability (``PRAGMA synchronous``) and busy timeout of one of the
        app's own connections, so a job is as durable as the app's writes.
        """
        import sqlite3

        args, params = engine.dialect.create_connect_args(engine.url)
        with contextlib.closing(engine.raw_connection()) as app_conn:
            driver: t.Any = app_conn.driver_connection
            synchronous = int(driver.execute("PRAGMA synchronous").fetchone()[0])
            busy_timeout = int(driver.execute("PRAGMA busy_timeout").fetchone()[0])
        connect: t.Any = sqlite3.connect
        conn = connect(*args, **{**params, "isolation_level": None, "check_same_thread": False})
        conn.execute(f"PRAGMA synchronous={synchronous}")
        conn.execute(f"PRAGMA busy_timeout={busy_timeout}")
        return conn

    def close_connections(self, *, close: bool = True) -> None:
        """Close the idle enqueue connections (``close=False`` in a forked
        child: forget them, as SQLite must not touch a parent's connections)."""
        stashes, self._enqueue_idle = self._enqueue_idle, {}
        for idle in stashes.values():
            if idle is None:  # an engine that never takes them
                continue
            if close:
                for conn in idle:
                    conn.close()
            else:
                _FORGOTTEN.extend(idle)

    def claim(
        self,
        *,
        job_types: t.Sequence[str],
        queues: t.Sequence[str] | None,
        limit: int,
        now: dt.datetime,
        lease_until: dt.datetime,
        token: str,
        worker_id: str,
        with_secrets: bool = True,
    ) -> list[ClaimedRow]:
        type_marks = ", ".join("?" * len(job_types))
        queue_filter = "" if with_secrets else "AND secrets IS NULL"
        params: list[t.Any] = [
            token, self._ts(lease_until), worker_id, self._ts(now), self._ts(now),
            self._ts(now), *job_types,
        ]
        if queues is not None:
            queue_filter += f" AND queue IN ({', '.join('?' * len(queues))})"
            params.extend(queues)
        params.append(limit)
        sql = f"""
            UPDATE {self.table.name}
            SET status = 'running', attempts = attempts + 1, lease_token = ?,
                lease_expires_at = ?, worker_id = ?, started_at = ?, updated_at = ?
            WHERE id IN (
                SELECT id FROM {self.table.name} INDEXED BY ix_durable_jobs_due
                WHERE {WAITING_SQL} AND run_at <= ?
                  AND job_type IN ({type_marks}) {queue_filter}
                ORDER BY priority, run_at, id
                LIMIT ?
            )
            RETURNING id, job_type, payload, attempts, max_attempts, secrets, batch_id,
                      priority, run_at
        """
        with self._raw() as cur:
            cur.execute(sql, params)
            rows = cur.fetchall()
        rows.sort(key=_CLAIM_ORDER)  # run_at as stored: text in time order
        return [ClaimedRow(r[0], r[1], r[2], r[3], r[4], token, r[5], r[6]) for r in rows]

    def finish(self, outcomes: t.Sequence[Finish], now: dt.datetime) -> set[int]:
        if not outcomes:
            return set()
        stamp = self._ts(now)
        sql = f"""
            UPDATE {self.table.name}
            SET status = ?, result = ?, last_error = ?, run_at = COALESCE(?, run_at),
                finished_at = ?, updated_at = ?, lease_token = NULL,
                lease_expires_at = NULL, worker_id = NULL,
                secrets = CASE WHEN ? THEN NULL ELSE secrets END,
                callback_status = CASE WHEN ? AND callback_url IS NOT NULL
                    THEN 'pending' ELSE callback_status END,
                callback_next_at = CASE WHEN ? AND callback_url IS NOT NULL
                    THEN ? ELSE callback_next_at END
            WHERE id = ? AND lease_token = ?
            RETURNING id
        """
        written: set[int] = set()
        with self._raw() as cur:
            for o in outcomes:
                ended = o.status != RETRYING
                cur.execute(
                    sql,
                    (o.status, o.result, o.error, self._ts(o.run_at), stamp if ended else None,
                     stamp, ended, ended, ended, stamp, o.id, o.token),
                )
                written.update(row[0] for row in cur.fetchall())
        return written

    def _each_pair(self, held: t.Sequence[tuple[int, str]], set_clause: str,
                   params: tuple[t.Any, ...]) -> set[int]:
        sql = f"""
            UPDATE {self.table.name} SET {set_clause}
            WHERE id = ? AND lease_token = ?
            RETURNING id
        """
        done: set[int] = set()
        with self._raw() as cur:
            for job_id, token in held:
                cur.execute(sql, (*params, job_id, token))
                done.update(row[0] for row in cur.fetchall())
        return done

    def renew(self, held: t.Sequence[tuple[int, str]], lease_until: dt.datetime) -> set[int]:
        if not held:
            return set()
        return self._each_pair(held, "lease_expires_at = ?", (self._ts(lease_until),))

    def release(self, held: t.Sequence[tuple[int, str]], now: dt.datetime) -> int:
        if not held:
            return 0
        stamp = self._ts(now)
        return len(self._each_pair(held, _RELEASE_SET.format(now="?"), (stamp, stamp)))

    def sweep(self, now: dt.datetime) -> list[tuple[t.Any, ...]]:
        stamp = self._ts(now)
        sql = f"""
            UPDATE {self.table.name} SET {_SWEEP_SET.format(now="?")}
            WHERE id IN (
                SELECT id FROM {self.table.name}
                WHERE {RUNNING_SQL} AND lease_expires_at < ?
                ORDER BY id LIMIT {SWEEP_BATCH}
            )
            RETURNING id, job_type, status, batch_id
        """
        with self._raw() as cur:
            cur.execute(sql, (stamp, stamp, stamp, stamp, stamp))
            return [tuple(row) for row in cur.fetchall()]


def make_store(engine: sa.Engine, table: sa.Table, batches: sa.Table) -> Store:
    name = engine.dialect.name
    if name == "postgresql":
        return PostgresStore(engine, table, batches)
    if name == "sqlite":
        return SQLiteStore(engine, table, batches)
    raise ConfigError(
        f"unsupported database {name!r}: flask-durable-jobs runs on PostgreSQL and SQLite"
    )
