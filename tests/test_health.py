"""``GET {prefix}/health`` and ``flask jobs health``, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import json
import logging
import socket
import threading
import typing as t
import uuid

import pytest
import sqlalchemy as sa
from flask import Flask

from flask_durable_jobs import DurableJobs, schemas
from flask_durable_jobs.scheduler import NEVER
from flask_durable_jobs.testing import move_time
from tests.helpers import wait_for

PREFIX = "/admin/jobs"
TOKEN = "health-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
KEYS = {
    "healthy", "problems", "scheduler", "pid", "worker_id", "started_at", "last_tick",
    "last_sweep", "stall_after_seconds", "due_count", "oldest_due_age_seconds", "checked_at",
    "database", "expired_leases", "stale_expired_leases", "oldest_expired_lease_age_seconds",
    "expired_lease_grace_seconds", "silent_workers", "unwritten_outcomes",
    "processes", "unseen_processes",
}


@pytest.fixture
def api(app: Flask, client: t.Any, jobs: DurableJobs) -> t.Any:
    jobs.handler("t.ok")(lambda payload: payload)
    jobs.admin_authorizer(lambda: True)
    return client


def state(app: Flask) -> t.Any:
    return app.extensions["durable_jobs"]


def settle(scheduler: t.Any) -> None:
    """Wait until the first ticks have fired and finished.

    A tick still in flight when the scheduler is stopped may open a database
    connection after the test's teardown; waiting keeps each test to itself.
    """
    wait_for("the first tick and sweep",
             lambda: scheduler.last_tick is not None and scheduler.last_sweep is not None,
             10, interval=0.02)
    wait_for("the ticks in flight to end", lambda: not any(
        thread.name == "durable-jobs-tick" and thread.is_alive()
        for thread in threading.enumerate()
    ), 10, interval=0.02)


def check_schema(client: t.Any, response: t.Any) -> None:
    """The body matches the OpenAPI document's schema for its status."""
    jsonschema = pytest.importorskip("jsonschema")
    doc = client.get(f"{PREFIX}/openapi.json").get_json()
    declared = doc["paths"][f"{PREFIX}/health"]["get"]["responses"][str(response.status_code)]
    if "$ref" in declared:
        declared = doc["components"]["responses"][declared["$ref"].rsplit("/", 1)[1]]
    schema = declared["content"]["application/json"]["schema"]
    jsonschema.Draft202012Validator({**doc, **schema}).validate(response.get_json())


def parse_time(text: str) -> dt.datetime:
    value = dt.datetime.fromisoformat(text)
    assert value.utcoffset() == dt.timedelta(0)
    return value


# -- the scheduler -----------------------------------------------------------------


def test_running_scheduler_is_healthy(app: Flask, api: t.Any, jobs: DurableJobs) -> None:
    jobs.start()
    try:
        scheduler = state(app).scheduler
        settle(scheduler)
        response = api.get(f"{PREFIX}/health")
        assert response.status_code == 200
        body = response.get_json()
        assert set(body) == KEYS
        assert body["healthy"] is True and body["problems"] == []
        assert body["scheduler"] == "running"
        assert body["worker_id"] == state(app).runner.worker_id
        started = parse_time(body["started_at"])
        assert started <= parse_time(body["last_tick"]) <= parse_time(body["checked_at"])
        assert started <= parse_time(body["last_sweep"])
        assert body["stall_after_seconds"] == 5.0  # max(3 x 1 s poll, 5 s)
        assert body["due_count"] == 0 and body["oldest_due_age_seconds"] is None
        assert body["database"] == {"ok": True, "error": None}
        assert body["expired_leases"] == 0 and body["stale_expired_leases"] == 0
        assert body["oldest_expired_lease_age_seconds"] is None
        assert body["expired_lease_grace_seconds"] == 60.0  # two 30 s sweep intervals
        assert body["silent_workers"] == [] and body["unwritten_outcomes"] == 0
        check_schema(api, response)
    finally:
        jobs.stop()


def test_stalled_tick_is_503_and_recovers(app: Flask, api: t.Any, jobs: DurableJobs) -> None:
    jobs.start()
    try:
        scheduler = state(app).scheduler
        settle(scheduler)
        # The APScheduler thread stops firing (as if stuck) and its last tick is old.
        scheduler._aps.pause()
        scheduler.last_tick = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=10)
        response = api.get(f"{PREFIX}/health")
        assert response.status_code == 503
        body = response.get_json()
        assert body["healthy"] is False and body["scheduler"] == "stalled"
        [problem] = body["problems"]
        assert "tick" in problem and "600" in problem
        check_schema(api, response)

        # Resumed, it runs the missed tick at once.
        scheduler._aps.resume()
        wait_for("health to answer 200",
                 lambda: api.get(f"{PREFIX}/health").status_code == 200, 10, interval=0.02)
        settle(scheduler)
    finally:
        jobs.stop()


@pytest.fixture
def dead_scheduler(
    app: Flask, jobs: DurableJobs, monkeypatch: pytest.MonkeyPatch
) -> t.Iterator[None]:
    """The scheduler started in this process, then dead under it."""
    jobs.start()
    try:
        settle(state(app).scheduler)
        aps = state(app).scheduler._aps
        aps.shutdown(wait=False)
        # jobs.stop() shuts it down again; APScheduler refuses that twice.
        monkeypatch.setattr(aps, "shutdown", lambda wait=True: None)
        yield
    finally:
        jobs.stop()


def test_dead_scheduler_is_503(api: t.Any, dead_scheduler: None) -> None:
    response = api.get(f"{PREFIX}/health")
    assert response.status_code == 503
    body = response.get_json()
    assert body["healthy"] is False and body["scheduler"] == "dead"
    assert body["problems"] == ["the scheduler started in this process is no longer running"]
    check_schema(api, response)


def test_disabled_scheduler_is_healthy(app: Flask, api: t.Any) -> None:
    # The app fixture sets DURABLE_JOBS_SCHEDULER = False: off on purpose.
    response = api.get(f"{PREFIX}/health")
    assert response.status_code == 200
    body = response.get_json()
    assert body["healthy"] is True and body["scheduler"] == "disabled"
    assert body["started_at"] is None and body["last_tick"] is None
    assert body["last_sweep"] is None and body["worker_id"] is None
    check_schema(api, response)


@pytest.mark.config(DURABLE_JOBS_SCHEDULER=True)
def test_stopped_and_not_started(app: Flask, api: t.Any, jobs: DurableJobs) -> None:
    # Started by init_app, as in a process that serves requests.
    assert state(app).scheduler is not None and state(app).scheduler.running
    assert api.get(f"{PREFIX}/health").get_json()["scheduler"] == "running"

    settle(state(app).scheduler)
    jobs.stop()
    response = api.get(f"{PREFIX}/health")
    assert response.status_code == 503
    assert response.get_json()["scheduler"] == "stopped"

    # A process that never runs it (a flask command, gunicorn's master).
    state(app).start_policy = NEVER
    response = api.get(f"{PREFIX}/health")
    assert response.status_code == 200
    assert response.get_json()["scheduler"] == "not_started"


# -- the backlog -------------------------------------------------------------------


def test_due_backlog(app: Flask, api: t.Any, jobs: DurableJobs) -> None:
    now = dt.datetime.now(dt.timezone.utc)
    jobs.enqueue("t.ok", {})
    jobs.enqueue("t.ok", {}, run_at=now - dt.timedelta(minutes=10))
    jobs.enqueue("t.ok", {}, delay=3600)  # not due
    jobs.cancel(jobs.enqueue("t.ok", {}).id)  # not waiting
    body = api.get(f"{PREFIX}/health").get_json()
    assert body["due_count"] == 2
    assert 600 <= body["oldest_due_age_seconds"] < 700


def test_max_due_age(app: Flask, api: t.Any, jobs: DurableJobs) -> None:
    jobs.enqueue("t.ok", {}, run_at=dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=1))
    assert api.get(f"{PREFIX}/health?max_due_age=7200").status_code == 200
    response = api.get(f"{PREFIX}/health?max_due_age=60")
    assert response.status_code == 503
    [problem] = response.get_json()["problems"]
    assert "oldest due job" in problem and "max_due_age" in problem
    check_schema(api, response)


@pytest.mark.parametrize("value", ["0", "-1", "1.5", "x", str(schemas.MAX_DUE_AGE_SECONDS + 1)])
def test_bad_max_due_age_is_400(api: t.Any, value: str) -> None:
    response = api.get(f"{PREFIX}/health?max_due_age={value}")
    assert response.status_code == 400
    assert "max_due_age" in response.get_json()["error"]["message"]


def test_unreadable_database_is_503(
    app: Flask, api: t.Any, backend: str, tmp_path: t.Any, caplog: pytest.LogCaptureFixture
) -> None:
    # The library's engine pointed where no database answers: a closed port,
    # or a file in a directory that does not exist.
    store = state(app).store
    working = store.engine
    if backend == "postgresql":
        url = working.url.set(host="127.0.0.1", port=closed_port())
    else:
        url = sa.make_url(f"sqlite:///{tmp_path / 'missing' / 'jobs.db'}")
    store.engine = sa.create_engine(url)
    try:
        with caplog.at_level(logging.WARNING, logger="flask_durable_jobs"):
            responses = [api.get(f"{PREFIX}/health") for _ in range(3)]
    finally:
        store.engine.dispose()
        store.engine = working
    for response in responses:
        assert response.status_code == 503
        body = response.get_json()
        assert body["healthy"] is False
        assert body["database"]["ok"] is False
        assert body["database"]["error"].startswith("OperationalError: ")
        assert "\n" not in body["database"]["error"]
        assert body["due_count"] is None and body["expired_leases"] is None
        assert body["silent_workers"] is None
        [problem] = body["problems"]
        assert "database does not answer" in problem and "OperationalError" in problem
        check_schema(api, response)
    # one line for the three probes, without a traceback
    [record] = [r for r in caplog.records if r.name == "flask_durable_jobs"]
    assert record.levelno == logging.WARNING and record.exc_info is None
    assert "database does not answer" in record.getMessage()
    assert "OperationalError" in record.getMessage()

    # answering again, it is healthy again
    assert api.get(f"{PREFIX}/health").status_code == 200


def closed_port() -> int:
    """A local TCP port nothing listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# -- expired leases ----------------------------------------------------------------


def claim_with_lease(app: Flask, count: int, expired_ago: dt.timedelta, worker: str) -> None:
    """Claim ``count`` due jobs under a lease that ended ``expired_ago`` ago,
    as a process that then died would have left them."""
    store = state(app).store
    now = state(app).now()
    claimed = store.claim(job_types=["t.ok"], queues=None, limit=count, now=now,
                          lease_until=now - expired_ago, token=uuid.uuid4().hex,
                          worker_id=worker)
    assert len(claimed) == count


def test_expired_leases_are_503(app: Flask, api: t.Any, jobs: DurableJobs) -> None:
    for _ in range(5):
        jobs.enqueue("t.ok", {})
    claim_with_lease(app, 3, dt.timedelta(minutes=10), "gone:1:aaaaaa")
    # recent: within the grace (two sweep intervals), a sweep is still to come
    claim_with_lease(app, 1, dt.timedelta(seconds=5), "late:2:bbbbbb")

    response = api.get(f"{PREFIX}/health")
    assert response.status_code == 503
    body = response.get_json()
    assert body["expired_leases"] == 4 and body["stale_expired_leases"] == 3
    assert 600 <= body["oldest_expired_lease_age_seconds"] < 660
    [problem] = body["problems"]
    assert "3 running jobs have had an expired lease" in problem
    assert "DURABLE_JOBS_HEALTH_MAX_EXPIRED_LEASES" in problem
    silent = {w["worker_id"]: w["lease_expired_seconds"] for w in body["silent_workers"]}
    assert set(silent) == {"gone:1:aaaaaa", "late:2:bbbbbb"}
    assert 600 <= silent["gone:1:aaaaaa"] < 660 and 5 <= silent["late:2:bbbbbb"] < 60
    check_schema(api, response)

    # the sweep recovers them: healthy again
    state(app).runner.sweep()
    body = api.get(f"{PREFIX}/health").get_json()
    assert body["healthy"] is True
    assert body["expired_leases"] == 0 and body["silent_workers"] == []


def test_live_lease_is_no_expired_lease(app: Flask, api: t.Any, jobs: DurableJobs) -> None:
    jobs.enqueue("t.ok", {})
    jobs.enqueue("t.ok", {})
    claim_with_lease(app, 1, dt.timedelta(seconds=-60), "alive:1:cccccc")  # ends in a minute
    claim_with_lease(app, 1, dt.timedelta(minutes=10), "alive:1:cccccc")
    body = api.get(f"{PREFIX}/health").get_json()
    assert body["expired_leases"] == 1
    # one of its leases still holds: the worker renews, it is not silent
    assert body["silent_workers"] == []


@pytest.mark.config(DURABLE_JOBS_HEALTH_MAX_EXPIRED_LEASES=2)
def test_expired_lease_threshold(app: Flask, api: t.Any, jobs: DurableJobs) -> None:
    for _ in range(3):
        jobs.enqueue("t.ok", {})
    claim_with_lease(app, 2, dt.timedelta(minutes=10), "gone:1:aaaaaa")
    assert api.get(f"{PREFIX}/health").status_code == 200
    claim_with_lease(app, 1, dt.timedelta(minutes=10), "gone:1:aaaaaa")
    assert api.get(f"{PREFIX}/health").status_code == 503


@pytest.mark.config(DURABLE_JOBS_HEALTH_EXPIRED_LEASE_GRACE=3600)
def test_expired_lease_grace(app: Flask, api: t.Any, jobs: DurableJobs) -> None:
    jobs.enqueue("t.ok", {})
    claim_with_lease(app, 1, dt.timedelta(minutes=10), "gone:1:aaaaaa")
    response = api.get(f"{PREFIX}/health")
    assert response.status_code == 200
    body = response.get_json()
    assert body["expired_leases"] == 1 and body["stale_expired_leases"] == 0
    assert body["expired_lease_grace_seconds"] == 3600


def test_moved_clock_expires_leases(app: Flask, api: t.Any, jobs: DurableJobs) -> None:
    jobs.enqueue("t.ok", {})
    claim_with_lease(app, 1, dt.timedelta(seconds=-30), "gone:1:aaaaaa")
    assert api.get(f"{PREFIX}/health").get_json()["expired_leases"] == 0
    move_time(minutes=5, app=app)
    response = api.get(f"{PREFIX}/health")
    assert response.status_code == 503
    assert response.get_json()["stale_expired_leases"] == 1


# -- access ------------------------------------------------------------------------


def test_closed_without_access(app: Flask, client: t.Any) -> None:
    response = client.get(f"{PREFIX}/health")
    assert response.status_code == 403
    assert response.get_json()["error"]["code"] == "forbidden"


@pytest.mark.config(DURABLE_JOBS_ADMIN_TOKEN=TOKEN)
def test_token_required(client: t.Any) -> None:
    assert client.get(f"{PREFIX}/health").status_code == 401
    assert client.get(f"{PREFIX}/health", headers={"Authorization": "Bearer no"}).status_code == 401
    assert client.get(f"{PREFIX}/health", headers=AUTH).status_code == 200


def test_authorizer_refusal(app: Flask, client: t.Any, jobs: DurableJobs) -> None:
    jobs.admin_authorizer(lambda: False)
    assert client.get(f"{PREFIX}/health").status_code == 403


# -- command line ------------------------------------------------------------------


def test_cli_healthy(app: Flask, jobs: DurableJobs) -> None:
    result = app.test_cli_runner().invoke(args=["jobs", "health"])
    assert result.exit_code == 0, result.output
    body = json.loads(result.output)
    assert set(body) == KEYS and body["healthy"] is True
    assert body["scheduler"] == "disabled"


def test_cli_unhealthy_exits_1(app: Flask, jobs: DurableJobs) -> None:
    jobs.handler("t.ok")(lambda payload: payload)
    jobs.enqueue("t.ok", {}, run_at=dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=1))
    runner = app.test_cli_runner()
    assert runner.invoke(args=["jobs", "health", "--max-due-age", "7200"]).exit_code == 0
    result = runner.invoke(args=["jobs", "health", "--max-due-age", "60"])
    assert result.exit_code == 1
    body = json.loads(result.output)
    assert body["healthy"] is False and body["due_count"] == 1


def test_cli_dead_scheduler_exits_1(app: Flask, dead_scheduler: None) -> None:
    result = app.test_cli_runner().invoke(args=["jobs", "health"])
    assert result.exit_code == 1
    assert json.loads(result.output)["scheduler"] == "dead"


# -- outcomes kept unwritten -------------------------------------------------------


def test_unwritten_outcomes(app: Flask, api: t.Any, jobs: DurableJobs, backend: str) -> None:
    if backend != "postgresql":
        pytest.skip("the outcome write takes a new connection on PostgreSQL only")
    started, release = threading.Event(), threading.Event()

    @jobs.handler("t.wait")
    def wait(payload: dict[str, t.Any]) -> None:
        started.set()
        release.wait(10)

    jobs.enqueue("t.wait", {})
    runner = state(app).runner
    counts: list[dict[str, int]] = []
    thread = threading.Thread(target=lambda: counts.append(runner.run(limit=1)))
    thread.start()
    store = state(app).store
    working = store.engine
    try:
        assert started.wait(10)
        # The outcome's write meets a database that does not answer.
        store.engine = sa.create_engine(working.url.set(host="127.0.0.1", port=closed_port()))
        release.set()
        wait_for("the outcome to be kept", lambda: runner.unwritten_outcomes() == 1, 10)
        response = api.get(f"{PREFIX}/health")
        assert response.status_code == 503
        body = response.get_json()
        assert body["unwritten_outcomes"] == 1
        assert any("1 finished jobs wait for the database" in p for p in body["problems"])
        check_schema(api, response)
    finally:
        release.set()
        bad, store.engine = store.engine, working
        thread.join(20)
        bad.dispose()
    # Answering again, the outcome is written.
    assert counts == [{"claimed": 1, "succeeded": 1, "retried": 0, "dead": 0}]
    assert runner.unwritten_outcomes() == 0
    body = api.get(f"{PREFIX}/health").get_json()
    assert body["healthy"] is True and body["unwritten_outcomes"] == 0
