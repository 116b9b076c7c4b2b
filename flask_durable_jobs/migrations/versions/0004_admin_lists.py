"""Indexes for the admin list's filters and keyset pagination.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

OWNED = "owner IS NOT NULL"


def _indexes() -> set[str]:
    return {index["name"] for index in sa.inspect(op.get_bind()).get_indexes("durable_jobs")
            if index["name"]}


def upgrade() -> None:
    # An app that ran db.create_all() with these models already has them.
    existing = _indexes()
    if "ix_durable_jobs_owner" not in existing:
        op.create_index(
            "ix_durable_jobs_owner", "durable_jobs", ["owner", "id"],
            postgresql_where=sa.text(OWNED), sqlite_where=sa.text(OWNED),
        )
    if "ix_durable_jobs_created" not in existing:
        op.create_index("ix_durable_jobs_created", "durable_jobs", ["created_at"])


def downgrade() -> None:
    existing = _indexes()
    for name in ("ix_durable_jobs_created", "ix_durable_jobs_owner"):
        if name in existing:
            op.drop_index(name, table_name="durable_jobs")
