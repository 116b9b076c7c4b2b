"""The values that cross the store's interface: claimed rows, outcomes,
watchers, and a named statement as one driver takes it."""

from __future__ import annotations

import dataclasses
import datetime as dt
import typing as t

import sqlalchemy as sa
from sqlalchemy.orm import Session, scoped_session


@dataclasses.dataclass(slots=True)
class ClaimedRow:
    id: int
    job_type: str
    payload: str  # JSON text, decoded on the handler's thread
    attempts: int
    max_attempts: int
    token: str
    secrets: str | None = None  # encrypted; decrypted on the handler thread only
    batch_id: str | None = None


@dataclasses.dataclass(frozen=True)
class ExpiredLeases:
    """Running jobs whose lease has expired, as the health report reads them."""

    #: running jobs whose lease has expired
    count: int
    #: of those, the ones expired before the cutoff the caller gave
    stale: int
    #: seconds since the oldest expired lease ended (``None``: none expired)
    oldest_age: float | None
    #: worker id -> seconds since its newest lease ended, for each worker
    #: whose every running job's lease has expired: nothing renews them
    silent_workers: dict[str, float]


class Counted(t.NamedTuple):
    """One row of :meth:`Store.counts`: the jobs of a queue, type and status."""

    queue: str
    job_type: str
    status: str
    n: int
    #: waiting jobs already due (0 for other statuses), and the oldest one's due time
    due: int
    oldest_due: dt.datetime | None


@dataclasses.dataclass
class Watcher:
    wait: t.Callable[[float], bool]
    close: t.Callable[[], None]


@dataclasses.dataclass(slots=True)
class Finish:
    """The outcome of one attempt, to be written if the lease still holds."""

    id: int
    token: str
    # succeeded, retrying, dead or cancelled; the store sets cancelled where the
    # database ended the job so because a cancel was requested
    status: str
    result: str | None = None  # JSON text
    error: str | None = None
    run_at: dt.datetime | None = None  # next attempt, for retrying
    # for signals and metrics; not written
    job_type: str = ""
    attempt: int = 0
    duration: float | None = None
    value: t.Any = None
    batch_id: str | None = None
    #: the handler's last progress not written yet (JSON text), written with the outcome
    progress: str | None = None


class Statement(t.NamedTuple):
    """A named statement as one driver takes it."""

    sql: str
    #: the parameters' names in order, for a positional paramstyle (else None)
    positions: tuple[str, ...] | None

    def params(self, values: t.Mapping[str, t.Any]) -> t.Any:
        """``values`` (by name) as the driver takes them with :attr:`sql`."""
        if self.positions is None:
            return values
        return tuple([values[name] for name in self.positions])


#: Where a job can be inserted: the caller's session, or a connection.
Target = t.Union[Session, "scoped_session[t.Any]", sa.Connection]


def connection_of(target: Target) -> sa.Connection:
    """The connection of the caller's transaction (a session's, begun if need be)."""
    if isinstance(target, sa.Connection):
        return target
    return target.connection()


def is_broken(driver_conn: t.Any) -> bool:
    """Whether a driver connection was lost (psycopg says so; sqlite3 never is)."""
    return bool(getattr(driver_conn, "broken", False) or getattr(driver_conn, "closed", False))
