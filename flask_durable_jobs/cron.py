"""Cron expressions, read by croniter, and their fire times in a time zone.

croniter finds the wall-clock times an expression matches. This module
checks the expression against the syntax recurring jobs accept (crontab's
five fields, or six with the seconds first) and turns each wall-clock time
into the instant it stands for in the schedule's zone, with the rules of
:mod:`.periodic` for daylight saving time:

* a wall time that does not exist (clocks go forward) stands for the instant
  it would have had in the offset before the change (:pep:`495`'s
  ``fold=0``);
* a wall time that happens twice (clocks go back) stands for its first pass,
  and for its second pass too when the hour field is a wildcard (``*``,
  ``*/2``), as in cron, so an hourly job stays hourly.

Mapping wall times to instants so is not monotonic near a change of offset
(a skipped 02:30 lands after 03:00 of the new offset), so each search runs
once per offset in force near the instant asked about and near the answer,
and keeps the best.
"""

from __future__ import annotations

import datetime as dt
import re
import threading
import zoneinfo

from croniter import CroniterBadDateError, croniter

UTC = dt.timezone.utc

_FIELDS = ("minute", "hour", "day", "month", "weekday")
_BOUNDS = {
    "second": (0, 59), "minute": (0, 59), "hour": (0, 23), "day": (1, 31), "month": (1, 12),
    "weekday": (0, 7),
}
_NAMES = {
    "month": {name: number for number, name in enumerate(
        ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"),
        start=1,
    )},
    "weekday": {name: number for number, name in enumerate(
        ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
    )},
}
_TOKEN = re.compile(r"^(\*|[a-z0-9]+(?:-[a-z0-9]+)?)(?:/(\d+))?$")
#: Wider than any change of a zone's offset (two hours at most in the tz
#: database): the offsets in force this far around an instant are searched.
_NEAR = dt.timedelta(hours=3)
_MICROSECOND = dt.timedelta(microseconds=1)


class Cron:
    """A checked cron expression read in ``zone``; fire times are aware, in UTC.

    Raises ``ValueError`` naming the expression (and the field) when it is
    not one recurring jobs accept.
    """

    def __init__(self, expr: str, zone: zoneinfo.ZoneInfo) -> None:
        fields = expr.split()
        if len(fields) not in (5, 6):
            raise ValueError(
                f"invalid cron expression {expr!r}: give 5 fields (minute hour day month"
                f" weekday) or 6 with the seconds first, got {len(fields)}"
            )
        names = ("second", *_FIELDS) if len(fields) == 6 else _FIELDS
        spelt = dict(zip(names, fields, strict=True))
        if not spelt["day"].startswith("*") and not spelt["weekday"].startswith("*"):
            raise ValueError(
                f"cron expression {expr!r} restricts both the day of month and the weekday;"
                " crontab implementations disagree on what that means (cron runs when"
                " either matches): register two schedules instead"
            )
        normal = [_normal_field(name, text, expr) for name, text in spelt.items()]
        self.zone = zone
        #: A wall time passed twice (clocks going back) fires in both passes.
        self.both_passes = spelt["hour"].startswith("*")
        # day_or=False: one of the two day fields is a wildcard (checked
        # above), and then cron requires both to match, as croniter does
        # with this flag; without it croniter treats "*/2" as a restriction.
        self._iter = croniter(
            " ".join(normal), dt.datetime(2000, 1, 1), day_or=False,
            second_at_beginning=len(fields) == 6,
        )
        self._lock = threading.Lock()  # the iterator keeps its position

    def next_after(self, when: dt.datetime) -> dt.datetime | None:
        """The first fire time strictly after ``when``, or ``None`` (never again)."""
        return self._search(when.astimezone(UTC), forward=True)

    def latest_until(self, bound: dt.datetime) -> dt.datetime | None:
        """The last fire time at or before ``bound``, or ``None``."""
        return self._search(bound.astimezone(UTC), forward=False)

    def _search(self, edge: dt.datetime, *, forward: bool) -> dt.datetime | None:
        """The fire time nearest ``edge`` on one side, searched once per offset
        in force near ``edge`` and then near the best found (until no offset
        is new): a fire time read in another offset may come first."""
        best: dt.datetime | None = None
        searched: list[dt.timedelta] = []
        pending = self._offsets_near(edge)
        with self._lock:
            while pending:
                offset = pending.pop(0)
                searched.append(offset)
                best = self._search_in(edge, offset, forward, best)
                if not pending and best is not None:
                    pending = [o for o in self._offsets_near(best) if o not in searched]
        return best

    def _search_in(
        self, edge: dt.datetime, offset: dt.timedelta, forward: bool, best: dt.datetime | None
    ) -> dt.datetime | None:
        """Walk the wall times from ``edge`` read in ``offset``, keeping the best
        instant; stop at the first that stands for an instant in this offset
        (later ones read in it are farther), or once past ``best``."""
        start = (edge + offset).replace(tzinfo=None)
        if not forward:
            start += _MICROSECOND  # get_prev is strict: include the edge itself
        step = self._iter.get_next if forward else self._iter.get_prev
        while True:
            try:
                wall = step(dt.datetime, start_time=start)
            except CroniterBadDateError:
                return best
            start = wall
            instants = self._instants(wall)
            for instant in instants:
                if (instant > edge if forward else instant <= edge) and (
                    best is None or (instant < best if forward else instant > best)
                ):
                    best = instant
            in_offset = wall.replace(tzinfo=UTC) - offset
            if in_offset in instants or (
                best is not None and (in_offset > best if forward else in_offset < best)
            ):
                return best

    def _offsets_near(self, instant: dt.datetime) -> list[dt.timedelta]:
        """The zone's offsets in force around ``instant``, its own first."""
        offsets: list[dt.timedelta] = []
        for shift in (dt.timedelta(), -_NEAR, _NEAR):
            offset = (instant + shift).astimezone(self.zone).utcoffset()
            if offset is not None and offset not in offsets:
                offsets.append(offset)
        return offsets

    def _instants(self, wall: dt.datetime) -> list[dt.datetime]:
        """The instants the wall-clock time ``wall`` fires at (see the module docstring)."""
        first = wall.replace(tzinfo=self.zone)  # fold=0
        instants = [first.astimezone(UTC)]
        if self.both_passes:
            second = wall.replace(tzinfo=self.zone, fold=1)
            offset, first_offset = second.utcoffset(), first.utcoffset()
            if offset is not None and first_offset is not None and offset < first_offset:
                instants.append(second.astimezone(UTC))
        return instants


def _normal_field(name: str, text: str, expr: str) -> str:
    """One field in the form given to croniter: numbers, ``*``, ranges, steps, lists.

    Refuses what crontab does not mean (a range that wraps around, a step of
    0, a value out of range) and croniter's own extensions (``L``, ``#``,
    ``W``, ``?``, ``H``), so that the accepted syntax is crontab's; the day
    field's ``last`` (the month's last day) becomes croniter's ``L``.
    """
    low, high = _BOUNDS[name]
    tokens = []
    for token in text.lower().split(","):
        if name == "day" and token == "last":
            tokens.append("L")
            continue
        match = _TOKEN.match(token)
        if match is None:
            raise _bad(expr, name, token)
        base, step = match.groups()
        if step is not None and int(step) < 1:
            raise _bad(expr, name, token, "a step must be at least 1")
        if base == "*":
            tokens.append(token)
            continue
        ends = [_value(name, part, expr, token) for part in base.split("-")]
        if not all(low <= end <= high for end in ends):
            raise _bad(expr, name, token, f"values run from {low} to {high}")
        first, last = ends[0], ends[-1]
        if name == "weekday" and step is not None and len(ends) == 1 and first == 7:
            raise _bad(expr, name, token, "a step starts from 0 to 6")
        if first > last:
            raise _bad(expr, name, token, "a range must not wrap around")
        # "5-5" is written "5": croniter reads a one-value range as a wildcard
        spelt = str(first) if first == last else f"{first}-{last}"
        tokens.append(spelt if step is None else f"{spelt}/{int(step)}")
    return ",".join(tokens)


def _value(name: str, part: str, expr: str, token: str) -> int:
    if part.isdigit():
        return int(part)
    number = _NAMES.get(name, {}).get(part)
    if number is None:
        raise _bad(expr, name, token)
    return number


def _bad(expr: str, name: str, token: str, why: str = "") -> ValueError:
    return ValueError(
        f"invalid cron expression {expr!r}: bad {name} {token!r}" + (f" ({why})" if why else "")
    )
