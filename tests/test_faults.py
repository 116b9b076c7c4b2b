"""Database faults: a claim, a write or a lease renewal that fails on a lost
connection, a restart or a failover. Finished work must survive them: an
outcome waits until the database answers, leases keep being renewed
meanwhile, and no job whose process stayed alive within its lease runs twice.

The first tests make the store's statements fail with the driver's own
errors, on both databases; the ``slow`` ones terminate real PostgreSQL
connections, restart and stop a real server, under real processes. Side
effects are counted in a side table, as an operator would count them.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import typing as t

import pytest
import sqlalchemy as sa
from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from flask_durable_jobs import DurableJobs, faults
from tests.helpers import wait_for

on_postgresql = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
SIDE_TABLE = "side_effects"


def transient_error(backend: str) -> Exception:
    """What the driver raises when the server goes away mid-statement."""
    if backend == "postgresql":
        import psycopg.errors

        return psycopg.errors.AdminShutdown("terminating connection due to administrator command")
    import sqlite3

    return sqlite3.OperationalError("database is locked")


def failing(real: t.Callable[..., t.Any], error: Exception, times: int,
            after: int = 0) -> tuple[t.Callable[..., t.Any], list[int]]:
    """``real``, but calls ``after+1`` to ``after+times`` raise ``error``;
    returns the wrapper and the list of calls made (1-based numbers)."""
    calls: list[int] = []

    def wrapper(*args: t.Any, **kwargs: t.Any) -> t.Any:
        calls.append(len(calls) + 1)
        if after < len(calls) <= after + times:
            raise error
        return real(*args, **kwargs)

    return wrapper, calls


def warnings_about(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno >= logging.WARNING and text in r.getMessage()]


# -- which errors are transient ---------------------------------------------------


def test_classify_tells_transient_failures_from_refusals() -> None:
    import sqlite3

    import psycopg
    import psycopg.errors

    transient = {
        psycopg.OperationalError("server closed the connection unexpectedly"): faults.LOST,
        psycopg.OperationalError("connection failed: Connection refused"): faults.LOST,
        psycopg.errors.ConnectionFailure("connection failure"): faults.LOST,
        psycopg.errors.AdminShutdown("terminating connection"): faults.RESTARTING,
        psycopg.errors.CannotConnectNow("the database system is starting up"): faults.RESTARTING,
        psycopg.errors.SerializationFailure("could not serialize"): faults.CONFLICT,
        psycopg.errors.DeadlockDetected("deadlock detected"): faults.CONFLICT,
        psycopg.errors.TooManyConnections("too many clients"): faults.BUSY,
        psycopg.errors.QueryCanceled("canceling statement due to statement timeout"): faults.BUSY,
        sqlite3.OperationalError("database is locked"): faults.LOCKED,
        # as SQLAlchemy wraps them
        sa.exc.OperationalError("SELECT", {}, psycopg.errors.AdminShutdown("x")): faults.RESTARTING,
        sa.exc.DBAPIError("SELECT", {}, Exception("x"), connection_invalidated=True): faults.LOST,
        sa.exc.TimeoutError("QueuePool limit reached"): faults.POOL,
    }
    for exc, kind in transient.items():
        assert faults.classify(exc) == kind, exc
    refusals = [
        psycopg.errors.UndefinedTable('relation "durable_jobs" does not exist'),
        psycopg.errors.UniqueViolation("duplicate key"),
        psycopg.errors.InvalidTextRepresentation("invalid input syntax"),
        psycopg.InterfaceError("the cursor is closed"),
        sqlite3.OperationalError("no such table: durable_jobs"),
        sqlite3.IntegrityError("UNIQUE constraint failed"),
        sa.exc.ProgrammingError("SELECT", {}, psycopg.errors.UndefinedTable("x")),
        sa.exc.OperationalError("SELECT", {}, sqlite3.OperationalError("no such table: x")),
        RuntimeError("a bug"),
        UnicodeEncodeError("utf-8", "\udcff", 0, 1, "surrogates not allowed"),
    ]
    for exc in refusals:
        assert faults.classify(exc) is None, exc
    assert faults.lost_connection(psycopg.errors.AdminShutdown("x"))
    assert faults.lost_connection(psycopg.OperationalError("server closed the connection"))
    assert not faults.lost_connection(psycopg.errors.SerializationFailure("x"))
    assert not faults.lost_connection(sqlite3.OperationalError("database is locked"))


@pytest.mark.postgresql
@on_postgresql
def test_a_terminated_connection_is_classified_as_lost(database_url: str) -> None:
    """The error a real terminated connection raises, raw and through SQLAlchemy."""
    import psycopg

    plain = sa.make_url(database_url).set(drivername="postgresql").render_as_string(False)
    with psycopg.connect(plain, autocommit=True) as conn:
        assert terminate_backends(database_url) >= 1
        with pytest.raises(psycopg.Error) as raw:
            conn.execute("SELECT 1")
    assert faults.classify(raw.value) in (faults.LOST, faults.RESTARTING)
    assert faults.lost_connection(raw.value)

    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
            terminate_backends(database_url)
            with pytest.raises(sa.exc.DBAPIError) as wrapped:
                conn.exec_driver_sql("SELECT 1")
    finally:
        engine.dispose()
    assert faults.classify(wrapped.value) in (faults.LOST, faults.RESTARTING)


# -- the run keeps what it holds ------------------------------------------------------


def test_a_claim_that_fails_transiently_keeps_the_outcomes_and_running_jobs(
    app: Flask, jobs: DurableJobs, backend: str, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The claim after the first fails five times while four handlers run:
    the run waits the failures out, writes every outcome, claims the rest;
    every job runs once, and the failures make one log line."""
    runs: list[int] = []

    @jobs.handler("t")
    def handler(payload: dict[str, t.Any]) -> None:
        runs.append(payload["n"])
        time.sleep(0.2)

    jobs.enqueue_many("t", [{"n": n} for n in range(8)])
    store = app.extensions["durable_jobs"].store
    claim, calls = failing(store.claim, transient_error(backend), times=5, after=1)
    monkeypatch.setattr(store, "claim", claim)
    counts = jobs.drain()
    assert len(calls) >= 7
    assert counts == {"claimed": 8, "succeeded": 8, "retried": 0, "dead": 0}
    assert sorted(runs) == list(range(8))
    assert statuses(app.extensions["sqlalchemy"]) == {"succeeded": 8}
    (line,) = warnings_about(caplog, "claiming jobs failed")
    assert "retrying in 0.1 s" in line and "jobs running" in line


def test_writes_that_fail_transiently_are_written_once_the_database_answers(
    app: Flask, jobs: DurableJobs, backend: str, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    runs: list[int] = []
    jobs.handler("t")(lambda payload: runs.append(payload["n"]))
    jobs.enqueue_many("t", [{"n": n} for n in range(30)])
    store = app.extensions["durable_jobs"].store
    finish, calls = failing(store.finish, transient_error(backend), times=4)
    monkeypatch.setattr(store, "finish", finish)
    counts = jobs.drain()
    assert len(calls) >= 5
    assert counts == {"claimed": 30, "succeeded": 30, "retried": 0, "dead": 0}
    assert sorted(runs) == list(range(30))
    assert len(warnings_about(caplog, "writing job outcomes failed")) == 1
    assert not warnings_about(caplog, "lease lost")


@pytest.mark.config(DURABLE_JOBS_LEASE_SECONDS=1.5)
def test_a_renewal_that_fails_transiently_is_retried_before_the_lease_runs_out(
    app: Flask, jobs: DurableJobs, backend: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Renewals every 0.5 s; the first three fail. Retried after 0.1, 0.2
    and 0.4 s, the lease is renewed before it expires, and a sweep running
    all along never takes the job (retried at the next heartbeat only, it
    expired at 1.5 s and ran again)."""
    runs: list[int] = []

    @jobs.handler("long")
    def long(payload: dict[str, t.Any]) -> None:
        runs.append(1)
        time.sleep(3)

    job = jobs.enqueue("long", {})
    store = app.extensions["durable_jobs"].store
    renew, calls = failing(store.renew, transient_error(backend), times=3)
    monkeypatch.setattr(store, "renew", renew)
    stop = threading.Event()
    recovered: list[int] = []

    def sweeper() -> None:
        with app.app_context():
            while not stop.wait(0.1):
                recovered.append(jobs.sweep_orphans())

    thread = threading.Thread(target=sweeper)
    thread.start()
    try:
        counts = jobs.process_due()
    finally:
        stop.set()
        thread.join()
    assert len(calls) >= 4
    assert counts["succeeded"] == 1 and sum(recovered) == 0 and runs == [1]
    done = jobs.get(job.id)
    assert done is not None and (done.status, done.attempts) == ("succeeded", 1)


def test_a_claim_refused_for_good_is_raised_after_the_jobs_held_are_written(
    app: Flask, jobs: DurableJobs, monkeypatch: pytest.MonkeyPatch,
) -> None:
    @jobs.handler("t")
    def handler(payload: dict[str, t.Any]) -> None:
        time.sleep(0.2)

    ids = jobs.enqueue_many("t", [{"n": n} for n in range(8)])
    store = app.extensions["durable_jobs"].store
    claim, calls = failing(store.claim, RuntimeError("the claim is broken"), times=99, after=1)
    monkeypatch.setattr(store, "claim", claim)
    with pytest.raises(RuntimeError, match="the claim is broken"):
        jobs.process_due()
    assert len(calls) == 2  # no retry of a refusal
    got = [jobs.get(job_id) for job_id in ids]
    assert [j.status for j in got[:4]] == ["succeeded"] * 4  # type: ignore[union-attr]
    assert [j.status for j in got[4:]] == ["pending"] * 4  # type: ignore[union-attr]


def terminate_backends(url: str) -> int:
    """Terminate every other connection to the database of ``url``, as a
    failover or an administrator would; returns how many were terminated."""
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            killed = conn.execute(sa.text(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid))"
                " FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )).scalar_one()
            conn.commit()
            return int(killed)
    finally:
        engine.dispose()


def create_side_table(db: SQLAlchemy) -> None:
    with db.engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE TABLE {SIDE_TABLE} (job_id BIGINT NOT NULL, pid INTEGER)")


def side_effects(db: SQLAlchemy) -> dict[int, int]:
    """How many times each job's side effect was recorded."""
    with db.engine.connect() as conn:
        rows = conn.exec_driver_sql(
            f"SELECT job_id, count(*) FROM {SIDE_TABLE} GROUP BY job_id"
        ).all()
    return {int(job_id): int(count) for job_id, count in rows}


def rows(db: SQLAlchemy) -> list[t.Any]:
    """The job rows, read on the app's engine (which pings before use)."""
    with db.engine.connect() as conn:
        return list(conn.exec_driver_sql(
            "SELECT id, status, attempts, last_error FROM durable_jobs ORDER BY id"
        ))


def statuses(db: SQLAlchemy) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in rows(db):
        counts[row.status] = counts.get(row.status, 0) + 1
    return counts


@pytest.mark.slow
@pytest.mark.postgresql
@on_postgresql
@pytest.mark.config(
    DURABLE_JOBS_LEASE_SECONDS=10,
    DURABLE_JOBS_SWEEP_INTERVAL=2,
    # the handler's own connection recovers too (docs/deployment.rst)
    SQLALCHEMY_ENGINE_OPTIONS={"pool_pre_ping": True},
)
def test_terminated_connections_lose_no_finished_work(
    app: Flask, jobs: DurableJobs, db: SQLAlchemy, database_url: str
) -> None:
    """The issue's reproduction: every connection is terminated while two
    3-second handlers run; both end succeeded on their first attempt, each
    side effect recorded once (before, both rows stayed running until the
    lease expired and then ran again)."""
    create_side_table(db)
    started: list[int] = []

    @jobs.handler("slow")
    def slow(payload: dict[str, t.Any]) -> None:
        started.append(payload["n"])
        time.sleep(3)
        db.session.execute(
            sa.text(f"INSERT INTO {SIDE_TABLE} (job_id, pid) VALUES (:id, :pid)"),
            {"id": payload["n"], "pid": os.getpid()},
        )
        db.session.commit()

    for n in range(2):
        jobs.enqueue("slow", {"n": n})
    jobs.start()
    wait_for("both handlers to start", lambda: len(started) == 2, 10, interval=0.01)
    time.sleep(1.5)
    assert terminate_backends(database_url) > 0

    wait_for("both jobs to succeed", lambda: statuses(db) == {"succeeded": 2}, 30,
             details=lambda: repr(rows(db)))
    assert [row.attempts for row in rows(db)] == [1, 1]
    assert side_effects(db) == {0: 1, 1: 1}
