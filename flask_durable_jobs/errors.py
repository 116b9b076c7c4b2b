"""Exceptions raised by flask-durable-jobs.

Every exception the library raises on purpose derives from
:class:`DurableJobsError`, and each subclass says what went wrong and what to
do about it.
"""

from __future__ import annotations


class DurableJobsError(Exception):
    """Base class of the library's own exceptions."""


class ConfigError(DurableJobsError, ValueError):
    """A ``DURABLE_JOBS_*`` setting has a bad value; the message names the key."""


class Discard(DurableJobsError):
    """Raise from a handler to send the job to ``dead`` at once, without retries.

    Use it for failures that retrying cannot fix (a deleted record, invalid
    input). The message becomes the job's ``last_error``.
    """


class JobNotFound(DurableJobsError, LookupError):
    """No job has this id (it may have been deleted or pruned)."""

    def __init__(self, job_id: int) -> None:
        super().__init__(f"no job with id {job_id}")
        self.job_id = job_id


class InvalidTransition(DurableJobsError):
    """The job's status does not allow the requested action."""

    def __init__(self, job_id: int, status: str, action: str, allowed: tuple[str, ...]) -> None:
        allowed_text = " or ".join(allowed)
        super().__init__(
            f"cannot {action} job {job_id}: its status is {status!r}"
            f" ({action} needs {allowed_text})"
        )
        self.job_id = job_id
        self.status = status
        self.action = action
        self.allowed = allowed


class JobTimeout(DurableJobsError):
    """An attempt ran longer than its handler's ``timeout``."""


class Cancelled(DurableJobsError):
    """Raised by ``current_job().check_cancelled()`` once a cancel of the
    running job was requested (``jobs.cancel(id)``).

    A handler may raise it itself too: the job ends ``cancelled``, never
    retried, with the message as its ``last_error``.
    """
