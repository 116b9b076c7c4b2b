"""The health report of one process: its scheduler, its database and the
work it and the others hold.

``GET {prefix}/health`` (admin.py) and ``flask jobs health`` (cli.py) both
answer :func:`health_report`; neither layer decides anything itself.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
import typing as t
import weakref

from . import faults
from . import processes as processes_module
from .models import UTC
from .scheduler import AFTER_FORK, NEVER

if t.TYPE_CHECKING:
    from .extension import State

logger = logging.getLogger("flask_durable_jobs")

#: A running scheduler whose due-job tick has not fired for this many poll
#: intervals, and at least :data:`HEALTH_MIN_STALL_SECONDS`, is stalled.
HEALTH_STALL_INTERVALS = 3
HEALTH_MIN_STALL_SECONDS = 5.0

#: The values of the report's ``scheduler`` field.
SCHEDULER_STATES = ("running", "stalled", "dead", "stopped", "disabled", "not_started")


class DatabaseProbe:
    """Whether an app's database answers, asked on a thread of its own.

    A probe waits at most ``timeout`` seconds: a database cut off by the
    network may leave a connection attempt hanging far longer, and a health
    check that hangs tells the load balancer nothing. A question still
    unanswered is not asked again beside it; the next probes report it.
    Failures are logged once a minute per kind, one line each, without a
    traceback: a probe every few seconds during an outage would otherwise
    fill the log.
    """

    def __init__(self) -> None:
        self.messages = faults.RateLimitedLog()
        self._lock = threading.Lock()
        self._asking: threading.Thread | None = None
        self._error: str | None = None

    def check(self, state: State) -> str | None:
        """``None`` when the database answered within the timeout, else why not."""
        timeout = state.settings.health_database_timeout
        with self._lock:
            thread = self._asking
            if thread is None or not thread.is_alive():
                thread = self._asking = threading.Thread(
                    target=self._ask, args=(state,), name="durable-jobs-health", daemon=True
                )
                thread.start()
        thread.join(timeout)
        error: str | None
        if thread.is_alive():
            error = f"TimeoutError: no answer within {timeout:g} s"
        else:
            error = self._error
        if error is not None:
            self.problem("database", "the database does not answer (%s)", error)
        return error

    def _ask(self, state: State) -> None:
        try:
            state.store.ping()
        except Exception as exc:
            self._error = faults.summary(exc)
        else:
            self._error = None

    def problem(self, kind: str, message: str, *args: t.Any) -> None:
        self.messages.log(("health", kind), logging.WARNING, "durable jobs health: " + message,
                          *args)


#: Each app's probe, made on its first health report.
_probes: weakref.WeakKeyDictionary[State, DatabaseProbe] = weakref.WeakKeyDictionary()
_probes_lock = threading.Lock()


def _probe(state: State) -> DatabaseProbe:
    with _probes_lock:
        probe = _probes.get(state)
        if probe is None:
            probe = _probes[state] = DatabaseProbe()
        return probe


def health_report(state: State, *, max_due_age: int | None = None) -> dict[str, t.Any]:
    """This process's scheduler, the database and the work held, with a
    ``healthy`` verdict and, in ``problems``, why not in words.

    ``scheduler`` is one of:

    * ``running``: its APScheduler runs and the due-job tick fired recently;
    * ``stalled``: its APScheduler runs but the tick has not fired for
      ``stall_after_seconds``;
    * ``dead``: it was started here and its APScheduler no longer runs;
    * ``stopped``: it should run here (it started at ``init_app``) and was
      stopped (``jobs.stop()``, or the interpreter is exiting);
    * ``disabled``: ``DURABLE_JOBS_SCHEDULER = False`` and none was started;
    * ``not_started``: a process that never runs it (a ``flask`` command such
      as ``flask jobs health`` itself, gunicorn's master before the fork).

    The last two are healthy: nothing here is meant to tick. The process is
    also unhealthy when:

    * the database does not answer within ``DURABLE_JOBS_HEALTH_DATABASE_TIMEOUT``
      (``database.ok`` is false; nothing else is read from it then);
    * more than ``DURABLE_JOBS_HEALTH_MAX_EXPIRED_LEASES`` running jobs have
      had an expired lease for longer than
      ``DURABLE_JOBS_HEALTH_EXPIRED_LEASE_GRACE`` (the sweep should have
      recovered them: no process sweeps, or the sweep fails);
    * this process keeps more than ``DURABLE_JOBS_HEALTH_MAX_UNWRITTEN``
      finished outcomes because the database did not take them;
    * the oldest due job has waited longer than ``max_due_age`` seconds (given).

    The tick proves that the scheduler fires, not that a processor loop
    already inside a slow statement moves on: ``max_due_age`` catches that,
    and work stuck anywhere, from any process.
    """
    settings = state.settings
    probe = _probe(state)
    now = dt.datetime.now(UTC)
    stall_after = max(HEALTH_STALL_INTERVALS * settings.poll_interval, HEALTH_MIN_STALL_SECONDS)
    problems: list[str] = []
    status = _scheduler_status(state, now, stall_after, problems)

    report: dict[str, t.Any] = {
        "healthy": False,
        "problems": problems,
        "scheduler": status,
        "pid": os.getpid(),
        "worker_id": state.runner.worker_id if state.runner_started else None,
        "started_at": _iso(None if state.scheduler is None else state.scheduler.started_at),
        "last_tick": _iso(None if state.scheduler is None else state.scheduler.last_tick),
        "last_sweep": _iso(None if state.scheduler is None else state.scheduler.last_sweep),
        "stall_after_seconds": stall_after,
        "database": {"ok": True, "error": None},
        "due_count": None,
        "oldest_due_age_seconds": None,
        "expired_leases": None,
        "stale_expired_leases": None,
        "oldest_expired_lease_age_seconds": None,
        "expired_lease_grace_seconds": settings.health_expired_lease_grace,
        "silent_workers": None,
        "processes": None,
        "unseen_processes": None,
        "unwritten_outcomes": state.runner.unwritten_outcomes() if state.runner_started else 0,
        "checked_at": now.isoformat(),
    }
    error = probe.check(state)
    if error is not None:
        report["database"] = {"ok": False, "error": error}
        problems.append(f"the database does not answer ({error})")
    else:
        _read_database(state, probe, report, max_due_age)

    unwritten = report["unwritten_outcomes"]
    if unwritten > settings.health_max_unwritten:
        problems.append(
            f"{unwritten} finished jobs wait for the database to take their outcome (more than"
            f" DURABLE_JOBS_HEALTH_MAX_UNWRITTEN, {settings.health_max_unwritten})"
        )
    report["healthy"] = not problems
    return report


def _scheduler_status(
    state: State, now: dt.datetime, stall_after: float, problems: list[str]
) -> str:
    scheduler = state.scheduler
    if scheduler is not None:
        last = scheduler.last_tick or scheduler.started_at
        silent = 0.0 if last is None else (now - last).total_seconds()
        if not scheduler.running:
            problems.append("the scheduler started in this process is no longer running")
            return "dead"
        if silent > stall_after:
            problems.append(
                f"the scheduler's due-job tick last fired {silent:.1f} s ago"
                f" (stalled after {stall_after:g} s)"
            )
            return "stalled"
        return "running"
    if not state.settings.scheduler:
        return "disabled"
    if state.start_policy in (NEVER, AFTER_FORK):
        return "not_started"
    problems.append("the scheduler of this process was stopped")
    return "stopped"


def _read_database(
    state: State, probe: DatabaseProbe, report: dict[str, t.Any], max_due_age: int | None
) -> None:
    """The due backlog and the expired leases, into ``report``; a query that
    fails is a problem and one log line a minute."""
    settings = state.settings
    problems: list[str] = report["problems"]
    try:
        now = state.now()  # the database's clock judges leases and due times
        due_count, oldest = state.store.due_backlog(now)
        grace = dt.timedelta(seconds=settings.health_expired_lease_grace)
        leases = state.store.expired_leases(now, now - grace)
        records = processes_module.processes(state)
    except Exception as exc:
        error = faults.summary(exc)
        probe.problem("read", "reading the backlog and leases failed (%s)", error)
        problems.append(f"the backlog and leases could not be read ({error})")
        return
    report.update(
        due_count=due_count,
        oldest_due_age_seconds=oldest,
        expired_leases=leases.count,
        stale_expired_leases=leases.stale,
        oldest_expired_lease_age_seconds=leases.oldest_age,
        silent_workers=[
            {"worker_id": worker, "lease_expired_seconds": age}
            for worker, age in sorted(leases.silent_workers.items())
        ],
    )
    # The registry: a record not renewed within a lease belongs to a process
    # that froze or died (it is removed after three).
    lease = settings.lease_seconds
    report.update(
        processes=len(records),
        unseen_processes=[
            {"id": record["id"], "last_seen_seconds": max(0.0, seen)}
            for record in records
            if (seen := (now - record["last_seen"]).total_seconds()) > lease
        ],
    )
    if max_due_age is not None and oldest is not None and oldest > max_due_age:
        problems.append(
            f"the oldest due job has waited {oldest:.1f} s (more than max_due_age,"
            f" {max_due_age} s)"
        )
    if leases.stale > settings.health_max_expired_leases:
        problems.append(
            f"{leases.stale} running jobs have had an expired lease for longer than"
            f" {settings.health_expired_lease_grace:g} s, the oldest for"
            f" {leases.oldest_age:.1f} s: the sweep has not recovered them (more than"
            f" DURABLE_JOBS_HEALTH_MAX_EXPIRED_LEASES, {settings.health_max_expired_leases})"
        )


def _iso(value: dt.datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat()
