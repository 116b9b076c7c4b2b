"""Physical references measured with ``pgbench`` on the same server.

* ``single``: ``pgbench -N -c 1`` TPS (one client, one commit per transaction),
  the ceiling for "one commit per job" enqueueing.
* ``drain``: the bare SQL of the engine's claim-100-then-finish cycle (taken
  from ``flask_durable_jobs/store.py``, ``PostgresStore.claim`` and
  ``PostgresStore.finish``), run by one pgbench client on the real job table
  holding a backlog; jobs/s = TPS x 100.

    bench/.venv/bin/python bench/pgbench_ref.py drain --n 20000
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile

from common import (
    PG_HOST,
    PG_PORT,
    PG_USER,
    REPO_DIR,
    emit,
    pg_exec,
    pg_url,
    pg_vacuum,
    run_cmd,
    temp_db,
)

#: Jobs per claim in the reference cycle; ``drain(batch=)`` takes another
#: (cliffs.py also measures the library's default batch size).
BATCH = 100

# The claim and the finish as PostgresStore issues them, two transactions per
# cycle. pgbench cannot carry a result set from one statement to the next, so
# the claim's RETURNING rows are folded into one row whose id array feeds the
# finish (\gset); the server still builds every returned column.
CLAIM_SQL = """
WITH claimed AS (
    UPDATE durable_jobs AS j
    SET status = 'running', attempts = j.attempts + 1, lease_token = 'pgbenchtoken',
        lease_expires_at = now() + interval '60 seconds', worker_id = 'pgbench',
        started_at = now(), updated_at = now()
    WHERE j.id = ANY(ARRAY(
        SELECT id FROM durable_jobs
        WHERE status IN ('pending', 'retrying') AND run_at <= now()
          AND job_type = ANY('{noop}'::text[])
        ORDER BY priority, run_at, id
        LIMIT :batch
        FOR UPDATE SKIP LOCKED
    ))
    RETURNING j.id, j.job_type, j.payload::text, j.attempts, j.max_attempts, j.priority, j.run_at,
              j.secrets, j.batch_id
)
SELECT array_agg(id) AS ids, count(payload) AS n FROM claimed
""".strip()

# PostgresStore.finish, with the values a batch of successes sends.
FINISH_SQL = """
UPDATE durable_jobs AS j
SET status = v.status, result = v.result::jsonb, last_error = v.error,
    run_at = COALESCE(v.run_at, j.run_at),
    finished_at = CASE WHEN v.status = 'retrying' THEN NULL ELSE now() END,
    updated_at = now(), lease_token = NULL, lease_expires_at = NULL, worker_id = NULL,
    secrets = CASE WHEN v.status = 'retrying' THEN j.secrets END,
    callback_status = CASE WHEN v.status <> 'retrying' AND j.callback_url IS NOT NULL
        THEN 'pending' ELSE j.callback_status END,
    callback_next_at = CASE WHEN v.status <> 'retrying'
        AND j.callback_url IS NOT NULL THEN now() ELSE j.callback_next_at END
FROM unnest(:ids::bigint[],
            array_fill('pgbenchtoken'::text, ARRAY[:n::int]),
            array_fill('succeeded'::text, ARRAY[:n::int]),
            array_fill(NULL::text, ARRAY[:n::int]),
            array_fill(NULL::text, ARRAY[:n::int]),
            array_fill(NULL::timestamptz, ARRAY[:n::int]))
     AS v(id, token, status, result, error, run_at)
WHERE j.id = v.id AND j.lease_token = v.token
RETURNING j.id
""".strip()


def _one_line(sql: str) -> str:
    # pgbench reads one SQL command up to the terminating semicolon; keep it
    # on one line so meta-commands (\gset) attach to it.
    return " ".join(sql.split())


def create_job_table(dbname: str) -> None:
    """Create the job table exactly as the library defines it."""
    import sqlalchemy as sa

    sys.path.insert(0, str(REPO_DIR))
    from flask_durable_jobs.models import define_table

    md = sa.MetaData()
    define_table(md)
    engine = sa.create_engine(pg_url(dbname))
    md.create_all(engine)
    engine.dispose()


def preload(dbname: str, n: int, status: str = "pending") -> None:
    """Insert `n` jobs with one INSERT ... SELECT generate_series."""
    values = {
        "job_type": "'noop'", "queue": "'default'", "status": f"'{status}'",
        "payload": "'{}'::jsonb", "attempts": "0", "max_attempts": "3", "priority": "0",
        "run_at": "now()", "created_at": "now()", "updated_at": "now()",
        "finished_at": "now()" if status == "succeeded" else "NULL",
        "orphan_policy": "'retry'",
    }
    zero = {"integer": "0", "bigint": "0", "smallint": "0", "boolean": "false",
            "jsonb": "'{}'::jsonb", "json": "'{}'::json",
            "timestamp with time zone": "now()"}
    present = pg_exec(
        dbname,
        "SELECT column_name, is_nullable, column_default, data_type"
        " FROM information_schema.columns WHERE table_name = 'durable_jobs'",
    )
    for name, nullable, default, data_type in present:
        # columns added later: fill the required ones with a neutral value
        if name not in values and nullable == "NO" and default is None:
            values[name] = zero.get(data_type, "''")
    names = {row[0] for row in present}
    cols = [c for c in values if c in names]
    pg_exec(
        dbname,
        f"INSERT INTO durable_jobs ({', '.join(cols)}) "
        f"SELECT {', '.join(values[c] for c in cols)} FROM generate_series(1, {n})",
    )


def _pgbench(dbname: str, args: list[str]) -> float:
    out = run_cmd(
        ["pgbench", "-h", PG_HOST, "-p", str(PG_PORT), "-U", PG_USER, *args, dbname],
        timeout=900,
    )
    m = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", out)
    if not m:
        m = re.search(r"tps = ([0-9.]+)", out)
    if not m:
        raise RuntimeError(f"no tps in pgbench output:\n{out}")
    return float(m.group(1))


def drain(n: int, batch: int = BATCH, **_: object) -> dict:  # type: ignore[type-arg]
    cycles = n // batch
    with temp_db("pgbench_drain") as db, tempfile.NamedTemporaryFile(
        "w", suffix=".sql", delete=True
    ) as script:
        create_job_table(db)
        preload(db, n)
        pg_vacuum(db)  # analysed, as autovacuum keeps a live table (and as every drain here)
        script.write(_one_line(CLAIM_SQL) + " \\gset\n")
        script.write(_one_line(FINISH_SQL) + ";\n")
        script.flush()
        tps = _pgbench(
            db, ["-n", "-c", "1", "-M", "prepared", "-t", str(cycles), "-D", f"batch={batch}",
                 "-f", script.name]
        )
        left = pg_exec(db, "SELECT count(*) FROM durable_jobs WHERE status <> 'succeeded'")[0][0]
    assert left == 0, f"{left} jobs not finished by the pgbench cycle"
    return {"rate": tps * batch, "tps": tps, "n": n, "batch": batch}


def single(seconds: int = 10, **_: object) -> dict:  # type: ignore[type-arg]
    with temp_db("pgbench_single") as db:
        run_cmd(["pgbench", "-h", PG_HOST, "-p", str(PG_PORT), "-U", PG_USER, "-i", "-q",
                 "-s", "1", db])
        tps = _pgbench(db, ["-N", "-c", "1", "-T", str(seconds)])
    return {"rate": tps, "tps": tps}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("scenario", choices=["drain", "single"])
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--seconds", type=int, default=10)
    args = parser.parse_args()
    if args.scenario == "drain":
        emit(drain(args.n))
    else:
        emit(single(args.seconds))


if __name__ == "__main__":
    main()
