"""The Alembic environment of the shipped revisions (run by :func:`upgrade`).

``flask jobs upgrade`` and the Flask-Migrate hook call
``alembic.command.upgrade`` with a config whose ``attributes["connection"]``
is the connection to migrate on; the revisions keep their own version table.
Logging is left as the app configured it.
"""

from __future__ import annotations

from alembic import context

from flask_durable_jobs.migrations import VERSION_TABLE

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError(
        "the job tables' revisions run on a connection: use flask_durable_jobs.migrations"
        ".upgrade(engine) or `flask jobs upgrade`"
    )
context.configure(connection=connection, version_table=VERSION_TABLE)
with context.begin_transaction():
    context.run_migrations()
