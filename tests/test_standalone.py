"""An enqueue that commits alone keeps its connection for the app context.

Many such enqueues in one app context take one connection out of the pool;
the connection goes back when the context ends, and is replaced when its
engine was disposed or the server closed it meanwhile.
"""

from __future__ import annotations

import time
import typing as t

import pytest
import sqlalchemy as sa
from flask import Flask

from flask_durable_jobs import DurableJobs
from flask_durable_jobs.extension import get_state
from tests.helpers import on_postgresql


@pytest.fixture(autouse=True)
def handler(jobs: DurableJobs) -> None:
    jobs.handler("t")(lambda p: None)


def standalone_engine(app: Flask) -> sa.Engine:
    state = get_state(app)
    return state.store.standalone_engine(state.app_engine)


def stored(database_url: str) -> list[int]:
    """The job ids in the table, read on a connection of another engine."""
    engine = sa.create_engine(database_url, poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            return list(conn.execute(sa.text("SELECT id FROM durable_jobs ORDER BY id")).scalars())
    finally:
        engine.dispose()


def test_enqueues_of_one_app_context_share_one_checkout(
    app: Flask, jobs: DurableJobs, database_url: str
) -> None:
    ids = [jobs.enqueue("t", {}).id]  # the clock's first reading is behind it (PostgreSQL)
    engine = standalone_engine(app)
    checkouts: list[t.Any] = []
    sa.event.listen(engine, "checkout", lambda dbapi, _rec, _proxy: checkouts.append(dbapi))
    before = engine.pool.checkedout()  # type: ignore[attr-defined]
    with app.app_context():
        for n in range(5):
            ids.append(jobs.enqueue("t", {"n": n}).id)
            assert stored(database_url) == ids  # committed when enqueue returns
        assert len(checkouts) == 1
        assert engine.pool.checkedout() == before + 1  # type: ignore[attr-defined]
    assert engine.pool.checkedout() == before  # given back with the context
    with app.app_context():
        jobs.enqueue("t", {})
    assert len(checkouts) == 2  # each app context takes its own


def test_an_engine_disposed_meanwhile_is_left_for_a_new_connection(
    app: Flask, jobs: DurableJobs, database_url: str
) -> None:
    engine = standalone_engine(app)
    get_state(app).now()  # the clock's first reading (PostgreSQL) is behind it
    checkouts: list[t.Any] = []
    sa.event.listen(engine, "checkout", lambda dbapi, _rec, _proxy: checkouts.append(dbapi))
    with app.app_context():
        first = jobs.enqueue("t", {}).id
        engine.dispose()  # as a host's test teardown does, the context still pushed
        second = jobs.enqueue("t", {}).id
        assert len(checkouts) == 2
    assert stored(database_url) == [first, second]
    old = checkouts[0]
    if hasattr(old, "closed"):  # psycopg
        assert old.closed
    else:  # sqlite3: a closed connection refuses statements
        with pytest.raises(Exception, match="closed"):
            old.execute("SELECT 1")


@pytest.mark.postgresql
@on_postgresql
def test_a_connection_the_server_closed_is_replaced(
    app: Flask, jobs: DurableJobs, database_url: str
) -> None:
    """A restart or failover closes the kept connection while it sits idle
    between two enqueues: the next enqueue takes a new one and succeeds."""
    engine = standalone_engine(app)
    with app.app_context():
        first = jobs.enqueue("t", {}).id
        with engine.connect() as conn:  # the kept connection's server process
            pids = conn.exec_driver_sql(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                " AND pid <> pg_backend_pid()"
            ).scalars().all()
            conn.exec_driver_sql(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            for _ in range(500):  # until those processes have exited
                alive = conn.exec_driver_sql(
                    "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%(pids)s)",
                    {"pids": list(pids)},
                ).scalar_one()
                if not alive:
                    break
                time.sleep(0.01)
        second = jobs.enqueue("t", {}).id
    assert stored(database_url) == [first, second]
