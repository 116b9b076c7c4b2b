"""The store on SQLite: the statements of ``sql/sqlite.sql``, on ``sqlite3``.

SQLite has one writer: the library's writes take the write lock at the start
(``BEGIN IMMEDIATE``) and wait for it through the busy timeout, so "database
is locked" never surfaces, and a batch's rows are written one statement each
inside that one short transaction.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
import typing as t

import sqlalchemy as sa

from ..errors import ConfigError
from ..models import INSERT_COLUMNS, UTC
from .base import CLAIM_ORDER, SWEEP_BATCH, Store
from .postgresql import cancelled_where
from .records import ClaimedRow, Finish, Watcher

log = logging.getLogger("flask_durable_jobs")

#: Seconds SQLite waits for the write lock before giving up.
SQLITE_BUSY_TIMEOUT = 60.0


def in_memory(url: sa.URL) -> bool:
    """An SQLite database that lives in one connection (or one process)."""
    return (url.database or "") in ("", ":memory:") or "mode=memory" in str(url)


def timestamp(value: dt.datetime | None) -> str | None:
    """A datetime as the text SQLAlchemy stores for a DATETIME: UTC,
    microseconds always shown, no offset; it sorts in time order."""
    if value is None:
        return None
    if value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    return value.isoformat(" ", "microseconds")[:26]  # without "+00:00"


def _no_connection_in_memory() -> t.Any:
    raise ConfigError(
        "flask-durable-jobs cannot run or read jobs on an in-memory SQLite database"
        " (sqlite://): it lives in the one connection the app's sessions use, which the"
        " library never shares. Enqueueing works; to run or read jobs (drain(), get(),"
        " the admin API), use a database file, e.g. sqlite:///{tmp_path}/test.db in tests."
    )


class SQLiteStore(Store):
    dialect = "sqlite"

    #: Seconds between two looks at the file's change counter.
    WATCH_INTERVAL = 0.02

    def __init__(self, engine: sa.Engine, table: sa.Table, batches: sa.Table) -> None:
        super().__init__(engine, table, batches)
        #: A new job's timestamp columns, which sqlite3 takes as text.
        self._stamped = [name for name in INSERT_COLUMNS
                         if isinstance(table.c[name].type, sa.DateTime)]

    @classmethod
    def build_engine(
        cls, app_engine: sa.Engine, pool_size: int, connect_args: dict[str, t.Any] | None
    ) -> sa.Engine:
        url = app_engine.url
        if in_memory(url):
            # The database lives in the one connection the app's sessions
            # share; the library never uses it: enqueueing (in the caller's
            # session) works, anything needing a connection of its own raises.
            return sa.create_engine("sqlite://", creator=_no_connection_in_memory)
        engine = sa.create_engine(
            url,
            pool_size=pool_size,
            max_overflow=pool_size,
            connect_args={
                **(connect_args or {}),
                "timeout": SQLITE_BUSY_TIMEOUT,
                "isolation_level": None,  # the store says BEGIN IMMEDIATE itself
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

    def standalone_engine(self, app_engine: sa.Engine) -> sa.Engine:
        # The app's: the library's own connections sync less often
        # (synchronous=NORMAL), which suits outcomes but not new jobs.
        return app_engine

    def _begin_transaction(self, conn: sa.Connection) -> sa.Connection:
        # Take the write lock now, waiting for it through the busy timeout; a
        # deferred transaction that reads and then writes fails at once instead.
        driver = conn.connection.driver_connection
        if driver is not None and not driver.in_transaction:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        return conn

    def _begin(self, cur: t.Any) -> None:
        cur.execute("BEGIN IMMEDIATE")  # as in _begin_transaction

    def _commit(self, conn: t.Any, cur: t.Any) -> None:
        cur.execute("COMMIT")

    def _rollback(self, conn: t.Any, cur: t.Any) -> None:
        if conn.driver_connection.in_transaction:
            cur.execute("ROLLBACK")

    def payload_list(self, payloads: t.Sequence[str]) -> str:
        return "[" + ",".join(payloads) + "]"

    def insert_one(self, conn: sa.Connection, params: dict[str, t.Any]) -> int | None:
        # No RETURNING: the cursor's row count says whether the row went in,
        # and the connection's last rowid is its id; a result without rows
        # spares the reading of a description and a fetch.
        if conn.dialect.driver != "pysqlite":  # another driver: its own paramstyle
            result = self.send(conn, "insert_job", params)
        else:
            # sqlite3 reads named binds from the dict itself, so the statement
            # goes as the file writes it; the timestamps become text here, each
            # instant once (a new job's created_at is its updated_at, and
            # mostly its run_at)
            first = params[self._stamped[0]]
            stamp = timestamp(first)
            for name in self._stamped:
                value = params[name]
                params[name] = stamp if value is first else timestamp(value)
            result = conn.exec_driver_sql(self.queries["insert_job"], params)
        return result.lastrowid if result.rowcount else None

    def to_driver(self, params: dict[str, t.Any]) -> dict[str, t.Any]:
        # sqlite3 has no timestamp type: the text SQLAlchemy stores
        return {name: timestamp(value) if isinstance(value, dt.datetime) else value
                for name, value in params.items()}

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
        params = {
            "now": now, "types": json_list(job_types),
            "queues": None if queues is None else json_list(queues),
            "with_secrets": with_secrets, "limit": limit, "token": token,
            "lease": lease_until, "worker": worker_id,
        }
        with self._raw() as cur:
            cur.execute(*self._driver("claim", params))
            rows = cur.fetchall()
        rows.sort(key=CLAIM_ORDER)  # run_at as stored: text in time order
        return [ClaimedRow(r[0], r[1], r[2], r[3], r[4], token, r[5], r[6]) for r in rows]

    def finish(self, outcomes: t.Sequence[Finish], now: dt.datetime) -> set[int]:
        if not outcomes:
            return set()
        stamp = timestamp(now)
        statement = self.statement("finish", self.engine.dialect)
        rows = []
        with self._raw() as cur:
            for o in outcomes:  # timestamps as text already: no to_driver per row
                cur.execute(statement.sql, statement.params({
                    "id": o.id, "token": o.token, "status": o.status, "result": o.result,
                    "error": o.error, "run_at": timestamp(o.run_at), "now": stamp,
                    "progress": o.progress,
                }))
                rows.extend(cur.fetchall())
        return cancelled_where(outcomes, rows)

    def _each_pair(self, name: str, held: t.Sequence[tuple[int, str]],
                   params: dict[str, t.Any]) -> set[int]:
        """Run a statement once per (id, lease token) pair; returns the ids it wrote."""
        statement = self.statement(name, self.engine.dialect)
        params = self.to_driver(params)
        done: set[int] = set()
        with self._raw() as cur:
            for job_id, token in held:
                cur.execute(statement.sql,
                            statement.params({**params, "id": job_id, "token": token}))
                done.update(row[0] for row in cur.fetchall())
        return done

    def renew(self, held: t.Sequence[tuple[int, str]], lease_until: dt.datetime) -> set[int]:
        if not held:
            return set()
        return self._each_pair("renew", held, {"lease": lease_until})

    def release(self, held: t.Sequence[tuple[int, str]], now: dt.datetime) -> int:
        if not held:
            return 0
        return len(self._each_pair("release", held, {"now": now}))

    def sweep(self, now: dt.datetime) -> list[tuple[t.Any, ...]]:
        with self._raw() as cur:
            cur.execute(*self._driver("sweep", {"now": now, "limit": SWEEP_BATCH}))
            return [tuple(row) for row in cur.fetchall()]

    def write_progress(self, updates: t.Sequence[tuple[int, str, str]]) -> set[int]:
        if not updates:
            return set()
        statement = self.statement("write_progress", self.engine.dialect)
        done: set[int] = set()
        with self._raw() as cur:
            for job_id, token, progress in updates:
                cur.execute(statement.sql, statement.params(
                    {"id": job_id, "token": token, "progress": progress}))
                done.update(row[0] for row in cur.fetchall())
        return done


def json_list(values: t.Sequence[str]) -> str:
    """Strings as the JSON array a statement reads with ``json_each``."""
    return json.dumps(list(values))
