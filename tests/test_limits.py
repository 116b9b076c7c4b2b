"""Concurrency and rate limits: argument checks, one process, and three real
worker processes whose handlers record their own start and end times."""

from __future__ import annotations

import pathlib
import time
import typing as t

import pytest
import sqlalchemy as sa
from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from flask_durable_jobs import DurableJobs
from flask_durable_jobs.store.queues import RATE_WINDOW_MARGIN
from tests.helpers import wait_for
from tests.workers import Workers, most_at_once, traces, worker_app


def _noop(payload: dict[str, t.Any]) -> None:
    return None


@pytest.mark.parametrize("value", [0, -1, 1.5, "2", True])
def test_concurrency_must_be_a_positive_int(jobs: DurableJobs, value: t.Any) -> None:
    with pytest.raises(ValueError, match="concurrency must be an integer >= 1"):
        jobs.handler("limited", concurrency=value)(_noop)
    assert "limited" not in jobs.handlers


@pytest.mark.parametrize("value", ["10", "10/d", "x/s", "0/s", "-1/m", "1.5/s", 10, "٣/s",
                                   "100001/s"])
def test_rate_limit_must_be_n_per_second_minute_or_hour(jobs: DurableJobs, value: t.Any) -> None:
    with pytest.raises(ValueError, match="rate_limit must be 'N/s', 'N/m' or 'N/h'"):
        jobs.handler("limited", rate_limit=value)(_noop)
    assert "limited" not in jobs.handlers


def test_concurrency_key_must_be_callable_and_needs_concurrency(jobs: DurableJobs) -> None:
    with pytest.raises(TypeError, match="concurrency_key must be a callable"):
        jobs.handler("limited", concurrency=1, concurrency_key="customer")(_noop)
    with pytest.raises(ValueError, match="concurrency_key needs concurrency"):
        jobs.handler("limited", concurrency_key=lambda p: "k")(_noop)
    assert "limited" not in jobs.handlers


def _count(app: Flask, db: t.Any) -> int:
    with db.engine.connect() as conn:
        return int(conn.execute(sa.text("SELECT count(*) FROM durable_jobs")).scalar_one())


def test_a_key_that_is_not_a_string_is_refused_at_enqueue(
    app: Flask, jobs: DurableJobs, db: t.Any
) -> None:
    @jobs.handler("limited", concurrency=1, concurrency_key=lambda p: p["customer"])
    def limited(payload: dict[str, t.Any]) -> None:
        pass

    with pytest.raises(TypeError, match="concurrency_key of handler 'limited' must return a"
                       " string, returned int 7"):
        jobs.enqueue("limited", {"customer": 7})
    with pytest.raises(TypeError, match=r"payloads\[1\]: concurrency_key"):
        jobs.enqueue_many("limited", [{"customer": "a"}, {"customer": None}])
    with pytest.raises(TypeError, match=r"jobs\[0\]: concurrency_key"):
        jobs.enqueue_batch([("limited", {"customer": 1.5})])
    assert _count(app, db) == 0


def test_one_process_keeps_to_the_limit_and_runs_every_job(
    app: Flask, jobs: DurableJobs
) -> None:
    running: dict[str, int] = {}
    most: dict[str, int] = {}
    seen: list[str] = []

    @jobs.handler("limited", concurrency=2, concurrency_key=lambda p: p["customer"])
    def limited(payload: dict[str, t.Any]) -> None:
        key = payload["customer"]
        running[key] = running.get(key, 0) + 1
        most[key] = max(most.get(key, 0), running[key])
        time.sleep(0.02)
        seen.append(key)
        running[key] -= 1

    payloads = [{"customer": f"c{i % 3}"} for i in range(30)]
    ids = jobs.enqueue_many("limited", payloads)
    assert len(set(ids)) == 30
    assert [jobs.get(i).payload for i in ids] == payloads  # type: ignore[union-attr]
    assert jobs.drain()["succeeded"] == 30
    assert sorted(seen) == sorted(p["customer"] for p in payloads)
    assert max(most.values()) <= 2
    assert all(jobs.get(i).attempts == 1 for i in ids)  # type: ignore[union-attr]


def test_a_plain_handler_beside_limited_ones_runs_too(app: Flask, jobs: DurableJobs) -> None:
    ran: list[str] = []

    @jobs.handler("plain")
    def plain(payload: dict[str, t.Any]) -> None:
        ran.append("plain")

    @jobs.handler("typewide", concurrency=1)
    def typewide(payload: dict[str, t.Any]) -> None:
        ran.append("typewide")

    jobs.enqueue_many("plain", [{}] * 5)
    jobs.enqueue_many("typewide", [{}] * 5)
    jobs.enqueue_batch([("typewide", {}), ("plain", {})])
    assert jobs.drain()["succeeded"] == 12
    assert sorted(ran) == ["plain"] * 6 + ["typewide"] * 6


def test_three_processes_never_run_more_than_two_per_customer(
    database_url: str, tmp_path: pathlib.Path
) -> None:
    """concurrency=2 per customer across three real processes of four threads:
    never more than two of one customer's jobs at one instant, by the
    handlers' own times; the other customers' jobs keep flowing meanwhile."""
    workers = Workers(database_url, tmp_path, DURABLE_JOBS_POLL_INTERVAL=0.1,
                      DURABLE_JOBS_CONCURRENCY=4)
    with worker_app(database_url):
        from tests.procs.limits_app import jobs

        # customer "big" has far more work than its slots; the others little
        payloads = [{"customer": "big", "tag": f"big{i}", "sleep": 0.2} for i in range(30)]
        for c in range(5):
            payloads += [{"customer": f"c{c}", "tag": f"c{c}-{i}", "sleep": 0.2}
                         for i in range(4)]
        jobs.enqueue_many("per_customer", payloads)
        try:
            workers.start(3)
            wait_for("every job to run", lambda: len(traces()) == len(payloads), 120,
                     details=workers.logs)
        finally:
            workers.stop()
        rows = traces("per_customer")
        by_key: dict[str, list[tuple[float, float]]] = {}
        for row in rows:
            by_key.setdefault(row.key, []).append((row.started, row.ended))
        assert {key: most_at_once(spans) for key, spans in by_key.items()} == dict.fromkeys(
            by_key, 2)
        # the other customers did not wait behind "big": all of theirs ended
        # before big's last third began
        big_starts = sorted(s for s, _e in by_key["big"])
        small_ends = max(e for key, spans in by_key.items() if key != "big" for _s, e in spans)
        assert small_ends < big_starts[20]
        assert most_at_once([(r.started, r.ended) for r in rows]) > 2
        assert len({row.pid for row in rows}) == 3
        assert all(job.attempts == 1 for job in (jobs.get(i) for i in range(1, 51)) if job)


def test_a_killed_process_frees_its_slot_when_its_lease_expires(
    database_url: str, tmp_path: pathlib.Path
) -> None:
    lease = 2
    workers = Workers(database_url, tmp_path, DURABLE_JOBS_POLL_INTERVAL=0.1,
                      DURABLE_JOBS_LEASE_SECONDS=lease, DURABLE_JOBS_SWEEP_INTERVAL=600)
    with worker_app(database_url):
        from tests.procs.limits_app import jobs

        held = jobs.enqueue_many("per_customer",
                                 [{"customer": "k", "tag": f"long{i}", "sleep": 60}
                                  for i in range(2)])
        try:
            (first,) = workers.start(1)
            wait_for("both slots of k to be taken", lambda: all(
                jobs.get(i).status == "running" for i in held), 60,  # type: ignore[union-attr]
                details=workers.logs)
            waiting = jobs.enqueue("per_customer", {"customer": "k", "tag": "next"})
            other = jobs.enqueue("per_customer", {"customer": "other", "tag": "other"})
            wait_for("another customer's job to run", lambda: traces(), 30,
                     details=workers.logs)
            time.sleep(1)
            assert jobs.get(waiting.id).status == "pending"  # type: ignore[union-attr]
            workers.kill(first)
            killed_at = time.time()
            workers.start(1)
            wait_for("k's next job to run once the dead process's leases expire",
                     lambda: len(traces()) == 2, 30, details=workers.logs)
        finally:
            workers.stop()
        (row,) = [r for r in traces() if r.tag == "next"]
        assert row.started > killed_at
        assert row.started < killed_at + lease + 10
        assert jobs.get(waiting.id).attempts == 1  # type: ignore[union-attr]
        assert jobs.get(other.id).status == "succeeded"  # type: ignore[union-attr]


def _most_in_a_second(starts: list[float]) -> tuple[int, float]:
    """The most starts in any one-second window, and where that window begins."""
    starts = sorted(starts)
    return max((sum(1 for s in starts[i:] if s < start + 1.0), start)
               for i, start in enumerate(starts))


def test_rate_limit_across_three_processes(
    database_url: str, tmp_path: pathlib.Path
) -> None:
    """rate_limit="20/s" over 10 s: 200 starts (+-10 %); never more than 20 in
    any one-second window by the claims' start times (the database's clock),
    nor by the handlers' own (+1 for rounding at the window's edge, + each
    start in that window that its host delayed after the claim by more than
    the window's margin: the limiter counts claims, and on a loaded host a
    thread may start a claimed job late)."""
    workers = Workers(database_url, tmp_path, DURABLE_JOBS_POLL_INTERVAL=0.05)
    with worker_app(database_url):
        from tests.procs.limits_app import jobs

        try:
            workers.start(3)
            # warm: a process's first job pays for imports and connections,
            # which would delay the first second's starts into the next
            wait_for("three processes to register", lambda: len(jobs.processes()) == 3, 60,
                     details=workers.logs)
            jobs.enqueue_many("traced", [{"tag": f"t{i}", "sleep": 0.5} for i in range(12)])
            wait_for("every process to run a job", lambda: len(
                {r.pid for r in traces("traced")}) == 3, 60, details=workers.logs)
            ids = jobs.enqueue_many("rated", [{"tag": f"r{i}"} for i in range(400)])
            wait_for("rated jobs to run", lambda: traces("rated"), 60, details=workers.logs)
            first = traces("rated")[0].started
            time.sleep(max(0.0, first + 10.5 - time.time()))
        finally:
            workers.stop()
        rows = traces("rated")
        starts = [r.started for r in rows]
        in_ten = [s for s in starts if s < first + 10]
        assert 180 <= len(in_ten) <= 220, len(in_ten)
        assert len(starts) < 400  # the rest wait
        assert len({r.pid for r in rows}) >= 2
        claimed = {int(r.tag[1:]): r.started for r in rows}
        claim_times = {i: jobs.get(job_id).started_at.timestamp()  # type: ignore[union-attr]
                       for i, job_id in enumerate(ids) if i in claimed}
        most, at = _most_in_a_second(list(claim_times.values()))
        assert most <= 20, (most, at)
        margin = RATE_WINDOW_MARGIN * 1.0
        for start in starts:
            window = [i for i, s in claimed.items() if start <= s < start + 1.0]
            late = sum(1 for i in window if claimed[i] - claim_times[i] > margin)
            assert len(window) <= 21 + late, " ".join(
                f"{claimed[i] - start:.3f}+{claimed[i] - claim_times[i]:.3f}" for i in window)


def test_jobs_enqueued_before_the_handler_had_a_limit_still_run(
    app: Flask, jobs: DurableJobs, database_url: str
) -> None:
    """A deploy adds ``concurrency=`` to a handler whose jobs wait in the
    table without a key: the new code runs them, within the type's limit."""

    @jobs.handler("report")
    def plain(payload: dict[str, t.Any]) -> None:
        pass

    ids = jobs.enqueue_many("report", [{"n": i} for i in range(4)])
    jobs.enqueue("report", {"n": 4})

    later = Flask("after_the_deploy")
    later.config.update(SQLALCHEMY_DATABASE_URI=database_url, DURABLE_JOBS_SCHEDULER=False,
                        TESTING=True)
    later_db = SQLAlchemy(later)
    later_jobs = DurableJobs(later, db=later_db)
    running: list[int] = []
    most: list[int] = [0]

    @later_jobs.handler("report", concurrency=1)
    def limited(payload: dict[str, t.Any]) -> None:
        running.append(payload["n"])
        most[0] = max(most[0], len(running))
        time.sleep(0.01)
        running.remove(payload["n"])

    try:
        with later.app_context():
            assert later_jobs.drain()["succeeded"] == 5
            assert most[0] == 1
            assert all(later_jobs.get(i).status == "succeeded" for i in ids)  # type: ignore[union-attr]
    finally:
        with later.app_context():
            later_db.engine.dispose()
