"""The claim under a burst into a never-analysed table and under an old snapshot."""

from __future__ import annotations

import contextlib
import datetime as dt
import re
import time
import typing as t

import psycopg
import pytest
import sqlalchemy as sa
from flask import Flask

from flask_durable_jobs import DurableJobs
from flask_durable_jobs.store import claimscan

UTC = dt.timezone.utc


def state(app: Flask) -> t.Any:
    return app.extensions["durable_jobs"]


def pg_only(database_url: str) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("PostgreSQL planner and MVCC")


def conninfo(database_url: str) -> str:
    return sa.make_url(database_url).set(drivername="postgresql").render_as_string(
        hide_password=False)


def claim_kwargs(app: Flask, limit: int, token: str) -> dict[str, t.Any]:
    now = state(app).now()
    return {"job_types": ["t"], "queues": None, "limit": limit, "now": now,
            "lease_until": now + dt.timedelta(seconds=60), "token": token, "worker_id": "w"}


def explain(database_url: str, sql: str, params: dict[str, t.Any]) -> str:
    with psycopg.connect(conninfo(database_url), autocommit=True) as conn:
        cur = psycopg.ClientCursor(conn)
        cur.execute(sql, params)
        while cur.nextset():
            pass
        return "\n".join(row[0] for row in cur.fetchall())


def test_claim_reads_the_due_index_in_order_on_a_table_never_analysed(
    app: Flask, jobs: DurableJobs, database_url: str
) -> None:
    """A burst into a new table: the planner has no statistics and believes
    the table nearly empty. The claim must still be an ordered scan of the due
    index under the LIMIT, not a bitmap scan of every due row and a sort."""
    pg_only(database_url)
    with psycopg.connect(conninfo(database_url), autocommit=True) as conn:
        # autovacuum must not analyse the table behind the test's back
        conn.execute("ALTER TABLE durable_jobs SET (autovacuum_enabled = false)")
    jobs.handler("t")(lambda p: None)
    jobs.enqueue_many("t", [{}] * 30_000)
    with psycopg.connect(conninfo(database_url), autocommit=True) as conn:
        reltuples, analysed = conn.execute(
            "SELECT c.reltuples, s.last_analyze IS NOT NULL OR s.last_autoanalyze IS NOT NULL"
            " FROM pg_class c JOIN pg_stat_user_tables s ON s.relid = c.oid"
            " WHERE c.relname = 'durable_jobs'").fetchone()  # type: ignore[misc]
    assert reltuples < 0 and not analysed  # never analysed
    store = state(app).store
    values = {"now": state(app).now(), "types": "{t}", "queues": None, "with_secrets": True,
              "limit": 100, "token": "x" * 32, "lease": state(app).now(), "worker": "w"}

    def claim_plan(position: claimscan.Position | None, settings: bool = True) -> str:
        statement = store.statement("claim", store.engine.dialect)
        sql = statement.sql.replace("UPDATE durable_jobs AS j", "EXPLAIN UPDATE durable_jobs AS j")
        if not settings:
            sql = sql.split(";", 2)[2]
        return explain(database_url, sql, statement.params(
            store.to_driver({**values, **claimscan.params(position)})))

    plan = claim_plan(None)
    assert "Index Scan using ix_durable_jobs_due" in plan, plan
    assert "Bitmap" not in plan and "Sort" not in plan, plan
    # (the paused queues' small table may be read whole, once per statement)
    assert not re.search(r"Seq Scan on durable_jobs\b(?!_)", plan), plan
    # the same statement without its two planner settings takes the cliff on
    # this table: what the settings are there for
    plan = claim_plan(None, settings=False)
    assert "Bitmap Heap Scan" in plan and "Sort" in plan, plan
    # from a position (the keyset of a long drain), starting at it
    plan = claim_plan((0, 0, 5000))
    assert "Index Scan using ix_durable_jobs_due" in plan, plan
    assert "ROW(priority, run_at, id) >" in plan, plan
    assert "Bitmap" not in plan and "Sort" not in plan, plan

    # the finish of a batch of 1,000 reads its rows by primary key, never the table
    finish = store.statement("finish", store.engine.dialect)
    ids = list(range(1, 1001))
    plan = explain(database_url, finish.sql.replace(
        "WITH done AS (", "EXPLAIN WITH done AS ("), finish.params(
        store.to_driver({
            "now": state(app).now(), "ids": "{" + ",".join(map(str, ids)) + "}",
            "tokens": "{" + ",".join(["x" * 32] * 1000) + "}",
            "statuses": "{" + ",".join(["succeeded"] * 1000) + "}",
            "results": "{" + ",".join(["NULL"] * 1000) + "}",
            "errors": "{" + ",".join(["NULL"] * 1000) + "}",
            "run_ats": "{" + ",".join(["NULL"] * 1000) + "}",
            "progress": "{" + ",".join(["NULL"] * 1000) + "}"})))
    assert "durable_jobs_pkey" in plan, plan
    assert not re.search(r"Seq Scan on durable_jobs\b(?!_)", plan), plan


def test_sqlite_claim_reads_the_due_index_in_order_without_statistics(
    app: Flask, jobs: DurableJobs, database_url: str
) -> None:
    """SQLite has no ANALYZE statistics here either; INDEXED BY holds the plan."""
    if not database_url.startswith("sqlite"):
        pytest.skip("SQLite's planner")
    import sqlite3

    jobs.handler("t")(lambda p: None)
    jobs.enqueue_many("t", [{}] * 5000)
    store = state(app).store
    sql = store.queries["claim"]
    path = sa.make_url(database_url).database
    assert path
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'sqlite_stat1'"
                            ).fetchone() == (0,)
        plan = "\n".join(str(row[-1]) for row in conn.execute("EXPLAIN QUERY PLAN " + sql, {
            "now": "2100-01-01", "types": '["t"]', "queues": None, "with_secrets": 1,
            "limit": 100, "token": "x", "lease": "2100-01-01", "worker": "w"}))
    assert "ix_durable_jobs_due" in plan and "TEMP B-TREE" not in plan, plan


def test_a_long_drain_under_an_old_snapshot_runs_every_job_once_in_order(
    app: Flask, jobs: DurableJobs, database_url: str
) -> None:
    """Another session holds a REPEATABLE READ snapshot for the whole drain:
    the claims start past the last job taken, and still take every job once,
    by priority then due time."""
    pg_only(database_url)
    seen: list[int] = []
    jobs.handler("t")(lambda p: seen.append(p["n"]))
    now = state(app).now()
    # enqueued against the claim order: priority descending, due time descending
    expected: list[int] = []
    for k, priority in enumerate((3, 2, 1)):
        batch = [{"n": k * 900 + i} for i in range(900)]
        jobs.enqueue_many("t", batch, priority=priority,
                          run_at=now - dt.timedelta(seconds=priority))
        expected = [p["n"] for p in batch] + expected
    rank = {n: i for i, n in enumerate(expected)}
    in_order: list[int] = []
    used_keyset = False
    kind = (("t",), None, False)
    with psycopg.connect(conninfo(database_url)) as holder:
        holder.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        holder.execute("SELECT count(*) FROM durable_jobs").fetchone()
        while jobs.process_due(limit=100)["claimed"]:
            used_keyset = used_keyset or state(app).store.scans.start(kind) is not None
            # the threads run one batch in any order; batches follow each other
            in_order += sorted(seen[len(in_order):], key=rank.__getitem__)
        holder.rollback()
    assert used_keyset
    assert in_order == expected


def test_a_job_before_the_position_is_claimed_when_the_backlog_past_it_runs_out(
    app: Flask, jobs: DurableJobs, database_url: str
) -> None:
    pg_only(database_url)
    store = state(app).store
    jobs.handler("t")(lambda p: None)
    jobs.enqueue_many("t", [{}] * 1250, priority=5)
    claimed: list[int] = []
    for i in range(11):  # 1,100 in full batches: past KEYSET_AFTER
        claimed += [r.id for r in store.claim(**claim_kwargs(app, 100, f"{i:032x}"))]
    assert store.scans.start((("t",), None, True)) is not None
    high = jobs.enqueue("t", {}, priority=-1)
    # the rest past the position (150) is more than a batch: the keyset claim is full
    rows = store.claim(**claim_kwargs(app, 100, "a" * 32))
    claimed += [r.id for r in rows]
    # then 50 remain past the position: short, so the claim fills up from the start
    rows = store.claim(**claim_kwargs(app, 100, "b" * 32))
    claimed += [r.id for r in rows]
    assert rows[0].id == high.id and len(rows) == 51
    assert len(claimed) == len(set(claimed)) == 1251
    assert store.scans.start((("t",), None, True)) is None


def test_the_claim_position_policy() -> None:
    now = [100.0]
    scans = claimscan.ClaimScans(clock=lambda: now[0])
    kind: claimscan.Kind = (("t",), None, True)
    assert scans.start(kind) is None
    # short drains always read from the start
    for i in range(claimscan.KEYSET_AFTER // 100 - 1):
        scans.record(kind, None, 100, (0, 0, i), 100, 0.001)
        assert scans.start(kind) is None
    scans.record(kind, None, 100, (0, 0, 99), 100, 0.001)
    assert scans.start(kind) == (0, 0, 99)
    scans.record(kind, (0, 0, 99), 100, (0, 0, 199), 100, 0.001)
    assert scans.start(kind) == (0, 0, 199)
    # back to the start after the rescan time ...
    now[0] += claimscan.RESCAN_MIN_SECONDS
    assert scans.start(kind) is None
    # ... which grows with the time a claim from the start takes
    scans.record(kind, None, 100, (0, 0, 299), 100, 0.5)
    now[0] += claimscan.RESCAN_MIN_SECONDS
    assert scans.start(kind) == (0, 0, 299)
    now[0] += 0.5 * claimscan.RESCAN_FACTOR
    assert scans.start(kind) is None
    # a short claim forgets the position
    scans.record(kind, (0, 0, 299), 100, (0, 0, 350), 51, 0.001)
    assert scans.start(kind) is None
    # each kind of claim has its own
    assert scans.start((("u",), None, True)) is None


def test_db_create_all_sets_the_job_tables_autovacuum_settings(
    app: Flask, database_url: str
) -> None:
    pg_only(database_url)
    with psycopg.connect(conninfo(database_url), autocommit=True) as conn:
        options = conn.execute(
            "SELECT reloptions FROM pg_class WHERE relname = 'durable_jobs'").fetchone()
    assert options is not None
    assert set(options[0]) >= {"autovacuum_vacuum_scale_factor=0.01",
                               "autovacuum_analyze_scale_factor=0.01"}


@pytest.mark.config(DURABLE_JOBS_HEALTH_SNAPSHOT_WARNING=0.2, DURABLE_JOBS_ADMIN_TOKEN="tok")
def test_health_warns_of_a_snapshot_pinning_vacuum_and_stays_healthy(
    app: Flask, jobs: DurableJobs, database_url: str
) -> None:
    jobs.handler("t")(lambda p: None)
    jobs.enqueue_many("t", [{}] * 50)
    jobs.drain()
    client = app.test_client()
    auth = {"Authorization": "Bearer tok"}
    body = client.get("/admin/jobs/health", headers=auth).get_json()
    assert body["warnings"] == []
    if not database_url.startswith("postgresql"):
        assert body["vacuum"] is None  # nothing pins vacuum on SQLite
        return
    with psycopg.connect(conninfo(database_url)) as holder:
        holder.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        holder.execute("SELECT count(*) FROM durable_jobs").fetchone()
        pid = holder.info.backend_pid
        time.sleep(0.3)
        response = client.get("/admin/jobs/health", headers=auth)
        holder.rollback()
    body = response.get_json()
    assert response.status_code == 200 and body["healthy"] is True
    vacuum = body["vacuum"]
    assert vacuum["oldest_snapshot_pid"] == pid
    assert vacuum["oldest_snapshot_state"] == "idle in transaction"
    assert vacuum["oldest_snapshot_age_seconds"] >= 0.3
    assert vacuum["dead_tuples"] >= 0 and vacuum["live_tuples"] >= 0
    [warning] = body["warnings"]
    assert f"session {pid}" in warning and "DURABLE_JOBS_HEALTH_SNAPSHOT_WARNING" in warning
    body = client.get("/admin/jobs/health", headers=auth).get_json()
    assert body["warnings"] == [] and body["vacuum"]["oldest_snapshot_pid"] != pid


@pytest.fixture
def registry(request: pytest.FixtureRequest) -> t.Any:
    """A registry the app's metrics go to (before the app fixture reads the marker)."""
    prometheus_client = pytest.importorskip("prometheus_client")
    registry = prometheus_client.CollectorRegistry()
    request.node.add_marker(pytest.mark.config(DURABLE_JOBS_METRICS=registry))
    return registry


def test_metrics_report_dead_tuples_and_the_oldest_snapshot(
    registry: t.Any, app: Flask, database_url: str
) -> None:
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    def scrape() -> dict[str, float]:
        text = generate_latest(registry).decode()
        return {s.name: s.value for f in text_string_to_metric_families(text)
                for s in f.samples}

    if not database_url.startswith("postgresql"):
        assert "durable_jobs_dead_tuples" not in scrape()
        return
    with psycopg.connect(conninfo(database_url)) as holder:
        holder.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        holder.execute("SELECT 1").fetchone()
        time.sleep(0.3)
        samples = scrape()
        holder.rollback()
    assert samples["durable_jobs_dead_tuples"] >= 0
    assert samples["durable_jobs_snapshot_age_seconds"] >= 0.3
    assert scrape()["durable_jobs_snapshot_age_seconds"] < 0.3
