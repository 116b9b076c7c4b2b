"""Admin lists and bulk actions at 1,000,000 jobs on PostgreSQL.

    python3 bench/lists.py [--rows 1000000] [--repeat 7]

Builds a job table of ``--rows`` jobs (statuses, types, queues, owners,
batches, idempotency keys and payloads spread as in a busy app's history),
then times, in this process and side by side in one run:

* ``GET {prefix}`` through the Flask test client (the route's whole server
  time: the page query, the bounded count and the JSON), for page 1, for the
  deepest page by cursor and by ``page=`` (OFFSET), and for each filter;
* the page query alone as PostgreSQL reports it (``EXPLAIN ANALYZE``
  execution time);
* ``retry_many``, ``cancel_many`` and ``delete_many`` over 100,000 jobs, with
  the longest single batch (the longest time any row lock is held).

The table is analysed once after loading, as autovacuum does for a table of
this age; nothing is claimed or drained here. Writes
bench/results/lists.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import time
import typing as t

from common import RESULTS_DIR, pg_conninfo, pg_exec, pg_url, temp_db

TOKEN = "bench-token"
PREFIX = "/admin/jobs"
PER_PAGE = 100
BULK_ROWS = 102_000
#: Of those, retried one by one with jobs.retry(id) first: the baseline.
SINGLE_ROWS = 2_000
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
#: seconds between two jobs' created_at
STEP = 1.0

# One row in 10 has an owner (1,000 owners), one in 50 an idempotency key, one
# in 100 a batch (100 batches); statuses as in a table a week after pruning.
LOAD = """
INSERT INTO durable_jobs (
    job_type, queue, status, payload, attempts, max_attempts, priority, run_at,
    idempotency_key, created_at, updated_at, finished_at, orphan_policy, owner,
    batch_id, callback_attempts)
SELECT 'type.' || (i %% 10),
       CASE WHEN i %% 7 = 0 THEN 'mail' ELSE 'default' END,
       CASE WHEN i %% 100 < 90 THEN 'succeeded' WHEN i %% 100 < 93 THEN 'dead'
            WHEN i %% 100 < 95 THEN 'cancelled' WHEN i %% 100 < 99 THEN 'pending'
            ELSE 'retrying' END,
       jsonb_build_object('customer', i %% 5000, 'kind', 'k' || (i %% 3)),
       1, 3, 0, %(t0)s + make_interval(secs => i * %(step)s),
       CASE WHEN i %% 50 = 0 THEN 'key-' || i END,
       %(t0)s + make_interval(secs => i * %(step)s),
       %(t0)s + make_interval(secs => i * %(step)s),
       CASE WHEN i %% 100 < 95 THEN %(t0)s + make_interval(secs => i * %(step)s) END,
       'retry',
       CASE WHEN i %% 10 = 0 THEN 'user-' || (i %% 1000) END,
       CASE WHEN i %% 100 = 0 THEN 'batch-' || (i %% 100) END,
       0
FROM generate_series(1, %(rows)s) AS i
"""


def make_app(url: str) -> t.Any:
    from flask import Flask
    from flask_sqlalchemy import SQLAlchemy

    from flask_durable_jobs import DurableJobs

    app = Flask("bench_lists")
    app.config.update(
        SQLALCHEMY_DATABASE_URI=url, DURABLE_JOBS_SCHEDULER=False,
        DURABLE_JOBS_ADMIN_TOKEN=TOKEN, TESTING=True,
    )
    db = SQLAlchemy()
    jobs = DurableJobs()
    db.init_app(app)
    jobs.init_app(app, db=db)
    with app.app_context():
        db.create_all()
    return app, jobs


def median_ms(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1000, 2)


def time_route(client: t.Any, query: str, repeat: int) -> tuple[float, dict[str, t.Any]]:
    samples = []
    body: dict[str, t.Any] = {}
    for _ in range(repeat):
        start = time.perf_counter()
        response = client.get(f"{PREFIX}?{query}", headers={"Authorization": f"Bearer {TOKEN}"})
        samples.append(time.perf_counter() - start)
        assert response.status_code == 200, response.get_data(as_text=True)
        body = response.get_json()
    return median_ms(samples), body


def explain_ms(app: t.Any, query: dict[str, t.Any], repeat: int) -> tuple[float, str]:
    """The page query's execution time as PostgreSQL measures it, and its plan's first node."""
    from flask_durable_jobs import listing
    from flask_durable_jobs.extension import get_state
    from flask_durable_jobs.models import JOB_COLUMNS
    from flask_durable_jobs.store import lists

    state = get_state(app)
    store = state.store
    query = dict(query)
    cursor = query.pop("cursor", None)
    filters = listing.parse_filters(query)
    c = store.table.c
    select = __import__("sqlalchemy").select(*(c[n] for n in JOB_COLUMNS)).where(
        lists.where(store, filters))
    if cursor is not None:
        select = select.where(c.id < listing.decode_cursor(cursor))
    select = select.order_by(c.id.desc()).limit(PER_PAGE + 1)
    sql = str(select.compile(store.engine, compile_kwargs={"literal_binds": True}))
    samples, plan = [], ""
    with store.engine.connect() as conn:
        for _ in range(repeat):
            rows = conn.exec_driver_sql("EXPLAIN (ANALYZE, FORMAT JSON) " + sql).scalar_one()
            doc = rows if isinstance(rows, list) else json.loads(rows)
            samples.append(doc[0]["Execution Time"] / 1000)
            node = doc[0]["Plan"]
            while node.get("Node Type") in ("Limit",) and node.get("Plans"):
                node = node["Plans"][0]
            plan = f"{node['Node Type']}" + (f" on {node['Index Name']}" if "Index Name" in node
                                             else "")
    return median_ms(samples), plan


def bulk_row(app: t.Any, jobs: t.Any, action: str, filters: dict[str, t.Any]) -> dict[str, t.Any]:
    from flask_durable_jobs import listing

    durations: list[float] = []
    real = listing.store_lists.bulk_batch

    def timed(*args: t.Any, **kwargs: t.Any) -> t.Any:
        start = time.perf_counter()
        try:
            return real(*args, **kwargs)
        finally:
            durations.append(time.perf_counter() - start)

    listing.store_lists.bulk_batch = timed  # type: ignore[assignment]
    try:
        with app.app_context():
            start = time.perf_counter()
            changed = getattr(jobs, f"{action}_many")(**filters)
            seconds = time.perf_counter() - start
    finally:
        listing.store_lists.bulk_batch = real  # type: ignore[assignment]
    return {"action": action, "filters": filters, "changed": changed,
            "seconds": round(seconds, 2), "batches": len(durations),
            "longest_batch_ms": round(max(durations) * 1000, 1),
            "median_batch_ms": median_ms(durations)}


def index_cost(repeat: int) -> dict[str, t.Any]:
    """What the two list indexes cost an enqueue and a drain: 20,000 jobs
    (19,000 by enqueue_many, 1,000 one by one with an owner) enqueued, then
    drained, with and without them, alternating, on one database."""
    samples: dict[str, dict[str, list[float]]] = {
        "with": {"enqueue": [], "drain": []}, "without": {"enqueue": [], "drain": []}}
    with temp_db("lists_cost") as name:
        app, jobs = make_app(pg_url(name))
        jobs.handler("cost.t")(lambda payload: None)
        with app.app_context():
            from flask_durable_jobs.extension import get_state

            engine = get_state(app).store.engine
            for _ in range(repeat):
                for mode in ("with", "without"):
                    with engine.begin() as conn:
                        conn.exec_driver_sql("TRUNCATE durable_jobs")
                        conn.exec_driver_sql("DROP INDEX IF EXISTS ix_durable_jobs_owner")
                        conn.exec_driver_sql("DROP INDEX IF EXISTS ix_durable_jobs_created")
                        if mode == "with":
                            conn.exec_driver_sql(
                                "CREATE INDEX ix_durable_jobs_owner ON durable_jobs (owner, id)"
                                " WHERE owner IS NOT NULL")
                            conn.exec_driver_sql(
                                "CREATE INDEX ix_durable_jobs_created ON durable_jobs"
                                " (created_at)")
                    start = time.perf_counter()
                    for n in range(0, 20_000, 1000):
                        jobs.enqueue_many("cost.t", [{"n": i} for i in range(n, n + 950)])
                        for i in range(n + 950, n + 1000):
                            jobs.enqueue("cost.t", {"n": i}, owner=f"user-{i % 50}")
                    samples[mode]["enqueue"].append(time.perf_counter() - start)
                    start = time.perf_counter()
                    drained = jobs.drain()
                    samples[mode]["drain"].append(time.perf_counter() - start)
                    assert drained["succeeded"] == 20_000, drained
        out = {mode: {k: round(statistics.median(v), 2) for k, v in parts.items()}
               for mode, parts in samples.items()}
    out["enqueue_ratio"] = round(out["with"]["enqueue"] / out["without"]["enqueue"], 2)
    out["drain_ratio"] = round(out["with"]["drain"] / out["without"]["drain"], 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--only-index-cost", action="store_true")
    args = parser.parse_args()
    if args.only_index_cost:
        print(json.dumps(index_cost(3)))
        return
    from flask_durable_jobs import listing

    with temp_db("lists") as name:
        app, jobs = make_app(pg_url(name))
        started = time.perf_counter()
        import psycopg

        with psycopg.connect(pg_conninfo(name), autocommit=True) as conn:
            # the bulk rows first (the oldest ids): BULK_ROWS dead jobs of their own type
            conn.execute(LOAD.replace("'type.' || (i %% 10)", "'bulk.t'")
                         .replace("WHEN i %% 100 < 90 THEN 'succeeded'", "WHEN false THEN ''")
                         .replace("WHEN i %% 100 < 93 THEN 'dead'", "WHEN true THEN 'dead'")
                         .replace("'key-' || i", "NULL").replace("'batch-' ||", "'bulk-' ||"),
                         {"t0": T0 - dt.timedelta(days=30), "step": 0.001, "rows": BULK_ROWS})
            conn.execute(LOAD, {"t0": T0, "step": STEP, "rows": args.rows})
            conn.execute("VACUUM ANALYZE durable_jobs")
        load_seconds = time.perf_counter() - started
        total = pg_exec(name, "SELECT count(*), min(id), max(id) FROM durable_jobs")[0]
        client = app.test_client()
        newest = int(total[2])
        mid = T0 + dt.timedelta(seconds=STEP * args.rows / 2)
        recent = T0 + dt.timedelta(seconds=STEP * (args.rows - 3600))
        # the last page of the app's own jobs (the bulk rows lie below it)
        deep = listing.encode_cursor(newest - (args.rows // PER_PAGE - 1) * PER_PAGE)
        scenarios: list[tuple[str, dict[str, t.Any]]] = [
            ("page 1", {}),
            (f"cursor page {args.rows // PER_PAGE:,} (the last)", {"cursor": deep}),
            ("status=dead", {"status": "dead"}),
            ("status=pending", {"status": "pending"}),
            ("job_type=type.3", {"job_type": "type.3"}),
            ("queue=mail", {"queue": "mail"}),
            ("owner=user-420", {"owner": "user-420"}),
            ("idempotency_key=key-500000", {"idempotency_key": "key-500000"}),
            ("batch_id=batch-0", {"batch_id": "batch-0"}),
            ("payload.customer=42", {"payload.customer": "42"}),
            ("created_after (last hour)", {"created_after": recent.isoformat()}),
            ("created_before (middle)", {"created_before": mid.isoformat()}),
            ("created window (one hour, middle)",
             {"created_after": (mid - dt.timedelta(hours=1)).isoformat(),
              "created_before": mid.isoformat()}),
            ("status=dead&job_type=type.1", {"status": "dead", "job_type": "type.1"}),
        ]
        rows = []
        with app.app_context():
            for label, params in scenarios:
                query = "&".join(f"{k}={v}" for k, v in params.items())
                query = (query + "&" if query else "") + f"per_page={PER_PAGE}"
                route_ms, body = time_route(client, query.replace("+", "%2B"), args.repeat)
                server_ms, plan = explain_ms(app, params, args.repeat)
                rows.append({"scenario": label, "route_ms": route_ms, "query_ms": server_ms,
                             "plan": plan, "items": len(body["items"]),
                             "total": body["total"], "total_exact": body["total_exact"]})
                print(json.dumps(rows[-1]), flush=True)
            last_page = f"page={args.rows // PER_PAGE}&per_page={PER_PAGE}"
            offset_ms, _ = time_route(client, last_page, max(3, args.repeat // 2))
        rows.append({"scenario": f"page={args.rows // PER_PAGE:,} (OFFSET, for comparison)",
                     "route_ms": offset_ms})
        print(json.dumps(rows[-1]), flush=True)
        with app.app_context():
            singles = [job.id for job in jobs.list_page(
                job_type="bulk.t", per_page=200).items]
            while len(singles) < SINGLE_ROWS:
                singles += [job.id for job in jobs.list_page(
                    job_type="bulk.t", per_page=200,
                    cursor=listing.encode_cursor(singles[-1])).items]
            start = time.perf_counter()
            for job_id in singles[:SINGLE_ROWS]:
                jobs.retry(job_id)
            single_ms = (time.perf_counter() - start) * 1000 / SINGLE_ROWS
        bulk = [
            bulk_row(app, jobs, "retry", {"job_type": "bulk.t"}),
            bulk_row(app, jobs, "cancel", {"job_type": "bulk.t"}),
            bulk_row(app, jobs, "delete", {"job_type": "bulk.t"}),
        ]
        for row in bulk:
            row["ms_per_job"] = round(row["seconds"] * 1000 / row["changed"], 3)
            print(json.dumps(row), flush=True)
        bulk.append({"action": f"retry one by one (jobs.retry, {SINGLE_ROWS:,} jobs)",
                     "ms_per_job": round(single_ms, 3)})
        print(json.dumps(bulk[-1]), flush=True)
    cost = index_cost(3)
    print(json.dumps(cost), flush=True)
    result = {"rows": args.rows, "index_cost": cost, "per_page": PER_PAGE,
              "load_seconds": round(load_seconds, 1), "lists": rows, "bulk": bulk,
              "deep_over_first": round(rows[1]["route_ms"] / rows[0]["route_ms"], 2)}
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / "lists.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("lists", "bulk")}))


if __name__ == "__main__":
    main()
