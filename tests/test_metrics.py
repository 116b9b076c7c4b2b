"""Prometheus metrics (``DURABLE_JOBS_METRICS``), on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import gc
import logging
import sys
import typing as t

import pytest
import sqlalchemy as sa
from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from flask_durable_jobs import Discard, DurableJobs, config, signals
from flask_durable_jobs.errors import ConfigError
from flask_durable_jobs.periodic import tick
from flask_durable_jobs.store import Store
from tests.helpers import close

prometheus_client = pytest.importorskip("prometheus_client")
from prometheus_client import CollectorRegistry, Counter, generate_latest  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture(autouse=True)
def _metrics_on(request: pytest.FixtureRequest, registry: CollectorRegistry) -> None:
    # Autouse fixtures run before the app fixture, which reads this marker.
    request.node.add_marker(pytest.mark.config(DURABLE_JOBS_METRICS=registry))


def _discard(payload: dict[str, t.Any]) -> t.NoReturn:
    raise Discard("no")


def _fail(payload: dict[str, t.Any]) -> t.NoReturn:
    raise RuntimeError("boom")


@pytest.fixture
def handlers(jobs: DurableJobs) -> DurableJobs:
    jobs.handler("t.ok")(lambda payload: payload)
    # Retried once at once, then dead.
    jobs.handler("t.fail", max_attempts=2, backoff=lambda attempt: 0)(_fail)
    jobs.handler("t.discard")(_discard)
    return jobs


def scrape(registry: CollectorRegistry) -> Samples:
    """Every sample in the text exposition, by (name, sorted labels)."""
    text = generate_latest(registry).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def test_counters_and_run_time(
    app: Flask, handlers: DurableJobs, registry: CollectorRegistry
) -> None:
    handlers.enqueue("t.ok", {"n": 1})
    handlers.enqueue_many("t.ok", [{"n": 2}, {"n": 3}])
    handlers.enqueue("t.fail", {})
    handlers.enqueue("t.discard", {})
    counts = handlers.drain()
    # t.fail is claimed twice: retried, then dead.
    assert counts == {"claimed": 6, "succeeded": 3, "retried": 1, "dead": 2}

    samples = scrape(registry)
    assert value(samples, "durable_jobs_enqueued_total", job_type="t.ok") == 3
    assert value(samples, "durable_jobs_enqueued_total", job_type="t.fail") == 1
    finished = "durable_jobs_finished_total"
    assert value(samples, finished, job_type="t.ok", outcome="succeeded") == 3
    assert value(samples, finished, job_type="t.fail", outcome="retried") == 1
    assert value(samples, finished, job_type="t.fail", outcome="dead") == 1
    assert value(samples, finished, job_type="t.discard", outcome="dead") == 1
    assert value(samples, finished, job_type="t.ok", outcome="dead") is None
    assert value(samples, "durable_jobs_run_seconds_count", job_type="t.ok") == 3
    assert value(samples, "durable_jobs_run_seconds_count", job_type="t.fail") == 2
    assert value(samples, "durable_jobs_run_seconds_bucket", job_type="t.ok", le="3600.0") == 3
    run_sum = value(samples, "durable_jobs_run_seconds_sum", job_type="t.ok")
    assert run_sum is not None and 0 <= run_sum < 5


def test_enqueued_by_batch_periodic_and_completion(
    app: Flask, handlers: DurableJobs, registry: CollectorRegistry
) -> None:
    """Each job is counted under its own type, however it was enqueued."""
    handlers.periodic("*/5 * * * * *", "t.ok", key="often")
    state = app.extensions["durable_jobs"]
    state.clock = lambda: dt.datetime(2026, 1, 1, 12, 0, 10, 500000, tzinfo=dt.timezone.utc)
    assert tick(state) == 1  # 12:00:10, half a second old
    handlers.enqueue_batch([("t.ok", {}), ("t.discard", {}), ("t.ok", {})],
                           on_complete="t.fail")
    samples = scrape(registry)
    assert value(samples, "durable_jobs_enqueued_total", job_type="t.ok") == 3
    assert value(samples, "durable_jobs_enqueued_total", job_type="t.discard") == 1
    assert value(samples, "durable_jobs_enqueued_total", job_type="t.fail") is None
    handlers.drain()  # the batch ends: its completion job is enqueued
    samples = scrape(registry)
    assert value(samples, "durable_jobs_enqueued_total", job_type="t.fail") == 1


def test_rescued(app: Flask, handlers: DurableJobs, registry: CollectorRegistry) -> None:
    job = handlers.enqueue("t.ok", {})
    st = app.extensions["durable_jobs"]
    now = st.now()
    st.store.claim(job_types=["t.ok"], queues=None, limit=1, now=now,
                   lease_until=now + dt.timedelta(seconds=60), token="a" * 32, worker_id="w1")
    st.clock = lambda: now + dt.timedelta(seconds=61)
    assert handlers.sweep_orphans() == 1
    assert handlers.get(job.id).status == "retrying"  # type: ignore[union-attr]
    samples = scrape(registry)
    assert value(samples, "durable_jobs_rescued_total", job_type="t.ok", status="retrying") == 1


def test_backlog_gauges(app: Flask, handlers: DurableJobs, registry: CollectorRegistry) -> None:
    samples = scrape(registry)
    assert value(samples, "durable_jobs_due_jobs") == 0
    assert value(samples, "durable_jobs_oldest_due_age_seconds") == 0

    now = dt.datetime.now(dt.timezone.utc)
    handlers.enqueue("t.ok", {})
    handlers.enqueue("t.ok", {}, run_at=now - dt.timedelta(minutes=10))
    handlers.enqueue("t.ok", {}, delay=3600)  # not due yet
    samples = scrape(registry)
    assert value(samples, "durable_jobs_due_jobs") == 2
    age = value(samples, "durable_jobs_oldest_due_age_seconds")
    assert age is not None and 600 <= age < 700


def test_backlog_failure_leaves_gauges_out(
    app: Flask,
    handlers: DurableJobs,
    registry: CollectorRegistry,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    handlers.enqueue("t.ok", {})

    def broken(self: Store, now: dt.datetime) -> t.NoReturn:
        raise sa.exc.OperationalError("SELECT", {}, Exception("connection refused"))

    monkeypatch.setattr(Store, "due_backlog", broken)
    with caplog.at_level(logging.WARNING, logger="flask_durable_jobs"):
        samples = scrape(registry)
    assert value(samples, "durable_jobs_due_jobs") is None
    assert value(samples, "durable_jobs_enqueued_total", job_type="t.ok") == 1
    [record] = [r for r in caplog.records if r.name == "flask_durable_jobs"]
    assert "due backlog" in record.getMessage() and record.exc_info is not None


# -- several apps, registries, configuration ---------------------------------------------


def second_app(database_url: str, db: SQLAlchemy, jobs: DurableJobs, **config: t.Any) -> Flask:
    app = Flask("second_app")
    app.config.update(
        SQLALCHEMY_DATABASE_URI=database_url, DURABLE_JOBS_SCHEDULER=False, **config
    )
    db.init_app(app)
    jobs.init_app(app, db=db)
    return app


def dispose(app: Flask, jobs: DurableJobs, db: SQLAlchemy) -> None:
    with app.app_context():
        close(jobs, db)


def test_two_apps_share_one_registry(
    app: Flask, handlers: DurableJobs, db: SQLAlchemy, database_url: str,
    registry: CollectorRegistry,
) -> None:
    other = second_app(database_url, db, handlers, DURABLE_JOBS_METRICS=registry)
    try:
        handlers.enqueue("t.ok", {})
        with other.app_context():
            handlers.enqueue("t.ok", {})
            handlers.drain()
        samples = scrape(registry)
        # Counts from both apps add up; the one database is counted once.
        assert value(samples, "durable_jobs_enqueued_total", job_type="t.ok") == 2
        assert value(
            samples, "durable_jobs_finished_total", job_type="t.ok", outcome="succeeded"
        ) == 2
        assert value(samples, "durable_jobs_due_jobs") == 0
        handlers.enqueue("t.ok", {})
        assert value(scrape(registry), "durable_jobs_due_jobs") == 1
    finally:
        dispose(other, handlers, db)


def test_apps_with_their_own_registries(
    app: Flask, handlers: DurableJobs, db: SQLAlchemy, database_url: str,
    registry: CollectorRegistry,
) -> None:
    own = CollectorRegistry()
    other = second_app(database_url, db, handlers, DURABLE_JOBS_METRICS=own)
    try:
        with other.app_context():
            handlers.enqueue("t.ok", {})
        assert value(scrape(own), "durable_jobs_enqueued_total", job_type="t.ok") == 1
        assert value(scrape(registry), "durable_jobs_enqueued_total", job_type="t.ok") is None
    finally:
        dispose(other, handlers, db)


def test_true_uses_the_default_registry_once(
    database_url: str, db: SQLAlchemy, jobs: DurableJobs
) -> None:
    jobs.handler("t.ok")(lambda payload: payload)
    apps = [second_app(database_url, db, jobs, DURABLE_JOBS_METRICS=True) for _ in range(2)]
    try:
        with apps[0].app_context():
            db.create_all()
        before = prometheus_client.REGISTRY.get_sample_value(
            "durable_jobs_enqueued_total", {"job_type": "t.ok"}
        ) or 0
        for app in apps:
            with app.app_context():
                jobs.enqueue("t.ok", {})
        after = prometheus_client.REGISTRY.get_sample_value(
            "durable_jobs_enqueued_total", {"job_type": "t.ok"}
        )
        assert after == before + 2
    finally:
        for app in apps:
            dispose(app, jobs, db)


def test_receivers_go_with_the_app(
    database_url: str, db: SQLAlchemy, jobs: DurableJobs, registry: CollectorRegistry
) -> None:
    gc.collect()  # apps of earlier tests, and their receivers
    before = len(signals.job_succeeded.receivers)
    app = second_app(database_url, db, jobs, DURABLE_JOBS_METRICS=registry)
    assert len(signals.job_succeeded.receivers) == before + 1
    dispose(app, jobs, db)
    del app
    gc.collect()
    assert len(signals.job_succeeded.receivers) == before


def test_name_taken_by_something_else(
    database_url: str, db: SQLAlchemy, jobs: DurableJobs, registry: CollectorRegistry
) -> None:
    Counter("durable_jobs_rescued", "not ours", registry=registry)
    with pytest.raises(ConfigError, match=r"DURABLE_JOBS_METRICS.*durable_jobs_rescued"):
        second_app(database_url, db, jobs, DURABLE_JOBS_METRICS=registry)
    # Nothing of ours was left registered half-way.
    assert "durable_jobs_enqueued" not in generate_latest(registry).decode()


@pytest.mark.parametrize("setting", ["yes", 1, object()])
def test_bad_setting_names_the_key(setting: t.Any) -> None:
    with pytest.raises(ConfigError, match="DURABLE_JOBS_METRICS must be True, False or"):
        config.load({"DURABLE_JOBS_METRICS": setting})


def test_off_by_default_and_without_prometheus(monkeypatch: pytest.MonkeyPatch) -> None:
    assert config.load({}).metrics is False
    monkeypatch.setitem(sys.modules, "prometheus_client.registry", None)
    assert config.load({"DURABLE_JOBS_METRICS": False}).metrics is False
    needs = r"DURABLE_JOBS_METRICS needs prometheus_client.*\[metrics\]"
    with pytest.raises(ConfigError, match=needs):
        config.load({"DURABLE_JOBS_METRICS": True})
