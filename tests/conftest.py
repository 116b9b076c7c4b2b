"""Shared fixtures: every database test runs on SQLite and on PostgreSQL.

PostgreSQL comes from ``DURABLE_JOBS_TEST_PG_URL`` (an admin connection; the
suite creates and drops its own database on it). Outside CI an unreachable
server skips the PostgreSQL half with the reason shown; in CI (``CI=true``) it
fails.
"""

from __future__ import annotations

import os
import typing as t
import uuid

import pytest
import sqlalchemy as sa
from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from flask_durable_jobs import DurableJobs
from tests.helpers import close

PG_ADMIN_URL = os.environ.get(
    "DURABLE_JOBS_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
BACKENDS = ("sqlite", "postgresql")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "config(**keys): Flask config for the app fixture")


@pytest.fixture(scope="session")
def pg_server_url() -> t.Iterator[str]:
    """A fresh PostgreSQL database for this test session; dropped at the end."""
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except Exception as exc:  # pragma: no cover - depends on the machine
        admin.dispose()
        message = f"PostgreSQL not reachable at {PG_ADMIN_URL}: {exc.__class__.__name__}: {exc}"
        if IN_CI:
            pytest.fail(message + " (CI=true: PostgreSQL tests must run)")
        pytest.skip(message)
    name = f"fdj_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = sa.make_url(PG_ADMIN_URL).set(database=name)
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def _reset_postgres(url: str) -> None:
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.exec_driver_sql("DROP SCHEMA public CASCADE")
        conn.exec_driver_sql("CREATE SCHEMA public")
    engine.dispose()


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: t.Any) -> str:
    """A URL to an empty database, once for each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'jobs.db'}"
    url: str = request.getfixturevalue("pg_server_url")
    _reset_postgres(url)
    return url


@pytest.fixture
def backend(database_url: str) -> str:
    return "postgresql" if database_url.startswith("postgresql") else "sqlite"


@pytest.fixture
def db() -> SQLAlchemy:
    return SQLAlchemy()


@pytest.fixture
def jobs() -> DurableJobs:
    return DurableJobs()


@pytest.fixture
def app(
    request: pytest.FixtureRequest, database_url: str, db: SQLAlchemy, jobs: DurableJobs
) -> t.Iterator[Flask]:
    """An app on the backend under test, tables created, scheduler off.

    ``@pytest.mark.config(KEY=value)`` adds Flask config. The app context is
    pushed for the test's duration.
    """
    app = Flask("test_app")
    app.config["SQLALCHEMY_DATABASE_URI"] = database_url
    app.config["DURABLE_JOBS_SCHEDULER"] = False
    app.config["TESTING"] = True
    for marker in request.node.iter_markers("config"):
        app.config.update(marker.kwargs)
    db.init_app(app)
    jobs.init_app(app, db=db)
    with app.app_context():
        db.create_all()
        try:
            yield app
        finally:
            close(jobs, db)


@pytest.fixture
def client(app: Flask) -> t.Any:
    return app.test_client()
