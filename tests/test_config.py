"""Configuration: defaults and validation (no database needed)."""

from __future__ import annotations

import typing as t

import pytest

from flask_durable_jobs import ConfigError
from flask_durable_jobs.config import load


def test_defaults() -> None:
    s = load({})
    assert (s.scheduler, s.poll_interval, s.sweep_interval, s.lease_seconds) == (
        True, 1.0, 30.0, 60.0)
    assert (s.concurrency, s.batch_size, s.queues, s.shutdown_timeout) == (4, 500, None, 10.0)
    assert (s.backoff_base, s.backoff_factor, s.backoff_max, s.backoff_jitter) == (
        30.0, 4.0, 3600.0, 0.1)
    assert (s.retention_days, s.dead_retention_days) == (30.0, 90.0)
    assert (s.url_prefix, s.admin_token) == ("/admin/jobs", None)


def test_payload_size_limit() -> None:
    assert load({}).max_payload_bytes == 1024 * 1024
    assert load({"DURABLE_JOBS_MAX_PAYLOAD_BYTES": 4096}).max_payload_bytes == 4096


def test_health_thresholds() -> None:
    s = load({})
    assert (s.health_max_expired_leases, s.health_max_unwritten) == (0, 0)
    assert s.health_database_timeout == 2.0
    # unset, the grace is two sweep intervals
    assert s.health_expired_lease_grace == 60.0
    assert load({"DURABLE_JOBS_SWEEP_INTERVAL": 5}).health_expired_lease_grace == 10.0
    s = load({"DURABLE_JOBS_HEALTH_EXPIRED_LEASE_GRACE": 0, "DURABLE_JOBS_HEALTH_MAX_UNWRITTEN": 50,
              "DURABLE_JOBS_HEALTH_MAX_EXPIRED_LEASES": 3.0,
              "DURABLE_JOBS_HEALTH_DATABASE_TIMEOUT": 0.5})
    assert (s.health_expired_lease_grace, s.health_max_unwritten) == (0.0, 50)
    assert (s.health_max_expired_leases, s.health_database_timeout) == (3, 0.5)


def test_scheduler_is_off_under_testing_unless_named() -> None:
    assert load({"TESTING": True}).scheduler is False
    assert load({"TESTING": True, "DURABLE_JOBS_SCHEDULER": True}).scheduler is True
    assert load({"TESTING": False}).scheduler is True
    assert load({"DURABLE_JOBS_SCHEDULER": False}).scheduler is False


def test_ints_and_floats_and_queue_lists() -> None:
    s = load({"DURABLE_JOBS_POLL_INTERVAL": 2, "DURABLE_JOBS_LEASE_SECONDS": 0.5,
              "DURABLE_JOBS_CONCURRENCY": 8.0, "DURABLE_JOBS_QUEUES": " a, b ,a"})
    assert (s.poll_interval, s.lease_seconds, s.concurrency) == (2.0, 0.5, 8)
    assert s.queues == ("a", "b")
    assert load({"DURABLE_JOBS_QUEUES": ["x"]}).queues == ("x",)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("POLL_INTERVAL", -1, "greater than 0"),
        ("POLL_INTERVAL", 0, "greater than 0"),
        ("POLL_INTERVAL", "1", "must be a number, got str"),
        ("SWEEP_INTERVAL", True, "must be a number, got bool"),
        ("LEASE_SECONDS", float("nan"), "finite"),
        ("CONCURRENCY", 0, "at least 1"),
        ("CONCURRENCY", 2.5, "whole number"),
        ("BATCH_SIZE", "100", "integer"),
        ("SHUTDOWN_TIMEOUT", -0.1, "at least 0"),
        ("BACKOFF_FACTOR", 0.5, "at least 1"),
        ("BACKOFF_JITTER", 1.5, "below 1"),
        ("RETENTION_DAYS", 0, "greater than 0"),
        ("QUEUES", 5, "list of queue names"),
        ("QUEUES", "a,,b", "non-empty"),
        ("URL_PREFIX", "admin", "starting with '/'"),
        ("URL_PREFIX", "/admin/", "not ending"),
        ("ADMIN_TOKEN", "", "non-empty"),
        ("SCHEDULER", "yes", "True or False"),
        ("MAX_PAYLOAD_BYTES", 0, "at least 1"),
        ("MAX_PAYLOAD_BYTES", "1MB", "integer"),
        ("HEALTH_MAX_EXPIRED_LEASES", -1, "at least 0"),
        ("HEALTH_MAX_EXPIRED_LEASES", "5", "integer"),
        ("HEALTH_EXPIRED_LEASE_GRACE", -5, "at least 0"),
        ("HEALTH_EXPIRED_LEASE_GRACE", "60", "must be a number"),
        ("HEALTH_MAX_UNWRITTEN", 1.5, "whole number"),
        ("HEALTH_MAX_UNWRITTEN", True, "integer, got bool"),
        ("HEALTH_DATABASE_TIMEOUT", 0, "greater than 0"),
        ("HEALTH_DATABASE_TIMEOUT", float("inf"), "finite"),
    ],
)
def test_bad_values_name_the_key(key: str, value: t.Any, message: str) -> None:
    with pytest.raises(ConfigError, match=f"DURABLE_JOBS_{key} .*{message}") as info:
        load({f"DURABLE_JOBS_{key}": value})
    assert isinstance(info.value, ValueError)


def test_init_app_raises_on_bad_config() -> None:
    from flask import Flask
    from flask_sqlalchemy import SQLAlchemy

    from flask_durable_jobs import DurableJobs

    app = Flask("bad")
    app.config.update(SQLALCHEMY_DATABASE_URI="sqlite://", DURABLE_JOBS_POLL_INTERVAL=-5)
    db = SQLAlchemy(app)
    with pytest.raises(ConfigError, match="DURABLE_JOBS_POLL_INTERVAL"):
        DurableJobs(app, db=db)
    assert "durable_jobs" not in app.extensions
