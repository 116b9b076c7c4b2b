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

import contextlib
import json
import logging
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
import typing as t
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from flask_durable_jobs import DurableJobs, faults
from tests.helpers import on_postgresql, sweeping, wait_for

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
def test_a_terminated_connection_is_classified(database_url: str) -> None:
    """The error a real terminated connection raises, raw and through SQLAlchemy.

    Raw, the driver reads the server's goodbye (57P01, an administrator's
    shutdown: the kind a restart gives too); SQLAlchemy sees a disconnect and
    says the connection was invalidated: lost. Both are transient and both
    mean the connection is dead."""
    import psycopg

    plain = sa.make_url(database_url).set(drivername="postgresql").render_as_string(False)
    with psycopg.connect(plain, autocommit=True) as conn:
        assert terminate_backends(database_url) >= 1
        # the goodbye has reached the socket before the statement is sent
        poller = select.poll()
        poller.register(conn.fileno(), select.POLLIN)
        assert poller.poll(10_000), "the server did not close the connection"
        with pytest.raises(psycopg.Error) as raw:
            conn.execute("SELECT 1")
    assert raw.value.sqlstate == "57P01"
    assert faults.classify(raw.value) == faults.RESTARTING
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
    assert wrapped.value.connection_invalidated
    assert faults.classify(wrapped.value) == faults.LOST


@pytest.mark.postgresql
@on_postgresql
def test_the_pool_replaces_a_connection_the_server_closed_while_idle(database_url: str) -> None:
    """All connections are terminated while one sits in the pool: the next
    checkout hands out a new one, and the statement on it succeeds."""
    engine = sa.create_engine(database_url)
    faults.replace_closed_connections(engine)
    try:
        with engine.connect() as conn:
            before = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
        assert terminate_backends(database_url) >= 1
        time.sleep(0.2)  # the server's goodbye reaches the socket
        raw = engine.raw_connection()  # the store's hot path takes connections so
        try:
            cursor = raw.cursor()
            cursor.execute("SELECT pg_backend_pid()")
            after = cursor.fetchone()[0]
        finally:
            raw.close()
    finally:
        engine.dispose()
    assert after != before


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
    with sweeping(app, jobs) as recovered:
        counts = jobs.process_due()
    assert len(calls) >= 4
    assert counts["succeeded"] == 1 and sum(recovered) == 0 and runs == [1]
    done = jobs.get(job.id)
    assert done is not None and (done.status, done.attempts) == ("succeeded", 1)


@pytest.mark.postgresql
@on_postgresql
def test_jobs_of_a_claim_whose_answer_was_lost_are_given_back(
    app: Flask, jobs: DurableJobs, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server commits a claim, then the connection dies before the
    answer arrives: the jobs are released (the attempt not counted) and run
    now, not after their lease and a sweep that, with ``on_orphan="dead"``,
    would end them dead."""
    import psycopg.errors

    runs: list[int] = []
    jobs.handler("t", on_orphan="dead")(lambda payload: runs.append(payload["n"]))
    ids = jobs.enqueue_many("t", [{"n": n} for n in range(3)])
    store = app.extensions["durable_jobs"].store
    real_claim = store.claim
    lost: list[int] = []

    def claim(**kwargs: t.Any) -> t.Any:
        rows = real_claim(**kwargs)
        if not lost:
            lost.append(len(rows))
            raise psycopg.errors.AdminShutdown("terminating connection")
        return rows

    monkeypatch.setattr(store, "claim", claim)
    with pytest.raises(psycopg.errors.AdminShutdown):
        jobs.process_due()  # nothing held yet: the caller sees the failure
    assert lost == [3]
    assert jobs.drain()["succeeded"] == 3  # the next run gives them back first
    assert sorted(runs) == [0, 1, 2]
    assert [(j.status, j.attempts) for j in map(jobs.get, ids)] == [  # type: ignore[union-attr]
        ("succeeded", 1)] * 3


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
    lease expired and then ran again). With ``on_orphan="dead"`` the sweep
    would have sent them to dead instead: it never takes a live job."""
    create_side_table(db)
    started: list[int] = []

    @jobs.handler("slow", on_orphan="dead")
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


# -- real processes: terminated connections, a restart, a stop ---------------------------

ROOT = Path(__file__).resolve().parent.parent
GUNICORN = str(Path(sys.executable).parent / "gunicorn")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
PG_VERSION = os.environ.get("DURABLE_JOBS_TEST_PG_VERSION", "15")
TEST_APP_NAME = "fdj-test"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def skip_or_fail(reason: str) -> t.NoReturn:
    if IN_CI:
        pytest.fail(reason + " (CI=true: the fault tests must run)")
    pytest.skip(reason)


@pytest.fixture
def side_url(pg_server_url: str) -> t.Iterator[str]:
    """A database of its own for the side effects, on the shared server: the
    faults under test never touch it."""
    admin = sa.create_engine(sa.make_url(pg_server_url).set(database="postgres"),
                             isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    name = f"fdj_side_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield sa.make_url(pg_server_url).set(database=name).render_as_string(False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


class Cluster:
    """A PostgreSQL cluster of this test's own, made with Debian's tools, so
    that restarting or stopping it disturbs nobody else's tests."""

    def __init__(self, name: str, port: int) -> None:
        self.name = name
        self.port = port
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"

    def ctl(self, action: str) -> None:
        subprocess.run(["pg_ctlcluster", PG_VERSION, self.name, action], check=True,
                       capture_output=True, timeout=120)


@pytest.fixture
def cluster() -> t.Iterator[Cluster]:
    tools = ("pg_createcluster", "pg_ctlcluster", "pg_dropcluster")
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        skip_or_fail(f"a private PostgreSQL cluster needs {', '.join(missing)}"
                     " (Debian's postgresql-common)")
    if os.geteuid() != 0:
        skip_or_fail("a private PostgreSQL cluster is made as root (pg_createcluster)")
    name = f"fdjfault{uuid.uuid4().hex[:8]}"
    made = subprocess.run(
        ["pg_createcluster", PG_VERSION, name, "--port", str(free_port()), "--",
         "--auth=trust"],
        capture_output=True, text=True, timeout=120,
    )
    if made.returncode != 0:
        skip_or_fail(f"pg_createcluster {PG_VERSION} failed: {made.stderr.strip()}")
    try:
        port = int(Path(f"/etc/postgresql/{PG_VERSION}/{name}/postgresql.conf").read_text()
                   .split("\nport = ")[1].split()[0])
        made_cluster = Cluster(name, port)
        made_cluster.ctl("start")
        yield made_cluster
    finally:
        subprocess.run(["pg_dropcluster", "--stop", PG_VERSION, name], capture_output=True,
                       timeout=120)


class Drain:
    """``gunicorn -w 2`` serving tests/procs/faultapp.py, each worker with its
    scheduler, and the test's view of the jobs and the side effects."""

    def __init__(self, jobs_url: str, side_url: str, tmp_path: Path, **config: t.Any) -> None:
        from tests.procs import faultapp

        self.faultapp = faultapp
        self.app = faultapp.create_app({
            "SQLALCHEMY_DATABASE_URI": jobs_url,
            "SQLALCHEMY_BINDS": {"side": side_url},
            "SQLALCHEMY_ENGINE_OPTIONS": {
                "pool_pre_ping": True, "connect_args": {"application_name": TEST_APP_NAME},
            },
            "DURABLE_JOBS_SCHEDULER": False,
        })
        self._ctx = self.app.app_context()
        self._ctx.push()
        faultapp.db.create_all()
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("FLASK_", "FAULTAPP_", "GUNICORN_"))}
        env.update(
            PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
            PYTHONUNBUFFERED="1", FAULTAPP_DATABASE_URL=jobs_url, FAULTAPP_SIDE_URL=side_url,
            FAULTAPP_LOG="1",
        )
        for key, value in config.items():
            env[f"FAULTAPP_DURABLE_JOBS_{key}"] = json.dumps(value)
        self.log_path = tmp_path / "gunicorn.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [GUNICORN, "-w", "2", "-b", f"127.0.0.1:{free_port()}", "--graceful-timeout",
             "10", "tests.procs.faultapp:create_app()"],
            cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, stdout=self._log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )
        wait_for("both workers' schedulers", lambda: self.output().count(
            "durable jobs scheduler started") == 2, 60, details=self.output)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def enqueue(self, prefix: str, count: int, sleep: float) -> None:
        self.faultapp.jobs.enqueue_many(
            self.faultapp.JOB, [{"tag": f"{prefix}{n}", "sleep": sleep} for n in range(count)]
        )

    def statuses(self) -> dict[str, int]:
        with self.faultapp.db.engine.connect() as conn:
            return dict(conn.exec_driver_sql(  # type: ignore[arg-type]
                "SELECT status, count(*) FROM durable_jobs GROUP BY status"
            ).all())

    def recorded(self) -> dict[str, int]:
        """How many times each tag's side effect was recorded."""
        with self.faultapp.db.engines["side"].connect() as conn:
            return dict(conn.exec_driver_sql(  # type: ignore[arg-type]
                "SELECT tag, count(*) FROM side_effects GROUP BY tag"
            ).all())

    def details(self) -> str:
        return f"jobs by status: {self.statuses()}\n--- gunicorn:\n{self.output()[-6000:]}"

    def wait_drained(self, total: int, timeout: float) -> None:
        wait_for(f"{total} jobs to succeed", lambda: self.statuses() == {"succeeded": total},
                 timeout, interval=0.5, details=self.details)

    def assert_each_ran_once(self, total: int) -> None:
        recorded = self.recorded()
        twice = {tag: n for tag, n in recorded.items() if n > 1}
        assert not twice, f"{len(twice)} jobs ran twice, e.g. {sorted(twice)[:10]}"
        assert len(recorded) == total

    def close(self) -> None:
        try:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        finally:
            self._log.close()
            self.faultapp.jobs.stop()
            self.faultapp.db.session.remove()
            for engine in self.faultapp.db.engines.values():
                engine.dispose()
            self._ctx.pop()


def terminate_library_connections(url: str) -> int:
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            killed = conn.execute(sa.text(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = current_database() AND application_name = :name"
            ), {"name": "fdj-jobs"}).scalar_one()
            conn.commit()
            return int(killed)
    finally:
        engine.dispose()


@pytest.mark.slow
@pytest.mark.postgresql
@on_postgresql
def test_gunicorn_drains_while_its_connections_are_terminated_every_200_ms(
    database_url: str, side_url: str, tmp_path: Path
) -> None:
    """Every 200 ms, for as long as the drain runs (up to 8 s), every
    connection of the app and the library to the jobs database is terminated
    while two workers drain 600 short jobs: every job succeeds, and none runs
    twice (before: hundreds did)."""
    total = 600
    drain = Drain(database_url, side_url, tmp_path, LEASE_SECONDS=10, SWEEP_INTERVAL=2,
                  POLL_INTERVAL=0.2)
    try:
        drain.enqueue("t", total, sleep=0.05)
        wait_for("the drain to start", lambda: len(drain.recorded()) >= 20, 30,
                 interval=0.05, details=drain.details)
        rounds = 0  # terminations that met connections while jobs were left
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline and len(drain.recorded()) < total:
            if terminate_library_connections(database_url):
                rounds += 1
            time.sleep(0.2)
        assert rounds >= 10, f"only {rounds} terminations met the drain"
        drain.wait_drained(total, 120)
        drain.assert_each_ran_once(total)
        # one line per process and kind of failure per minute, not one per attempt
        said = re.findall(r" (\d+) \S+ WARNING durable jobs: (.+?) failed \((.+?):",
                          drain.output())
        assert said and len(said) == len(set(said)), said
    finally:
        drain.close()


@pytest.mark.slow
@pytest.mark.postgresql
def test_gunicorn_drains_through_a_restart_and_a_15_second_stop(
    cluster: Cluster, side_url: str, tmp_path: Path
) -> None:
    """A PostgreSQL restart mid-drain, then a stop of 15 s mid-drain (within
    the 30 s lease): every job succeeds and none runs twice."""
    admin = sa.create_engine(cluster.url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    with admin.connect() as conn:
        conn.exec_driver_sql("CREATE DATABASE jobs")
    admin.dispose()
    jobs_url = sa.make_url(cluster.url).set(database="jobs").render_as_string(False)
    drain = Drain(jobs_url, side_url, tmp_path, LEASE_SECONDS=30, SWEEP_INTERVAL=2,
                  POLL_INTERVAL=0.2)
    try:
        drain.enqueue("r", 300, sleep=0.05)
        wait_for("the drain to start", lambda: len(drain.recorded()) >= 30, 30,
                 interval=0.05, details=drain.details)
        assert len(drain.recorded()) < 200, "the restart must come mid-drain"
        cluster.ctl("restart")
        drain.wait_drained(300, 120)
        drain.assert_each_ran_once(300)

        drain.enqueue("s", 300, sleep=0.05)
        wait_for("the second drain to start",
                 lambda: sum(tag.startswith("s") for tag in drain.recorded()) >= 30, 30,
                 interval=0.05, details=drain.details)
        assert sum(tag.startswith("s") for tag in drain.recorded()) < 200
        cluster.ctl("stop")
        time.sleep(15)
        cluster.ctl("start")
        drain.wait_drained(600, 120)
        drain.assert_each_ran_once(600)
        # the faults met the runs, which waited them out
        assert "durable jobs: the database answers again" in drain.output()
    finally:
        drain.close()
