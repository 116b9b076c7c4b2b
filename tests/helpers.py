"""Helpers shared by the test modules (import as ``tests.helpers``)."""

from __future__ import annotations

import contextlib
import threading
import time
import typing as t

import pytest
from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from flask_durable_jobs import DurableJobs

#: Runs a test that takes ``database_url`` (or a fixture built on it) on
#: PostgreSQL only: for what only PostgreSQL has.
on_postgresql = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)


def wait_for(
    what: str,
    check: t.Callable[[], t.Any],
    timeout: float,
    *,
    interval: float = 0.1,
    details: t.Callable[[], str] | None = None,
) -> t.Any:
    """Poll ``check`` until it returns something truthy, at most ``timeout`` seconds.

    Returns that value; on timeout raises ``AssertionError`` naming ``what``
    (and ``details()``, when given, for the failure report).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            extra = f"\n{details()}" if details is not None else ""
            raise AssertionError(f"timed out after {timeout} s waiting for {what}{extra}")
        time.sleep(interval)


def close(jobs: DurableJobs, db: SQLAlchemy) -> None:
    """Stop an app's scheduler and close its connections (inside its app context)."""
    jobs.stop()
    db.session.remove()
    for engine in db.engines.values():
        engine.dispose()


@contextlib.contextmanager
def another_app(
    database_url: str, jobs: DurableJobs | None = None, *, name: str = "another_app",
    **config: t.Any,
) -> t.Iterator[DurableJobs]:
    """A second app on the same database - another process, as far as the
    database knows - with the scheduler off and its app context pushed."""
    db = SQLAlchemy()
    jobs = DurableJobs() if jobs is None else jobs
    app = Flask(name)
    app.config.update(
        SQLALCHEMY_DATABASE_URI=database_url, DURABLE_JOBS_SCHEDULER=False, TESTING=True,
        **config,
    )
    db.init_app(app)
    jobs.init_app(app, db=db)
    with app.app_context():
        try:
            yield jobs
        finally:
            close(jobs, db)


@contextlib.contextmanager
def sweeping(app: Flask, jobs: DurableJobs) -> t.Iterator[list[int]]:
    """Run the orphan sweep every 0.1 s on another thread while the block
    runs, as a second process would; yields what each sweep recovered."""
    stop = threading.Event()
    recovered: list[int] = []

    def sweeper() -> None:
        with app.app_context():
            while not stop.wait(0.1):
                recovered.append(jobs.sweep_orphans())

    thread = threading.Thread(target=sweeper)
    thread.start()
    try:
        yield recovered
    finally:
        stop.set()
        thread.join()
