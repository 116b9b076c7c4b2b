"""Alembic environment for the job tables (run by flask_durable_jobs.migrations)."""

from __future__ import annotations

from alembic import context

from flask_durable_jobs.migrations import VERSION_TABLE

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError(
        "run these migrations with `flask jobs upgrade` or"
        " flask_durable_jobs.migrations.upgrade(engine)"
    )
context.configure(connection=connection, version_table=VERSION_TABLE, target_metadata=None)
with context.begin_transaction():
    context.run_migrations()
