"""Kept counts of every status (PostgreSQL).

Revision 0006 kept the counts of ended jobs only and counted the waiting
and running ones from the table at each call, which at a large backlog
reads every waiting job. This revision keeps all of them: the count
function counts every status, and the insert trigger becomes a statement
trigger that counts what each insert adds (one row per enqueue statement).
It fills in the counts of the jobs not ended, under the lock it takes
first (writers of the job table wait; readers don't), so no change is
missed or counted twice.

``db.create_all()`` makes the same (the ``after_create`` statements of
``sql/postgresql.sql``). SQLite counts its table directly: nothing changes
there.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

# copied, not imported: a revision never changes with later code
ENDED = "(status = 'succeeded' OR status = 'dead' OR status = 'cancelled')"

UPGRADE = [
    # what an insert, update or delete of the job table would count waits
    "LOCK TABLE durable_jobs IN SHARE ROW EXCLUSIVE MODE",
    """CREATE OR REPLACE FUNCTION durable_jobs_count() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'INSERT' THEN
            INSERT INTO durable_jobs_counts (queue, job_type, status, n)
            SELECT queue, job_type, status, count(*) FROM new_rows GROUP BY 1, 2, 3;
        ELSIF TG_OP = 'DELETE' THEN
            INSERT INTO durable_jobs_counts (queue, job_type, status, n)
            SELECT queue, job_type, status, -count(*) FROM old_rows GROUP BY 1, 2, 3;
        ELSE
            INSERT INTO durable_jobs_counts (queue, job_type, status, n)
            SELECT queue, job_type, status, sum(change) FROM (
                SELECT queue, job_type, status, 1 AS change FROM new_rows
                UNION ALL
                SELECT queue, job_type, status, -1 FROM old_rows
            ) AS changes
            GROUP BY 1, 2, 3 HAVING sum(change) <> 0;
        END IF;
        RETURN NULL;
    END $$""",
    "DROP TRIGGER IF EXISTS durable_jobs_count_insert ON durable_jobs",
    "DROP FUNCTION IF EXISTS durable_jobs_count_insert()",
    """CREATE TRIGGER durable_jobs_count_insert AFTER INSERT ON durable_jobs
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION durable_jobs_count()""",
    # the jobs not ended, as they stand (counted afresh: a table that
    # db.create_all() made with these models has kept them already)
    f"DELETE FROM durable_jobs_counts WHERE NOT {ENDED}",
    f"""INSERT INTO durable_jobs_counts (queue, job_type, status, n)
    SELECT queue, job_type, status, count(*) FROM durable_jobs
    WHERE NOT {ENDED} GROUP BY 1, 2, 3""",
]

#: Revision 0006's counting of ended jobs only.
DOWNGRADE = [
    "LOCK TABLE durable_jobs IN SHARE ROW EXCLUSIVE MODE",
    f"""CREATE OR REPLACE FUNCTION durable_jobs_count() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'DELETE' THEN
            INSERT INTO durable_jobs_counts (queue, job_type, status, n)
            SELECT queue, job_type, status, -count(*) FROM old_rows
            WHERE {ENDED} GROUP BY 1, 2, 3;
        ELSE
            INSERT INTO durable_jobs_counts (queue, job_type, status, n)
            SELECT queue, job_type, status, sum(change) FROM (
                SELECT queue, job_type, status, 1 AS change FROM new_rows WHERE {ENDED}
                UNION ALL
                SELECT queue, job_type, status, -1 FROM old_rows WHERE {ENDED}
            ) AS changes
            GROUP BY 1, 2, 3 HAVING sum(change) <> 0;
        END IF;
        RETURN NULL;
    END $$""",
    """CREATE OR REPLACE FUNCTION durable_jobs_count_insert() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO durable_jobs_counts (queue, job_type, status, n)
        VALUES (NEW.queue, NEW.job_type, NEW.status, 1);
        RETURN NULL;
    END $$""",
    "DROP TRIGGER IF EXISTS durable_jobs_count_insert ON durable_jobs",
    """CREATE TRIGGER durable_jobs_count_insert AFTER INSERT ON durable_jobs
    FOR EACH ROW WHEN (NEW.status IN ('succeeded', 'dead', 'cancelled'))
    EXECUTE FUNCTION durable_jobs_count_insert()""",
    "DELETE FROM durable_jobs_counts",
    f"""INSERT INTO durable_jobs_counts (queue, job_type, status, n)
    SELECT queue, job_type, status, count(*) FROM durable_jobs
    WHERE {ENDED} GROUP BY 1, 2, 3""",
]


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for statement in UPGRADE:
            op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for statement in DOWNGRADE:
            op.execute(statement)
