"""Create the durable_jobs table.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from __future__ import annotations

import typing as t

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

WAITING = "status IN ('pending', 'retrying')"
RUNNING = "status = 'running'"
FINISHED = "finished_at IS NOT NULL"
ENDED = "(status = 'succeeded' OR status = 'dead' OR status = 'cancelled')"
KEYED = "idempotency_key IS NOT NULL"
IN_BATCH = "batch_id IS NOT NULL"
CALLBACK_DUE = "callback_status = 'pending'"


def _json() -> sa.types.TypeEngine[t.Any]:
    return sa.JSON(none_as_null=True).with_variant(
        postgresql.JSONB(none_as_null=True), "postgresql"
    )


def upgrade() -> None:
    _upgrade_periodic()  # first: the early return below would skip it
    # An app that ran db.create_all() first already has the table; this
    # revision then only records that the schema is current.
    if sa.inspect(op.get_bind()).has_table("durable_jobs"):
        return
    op.create_table(
        "durable_jobs",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                  primary_key=True, autoincrement=True),
        sa.Column("job_type", sa.String(200), nullable=False),
        sa.Column("queue", sa.String(100), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("payload", _json(), nullable=False),
        sa.Column("result", _json(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("run_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("idempotency_key", sa.String(255), nullable=True),
        sa.Column("lease_token", sa.String(32), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("worker_id", sa.String(200), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("orphan_policy", sa.String(8), nullable=False),
        sa.Column("owner", sa.String(200), nullable=True),
        sa.Column("batch_id", sa.String(64), nullable=True),
        sa.Column("callback_url", sa.Text(), nullable=True),
        sa.Column("callback_status", sa.String(16), nullable=True),
        sa.Column("callback_attempts", sa.Integer(), nullable=False),
        sa.Column("callback_error", sa.Text(), nullable=True),
        sa.Column("callback_next_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("secrets", sa.Text(), nullable=True),
    )
    op.create_index(
        "uq_durable_jobs_idempotency_key", "durable_jobs", ["idempotency_key"], unique=True,
        postgresql_where=sa.text(KEYED), sqlite_where=sa.text(KEYED),
    )
    op.create_index(
        "ix_durable_jobs_due", "durable_jobs", ["priority", "run_at", "id"],
        postgresql_where=sa.text(WAITING), sqlite_where=sa.text(WAITING),
    )
    op.create_index(
        "ix_durable_jobs_lease", "durable_jobs", ["lease_expires_at"],
        postgresql_where=sa.text(RUNNING), sqlite_where=sa.text(RUNNING),
    )
    op.create_index(
        "ix_durable_jobs_ended", "durable_jobs", ["status", "job_type"],
        postgresql_where=sa.text(ENDED), sqlite_where=sa.text(ENDED),
    )
    op.create_index(
        "ix_durable_jobs_finished", "durable_jobs", ["finished_at"],
        postgresql_where=sa.text(FINISHED), sqlite_where=sa.text(FINISHED),
    )
    op.create_index(
        "ix_durable_jobs_batch", "durable_jobs", ["batch_id", "status"],
        postgresql_where=sa.text(IN_BATCH), sqlite_where=sa.text(IN_BATCH),
    )
    op.create_index(
        "ix_durable_jobs_callback", "durable_jobs", ["callback_next_at"],
        postgresql_where=sa.text(CALLBACK_DUE), sqlite_where=sa.text(CALLBACK_DUE),
    )


    op.create_table(
        "durable_jobs_batches",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("on_complete", sa.String(200), nullable=True),
        sa.Column("on_complete_payload", _json(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
    )
    if op.get_bind().dialect.name == "postgresql":
        # copied, not imported: a revision never changes with later code
        op.execute(
            "CREATE OR REPLACE FUNCTION durable_jobs_notify() RETURNS trigger"
            " LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_notify('durable_jobs', '');"
            " RETURN NULL; END $$"
        )
        op.execute(
            "CREATE TRIGGER durable_jobs_notify AFTER INSERT ON durable_jobs"
            " FOR EACH STATEMENT EXECUTE FUNCTION durable_jobs_notify()"
        )


def downgrade() -> None:
    op.drop_table("durable_jobs_periodic")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS durable_jobs_notify() CASCADE")
    op.drop_table("durable_jobs_batches")
    op.drop_table("durable_jobs")


# -- recurring schedules (flask_durable_jobs.periodic) ------------------------


def _upgrade_periodic() -> None:
    # An app that ran db.create_all() first already has this table too.
    if sa.inspect(op.get_bind()).has_table("durable_jobs_periodic"):
        return
    op.create_table(
        "durable_jobs_periodic",
        sa.Column("key", sa.String(200), primary_key=True),
        sa.Column("cron", sa.String(200), nullable=False),
        sa.Column("timezone", sa.String(64), nullable=False),
        sa.Column("last_fire_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
