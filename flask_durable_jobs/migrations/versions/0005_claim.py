"""The claim under bursts and old snapshots; per-table autovacuum settings.

The claim itself needs no schema change. On PostgreSQL the job table is
vacuumed and analysed after 1 % of its rows changed (PostgreSQL's defaults
are 20 % and 10 %), as ``db.create_all()`` sets it (the ``after_create``
statements of ``sql/postgresql.sql``).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# copied, not imported: a revision never changes with later code
SETTINGS = ("autovacuum_vacuum_scale_factor", "autovacuum_analyze_scale_factor")


def upgrade() -> None:
    # Storage parameters: setting them again (a table db.create_all() made
    # with them) changes nothing, and no row is rewritten.
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "ALTER TABLE durable_jobs SET ("
            + ", ".join(f"{name} = 0.01" for name in SETTINGS) + ")"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"ALTER TABLE durable_jobs RESET ({', '.join(SETTINGS)})")
