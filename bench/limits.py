"""Concurrency limits and the paused-queue condition, on PostgreSQL.

    python3 bench/limits.py [--jobs 10000] [--keys 100] [--rounds 3]

Measured side by side in one run, in alternating rounds on one database
(the job table truncated before each drain, never VACUUM ANALYZEd):

* ``plain``: N no-op jobs of a handler without limits, drained by one
  process (``jobs.drain()``, the default 4 threads and batch of 100);
* ``limited``: N no-op jobs over K keys of a handler with ``concurrency=2``
  per key, drained the same way; the ratio limited / plain is the price of
  the limited claim (the target: at least 0.5);
* ``plain, no pause condition``: the plain drain with the claim statement
  as it was before paused queues (the ``queue <> ALL(...)`` line removed
  from the store's ``claim``), so ``plain`` / this is the pause
  condition's cost (the target: not slower, within the noise);
* ``plain, one queue paused``: the plain drain while another queue is
  paused (the condition then holds one name).

And the claim statement alone, with and without the pause condition, on a
backlog of N jobs: each run in a transaction rolled back, alternating, the
median of ``--statements`` runs each (far less noisy than whole drains on a
shared host).

Writes ``bench/results/limits.json`` and prints the rows for
``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import typing as t

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent.parent))

from bench.common import RESULTS_DIR, pg_exec, pg_url, temp_db

PAUSE_LINE = "AND queue <> ALL(ARRAY(SELECT name FROM durable_jobs_queues WHERE paused))"


def build(url: str) -> tuple[t.Any, t.Any, t.Any]:
    from flask import Flask
    from flask_sqlalchemy import SQLAlchemy

    from flask_durable_jobs import DurableJobs

    db = SQLAlchemy()
    jobs = DurableJobs()

    @jobs.handler("plain")
    def plain(payload: dict[str, t.Any]) -> None:
        return None

    @jobs.handler("limited", concurrency=2, concurrency_key=lambda p: p["k"])
    def limited(payload: dict[str, t.Any]) -> None:
        return None

    app = Flask("bench_limits")
    app.config.update(SQLALCHEMY_DATABASE_URI=url, DURABLE_JOBS_SCHEDULER=False)
    db.init_app(app)
    jobs.init_app(app, db=db)
    return app, db, jobs


def drain(dbname: str, app: t.Any, jobs: t.Any, job_type: str, count: int,
          keys: int) -> float:
    """Jobs per second of one drain of ``count`` fresh jobs."""
    pg_exec(dbname, "TRUNCATE durable_jobs")
    with app.app_context():
        payloads = [{"k": f"customer-{i % keys}"} for i in range(count)]
        jobs.enqueue_many(job_type, payloads)
        started = time.perf_counter()
        counts = jobs.drain()
        elapsed = time.perf_counter() - started
    assert counts["succeeded"] == count, counts
    return count / elapsed


def claim_statement_ms(dbname: str, statements: dict[str, str], params: dict[str, t.Any],
                       runs: int) -> dict[str, float]:
    """Median milliseconds of each claim statement, alternating, rolled back."""
    import psycopg

    from bench.common import pg_conninfo

    times: dict[str, list[float]] = {name: [] for name in statements}
    with psycopg.connect(pg_conninfo(dbname)) as conn:
        for run in range(runs):
            order = list(statements.items())
            for name, sql in order if run % 2 else order[::-1]:  # each goes first in turn
                started = time.perf_counter()
                conn.execute(sql, params).fetchall()
                times[name].append((time.perf_counter() - started) * 1000)
                conn.rollback()
    return {name: round(statistics.median(values), 3) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--keys", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--statements", type=int, default=300)
    args = parser.parse_args()
    from flask_durable_jobs.extension import get_state

    rates: dict[str, list[float]] = {
        "plain": [], "limited": [], "plain_no_pause_condition": [], "plain_one_paused": [],
    }
    with temp_db("limits") as dbname:
        app, db, jobs = build(pg_url(dbname))
        # the same, its claim statement as it was before paused queues (set
        # before the store compiles it)
        old_app, old_db, old_jobs = build(pg_url(dbname))
        with app.app_context():
            db.create_all()
        with old_app.app_context():
            queries = get_state().store.queries
            assert PAUSE_LINE in queries["claim"]
            queries["claim"] = queries["claim"].replace(PAUSE_LINE, "")
        for _round in range(args.rounds):
            for name in rates:
                with app.app_context():
                    jobs.resume_queue("elsewhere")
                    if name == "plain_one_paused":
                        jobs.pause_queue("elsewhere")
                if name == "plain_no_pause_condition":
                    rate = drain(dbname, old_app, old_jobs, "plain", args.jobs, args.keys)
                else:
                    rate = drain(dbname, app, jobs, "limited" if name == "limited" else "plain",
                                 args.jobs, args.keys)
                rates[name].append(rate)
                print(f"{name}: {rate:.0f} jobs/s", flush=True)
        # the claim statement alone, on a backlog of plain jobs
        pg_exec(dbname, "TRUNCATE durable_jobs")
        with app.app_context():
            from flask_durable_jobs.models import utcnow

            jobs.enqueue_many("plain", [{} for _ in range(args.jobs)])
            dialect = db.engine.dialect
            new = get_state().store.statement("claim", dialect).sql
        with old_app.app_context():
            old = get_state().store.statement("claim", dialect).sql
        now = utcnow()
        params = {"now": now, "types": "{plain}", "queues": None, "with_secrets": True,
                  "limit": 100, "token": "x" * 32, "lease": now, "worker": "bench"}
        statement_ms = claim_statement_ms(
            dbname, {"with_pause_condition": new, "without_pause_condition": old}, params,
            args.statements)
        print(f"claim statement: {statement_ms}", flush=True)
        for each_app, each_db, each_jobs in ((app, db, jobs), (old_app, old_db, old_jobs)):
            with each_app.app_context():
                each_jobs.stop()
                each_db.engine.dispose()
    median = {name: statistics.median(values) for name, values in rates.items()}
    result = {
        "jobs": args.jobs, "keys": args.keys, "concurrency": 2, "rounds": args.rounds,
        "jobs_per_second": {name: [round(v) for v in values] for name, values in rates.items()},
        "median_jobs_per_second": {name: round(v) for name, v in median.items()},
        "limited_over_plain": round(median["limited"] / median["plain"], 3),
        "plain_over_no_pause_condition": round(
            median["plain"] / median["plain_no_pause_condition"], 3),
        "claim_statement_median_ms": statement_ms,
        "claim_statement_with_over_without": round(
            statement_ms["with_pause_condition"] / statement_ms["without_pause_condition"], 3),
        "one_paused_over_no_pause_condition": round(
            median["plain_one_paused"] / median["plain_no_pause_condition"], 3),
    }
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / "limits.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
