"""A database made by revision 0001 and holding jobs upgrades in place."""

from __future__ import annotations

import datetime as dt
import typing as t

import sqlalchemy as sa
from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from flask_durable_jobs import DurableJobs
from flask_durable_jobs.migrations import HEAD, current, upgrade

UTC = dt.timezone.utc
STATUSES = ("pending", "retrying", "running", "succeeded", "dead", "cancelled")


def _old_job(status: str, n: int, now: dt.datetime) -> dict[str, t.Any]:
    """A row as revision 0001's table holds it (its columns only)."""
    ended = status in ("succeeded", "dead", "cancelled")
    running = status == "running"
    return {
        "job_type": "t", "queue": "default", "status": status, "payload": {"n": n},
        "attempts": 1 if status in ("retrying", "running", "dead", "succeeded") else 0,
        "max_attempts": 3, "priority": n % 3, "run_at": now - dt.timedelta(minutes=n),
        "created_at": now - dt.timedelta(hours=1), "updated_at": now,
        "orphan_policy": "retry", "callback_attempts": 0,
        # a running job whose process died: its lease ran out a minute ago
        "lease_token": "f" * 32 if running else None,
        "lease_expires_at": now - dt.timedelta(minutes=1) if running else None,
        "worker_id": "gone" if running else None,
        "started_at": now - dt.timedelta(minutes=2) if running else None,
        "finished_at": now if ended else None,
    }


def test_a_0001_database_holding_jobs_in_every_status_upgrades_and_runs_them(
    database_url: str,
) -> None:
    now = dt.datetime.now(UTC)
    engine = sa.create_engine(database_url)
    try:
        upgrade(engine, "0001")
        assert current(engine) == "0001"
        table = sa.Table("durable_jobs", sa.MetaData(), autoload_with=engine)
        rows = [_old_job(status, 10 * i + k, now)
                for i, status in enumerate(STATUSES) for k in range(3)]
        with engine.begin() as conn:
            ids = [conn.execute(sa.insert(table).values(row).returning(table.c.id)).scalar_one()
                   for row in rows]
        upgrade(engine)
        assert current(engine) == HEAD
        if engine.dialect.name == "postgresql":
            with engine.connect() as conn:
                options = conn.execute(sa.text(
                    "SELECT reloptions FROM pg_class WHERE relname = 'durable_jobs'")).scalar_one()
            assert "autovacuum_vacuum_scale_factor=0.01" in options
            assert "autovacuum_analyze_scale_factor=0.01" in options
    finally:
        engine.dispose()

    app = Flask("upgraded")
    app.config.update(SQLALCHEMY_DATABASE_URI=database_url, DURABLE_JOBS_SCHEDULER=False,
                      TESTING=True)
    db = SQLAlchemy(app)
    jobs = DurableJobs(app, db=db)
    ran: list[int] = []
    jobs.handler("t")(lambda p: ran.append(p["n"]))
    with app.app_context():
        try:
            # counted as the table holds them (on PostgreSQL, the ended jobs
            # from the counts revision 0006 filled in)
            assert jobs.stats()["by_status"] == dict.fromkeys(STATUSES, 3)
            assert jobs.sweep_orphans() == 3  # the running ones, lease expired
            new = jobs.enqueue("t", {"n": 1000})
            counts = jobs.drain()
            waiting = [row["payload"]["n"] for row in rows
                       if row["status"] in ("pending", "retrying", "running")]
            assert sorted(ran) == sorted([*waiting, 1000])
            assert counts["succeeded"] == len(waiting) + 1
            by_id = {job_id: row for job_id, row in zip(ids, rows, strict=True)}
            for job_id, row in by_id.items():
                job = jobs.get(job_id)
                assert job is not None
                if row["status"] in ("succeeded", "dead", "cancelled"):
                    assert job.status == row["status"]  # finished jobs stay as they were
                else:
                    assert job.status == "succeeded"
                    assert job.attempts == row["attempts"] + 1
            assert jobs.get(new.id).status == "succeeded"  # type: ignore[union-attr]
            assert jobs.stats()["by_status"]["succeeded"] == 3 + len(waiting) + 1
        finally:
            jobs.stop()
            db.engine.dispose()
