"""Job control: progress and cancel requests on the job row.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03
"""

from __future__ import annotations

import typing as t

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def _json() -> sa.types.TypeEngine[t.Any]:
    return sa.JSON(none_as_null=True).with_variant(
        postgresql.JSONB(none_as_null=True), "postgresql"
    )


def _columns() -> set[str]:
    return {column["name"] for column in sa.inspect(op.get_bind()).get_columns("durable_jobs")}


def upgrade() -> None:
    # Both columns are nullable without a default: adding them rewrites no
    # row on either database, so a table full of jobs upgrades at once. An
    # app that ran db.create_all() with this version has them already.
    existing = _columns()
    if "progress" not in existing:
        op.add_column("durable_jobs", sa.Column("progress", _json(), nullable=True))
    if "cancel_requested_at" not in existing:
        op.add_column(
            "durable_jobs",
            sa.Column("cancel_requested_at", sa.DateTime(timezone=True), nullable=True),
        )


def downgrade() -> None:
    existing = _columns()
    with op.batch_alter_table("durable_jobs") as batch:
        for name in ("cancel_requested_at", "progress"):
            if name in existing:
                batch.drop_column(name)
