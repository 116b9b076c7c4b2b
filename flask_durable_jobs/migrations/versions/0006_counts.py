"""Kept counts of ended jobs and the payload index (PostgreSQL).

The dashboard's counts and the admin list's payload filter stay fast on a
table of millions of ended jobs:

* ``durable_jobs_counts`` and its triggers keep the counts of ended jobs
  per queue, type and status as the rows change; this revision fills it
  from the table, under the lock that ``CREATE TRIGGER`` takes (writers of
  the job table wait; readers don't), so no change is missed or counted
  twice.
* ``ix_durable_jobs_payload_waiting`` and ``ix_durable_jobs_payload_ended``,
  GIN indexes (``jsonb_path_ops``) of the payloads of waiting and of ended
  jobs. On a large table, building them holds writes back for as long as it
  takes; create them first with ``CREATE INDEX CONCURRENTLY`` (the
  statements are in the deployment docs) and this revision leaves them as
  they are.

``db.create_all()`` makes the same (the ``after_create`` statements of
``sql/postgresql.sql``). SQLite counts its table directly: nothing changes
there.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# copied, not imported: a revision never changes with later code
ENDED = "(status = 'succeeded' OR status = 'dead' OR status = 'cancelled')"
WAITING = "status IN ('pending', 'retrying')"

UPGRADE = [
    """CREATE TABLE IF NOT EXISTS durable_jobs_counts (
        queue VARCHAR(100) NOT NULL,
        job_type VARCHAR(200) NOT NULL,
        status VARCHAR(16) NOT NULL,
        n BIGINT NOT NULL
    )""",
    f"""CREATE INDEX IF NOT EXISTS ix_durable_jobs_payload_waiting ON durable_jobs
    USING gin (payload jsonb_path_ops) WITH (fastupdate = off) WHERE {WAITING}""",
    f"""CREATE INDEX IF NOT EXISTS ix_durable_jobs_payload_ended ON durable_jobs
    USING gin (payload jsonb_path_ops) WHERE {ENDED}""",
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
    """CREATE OR REPLACE FUNCTION durable_jobs_count_clear() RETURNS trigger
    LANGUAGE plpgsql AS $$ BEGIN DELETE FROM durable_jobs_counts; RETURN NULL; END $$""",
    # a table db.create_all() made with these models has the triggers already
    "DROP TRIGGER IF EXISTS durable_jobs_count_insert ON durable_jobs",
    "DROP TRIGGER IF EXISTS durable_jobs_count_update ON durable_jobs",
    "DROP TRIGGER IF EXISTS durable_jobs_count_delete ON durable_jobs",
    "DROP TRIGGER IF EXISTS durable_jobs_count_truncate ON durable_jobs",
    """CREATE TRIGGER durable_jobs_count_update AFTER UPDATE ON durable_jobs
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION durable_jobs_count()""",
    """CREATE TRIGGER durable_jobs_count_delete AFTER DELETE ON durable_jobs
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION durable_jobs_count()""",
    """CREATE TRIGGER durable_jobs_count_insert AFTER INSERT ON durable_jobs
    FOR EACH ROW WHEN (NEW.status IN ('succeeded', 'dead', 'cancelled'))
    EXECUTE FUNCTION durable_jobs_count_insert()""",
    """CREATE TRIGGER durable_jobs_count_truncate AFTER TRUNCATE ON durable_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION durable_jobs_count_clear()""",
    # the counts as they stand, the triggers' lock held until the revision commits
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
        op.execute("DROP FUNCTION IF EXISTS durable_jobs_count() CASCADE")
        op.execute("DROP FUNCTION IF EXISTS durable_jobs_count_insert() CASCADE")
        op.execute("DROP FUNCTION IF EXISTS durable_jobs_count_clear() CASCADE")
        op.execute("DROP TABLE IF EXISTS durable_jobs_counts")
        op.execute("DROP INDEX IF EXISTS ix_durable_jobs_payload_waiting")
        op.execute("DROP INDEX IF EXISTS ix_durable_jobs_payload_ended")
