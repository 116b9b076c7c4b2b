"""Durable background jobs for Flask, in the app's own SQL database."""

from __future__ import annotations

from .errors import (
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
    "ConfigError",
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
    "job_secrets",
]
