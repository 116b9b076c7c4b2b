"""Controlling jobs from outside their handler: ``jobs.cancel()``,
``jobs.wait()`` and ``jobs.get_by_key()`` (the handler's side is
:mod:`.current`)."""

from __future__ import annotations

import math
import time
import typing as t

from .errors import JobNotFound
from .models import CANCELLED, TERMINAL

if t.TYPE_CHECKING:
    from .extension import State
    from .models import Job

#: Seconds between two reads of a waited-for job when no notification
#: came: the notification is a shortcut (a connection pooler in
#: transaction mode drops LISTEN), this read the safety net.
WAIT_RECHECK_SECONDS = 30.0


def cancel(state: State, job_id: int) -> Job:
    """Cancel a waiting job, or ask a running one to stop (it stays running)."""
    job = state.store.cancel(job_id, state.now())
    if job.status == CANCELLED and job.batch_id is not None:
        state.finish_batches([job.batch_id])
    return job


def wait(state: State, job_id: int, timeout: float | None = None) -> Job:
    """Block until the job is ``succeeded``, ``dead`` or ``cancelled``; return it.

    Raises ``TimeoutError`` after ``timeout`` seconds, and
    :class:`~flask_durable_jobs.JobNotFound` when the job does not exist (or
    is deleted meanwhile). On PostgreSQL it sleeps until the statement that
    ends the job notifies; elsewhere it looks again whenever the database
    file changes.
    """
    if isinstance(job_id, bool) or not isinstance(job_id, int):
        raise TypeError(f"job_id must be an integer, got {type(job_id).__name__}")
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, (int, float))
        or not math.isfinite(timeout) or timeout < 0
    ):
        raise ValueError(f"timeout must be a number of seconds >= 0 or None, got {timeout!r}")
    deadline = None if timeout is None else time.monotonic() + timeout
    store = state.store
    watcher = store.watch_ended(job_id)  # listening before the first read: nothing is missed
    try:
        while True:
            job = store.get(job_id)
            if job is None:
                raise JobNotFound(job_id)
            if job.status in TERMINAL:
                return job
            left = WAIT_RECHECK_SECONDS
            if deadline is not None:
                left = min(left, deadline - time.monotonic())
                if left <= 0:
                    raise TimeoutError(
                        f"job {job_id} did not end within {timeout:g} s (it is {job.status})"
                    )
            watcher.wait(left)
    finally:
        watcher.close()


def get_by_key(state: State, idempotency_key: str) -> Job | None:
    """The job enqueued with this idempotency key, or ``None``."""
    if not isinstance(idempotency_key, str) or not 0 < len(idempotency_key) <= 255:
        raise ValueError(
            f"idempotency_key must be a string of 1 to 255 characters, got {idempotency_key!r}"
        )
    return state.store.get_by_key(idempotency_key)
