"""Batches: jobs enqueued together and one completion job when all have ended."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import typing as t

import pytest
from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from flask_durable_jobs import DurableJobs

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_batch_completion_runs_once_when_all_ended(app: Flask, jobs: DurableJobs) -> None:
    finished: list[dict[str, t.Any]] = []
    jobs.handler("part")(lambda p: p["n"])
    jobs.handler("bad", max_attempts=1)(lambda p: 1 / 0)
    jobs.handler("done")(lambda p: finished.append(p))
    batch = jobs.enqueue_batch(
        [("part", {"n": 1}), ("bad", {}), ("part", {"n": 2}), ("part", {"n": 3})],
        on_complete="done", on_complete_payload={"album": 7},
    )
    assert len(batch.job_ids) == 4 and len(set(batch.job_ids)) == 4
    assert [jobs.get(i).job_type for i in batch.job_ids] == ["part", "bad", "part", "part"]  # type: ignore[union-attr]
    assert all(jobs.get(i).batch_id == batch.id for i in batch.job_ids)  # type: ignore[union-attr]
    jobs.cancel(batch.job_ids[3])
    status = jobs.batch_status(batch.id)
    assert status is not None and status["all_terminal"] is False
    assert status["by_status"]["pending"] == 3 and status["by_status"]["cancelled"] == 1
    jobs.drain()
    assert finished == [{"batch_id": batch.id, "album": 7}]
    status = jobs.batch_status(batch.id)
    assert status is not None and status["all_terminal"] is True
    assert status["by_status"]["succeeded"] == 2 and status["by_status"]["dead"] == 1
    assert status["completed_at"] is not None
    # nothing runs twice, however often completion is checked again
    state = app.extensions["durable_jobs"]
    assert state.finish_batches([batch.id]) == []
    jobs.drain()
    assert len(finished) == 1
    assert jobs.batch_status("nope") is None


def test_batch_rolls_back_with_the_caller(app: Flask, jobs: DurableJobs, db: SQLAlchemy) -> None:
    jobs.handler("part")(lambda p: None)
    batch = jobs.enqueue_batch([("part", {})], commit=False)
    db.session.rollback()
    assert jobs.batch_status(batch.id) is None and jobs.get(batch.job_ids[0]) is None


def test_batch_validation(app: Flask, jobs: DurableJobs) -> None:
    jobs.handler("part")(lambda p: None)
    with pytest.raises(ValueError, match="at least one"):
        jobs.enqueue_batch([])
    with pytest.raises(LookupError, match="on_complete"):
        jobs.enqueue_batch([("part", {})], on_complete="missing")
    with pytest.raises(LookupError, match="'nope'"):
        jobs.enqueue_batch([("nope", {})])
    with pytest.raises(TypeError, match=r"jobs\[1\]"):
        jobs.enqueue_batch([("part", {}), ("part", {"x": float("nan")})])
    assert jobs.stats()["total"] == 0


def test_orphan_that_dies_completes_the_batch(app: Flask, jobs: DurableJobs) -> None:
    from flask_durable_jobs.testing import move_time

    finished = []
    jobs.handler("part", max_attempts=1)(lambda p: None)
    jobs.handler("done")(lambda p: finished.append(1))
    batch = jobs.enqueue_batch([("part", {})], on_complete="done")
    state = app.extensions["durable_jobs"]
    now = state.now()
    import datetime as dt

    state.store.claim(job_types=["part"], queues=None, limit=1, now=now,
                      lease_until=now + dt.timedelta(seconds=1), token="f" * 32, worker_id="w")
    move_time(seconds=5)
    assert jobs.sweep_orphans() == 1
    assert jobs.get(batch.job_ids[0]).status == "dead"  # type: ignore[union-attr]
    jobs.drain()
    assert finished == [1]


@pytest.mark.slow
def test_completion_exactly_once_across_three_processes(
    app: Flask, jobs: DurableJobs, database_url: str, tmp_path: pathlib.Path
) -> None:
    jobs.handler("batch.part")(lambda p: None)
    jobs.handler("batch.done")(lambda p: None)
    batches = [
        jobs.enqueue_batch([("batch.part", {"n": n}) for n in range(12)],
                           on_complete="batch.done", on_complete_payload={"album": album})
        for album in range(5)
    ]
    log = tmp_path / "runs.log"
    env = {**os.environ, "TEST_DB_URL": database_url, "RUN_LOG": str(log),
           "WORK_SECONDS": "6", "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-m", "tests.procs.batch_app"], env=env,
                              cwd=ROOT) for _ in range(3)]
    try:
        for proc in procs:
            assert proc.wait(timeout=60) == 0
    finally:
        for proc in procs:
            proc.kill()
    runs = log.read_text().splitlines()
    done = sorted(int(line.split()[1]) for line in runs if line.startswith("done"))
    parts = [line for line in runs if line.startswith("part")]
    assert done == [0, 1, 2, 3, 4], runs
    assert len(parts) == 60
    assert len({line.split()[2] for line in runs}) >= 2, "work should spread over processes"
    for batch in batches:
        status = jobs.batch_status(batch.id)
        assert status is not None and status["all_terminal"] and status["completed_at"]
