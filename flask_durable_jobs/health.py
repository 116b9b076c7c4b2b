"""The health report of one process: its scheduler and the due backlog.

``GET {prefix}/health`` (admin.py) and ``flask jobs health`` (cli.py) both
answer :func:`health_report`; neither layer decides anything itself.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import typing as t

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


def health_report(state: State, *, max_due_age: int | None = None) -> dict[str, t.Any]:
    """This process's scheduler and the due backlog, with a ``healthy`` verdict.

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
    unhealthy when the scheduler is ``stalled``, ``dead`` or ``stopped``, when
    the backlog cannot be read, or when the oldest due job has waited longer
    than ``max_due_age`` seconds (given). ``problems`` says why, in words.

    The tick proves that the scheduler fires, not that a processor loop
    already inside a slow statement moves on: ``max_due_age`` catches that,
    and work stuck anywhere, from any process.
    """
    settings = state.settings
    now = dt.datetime.now(UTC)
    stall_after = max(HEALTH_STALL_INTERVALS * settings.poll_interval, HEALTH_MIN_STALL_SECONDS)
    problems: list[str] = []
    scheduler = state.scheduler
    if scheduler is not None:
        last = scheduler.last_tick or scheduler.started_at
        silent = 0.0 if last is None else (now - last).total_seconds()
        if not scheduler.running:
            status = "dead"
            problems.append("the scheduler started in this process is no longer running")
        elif silent > stall_after:
            status = "stalled"
            problems.append(
                f"the scheduler's due-job tick last fired {silent:.1f} s ago"
                f" (stalled after {stall_after:g} s)"
            )
        else:
            status = "running"
    elif not settings.scheduler:
        status = "disabled"
    elif state.start_policy in (NEVER, AFTER_FORK):
        status = "not_started"
    else:
        status = "stopped"
        problems.append("the scheduler of this process was stopped")

    due_count: int | None = None
    oldest: float | None = None
    try:
        due_count, oldest = state.store.due_backlog(state.now())
    except Exception as exc:
        logger.warning("health: reading the due backlog failed", exc_info=True)
        problems.append(
            f"the due backlog could not be read ({type(exc).__name__}); the log has the details"
        )
    if max_due_age is not None and oldest is not None and oldest > max_due_age:
        problems.append(
            f"the oldest due job has waited {oldest:.1f} s (more than max_due_age,"
            f" {max_due_age} s)"
        )

    return {
        "healthy": not problems,
        "problems": problems,
        "scheduler": status,
        "pid": os.getpid(),
        "worker_id": state.runner.worker_id if state.runner_started else None,
        "started_at": _iso(None if scheduler is None else scheduler.started_at),
        "last_tick": _iso(None if scheduler is None else scheduler.last_tick),
        "last_sweep": _iso(None if scheduler is None else scheduler.last_sweep),
        "stall_after_seconds": stall_after,
        "due_count": due_count,
        "oldest_due_age_seconds": oldest,
        "checked_at": now.isoformat(),
    }


def _iso(value: dt.datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat()
