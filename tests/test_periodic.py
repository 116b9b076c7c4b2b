"""Recurring jobs: registration, fire times, the catch-up rule, exactly once."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import os
import subprocess
import sys
import time
import typing as t
import zoneinfo
from pathlib import Path

import pytest
import sqlalchemy as sa
from croniter import croniter
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from hypothesis import given, settings
from hypothesis import strategies as st

from flask_durable_jobs import DurableJobs
from flask_durable_jobs.periodic import ON_TIME, Schedule, describe, tick
from tests.helpers import wait_for

UTC = dt.timezone.utc
ROOT = Path(__file__).resolve().parent.parent


def at(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=UTC)


def state(app: Flask) -> t.Any:
    return app.extensions["durable_jobs"]


def set_clock(app: Flask, when: dt.datetime) -> None:
    state(app).clock = lambda: when


def tick_at(app: Flask, when: dt.datetime) -> int:
    set_clock(app, when)
    return tick(state(app))


def job_rows(db: SQLAlchemy) -> list[t.Any]:
    with db.engine.connect() as conn:
        return conn.execute(sa.text(
            "SELECT job_type, run_at, idempotency_key FROM durable_jobs ORDER BY run_at, id"
        )).all()


def fire_times(jobs: DurableJobs) -> list[dt.datetime]:
    items, _total = jobs.list_jobs(per_page=200)
    return sorted(job.run_at for job in items)


def fires(schedule: Schedule, after: dt.datetime, count: int) -> list[dt.datetime]:
    out = []
    for _ in range(count):
        nxt = schedule.next_fire_after(after)
        assert nxt is not None
        out.append(nxt)
        after = nxt
    return out


@pytest.fixture
def noop(jobs: DurableJobs) -> DurableJobs:
    jobs.handler("report")(lambda p: None)
    jobs.handler("other")(lambda p: None)
    return jobs


# -- registration (no database) ------------------------------------------------------


def test_register_with_a_job_type(noop: DurableJobs) -> None:
    schedule = noop.periodic("*/5 * * * *", "report", payload={"full": True})
    assert isinstance(schedule, Schedule)
    assert (schedule.job_type, schedule.cron, schedule.timezone) == (
        "report", "*/5 * * * *", "UTC")
    assert schedule.payload == {"full": True}
    assert schedule.key.startswith("report:")
    # a different schedule of the same type gets a different key
    other = noop.periodic("0 3 * * *", "report", payload={"full": True})
    third = noop.periodic("*/5 * * * *", "report", payload={"full": False})
    paris = noop.periodic("*/5 * * * *", "report", payload={"full": True},
                          timezone="Europe/Paris")
    assert len({schedule.key, other.key, third.key, paris.key}) == 4
    # the default key does not depend on spacing
    with pytest.raises(ValueError, match="already registered"):
        noop.periodic("*/5  *  * * *", "report", payload={"full": True})


def test_register_as_a_decorator(jobs: DurableJobs) -> None:
    @jobs.periodic("0 3 * * *", key="nightly", timezone="Europe/Paris")
    @jobs.handler("cleanup")
    def cleanup(payload: dict[str, t.Any]) -> None:
        return None

    assert callable(cleanup)
    assert jobs.schedules["nightly"].job_type == "cleanup"
    assert jobs.schedules["nightly"].timezone == "Europe/Paris"

    def stray(payload: dict[str, t.Any]) -> None:
        return None

    with pytest.raises(LookupError, match=r"above @jobs\.handler"):
        jobs.periodic("0 3 * * *")(stray)
    with pytest.raises(TypeError, match="needs a schedule"):
        jobs.periodic(stray)


def test_duplicate_key_is_refused(noop: DurableJobs) -> None:
    noop.periodic("0 3 * * *", "report", key="nightly")
    with pytest.raises(ValueError, match="'nightly' is already registered"):
        noop.periodic("0 4 * * *", "other", key="nightly")
    noop.periodic("0 3 * * *", "report", key="nightly-2")  # another key: fine


def test_handler_must_be_registered_first(noop: DurableJobs) -> None:
    with pytest.raises(LookupError, match="'reprot'"):
        noop.periodic("0 3 * * *", "reprot")
    assert noop.schedules == {}


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("61 * * * *", r"'61 \* \* \* \*'.*61"),
        ("* * *", r"'\* \* \*'.*5 fields"),
        ("* * * * * * *", "got 7"),
        ("0 3 * * 8", r"'0 3 \* \* 8'.*weekday"),
        ("0 3 32 * *", r"'0 3 32 \* \*'"),
        ("0 3 1 * mon", "both the day of month and the weekday"),
        ("0 0 30 2 *", "never fires"),
        ("", "got 0"),
    ],
)
def test_bad_cron_is_refused(noop: DurableJobs, expr: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        noop.periodic(expr, "report")
    assert noop.schedules == {}


def test_bad_options_are_refused(noop: DurableJobs) -> None:
    with pytest.raises(ValueError, match="unknown time zone 'Mars/Olympus'"):
        noop.periodic("0 3 * * *", "report", timezone="Mars/Olympus")
    with pytest.raises(TypeError, match=r"payload\['x'\] is nan"):
        noop.periodic("0 3 * * *", "report", payload={"x": float("nan")})
    with pytest.raises(ValueError, match="key must be"):
        noop.periodic("0 3 * * *", "report", key="k" * 201)
    with pytest.raises(ValueError, match="queue"):
        noop.periodic("0 3 * * *", "report", queue="")
    with pytest.raises(ValueError, match="priority"):
        noop.periodic("0 3 * * *", "report", priority="high")
    assert noop.schedules == {}


# -- fire times (no database) ------------------------------------------------------


def test_weekday_numbers_follow_crontab(noop: DurableJobs) -> None:
    sunday = at(2026, 1, 4)  # a Sunday
    cases = {
        "0 9 * * 1": [at(2026, 1, 5, 9)],  # Monday, not Tuesday as in APScheduler 3
        "0 9 * * 0": [at(2026, 1, 4, 9)],
        "0 9 * * 7": [at(2026, 1, 4, 9)],
        "0 9 * * 1-5": [at(2026, 1, d, 9) for d in (5, 6, 7, 8, 9)],
        "0 9 * * */2": [at(2026, 1, d, 9) for d in (4, 6, 8, 10)],
        "0 9 * * sat,sun": [at(2026, 1, d, 9) for d in (4, 10, 11)],
    }
    for i, (expr, expected) in enumerate(cases.items()):
        schedule = noop.periodic(expr, "report", key=f"k{i}")
        assert fires(schedule, sunday, len(expected)) == expected, expr


def test_fire_times_in_a_fixed_offset_zone(noop: DurableJobs) -> None:
    kolkata = noop.periodic("0 9 * * *", "report", timezone="Asia/Kolkata")  # UTC+05:30
    assert fires(kolkata, at(2026, 6, 1), 2) == [at(2026, 6, 1, 3, 30), at(2026, 6, 2, 3, 30)]


def test_fire_times_across_dst_changes(noop: DurableJobs) -> None:
    daily = noop.periodic("30 2 * * *", "report", timezone="Europe/Paris")
    # Spring: 02:30 does not exist on 29 March; it runs once, at 01:30 UTC.
    assert fires(daily, at(2026, 3, 27), 4) == [
        at(2026, 3, 27, 1, 30), at(2026, 3, 28, 1, 30),
        at(2026, 3, 29, 1, 30), at(2026, 3, 30, 0, 30),
    ]
    # Autumn: 02:30 happens twice on 25 October; it runs once, the first time.
    assert fires(daily, at(2026, 10, 24), 3) == [
        at(2026, 10, 24, 0, 30), at(2026, 10, 25, 0, 30), at(2026, 10, 26, 1, 30),
    ]
    # An hourly job (wildcard hour) stays hourly through the repeated hour.
    hourly = noop.periodic("0 * * * *", "report", timezone="Europe/Paris")
    assert fires(hourly, at(2026, 10, 24, 23), 4) == [
        at(2026, 10, 25, 0), at(2026, 10, 25, 1), at(2026, 10, 25, 2), at(2026, 10, 25, 3),
    ]
    # Six fields: seconds first.
    seconds = noop.periodic("*/20 * * * * *", "report")
    assert fires(seconds, at(2026, 1, 1), 3) == [
        at(2026, 1, 1, 0, 0, 20), at(2026, 1, 1, 0, 0, 40), at(2026, 1, 1, 0, 1),
    ]


def test_crontab_syntax(noop: DurableJobs) -> None:
    start = at(2026, 1, 1)  # a Thursday
    cases = {
        "5-5 * * * *": [at(2026, 1, 1, 0, 5), at(2026, 1, 1, 1, 5)],  # one value, not "*"
        "0 9 * * 5-5": [at(2026, 1, 2, 9), at(2026, 1, 9, 9)],
        "0 9 * * 0-7/2": [at(2026, 1, d, 9) for d in (1, 3, 4, 6)],
        "0 9 * * mon-fri/2": [at(2026, 1, d, 9) for d in (2, 5, 7, 9)],
        "0 0 last * *": [at(2026, 1, 31), at(2026, 2, 28), at(2026, 3, 31)],
        "0 0 1 JAN,Jul *": [at(2026, 7, 1), at(2027, 1, 1)],
        # a wildcard-led day field and a weekday: both must match, as in cron
        "0 0 */2 * mon": [at(2026, 1, 5), at(2026, 1, 19), at(2026, 2, 9)],
    }
    for i, (expr, expected) in enumerate(cases.items()):
        schedule = noop.periodic(expr, "report", key=f"k{i}")
        assert fires(schedule, start, len(expected)) == expected, expr


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("0 12 * * fri-mon", r"bad weekday 'fri-mon' \(a range must not wrap around\)"),
        ("30-10 * * * *", "bad minute '30-10'"),
        ("0 0 * * 7/2", "bad weekday '7/2'"),
        ("*/0 * * * *", r"bad minute '\*/0' \(a step must be at least 1\)"),
        ("0 24 * * *", r"bad hour '24' \(values run from 0 to 23\)"),
        ("0 0 * 0 *", "bad month '0'"),
        ("0 0 * * 08", "bad weekday '08'"),
        ("0 0 L * *", "bad day 'l'"),
        ("0 0 * * mon#2", "bad weekday 'mon#2'"),
        ("0 0 1W * *", "bad day '1w'"),
        ("0 0 ? * *", r"bad day '\?'"),
        ("H * * * *", "bad minute 'h'"),
        ("0 0 * jan-dex *", "bad month 'jan-dex'"),
        ("@daily", "got 1"),
    ],
)
def test_croniter_extensions_and_crontab_errors_are_refused(
    noop: DurableJobs, expr: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        noop.periodic(expr, "report")
    assert dict(noop.schedules) == {}


def test_fire_times_asked_for_just_after_a_dst_change(noop: DurableJobs) -> None:
    # Paris, 29 March 2026: 02:00 CET becomes 03:00 CEST at 01:00 UTC.
    daily = noop.periodic("30 2 * * *", "report", timezone="Europe/Paris", key="a")
    # the skipped 02:30 runs at 01:30 UTC, also when asked after the change
    assert daily.next_fire_after(at(2026, 3, 29, 1, 10)) == at(2026, 3, 29, 1, 30)
    # a midnight job runs on the day of the change and the next (none skipped)
    midnight = noop.periodic("0 0 * * *", "report", timezone="Europe/Paris", key="b")
    assert fires(midnight, at(2026, 3, 28, 23), 2) == [at(2026, 3, 29, 22), at(2026, 3, 30, 22)]
    # Santiago, 6 September 2026: midnight does not exist (00:00 -04 is 01:00 -03)
    santiago = noop.periodic("0 0 * * *", "report", timezone="America/Santiago", key="c")
    assert fires(santiago, at(2026, 9, 5, 12), 2) == [at(2026, 9, 6, 4), at(2026, 9, 7, 3)]
    # Troll, 29 March 2026: +00 becomes +02 at 01:00 UTC, skipping 01:00-03:00.
    # 03:15 (+02) comes first; the skipped 02:15 follows, read in the old offset.
    troll = noop.periodic("15 2,3 * * *", "report", timezone="Antarctica/Troll", key="d")
    assert fires(troll, at(2026, 3, 28, 20, 20), 3) == [
        at(2026, 3, 29, 1, 15), at(2026, 3, 29, 2, 15), at(2026, 3, 30, 0, 15),
    ]
    # the latest fire time looks back through a repeated hour too
    hourly = noop.periodic("0 * * * *", "report", timezone="Europe/Paris", key="e")
    assert hourly.latest_fire(at(2026, 10, 25, 1, 30), at(2026, 10, 24)) == at(2026, 10, 25, 1)
    assert hourly.latest_fire(at(2026, 10, 25, 0, 59), at(2026, 10, 24)) == at(2026, 10, 25)


ZONES = ("Europe/Paris", "America/New_York", "Australia/Lord_Howe", "Antarctica/Troll",
         "America/Santiago", "Asia/Kolkata")
EXPRESSIONS = ("30 2 * * *", "0 * * * *", "*/20 * * * *", "0 0 * * *", "15 2,3 * * *",
               "0 */2 * * *", "59 1 * * 0", "0,30 1-3 * * *")
# the changes of offset of 2026 in these zones, and an ordinary day
CHANGES = (at(2026, 3, 8, 7), at(2026, 3, 29, 1), at(2026, 4, 4, 15), at(2026, 9, 6, 4),
           at(2026, 10, 3, 15), at(2026, 10, 25, 1), at(2026, 11, 1, 6), at(2026, 6, 15, 12))


def reference_fires(expr: str, zone_name: str, start: dt.datetime, end: dt.datetime
                    ) -> list[dt.datetime]:
    """Every fire time in [start, end], by the rules of the docs, from every
    wall time croniter lists (read with the standard library only)."""
    zone = zoneinfo.ZoneInfo(zone_name)
    both_passes = expr.split()[1].startswith("*")
    walls = croniter(expr, (start - dt.timedelta(days=1)).replace(tzinfo=None))
    found = set()
    while True:
        wall = walls.get_next(dt.datetime)
        if wall > (end + dt.timedelta(days=1)).replace(tzinfo=None):
            break
        first = wall.replace(tzinfo=zone)
        found.add(first.astimezone(UTC))
        second = wall.replace(tzinfo=zone, fold=1)
        if both_passes and t.cast(dt.timedelta, second.utcoffset()) < t.cast(
            dt.timedelta, first.utcoffset()
        ):
            found.add(second.astimezone(UTC))
    return sorted(fire for fire in found if start <= fire <= end)


@settings(max_examples=300, deadline=None)
@given(
    zone=st.sampled_from(ZONES),
    expr=st.sampled_from(EXPRESSIONS),
    change=st.sampled_from(CHANGES),
    shift=st.integers(min_value=-6 * 3600, max_value=6 * 3600),
)
def test_fire_times_match_a_plain_reading_of_the_rules(
    zone: str, expr: str, change: dt.datetime, shift: int
) -> None:
    jobs = DurableJobs()
    jobs.handler("report")(lambda p: None)
    schedule = jobs.periodic(expr, "report", timezone=zone)
    when = change + dt.timedelta(seconds=shift)
    around = reference_fires(expr, zone, when - dt.timedelta(days=8), when + dt.timedelta(days=8))
    assert schedule.next_fire_after(when) == min(f for f in around if f > when)
    assert schedule.latest_fire(when, when - dt.timedelta(days=8)) == max(
        f for f in around if f <= when)


# -- ticking on a database ---------------------------------------------------------


def test_each_fire_time_becomes_one_job(app: Flask, noop: DurableJobs, db: SQLAlchemy) -> None:
    schedule = noop.periodic("*/5 * * * *", "report", payload={"n": 1}, queue="reports",
                             priority=-2)
    assert tick_at(app, at(2026, 1, 1, 12, 2, 30)) == 0  # first seen: nothing due
    assert tick_at(app, at(2026, 1, 1, 12, 4, 59)) == 0
    assert tick_at(app, at(2026, 1, 1, 12, 5, 1)) == 1
    assert tick_at(app, at(2026, 1, 1, 12, 5, 2)) == 0
    assert tick_at(app, at(2026, 1, 1, 12, 9)) == 0
    assert tick_at(app, at(2026, 1, 1, 12, 10, 3)) == 1
    assert tick_at(app, at(2026, 1, 1, 12, 10, 3)) == 0
    rows = job_rows(db)
    assert [row.idempotency_key for row in rows] == [
        f"periodic:{schedule.key}:2026-01-01T12:05:00+00:00",
        f"periodic:{schedule.key}:2026-01-01T12:10:00+00:00",
    ]
    assert fire_times(noop) == [at(2026, 1, 1, 12, 5), at(2026, 1, 1, 12, 10)]
    job = min(noop.list_jobs()[0], key=lambda j: j.run_at)
    assert (job.job_type, job.payload, job.queue, job.priority, job.status) == (
        "report", {"n": 1}, "reports", -2, "pending")
    assert job.created_at == at(2026, 1, 1, 12, 5, 1)


def test_two_schedules_of_one_type(app: Flask, noop: DurableJobs) -> None:
    noop.periodic("*/5 * * * *", "report", payload={"kind": "a"})
    noop.periodic("*/5 * * * *", "report", payload={"kind": "b"})
    tick_at(app, at(2026, 1, 1, 12, 1))
    assert tick_at(app, at(2026, 1, 1, 12, 5)) == 2
    assert sorted(job.payload["kind"] for job in noop.list_jobs()[0]) == ["a", "b"]


def test_first_seen_runs_only_a_fire_time_due_now(app: Flask, noop: DurableJobs) -> None:
    noop.periodic("0 3 * * *", "report", key="late")
    noop.periodic("0 12 * * *", "report", key="now")
    assert tick_at(app, at(2026, 1, 1, 12, 0, 4)) == 1  # 12:00 is 4 s old: due now
    assert [job.idempotency_key for job in noop.list_jobs()[0]] == [
        "periodic:now:2026-01-01T12:00:00+00:00"
    ]
    assert tick_at(app, at(2026, 1, 2, 3, 0, 1)) == 1  # then "late" starts normally


def test_downtime_runs_only_the_latest_missed_fire(app: Flask, noop: DurableJobs) -> None:
    noop.periodic("*/5 * * * *", "report")
    tick_at(app, at(2026, 1, 1, 12, 0, 1))
    assert fire_times(noop) == [at(2026, 1, 1, 12)]
    # down from 12:01 to 14:02: 24 fire times passed; one job, for 14:00
    assert tick_at(app, at(2026, 1, 1, 14, 2)) == 1
    assert tick_at(app, at(2026, 1, 1, 14, 3)) == 0
    assert fire_times(noop) == [at(2026, 1, 1, 12), at(2026, 1, 1, 14)]
    assert tick_at(app, at(2026, 1, 1, 14, 5, 1)) == 1


def test_sub_minute_schedule_runs_each_on_time_fire(app: Flask, noop: DurableJobs) -> None:
    noop.periodic("* * * * * *", "report")
    start = at(2026, 1, 1, 12)
    assert tick_at(app, start) == 1
    # a slow tick: every fire time still on time runs
    assert tick_at(app, start + dt.timedelta(seconds=3.5)) == 3
    # a stall of a minute: only the fire times of the last ON_TIME run
    assert tick_at(app, start + dt.timedelta(seconds=63.5)) == ON_TIME.total_seconds()
    times = fire_times(noop)
    assert len(times) == len(set(times)) == 4 + ON_TIME.total_seconds()
    assert times[-1] == start + dt.timedelta(seconds=63)


def test_pruned_job_is_not_enqueued_again(app: Flask, noop: DurableJobs, db: SQLAlchemy) -> None:
    noop.periodic("0 3 * * *", "report", key="nightly")
    tick_at(app, at(2026, 1, 1, 2))
    assert tick_at(app, at(2026, 1, 1, 3, 0, 2)) == 1
    assert noop.drain()["succeeded"] == 1
    set_clock(app, at(2026, 1, 1, 3, 0, 5))
    assert noop.prune(older_than=dt.timedelta(seconds=1)) == 1
    assert job_rows(db) == []
    assert tick_at(app, at(2026, 1, 1, 3, 0, 6)) == 0
    assert tick_at(app, at(2026, 1, 1, 3, 0, 9)) == 0
    assert job_rows(db) == []
    with db.engine.connect() as conn:
        (row,) = conn.execute(sa.text("SELECT key, cron, timezone FROM durable_jobs_periodic"))
    assert tuple(row) == ("nightly", "0 3 * * *", "UTC")
    assert tick_at(app, at(2026, 1, 2, 3, 0, 1)) == 1  # the next night runs


def test_watermark_never_goes_back(app: Flask, noop: DurableJobs) -> None:
    """A process whose clock lags does not enqueue what a faster one dealt with."""
    noop.periodic("* * * * *", "report")
    tick_at(app, at(2026, 1, 1, 12, 0, 30))
    assert tick_at(app, at(2026, 1, 1, 12, 5, 1)) == 1  # 12:05
    assert tick_at(app, at(2026, 1, 1, 12, 4, 1)) == 0  # 12:04 is behind the watermark
    assert fire_times(noop) == [at(2026, 1, 1, 12, 5)]


def test_dst_change_on_a_database(app: Flask, noop: DurableJobs) -> None:
    noop.periodic("30 2 * * *", "report", timezone="Europe/Paris")
    when = at(2026, 10, 24, 12)
    tick_at(app, when)
    while when < at(2026, 10, 25, 6):
        when += dt.timedelta(minutes=5)
        tick_at(app, when)
    assert fire_times(noop) == [at(2026, 10, 25, 0, 30)]


def test_registered_before_init_app(database_url: str) -> None:
    jobs = DurableJobs()
    jobs.handler("report")(lambda p: None)
    jobs.periodic("*/5 * * * *", "report", key="early")
    app = Flask("early")
    app.config.update(SQLALCHEMY_DATABASE_URI=database_url, DURABLE_JOBS_SCHEDULER=False)
    db = SQLAlchemy(app)
    jobs.init_app(app, db=db)
    with app.app_context():
        db.create_all()
        try:
            tick_at(app, at(2026, 1, 1, 12, 1))
            jobs.periodic("*/10 * * * *", "report", key="late")  # and after it
            assert tick_at(app, at(2026, 1, 1, 12, 5)) == 1
            assert tick_at(app, at(2026, 1, 1, 12, 10)) == 2
        finally:
            jobs.stop()
            db.engine.dispose()


def test_describe_and_cli(app: Flask, noop: DurableJobs) -> None:
    assert describe(state(app)) == []
    noop.periodic("0 3 * * *", "report", key="nightly", timezone="Europe/Paris",
                  payload={"full": True})
    set_clock(app, at(2026, 1, 1, 12))
    (entry,) = describe(state(app))
    assert entry == {
        "key": "nightly", "job_type": "report", "cron": "0 3 * * *",
        "timezone": "Europe/Paris", "payload": {"full": True}, "queue": None,
        "priority": None, "last_fire_at": None,
        "next_fire_at": "2026-01-02T02:00:00+00:00",
    }
    tick_at(app, at(2026, 1, 2, 2, 0, 3))
    (entry,) = describe(state(app))
    assert entry["last_fire_at"] == "2026-01-02T02:00:00+00:00"
    assert entry["next_fire_at"] == "2026-01-03T02:00:00+00:00"
    result = app.test_cli_runner().invoke(args=["jobs", "periodic"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == describe(state(app))


def test_scheduler_ticks_the_schedules(app: Flask, noop: DurableJobs) -> None:
    noop.periodic("* * * * * *", "report")
    noop.start()
    try:
        wait_for(
            "two periodic jobs run by the scheduler",
            lambda: len([j for j in noop.list_jobs()[0] if j.status == "succeeded"]) >= 2,
            10, details=lambda: repr(noop.list_jobs()[0]),
        )
    finally:
        noop.stop()
    times = fire_times(noop)
    assert len(times) == len(set(times))


# -- real processes -----------------------------------------------------------------


@pytest.mark.slow
def test_three_processes_enqueue_each_fire_time_once(
    app: Flask, db: SQLAlchemy, database_url: str
) -> None:
    seconds = 4.0
    # Every process must be up before the common start, or they would not
    # race: leave room for three interpreters importing the app on a busy
    # machine (two cores running the rest of the suite).
    start_at = time.time() + 10.0
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.procs.periodic_app", database_url, str(start_at),
             str(seconds)],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for _ in range(3)
    ]
    reports = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        reports.append(json.loads(out.strip().splitlines()[-1]))
    assert not any(r["started_late"] for r in reports), reports
    assert all(r["ticks"] > 20 for r in reports), reports

    with db.engine.connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT job_type, run_at, idempotency_key FROM durable_jobs ORDER BY run_at"
        )).all()
        marks = conn.execute(sa.text("SELECT key, last_fire_at FROM durable_jobs_periodic")).all()
    # what each process says it enqueued adds up to what exists
    assert sum(r["enqueued"] for r in reports) == len(rows)
    assert {row.job_type for row in rows} == {"beat"}
    times = fire_times_of(rows)
    # each fire time has exactly one job, and every second of the run has one
    assert len(times) == len(set(times)) == len(rows)
    assert len({row.idempotency_key.rsplit(":", 4)[0] for row in rows}) == 1
    assert len(rows) >= seconds
    assert [(b - a).total_seconds() for a, b in itertools.pairwise(times)] == [1.0] * (
        len(rows) - 1)
    assert len(marks) == 1


def fire_times_of(rows: list[t.Any]) -> list[dt.datetime]:
    out = []
    for row in rows:
        value = row.run_at
        if isinstance(value, str):
            value = dt.datetime.fromisoformat(value)
        out.append(value.replace(tzinfo=UTC) if value.tzinfo is None else value)
    return sorted(out)
