"""Database faults on real PostgreSQL: terminated connections, a restart, a
stop of several seconds. Finished work must survive them: an outcome waits
until the database answers, leases keep being renewed meanwhile, and no job
whose process stayed alive within its lease runs twice.

Side effects are counted in a side table (job id, pid), as an operator would
count them.
"""

from __future__ import annotations

import os
import time
import typing as t

import pytest
import sqlalchemy as sa
from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from flask_durable_jobs import DurableJobs
from tests.helpers import wait_for

on_postgresql = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
SIDE_TABLE = "side_effects"


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
