"""Enqueue's argument checks and its signals, on SQLite and PostgreSQL.

Every argument that one database would refuse (or store differently) is
refused on both, before any SQL, with an error naming the argument.
"""

from __future__ import annotations

import datetime as dt
import typing as t

import pytest
import sqlalchemy as sa
from cryptography.fernet import Fernet
from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from flask_durable_jobs import DurableJobs, signals
from flask_durable_jobs.enqueue import INT32_MAX, INT32_MIN, MAX_RUN_AT
from flask_durable_jobs.periodic import tick

UTC = dt.timezone.utc


@pytest.fixture
def noop(jobs: DurableJobs) -> DurableJobs:
    jobs.handler("t")(lambda p: None)
    jobs.handler("u")(lambda p: None)
    return jobs


def stored(db: SQLAlchemy) -> int:
    """Rows in the job and batch tables, read on a connection of their own."""
    with db.engine.connect() as conn:
        jobs = conn.execute(sa.text("SELECT count(*) FROM durable_jobs")).scalar_one()
        batches = conn.execute(sa.text("SELECT count(*) FROM durable_jobs_batches")).scalar_one()
    return int(jobs) + int(batches)


BAD_ENQUEUES: list[tuple[str, dict[str, t.Any], type[Exception], str]] = [
    ("nul key", {"idempotency_key": "a\x00b"}, ValueError, r"idempotency_key .*NUL"),
    ("nul owner", {"owner": "a\x00b"}, ValueError, r"owner .*NUL"),
    ("nul queue", {"queue": "a\x00b"}, ValueError, r"queue .*NUL"),
    ("nul job type", {"job_type": "t\x00"}, ValueError, r"job_type .*NUL"),
    ("surrogate key", {"idempotency_key": "a\ud800b"}, ValueError,
     r"idempotency_key .*surrogate code point '\\ud800'"),
    ("surrogate owner", {"owner": "\udfff"}, ValueError, r"owner .*surrogate"),
    ("surrogate queue", {"queue": "q\udc00"}, ValueError, r"queue .*surrogate"),
    ("surrogate job type", {"job_type": "t\ud800"}, ValueError, r"job_type .*surrogate"),
    ("surrogate in payload", {"payload": {"x": ["ok", "a\udc00"]}}, TypeError,
     r"payload\['x'\]\[1\] holds a surrogate"),
    ("surrogate payload key", {"payload": {"ok": {"k\ud800": 1}}}, TypeError,
     r"payload\['ok'\]\['k\\ud800'\] holds a surrogate"),
    ("priority 2**40", {"priority": 2**40}, ValueError,
     rf"priority must be between {INT32_MIN} and {INT32_MAX}, got {2**40}"),
    ("priority below", {"priority": INT32_MIN - 1}, ValueError, "priority must be between"),
    ("max_attempts 2**31", {"max_attempts": 2**31}, ValueError, "max_attempts must be between"),
    ("delay inf", {"delay": float("inf")}, ValueError, "delay must bring run_at"),
    ("delay nan", {"delay": float("nan")}, ValueError, "delay must be seconds >= 0"),
    ("delay 1e20", {"delay": 1e20}, ValueError, "delay must bring run_at"),
    ("delay timedelta.max", {"delay": dt.timedelta.max}, ValueError, "delay must bring run_at"),
    ("run_at past year 9999 in UTC",
     {"run_at": dt.datetime(9999, 12, 31, 23, tzinfo=dt.timezone(dt.timedelta(hours=-5)))},
     ValueError, "run_at must be between"),
    ("run_at at datetime.max", {"run_at": dt.datetime.max.replace(tzinfo=UTC)},
     ValueError, "run_at must be between"),
    ("run_at before year 1 in UTC",
     {"run_at": dt.datetime(1, 1, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=5)))},
     ValueError, "run_at must be between"),
]


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [case[1:] for case in BAD_ENQUEUES],
    ids=[case[0] for case in BAD_ENQUEUES],
)
@pytest.mark.parametrize("commit", [True, False])
def test_bad_argument_is_refused_before_any_sql(
    app: Flask, noop: DurableJobs, db: SQLAlchemy,
    options: dict[str, t.Any], error: type[Exception], message: str, commit: bool,
) -> None:
    options = dict(options)
    job_type = options.pop("job_type", "t")
    payload = options.pop("payload", {})
    with pytest.raises(error, match=message):
        noop.enqueue(job_type, payload, commit=commit, **options)
    # nothing was sent: the session has no transaction the error left behind
    assert not db.session().in_transaction()
    assert stored(db) == 0
    # and the next enqueue on the same path works
    job = noop.enqueue("t", {"after": True}, commit=commit)
    db.session.commit()
    assert noop.get(job.id) is not None


def test_the_limits_themselves_are_stored_alike(
    app: Flask, noop: DurableJobs, db: SQLAlchemy
) -> None:
    payload = {"emoji \U0001F600": ["\U0001F600", "C:\\udata", "\u00e9"]}
    top = noop.enqueue("t", payload, priority=INT32_MAX, max_attempts=INT32_MAX,
                       run_at=MAX_RUN_AT)
    bottom = noop.enqueue("t", {}, priority=INT32_MIN, run_at=MAX_RUN_AT.astimezone(
        dt.timezone(dt.timedelta(hours=14))))
    (many,) = noop.enqueue_many("t", [payload])
    for job_id in (top.id, many):
        job = noop.get(job_id)
        assert job is not None and job.payload == payload
    job = noop.get(top.id)
    assert job is not None
    assert (job.priority, job.max_attempts, job.run_at) == (INT32_MAX, INT32_MAX, MAX_RUN_AT)
    job = noop.get(bottom.id)
    assert job is not None and (job.priority, job.run_at) == (INT32_MIN, MAX_RUN_AT)


def test_bulk_and_batch_refuse_before_any_sql(
    app: Flask, noop: DurableJobs, db: SQLAlchemy
) -> None:
    with pytest.raises(TypeError, match=r"payloads\[1\]: payload\['b'\] holds a surrogate"):
        noop.enqueue_many("t", [{"a": "\\ud800 is text here"}, {"b": "\ud800"}])
    with pytest.raises(ValueError, match="priority must be between"):
        noop.enqueue_many("t", [{}], priority=2**40)
    with pytest.raises(TypeError, match=r"jobs\[1\]: payload\['b'\] holds a surrogate"):
        noop.enqueue_batch([("t", {}), ("u", {"b": "\udfff"})], commit=False)
    with pytest.raises(ValueError, match=r"batch_id .*NUL"):
        noop.enqueue_batch([("t", {})], batch_id="b\x00")
    with pytest.raises(TypeError, match=r"on_complete_payload\['x'\] holds a surrogate"):
        noop.enqueue_batch([("t", {})], on_complete="u", on_complete_payload={"x": "\ud800"})
    with pytest.raises(ValueError, match=r"on_complete .*NUL"):
        noop.enqueue_batch([("t", {})], on_complete="u\x00")
    # a type without a handler, after one with: the batch's row is not written either
    with pytest.raises(LookupError, match="'nope'"):
        noop.enqueue_batch([("t", {}), ("nope", {})], batch_id="b1", commit=False)
    db.session.commit()
    assert noop.batch_status("b1") is None
    assert stored(db) == 0


def test_handler_and_schedule_options_are_checked_at_registration(noop: DurableJobs) -> None:
    with pytest.raises(ValueError, match="priority must be between"):
        noop.handler("big", priority=2**40)(lambda p: None)
    with pytest.raises(ValueError, match="max_attempts must be between"):
        noop.handler("many", max_attempts=2**31)(lambda p: None)
    with pytest.raises(ValueError, match=r"handler name .*NUL"):
        noop.handler("a\x00b")(lambda p: None)
    with pytest.raises(ValueError, match=r"queue .*surrogate"):
        noop.handler("q", queue="q\ud800")(lambda p: None)
    assert sorted(noop.handlers) == ["t", "u"]
    with pytest.raises(ValueError, match=r"key .*NUL"):
        noop.periodic("* * * * *", "t", key="k\x00")
    with pytest.raises(TypeError, match=r"payload\['x'\] holds a surrogate"):
        noop.periodic("* * * * *", "t", payload={"x": "\ud800"})
    with pytest.raises(ValueError, match="priority must be between"):
        noop.periodic("* * * * *", "t", priority=-(2**40))
    assert dict(noop.schedules) == {}


@pytest.mark.config(
    DURABLE_JOBS_SECRET_KEY=Fernet.generate_key().decode(),
    DURABLE_JOBS_CALLBACK_SECRET="callback-signing-secret",
)
def test_secrets_and_callback_url_are_checked(
    app: Flask, noop: DurableJobs, db: SQLAlchemy
) -> None:
    with pytest.raises(TypeError, match=r"secrets\['token'\] holds a surrogate"):
        noop.enqueue("t", {}, secrets={"token": "\udc00"})
    with pytest.raises(ValueError, match=r"callback_url .*NUL"):
        noop.enqueue("t", {}, callback_url="http://example.com/\x00")
    assert stored(db) == 0


# -- job_enqueued --------------------------------------------------------------------


@pytest.fixture
def enqueued(app: Flask) -> t.Iterator[list[tuple[str, list[int]]]]:
    seen: list[tuple[str, list[int]]] = []

    def receiver(sender: t.Any, **kwargs: t.Any) -> None:
        seen.append((kwargs["job_type"], list(kwargs["job_ids"])))

    signals.job_enqueued.connect(receiver, app)
    try:
        yield seen
    finally:
        signals.job_enqueued.disconnect(receiver, app)


def test_batch_signals_each_type_with_its_own_ids(
    app: Flask, noop: DurableJobs, enqueued: list[tuple[str, list[int]]]
) -> None:
    batch = noop.enqueue_batch([("t", {"n": 1}), ("u", {}), ("t", {"n": 2})])
    t_ids, u_ids = [batch.job_ids[0], batch.job_ids[2]], [batch.job_ids[1]]
    assert sorted(enqueued) == [("t", t_ids), ("u", u_ids)]


def test_batch_completion_job_is_signalled(
    app: Flask, noop: DurableJobs, enqueued: list[tuple[str, list[int]]]
) -> None:
    batch = noop.enqueue_batch([("t", {})], on_complete="u")
    enqueued.clear()
    noop.drain()
    (completion,) = [job for job in noop.list_jobs()[0] if job.job_type == "u"]
    assert completion.idempotency_key == f"batch:{batch.id}"
    assert enqueued == [("u", [completion.id])]


def test_periodic_fires_are_signalled(
    app: Flask, noop: DurableJobs, enqueued: list[tuple[str, list[int]]]
) -> None:
    noop.periodic("*/5 * * * * *", "u", key="often")
    state = app.extensions["durable_jobs"]
    state.clock = lambda: dt.datetime(2026, 1, 1, 12, 0, 1, tzinfo=UTC)
    tick(state)
    state.clock = lambda: dt.datetime(2026, 1, 1, 12, 0, 11, tzinfo=UTC)
    assert tick(state) == 2
    ids = sorted(job.id for job in noop.list_jobs()[0])
    assert len(ids) == 3
    assert enqueued == [("u", ids[:1]), ("u", ids[1:])]
