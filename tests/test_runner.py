"""The runner as a user sees it: registration it refuses, what it logs and
signals when a job goes dead. Database tests run on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import functools
import logging
import typing as t

import pytest
from flask import Flask

from flask_durable_jobs import Discard, DurableJobs, signals
from flask_durable_jobs.testing import move_time


async def _coroutine_handler(payload: dict[str, t.Any]) -> None: ...


async def _async_generator_handler(payload: dict[str, t.Any]) -> t.AsyncIterator[None]:
    yield None


class _AsyncCallable:
    async def __call__(self, payload: dict[str, t.Any]) -> None: ...


@pytest.mark.parametrize(
    "func",
    [_coroutine_handler, _AsyncCallable(), functools.partial(_coroutine_handler)],
    ids=["async def", "async __call__", "partial of async def"],
)
def test_async_handlers_are_accepted_at_registration(func: t.Any) -> None:
    jobs = DurableJobs()
    jobs.handler("notify")(func)
    assert jobs.handlers["notify"].is_async


def test_async_generator_handlers_are_refused_at_registration() -> None:
    jobs = DurableJobs()
    with pytest.raises(TypeError, match=r"'notify' is an async generator function.*async def"):
        jobs.handler("notify")(_async_generator_handler)
    with pytest.raises(TypeError, match="is an async generator function"):
        jobs.handler(_async_generator_handler)  # bare, named after the function
    jobs.handler("notify")(lambda payload: None)  # the name stays free for a plain one


def test_an_error_text_no_database_can_store_is_stored_escaped(
    app: Flask, jobs: DurableJobs
) -> None:
    """A lone surrogate (from a file name read with surrogateescape, say)
    cannot be encoded for either database: the error is stored escaped, and
    the other outcomes of the batch are written with it."""

    @jobs.handler("bad", max_attempts=1)
    def bad(payload: dict[str, t.Any]) -> None:
        raise RuntimeError("cannot open report-\udcff.csv")

    jobs.handler("ok")(lambda payload: payload["n"])
    failing = jobs.enqueue("bad", {})
    fine = [jobs.enqueue("ok", {"n": n}) for n in range(3)]
    counts = jobs.drain()
    assert counts == {"claimed": 4, "succeeded": 3, "retried": 0, "dead": 1}
    dead = jobs.get(failing.id)
    assert dead is not None and dead.status == "dead"
    assert "RuntimeError: cannot open report-\\udcff.csv" in (dead.last_error or "")
    assert [jobs.get(j.id).result for j in fine] == [0, 1, 2]  # type: ignore[union-attr]


def test_a_job_that_goes_dead_logs_one_line(
    app: Flask, jobs: DurableJobs, caplog: pytest.LogCaptureFixture
) -> None:
    """Discard, attempts exhausted, and the orphan policy: each dead job is
    one warning naming it and why, as a failed attempt is one line."""
    caplog.set_level(logging.INFO, logger="flask_durable_jobs")

    @jobs.handler("discard")
    def discard(payload: dict[str, t.Any]) -> None:
        raise Discard("recipient does not exist")

    @jobs.handler("fail", max_attempts=1)
    def fail(payload: dict[str, t.Any]) -> None:
        raise ConnectionError("smtp down")

    jobs.handler("printer", on_orphan="dead")(lambda payload: None)
    jobs.handler("ok")(lambda payload: None)
    discarded = jobs.enqueue("discard", {})
    exhausted = jobs.enqueue("fail", {})
    jobs.enqueue("ok", {})
    assert jobs.drain()["dead"] == 2

    orphan = jobs.enqueue("printer", {})
    state = app.extensions["durable_jobs"]
    now = state.now()
    state.store.claim(job_types=["printer"], queues=None, limit=1, now=now,
                      lease_until=now + dt.timedelta(seconds=5), token="f" * 32, worker_id="w")
    move_time(seconds=10)
    assert jobs.sweep_orphans() == 1

    dead_lines = [r.getMessage() for r in caplog.records
                  if r.levelno == logging.WARNING and "dead" in r.getMessage()]
    assert sorted(dead_lines) == sorted([
        f"job {discarded.id} (discard) is dead after attempt 1: Discard",
        f"job {exhausted.id} (fail) is dead after attempt 1: ConnectionError",
        f"job {orphan.id} (printer): lease expired; now dead",
    ])


def test_the_job_dead_signal_carries_the_job_as_written(app: Flask, jobs: DurableJobs) -> None:
    received: list[dict[str, t.Any]] = []

    def receiver(sender: Flask, **kwargs: t.Any) -> None:
        received.append(kwargs)

    @jobs.handler("send")
    def send(payload: dict[str, t.Any]) -> None:
        raise Discard("recipient does not exist")

    signals.job_dead.connect(receiver, app)
    try:
        job = jobs.enqueue("send", {"to": "ada@example.com", "lines": [1, 2]})
        assert jobs.drain()["dead"] == 1
    finally:
        signals.job_dead.disconnect(receiver, app)
    (kwargs,) = received
    carried = kwargs["job"]
    assert carried == jobs.get(job.id)
    assert (carried.id, carried.status, carried.payload, carried.last_error) == (
        job.id, "dead", {"to": "ada@example.com", "lines": [1, 2]},
        "Discard: recipient does not exist",
    )
    assert carried.finished_at is not None


def test_a_job_recovered_from_a_dead_process_keeps_a_trace_of_it(
    app: Flask, jobs: DurableJobs
) -> None:
    """A worker claims the job and dies; the sweep retries it and it
    succeeds: the job still says what happened to the attempt before."""
    jobs.handler("t")(lambda payload: "fine")
    job = jobs.enqueue("t", {})
    state = app.extensions["durable_jobs"]
    now = state.now()
    state.store.claim(job_types=["t"], queues=None, limit=1, now=now,
                      lease_until=now + dt.timedelta(seconds=5), token="a" * 32,
                      worker_id="host:123:dead")
    move_time(seconds=10)
    assert jobs.sweep_orphans() == 1
    assert jobs.drain()["succeeded"] == 1
    done = jobs.get(job.id)
    assert done is not None and (done.status, done.attempts, done.result) == (
        "succeeded", 2, "fine")
    assert "lease expired: worker host:123:dead" in (done.last_error or "")
