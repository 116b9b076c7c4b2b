"""The engine through its public API, on SQLite and PostgreSQL."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import threading
import time
import typing as t

import pytest
import sqlalchemy as sa
from flask import Flask, current_app
from flask_sqlalchemy import SQLAlchemy

from flask_durable_jobs import Discard, DurableJobs, InvalidTransition, JobNotFound
from flask_durable_jobs.testing import move_time
from tests.helpers import another_app, sweeping

UTC = dt.timezone.utc


def state(app: Flask) -> t.Any:
    return app.extensions["durable_jobs"]


def shift_clock(app: Flask, seconds: float) -> None:
    """Move the library's clock ``seconds`` into the future from real time."""
    state(app).clock = lambda: dt.datetime.now(UTC) + dt.timedelta(seconds=seconds)


def raw_rows(db: SQLAlchemy) -> list[t.Any]:
    with db.engine.connect() as conn:
        return conn.execute(sa.text("SELECT id, status FROM durable_jobs ORDER BY id")).all()


# -- enqueue ----------------------------------------------------------------


def test_enqueue_returns_a_pending_job(app: Flask, jobs: DurableJobs) -> None:
    jobs.handler("mail.send")(lambda p: None)
    job = jobs.enqueue("mail.send", {"to": "a@b.c"})
    assert job.id > 0
    assert (job.job_type, job.queue, job.status) == ("mail.send", "default", "pending")
    assert job.payload == {"to": "a@b.c"}
    assert (job.attempts, job.max_attempts, job.priority) == (0, 3, 0)
    for stamp in (job.run_at, job.created_at, job.updated_at):
        assert stamp.tzinfo is not None and stamp.utcoffset() == dt.timedelta(0)
    assert job.started_at is None and job.finished_at is None
    fetched = jobs.get(job.id)
    assert fetched is not None and fetched.payload == {"to": "a@b.c"}
    assert fetched.run_at == job.run_at
    assert jobs.get(job.id + 1000) is None


def test_enqueue_unknown_type_is_refused(app: Flask, jobs: DurableJobs, db: SQLAlchemy) -> None:
    jobs.handler("known")(lambda p: None)
    with pytest.raises(LookupError, match="'knwon'"):
        jobs.enqueue("knwon", {})
    assert raw_rows(db) == []


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"a": float("nan")}, r"payload\['a'\] is nan"),
        ({"a": {"b": [1, float("inf")]}}, r"payload\['a'\]\['b'\]\[1\] is inf"),
        ({"a": {1: "x"}}, r"payload\['a'\] has a key 1 of type int"),
        ({"when": dt.datetime(2020, 1, 1)}, r"payload\['when'\] is a datetime"),
        ({"s": {1, 2}}, r"payload\['s'\] is a set"),
        (["not", "a", "dict"], "payload must be a JSON object"),
        ({"a": ["x\x00y"]}, r"payload\['a'\]\[0\] contains a NUL character"),
        ({"a\x00": 1}, r"payload has a key 'a\\x00' containing a NUL character"),
    ],
)
def test_payload_strict_json(
    app: Flask, jobs: DurableJobs, db: SQLAlchemy, payload: t.Any, message: str
) -> None:
    jobs.handler("t")(lambda p: None)
    with pytest.raises(TypeError, match=message):
        jobs.enqueue("t", payload)
    assert raw_rows(db) == []


def test_enqueue_time_options(app: Flask, jobs: DurableJobs) -> None:
    jobs.handler("t")(lambda p: None)
    with pytest.raises(ValueError, match="timezone-aware"):
        jobs.enqueue("t", {}, run_at=dt.datetime(2030, 1, 1))
    with pytest.raises(ValueError, match="not both"):
        jobs.enqueue("t", {}, delay=5, run_at=dt.datetime.now(UTC))
    with pytest.raises(ValueError, match="delay"):
        jobs.enqueue("t", {}, delay=-1)
    before = dt.datetime.now(UTC)
    by_seconds = jobs.enqueue("t", {}, delay=60)
    by_delta = jobs.enqueue("t", {}, delay=dt.timedelta(minutes=2))
    tz = dt.timezone(dt.timedelta(hours=2))
    at = dt.datetime(2031, 5, 6, 12, 0, tzinfo=tz)
    by_date = jobs.enqueue("t", {}, run_at=at)
    assert 59 <= (by_seconds.run_at - before).total_seconds() <= 62
    assert 119 <= (by_delta.run_at - before).total_seconds() <= 122
    assert by_date.run_at == at and by_date.run_at.utcoffset() == dt.timedelta(0)
    assert jobs.process_due()["claimed"] == 0  # nothing is due yet


def test_rollback_discards_the_job(app: Flask, jobs: DurableJobs, db: SQLAlchemy) -> None:
    jobs.handler("t")(lambda p: None)
    note = sa.Table("notes", db.metadata, sa.Column("id", sa.Integer, primary_key=True),
                    sa.Column("body", sa.String(50)))
    note.create(db.engine)
    db.session.execute(note.insert().values(body="kept together"))
    job = jobs.enqueue("t", {"n": 1}, commit=False)
    db.session.rollback()
    assert jobs.get(job.id) is None
    with db.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(note)).scalar() == 0

    db.session.execute(note.insert().values(body="kept together"))
    job = jobs.enqueue("t", {"n": 2}, commit=False)
    db.session.commit()
    assert jobs.get(job.id) is not None

    db.session.execute(note.insert().values(body="committed by enqueue"))
    jobs.enqueue("t", {"n": 3})  # commit=True commits the caller's pending row too
    db.session.rollback()
    with db.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(note)).scalar() == 2


@pytest.mark.parametrize("commit", [False, True])
def test_a_failed_enqueue_raises_sqlalchemys_error(
    app: Flask, jobs: DurableJobs, db: SQLAlchemy, commit: bool
) -> None:
    """The database refusing a job's INSERT raises SQLAlchemy's exception, in
    the caller's transaction (rolled back as usual) or in one of its own; the
    same path stores the next job once the table is back."""
    jobs.handler("t")(lambda p: None)
    jobs.enqueue("t", {"n": 0}, commit=commit)  # the path's connection is open and warm
    db.session.commit()
    db.session.execute(sa.text("ALTER TABLE durable_jobs RENAME TO durable_jobs_away"))
    db.session.commit()
    with pytest.raises(sa.exc.DBAPIError, match="durable_jobs"):
        jobs.enqueue("t", {}, commit=commit)
    db.session.rollback()
    db.session.execute(sa.text("ALTER TABLE durable_jobs_away RENAME TO durable_jobs"))
    db.session.commit()
    job = jobs.enqueue("t", {"n": 1}, commit=commit)
    db.session.commit()
    assert jobs.get(job.id) is not None
    assert jobs.list_jobs()[1] == 2


def test_an_enqueue_in_a_transaction_is_seen_by_engine_listeners(
    app: Flask, jobs: DurableJobs, db: SQLAlchemy
) -> None:
    """With a listener on the app's engine (query logging, tracing), the
    job's INSERT goes through SQLAlchemy's execution and the listener sees it."""
    jobs.handler("t")(lambda p: None)
    seen: list[str] = []
    sa.event.listen(db.engine, "before_cursor_execute",
                    lambda _c, _cur, sql, *_: seen.append(sql))
    job = jobs.enqueue("t", {"n": 1}, commit=False)
    db.session.commit()
    assert [sql for sql in seen if sql.startswith("INSERT INTO durable_jobs")]
    assert jobs.get(job.id) is not None


def test_idempotency_key(app: Flask, jobs: DurableJobs, db: SQLAlchemy) -> None:
    jobs.handler("t")(lambda p: None)
    first = jobs.enqueue("t", {"n": 1}, idempotency_key="order-42")
    again = jobs.enqueue("t", {"n": 2}, idempotency_key="order-42")
    other = jobs.enqueue("t", {"n": 3}, idempotency_key="order-43")
    assert again.id == first.id and again.payload == {"n": 1}
    assert other.id != first.id
    assert len(raw_rows(db)) == 2
    with pytest.raises(ValueError, match="idempotency_key"):
        jobs.enqueue("t", {}, idempotency_key="")


def test_enqueue_many(app: Flask, jobs: DurableJobs, db: SQLAlchemy) -> None:
    seen: list[int] = []
    jobs.handler("t")(lambda p: seen.append(p["i"]))
    ids = jobs.enqueue_many("t", [{"i": i} for i in range(2500)], priority=5)
    assert len(ids) == 2500 and ids == sorted(ids)
    assert [jobs.get(ids[i]).payload["i"] for i in (0, 1234, 2499)] == [0, 1234, 2499]  # type: ignore[union-attr]
    assert jobs.get(ids[0]).priority == 5  # type: ignore[union-attr]
    with pytest.raises(TypeError, match=r"payloads\[1\]: payload\['x'\]"):
        jobs.enqueue_many("t", [{"x": 1}, {"x": float("nan")}])
    assert len(raw_rows(db)) == 2500
    assert jobs.enqueue_many("t", []) == []
    assert jobs.drain()["succeeded"] == 2500
    assert sorted(seen) == list(range(2500))


# -- handlers -----------------------------------------------------------------


def test_handler_names_and_options(jobs: DurableJobs) -> None:
    @jobs.handler
    def bare(payload: dict[str, t.Any]) -> None: ...

    assert f"{__name__}.test_handler_names_and_options.<locals>.bare" in jobs._handlers

    jobs.handler("x")(lambda p: None)
    with pytest.raises(ValueError, match="already registered"):
        jobs.handler("x")(lambda p: None)

    def in_main(payload: dict[str, t.Any]) -> None: ...

    in_main.__module__ = "__main__"
    with pytest.raises(ValueError, match="__main__"):
        jobs.handler(in_main)
    jobs.handler("named.main")(in_main)  # an explicit name is fine
    with pytest.raises(ValueError, match="max_attempts"):
        jobs.handler("y", max_attempts=0)(lambda p: None)
    with pytest.raises(ValueError, match="timeout"):
        jobs.handler("y", timeout=-1)(lambda p: None)
    with pytest.raises(TypeError, match="backoff"):
        jobs.handler("y", backoff=5)(lambda p: None)  # type: ignore[arg-type]


def test_handler_runs_in_app_context_and_stores_result(app: Flask, jobs: DurableJobs) -> None:
    @jobs.handler("t")
    def handler(payload: dict[str, t.Any]) -> t.Any:
        return {"app": current_app.name, "echo": payload, "thread": threading.current_thread().name}

    job = jobs.enqueue("t", {"k": [1, 2]})
    assert jobs.process_due() == {"claimed": 1, "succeeded": 1, "retried": 0, "dead": 0}
    done = jobs.get(job.id)
    assert done is not None
    assert done.status == "succeeded" and done.attempts == 1
    assert done.result["app"] == app.name and done.result["echo"] == {"k": [1, 2]}
    assert done.result["thread"] != threading.current_thread().name
    assert done.started_at is not None and done.finished_at is not None
    assert done.finished_at >= done.started_at


def test_handler_session_is_isolated(app: Flask, jobs: DurableJobs, db: SQLAlchemy) -> None:
    note = sa.Table("notes2", db.metadata, sa.Column("id", sa.Integer, primary_key=True))
    note.create(db.engine)

    @jobs.handler("breaks_session", max_attempts=1)
    def breaks(payload: dict[str, t.Any]) -> None:
        db.session.execute(note.insert().values(id=1))
        db.session.execute(note.insert().values(id=1))  # IntegrityError, left unhandled

    @jobs.handler("writes")
    def writes(payload: dict[str, t.Any]) -> None:
        db.session.execute(note.insert().values(id=payload["id"]))
        db.session.commit()

    bad = jobs.enqueue("breaks_session", {})
    good = jobs.enqueue("writes", {"id": 7})
    counts = jobs.drain()
    assert counts["succeeded"] == 1 and counts["dead"] == 1
    assert jobs.get(bad.id).status == "dead"  # type: ignore[union-attr]
    assert "IntegrityError" in (jobs.get(bad.id).last_error or "")  # type: ignore[union-attr]
    assert jobs.get(good.id).status == "succeeded"  # type: ignore[union-attr]
    with db.engine.connect() as conn:
        assert conn.execute(sa.select(note.c.id)).scalars().all() == [7]


def test_non_json_result_goes_dead(app: Flask, jobs: DurableJobs) -> None:
    jobs.handler("t")(lambda p: {"when": dt.datetime.now()})
    job = jobs.enqueue("t", {})
    assert jobs.process_due()["dead"] == 1
    done = jobs.get(job.id)
    assert done is not None and done.status == "dead" and done.attempts == 1
    assert "datetime" in (done.last_error or "") and "JSON" in (done.last_error or "")


def test_nul_characters_in_errors_and_results_do_not_block_the_batch(
    app: Flask, jobs: DurableJobs
) -> None:
    """PostgreSQL text can't hold NUL: such an outcome must not stop the batch's write."""

    @jobs.handler("raises", max_attempts=1)
    def raises(payload: dict[str, t.Any]) -> None:
        raise ValueError("bad\x00byte")

    jobs.handler("returns")(lambda p: {"x": "a\x00b"})
    jobs.handler("fine")(lambda p: p["n"])
    raised = jobs.enqueue("raises", {})
    returned = jobs.enqueue("returns", {})
    fine = [jobs.enqueue("fine", {"n": n}) for n in range(3)]
    counts = jobs.process_due()
    assert counts == {"claimed": 5, "succeeded": 3, "retried": 0, "dead": 2}
    got = jobs.get(raised.id)
    assert got is not None and got.status == "dead"
    assert "ValueError: bad\\x00byte" in (got.last_error or "")
    got = jobs.get(returned.id)
    assert got is not None and got.status == "dead"
    assert "result['x'] contains a NUL character" in (got.last_error or "")
    assert [jobs.get(j.id).result for j in fine] == [0, 1, 2]  # type: ignore[union-attr]


def test_outcome_texts_are_written_verbatim(app: Flask, jobs: DurableJobs) -> None:
    """Quotes, backslashes, braces, NULL-looking text and newlines survive the batched write."""
    texts = ['say "hi"', "C:\\temp\\new", "{a,b}", "NULL", "", "line\nbreak\ttab", "é漢🙂"]

    @jobs.handler("t", max_attempts=1)
    def handler(payload: dict[str, t.Any]) -> str:
        if payload["fail"]:
            raise Discard(payload["text"])
        return t.cast(str, payload["text"])

    ok = [jobs.enqueue("t", {"text": text, "fail": False}) for text in texts]
    failed = [jobs.enqueue("t", {"text": text, "fail": True}) for text in texts]
    jobs.drain()
    assert [jobs.get(j.id).result for j in ok] == texts  # type: ignore[union-attr]
    assert [jobs.get(j.id).last_error for j in failed] == [  # type: ignore[union-attr]
        f"Discard: {text}" for text in texts
    ]


def test_discard_goes_dead_at_once(app: Flask, jobs: DurableJobs) -> None:
    @jobs.handler("t", max_attempts=5)
    def handler(payload: dict[str, t.Any]) -> None:
        raise Discard("customer deleted")

    job = jobs.enqueue("t", {})
    assert jobs.process_due()["dead"] == 1
    done = jobs.get(job.id)
    assert done is not None and done.status == "dead" and done.attempts == 1
    assert "customer deleted" in (done.last_error or "")
    assert done.finished_at is not None


# -- retries ------------------------------------------------------------------


def test_default_backoff_steps_within_jitter(app: Flask, jobs: DurableJobs) -> None:
    @jobs.handler("flaky", max_attempts=7)
    def flaky(payload: dict[str, t.Any]) -> None:
        raise RuntimeError("upstream down")

    job = jobs.enqueue("flaky", {})
    expected = [30, 120, 480, 1920, 3600, 3600]
    offset = 0.0
    for attempt, seconds in enumerate(expected, start=1):
        shift_clock(app, offset)
        before = state(app).now()
        assert jobs.process_due()["retried"] == 1
        after = state(app).now()
        current = jobs.get(job.id)
        assert current is not None
        assert current.status == "retrying" and current.attempts == attempt
        assert "RuntimeError: upstream down" in (current.last_error or "")
        low = before + dt.timedelta(seconds=seconds * 0.9)
        high = after + dt.timedelta(seconds=seconds * 1.1)
        assert low <= current.run_at <= high, (attempt, current.run_at - before)
        assert jobs.process_due()["claimed"] == 0  # not due before its backoff
        offset = (current.run_at - dt.datetime.now(UTC)).total_seconds() + 1
    shift_clock(app, offset)
    assert jobs.process_due()["dead"] == 1
    final = jobs.get(job.id)
    assert final is not None and final.status == "dead" and final.attempts == 7


@pytest.mark.config(DURABLE_JOBS_BACKOFF_BASE=2, DURABLE_JOBS_BACKOFF_FACTOR=3,
                    DURABLE_JOBS_BACKOFF_MAX=10, DURABLE_JOBS_BACKOFF_JITTER=0)
def test_backoff_config_and_handler_policy(app: Flask, jobs: DurableJobs) -> None:
    jobs.handler("cfg", max_attempts=9)(lambda p: 1 / 0)
    jobs.handler("own", max_attempts=9, backoff=lambda n: 100 * n)(lambda p: 1 / 0)
    a = jobs.enqueue("cfg", {})
    b = jobs.enqueue("own", {})
    waits: dict[int, list[float]] = {a.id: [], b.id: []}
    offset = 0.0
    for _ in range(3):
        shift_clock(app, offset)
        now = state(app).now()
        jobs.process_due()
        for job_id in waits:
            current = jobs.get(job_id)
            assert current is not None
            waits[job_id].append(round((current.run_at - now).total_seconds()))
        offset += 1000
    assert waits[a.id] == [2, 6, 10]
    assert waits[b.id] == [100, 200, 300]


def test_dead_after_max_attempts(app: Flask, jobs: DurableJobs) -> None:
    calls = []

    @jobs.handler("t", max_attempts=2, backoff=lambda n: 0)
    def handler(payload: dict[str, t.Any]) -> None:
        calls.append(1)
        raise ValueError("nope")

    job = jobs.enqueue("t", {})
    override = jobs.enqueue("t", {}, max_attempts=1)
    counts = jobs.drain()
    assert counts == {"claimed": 3, "succeeded": 0, "retried": 1, "dead": 2}
    assert jobs.get(job.id).attempts == 2  # type: ignore[union-attr]
    assert jobs.get(override.id).attempts == 1  # type: ignore[union-attr]
    assert len(calls) == 3


def test_timeout_fails_attempt_and_discards_late_result(app: Flask, jobs: DurableJobs) -> None:
    release = threading.Event()

    @jobs.handler("slow", timeout=0.3, max_attempts=2, backoff=lambda n: 3600)
    def slow(payload: dict[str, t.Any]) -> str:
        release.wait(10)
        return "late"

    job = jobs.enqueue("slow", {})
    started = time.monotonic()
    assert jobs.process_due()["retried"] == 1
    assert time.monotonic() - started < 5
    current = jobs.get(job.id)
    assert current is not None and current.status == "retrying"
    assert "timed out after 0.3 s" in (current.last_error or "")
    release.set()
    time.sleep(0.3)  # the abandoned thread returns "late" now; it must be discarded
    after = jobs.get(job.id)
    assert after is not None and after.status == "retrying" and after.result is None
    # the pool replaced the stuck thread: work still flows
    jobs.handler("quick")(lambda p: "ok")
    quick = jobs.enqueue("quick", {})
    jobs.process_due()
    assert jobs.get(quick.id).status == "succeeded"  # type: ignore[union-attr]


@pytest.mark.config(DURABLE_JOBS_CONCURRENCY=1)
def test_a_timeout_inside_a_chunk_hands_the_rest_to_the_replacement_thread(
    app: Flask, jobs: DurableJobs
) -> None:
    """Quick jobs travel to the threads in chunks; the jobs queued behind one
    that times out still run, on the thread that replaces the stuck one."""
    release = threading.Event()

    @jobs.handler("slow", timeout=0.3, max_attempts=1)
    def slow(payload: dict[str, t.Any]) -> None:
        release.wait(10)

    jobs.handler("quick")(lambda p: p["n"])
    jobs.enqueue_many("quick", [{"n": n} for n in range(20)])
    assert jobs.process_due()["succeeded"] == 20  # quick on average: chunks from now on
    state = app.extensions["durable_jobs"]
    assert state.runner.chunk(10) == 10  # one thread: the whole batch is one chunk

    stuck = jobs.enqueue("slow", {})
    behind = [jobs.enqueue("quick", {"n": n}) for n in range(5)]
    result: list[dict[str, int]] = []

    def process() -> None:
        with app.app_context():
            result.append(jobs.process_due())

    worker = threading.Thread(target=process)
    worker.start()
    worker.join(10)
    release.set()
    assert not worker.is_alive(), "the jobs behind the timed-out one never ran"
    assert result == [{"claimed": 6, "succeeded": 5, "retried": 0, "dead": 1}]
    assert "timed out" in (jobs.get(stuck.id).last_error or "")  # type: ignore[union-attr]
    assert [jobs.get(j.id).result for j in behind] == list(range(5))  # type: ignore[union-attr]


# -- claiming -----------------------------------------------------------------


def test_unhandled_types_wait_and_are_reported(
    app: Flask, jobs: DurableJobs, database_url: str, db: SQLAlchemy
) -> None:
    jobs.handler("old")(lambda p: None)
    job = jobs.enqueue("old", {})
    # A newer process no longer has the handler: it never claims or kills the job.
    with another_app(database_url, name="newer") as newer:
        newer.handler("new")(lambda p: None)
        assert newer.drain()["claimed"] == 0
        stats = newer.stats()
        assert stats["unhandled"] == {"old": 1}
        assert stats["by_status"]["pending"] == 1
    assert jobs.get(job.id).status == "pending"  # type: ignore[union-attr]
    assert jobs.stats()["unhandled"] == {}
    assert jobs.drain()["succeeded"] == 1


@pytest.mark.config(DURABLE_JOBS_QUEUES="mail, reports")
def test_queues_setting(app: Flask, jobs: DurableJobs) -> None:
    jobs.handler("m", queue="mail")(lambda p: None)
    jobs.handler("r", queue="other")(lambda p: None)
    mail = jobs.enqueue("m", {})
    other = jobs.enqueue("r", {})
    moved = jobs.enqueue("r", {}, queue="reports")
    jobs.drain()
    assert jobs.get(mail.id).status == "succeeded"  # type: ignore[union-attr]
    assert jobs.get(moved.id).status == "succeeded"  # type: ignore[union-attr]
    assert jobs.get(other.id).status == "pending"  # type: ignore[union-attr]


def test_priority_then_age(app: Flask, jobs: DurableJobs) -> None:
    order: list[str] = []
    jobs.handler("t")(lambda p: order.append(p["n"]))
    jobs.enqueue("t", {"n": "low-1"}, priority=5)
    jobs.enqueue("t", {"n": "high"}, priority=-1)
    jobs.enqueue("t", {"n": "low-2"}, priority=5)
    jobs.enqueue("t", {"n": "mid"})
    for _ in range(4):
        assert jobs.process_due(limit=1)["claimed"] == 1
    assert order == ["high", "mid", "low-1", "low-2"]


def test_one_claim_returns_its_jobs_by_priority_then_due_time(
    app: Flask, jobs: DurableJobs
) -> None:
    """The order one claim returns its jobs in, which is the order the loop
    hands them to the handler threads: priority, then due time to the
    microsecond (ids enqueued against that order), then id."""
    jobs.handler("t")(lambda p: None)
    st = state(app)
    now = st.now()
    at = now - dt.timedelta(minutes=5)
    low = jobs.enqueue("t", {}, priority=5)
    due_now = jobs.enqueue("t", {})
    a_microsecond_later = jobs.enqueue("t", {}, run_at=at + dt.timedelta(microseconds=1))
    due_at = jobs.enqueue("t", {}, run_at=at)
    high = jobs.enqueue("t", {}, priority=-1)
    earliest = jobs.enqueue("t", {}, run_at=now - dt.timedelta(hours=1))
    rows = st.store.claim(job_types=["t"], queues=None, limit=10, now=st.now(),
                          lease_until=now + dt.timedelta(seconds=60), token="c" * 32,
                          worker_id="w")
    assert [row.id for row in rows] == [
        high.id, earliest.id, due_at.id, a_microsecond_later.id, due_now.id, low.id]


def test_process_due_limit_and_drain(app: Flask, jobs: DurableJobs) -> None:
    jobs.handler("t")(lambda p: None)
    jobs.enqueue_many("t", [{}] * 25)
    assert jobs.process_due(limit=10)["claimed"] == 10
    with pytest.raises(ValueError, match="limit"):
        jobs.process_due(limit=0)
    assert jobs.drain() == {"claimed": 15, "succeeded": 15, "retried": 0, "dead": 0}
    assert jobs.drain()["claimed"] == 0


# -- leases -------------------------------------------------------------------


@pytest.mark.config(DURABLE_JOBS_LEASE_SECONDS=0.6)
def test_heartbeat_keeps_a_long_job_leased(app: Flask, jobs: DurableJobs) -> None:
    runs = []

    @jobs.handler("long")
    def long(payload: dict[str, t.Any]) -> str:
        runs.append(1)
        time.sleep(3)  # five times the lease
        return "done"

    job = jobs.enqueue("long", {})
    with sweeping(app, jobs) as recovered:
        counts = jobs.process_due()
    assert counts["succeeded"] == 1
    assert sum(recovered) == 0 and len(runs) == 1
    assert jobs.get(job.id).result == "done"  # type: ignore[union-attr]


def test_a_failed_outcome_write_is_written_again(
    app: Flask, jobs: DurableJobs, monkeypatch: pytest.MonkeyPatch, caplog: t.Any
) -> None:
    """The database refuses an outcome write once (on PostgreSQL the write
    runs on the writer's thread): the loop keeps those outcomes and writes
    them again; every job ends succeeded, run once, counted once."""
    runs: list[int] = []
    jobs.handler("t")(lambda p: runs.append(p["n"]))
    jobs.enqueue_many("t", [{"n": n} for n in range(30)])
    store = state(app).store
    real_finish = store.finish
    failures = []

    def finish(outcomes: t.Any, now: t.Any) -> t.Any:
        if not failures:
            failures.append(len(outcomes))
            raise sa.exc.OperationalError("UPDATE", {}, Exception("connection reset"))
        return real_finish(outcomes, now)

    monkeypatch.setattr(store, "finish", finish)
    drained: list[dict[str, int]] = []

    def drain() -> None:
        with app.app_context():
            drained.append(jobs.drain())

    thread = threading.Thread(target=drain, daemon=True)
    thread.start()
    thread.join(60)
    assert not thread.is_alive(), "the refused outcomes were never written again"
    counts = drained[0]
    assert failures and failures[0] > 0
    assert "writing" in caplog.text and "will retry" in caplog.text
    assert counts["claimed"] == counts["succeeded"] == 30
    assert sorted(runs) == list(range(30))
    assert jobs.stats()["by_status"]["succeeded"] == 30


def test_sweep_and_fencing(app: Flask, jobs: DurableJobs) -> None:
    jobs.handler("t", max_attempts=2)(lambda p: None)
    job = jobs.enqueue("t", {})
    st = state(app)
    store = st.store
    now = st.now()
    lease = now + dt.timedelta(seconds=60)
    first = store.claim(job_types=["t"], queues=None, limit=10, now=now, lease_until=lease,
                        token="a" * 32, worker_id="w1")
    assert [row.id for row in first] == [job.id]
    assert store.sweep(now) == []  # lease still valid

    later = now + dt.timedelta(seconds=61)
    assert store.sweep(later) == [(job.id, "t", "retrying", None)]
    swept = jobs.get(job.id)
    assert swept is not None and swept.status == "retrying" and swept.attempts == 1
    assert "lease expired" in (swept.last_error or "") and "w1" in (swept.last_error or "")
    assert swept.run_at <= later  # due again at once, no backoff

    from flask_durable_jobs.store import Finish

    # the first worker comes back: its completion is refused by the database
    assert store.finish([Finish(job.id, "a" * 32, "succeeded", result='"stale"')], later) == set()
    second = store.claim(job_types=["t"], queues=None, limit=10, now=later,
                         lease_until=later + dt.timedelta(seconds=60), token="b" * 32,
                         worker_id="w2")
    assert [row.attempts for row in second] == [2]
    assert store.renew([(job.id, "a" * 32)], later) == set()
    assert store.finish([Finish(job.id, "a" * 32, "succeeded", result='"stale"')], later) == set()
    # an expired lease with no attempts left goes dead
    final = later + dt.timedelta(seconds=200)
    assert store.sweep(final) == [(job.id, "t", "dead", None)]
    dead = jobs.get(job.id)
    assert dead is not None and dead.status == "dead" and dead.result is None
    assert dead.finished_at is not None


def test_release_does_not_count_the_attempt(app: Flask, jobs: DurableJobs) -> None:
    jobs.handler("t")(lambda p: None)
    job = jobs.enqueue("t", {})
    st = state(app)
    now = st.now()
    rows = st.store.claim(job_types=["t"], queues=None, limit=1, now=now,
                          lease_until=now + dt.timedelta(seconds=60), token="c" * 32,
                          worker_id="w")
    assert rows[0].attempts == 1
    assert st.store.release([(job.id, "c" * 32)], now) == 1
    back = jobs.get(job.id)
    assert back is not None and (back.status, back.attempts) == ("pending", 0)
    assert back.run_at <= st.now()


@pytest.mark.config(DURABLE_JOBS_SHUTDOWN_TIMEOUT=0.5, DURABLE_JOBS_POLL_INTERVAL=0.05)
def test_stop_releases_unfinished_jobs(app: Flask, jobs: DurableJobs) -> None:
    started = threading.Event()
    quick_done = []

    @jobs.handler("long")
    def long(payload: dict[str, t.Any]) -> None:
        started.set()
        time.sleep(5)

    jobs.handler("quick")(lambda p: quick_done.append(1))
    job = jobs.enqueue("long", {})
    jobs.start()
    assert started.wait(5)
    begun = time.monotonic()
    jobs.stop()
    assert time.monotonic() - begun < 4
    back = jobs.get(job.id)
    assert back is not None and back.status == "pending" and back.attempts == 0
    # after stop nothing is claimed by the stopped scheduler
    jobs.enqueue("quick", {})
    time.sleep(0.3)
    assert quick_done == []


# -- scheduler ----------------------------------------------------------------


@pytest.mark.config(DURABLE_JOBS_POLL_INTERVAL=30)
def test_enqueue_wakes_the_scheduler(app: Flask, jobs: DurableJobs) -> None:
    done = threading.Event()
    jobs.handler("t")(lambda p: done.set())
    jobs.start()
    time.sleep(0.3)  # the first tick has run and found nothing
    jobs.enqueue("t", {})
    assert done.wait(5), "an enqueue must not wait for the 30 s poll interval"


@pytest.mark.config(DURABLE_JOBS_POLL_INTERVAL=0.05)
def test_a_failing_tick_does_not_stop_the_scheduler(
    app: Flask, jobs: DurableJobs, db: SQLAlchemy, caplog: pytest.LogCaptureFixture
) -> None:
    done = threading.Event()
    jobs.handler("t")(lambda p: done.set())
    st = state(app)
    real_claim = st.store.claim
    failures = []

    def broken_claim(**kwargs: t.Any) -> t.Any:
        if len(failures) < 3:
            failures.append(1)
            raise RuntimeError("database went away")
        return real_claim(**kwargs)

    st.store.claim = broken_claim
    jobs.enqueue("t", {})
    jobs.start()
    assert done.wait(5)
    assert len(failures) == 3
    assert "database went away" in caplog.text


# -- admin operations -----------------------------------------------------------


def test_cancel_retry_delete(app: Flask, jobs: DurableJobs) -> None:
    jobs.handler("t", max_attempts=1)(lambda p: 1 / 0)
    job = jobs.enqueue("t", {}, delay=60)
    cancelled = jobs.cancel(job.id)
    assert cancelled.status == "cancelled" and cancelled.finished_at is not None
    with pytest.raises(InvalidTransition, match="'cancelled'"):
        jobs.cancel(job.id)
    retried = jobs.retry(job.id)
    assert (retried.status, retried.attempts, retried.finished_at) == ("pending", 0, None)
    assert retried.run_at <= state(app).now()
    with pytest.raises(InvalidTransition, match="'pending'"):
        jobs.retry(job.id)
    jobs.drain()
    assert jobs.get(job.id).status == "dead"  # type: ignore[union-attr]
    assert jobs.retry(job.id).attempts == 0
    jobs.delete(job.id)
    assert jobs.get(job.id) is None
    for action in (jobs.cancel, jobs.retry, jobs.delete):
        with pytest.raises(JobNotFound):
            action(job.id)


def test_running_job_cannot_be_deleted(app: Flask, jobs: DurableJobs) -> None:
    jobs.handler("t")(lambda p: None)
    job = jobs.enqueue("t", {})
    st = state(app)
    now = st.now()
    st.store.claim(job_types=["t"], queues=None, limit=1, now=now,
                   lease_until=now + dt.timedelta(seconds=60), token="d" * 32, worker_id="w")
    with pytest.raises(InvalidTransition, match="'running'"):
        jobs.delete(job.id)


def test_stats(app: Flask, jobs: DurableJobs) -> None:
    jobs.handler("a")(lambda p: None)
    jobs.handler("b", max_attempts=1)(lambda p: 1 / 0)
    jobs.enqueue_many("a", [{}] * 3)
    jobs.enqueue("b", {})
    jobs.enqueue("a", {}, delay=3600)
    move_time(seconds=30)  # the four due jobs have waited 30 s; the delayed one is not due
    empty = jobs.stats()
    assert empty["by_status"]["pending"] == 5
    assert 30 <= empty["oldest_due_age_seconds"] < 40
    jobs.drain()
    stats = jobs.stats()
    assert set(stats["by_status"]) == {"pending", "running", "retrying", "succeeded", "dead",
                                       "cancelled"}
    assert stats["by_status"]["succeeded"] == 3 and stats["by_status"]["dead"] == 1
    assert stats["by_type"]["a"]["succeeded"] == 3 and stats["by_type"]["a"]["pending"] == 1
    assert stats["by_type"]["b"]["dead"] == 1
    assert stats["total"] == 5
    assert stats["oldest_due_age_seconds"] is None  # the delayed job is not due


def test_counts_read_the_partial_indexes_on_sqlite(tmp_path: t.Any) -> None:
    """Stats, the health backlog and a filtered list count read only the
    partial indexes on SQLite, never every row of the table (SQLite matches a
    query to a partial index only on literal values, not bound parameters)."""
    with sqlite_jobs(tmp_path) as jobs:
        st = state(current_app)
        jobs.enqueue_many("t", [{}] * 50)
        jobs.drain()
        statements: list[tuple[str, t.Any]] = []
        sa.event.listen(st.store.engine, "before_cursor_execute",
                        lambda _c, _cur, sql, params, *_: statements.append((sql, params)))
        jobs.stats()
        st.store.due_backlog(st.now())
        jobs.list_jobs(status="dead")
        counts = [(sql, params) for sql, params in statements if "count(" in sql]
        # stats (one statement in three parts: ended, waiting, running), backlog, list total
        assert len(counts) == 3
        with st.store.engine.connect() as conn:
            driver = conn.connection.driver_connection
            for sql, params in counts:
                plan = [row[3] for row in driver.execute(f"EXPLAIN QUERY PLAN {sql}", params)]
                scans = [step for step in plan if step.startswith("SCAN durable_jobs")]
                assert all("INDEX" in step for step in scans), (sql, plan)
                assert any("INDEX ix_durable_jobs_" in step for step in plan), (sql, plan)


def test_prune(app: Flask, jobs: DurableJobs) -> None:
    jobs.handler("ok")(lambda p: None)
    jobs.handler("bad", max_attempts=1)(lambda p: 1 / 0)
    jobs.enqueue_many("ok", [{}] * 1205)
    jobs.enqueue("bad", {})
    jobs.drain()
    keep = jobs.enqueue("ok", {}, delay=10)
    assert jobs.prune() == 0  # nothing is 30 days old
    shift_clock(app, 31 * 86400)
    assert jobs.prune() == 1205  # succeeded ones (in batches); dead kept 90 days
    assert jobs.stats()["by_status"]["dead"] == 1
    shift_clock(app, 91 * 86400)
    assert jobs.prune(older_than=dt.timedelta(days=365)) == 1  # dead past its retention
    assert jobs.get(keep.id) is not None


# -- setup ----------------------------------------------------------------------


def test_init_twice_and_several_apps(database_url: str, tmp_path: t.Any) -> None:
    db = SQLAlchemy()
    jobs = DurableJobs()
    jobs.handler("t")(lambda p: p["app"])
    apps = []
    for name, url in (("one", database_url), ("two", f"sqlite:///{tmp_path / 'two.db'}")):
        app = Flask(name)
        app.config.update(SQLALCHEMY_DATABASE_URI=url, DURABLE_JOBS_SCHEDULER=False)
        db.init_app(app)
        jobs.init_app(app, db=db)
        apps.append(app)
    with pytest.raises(RuntimeError, match="already registered"):
        jobs.init_app(apps[0], db=db)
    for app in apps:
        with app.app_context():
            db.create_all()
            jobs.enqueue("t", {"app": app.name})
    for app in apps:
        with app.app_context():
            try:
                assert jobs.drain()["succeeded"] == 1
                (job,), total = jobs.list_jobs()
                assert total == 1 and job.result == app.name
            finally:
                jobs.stop()
                db.engine.dispose()


def test_init_app_needs_sqlalchemy() -> None:
    with pytest.raises(RuntimeError, match="Flask-SQLAlchemy"):
        DurableJobs(Flask("bare"))


def test_db_found_in_extensions(database_url: str) -> None:
    app = Flask("implicit")
    app.config.update(SQLALCHEMY_DATABASE_URI=database_url, DURABLE_JOBS_SCHEDULER=False)
    db = SQLAlchemy(app)
    jobs = DurableJobs(app)
    assert "durable_jobs" in db.metadata.tables
    with app.app_context():
        db.create_all()
        jobs.handler("t")(lambda p: 1)
        jobs.enqueue("t", {})
        assert jobs.drain()["succeeded"] == 1
        jobs.stop()
        db.engine.dispose()


def test_enqueue_commit_with_an_idle_session(app: Flask, jobs: DurableJobs, db: SQLAlchemy) -> None:
    """commit=True with nothing pending may commit the job on its own; the
    session is left as it was, and a session with work still commits both."""
    jobs.handler("t")(lambda p: None)
    job = jobs.enqueue("t", {"n": 1})
    assert not db.session().in_transaction()
    other = sa.create_engine(db.engine.url)
    with other.connect() as conn:  # durable: visible to another connection at once
        status = conn.execute(sa.text("SELECT status FROM durable_jobs WHERE id = :i"),
                              {"i": job.id}).scalar()
    other.dispose()
    assert status == "pending"
    again = jobs.enqueue("t", {"n": 2}, idempotency_key="k")
    assert jobs.enqueue("t", {"n": 3}, idempotency_key="k").id == again.id
    note = sa.Table("notes3", db.metadata, sa.Column("id", sa.Integer, primary_key=True))
    note.create(db.engine)
    db.session.execute(note.insert().values(id=1))
    jobs.enqueue("t", {"n": 4})  # the pending row goes with it
    db.session.rollback()
    with db.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(note)).scalar() == 1


@pytest.mark.config(DURABLE_JOBS_SECRET_KEY="k" * 43 + "=", DURABLE_JOBS_CALLBACK_SECRET="s",
                    DURABLE_JOBS_CALLBACK_HOSTS=["example.com"])
@pytest.mark.parametrize("how", ["alone", "in a transaction", "with a key"])
def test_an_enqueue_stores_every_option(
    app: Flask, jobs: DurableJobs, db: SQLAlchemy, how: str
) -> None:
    """Every option of an enqueue is stored as given, whether the job commits
    alone, in the caller's transaction or under an idempotency key; the
    secrets never in plain text."""
    jobs.handler("t")(lambda p: None)
    at = dt.datetime(2031, 5, 6, 12, 0, 0, 123456, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    payload = {"s": "é \"q\" \\ \n", "n": [1, 2.5, None, True], "d": {"k": {}}}
    job = jobs.enqueue(
        "t", payload, run_at=at, queue="mail", priority=-3, max_attempts=7, owner="user-1",
        secrets={"api": "x-secret"}, callback_url="https://example.com/hook",
        commit=how != "in a transaction", idempotency_key="once" if how == "with a key" else None,
    )
    db.session.commit()
    stored = jobs.get(job.id)
    assert stored is not None
    expected = {
        "job_type": "t", "queue": "mail", "status": "pending", "payload": payload,
        "attempts": 0, "max_attempts": 7, "priority": -3, "run_at": at, "owner": "user-1",
        "callback_url": "https://example.com/hook", "callback_attempts": 0,
        "callback_status": None, "batch_id": None, "result": None, "last_error": None,
        "started_at": None, "finished_at": None,
        "idempotency_key": "once" if how == "with a key" else None,
    }
    assert {key: getattr(stored, key) for key in expected} == expected
    assert {key: getattr(job, key) for key in expected} == expected  # what enqueue returned
    assert stored.created_at == stored.updated_at == job.created_at
    with db.engine.connect() as conn:
        secrets, run_at = conn.execute(sa.text("SELECT secrets, run_at FROM durable_jobs")).one()
    assert secrets and "x-secret" not in secrets
    if isinstance(run_at, str):  # SQLite: SQLAlchemy's text for a DATETIME, in UTC
        assert run_at == "2031-05-06 10:00:00.123456"


@contextlib.contextmanager
def sqlite_jobs(tmp_path: t.Any) -> t.Iterator[DurableJobs]:
    """An app of its own on an SQLite file, tables made, handler ``t`` registered."""
    with another_app(f"sqlite:///{tmp_path / 'jobs.db'}", name="sqlite_app") as jobs:
        jobs.handler("t")(lambda p: None)
        state(current_app).db.create_all()
        yield jobs


@pytest.mark.parametrize("app_setting", [None, 3])
def test_a_standalone_sqlite_enqueue_is_as_durable_as_the_apps_writes(
    tmp_path: t.Any, app_setting: int | None
) -> None:
    """An enqueue that commits alone on SQLite commits on a connection of the
    app's engine: it syncs as the app's connections do (by default FULL; here
    also EXTRA, set by the app), not as the library's own (NORMAL)."""
    with sqlite_jobs(tmp_path) as jobs:
        engine = state(current_app).db.engine
        if app_setting is not None:
            sa.event.listen(engine, "connect", lambda conn, _record: conn.execute(
                f"PRAGMA synchronous={app_setting}"))
            engine.dispose()
        with engine.connect() as conn:
            apps = conn.exec_driver_sql("PRAGMA synchronous").scalar()
        assert apps == (2 if app_setting is None else app_setting)
        with state(current_app).store.engine.connect() as conn:  # the library's own: NORMAL
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1
        synced: list[int] = []

        def inserting(_conn: t.Any, cursor: t.Any, statement: str, *_: t.Any) -> None:
            if statement.startswith("INSERT INTO durable_jobs"):
                synced.append(cursor.connection.execute("PRAGMA synchronous").fetchone()[0])

        sa.event.listen(engine, "before_cursor_execute", inserting)
        job = jobs.enqueue("t", {"n": 1})
        assert synced == [apps]
        assert jobs.get(job.id) is not None


def test_standalone_sqlite_enqueues_from_many_threads_are_all_stored(tmp_path: t.Any) -> None:
    ids: list[int] = []
    errors: list[BaseException] = []
    with sqlite_jobs(tmp_path) as jobs:
        app = current_app._get_current_object()  # type: ignore[attr-defined]

        def enqueue_some(worker: int) -> None:
            try:
                with app.app_context():
                    for n in range(40):
                        ids.append(jobs.enqueue("t", {"worker": worker, "n": n}).id)
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=enqueue_some, args=(w,)) for w in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        stored = {
            job.id: (job.payload["worker"], job.payload["n"])
            for page in (1, 2)
            for job in jobs.list_jobs(page=page, per_page=200)[0]
        }
    assert errors == []
    assert sorted(stored) == sorted(ids)  # every id returned is a stored job, once
    assert sorted(stored.values()) == [(w, n) for w in range(8) for n in range(40)]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_enqueues(tmp_path: t.Any) -> None:
    """A process forked after its parent enqueued (gunicorn's preload) enqueues
    too, and the parent goes on enqueueing after it."""
    with sqlite_jobs(tmp_path) as jobs:
        first = jobs.enqueue("t", {"who": "parent"})
        pid = os.fork()
        if pid == 0:  # the child
            code = 1
            try:
                # as SQLAlchemy asks of a forked process: its own connections
                state(current_app).db.engine.dispose(close=False)
                jobs.enqueue("t", {"who": "child"})
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        last = jobs.enqueue("t", {"who": "parent again"})
        listed, total = jobs.list_jobs()
        assert total == 3
        assert [j.payload["who"] for j in sorted(listed, key=lambda j: j.id)] == [
            "parent", "child", "parent again"]
        assert last.id > first.id


@pytest.mark.config(DURABLE_JOBS_POLL_INTERVAL=0.05, DURABLE_JOBS_CONCURRENCY=4)
def test_stats_count_each_job_once_while_jobs_move(app: Flask, jobs: DurableJobs) -> None:
    """Stats read while the scheduler moves jobs between statuses: every job is
    counted exactly once (one snapshot), whatever status it is in."""
    jobs.handler("t")(lambda p: time.sleep(0.002))
    jobs.enqueue_many("t", [{}] * 300)
    jobs.start()
    seen = set()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        stats = jobs.stats()
        assert stats["total"] == 300, stats["by_status"]
        assert sum(stats["by_status"].values()) == 300
        seen.add(stats["by_status"]["running"] > 0)
        if stats["by_status"]["succeeded"] == 300:
            break
    jobs.stop()
    assert jobs.stats()["by_status"]["succeeded"] == 300
    assert True in seen, "stats never saw jobs running: the test did not race"
