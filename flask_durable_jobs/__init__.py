"""Durable background jobs for Flask, in the app's own SQL database."""

from __future__ import annotations

from .current import CurrentJob, current_job
from .errors import (
    Cancelled,
    ConfigError,
    Discard,
    DurableJobsError,
    InvalidTransition,
    JobNotFound,
    JobTimeout,
)
from .extension import DurableJobs
from .models import STATUSES, Job, Status
from .vault import SecretsUnavailable, job_secrets

__version__ = "0.1.0"

__all__ = [
    "STATUSES",
    "Cancelled",
    "ConfigError",
    "CurrentJob",
    "Discard",
    "DurableJobs",
    "DurableJobsError",
    "InvalidTransition",
    "Job",
    "JobNotFound",
    "JobTimeout",
    "SecretsUnavailable",
    "Status",
    "__version__",
    "current_job",
    "job_secrets",
]
