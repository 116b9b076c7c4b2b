"""What keeps vacuum from the job table: the readings health and metrics report.

PostgreSQL keeps the old version of every row a claim or a finish changed
until vacuum removes it, and vacuum may not remove a version some open
snapshot could still see. A report, ``pg_dump`` or a session left idle in a
transaction therefore lets dead tuples pile up in the job table for as long
as it stays open. SQLite has no such thing (it has no statement for it):
:func:`read` answers ``None`` there.
"""

from __future__ import annotations

import dataclasses

from .base import Store


@dataclasses.dataclass(frozen=True)
class VacuumState:
    """The job table's dead tuples and the oldest snapshot pinning vacuum."""

    #: Dead row versions in the job table (statistics collector, approximate).
    dead_tuples: int
    #: Live rows, for scale.
    live_tuples: int
    #: Seconds since autovacuum last finished on the table; ``None``: never.
    last_autovacuum_age_seconds: float | None
    #: The session holding the oldest snapshot in this database, if any.
    oldest_snapshot_pid: int | None
    #: Its state (``active``, ``idle in transaction``...).
    oldest_snapshot_state: str | None
    #: Since when its transaction (or statement) runs, in seconds.
    oldest_snapshot_age_seconds: float | None
    #: How many transaction ids old its snapshot is.
    oldest_snapshot_xid_age: int | None

    def to_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


def read(store: Store) -> VacuumState | None:
    """The readings, or ``None`` where the database has none (SQLite)."""
    if "vacuum_state" not in store.queries:
        return None
    with store.engine.connect() as conn:
        row = conn.exec_driver_sql(store.queries["vacuum_state"]).one()
    dead, live, autovacuum_age, pid, state, age, xid_age = row
    return VacuumState(
        dead_tuples=int(dead or 0),
        live_tuples=int(live or 0),
        last_autovacuum_age_seconds=None if autovacuum_age is None else float(autovacuum_age),
        oldest_snapshot_pid=pid,
        oldest_snapshot_state=state,
        oldest_snapshot_age_seconds=None if age is None else max(0.0, float(age)),
        oldest_snapshot_xid_age=xid_age,
    )
