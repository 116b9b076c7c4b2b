"""Recurring jobs: a cron schedule that enqueues one job per fire time.

Registering
-----------

Give the schedule and the job type::

    jobs.periodic("*/5 * * * *", "reports.refresh", payload={"full": False})

or stack ``@jobs.periodic`` *above* ``@jobs.handler``; the job type is then the
handler's name::

    @jobs.periodic("0 3 * * *", timezone="Europe/Paris")
    @jobs.handler("cleanup")
    def cleanup(payload): ...

Either form works before or after ``init_app``. Called with a job type,
``jobs.periodic`` returns the :class:`Schedule`; as a decorator it returns the
function unchanged.

* ``schedule``: five crontab fields (minute hour day month weekday), or six
  fields with the seconds first (``"*/10 * * * * *"``: every ten seconds),
  read by croniter (:mod:`.cron`). Each field takes numbers, ``*``, ranges,
  steps and lists; months and weekdays also take names (``jan``, ``mon-fri``);
  weekday numbers mean what they mean in crontab (0 and 7 are Sunday); the
  day field takes ``last``, the month's last day. An expression that
  restricts both the day of month and the weekday (neither field starts with
  ``*``) is refused, because crontab implementations disagree on what it
  means: register two schedules instead. An expression that is not valid
  (also a range that wraps around, such as ``fri-mon``), or never fires,
  raises ``ValueError`` naming it.
* ``timezone``: the zone the expression is read in, a zoneinfo name such as
  ``"Europe/Paris"`` (or a ``ZoneInfo``); default ``"UTC"``.
* ``key``: the schedule's name in the database, at most 200 characters. By
  default it is built from the job type, the expression, the time zone and
  the payload, so two schedules of one type never collide. Changing one of
  these therefore starts a new schedule; pass an explicit key to keep a
  schedule's history when you change it. Registering a key twice raises
  ``ValueError``.
* ``payload``: the JSON object every job gets (checked like ``enqueue``'s).
* ``queue``, ``priority``: override the handler's.

The job type needs a handler when the schedule is registered (``LookupError``
otherwise): register the handler first.

Exactly one job per fire time
-----------------------------

Every process runs :func:`tick` (the scheduler calls it every
:data:`TICK_INTERVAL` seconds). No process is elected to do so; the database
decides. Each fire time becomes a job whose idempotency key is
``periodic:<key>:<fire time in UTC, ISO 8601>``, inserted with
``ON CONFLICT DO NOTHING`` on the job table's unique constraint, so a second
insert for the same fire time does nothing, from whichever process or host.
The ``durable_jobs_periodic`` table keeps one row per schedule whose
``last_fire_at`` is the latest fire time dealt with; it advances with a
compare-and-set in the same transaction as the insert, so a fire time whose
job has since been pruned is never enqueued again. The job's ``run_at`` is
its fire time.

Fire times are read in the schedule's time zone (:mod:`.cron`).
When clocks go forward, a wall time that does not exist that day runs once,
at the instant it would have had in the old offset (02:30 in Paris on the
spring change runs at 01:30 UTC). When clocks go back, a wall time that
happens twice runs once, the first time, unless the hour field is a wildcard
(``*``, ``*/2``): then it runs in both passes, as in cron, so an hourly job
stays hourly.

Catch-up rule
-------------

A fire time is *on time* for :data:`ON_TIME` (10 seconds) after it passes,
and each tick enqueues every on-time fire time not yet dealt with. Fire times
missed for longer than that (the app was down, or the scheduler stalled) are
never run one by one: together they give one job, for the latest fire time
that has passed. After a night of downtime, a job due every five minutes
runs once, not a hundred times.

A schedule seen for the first time (no row yet) starts then: if its latest
fire time passed less than :data:`ON_TIME` ago, it is due now and runs;
older fire times do not. A new deploy does not run a nightly job at noon.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import os
import threading
import typing as t
import weakref
import zoneinfo

import sqlalchemy as sa

from . import enqueue, signals
from . import handlers as handlers_module
from . import payload as payload_json
from .cron import Cron
from .models import UTC

if t.TYPE_CHECKING:
    from .extension import State
    from .handlers import HandlerSpec

TABLE_NAME = "durable_jobs_periodic"
#: Seconds between two ticks of the scheduler.
TICK_INTERVAL = 1.0
#: How long after it passes a fire time still counts as on time (see the catch-up rule).
ON_TIME = dt.timedelta(seconds=10)
#: How far back the latest fire time is looked for.
MAX_LOOKBACK = dt.timedelta(days=20 * 366)
MAX_KEY_LENGTH = 200

_MICROSECOND = dt.timedelta(microseconds=1)


def define_table(metadata: sa.MetaData) -> sa.Table:
    """The schedule watermark table on ``metadata``, defined the first time."""
    return sa.Table(
        TABLE_NAME,
        metadata,
        sa.Column("key", sa.String(MAX_KEY_LENGTH), primary_key=True),
        sa.Column("cron", sa.String(200), nullable=False),
        sa.Column("timezone", sa.String(64), nullable=False),
        sa.Column("last_fire_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        keep_existing=True,  # defined once per metadata; later calls get it
    )


# -- schedules -----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Schedule:
    """One registered schedule. Fire times are returned aware, in UTC."""

    key: str
    job_type: str
    cron: str
    timezone: str
    payload: dict[str, t.Any]
    queue: str | None
    priority: int | None
    #: The expression read in the zone.
    times: Cron = dataclasses.field(repr=False, compare=False)

    def next_fire_after(self, when: dt.datetime) -> dt.datetime | None:
        """The first fire time strictly after ``when``."""
        return self.times.next_after(when)

    def latest_fire(self, bound: dt.datetime, floor: dt.datetime) -> dt.datetime | None:
        """The latest fire time in ``(floor, bound]``, or ``None``."""
        fire = self.times.latest_until(bound)
        return fire if fire is not None and fire > floor else None

    def due(self, last: dt.datetime, now: dt.datetime) -> list[dt.datetime]:
        """The fire times to enqueue now, the watermark being ``last`` (catch-up rule)."""
        on_time_from = now - ON_TIME
        if last >= on_time_from:
            return self._between(last, now)
        on_time = self._between(on_time_from, now)
        if on_time:
            return on_time
        missed = self.latest_fire(on_time_from, last)
        return [] if missed is None else [missed]

    def _between(self, after: dt.datetime, until: dt.datetime) -> list[dt.datetime]:
        fires = []
        fire = self.next_fire_after(after)
        while fire is not None and fire <= until:
            fires.append(fire)
            fire = self.next_fire_after(fire)
        return fires

    def first_watermark(self, now: dt.datetime) -> dt.datetime:
        """Where a schedule seen for the first time at ``now`` starts."""
        latest = self.latest_fire(now, now - MAX_LOOKBACK)
        if latest is None:
            return now
        if latest > now - ON_TIME:
            return latest - _MICROSECOND  # due now: it runs
        return latest

    def idempotency_key(self, fire: dt.datetime) -> str:
        return f"periodic:{self.key}:{fire.astimezone(UTC).isoformat()}"


def parse(expr: t.Any, timezone: zoneinfo.ZoneInfo) -> tuple[str, Cron]:
    """``(normalised expression, its fire times in timezone)``; ValueError if bad."""
    if not isinstance(expr, str):
        raise TypeError(f"a schedule must be a cron expression string, got {expr!r}")
    normalised = " ".join(expr.split())
    if len(normalised) > 200:
        raise ValueError(f"cron expression {expr!r} is longer than 200 characters")
    return normalised, Cron(expr, timezone)


def _zone(timezone: t.Any) -> zoneinfo.ZoneInfo:
    if timezone is UTC:
        timezone = "UTC"
    if isinstance(timezone, zoneinfo.ZoneInfo):
        return timezone
    if not isinstance(timezone, str):
        raise TypeError(
            f"timezone must be a zoneinfo name such as 'Europe/Paris', got {timezone!r}"
        )
    try:
        return zoneinfo.ZoneInfo(timezone)
    except (ValueError, KeyError):
        raise ValueError(f"unknown time zone {timezone!r}: give a zoneinfo name") from None


def make_schedule(
    handlers: t.Mapping[str, HandlerSpec],
    schedule: t.Any,
    job_type: str,
    *,
    key: str | None = None,
    payload: dict[str, t.Any] | None = None,
    timezone: t.Any = "UTC",
    queue: str | None = None,
    priority: int | None = None,
) -> Schedule:
    """Validate everything about a schedule; raise before anything is registered."""
    if job_type not in handlers:
        known = ", ".join(sorted(handlers)) or "none"
        raise LookupError(
            f"no handler registered for job type {job_type!r}; register the handler before"
            f" its schedule (registered: {known})"
        )
    zone = _zone(timezone)
    cron, times = parse(schedule, zone)
    if payload is None:
        payload = {}
    text = payload_json.dumps_payload(payload)
    enqueue.check_strings(payload, text=text)
    payload = json.loads(text)  # validated, and a copy
    if queue is not None:
        enqueue.check_text(handlers_module.check_queue(queue), "queue")
    if priority is not None:
        enqueue.check_int32(handlers_module.check_priority(priority), "priority")
    if key is None:
        digest = hashlib.sha256(
            json.dumps([job_type, cron, zone.key, payload], sort_keys=True).encode()
        ).hexdigest()[:16]
        key = f"{job_type[:MAX_KEY_LENGTH - 17]}:{digest}"
    elif not isinstance(key, str) or not 0 < len(key) <= MAX_KEY_LENGTH:
        raise ValueError(
            f"key must be a string of 1 to {MAX_KEY_LENGTH} characters, got {key!r}"
        )
    else:
        enqueue.check_text(key, "key")
    spec = Schedule(key, job_type, cron, zone.key, payload, queue, priority, times)
    if spec.next_fire_after(dt.datetime.now(UTC)) is None:
        raise ValueError(f"cron expression {schedule!r} never fires")
    return spec


def register(
    handlers: t.Mapping[str, HandlerSpec],
    schedules: dict[str, Schedule],
    schedule: t.Any,
    job_type: str | None = None,
    **options: t.Any,
) -> t.Any:
    """``jobs.periodic``: add to ``schedules`` now, or return a decorator that
    does so for a function registered in ``handlers``."""
    if job_type is not None:
        if not isinstance(job_type, str):
            raise TypeError(f"job_type must be a string, got {job_type!r}")
        return _add(schedules, make_schedule(handlers, schedule, job_type, **options))
    if callable(schedule):
        raise TypeError("@jobs.periodic needs a schedule: @jobs.periodic('0 3 * * *')")

    def decorate(func: t.Callable[..., t.Any]) -> t.Callable[..., t.Any]:
        names = [name for name, spec in handlers.items() if spec.func is func]
        if not names:
            raise LookupError(
                f"{getattr(func, '__qualname__', func)!r} is not a registered handler:"
                " put @jobs.periodic above @jobs.handler"
            )
        if len(names) > 1:
            raise ValueError(
                f"{names} share one function; name the job type: jobs.periodic(schedule, name)"
            )
        _add(schedules, make_schedule(handlers, schedule, names[0], **options))
        return func

    return decorate


def _add(schedules: dict[str, Schedule], spec: Schedule) -> Schedule:
    if spec.key in schedules:
        raise ValueError(
            f"a schedule with key {spec.key!r} is already registered"
            " (give a different key= to run the same job on two schedules)"
        )
    schedules[spec.key] = spec
    return spec


# -- the tick ---------------------------------------------------------------------------

# One tick at a time per app in this process; keyed by pid too, because a lock
# held by a thread at fork time would stay held in the child forever.
_tick_locks: weakref.WeakKeyDictionary[State, tuple[int, threading.Lock]] = (
    weakref.WeakKeyDictionary()
)
_tick_locks_guard = threading.Lock()


def _tick_lock(state: State) -> threading.Lock:
    pid = os.getpid()
    with _tick_locks_guard:
        entry = _tick_locks.get(state)
        if entry is None or entry[0] != pid:
            entry = _tick_locks[state] = (pid, threading.Lock())
    return entry[1]


def tick(state: State) -> int:
    """Enqueue the jobs every registered schedule owes at ``state.now()``; returns how many.

    Safe to run in any number of processes at once: see the module docstring.
    """
    schedules = list(state.ext.schedules.values())
    if not schedules:
        return 0
    lock = _tick_lock(state)
    if not lock.acquire(blocking=False):
        return 0  # this process is still in the previous tick
    try:
        return _tick(state, schedules)
    finally:
        lock.release()


def _tick(state: State, schedules: list[Schedule]) -> int:
    now = state.now().astimezone(UTC)
    store = state.store
    table = define_table(state.db.metadata)
    marks = store.schedule_marks(table, [spec.key for spec in schedules])
    enqueued = 0
    for spec in schedules:
        described = {"cron": spec.cron, "timezone": spec.timezone, "updated_at": now}
        last = marks.get(spec.key)
        if last is None:
            last = spec.first_watermark(now)
            store.start_schedule(table, {"key": spec.key, "last_fire_at": last, **described})
        ids = []
        for fire in spec.due(last, now):
            job = enqueue.job_values(
                state, spec.job_type, run_at=fire, queue=spec.queue, priority=spec.priority
            )
            job["created_at"] = job["updated_at"] = now
            job["payload"] = spec.payload
            job["idempotency_key"] = spec.idempotency_key(fire)
            job_id = store.fire_schedule(table, spec.key, fire, described, job)
            if job_id is not None:
                ids.append(job_id)
        if ids:  # each committed
            signals.send(signals.job_enqueued, state.app, job_type=spec.job_type,
                         job_ids=ids, job=None)
            enqueued += len(ids)
    return enqueued


# -- reading ---------------------------------------------------------------------------


def describe(state: State) -> list[dict[str, t.Any]]:
    """Every registered schedule with its last and next fire times (ISO 8601, UTC)."""
    schedules = sorted(state.ext.schedules.values(), key=lambda spec: spec.key)
    if not schedules:
        return []
    now = state.now().astimezone(UTC)
    marks = state.store.schedule_marks(
        define_table(state.db.metadata), [spec.key for spec in schedules]
    )
    out = []
    for spec in schedules:
        last = marks.get(spec.key)
        upcoming = spec.next_fire_after(now if last is None else max(now, last))
        out.append({
            "key": spec.key,
            "job_type": spec.job_type,
            "cron": spec.cron,
            "timezone": spec.timezone,
            "payload": json.loads(json.dumps(spec.payload)),
            "queue": spec.queue,
            "priority": spec.priority,
            "last_fire_at": None if last is None else last.isoformat(),
            "next_fire_at": None if upcoming is None else upcoming.isoformat(),
        })
    return out
