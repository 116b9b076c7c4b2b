"""The store on PostgreSQL: the statements of ``sql/postgresql.sql``, on psycopg 3.

Claims take many jobs per statement with ``FOR UPDATE SKIP LOCKED``;
outcomes, renewals and releases go in as arrays, one statement per batch. The
library's own engine autocommits: each statement is a transaction of its own.
"""

from __future__ import annotations

import datetime as dt
import time
import typing as t

import sqlalchemy as sa

from ..models import CANCELLED
from . import claimscan
from .base import CLAIM_ORDER, SWEEP_BATCH, Store
from .records import ClaimedRow, Finish, Watcher


def int_array(values: t.Iterable[int]) -> str:
    """A PostgreSQL array literal of integers (cast in the statement)."""
    return "{" + ",".join(map(str, map(int, values))) + "}"


def word_array(values: t.Iterable[str]) -> str:
    """A PostgreSQL array literal of the library's own words: lease tokens
    (hex) and statuses, which need no quotes (cast in the statement)."""
    return "{" + ",".join(values) + "}"


def text_array(values: t.Iterable[str | None]) -> str:
    """A PostgreSQL array literal of texts and NULLs (cast in the statement).

    The driver adapts a list element by element in Python; a hundred-element
    batch would spend more time there than the server spends on the statement.
    """
    return "{" + ",".join(
        "NULL" if v is None else '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        for v in values
    ) + "}"


def cancelled_where(outcomes: t.Sequence[Finish], rows: t.Iterable[t.Any]) -> set[int]:
    """The ids a finish wrote (its rows: id, status); an outcome the
    database ended cancelled instead (a cancel was requested) says so."""
    written = set()
    ended_cancelled = set()
    for row in rows:
        written.add(row[0])
        if row[1] == CANCELLED:
            ended_cancelled.add(row[0])
    if ended_cancelled:
        for outcome in outcomes:
            if outcome.id in ended_cancelled:
                outcome.status = CANCELLED
    return written


class PostgresStore(Store):
    dialect = "postgresql"
    concurrent_writes = True

    def __init__(self, engine: sa.Engine, table: sa.Table, batches: sa.Table) -> None:
        super().__init__(engine, table, batches)
        #: Where each kind of claim starts reading the due index.
        self.scans = claimscan.ClaimScans()

    @classmethod
    def build_engine(
        cls, app_engine: sa.Engine, pool_size: int, connect_args: dict[str, t.Any] | None
    ) -> sa.Engine:
        # Every statement the library sends is complete on its own (claim,
        # finish, heartbeat, transitions), so it runs in autocommit: one round
        # trip, no BEGIN/COMMIT. Broken connections are dropped on error
        # (see Store._raw) instead of pinging before every use.
        return sa.create_engine(
            app_engine.url.set(drivername="postgresql+psycopg"),
            pool_size=pool_size,
            max_overflow=pool_size,
            isolation_level="AUTOCOMMIT",
            connect_args=dict(connect_args or {}),
        )

    def standalone_engine(self, app_engine: sa.Engine) -> sa.Engine:
        # The library's own: its single statements commit as durably as the
        # app's, one round trip instead of BEGIN, INSERT, COMMIT.
        return self.engine

    def _begin_transaction(self, conn: sa.Connection) -> sa.Connection:
        # The engine autocommits single statements; this is all-or-nothing.
        return conn.execution_options(isolation_level="READ COMMITTED")

    def payload_list(self, payloads: t.Sequence[str]) -> str:
        return text_array(payloads)

    def watch(self) -> Watcher:
        import psycopg

        conninfo = self.engine.url.set(drivername="postgresql").render_as_string(
            hide_password=False
        )
        conn = psycopg.connect(conninfo, autocommit=True)
        conn.execute(self.queries["listen"])

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
        params = {
            "now": now, "types": text_array(job_types),
            "queues": None if queues is None else text_array(queues),
            "with_secrets": with_secrets, "limit": limit, "token": token,
            "lease": lease_until, "worker": worker_id,
        }
        kind = (tuple(job_types), None if queues is None else tuple(queues), with_secrets)
        start = self.scans.start(kind)
        rows = self._claim_from(kind, start, params)
        if start is not None and len(rows) < limit:
            # past the position the backlog ran out: the rest from the start
            rows += self._claim_from(kind, None, {**params, "limit": limit - len(rows)})
        rows.sort(key=CLAIM_ORDER)
        # payload as text, decoded by the handler's thread: the claiming
        # thread is the one every job of the batch waits for
        return [ClaimedRow(r[0], r[1], r[2], r[3], r[4], token, r[5], r[6]) for r in rows]

    def _claim_from(self, kind: claimscan.Kind, start: claimscan.Position | None,
                    params: dict[str, t.Any]) -> list[t.Any]:
        """One claim statement reading the due index from ``start``."""
        began = time.monotonic()
        rows = self._with_settings("claim", {**params, **claimscan.params(start)})
        last = max(rows, key=CLAIM_ORDER) if rows else None
        self.scans.record(
            kind, start, params["limit"],
            None if last is None else (last[7], last[8], last[0]),
            len(rows), time.monotonic() - began,
        )
        return rows

    def _with_settings(self, name: str, params: dict[str, t.Any]) -> list[t.Any]:
        """Run a named statement that begins with ``SET LOCAL`` planner
        settings; returns the rows of its last part."""
        import psycopg

        with self._raw() as cur:
            # client-side binding: several statements in one query string run
            # in one implicit transaction, which the settings last for
            client = psycopg.ClientCursor(cur.connection)
            try:
                client.execute(*self._driver(name, params))
                while client.nextset():
                    pass
                return client.fetchall()
            finally:
                client.close()

    def finish(self, outcomes: t.Sequence[Finish], now: dt.datetime) -> set[int]:
        if not outcomes:
            return set()
        params = {
            "now": now,
            "ids": int_array([o.id for o in outcomes]),
            "tokens": word_array([o.token for o in outcomes]),
            "statuses": word_array([o.status for o in outcomes]),
            "results": text_array([o.result for o in outcomes]),
            "errors": text_array([o.error for o in outcomes]),
            "run_ats": text_array([
                None if o.run_at is None else o.run_at.isoformat() for o in outcomes
            ]),
            "progress": text_array([o.progress for o in outcomes]),
        }
        return cancelled_where(outcomes, self._with_settings("finish", params))

    def _pairs(self, name: str, held: t.Sequence[tuple[int, str]],
               params: dict[str, t.Any]) -> set[int]:
        """Run a statement over (id, lease token) pairs; returns the ids it wrote."""
        params = {**params, "ids": int_array([h[0] for h in held]),
                  "tokens": word_array([h[1] for h in held])}
        with self._raw() as cur:
            cur.execute(*self._driver(name, params))
            return {row[0] for row in cur.fetchall()}

    def renew(self, held: t.Sequence[tuple[int, str]], lease_until: dt.datetime) -> set[int]:
        if not held:
            return set()
        return self._pairs("renew", held, {"lease": lease_until})

    def release(self, held: t.Sequence[tuple[int, str]], now: dt.datetime) -> int:
        if not held:
            return 0
        return len(self._pairs("release", held, {"now": now}))

    def sweep(self, now: dt.datetime) -> list[tuple[t.Any, ...]]:
        with self._raw() as cur:
            cur.execute(*self._driver("sweep", {"now": now, "limit": SWEEP_BATCH}))
            return [tuple(row[:4]) for row in cur.fetchall()]  # the last: the notification

    def fold_counts(self) -> None:
        with self._raw() as cur:
            cur.execute(*self._driver("fold_counts", {}))

    def write_progress(self, updates: t.Sequence[tuple[int, str, str]]) -> set[int]:
        if not updates:
            return set()
        params = {"ids": int_array([u[0] for u in updates]),
                  "tokens": word_array([u[1] for u in updates]),
                  "progress": text_array([u[2] for u in updates])}
        with self._raw() as cur:
            cur.execute(*self._driver("write_progress", params))
            return {row[0] for row in cur.fetchall()}

    def announce_ended(self, conn: sa.Connection, ids: t.Sequence[int]) -> None:
        if ids:
            self.send(conn, "notify_ended", {"ids": ",".join(map(str, ids))})

    def watch_ended(self, job_id: int) -> Watcher:
        import psycopg

        conninfo = self.engine.url.set(drivername="postgresql").render_as_string(
            hide_password=False
        )
        conn = psycopg.connect(conninfo, autocommit=True)
        conn.execute(self.queries["listen_ended"])
        wanted = str(job_id)

        def wait(timeout: float) -> bool:
            deadline = time.monotonic() + timeout
            while (left := deadline - time.monotonic()) > 0:
                for note in conn.notifies(timeout=left, stop_after=1):
                    if not note.payload or wanted in note.payload.split(","):
                        return True
            return False

        return Watcher(wait, conn.close)
