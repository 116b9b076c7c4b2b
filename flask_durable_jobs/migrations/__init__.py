"""The shipped Alembic revisions for the job tables.

They run in their own Alembic environment with their own version table
(:data:`VERSION_TABLE`), independent of the app's own migration history:
``flask jobs upgrade`` applies them, and a Flask-Migrate project calls
:func:`upgrade` from its ``env.py`` (see the deployment docs).
"""

from __future__ import annotations

import pathlib

import sqlalchemy as sa

VERSION_TABLE = "durable_jobs_alembic_version"
SCRIPT_LOCATION = str(pathlib.Path(__file__).resolve().parent)


def define_version_table(metadata: sa.MetaData) -> sa.Table:
    """The version table, on the app's metadata so autogenerate leaves it alone."""
    existing = metadata.tables.get(VERSION_TABLE)
    if existing is not None:
        return existing
    return sa.Table(
        VERSION_TABLE,
        metadata,
        sa.Column("version_num", sa.String(32), nullable=False),
        sa.PrimaryKeyConstraint("version_num", name=f"{VERSION_TABLE}_pkc"),
    )


def _config(connection: sa.Connection) -> object:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", SCRIPT_LOCATION)
    cfg.attributes["connection"] = connection
    return cfg


def upgrade(bind: sa.Engine | sa.Connection, revision: str = "head") -> None:
    """Apply the shipped revisions up to ``revision`` on an engine or connection."""
    from alembic import command

    if isinstance(bind, sa.Engine):
        with bind.begin() as connection:
            command.upgrade(_config(connection), revision)  # type: ignore[arg-type]
        return
    command.upgrade(_config(bind), revision)  # type: ignore[arg-type]
    if bind.in_transaction():
        bind.commit()


def current(bind: sa.Engine) -> str | None:
    """The revision the database is at, or ``None`` before the first upgrade."""
    from alembic.runtime.migration import MigrationContext

    with bind.connect() as connection:
        context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
        heads = context.get_current_heads()
    return heads[0] if heads else None
