"""The counts behind ``jobs.stats()``, ``jobs.queues()`` and the dashboard stay
equal to the table's own, whatever writes it; and the admin list's payload
filter reads its index on PostgreSQL.

On PostgreSQL the counts of every status are kept by triggers as rows
change (``durable_jobs_counts``) and folded by the sweep; these tests compare
them with a plain ``GROUP BY`` of the job table after every kind of write.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
import typing as t

import pytest
import sqlalchemy as sa
from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from flask_durable_jobs import DurableJobs, sql
from flask_durable_jobs.models import SQL_NAMES, STATUSES, TABLE_NAME
from tests.helpers import on_postgresql

UTC = dt.timezone.utc


def table_counts(db: SQLAlchemy) -> dict[tuple[str, str, str], int]:
    """(queue, type, status) -> jobs, counted from the table itself."""
    with db.engine.connect() as conn:
        rows = conn.exec_driver_sql(
            f"SELECT queue, job_type, status, count(*) FROM {TABLE_NAME} GROUP BY 1, 2, 3"
        ).all()
    return {(q, jt, s): int(n) for q, jt, s, n in rows}


def assert_counts_match(jobs: DurableJobs, db: SQLAlchemy) -> None:
    truth = table_counts(db)
    stats = jobs.stats()
    by_type: dict[str, dict[str, int]] = {}
    by_queue: dict[str, dict[str, int]] = {}
    for (queue, job_type, status), n in truth.items():
        for key, into in ((job_type, by_type), (queue, by_queue)):
            into.setdefault(key, dict.fromkeys(STATUSES, 0))[status] += n
    assert stats["by_type"] == by_type
    assert stats["total"] == sum(truth.values())
    assert stats["by_status"] == {
        status: sum(n for (_q, _t, s), n in truth.items() if s == status) for status in STATUSES
    }
    listed = {queue["name"]: queue["counts"] for queue in jobs.queues()}
    assert listed == by_queue


def test_counts_stay_exact_through_every_kind_of_write(
    app: Flask, jobs: DurableJobs, db: SQLAlchemy, backend: str
) -> None:
    jobs.handler("ok")(lambda p: None)
    jobs.handler("bad", max_attempts=1)(lambda p: 1 / 0)
    jobs.handler("flaky", queue="mail", max_attempts=3)(lambda p: 1 / 0)
    jobs.enqueue_many("ok", [{"n": i} for i in range(30)])
    jobs.enqueue_many("bad", [{}] * 5)
    jobs.enqueue("flaky", {})
    later = jobs.enqueue("ok", {}, delay=3600)
    assert_counts_match(jobs, db)

    jobs.drain()  # succeeded, dead, one retrying
    assert_counts_match(jobs, db)

    assert jobs.retry_many(status="dead") == 5  # dead -> pending
    assert_counts_match(jobs, db)
    jobs.drain()
    jobs.cancel(later.id)  # pending -> cancelled
    assert_counts_match(jobs, db)
    assert jobs.delete_many(job_type="bad") == 5
    assert_counts_match(jobs, db)

    table = db.metadata.tables[TABLE_NAME]
    now = dt.datetime.now(UTC)
    with db.engine.begin() as conn:  # the app's own SQL, beside the library
        conn.execute(sa.insert(table), [
            {"job_type": "imported", "queue": "old", "status": status, "payload": {},
             "attempts": 1, "max_attempts": 1, "priority": 0, "run_at": now,
             "created_at": now, "updated_at": now, "finished_at": now,
             "orphan_policy": "retry", "callback_attempts": 0}
            for status in ("succeeded", "succeeded", "dead", "cancelled", "pending", "running")
        ])
        conn.execute(sa.update(table).where(table.c.job_type == "imported",
                                            table.c.status == "pending").values(queue="older"))
        conn.execute(sa.update(table).where(table.c.job_type == "imported",
                                            table.c.status == "running")
                     .values(status="retrying"))
        conn.execute(sa.update(table).where(table.c.job_type == "imported",
                                            table.c.status == "dead").values(queue="older"))
        conn.execute(sa.update(table).where(table.c.job_type == "imported",
                                            table.c.status == "cancelled")
                     .values(status="succeeded"))
        conn.execute(sa.delete(table).where(table.c.job_type == "ok", table.c.id % 2 == 0,
                                            table.c.status == "succeeded"))
    assert_counts_match(jobs, db)

    jobs.sweep_orphans()  # folds the kept changes
    assert_counts_match(jobs, db)
    assert jobs.prune(older_than=dt.timedelta(0)) > 0
    assert_counts_match(jobs, db)

    if backend == "postgresql":
        with db.engine.begin() as conn:
            conn.exec_driver_sql(f"TRUNCATE {TABLE_NAME}")
        assert jobs.stats()["total"] == 0
        assert_counts_match(jobs, db)


@on_postgresql  # SQLite counts its table directly: nothing is kept
def test_the_sweep_folds_the_kept_changes_to_one_row_per_group(
    app: Flask, jobs: DurableJobs, db: SQLAlchemy
) -> None:
    jobs.handler("ok")(lambda p: None)
    for _ in range(20):
        jobs.enqueue_many("ok", [{}] * 5)
        jobs.process_due(limit=5)  # one finish statement each: one kept row each

    def kept_rows() -> int:
        with db.engine.connect() as conn:
            return int(conn.exec_driver_sql("SELECT count(*) FROM durable_jobs_counts")
                       .scalar_one())

    assert kept_rows() >= 20
    before = jobs.stats()
    jobs.sweep_orphans()
    assert kept_rows() == 1  # one queue, one type, one ended status
    assert jobs.stats() == before
    assert before["by_status"]["succeeded"] == 100


@on_postgresql  # SQLite counts its partial indexes
def test_queue_counts_read_no_job_row_on_postgresql(
    app: Flask, jobs: DurableJobs, db: SQLAlchemy
) -> None:
    """The queues page's counts come from the kept rows alone, however many
    jobs wait; only stats' due backlog reads the waiting jobs."""
    jobs.handler("ok")(lambda p: None)
    jobs.enqueue_many("ok", [{}] * 300)
    jobs.process_due(limit=100)

    def job_rows_read(due: bool) -> int:
        statement = sql.load("postgresql")["counts"].format_map(SQL_NAMES)
        with db.engine.connect() as conn:
            plan = conn.execute(
                sa.text(f"EXPLAIN (ANALYZE, FORMAT JSON) {statement}"),
                {"now": dt.datetime.now(UTC), "due": due},
            ).scalar_one()
        nodes = [plan[0]["Plan"]]
        read = 0
        while nodes:
            node = nodes.pop()
            nodes.extend(node.get("Plans", []))
            if node.get("Relation Name") == TABLE_NAME or TABLE_NAME in node.get("Index Name", "x"):
                read += int(node["Actual Rows"]) * int(node["Actual Loops"])
        return read

    assert job_rows_read(due=False) == 0
    assert job_rows_read(due=True) == 200
    assert {q["name"]: q["counts"]["pending"] for q in jobs.queues()} == {"default": 200}
    assert jobs.stats()["by_status"]["succeeded"] == 100


@pytest.mark.config(DURABLE_JOBS_POLL_INTERVAL=0.05, DURABLE_JOBS_CONCURRENCY=4)
def test_counts_hold_while_jobs_finish_and_the_sweep_folds(
    app: Flask, jobs: DurableJobs, db: SQLAlchemy
) -> None:
    """The scheduler finishes jobs on its threads while another thread folds
    the kept counts again and again: every read counts each job once, and
    the end equals the table."""
    jobs.handler("t")(lambda p: time.sleep(0.001))
    jobs.handler("u", max_attempts=1)(lambda p: 1 / 0)
    jobs.enqueue_many("t", [{}] * 600)
    jobs.enqueue_many("u", [{}] * 200)
    stop = threading.Event()
    errors: list[BaseException] = []

    def fold() -> None:
        with app.app_context():
            while not stop.is_set():
                try:
                    jobs.sweep_orphans()
                except BaseException as exc:  # reported below
                    errors.append(exc)
                    return

    folder = threading.Thread(target=fold)
    folder.start()
    jobs.start()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            stats = jobs.stats()
            assert stats["total"] == 800, stats["by_status"]
            if stats["by_status"]["succeeded"] + stats["by_status"]["dead"] == 800:
                break
    finally:
        stop.set()
        folder.join()
        jobs.stop()
    assert not errors, errors
    stats = jobs.stats()
    assert stats["by_status"]["succeeded"] == 600 and stats["by_status"]["dead"] == 200
    assert_counts_match(jobs, db)


@on_postgresql  # SQLite has no index on payload fields: its filter reads the rows
def test_the_payload_filter_reads_the_payload_indexes_on_postgresql(
    app: Flask, jobs: DurableJobs, db: SQLAlchemy
) -> None:
    jobs.handler("t")(lambda p: None)
    jobs.enqueue_many("t", [{"user_id": i % 500, "n": i} for i in range(2500)])
    jobs.drain()  # ended jobs, in one index
    jobs.enqueue_many("t", [{"user_id": i % 500, "n": i} for i in range(2500, 5000)])
    with db.engine.begin() as conn:
        conn.exec_driver_sql(f"ANALYZE {TABLE_NAME}")
    statements: list[tuple[str, t.Any]] = []
    store_engine = app.extensions["durable_jobs"].store.engine

    def record(_conn: t.Any, _cursor: t.Any, statement: str, params: t.Any, *_: t.Any) -> None:
        statements.append((statement, params))

    sa.event.listen(store_engine, "before_cursor_execute", record)
    try:
        page = jobs.list_page(payload={"user_id": 42})
    finally:
        sa.event.remove(store_engine, "before_cursor_execute", record)
    assert sorted(job.payload["n"] for job in page.items) == list(range(42, 5000, 500))
    assert page.total == 10
    assert statements
    with store_engine.connect() as conn:
        for statement, params in statements:
            plan = "\n".join(row[0] for row in conn.exec_driver_sql(
                f"EXPLAIN {statement}", params))
            assert "ix_durable_jobs_payload_waiting" in plan, plan
            assert "ix_durable_jobs_payload_ended" in plan, plan
