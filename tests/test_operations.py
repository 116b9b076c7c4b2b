"""Day-two features: signals, owners, orphan policy, test helpers, wake-ups."""

from __future__ import annotations

import datetime as dt
import threading
import time
import typing as t

import pytest
from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from flask_durable_jobs import DurableJobs, signals
from flask_durable_jobs.extension import get_state
from flask_durable_jobs.testing import move_time, reset_time
from tests.helpers import another_app


@pytest.fixture
def received() -> t.Iterator[list[tuple[str, dict[str, t.Any]]]]:
    events: list[tuple[str, dict[str, t.Any]]] = []
    connected = []
    for name in ("job_enqueued", "job_started", "job_succeeded", "job_retried", "job_dead",
                 "job_rescued"):
        signal = getattr(signals, name)

        def receiver(sender: t.Any, _name: str = name, **kwargs: t.Any) -> None:
            events.append((_name, kwargs))

        signal.connect(receiver)
        connected.append((signal, receiver))
    yield events
    for signal, receiver in connected:
        signal.disconnect(receiver)


def test_signals_through_the_lifecycle(
    app: Flask, jobs: DurableJobs, received: list[tuple[str, dict[str, t.Any]]]
) -> None:
    def ok_handler(payload: dict[str, t.Any]) -> dict[str, t.Any]:
        time.sleep(0.05)
        return {"n": payload["n"]}

    jobs.handler("ok")(ok_handler)
    jobs.handler("flaky", max_attempts=2, backoff=lambda n: 0)(lambda p: 1 / 0)
    ok = jobs.enqueue("ok", {"n": 1})
    flaky = jobs.enqueue("flaky", {})
    began = time.monotonic()
    jobs.drain()
    elapsed = time.monotonic() - began
    names = [name for name, _ in received]
    assert names.count("job_enqueued") == 2
    assert names.count("job_started") == 3
    succeeded = [kw for name, kw in received if name == "job_succeeded"]
    (duration,) = [kw.pop("duration") for kw in succeeded]
    assert succeeded == [{"job_id": ok.id, "job_type": "ok", "attempt": 1, "result": {"n": 1}}]
    # the handler's own run time: its sleep, within the drain around it
    assert 0.05 <= duration <= elapsed
    (retried,) = [kw for name, kw in received if name == "job_retried"]
    assert retried["job_id"] == flaky.id and "ZeroDivisionError" in retried["error"]
    assert isinstance(retried["run_at"], dt.datetime)
    (dead,) = [kw for name, kw in received if name == "job_dead"]
    assert dead["job_id"] == flaky.id and dead["attempt"] == 2
    enqueued = [kw for name, kw in received if name == "job_enqueued"]
    assert enqueued[0]["job"].id == ok.id and enqueued[0]["job_ids"] == [ok.id]


def test_a_raising_receiver_never_breaks_the_job(app: Flask, jobs: DurableJobs) -> None:
    calls = []

    def broken(sender: t.Any, **kwargs: t.Any) -> None:
        calls.append(kwargs["job_id"])
        raise RuntimeError("receiver bug")

    signals.job_succeeded.connect(broken)
    signals.job_started.connect(broken)
    try:
        jobs.handler("t")(lambda p: "fine")
        job = jobs.enqueue("t", {})
        assert jobs.drain()["succeeded"] == 1
    finally:
        signals.job_succeeded.disconnect(broken)
        signals.job_started.disconnect(broken)
    assert calls == [job.id, job.id]
    done = jobs.get(job.id)
    assert done is not None and done.status == "succeeded" and done.result == "fine"


def test_enqueue_signal_waits_for_the_callers_commit(
    app: Flask, jobs: DurableJobs, db: SQLAlchemy, received: list[tuple[str, dict[str, t.Any]]]
) -> None:
    jobs.handler("t")(lambda p: None)
    jobs.enqueue("t", {}, commit=False)
    db.session.rollback()
    assert received == []
    job = jobs.enqueue("t", {}, commit=False)
    assert received == []
    db.session.commit()
    assert [(name, kw["job_ids"]) for name, kw in received] == [("job_enqueued", [job.id])]


def test_rescued_signal_and_orphan_policy(
    app: Flask, jobs: DurableJobs, received: list[tuple[str, dict[str, t.Any]]]
) -> None:
    jobs.handler("printer", on_orphan="dead", max_attempts=5)(lambda p: None)
    jobs.handler("normal", max_attempts=5)(lambda p: None)
    with pytest.raises(ValueError, match="on_orphan"):
        jobs.handler("x", on_orphan="ignore")(lambda p: None)
    printer = jobs.enqueue("printer", {})
    normal = jobs.enqueue("normal", {})
    state = app.extensions["durable_jobs"]
    now = state.now()
    state.store.claim(job_types=["printer", "normal"], queues=None, limit=10, now=now,
                      lease_until=now + dt.timedelta(seconds=5), token="e" * 32, worker_id="w")
    move_time(seconds=10)
    assert jobs.sweep_orphans() == 2
    assert jobs.get(printer.id).status == "dead"  # type: ignore[union-attr]
    assert jobs.get(normal.id).status == "retrying"  # type: ignore[union-attr]
    rescued = {kw["job_id"]: kw["status"] for name, kw in received if name == "job_rescued"}
    assert rescued == {printer.id: "dead", normal.id: "retrying"}


def test_owner_scoping(app: Flask, jobs: DurableJobs) -> None:
    jobs.handler("export")(lambda p: "file.csv")
    mine = jobs.enqueue("export", {}, owner="user:1")
    anyone = jobs.enqueue("export", {})
    assert jobs.get(mine.id, owner="user:1") is not None
    assert jobs.get(mine.id, owner="user:2") is None
    assert jobs.get(anyone.id, owner="user:1") is None
    assert jobs.get(mine.id).owner == "user:1"  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="owner"):
        jobs.enqueue("export", {}, owner="")


def test_move_time_brings_retries_due(app: Flask, jobs: DurableJobs) -> None:
    attempts = []

    @jobs.handler("flaky")
    def flaky(payload: dict[str, t.Any]) -> str:
        attempts.append(1)
        if len(attempts) < 2:
            raise RuntimeError("first call fails")
        return "ok"

    job = jobs.enqueue("flaky", {})
    assert jobs.drain()["retried"] == 1
    assert jobs.drain()["claimed"] == 0  # 30 s backoff
    move_time(seconds=40)
    assert jobs.drain()["succeeded"] == 1
    assert jobs.get(job.id).result == "ok"  # type: ignore[union-attr]
    later = move_time(dt.timedelta(days=1))
    assert later - dt.datetime.now(dt.timezone.utc) > dt.timedelta(hours=23)
    reset_time()
    assert abs(app.extensions["durable_jobs"].now() - dt.datetime.now(dt.timezone.utc)) < (
        dt.timedelta(seconds=5))


def test_state_accessor_and_read_only_registries(app: Flask, jobs: DurableJobs) -> None:
    state = get_state()
    assert state is get_state(app) is app.extensions["durable_jobs"]
    assert state.ext is jobs
    with pytest.raises(RuntimeError, match=r"not initialised on this app: call jobs\.init_app"):
        get_state(Flask("bare"))

    def handle(payload: dict[str, t.Any]) -> None:
        return None

    jobs.handler("h")(handle)
    jobs.periodic("0 3 * * *", "h", key="nightly")
    assert jobs.handlers["h"].func is handle and list(jobs.schedules) == ["nightly"]
    with pytest.raises(TypeError):
        jobs.handlers["x"] = jobs.handlers["h"]  # type: ignore[index]
    with pytest.raises(TypeError):
        del jobs.schedules["nightly"]  # type: ignore[attr-defined]
    assert jobs.authorizer is None

    @jobs.admin_authorizer
    def allow() -> bool:
        return True

    assert jobs.authorizer is allow
    assert state.runner_started is False  # nothing made the runner yet
    jobs.drain()
    assert state.runner_started is True


def test_clock_offset(app: Flask, jobs: DurableJobs) -> None:
    state = get_state()
    assert state.clock_offset == dt.timedelta()
    state.set_clock_offset(dt.timedelta(hours=2))
    assert state.clock_offset == dt.timedelta(hours=2)
    before = dt.datetime.now(dt.timezone.utc)
    ahead = state.now() - before
    assert dt.timedelta(hours=2) <= ahead < dt.timedelta(hours=2, seconds=5)
    move_time(minutes=30)  # adds to the offset
    assert state.clock_offset == dt.timedelta(hours=2, minutes=30)
    reset_time()
    assert state.clock_offset == dt.timedelta()
    with pytest.raises(TypeError, match="offset must be a timedelta"):
        state.set_clock_offset(60)  # type: ignore[arg-type]


@pytest.mark.config(DURABLE_JOBS_EAGER=True)
def test_eager_mode_runs_at_enqueue(app: Flask, jobs: DurableJobs, db: SQLAlchemy) -> None:
    jobs.handler("t")(lambda p: p["n"] * 2)
    job = jobs.enqueue("t", {"n": 21})
    assert jobs.get(job.id).result == 42  # type: ignore[union-attr]
    later = jobs.enqueue("t", {"n": 1}, delay=60)
    assert jobs.get(later.id).status == "pending"  # type: ignore[union-attr]
    pending = jobs.enqueue("t", {"n": 2}, commit=False)
    assert jobs.get(pending.id) is None  # not committed: no other connection sees it
    db.session.commit()
    assert jobs.get(pending.id).result == 4  # type: ignore[union-attr]


@pytest.mark.config(DURABLE_JOBS_POLL_INTERVAL=0.05)
def test_scheduler_prunes(app: Flask, jobs: DurableJobs) -> None:
    jobs.handler("t")(lambda p: None)
    jobs.enqueue_many("t", [{}] * 3)
    jobs.drain()
    move_time(days=31)
    state = app.extensions["durable_jobs"]
    jobs.start()
    from flask_durable_jobs.scheduler import PRUNE_INTERVAL, PRUNE_JOB

    scheduled = state.scheduler._aps.get_job(PRUNE_JOB)  # the scheduler runs it hourly
    assert scheduled is not None
    assert scheduled.trigger.interval.total_seconds() == PRUNE_INTERVAL
    state.scheduler.prune_tick()
    assert jobs.stats()["total"] == 0


@pytest.mark.config(DURABLE_JOBS_POLL_INTERVAL=60)
def test_new_jobs_from_another_process_wake_the_scheduler(
    app: Flask, jobs: DurableJobs, database_url: str
) -> None:
    """A job enqueued through another engine (another process, as far as the
    database knows) starts long before the 60 s poll interval: PostgreSQL
    through NOTIFY, SQLite through the file's change counter."""
    started = threading.Event()
    jobs.handler("t")(lambda p: started.set())
    jobs.start()
    time.sleep(0.5)  # the first tick has run and found nothing; LISTEN is up
    with another_app(database_url, name="producer") as producer:
        producer.handler("t")(lambda p: None)
        producer.enqueue("t", {})
    assert started.wait(10), "the watcher should wake the scheduler well before 60 s"
