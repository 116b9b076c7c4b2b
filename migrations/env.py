"""Alembic environment for maintainers: autogenerate the next revision.

    DURABLE_JOBS_DEV_DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1/dev \
        alembic -c migrations/alembic.ini upgrade head
    # change the models, then:
    alembic -c migrations/alembic.ini revision --autogenerate --rev-id 0002 -m "what changed"
    alembic -c migrations/alembic.ini check      # models == revisions

The target schema is the package's own table definitions; the revisions are
the ones shipped in flask_durable_jobs/migrations/versions, with the same
version table `flask jobs upgrade` uses. Review every generated revision:
copy values into it rather than importing them, so it never changes later.
"""

from __future__ import annotations

import os

import sqlalchemy as sa
from alembic import context

from flask_durable_jobs import periodic
from flask_durable_jobs.migrations import VERSION_TABLE, define_version_table
from flask_durable_jobs.models import (
    MADE_BY_SQL_FILE,
    define_batch_table,
    define_control_tables,
    define_table,
)

metadata = sa.MetaData()
define_table(metadata)
define_batch_table(metadata)
periodic.define_table(metadata)
define_version_table(metadata)
define_control_tables(metadata)

url = os.environ.get("DURABLE_JOBS_DEV_DATABASE_URL")
if not url:
    raise SystemExit("set DURABLE_JOBS_DEV_DATABASE_URL to a development database")

engine = sa.create_engine(url)
with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        compare_type=True,
        # made by the SQL file's after_create statements, not by the models
        include_name=lambda name, _type, _parents: name not in MADE_BY_SQL_FILE,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()
engine.dispose()
