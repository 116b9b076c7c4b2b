"""The one module that talks SQL.

Two kinds of statement live here:

* the hot path (claim, finish, heartbeat, release, sweep), written per
  dialect in plain SQL on a raw driver connection, claiming and finishing many
  jobs per statement;
* everything else (enqueue through the caller's session, admin reads and
  transitions, prune), written once with SQLAlchemy Core.

Every write to a running job carries the claim's ``lease_token`` in its
``WHERE`` clause: a worker that lost its lease updates zero rows, so its late
result can never overwrite newer state.

PostgreSQL claims with ``FOR UPDATE SKIP LOCKED``. SQLite has one writer: the
library's writes take the write lock at the start (``BEGIN IMMEDIATE``) and
wait for it through the busy timeout, so "database is locked" never surfaces.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import datetime as dt
import json
import typing as t

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.orm import Session, scoped_session

from .errors import ConfigError, InvalidTransition, JobNotFound
from .models import (
    CANCELLED,
    DEAD,
    JOB_COLUMNS,
    NOTIFY_CHANNEL,
    PENDING,
    RETRYING,
    RUNNING,
    STATUSES,
    SUCCEEDED,
    UTC,
    WAITING,
    Job,
)

#: Seconds SQLite waits for the write lock before giving up.
SQLITE_BUSY_TIMEOUT = 60.0
#: Rows deleted per statement when pruning, so no lock is held for long.
PRUNE_BATCH = 1000
#: Orphans recovered per statement by the sweep.
SWEEP_BATCH = 1000

_CLAIM_COLUMNS = ("id", "job_type", "payload", "attempts", "max_attempts", "priority", "run_at")
_SQLITE_FORMAT = "%Y-%m-%d %H:%M:%S.%f"


@dataclasses.dataclass
class ClaimedRow:
    id: int
    job_type: str
    payload: dict[str, t.Any]
    attempts: int
    max_attempts: int
    priority: int
    run_at: dt.datetime
    token: str


@dataclasses.dataclass
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


def _aware(value: t.Any) -> t.Any:
    """Normalise a timestamp from either driver to an aware UTC datetime."""
    if value is None:
        return None
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def build_engine(app_engine: sa.Engine, pool_size: int) -> sa.Engine:
    """The library's own engine, on the same database as the app's.

    A separate pool keeps the worker's short transactions apart from the app's
    sessions, and lets the library pick the driver (psycopg 3) and SQLite
    settings (WAL, busy timeout, explicit ``BEGIN IMMEDIATE``). An in-memory
    SQLite database exists only inside the app's own engine, so that one is
    shared.
    """
    url = app_engine.url
    backend = url.get_backend_name()
    if backend == "postgresql":
        return sa.create_engine(
            url.set(drivername="postgresql+psycopg"),
            pool_size=pool_size,
            max_overflow=pool_size,
            pool_pre_ping=True,
        )
    if backend == "sqlite":
        database = url.database or ""
        if database in ("", ":memory:") or "mode=memory" in str(url):
            return app_engine
        engine = sa.create_engine(
            url,
            pool_size=pool_size,
            max_overflow=pool_size,
            connect_args={
                "timeout": SQLITE_BUSY_TIMEOUT,
                "isolation_level": None,
                "check_same_thread": False,
            },
        )

        @sa.event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: t.Any, _record: t.Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT * 1000)}")
            cur.close()

        return engine
    raise ConfigError(
        f"unsupported database {backend!r}: flask-durable-jobs runs on PostgreSQL and SQLite"
    )


class Store(abc.ABC):
    """Queue operations on one database. Use :func:`make_store`."""

    dialect: str = ""

    def __init__(self, engine: sa.Engine, table: sa.Table) -> None:
        self.engine = engine
        self.table = table
        self._columns = [table.c[name] for name in JOB_COLUMNS]

    # -- shared helpers -------------------------------------------------

    def to_job(self, row: t.Any) -> Job:
        data = dict(zip(JOB_COLUMNS, row, strict=True))
        for key in ("run_at", "created_at", "updated_at", "started_at", "finished_at",
                    "lease_expires_at"):
            data[key] = _aware(data[key])
        return Job(**data)

    @contextlib.contextmanager
    def _raw(self) -> t.Iterator[t.Any]:
        """A raw driver cursor inside one write transaction."""
        conn = self.engine.raw_connection()
        try:
            cur = conn.cursor()
            self._begin(cur)
            try:
                yield cur
            except BaseException:
                self._rollback(conn, cur)
                raise
            self._commit(conn, cur)
            cur.close()
        finally:
            conn.close()

    def _begin(self, cur: t.Any) -> None:  # noqa: B027 - PostgreSQL begins implicitly
        """Start the write transaction (a no-op where the driver does it)."""

    def _commit(self, conn: t.Any, cur: t.Any) -> None:
        conn.commit()

    def _rollback(self, conn: t.Any, cur: t.Any) -> None:
        conn.rollback()

    # -- enqueue (caller's session, any driver) --------------------------

    def insert(
        self, session: Session | scoped_session[t.Any], values: dict[str, t.Any]
    ) -> tuple[Job, bool]:
        """Insert one job in the caller's transaction; returns (job, created).

        With an idempotency key, a conflicting insert does nothing and the
        existing job is returned: the unique constraint decides, also between
        processes.
        """
        key = values.get("idempotency_key")
        if key is None:
            row = session.execute(
                sa.insert(self.table).values(values).returning(*self._columns)
            ).one()
            return self.to_job(row), True
        insert = pg_dialect.insert if self.dialect == "postgresql" else sqlite_dialect.insert
        stmt = (
            insert(self.table)
            .values(values)
            .on_conflict_do_nothing(index_elements=["idempotency_key"])
            .returning(*self._columns)
        )
        inserted = session.execute(stmt).first()
        if inserted is not None:
            return self.to_job(inserted), True
        existing = session.execute(
            sa.select(*self._columns).where(self.table.c.idempotency_key == key)
        ).one()
        return self.to_job(existing), False

    def insert_many(
        self, session: Session | scoped_session[t.Any], rows: list[dict[str, t.Any]]
    ) -> list[int]:
        """Insert many jobs, one multi-row statement per chunk; ids in input order."""
        if not rows:
            return []
        stmt = sa.insert(self.table).returning(self.table.c.id, sort_by_parameter_order=True)
        return [row[0] for row in session.execute(stmt, rows)]

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
        if status is not None:
            conditions.append(c.status == status)
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
            for job_type, status, count in conn.execute(
                sa.select(c.job_type, c.status, sa.func.count()).group_by(c.status, c.job_type)
            ):
                by_status[status] = by_status.get(status, 0) + count
                by_type.setdefault(job_type, dict.fromkeys(STATUSES, 0))[status] = count
            for job_type, count, first in conn.execute(
                sa.select(c.job_type, sa.func.count(), sa.func.min(c.run_at))
                .where(c.status.in_(WAITING), c.run_at <= now)
                .group_by(c.job_type)
            ):
                first = _aware(first)
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
        return self._transition(
            job_id, "cancel", WAITING,
            {"status": CANCELLED, "finished_at": now, "updated_at": now},
        )

    def retry(self, job_id: int, now: dt.datetime) -> Job:
        return self._transition(
            job_id, "retry", (DEAD, CANCELLED),
            {"status": PENDING, "attempts": 0, "run_at": now, "finished_at": None,
             "started_at": None, "result": None, "updated_at": now},
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
            sa.select(c.id).where(c.finished_at.is_not(None), old).limit(PRUNE_BATCH)
            .scalar_subquery()
        )
        total = 0
        while True:
            with self.engine.begin() as conn:
                deleted = conn.execute(sa.delete(self.table).where(c.id.in_(batch))).rowcount
            total += deleted
            if deleted < PRUNE_BATCH:
                return total

    # -- wake-ups ---------------------------------------------------------

    def listen(self) -> t.Any:
        """A driver connection subscribed to new-job notifications, or None.

        Only PostgreSQL has them; elsewhere other processes find new jobs by
        polling.
        """
        return None

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
    def sweep(self, now: dt.datetime) -> list[tuple[int, str, str]]:
        """Recover running jobs whose lease expired; returns (id, type, new status)."""


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
    worker_id = NULL
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


class PostgresStore(Store):
    dialect = "postgresql"

    def listen(self) -> t.Any:
        import psycopg

        conninfo = self.engine.url.set(drivername="postgresql").render_as_string(
            hide_password=False
        )
        conn = psycopg.connect(conninfo, autocommit=True)
        conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
        return conn

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
    ) -> list[ClaimedRow]:
        queue_filter = "AND queue = ANY(%(queues)s)" if queues is not None else ""
        sql = f"""
            WITH due AS (
                SELECT id FROM {self.table.name}
                WHERE status IN ('pending', 'retrying') AND run_at <= %(now)s
                  AND job_type = ANY(%(types)s) {queue_filter}
                ORDER BY priority, run_at, id
                LIMIT %(limit)s
                FOR UPDATE SKIP LOCKED
            )
            UPDATE {self.table.name} AS j
            SET status = 'running', attempts = j.attempts + 1, lease_token = %(token)s,
                lease_expires_at = %(lease)s, worker_id = %(worker)s,
                started_at = %(now)s, updated_at = %(now)s
            FROM due WHERE j.id = due.id
            RETURNING j.id, j.job_type, j.payload, j.attempts, j.max_attempts,
                      j.priority, j.run_at
        """
        params = {
            "now": now, "types": list(job_types), "queues": list(queues or ()),
            "limit": limit, "token": token, "lease": lease_until, "worker": worker_id,
        }
        with self._raw() as cur:
            cur.execute(sql, params)
            rows = cur.fetchall()
        claimed = [ClaimedRow(r[0], r[1], r[2], r[3], r[4], r[5], r[6], token) for r in rows]
        claimed.sort(key=lambda r: (r.priority, r.run_at, r.id))
        return claimed

    def finish(self, outcomes: t.Sequence[Finish], now: dt.datetime) -> set[int]:
        if not outcomes:
            return set()
        sql = f"""
            UPDATE {self.table.name} AS j
            SET status = v.status, result = v.result::jsonb, last_error = v.error,
                run_at = COALESCE(v.run_at, j.run_at),
                finished_at = CASE WHEN v.status = 'retrying' THEN NULL ELSE %(now)s END,
                updated_at = %(now)s, lease_token = NULL, lease_expires_at = NULL,
                worker_id = NULL
            FROM unnest(%(ids)s::bigint[], %(tokens)s::text[], %(statuses)s::text[],
                        %(results)s::text[], %(errors)s::text[], %(run_ats)s::timestamptz[])
                 AS v(id, token, status, result, error, run_at)
            WHERE j.id = v.id AND j.lease_token = v.token AND j.status = 'running'
            RETURNING j.id
        """
        params = {
            "now": now,
            "ids": [o.id for o in outcomes],
            "tokens": [o.token for o in outcomes],
            "statuses": [o.status for o in outcomes],
            "results": [o.result for o in outcomes],
            "errors": [o.error for o in outcomes],
            "run_ats": [o.run_at for o in outcomes],
        }
        with self._raw() as cur:
            cur.execute(sql, params)
            return {row[0] for row in cur.fetchall()}

    def _pairs_sql(self, set_clause: str) -> str:
        return f"""
            UPDATE {self.table.name} AS j SET {set_clause}
            FROM unnest(%(ids)s::bigint[], %(tokens)s::text[]) AS v(id, token)
            WHERE j.id = v.id AND j.lease_token = v.token AND j.status = 'running'
            RETURNING j.id
        """

    def renew(self, held: t.Sequence[tuple[int, str]], lease_until: dt.datetime) -> set[int]:
        if not held:
            return set()
        with self._raw() as cur:
            cur.execute(
                self._pairs_sql("lease_expires_at = %(lease)s"),
                {"lease": lease_until, "ids": [h[0] for h in held],
                 "tokens": [h[1] for h in held]},
            )
            return {row[0] for row in cur.fetchall()}

    def release(self, held: t.Sequence[tuple[int, str]], now: dt.datetime) -> int:
        if not held:
            return 0
        with self._raw() as cur:
            cur.execute(
                self._pairs_sql(_RELEASE_SET.format(now="%(now)s")),
                {"now": now, "ids": [h[0] for h in held], "tokens": [h[1] for h in held]},
            )
            return len(cur.fetchall())

    def sweep(self, now: dt.datetime) -> list[tuple[int, str, str]]:
        sql = f"""
            UPDATE {self.table.name} SET {_SWEEP_SET.format(now="%(now)s")}
            WHERE id IN (
                SELECT id FROM {self.table.name}
                WHERE status = 'running' AND lease_expires_at < %(now)s
                ORDER BY id LIMIT {SWEEP_BATCH}
                FOR UPDATE SKIP LOCKED
            )
            RETURNING id, job_type, status
        """
        with self._raw() as cur:
            cur.execute(sql, {"now": now})
            return [tuple(row) for row in cur.fetchall()]


class SQLiteStore(Store):
    dialect = "sqlite"

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
        return value.astimezone(UTC).replace(tzinfo=None).strftime(_SQLITE_FORMAT)

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
    ) -> list[ClaimedRow]:
        type_marks = ", ".join("?" * len(job_types))
        queue_filter = ""
        params: list[t.Any] = [
            token, self._ts(lease_until), worker_id, self._ts(now), self._ts(now),
            self._ts(now), *job_types,
        ]
        if queues is not None:
            queue_filter = f"AND queue IN ({', '.join('?' * len(queues))})"
            params.extend(queues)
        params.append(limit)
        sql = f"""
            UPDATE {self.table.name}
            SET status = 'running', attempts = attempts + 1, lease_token = ?,
                lease_expires_at = ?, worker_id = ?, started_at = ?, updated_at = ?
            WHERE id IN (
                SELECT id FROM {self.table.name} INDEXED BY ix_durable_jobs_due
                WHERE status IN ('pending', 'retrying') AND run_at <= ?
                  AND job_type IN ({type_marks}) {queue_filter}
                ORDER BY priority, run_at, id
                LIMIT ?
            )
            RETURNING id, job_type, payload, attempts, max_attempts, priority, run_at
        """
        with self._raw() as cur:
            cur.execute(sql, params)
            rows = cur.fetchall()
        claimed = [
            ClaimedRow(r[0], r[1], json.loads(r[2]), r[3], r[4], r[5], _aware(r[6]), token)
            for r in rows
        ]
        claimed.sort(key=lambda r: (r.priority, r.run_at, r.id))
        return claimed

    def finish(self, outcomes: t.Sequence[Finish], now: dt.datetime) -> set[int]:
        if not outcomes:
            return set()
        stamp = self._ts(now)
        sql = f"""
            UPDATE {self.table.name}
            SET status = ?, result = ?, last_error = ?, run_at = COALESCE(?, run_at),
                finished_at = ?, updated_at = ?, lease_token = NULL,
                lease_expires_at = NULL, worker_id = NULL
            WHERE id = ? AND lease_token = ? AND status = 'running'
            RETURNING id
        """
        written: set[int] = set()
        with self._raw() as cur:
            for o in outcomes:
                finished = None if o.status == RETRYING else stamp
                cur.execute(
                    sql,
                    (o.status, o.result, o.error, self._ts(o.run_at), finished, stamp,
                     o.id, o.token),
                )
                written.update(row[0] for row in cur.fetchall())
        return written

    def _each_pair(self, held: t.Sequence[tuple[int, str]], set_clause: str,
                   params: tuple[t.Any, ...]) -> set[int]:
        sql = f"""
            UPDATE {self.table.name} SET {set_clause}
            WHERE id = ? AND lease_token = ? AND status = 'running'
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

    def sweep(self, now: dt.datetime) -> list[tuple[int, str, str]]:
        stamp = self._ts(now)
        sql = f"""
            UPDATE {self.table.name} SET {_SWEEP_SET.format(now="?")}
            WHERE id IN (
                SELECT id FROM {self.table.name}
                WHERE status = 'running' AND lease_expires_at < ?
                ORDER BY id LIMIT {SWEEP_BATCH}
            )
            RETURNING id, job_type, status
        """
        with self._raw() as cur:
            cur.execute(sql, (stamp, stamp, stamp, stamp))
            return [tuple(row) for row in cur.fetchall()]


def make_store(engine: sa.Engine, table: sa.Table) -> Store:
    name = engine.dialect.name
    if name == "postgresql":
        return PostgresStore(engine, table)
    if name == "sqlite":
        return SQLiteStore(engine, table)
    raise ConfigError(
        f"unsupported database {name!r}: flask-durable-jobs runs on PostgreSQL and SQLite"
    )
