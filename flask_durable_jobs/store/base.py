"""What every database's store does, and the statements written once for all.

A dialect adapter (:mod:`.postgresql`, :mod:`.sqlite`) subclasses
:class:`Store` with its named statements (:mod:`flask_durable_jobs.sql`): the
queue's hot path (claim, finish, renew, release, sweep), run on a raw driver
cursor and claiming and finishing many jobs per statement, and the one
``INSERT`` every enqueue takes (:meth:`Store.insert_rows`), sent through
SQLAlchemy. Everything else (admin reads and transitions, prune, batches,
schedules, callbacks) is SQLAlchemy Core here, the same on every database.
Nothing here asks which database it runs on.
"""

from __future__ import annotations

import abc
import contextlib
import datetime as dt
import json
import operator
import threading
import typing as t

import sqlalchemy as sa

from .. import sql
from ..errors import InvalidTransition, JobNotFound
from ..models import (
    CANCELLED,
    DEAD,
    INSERT_COLUMNS,
    JOB_COLUMNS,
    PENDING,
    RUNNING,
    RUNNING_SQL,
    SQL_NAMES,
    STATUSES,
    SUCCEEDED,
    TERMINAL,
    WAITING_SQL,
    CallbackStatus,
    Job,
    as_utc,
)
from .control import JobControl
from .records import (
    ClaimedRow,
    Counted,
    ExpiredLeases,
    Finish,
    Statement,
    Target,
    Watcher,
    connection_of,
    is_broken,
)

#: Rows deleted per statement when pruning, so no lock is held for long.
PRUNE_BATCH = 1000
#: Orphans recovered per statement by the sweep.
SWEEP_BATCH = 1000
#: Jobs per INSERT statement.
INSERT_CHUNK = 1000
#: The order a claim's rows start in: the claim query's (priority, run_at, id),
#: from the two sort columns the claim returns last.
CLAIM_ORDER = operator.itemgetter(7, 8, 0)
#: A Job's fields before the inserted values fill them in.
_NEW_JOB: dict[str, t.Any] = {**dict.fromkeys(JOB_COLUMNS), "callback_attempts": 0}

class Store(abc.ABC, JobControl):
    """Queue operations on one database. Use :func:`~flask_durable_jobs.store.make_store`."""

    #: The SQL file of this store's database (:func:`flask_durable_jobs.sql.load`).
    dialect: t.ClassVar[str]
    #: Two connections can write at once without waiting on each other: a
    #: loop's outcome write runs beside its next claim (PostgreSQL; SQLite
    #: has one writer at a time).
    concurrent_writes: t.ClassVar[bool] = False

    def __init__(self, engine: sa.Engine, table: sa.Table, batches: sa.Table) -> None:
        self.engine = engine
        self.table = table
        self.batches = batches
        self._local = threading.local()  # the connection pinned by this thread, if any
        self._columns = [table.c[name] for name in JOB_COLUMNS]
        #: A new job's columns that an enqueue may leave out (NULL).
        self.optional = dict.fromkeys(n for n in INSERT_COLUMNS if table.c[n].nullable)
        #: This database's named statements, statuses and conditions filled in.
        self.queries: dict[str, str] = {
            name: text.format_map(SQL_NAMES) for name, text in sql.load(self.dialect).items()
        }
        self._statements: dict[tuple[str, str], Statement] = {}
        #: When each limited type last adopted its unkeyed waiting jobs (monotonic).
        self.adopted_at: dict[str, float] = {}

    @classmethod
    @abc.abstractmethod
    def build_engine(
        cls, app_engine: sa.Engine, pool_size: int, connect_args: dict[str, t.Any] | None
    ) -> sa.Engine:
        """The library's own engine on the app's database (see
        :func:`~flask_durable_jobs.store.build_engine`)."""

    # -- statements -----------------------------------------------------

    def statement(self, name: str, dialect: sa.Dialect) -> Statement:
        """The named statement in ``dialect``'s driver's paramstyle, compiled
        once by SQLAlchemy (the caller's transaction may use another driver
        than the library's own engine: psycopg2, pg8000...)."""
        key = (name, dialect.paramstyle)
        found = self._statements.get(key)
        if found is None:
            compiled = sa.text(self.queries[name]).compile(dialect=dialect)
            positions = compiled.positiontup
            found = self._statements[key] = Statement(
                str(compiled), None if positions is None else tuple(positions)
            )
        return found

    def to_driver(self, params: dict[str, t.Any]) -> dict[str, t.Any]:
        """Parameters as the driver takes them (no SQLAlchemy types convert
        driver SQL's parameters)."""
        return params

    def send(
        self, conn: sa.Connection, name: str, params: dict[str, t.Any]
    ) -> sa.CursorResult[t.Any]:
        """Run a named statement on ``conn`` through SQLAlchemy, as driver SQL:
        engine events see it and a database error is SQLAlchemy's."""
        statement = self.statement(name, conn.dialect)
        return conn.exec_driver_sql(statement.sql, statement.params(self.to_driver(params)))

    def _driver(self, name: str, params: dict[str, t.Any]) -> tuple[str, t.Any]:
        """A named statement and its parameters for a raw cursor of the library's engine."""
        statement = self.statement(name, self.engine.dialect)
        return statement.sql, statement.params(self.to_driver(params))

    # -- connections ----------------------------------------------------

    def to_job(self, row: t.Any) -> Job:
        data = dict(zip(JOB_COLUMNS, row, strict=True))
        for key in ("run_at", "created_at", "updated_at", "started_at", "finished_at",
                    "lease_expires_at", "cancel_requested_at"):
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
        """A raw driver cursor inside one write transaction (the hot path)."""
        pinned = getattr(self._local, "conn", None)
        conn = pinned or self.engine.raw_connection()
        try:
            cur = conn.cursor()
            self._begin(cur)
            try:
                yield cur
            except BaseException:
                if is_broken(conn.driver_connection):
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

    def _begin(self, cur: t.Any) -> None:  # a no-op where statements autocommit
        """Start the hot path's write transaction."""

    def _commit(self, conn: t.Any, cur: t.Any) -> None:
        """Commit it."""

    def _rollback(self, conn: t.Any, cur: t.Any) -> None:
        """Roll it back."""

    @contextlib.contextmanager
    def transaction(self) -> t.Iterator[sa.Connection]:
        """A real write transaction for work of several statements, all or nothing."""
        with self.engine.connect() as conn:
            conn = self._begin_transaction(conn)
            try:
                yield conn
            except BaseException:
                conn.rollback()
                raise
            conn.commit()

    @abc.abstractmethod
    def _begin_transaction(self, conn: sa.Connection) -> sa.Connection:
        """Make ``conn``'s next statements one transaction (see :meth:`transaction`)."""

    # -- enqueue: the one INSERT ----------------------------------------

    def insert_rows(
        self, conn: sa.Connection, values: dict[str, t.Any], payloads: t.Sequence[str]
    ) -> list[int]:
        """Insert jobs with the columns in ``values`` and these payloads (JSON
        texts), on ``conn``, in its transaction; returns the new ids in payload
        order (none if ``values`` has an idempotency key already taken).

        Every enqueue comes here: one statement, ``insert_job`` for one job
        (:meth:`insert_one`), ``insert_jobs`` for more. The unique index on the
        key decides between concurrent enqueues, also across processes."""
        params = {**self.optional, **values}
        if len(payloads) == 1:
            params["payload"] = payloads[0]
            job_id = self.insert_one(conn, params)
            return [] if job_id is None else [job_id]
        params["payloads"] = self.payload_list(payloads)
        rows = self.send(conn, "insert_jobs", params).fetchall()
        # ids come from one sequence in insertion order, which is payload order
        return sorted([row[0] for row in rows])

    def insert_one(self, conn: sa.Connection, params: dict[str, t.Any]) -> int | None:
        """Send ``insert_job``: the new id, or ``None`` when the key was taken."""
        return self.send(conn, "insert_job", params).scalar()

    @abc.abstractmethod
    def payload_list(self, payloads: t.Sequence[str]) -> str:
        """JSON texts as the one parameter ``insert_jobs`` reads them from."""

    def insert(self, target: Target, values: dict[str, t.Any], text: str = "") -> tuple[Job, bool]:
        """Insert one job (``values`` with its ``payload``, a dict, and its JSON
        ``text`` if the caller has it) in the caller's transaction; returns (job, created).

        With an idempotency key already taken, nothing is inserted and the
        existing job is returned.
        """
        conn = connection_of(target)
        ids = self.insert_rows(conn, values, [text or json.dumps(values["payload"])])
        if ids:
            return self._job_from(ids[0], values), True
        existing = conn.execute(
            sa.select(*self._columns)
            .where(self.table.c.idempotency_key == values["idempotency_key"])
        ).one()
        return self.to_job(existing), False

    @abc.abstractmethod
    def standalone_engine(self, app_engine: sa.Engine) -> sa.Engine:
        """The engine for an enqueue that commits alone (:mod:`..standalone`):
        one whose commits are as durable as the app's own."""

    def insert_many(
        self, target: Target, shared: dict[str, t.Any], payloads: list[str]
    ) -> list[int]:
        """Insert jobs that differ only in payload (JSON texts) in the caller's
        transaction, one statement per chunk; returns ids in payload order."""
        conn = connection_of(target)
        ids: list[int] = []
        for start in range(0, len(payloads), INSERT_CHUNK):
            ids.extend(self.insert_rows(conn, shared, payloads[start:start + INSERT_CHUNK]))
        return ids

    def insert_batch(
        self,
        target: Target,
        batch_id: str,
        *,
        on_complete: str | None,
        on_complete_payload: dict[str, t.Any] | None,
        now: dt.datetime,
    ) -> None:
        """Record a batch in the caller's transaction (its jobs go in with
        :meth:`insert_many`, ``batch_id`` among the shared values)."""
        connection_of(target).execute(self.batches.insert().values(
            id=batch_id, on_complete=on_complete, on_complete_payload=on_complete_payload,
            created_at=now,
        ))

    def _job_from(self, job_id: int, values: dict[str, t.Any]) -> Job:
        """The Job just inserted, from what was sent: no columns to read back."""
        fields = {**_NEW_JOB, **values, "id": job_id}
        for name in values.keys() - _NEW_JOB.keys():  # columns a Job does not show
            del fields[name]
        return Job(**fields)

    # -- admin reads and transitions ------------------------------------

    def get(self, job_id: int) -> Job | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(*self._columns).where(self.table.c.id == job_id)
            ).first()
        return None if row is None else self.to_job(row)

    def counts(self, now: dt.datetime, due: bool = True) -> list[Counted]:
        """Jobs per queue, type and status, and with ``due`` the due ones
        among the waiting, in one statement (``counts`` of the SQL file): on
        PostgreSQL the counts come from the rows the count triggers keep, so
        only the due part reads job rows (the waiting ones)."""
        with self.engine.connect() as conn:
            rows = self.send(conn, "counts", {"now": now, "due": due}).all()
        out = []
        for row in rows:
            queue, job_type, status, n, due, oldest = tuple(row)
            out.append(Counted(queue, job_type, status, int(n), int(due or 0), as_utc(oldest)))
        return out

    def fold_counts(self) -> None:
        """Fold the changes the count triggers added into one row per group
        (PostgreSQL; the sweep calls it). Elsewhere nothing is kept."""

    def stats(self, now: dt.datetime, handled: t.Collection[str]) -> dict[str, t.Any]:
        """Counts by status and type, and the due backlog, from :meth:`counts`."""
        by_status: dict[str, int] = dict.fromkeys(STATUSES, 0)
        by_type: dict[str, dict[str, int]] = {}
        unhandled: dict[str, int] = {}
        oldest: dt.datetime | None = None
        for row in self.counts(now):
            by_status[row.status] = by_status.get(row.status, 0) + row.n
            counts = by_type.setdefault(row.job_type, dict.fromkeys(STATUSES, 0))
            counts[row.status] = counts.get(row.status, 0) + row.n
            if row.due:
                if row.oldest_due is not None and (oldest is None or row.oldest_due < oldest):
                    oldest = row.oldest_due
                if row.job_type not in handled:
                    unhandled[row.job_type] = unhandled.get(row.job_type, 0) + row.due
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

    def expired_leases(self, now: dt.datetime, stale_before: dt.datetime) -> ExpiredLeases:
        """Running jobs whose lease ended before ``now``, in one query per
        question; both read running jobs only (the partial lease index).

        ``stale`` counts the leases that ended before ``stale_before``: the
        sweep should have recovered those by now.
        """
        c = self.table.c
        running = sa.text(RUNNING_SQL)
        with self.engine.connect() as conn:
            count, stale, first = conn.execute(
                sa.select(
                    sa.func.count(),
                    sa.func.count(sa.case((c.lease_expires_at < stale_before, 1))),
                    sa.func.min(c.lease_expires_at),
                ).where(running, c.lease_expires_at < now)
            ).one()
            newest = sa.func.max(c.lease_expires_at)
            silent = conn.execute(
                sa.select(c.worker_id, newest).where(running)
                .group_by(c.worker_id).having(newest < now)
            ).all()
        first = as_utc(first)
        return ExpiredLeases(
            count=int(count),
            stale=int(stale),
            oldest_age=None if first is None else max(0.0, (now - first).total_seconds()),
            silent_workers={
                worker or "?": max(0.0, (now - as_utc(last)).total_seconds())
                for worker, last in silent
            },
        )

    def ping(self) -> None:
        """One round trip on a pooled connection; raises what the database raised."""
        with self.engine.connect() as conn:
            conn.execute(sa.select(1)).one()

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
                   sa.or_(c.callback_status.is_(None),
                          c.callback_status != CallbackStatus.PENDING))
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
        counts: dict[str, int] = dict.fromkeys(STATUSES, 0)
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
                    ids = self.insert_rows(conn, values, [json.dumps(values["payload"])])
                    job_id = ids[0] if ids else None
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
        with self.transaction() as conn:
            self.send(conn, "start_schedule", values)

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
            ids = self.insert_rows(conn, job, [json.dumps(job["payload"])])
            return ids[0] if ids else None

    # -- completion callbacks ---------------------------------------------

    def claim_callbacks(
        self, now: dt.datetime, lease_until: dt.datetime, limit: int
    ) -> list[Job]:
        """Take due callback deliveries: their next time moves to ``lease_until``,
        which also fences the write of the delivery's outcome."""
        c = self.table.c
        due = (
            sa.select(c.id)
            .where(c.callback_status == CallbackStatus.PENDING, c.callback_next_at <= now)
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
                .where(c.id == job_id, c.callback_status == CallbackStatus.PENDING,
                       c.callback_next_at == claimed_until)
                .values(callback_status=status, callback_attempts=attempts,
                        callback_error=error, callback_next_at=next_at)
            ).rowcount
        return bool(count)

    def held_by(self, token: str) -> list[int]:
        """The ids of the running jobs whose lease is ``token``'s (a claim's
        answer lost with its connection may still have marked them)."""
        c = self.table.c
        with self.transaction() as conn:
            ids = conn.execute(
                sa.select(c.id).where(c.status == RUNNING, c.lease_token == token)
            ).scalars().all()
        return list(ids)

    # -- wake-ups ---------------------------------------------------------

    @abc.abstractmethod
    def watch(self) -> Watcher:
        """A watcher whose ``wait`` returns early when another process may
        have added jobs. A shortcut only: polling stays the correctness path."""

    # -- hot path: the adapters' named statements -------------------------

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
        """Mark up to ``limit`` due jobs running under ``token``; returns them
        in claim order (priority, due time, id)."""

    @abc.abstractmethod
    def finish(self, outcomes: t.Sequence[Finish], now: dt.datetime) -> set[int]:
        """Write outcomes whose lease still holds; returns the ids written.

        An outcome the database ended ``cancelled`` instead (its cancel was
        requested) gets that ``status``."""

    @abc.abstractmethod
    def write_progress(self, updates: t.Sequence[tuple[int, str, str]]) -> set[int]:
        """Write (id, lease token, progress JSON) of running jobs whose lease
        still holds; returns the ids written."""

    @abc.abstractmethod
    def renew(self, held: t.Sequence[tuple[int, str]], lease_until: dt.datetime) -> set[int]:
        """Extend leases still held; returns the ids whose lease was extended."""

    @abc.abstractmethod
    def release(self, held: t.Sequence[tuple[int, str]], now: dt.datetime) -> int:
        """Give claimed jobs back, due at once, the attempt not counted."""

    @abc.abstractmethod
    def sweep(self, now: dt.datetime) -> list[tuple[t.Any, ...]]:
        """Recover running jobs whose lease expired; returns (id, type, status, batch)."""
