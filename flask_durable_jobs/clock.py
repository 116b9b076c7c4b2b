"""The clock every timestamp is written and compared by: the database's.

Hosts that share one PostgreSQL server rarely agree on the time to the
second, and a host whose clock runs ahead would see the leases of the others
as expired and sweep live jobs, or run delayed jobs early. So every host
judges leases and due times by the database server's clock: each process
measures how far the server's clock is from its own (``SELECT
clock_timestamp()`` between two local readings) and adds that offset to its
own time. Queue statements keep taking their timestamps as parameters, so
:func:`flask_durable_jobs.testing.move_time` moves this clock as before.

The offset is measured when the process first needs the time, then again
every :data:`REFRESH_SECONDS`, and at once when the local clock is stepped
(set by hand, or by NTP after a suspend). Until the first measurement
succeeds, asking for the time raises the database's error; after it, a
measurement that fails keeps the last offset and is tried again after
:data:`RETRY_SECONDS`. SQLite is one host: its process's own clock serves,
unmeasured.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
import time
import typing as t

import sqlalchemy as sa

from . import sql
from .models import utcnow

log = logging.getLogger("flask_durable_jobs")

#: Seconds between two measurements of a process's offset to the database's clock.
REFRESH_SECONDS = 60.0
#: Seconds before a failed measurement is tried again.
RETRY_SECONDS = 5.0
#: The local clock moved against the monotonic one by more than this many
#: seconds since the last measurement: it was stepped, measure again now.
STEP_SECONDS = 0.5
#: An offset at least this large is logged as a warning: the host's clock is off.
WARN_SECONDS = 1.0
#: Readings per measurement; the one with the shortest round trip counts.
SAMPLES = 3

ZERO = dt.timedelta(0)


def measure_offset(engine: sa.Engine, samples: int = SAMPLES) -> dt.timedelta:
    """The database server's clock minus this process's UTC clock.

    The server read its clock somewhere between the two local readings that
    bracket the query, so the offset is known to within half the round trip:
    from the reading with the shortest round trip, the offset to the
    midpoint, or zero when the clocks agree as closely as can be measured.
    """
    readings = []
    query = sql.load("postgresql")["server_clock"]
    with engine.connect() as conn:
        for _ in range(max(1, samples)):
            before = utcnow()
            server = conn.exec_driver_sql(query).scalar_one()
            readings.append((utcnow() - before, before, server))
    round_trip, before, server = min(readings, key=lambda reading: reading[0])
    half = round_trip / 2
    offset: dt.timedelta = server - (before + half)
    return ZERO if abs(offset) <= half else offset


class DatabaseClock:
    """The offset to add to this process's UTC time to read the database's clock.

    ``engine`` returns the library's engine when the offset is first needed
    (the engine is made on first use too). Until a first measurement
    succeeds, :meth:`offset` raises what the database raised: judging a
    lease by an unmeasured clock is the mistake this class prevents. After
    it, a failed measurement keeps the last offset, and the caller's own
    statement reports the database's trouble.
    """

    def __init__(self, engine: t.Callable[[], sa.Engine]) -> None:
        self._engine = engine
        self._offset = ZERO
        self._local = False  # SQLite: the process's own clock, never measured
        self._measured = False
        self._due = 0.0  # time.monotonic() of the next measurement
        self._wall_minus_mono = 0.0  # at the last measurement
        self._failing = False
        self._logged = ZERO
        self._lock = threading.Lock()
        self._pid = os.getpid()

    def offset(self) -> dt.timedelta:
        """The current offset, measured first if it is due or the local clock stepped."""
        if self._local:
            return ZERO
        if self._stale():
            if self._pid != os.getpid():  # a fork copies the lock, held or not
                self._lock, self._pid = threading.Lock(), os.getpid()
            # The first time every caller waits for the measurement; after
            # it, the last offset serves while one thread measures again.
            if self._lock.acquire(blocking=not self._measured):
                try:
                    if self._stale():
                        self.refresh()
                finally:
                    self._lock.release()
        return self._offset

    def _stale(self) -> bool:
        if not self._measured:
            return True
        mono = time.monotonic()
        return mono >= self._due or abs(time.time() - mono - self._wall_minus_mono) > STEP_SECONDS

    def refresh(self) -> None:
        """Measure the offset now (on PostgreSQL)."""
        engine = self._engine()
        if engine.dialect.name != "postgresql":
            self._local = True
            return
        mono = time.monotonic()
        self._wall_minus_mono = time.time() - mono
        try:
            offset = measure_offset(engine)
        except Exception as exc:  # whatever it was, the caller's next statement meets it too
            self._due = mono + RETRY_SECONDS
            if not self._measured:
                raise
            if not self._failing:
                log.warning("could not read the database's clock (%s: %s); keeping the last"
                            " offset (%+.3f s)", type(exc).__name__, exc,
                            self._offset.total_seconds())
            self._failing = True
            return
        self._offset, self._measured, self._failing = offset, True, False
        self._due = time.monotonic() + REFRESH_SECONDS
        if abs(offset - self._logged).total_seconds() >= WARN_SECONDS:
            self._logged = offset
            ahead = -offset.total_seconds()
            if abs(ahead) >= WARN_SECONDS:
                log.warning("this host's clock is %.3f s %s the database's; leases and due"
                            " times follow the database's clock", abs(ahead),
                            "ahead of" if ahead > 0 else "behind")
            else:
                log.info("this host's clock agrees with the database's again")
