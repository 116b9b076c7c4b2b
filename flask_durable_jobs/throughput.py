"""Jobs finished per minute, for the dashboard's chart and ``GET {prefix}/throughput``.

The counting is one aggregate statement (``throughput`` in the SQL files):
ended jobs are read through the partial ``finished_at`` index, so the cost
follows the jobs of the window, not the table. ``retried`` counts the jobs
now waiting for a retry, by the minute their last attempt failed; a job
retried and then finished within the window counts under its outcome.
"""

from __future__ import annotations

import datetime as dt
import typing as t

from .models import DEAD, RETRYING, SUCCEEDED

if t.TYPE_CHECKING:
    from .extension import State

#: The outcomes the chart shows, in the answer's key order.
SERIES = {SUCCEEDED: "succeeded", RETRYING: "retried", DEAD: "dead"}
DEFAULT_MINUTES = 60
MAX_MINUTES = 24 * 60


def throughput(state: State, minutes: int = DEFAULT_MINUTES) -> dict[str, t.Any]:
    """Counts per minute over the last ``minutes`` minutes (oldest first, every
    minute present, the current one last)."""
    now = state.now().astimezone(dt.timezone.utc)
    end = now.replace(second=0, microsecond=0)
    since = end - dt.timedelta(minutes=minutes - 1)
    store = state.store
    with store.engine.connect() as conn:
        rows = store.send(conn, "throughput", {"since": since}).all()
    counts: dict[str, dict[str, int]] = {}
    for row in rows:
        minute, status, count = tuple(row)
        key = SERIES.get(status)
        if key is not None:
            bucket = counts.setdefault(str(minute), {})
            bucket[key] = bucket.get(key, 0) + int(count)
    buckets: list[dict[str, t.Any]] = []
    totals = dict.fromkeys(SERIES.values(), 0)
    for step in range(minutes):
        start = since + dt.timedelta(minutes=step)
        found = counts.get(start.strftime("%Y-%m-%d %H:%M"), {})
        bucket = {key: found.get(key, 0) for key in SERIES.values()}
        for key, count in bucket.items():
            totals[key] += count
        buckets.append({"minute": start.isoformat(), **bucket})
    return {"since": since.isoformat(), "minutes": minutes, "buckets": buckets, "totals": totals}
