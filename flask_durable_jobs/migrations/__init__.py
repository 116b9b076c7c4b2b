"""The shipped Alembic revisions for the job tables.

They run in their own Alembic environment with their own version table
(:data:`VERSION_TABLE`), independent of the app's own migration history:
``flask jobs upgrade`` applies them, and a Flask-Migrate project calls
:func:`upgrade` from its ``env.py`` (see the deployment docs).
"""

from __future__ import annotations

import importlib
import logging
import pathlib
import sys
import typing as t

import sqlalchemy as sa

VERSION_TABLE = "durable_jobs_alembic_version"
SCRIPT_LOCATION = str(pathlib.Path(__file__).resolve().parent)
#: The newest shipped revision: what ``flask jobs upgrade`` brings a database to.
HEAD = "0007"


def define_version_table(metadata: sa.MetaData) -> sa.Table:
    """The version table, on the app's metadata so autogenerate leaves it alone."""
    return sa.Table(
        VERSION_TABLE,
        metadata,
        sa.Column("version_num", sa.String(32), nullable=False),
        sa.PrimaryKeyConstraint("version_num", name=f"{VERSION_TABLE}_pkc"),
        keep_existing=True,  # defined once per metadata; later calls get it
    )


JOB_TABLES = frozenset(
    {"durable_jobs", "durable_jobs_batches", "durable_jobs_periodic", VERSION_TABLE,
     "durable_jobs_queues", "durable_jobs_limits", "durable_jobs_processes",
     "durable_jobs_counts"}
)


def _alembic() -> t.Any:
    """``alembic.command``, imported without the INFO lines Alembic logs about
    its plugins as it loads: the library's use of Alembic must not add to the
    app's log."""
    if "alembic.command" in sys.modules:
        return sys.modules["alembic.command"]
    plugins = logging.getLogger("alembic.runtime.plugins")

    def drop(record: logging.LogRecord) -> bool:
        return record.levelno > logging.INFO

    plugins.addFilter(drop)
    try:
        return importlib.import_module("alembic.command")
    finally:
        plugins.removeFilter(drop)


def config(connection: sa.Connection | None = None) -> t.Any:
    """An Alembic ``Config`` for the shipped revisions (and their version
    table), migrating on ``connection``."""
    from alembic.config import Config

    _alembic()
    alembic_config = Config()
    alembic_config.set_main_option("script_location", SCRIPT_LOCATION)
    alembic_config.attributes["connection"] = connection
    return alembic_config


def upgrade(bind: sa.Engine | sa.Connection, revision: str = "head") -> None:
    """Apply the shipped revisions up to ``revision`` on an engine or connection."""
    if isinstance(bind, sa.Engine):
        with bind.begin() as connection:
            _alembic().upgrade(config(connection), revision)
        return
    _alembic().upgrade(config(bind), revision)
    if bind.in_transaction():
        bind.commit()


def current(bind: sa.Engine) -> str | None:
    """The revision the database is at, or ``None`` before the first upgrade."""
    from alembic.runtime.migration import MigrationContext

    with bind.connect() as connection:
        context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
        heads = context.get_current_heads()
    return heads[0] if heads else None


def flask_migrate_hook(context: t.Any, connection: sa.Connection) -> None:
    """Let a Flask-Migrate project manage the job tables with ``flask db``.

    Call it in ``migrations/env.py``, in ``run_migrations_online()``, right
    after ``context.configure(...)``. Then:

    * ``flask db migrate`` (autogenerate) leaves the job tables out of the
      app's revisions;
    * ``flask db upgrade`` first applies the package's own revisions, kept in
      their own version table, then the app's (``flask db downgrade`` and
      ``flask db stamp`` bring the job tables up to date too: they belong to
      the installed package, not to the app's history).

    Later package versions ship new revisions; ``flask db upgrade`` applies
    them with nothing to copy or generate.
    """
    migration_context = context.get_context()
    opts = migration_context.opts
    previous = opts.get("include_name")

    def include_name(name: str | None, type_: str, parent_names: t.Any) -> bool:
        if type_ == "table" and name in JOB_TABLES:
            return False
        return bool(previous(name, type_, parent_names)) if previous is not None else True

    previous_object = opts.get("include_object")

    def include_object(
        obj: t.Any, name: str | None, type_: str, reflected: bool, compare_to: t.Any
    ) -> bool:
        table = obj if type_ == "table" else getattr(obj, "table", None)
        if getattr(table, "name", None) in JOB_TABLES:
            return False
        if previous_object is not None:
            return bool(previous_object(obj, name, type_, reflected, compare_to))
        return True

    opts["include_name"] = include_name
    opts["include_object"] = include_object
    # Commands that move the app's schema (upgrade, and also downgrade and
    # stamp) name a destination revision; revision, check and current don't.
    if context.is_offline_mode() or opts.get("destination_rev") is None:
        return
    host = migration_context.environment_context
    upgrade(connection)
    # Leaving its own environment, Alembic took the app's out of
    # ``alembic.context``; the app's env.py goes on with it, so put it back.
    host.__enter__()
