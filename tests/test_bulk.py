"""Bulk retry, cancel and delete (``jobs.*_many`` and ``POST {prefix}/bulk/...``),
on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import typing as t

import pytest
import sqlalchemy as sa
from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from flask_durable_jobs import DurableJobs, listing
from flask_durable_jobs.extension import get_state as state
from flask_durable_jobs.models import TABLE_NAME

pytestmark = pytest.mark.config(
    DURABLE_JOBS_ADMIN_TOKEN="bulk-token", DURABLE_JOBS_ADMIN_READ_TOKEN="read-token"
)

PREFIX = "/admin/jobs"
AUTH = {"Authorization": "Bearer bulk-token"}
READ = {"Authorization": "Bearer read-token"}
STATUSES_ORDER = ("pending", "running", "retrying", "succeeded", "dead", "cancelled")


@pytest.fixture
def seeded(app: Flask, jobs: DurableJobs, db: SQLAlchemy) -> dict[str, int]:
    """One job in each status (type t.ok), ids by status."""
    jobs.handler("t.ok")(lambda payload: payload)
    jobs.handler("t.other")(lambda payload: payload)
    ids = {status: jobs.enqueue("t.ok", {"n": n}).id for n, status in enumerate(STATUSES_ORDER)}
    for status, job_id in ids.items():
        set_status(db, [job_id], status)
    return ids


def set_status(db: SQLAlchemy, ids: t.Sequence[int], status: str) -> None:
    table = db.metadata.tables[TABLE_NAME]
    values: dict[str, t.Any] = {"status": status, "attempts": 2}
    if status in ("succeeded", "dead", "cancelled"):
        values["finished_at"] = dt.datetime.now(dt.timezone.utc)
    db.session.execute(sa.update(table).where(table.c.id.in_(ids)).values(values))
    db.session.commit()


def statuses(jobs: DurableJobs, ids: t.Iterable[int]) -> list[str | None]:
    return [getattr(jobs.get(job_id), "status", None) for job_id in ids]


def test_retry_many_moves_only_dead_and_cancelled(
    jobs: DurableJobs, seeded: dict[str, int]
) -> None:
    before = dt.datetime.now(dt.timezone.utc)
    assert jobs.retry_many(job_type="t.ok") == 2
    for status in ("dead", "cancelled"):
        job = jobs.get(seeded[status])
        assert job is not None and job.status == "pending" and job.attempts == 0
        assert job.run_at >= before - dt.timedelta(seconds=5) and job.finished_at is None
    assert statuses(jobs, [seeded[s] for s in ("pending", "running", "retrying", "succeeded")]) \
        == ["pending", "running", "retrying", "succeeded"]
    assert jobs.retry_many(job_type="t.ok") == 0
    # the retried jobs run again, beside the pending and retrying ones
    assert jobs.drain()["succeeded"] == 4


def test_cancel_many_asks_running_jobs_to_stop_and_skips_finished(
    jobs: DurableJobs, seeded: dict[str, int]
) -> None:
    assert jobs.cancel_many(status="pending") == 1
    # the retrying one ends cancelled; the running one gets a cancel request
    # (as jobs.cancel(id) gives it) and keeps running until its handler ends
    assert jobs.cancel_many(ids=list(seeded.values())) == 2
    assert statuses(jobs, seeded.values()) == [
        "cancelled", "running", "cancelled", "succeeded", "dead", "cancelled"]
    running = jobs.get(seeded["running"])
    assert running is not None and running.cancel_requested_at is not None
    assert jobs.get(seeded["succeeded"]).cancel_requested_at is None  # type: ignore[union-attr]
    # a request is made once: asking again changes nothing
    assert jobs.cancel_many(ids=list(seeded.values())) == 0
    assert jobs.get(seeded["running"]).cancel_requested_at == running.cancel_requested_at  # type: ignore[union-attr]


def test_delete_many_keeps_running_jobs(jobs: DurableJobs, seeded: dict[str, int]) -> None:
    assert jobs.delete_many(ids=[*seeded.values(), 10**9]) == 5
    assert statuses(jobs, seeded.values()) == [None, "running", None, None, None, None]


def test_filters_select_what_the_list_shows(
    jobs: DurableJobs, db: SQLAlchemy, seeded: dict[str, int]
) -> None:
    mine = [jobs.enqueue("t.other", {"customer": 7}, owner="ann").id for _ in range(3)]
    other = jobs.enqueue("t.other", {"customer": 8}, owner="ann").id
    set_status(db, [*mine, other], "dead")
    assert jobs.retry_many(owner="ann", payload={"customer": 7}) == 3
    assert statuses(jobs, [*mine, other]) == ["pending"] * 3 + ["dead"]
    assert jobs.delete_many(**{"payload.customer": "8"}) == 1
    assert jobs.get(other) is None


def test_works_in_batches(
    jobs: DurableJobs, db: SQLAlchemy, seeded: dict[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = jobs.enqueue_many("t.other", [{"n": n} for n in range(7)])
    set_status(db, ids, "dead")
    calls: list[int] = []
    real = listing.store_lists.bulk_batch

    def counted(*args: t.Any, **kwargs: t.Any) -> t.Any:
        done, lowest = real(*args, **kwargs)
        calls.append(len(done))
        return done, lowest

    monkeypatch.setattr(listing, "BULK_BATCH", 3)
    monkeypatch.setattr(listing.store_lists, "bulk_batch", counted)
    assert jobs.retry_many(job_type="t.other") == 7
    assert calls == [3, 3, 1]
    calls.clear()
    assert jobs.cancel_many(ids=ids) == 7
    # the waiting jobs, then the pass that asks running ones to stop (none here)
    assert calls == [3, 3, 1, 0, 0, 0]
    assert set(statuses(jobs, ids)) == {"cancelled"}


def test_unknown_or_missing_filters_change_nothing(
    jobs: DurableJobs, seeded: dict[str, int]
) -> None:
    for action in (jobs.retry_many, jobs.cancel_many, jobs.delete_many):
        with pytest.raises(TypeError, match="'colour'"):
            action(status="dead", colour="red")
        with pytest.raises(ValueError, match="at least one filter"):
            action()
        with pytest.raises(ValueError, match="ids"):
            action(ids=[1, "2"])
    assert statuses(jobs, seeded.values()) == list(STATUSES_ORDER)


def test_cancel_many_completes_a_batch(app: Flask, jobs: DurableJobs) -> None:
    jobs.handler("t.ok")(lambda payload: payload)
    done: list[dict[str, t.Any]] = []
    jobs.handler("t.done")(done.append)
    batch = jobs.enqueue_batch([("t.ok", {"n": 1}), ("t.ok", {"n": 2})], on_complete="t.done")
    assert jobs.cancel_many(batch_id=batch.id) == 2
    jobs.drain()
    assert [payload["batch_id"] for payload in done] == [batch.id]


def test_a_row_locked_elsewhere_is_skipped_not_waited_for(
    jobs: DurableJobs, db: SQLAlchemy, seeded: dict[str, int], backend: str
) -> None:
    if backend != "postgresql":
        pytest.skip("SQLite has one writer: nothing else can hold a row")
    ids = jobs.enqueue_many("t.other", [{"n": n} for n in range(3)])
    set_status(db, ids, "dead")
    engine = sa.create_engine(db.engine.url)
    try:
        with engine.connect() as other:
            other.exec_driver_sql(f"SELECT id FROM {TABLE_NAME} WHERE id = {ids[1]} FOR UPDATE")
            assert jobs.retry_many(job_type="t.other") == 2
            other.rollback()
    finally:
        engine.dispose()
    assert statuses(jobs, ids) == ["pending", "dead", "pending"]
    assert jobs.retry_many(job_type="t.other") == 1


# -- routes ----------------------------------------------------------------------


def test_bulk_routes(client: t.Any, jobs: DurableJobs, seeded: dict[str, int]) -> None:
    response = client.post(f"{PREFIX}/bulk/retry", json={"ids": list(seeded.values())},
                           headers=AUTH)
    assert response.status_code == 200 and response.get_json() == {"changed": 2}
    response = client.post(f"{PREFIX}/bulk/cancel", json={"filter": {"status": "pending"}},
                           headers=AUTH)
    assert response.get_json() == {"changed": 3}
    response = client.post(f"{PREFIX}/bulk/delete",
                           json={"filter": {"job_type": "t.ok", "created_after": "2000-01-01"}},
                           headers=AUTH)
    assert response.get_json() == {"changed": 5}
    assert statuses(jobs, seeded.values()) == [None, "running", None, None, None, None]


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"ids": [1], "filter": {"status": "dead"}}, '"ids" or "filter"'),
        ({}, '"ids" or "filter"'),
        ({"filter": {}}, "at least one filter"),
        ({"filter": {"colour": "red"}}, "'colour'"),
        ({"filter": {"status": "finished"}}, "status"),
        ({"filter": {"created_before": "soon"}}, "created_before"),
        ({"ids": [1, True]}, "ids.1"),
        ({"ids": "1,2"}, "ids"),
        ({"status": "dead"}, "status"),
        ({"ids": list(range(1, 10_002))}, "ids"),
        ([1, 2], "JSON object"),
    ],
)
def test_bulk_bad_bodies_are_400(
    client: t.Any, jobs: DurableJobs, seeded: dict[str, int], body: t.Any, named: str
) -> None:
    response = client.post(f"{PREFIX}/bulk/retry", json=body, headers=AUTH)
    assert response.status_code == 400, response.get_data(as_text=True)
    assert named in response.get_json()["error"]["message"]
    assert statuses(jobs, seeded.values()) == list(STATUSES_ORDER)


def test_bulk_needs_the_write_role_and_refuses_cross_site(
    client: t.Any, jobs: DurableJobs, seeded: dict[str, int]
) -> None:
    body = {"filter": {"status": "dead"}}
    assert client.post(f"{PREFIX}/bulk/retry", json=body, headers=READ).status_code == 403
    assert client.post(f"{PREFIX}/bulk/retry", json=body).status_code == 401
    cross = {**AUTH, "Origin": "https://evil.example"}
    assert client.post(f"{PREFIX}/bulk/retry", json=body, headers=cross).status_code == 403
    response = client.post(f"{PREFIX}/bulk/retry", data='{"ids": [1]}', headers=AUTH,
                           content_type="text/plain")
    assert response.status_code == 403
    assert client.post(f"{PREFIX}/bulk/purge", json=body, headers=AUTH).status_code == 404
    assert client.get(f"{PREFIX}/bulk/retry", headers=AUTH).status_code == 405
    assert statuses(jobs, seeded.values()) == list(STATUSES_ORDER)


def test_wait_wakes_when_cancel_many_cancels_the_job(
    app: Flask, jobs: DurableJobs, seeded: dict[str, int]
) -> None:
    """A bulk cancel announces the jobs it ends, as the queue's own statements
    do: a jobs.wait() watcher on one of them is woken by it (not left to its
    periodic look), and wait() then returns the cancelled job."""
    waiting = seeded["pending"]
    watcher = state(app).store.watch_ended(waiting)
    try:
        assert jobs.cancel_many(ids=[waiting]) == 1
        assert watcher.wait(10) is True
    finally:
        watcher.close()
    assert jobs.wait(waiting, timeout=10).status == "cancelled"
