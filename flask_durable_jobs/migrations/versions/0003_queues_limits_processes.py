"""Paused queues, concurrency and rate limits, the process registry.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# copied, not imported: a revision never changes with later code
LIMITED_WAITING = "status IN ('pending', 'retrying') AND concurrency_key IS NOT NULL"
LIMITED_RUNNING = "status = 'running' AND concurrency_key IS NOT NULL"


def upgrade() -> None:
    # Each step checks first: an app that ran db.create_all() with these
    # models already has them; a 0001 database keeps its jobs (the new
    # column is NULL for them: plain jobs).
    inspector = sa.inspect(op.get_bind())
    columns = {column["name"] for column in inspector.get_columns("durable_jobs")}
    if "concurrency_key" not in columns:
        op.add_column("durable_jobs",
                      sa.Column("concurrency_key", sa.String(200), nullable=True))
    indexes = {index["name"] for index in inspector.get_indexes("durable_jobs")}
    if "ix_durable_jobs_limited" not in indexes:
        op.create_index(
            "ix_durable_jobs_limited", "durable_jobs",
            ["job_type", "concurrency_key", "priority", "run_at", "id"],
            postgresql_where=sa.text(LIMITED_WAITING), sqlite_where=sa.text(LIMITED_WAITING),
        )
    if "ix_durable_jobs_limited_running" not in indexes:
        op.create_index(
            "ix_durable_jobs_limited_running", "durable_jobs",
            ["job_type", "concurrency_key"],
            postgresql_where=sa.text(LIMITED_RUNNING), sqlite_where=sa.text(LIMITED_RUNNING),
        )
    if not inspector.has_table("durable_jobs_queues"):
        op.create_table(
            "durable_jobs_queues",
            sa.Column("name", sa.String(100), primary_key=True),
            sa.Column("paused", sa.Boolean(), nullable=False),
            sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        )
    if not inspector.has_table("durable_jobs_limits"):
        op.create_table(
            "durable_jobs_limits",
            sa.Column("job_type", sa.String(200), primary_key=True),
            sa.Column("starts", sa.Text(), nullable=True),
            sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        )
    if not inspector.has_table("durable_jobs_processes"):
        op.create_table(
            "durable_jobs_processes",
            sa.Column("id", sa.String(200), primary_key=True),
            sa.Column("host", sa.String(255), nullable=False),
            sa.Column("pid", sa.Integer(), nullable=False),
            sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
            sa.Column("queues", sa.Text(), nullable=True),
            sa.Column("concurrency", sa.Integer(), nullable=False),
            sa.Column("version", sa.String(50), nullable=False),
            sa.Column("inflight", sa.Integer(), nullable=False),
        )


def downgrade() -> None:
    op.drop_table("durable_jobs_processes")
    op.drop_table("durable_jobs_limits")
    op.drop_table("durable_jobs_queues")
    op.drop_index("ix_durable_jobs_limited_running", table_name="durable_jobs")
    op.drop_index("ix_durable_jobs_limited", table_name="durable_jobs")
    with op.batch_alter_table("durable_jobs") as batch:
        batch.drop_column("concurrency_key")
