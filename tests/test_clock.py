"""The database's clock (flask_durable_jobs.clock) on a real PostgreSQL server.

A process whose own clock is wrong is tested with libfaketime in
``tests/test_multihost.py``; here the server runs on this machine, so the
two clocks are one.
"""

from __future__ import annotations

import logging
import socket
import typing as t

import pytest
import sqlalchemy as sa

from flask_durable_jobs.clock import ZERO, DatabaseClock, measure_offset

pytestmark = pytest.mark.postgresql


@pytest.fixture
def engine(pg_server_url: str) -> t.Iterator[sa.Engine]:
    engine = sa.create_engine(pg_server_url, isolation_level="AUTOCOMMIT")
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture
def unreachable() -> t.Iterator[sa.Engine]:
    """An engine whose server refuses connections (a port nobody listens on)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    engine = sa.create_engine(f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres")
    try:
        yield engine
    finally:
        engine.dispose()


def test_one_machine_has_one_clock(engine: sa.Engine) -> None:
    """The server reads the same clock between two local readings: an offset
    within the round trip is no offset."""
    assert [measure_offset(engine) for _ in range(5)] == [ZERO] * 5


def test_an_unmeasured_clock_raises_the_database_error(unreachable: sa.Engine) -> None:
    clock = DatabaseClock(lambda: unreachable)
    with pytest.raises(sa.exc.OperationalError):
        clock.offset()
    with pytest.raises(sa.exc.OperationalError):  # every caller, not only the first
        clock.offset()


def test_a_measured_clock_keeps_its_offset_while_the_database_is_away(
    engine: sa.Engine, unreachable: sa.Engine, caplog: pytest.LogCaptureFixture
) -> None:
    current = [engine]
    clock = DatabaseClock(lambda: current[0])
    assert clock.offset() == ZERO
    current[0] = unreachable
    with caplog.at_level(logging.WARNING, logger="flask_durable_jobs"):
        clock.refresh()
        clock.refresh()
    assert clock.offset() == ZERO
    warnings = [r.getMessage() for r in caplog.records if "database's clock" in r.getMessage()]
    assert len(warnings) == 1, warnings  # once per outage, not per attempt
    assert "keeping the last offset (+0.000 s)" in warnings[0]
