"""Where a claim starts reading the due index (PostgreSQL).

A claim takes the first due jobs in (priority, run_at, id) order. Every job
it claims leaves a dead entry at the front of the due index, and while any
session holds a snapshot older than those claims (a report, ``pg_dump``, an
idle transaction) vacuum may not remove them: a claim from the start walks
all of them, so its cost grows with the jobs already worked. During a long
drain the claim therefore starts past the last job it took (a keyset on the
index order) and goes back to the start of the index

* when the keyset claim comes back short (the rest of the claim is filled
  from the start in the same call, so nothing due is left behind when the
  backlog runs out),
* every :data:`RESCAN_MIN_SECONDS` at least, or :data:`RESCAN_FACTOR` times
  as long as the last claim from the start took if that is longer (a newly
  due job or one of higher priority is claimed within that time; the
  rescans cost at most about 1/RESCAN_FACTOR of the drain),
* and until :data:`KEYSET_AFTER` jobs came in full batches in a row: short
  drains always read from the start, so priority order holds exactly there.

The position is only a starting point: SKIP LOCKED, the lease token and the
WHERE clause still decide which jobs a claim gets.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
import typing as t

#: Jobs claimed in full batches in a row before claims start past the last one.
KEYSET_AFTER = 1000
#: Shortest time between two claims from the start of the due index during a drain.
RESCAN_MIN_SECONDS = 1.0
#: A claim from the start is repeated after this many times its own duration.
RESCAN_FACTOR = 20.0

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)

#: A position in the due index: (priority, run_at in microseconds since the epoch, id).
Position = tuple[int, int, int]
#: What distinguishes one claim's jobs from another's.
Kind = tuple[tuple[str, ...], tuple[str, ...] | None, bool]


class _Scan:
    __slots__ = ("position", "rescan_at", "streak")

    def __init__(self) -> None:
        self.position: Position | None = None
        self.streak = 0
        self.rescan_at = 0.0


class ClaimScans:
    """The keyset positions of one store's claims, one per kind of claim."""

    def __init__(self, clock: t.Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._scans: dict[Kind, _Scan] = {}

    def start(self, kind: Kind) -> Position | None:
        """Where the next claim of ``kind`` starts; ``None``: at the beginning."""
        with self._lock:
            scan = self._scans.get(kind)
            if (scan is None or scan.position is None or scan.streak < KEYSET_AFTER
                    or self._clock() >= scan.rescan_at):
                return None
            return scan.position

    def record(self, kind: Kind, started: Position | None, limit: int,
               last: Position | None, count: int, seconds: float) -> None:
        """Note a claim that started at ``started``, asked for ``limit`` jobs,
        got ``count`` ending at ``last``, in ``seconds``."""
        with self._lock:
            scan = self._scans.setdefault(kind, _Scan())
            if started is None:
                scan.rescan_at = self._clock() + max(RESCAN_MIN_SECONDS, RESCAN_FACTOR * seconds)
            if count < limit or last is None:
                scan.position, scan.streak = None, 0
                return
            scan.position = last
            scan.streak += count


def params(position: Position | None) -> dict[str, t.Any]:
    """The claim statement's keyset parameters for ``position``."""
    if position is None:
        return {"after_priority": None, "after_run_at": None, "after_id": None}
    priority, micros, job_id = position
    return {"after_priority": priority,
            "after_run_at": EPOCH + dt.timedelta(microseconds=micros),
            "after_id": job_id}
