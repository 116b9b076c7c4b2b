"""Controlling jobs: current_job() and progress, async handlers, cancelling a
running job, jobs.wait() and jobs.get_by_key(). Database tests run on SQLite
and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import json
import threading
import time
import typing as t

import pytest
from flask import Flask

from flask_durable_jobs import Cancelled, DurableJobs, JobNotFound, current_job
from flask_durable_jobs.extension import get_state
from flask_durable_jobs.testing import move_time
from tests.helpers import wait_for

TOKEN = "control-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@contextlib.contextmanager
def draining(app: Flask, jobs: DurableJobs) -> t.Iterator[dict[str, t.Any]]:
    """Run ``jobs.drain()`` on another thread while the block runs (the
    test's thread plays the user); yields where its counts will be."""
    out: dict[str, t.Any] = {}

    def run() -> None:
        with app.app_context():
            try:
                out["counts"] = jobs.drain()
            except BaseException as exc:  # reported by the test, not lost in the thread
                out["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    try:
        yield out
    finally:
        thread.join(timeout=60)
        assert not thread.is_alive(), "drain() did not end"
        if "error" in out:
            raise out["error"]


def running(jobs: DurableJobs, job_id: int) -> t.Any:
    return wait_for(f"job {job_id} to run",
                    lambda: (job := jobs.get(job_id)) is not None and job.status == "running",
                    timeout=20, interval=0.02)


# -- current_job() ----------------------------------------------------------------------


def test_current_job_is_none_outside_a_handler() -> None:
    assert current_job() is None


def test_current_job_describes_the_job_being_run(app: Flask, jobs: DurableJobs) -> None:
    seen: dict[str, t.Any] = {}

    @jobs.handler("report", max_attempts=4)
    def report(payload: dict[str, t.Any]) -> None:
        job = current_job()
        assert job is not None
        seen.update(id=job.id, job_type=job.job_type, attempt=job.attempt,
                    max_attempts=job.max_attempts, payload=job.payload,
                    key=job.idempotency_key, owner=job.owner,
                    cancel_requested=job.cancel_requested)
        job.check_cancelled()  # no request: nothing raised
        if job.attempt == 1:
            raise RuntimeError("first attempt fails")

    job = jobs.enqueue("report", {"month": "2026-11"}, idempotency_key="report:2026-11",
                       owner="user:7")
    assert jobs.drain()["retried"] == 1
    assert seen["attempt"] == 1
    move_time(hours=1)
    assert jobs.drain()["succeeded"] == 1
    assert seen == {"id": job.id, "job_type": "report", "attempt": 2, "max_attempts": 4,
                    "payload": {"month": "2026-11"}, "key": "report:2026-11",
                    "owner": "user:7", "cancel_requested": False}
    assert current_job() is None  # nothing leaks out of the handler


def test_progress_is_stored_with_the_last_value_at_the_end(app: Flask, jobs: DurableJobs) -> None:
    @jobs.handler("export")
    def export(payload: dict[str, t.Any]) -> dict[str, int]:
        job = current_job()
        assert job is not None
        for i in range(1, 2001):  # many reports, far faster than one a second
            job.progress(i / 2000, message=f"{i} posts", data={"done": i})
        return {"posts": 2000}

    job = jobs.enqueue("export", {})
    before = get_state().now()
    assert jobs.drain()["succeeded"] == 1
    done = jobs.get(job.id)
    assert done is not None and done.result == {"posts": 2000}
    assert done.progress is not None
    at = dt.datetime.fromisoformat(done.progress.pop("at"))
    assert done.progress == {"fraction": 1.0, "message": "2000 posts", "data": {"done": 2000}}
    assert before - dt.timedelta(seconds=5) <= at <= get_state().now()


def test_a_job_that_reports_nothing_has_no_progress(app: Flask, jobs: DurableJobs) -> None:
    jobs.handler("plain")(lambda payload: None)
    job = jobs.enqueue("plain", {})
    jobs.drain()
    done = jobs.get(job.id)
    assert done is not None and done.status == "succeeded" and done.progress is None


def test_progress_is_written_while_the_job_runs_at_most_once_a_second(
    app: Flask, jobs: DurableJobs
) -> None:
    release = threading.Event()
    store = get_state().store
    writes: list[tuple[float, list[tuple[int, str, str]]]] = []
    write_progress = store.write_progress

    def counting(updates: t.Sequence[tuple[int, str, str]]) -> set[int]:
        writes.append((time.monotonic(), list(updates)))
        return write_progress(updates)

    store.write_progress = counting  # type: ignore[method-assign]

    @jobs.handler("long", timeout=60)
    def long(payload: dict[str, t.Any]) -> None:
        job = current_job()
        assert job is not None
        job.progress(0.25, message="a quarter")
        n = 0
        while not release.is_set():  # a report every millisecond
            n += 1
            job.progress(0.5, data={"n": n})
            time.sleep(0.001)

    job = jobs.enqueue("long", {})
    with draining(app, jobs):
        seen = wait_for("progress to be written while the job runs",
                        lambda: (j := jobs.get(job.id)) is not None and j.progress, timeout=10)
        assert jobs.get(job.id).status == "running"  # type: ignore[union-attr]
        assert seen["fraction"] in (0.25, 0.5)
        time.sleep(2.5)
        release.set()
    done = jobs.get(job.id)
    assert done is not None and done.status == "succeeded"
    assert done.progress is not None and done.progress["fraction"] == 0.5
    # thousands of reports, a handful of statements, each at least a second apart
    assert 1 <= len(writes) <= 6, writes
    for (first, _), (second, _) in itertools.pairwise(writes):
        assert second - first >= 0.95
    assert all(len(updates) == 1 for _, updates in writes)


@pytest.mark.parametrize(
    ("call", "argument"),
    [
        (lambda job: job.progress(-0.1), "fraction"),
        (lambda job: job.progress(1.5), "fraction"),
        (lambda job: job.progress(float("nan")), "fraction"),
        (lambda job: job.progress("half"), "fraction"),
        (lambda job: job.progress(True), "fraction"),
        (lambda job: job.progress(0.5, message=42), "message"),
        (lambda job: job.progress(0.5, data={"when": dt.date(2026, 1, 1)}), "data"),
        (lambda job: job.progress(0.5, data={1: "x"}), "data"),
    ],
    ids=["negative", "above one", "nan", "text", "bool", "message not text",
         "data not json", "data key not text"],
)
def test_bad_progress_is_refused_naming_the_argument_and_stores_nothing(
    app: Flask, jobs: DurableJobs, call: t.Callable[[t.Any], None], argument: str
) -> None:
    errors: list[str] = []

    @jobs.handler("bad")
    def bad(payload: dict[str, t.Any]) -> None:
        with pytest.raises(ValueError, match=argument) as info:
            call(current_job())
        errors.append(str(info.value))

    job = jobs.enqueue("bad", {})
    assert jobs.drain()["succeeded"] == 1
    assert len(errors) == 1
    done = jobs.get(job.id)
    assert done is not None and done.progress is None


# -- async handlers -----------------------------------------------------------------------


def test_an_async_handler_is_awaited(app: Flask, jobs: DurableJobs) -> None:
    @jobs.handler("fetch")
    async def fetch(payload: dict[str, t.Any]) -> dict[str, t.Any]:
        job = current_job()
        assert job is not None
        job.progress(0.5, message="waiting")
        await asyncio.sleep(0.05)
        results = await asyncio.gather(*(asyncio.sleep(0.01, result=n) for n in range(3)))
        return {"job": job.id, "results": results}

    job = jobs.enqueue("fetch", {})
    assert jobs.drain() == {"claimed": 1, "succeeded": 1, "retried": 0, "dead": 0}
    done = jobs.get(job.id)
    assert done is not None and done.result == {"job": job.id, "results": [0, 1, 2]}
    assert done.progress is not None and done.progress["message"] == "waiting"


def test_an_async_handler_past_its_timeout_is_retried_then_dead(
    app: Flask, jobs: DurableJobs
) -> None:
    finished: list[int] = []

    @jobs.handler("stuck", timeout=0.3, max_attempts=2)
    async def stuck(payload: dict[str, t.Any]) -> None:
        await asyncio.sleep(30)
        finished.append(1)

    job = jobs.enqueue("stuck", {})
    assert jobs.drain()["retried"] == 1
    retrying = jobs.get(job.id)
    assert retrying is not None and retrying.status == "retrying"
    assert retrying.last_error is not None and "timed out after 0.3 s" in retrying.last_error
    move_time(hours=1)
    assert jobs.drain()["dead"] == 1
    dead = jobs.get(job.id)
    assert dead is not None and dead.status == "dead" and dead.attempts == 2
    assert "timed out" in (dead.last_error or "")
    assert finished == []


def test_an_async_handler_that_raises_is_retried(app: Flask, jobs: DurableJobs) -> None:
    @jobs.handler("flaky", max_attempts=3)
    async def flaky(payload: dict[str, t.Any]) -> None:
        await asyncio.sleep(0)
        raise ConnectionError("upstream down")

    job = jobs.enqueue("flaky", {})
    assert jobs.drain()["retried"] == 1
    retrying = jobs.get(job.id)
    assert retrying is not None and (retrying.last_error or "").startswith("ConnectionError")


def test_a_plain_function_returning_a_coroutine_is_awaited_too(
    app: Flask, jobs: DurableJobs
) -> None:
    async def work(n: int) -> int:
        await asyncio.sleep(0)
        return n * 2

    @jobs.handler("wrapped")
    def wrapped(payload: dict[str, t.Any]) -> t.Any:
        return work(payload["n"])  # a decorator or wrapper that forgot to await

    job = jobs.enqueue("wrapped", {"n": 21})
    assert jobs.drain()["succeeded"] == 1
    done = jobs.get(job.id)
    assert done is not None and done.result == 42


# -- cancelling a running job ---------------------------------------------------------------


def test_a_running_job_sees_its_cancel_request_and_ends_cancelled(
    app: Flask, jobs: DurableJobs
) -> None:
    seen: list[float] = []

    @jobs.handler("export", max_attempts=3)
    def export(payload: dict[str, t.Any]) -> None:
        job = current_job()
        assert job is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if job.cancel_requested:
                seen.append(time.monotonic())
            job.check_cancelled()
            time.sleep(0.01)

    job = jobs.enqueue("export", {})
    with draining(app, jobs) as out:
        running(jobs, job.id)
        asked = jobs.cancel(job.id)
        cancelled_at = time.monotonic()
        assert asked.status == "running" and asked.cancel_requested_at is not None
        again = jobs.cancel(job.id)  # asking twice keeps the first request
        assert again.cancel_requested_at == asked.cancel_requested_at
    assert out["counts"]["claimed"] == 1 and out["counts"]["retried"] == 0
    done = jobs.get(job.id)
    assert done is not None and done.status == "cancelled" and done.attempts == 1
    assert done.finished_at is not None and done.cancel_requested_at is not None
    assert (done.last_error or "").startswith("Cancelled:")
    assert seen and seen[0] - cancelled_at < 10  # a second or so, not the 30 s loop


@pytest.mark.parametrize(
    ("ending", "status"),
    [("raise", "cancelled"), ("discard", "cancelled"), ("return", "succeeded")],
)
def test_a_job_with_a_cancel_request_is_never_retried(
    app: Flask, jobs: DurableJobs, ending: str, status: str
) -> None:
    from flask_durable_jobs import Discard

    go = threading.Event()

    @jobs.handler("ignores", max_attempts=5)
    def ignores(payload: dict[str, t.Any]) -> dict[str, bool]:
        assert go.wait(30)
        if ending == "raise":
            raise RuntimeError("failed after the cancel request")
        if ending == "discard":
            raise Discard("nothing to do")
        return {"finished": True}

    job = jobs.enqueue("ignores", {})
    with draining(app, jobs):
        running(jobs, job.id)
        assert jobs.cancel(job.id).status == "running"
        go.set()
    done = jobs.get(job.id)
    assert done is not None and (done.status, done.attempts) == (status, 1)
    if status == "succeeded":
        assert done.result == {"finished": True}
    else:
        assert done.finished_at is not None and done.run_at <= done.finished_at
    move_time(hours=2)
    assert jobs.drain()["claimed"] == 0  # nothing comes back


def test_raising_cancelled_ends_the_job_cancelled(app: Flask, jobs: DurableJobs) -> None:
    @jobs.handler("gives_up", max_attempts=3)
    def gives_up(payload: dict[str, t.Any]) -> None:
        raise Cancelled("the upload was withdrawn")

    job = jobs.enqueue("gives_up", {})
    assert jobs.drain() == {"claimed": 1, "succeeded": 0, "retried": 0, "dead": 0}
    done = jobs.get(job.id)
    assert done is not None and done.status == "cancelled"
    assert done.last_error == "Cancelled: the upload was withdrawn"


def test_a_timed_out_attempt_with_a_cancel_request_ends_cancelled(
    app: Flask, jobs: DurableJobs
) -> None:
    @jobs.handler("slow", timeout=1.5, max_attempts=3)
    def slow(payload: dict[str, t.Any]) -> None:
        time.sleep(5)  # ignores the request

    job = jobs.enqueue("slow", {})
    with draining(app, jobs):
        running(jobs, job.id)
        jobs.cancel(job.id)
    done = jobs.get(job.id)
    assert done is not None and done.status == "cancelled"
    assert "timed out" in (done.last_error or "")


def test_the_sweep_ends_an_orphan_with_a_cancel_request_cancelled(
    app: Flask, jobs: DurableJobs
) -> None:
    @jobs.handler("hangs", max_attempts=3)
    def hangs(payload: dict[str, t.Any]) -> None:
        time.sleep(3)

    job = jobs.enqueue("hangs", {})
    other = jobs.enqueue("hangs", {})
    with draining(app, jobs):
        running(jobs, job.id)
        running(jobs, other.id)
        jobs.cancel(job.id)
        # as another process sees it once the worker froze: both leases expired
        move_time(hours=1)
        assert jobs.sweep_orphans() == 2
        swept = jobs.get(job.id)
        assert swept is not None and swept.status == "cancelled"
        assert swept.finished_at is not None
        unasked = jobs.get(other.id)
        assert unasked is not None and unasked.status == "retrying"
    # the frozen worker's late outcome is refused: the sweep's word stands
    final = jobs.get(job.id)
    assert final is not None and final.status == "cancelled"


@pytest.mark.config(DURABLE_JOBS_ADMIN_TOKEN=TOKEN)
def test_the_admin_route_answers_202_for_a_running_job(
    app: Flask, jobs: DurableJobs, client: t.Any
) -> None:
    go = threading.Event()

    @jobs.handler("waits")
    def waits(payload: dict[str, t.Any]) -> None:
        job = current_job()
        assert job is not None
        job.progress(0.3, message="three tenths", data={"api_token": "s3cret", "rows": 3})
        assert go.wait(30)
        job.check_cancelled()

    job = jobs.enqueue("waits", {})
    pending = jobs.enqueue("waits", {}, delay=3600)
    with draining(app, jobs):
        running(jobs, job.id)
        answer = client.post(f"/admin/jobs/{job.id}/cancel", headers=AUTH)
        assert answer.status_code == 202
        body = answer.get_json()
        assert body["status"] == "running" and body["cancel_requested_at"] is not None
        wait_for("the progress to be written",
                 lambda: client.get(f"/admin/jobs/{job.id}", headers=AUTH).get_json()["progress"],
                 timeout=10)
        shown = client.get(f"/admin/jobs/{job.id}", headers=AUTH).get_json()["progress"]
        assert shown["data"] == {"api_token": "********", "rows": 3}
        assert shown["fraction"] == 0.3 and shown["message"] == "three tenths"
        go.set()
    assert client.post(f"/admin/jobs/{pending.id}/cancel", headers=AUTH).status_code == 200
    finished = client.post(f"/admin/jobs/{job.id}/cancel", headers=AUTH)
    assert finished.status_code == 409
    assert finished.get_json()["error"]["code"]
    listed = client.get("/admin/jobs", headers=AUTH).get_json()["items"]
    by_id = {item["id"]: item for item in listed}
    assert by_id[job.id]["status"] == "cancelled"
    assert by_id[job.id]["cancel_requested_at"] is not None
    assert by_id[pending.id]["cancel_requested_at"] is None


# -- wait() and get_by_key() ------------------------------------------------------------------


def test_wait_returns_a_finished_job_at_once_and_times_out_on_others(
    app: Flask, jobs: DurableJobs
) -> None:
    jobs.handler("quick")(lambda payload: {"ok": True})
    done = jobs.enqueue("quick", {})
    jobs.drain()
    assert jobs.wait(done.id, timeout=0).result == {"ok": True}
    later = jobs.enqueue("quick", {}, delay=3600)
    with pytest.raises(TimeoutError, match=f"job {later.id} did not end within 0.2 s"):
        jobs.wait(later.id, timeout=0.2)
    with pytest.raises(JobNotFound):
        jobs.wait(later.id + 1000, timeout=1)
    for bad in (-1, float("nan"), "5", True):
        with pytest.raises(ValueError, match="timeout"):
            jobs.wait(done.id, timeout=bad)  # type: ignore[arg-type]


def test_wait_wakes_when_another_thread_ends_the_job(app: Flask, jobs: DurableJobs) -> None:
    @jobs.handler("sleepy")
    def sleepy(payload: dict[str, t.Any]) -> str:
        time.sleep(1.0)
        return "slept"

    job = jobs.enqueue("sleepy", {})
    cancelled = jobs.enqueue("sleepy", {}, delay=3600)
    reads: list[int] = []
    store = get_state().store
    get = store.get

    def counting(job_id: int) -> t.Any:
        reads.append(job_id)
        return get(job_id)

    with draining(app, jobs):
        store.get = counting  # type: ignore[method-assign]
        try:
            finished = jobs.wait(job.id, timeout=30)
        finally:
            store.get = get  # type: ignore[method-assign]
    assert finished.status == "succeeded" and finished.result == "slept"
    if get_state().store.dialect == "postgresql":
        # woken by the statement that ended it: no polling loop
        assert reads.count(job.id) <= 3, reads

    # a cancel announces the job it ends, as the queue's own statements do:
    # a wait() watcher on it is woken (not left to its next periodic look)
    watcher = store.watch_ended(cancelled.id)
    try:
        jobs.cancel(cancelled.id)
        assert watcher.wait(10) is True
    finally:
        watcher.close()
    assert jobs.wait(cancelled.id, timeout=10).status == "cancelled"


def test_get_by_key(app: Flask, jobs: DurableJobs) -> None:
    jobs.handler("invoice")(lambda payload: None)
    job = jobs.enqueue("invoice", {"n": 1}, idempotency_key="invoice:1")
    found = jobs.get_by_key("invoice:1")
    assert found is not None and found.id == job.id and found.payload == {"n": 1}
    assert jobs.get_by_key("invoice:2") is None
    for bad in ("", 7, None, "x" * 256):
        with pytest.raises(ValueError, match="idempotency_key"):
            jobs.get_by_key(bad)  # type: ignore[arg-type]


def test_the_job_json_carries_progress_and_cancel_requested_at(
    app: Flask, jobs: DurableJobs
) -> None:
    jobs.handler("j")(lambda payload: None)
    data = jobs.enqueue("j", {}).to_dict()
    assert data["progress"] is None and data["cancel_requested_at"] is None
    json.dumps(data)


# -- across processes -----------------------------------------------------------------------


def test_wait_and_cancel_from_another_process_than_the_one_running_the_job(
    app: Flask, jobs: DurableJobs, database_url: str
) -> None:
    import os
    import pathlib
    import subprocess
    import sys

    jobs.handler("control.slow")(lambda payload: None)  # enqueued here, run over there
    jobs.handler("control.until_cancelled")(lambda payload: None)
    slow = jobs.enqueue("control.slow", {"seconds": 1.5})
    endless = jobs.enqueue("control.until_cancelled", {"seconds": 60})
    root = pathlib.Path(__file__).resolve().parent.parent
    env = {**os.environ, "TEST_DB_URL": database_url, "WORK_SECONDS": "40",
           "PYTHONPATH": str(root)}
    worker = subprocess.Popen([sys.executable, "-m", "tests.procs.control_app"], cwd=root,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
    try:
        finished = jobs.wait(slow.id, timeout=60)
        assert finished.status == "succeeded"
        assert finished.result == {"pid": worker.pid}
        assert finished.progress is not None and finished.progress["message"] == "done"
        assert jobs.get(endless.id).status == "running"  # type: ignore[union-attr]
        asked = jobs.cancel(endless.id)
        assert asked.status == "running"
        ended = jobs.wait(endless.id, timeout=30)
        assert (ended.status, ended.attempts) == ("cancelled", 1)
        assert (ended.last_error or "").startswith("Cancelled:")
    finally:
        worker.kill()
        output = worker.communicate(timeout=30)[0]
    assert "ready" in output, output


def test_revision_0002_upgrades_a_0001_database_holding_jobs(database_url: str) -> None:
    import sqlalchemy as sa
    from flask_sqlalchemy import SQLAlchemy

    from flask_durable_jobs.migrations import HEAD, current, upgrade
    from tests.helpers import close

    app = Flask("upgrade_0001")
    app.config.update(SQLALCHEMY_DATABASE_URI=database_url, DURABLE_JOBS_SCHEDULER=False)
    db = SQLAlchemy(app)
    jobs = DurableJobs(app, db=db)

    @jobs.handler("old")
    def old(payload: dict[str, t.Any]) -> int:
        job = current_job()
        assert job is not None
        job.progress(1, message="upgraded")
        return int(payload["n"])

    with app.app_context():
        try:
            upgrade(db.engine, "0001")
            columns = {c["name"] for c in sa.inspect(db.engine).get_columns("durable_jobs")}
            assert "progress" not in columns and "cancel_requested_at" not in columns
            now = dt.datetime.now(dt.timezone.utc)
            with db.engine.begin() as conn:  # a job written by the previous version
                conn.execute(sa.text(
                    "INSERT INTO durable_jobs (job_type, queue, status, payload, attempts,"
                    " max_attempts, priority, run_at, created_at, updated_at, orphan_policy,"
                    " callback_attempts) VALUES ('old', 'default', 'pending', :payload, 0, 3,"
                    " 0, :now, :now, :now, 'retry', 0)"
                ), {"payload": json.dumps({"n": 5}), "now": now})
            upgrade(db.engine)
            assert current(db.engine) == HEAD
            (job,), total = jobs.list_jobs()
            assert total == 1 and job.payload == {"n": 5}
            assert job.progress is None and job.cancel_requested_at is None
            assert jobs.drain()["succeeded"] == 1
            done = jobs.get(job.id)
            assert done is not None and done.result == 5
            assert done.progress is not None and done.progress["message"] == "upgraded"
        finally:
            close(jobs, db)
