"""The one package that talks to the database.

:class:`Store` (:mod:`.base`) is what the rest of the library calls; one
adapter per database subclasses it with that database's named statements
(``flask_durable_jobs/sql/<database>.sql``): :class:`PostgresStore` and
:class:`SQLiteStore`. :func:`make_store` picks the adapter; nothing above it
asks which database it runs on.
"""

from __future__ import annotations

import typing as t

import sqlalchemy as sa

from ..errors import ConfigError
from .base import Store
from .postgresql import PostgresStore
from .records import ClaimedRow, ExpiredLeases, Finish, Watcher
from .sqlite import SQLiteStore

__all__ = [
    "ClaimedRow",
    "ExpiredLeases",
    "Finish",
    "PostgresStore",
    "SQLiteStore",
    "Store",
    "Watcher",
    "build_engine",
    "make_store",
]

#: The adapter for each database, by SQLAlchemy's backend name.
ADAPTERS: dict[str, type[Store]] = {"postgresql": PostgresStore, "sqlite": SQLiteStore}


def adapter(name: str) -> type[Store]:
    """The store class for a database named as SQLAlchemy names backends."""
    try:
        return ADAPTERS[name]
    except KeyError:
        raise ConfigError(
            f"unsupported database {name!r}: flask-durable-jobs runs on PostgreSQL and SQLite"
        ) from None


def build_engine(
    app_engine: sa.Engine, pool_size: int, connect_args: dict[str, t.Any] | None = None
) -> sa.Engine:
    """The library's own engine, on the same database as the app's.

    A separate pool keeps the worker's short transactions apart from the app's
    sessions, and lets the library pick the driver (psycopg 3) and SQLite
    settings (WAL, busy timeout, explicit ``BEGIN IMMEDIATE``). An in-memory
    SQLite database exists only inside the app's own engine, so that one is
    shared.
    """
    return adapter(app_engine.url.get_backend_name()).build_engine(
        app_engine, pool_size, connect_args
    )


def make_store(engine: sa.Engine, table: sa.Table, batches: sa.Table) -> Store:
    return adapter(engine.dialect.name)(engine, table, batches)
