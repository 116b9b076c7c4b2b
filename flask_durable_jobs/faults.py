"""Which database errors pass by themselves, and how the runner waits them out.

A restart, a failover or a terminated connection fails the statement that
meets it; the same statement succeeds a moment later on a new connection.
The runner retries such statements with a growing pause (:class:`Outage`)
and keeps the work it holds meanwhile; any other error is a refusal that a
retry would only repeat. :func:`classify` tells the two apart, in one place.
"""

from __future__ import annotations

import logging
import select
import sys
import time
import typing as t

import sqlalchemy as sa

log = logging.getLogger("flask_durable_jobs")

#: Seconds before the first retry of a statement; each failure doubles it...
RETRY_FIRST = 0.1
#: ...up to this many seconds.
RETRY_MAX = 5.0
#: Seconds between two log lines about the same kind of failure.
LOG_INTERVAL = 60.0

LOST = "connection lost"
RESTARTING = "server shutting down or starting"
CONFLICT = "transaction conflict"
BUSY = "server busy"
LOCKED = "database locked"
POOL = "no pooled connection free"

#: PostgreSQL error classes (SQLSTATE) that pass by themselves.
_TRANSIENT_SQLSTATES = {
    "08": LOST,  # connection exception
    "57P01": RESTARTING,  # admin shutdown (a fast stop, pg_terminate_backend)
    "57P02": RESTARTING,  # crash shutdown
    "57P03": RESTARTING,  # cannot connect now (starting up, recovery)
    "40": CONFLICT,  # serialization failure, deadlock detected
    "53": BUSY,  # insufficient resources: too many connections, disk full
    "55P03": BUSY,  # lock not available
    "57014": BUSY,  # statement cancelled (statement_timeout, pg_cancel_backend)
}


def classify(exc: BaseException) -> str | None:
    """The kind of transient failure ``exc`` is, or ``None`` when retrying
    the statement would not help (a bug, bad data, a missing table).

    Accepts driver errors as the store's raw cursors raise them and as
    SQLAlchemy wraps them.
    """
    if isinstance(exc, sa.exc.DBAPIError):
        if exc.connection_invalidated:
            return LOST
        return classify(exc.orig) if isinstance(exc.orig, BaseException) else None
    if isinstance(exc, sa.exc.DisconnectionError):
        return LOST
    if isinstance(exc, sa.exc.TimeoutError):
        return POOL
    psycopg = sys.modules.get("psycopg")  # an error of psycopg's means it is loaded
    if psycopg is not None and isinstance(exc, psycopg.OperationalError):
        state = exc.sqlstate
        if state is None:  # raised by the client: connection refused, closed, reset
            return LOST
        return _TRANSIENT_SQLSTATES.get(state) or _TRANSIENT_SQLSTATES.get(state[:2])
    sqlite3 = sys.modules.get("sqlite3")
    if sqlite3 is not None and isinstance(exc, sqlite3.OperationalError):
        text = str(exc).lower()
        if "locked" in text or "busy" in text:  # past the busy timeout
            return LOCKED
    return None


def lost_connection(exc: BaseException) -> bool:
    """Whether ``exc`` says the PostgreSQL connection died under the statement:
    then it must not be used again, and the server may have done the work
    before the answer was lost."""
    if classify(exc) not in (LOST, RESTARTING):
        return False
    orig = exc.orig if isinstance(exc, sa.exc.DBAPIError) else exc
    psycopg = sys.modules.get("psycopg")
    return psycopg is not None and isinstance(orig, psycopg.Error)


def replace_closed_connections(engine: sa.Engine) -> None:
    """Have ``engine``'s pool check each psycopg connection as it hands it out.

    A restart, a failover or ``pg_terminate_backend`` closes every connection
    sitting idle in the pool; the server says so on the socket (an error
    message, then end of file), but the driver reads it only at the next
    statement, which fails. The check looks at the socket without a round
    trip; a connection the server closed invalidates the pool's connections
    opened before (SQLAlchemy's ``InvalidatePoolError``, what its pre-ping
    does) and is replaced by a new one.
    """
    if engine.dialect.driver == "psycopg" and not sa.event.contains(
        engine, "checkout", _check_on_checkout
    ):
        sa.event.listen(engine, "checkout", _check_on_checkout)


def _check_on_checkout(dbapi_conn: t.Any, _record: t.Any, _proxy: t.Any) -> None:
    try:
        closed = dbapi_conn.closed or _readable(dbapi_conn.fileno())
    except Exception:  # no socket any more
        closed = True
    if closed:
        raise sa.exc.InvalidatePoolError("the server closed the connection while it was idle")


def _readable(fd: int) -> bool:
    """Whether the socket has something to read. An idle connection has
    nothing: anything there is the server's goodbye (or, rarely, a notice; a
    new connection costs little then). ``poll``, unlike ``select``, takes any
    descriptor number; where it is missing (Windows) nothing is checked."""
    if not hasattr(select, "poll"):
        return False
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


def closed_while_held(conn: sa.Connection) -> bool:
    """Whether the server closed the psycopg connection of ``conn``, an idle
    connection kept checked out of its pool (which checks only at check-out,
    see :func:`replace_closed_connections`). Looks at the socket, no round trip."""
    if conn.dialect.driver != "psycopg":
        return False
    driver = conn.connection.driver_connection
    try:
        return bool(driver is None or driver.closed or _readable(driver.fileno()))
    except Exception:  # no socket any more
        return True


def summary(exc: BaseException) -> str:
    """One line about ``exc`` for a log message."""
    if isinstance(exc, sa.exc.DBAPIError) and isinstance(exc.orig, BaseException):
        exc = exc.orig
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(exc).__name__}: {first[:200]}"


class RateLimitedLog:
    """Says each kind of failure once a minute, not once per attempt."""

    def __init__(self, interval: float = LOG_INTERVAL) -> None:
        self.interval = interval
        self._said: dict[tuple[str, ...], float] = {}

    def log(self, key: tuple[str, ...], level: int, message: str, *args: t.Any,
            exc_info: BaseException | None = None) -> None:
        now = time.monotonic()
        last = self._said.get(key)
        if last is not None and now - last < self.interval:
            return
        self._said[key] = now
        log.log(level, message + " (repeats are logged once a minute)", *args,
                exc_info=exc_info)


class Outage:
    """The database of one processing run stopped answering: when to try a
    statement again, and what to say about it.

    Every statement of the run waits for :meth:`ready`; a transient failure
    (:meth:`failed`) pushes the next try back (0.1 s, doubling up to 5 s);
    any statement that succeeds (:meth:`answered`) ends the outage.
    """

    def __init__(self, messages: RateLimitedLog) -> None:
        self.messages = messages
        self.retry_at = 0.0
        self._delay = 0.0
        self._since: float | None = None

    @property
    def active(self) -> bool:
        return self._since is not None

    def ready(self, now: float) -> bool:
        return now >= self.retry_at

    def failed(self, what: str, exc: BaseException, holding: str) -> bool:
        """Record a failed statement; ``False`` when ``exc`` is no transient
        failure (the caller decides what a refusal means)."""
        kind = classify(exc)
        if kind is None:
            return False
        now = time.monotonic()
        if self._since is None:
            self._since = now
        self._delay = min(RETRY_MAX, max(RETRY_FIRST, self._delay * 2))
        self.retry_at = now + self._delay
        self.messages.log(
            ("transient", what, kind), logging.WARNING,
            "durable jobs: %s failed (%s: %s); retrying in %.1f s, holding %s",
            what, kind, summary(exc), self._delay, holding,
        )
        return True

    def answered(self) -> None:
        if self._since is None:
            return
        self.messages.log(
            ("answered",), logging.INFO,
            "durable jobs: the database answers again after %.1f s",
            time.monotonic() - self._since,
        )
        self._since = None
        self._delay = self.retry_at = 0.0
