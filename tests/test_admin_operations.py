"""Admin routes for day-two features: recurring schedules and batches."""

from __future__ import annotations

import typing as t

import pytest
from flask import Flask

from flask_durable_jobs import DurableJobs
from flask_durable_jobs.masking import MASK

TOKEN = "admin-token-for-operations"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.mark.config(DURABLE_JOBS_ADMIN_TOKEN=TOKEN)
def test_periodic_route(app: Flask, jobs: DurableJobs, client: t.Any) -> None:
    jobs.handler("report")(lambda p: None)
    jobs.periodic("0 3 * * *", "report", payload={"kind": "daily", "api_token": "t-1"},
                  timezone="Europe/Paris")
    assert client.get("/admin/jobs/periodic").status_code == 401
    response = client.get("/admin/jobs/periodic", headers=AUTH)
    assert response.status_code == 200
    (item,) = response.get_json()["items"]
    assert (item["job_type"], item["cron"], item["timezone"]) == (
        "report", "0 3 * * *", "Europe/Paris")
    assert item["payload"] == {"kind": "daily", "api_token": MASK}  # masked like a job's
    assert item["next_fire_at"].endswith("+00:00")


@pytest.mark.config(DURABLE_JOBS_ADMIN_TOKEN=TOKEN)
def test_batch_route(app: Flask, jobs: DurableJobs, client: t.Any) -> None:
    jobs.handler("part")(lambda p: None)
    jobs.handler("done")(lambda p: None)
    batch = jobs.enqueue_batch([("part", {"n": n}) for n in range(3)], on_complete="done")
    response = client.get(f"/admin/jobs/batches/{batch.id}", headers=AUTH)
    assert response.status_code == 200
    body = response.get_json()
    assert body["total"] == 3 and body["by_status"]["pending"] == 3
    assert body["all_terminal"] is False and body["completed_at"] is None
    jobs.drain()
    body = client.get(f"/admin/jobs/batches/{batch.id}", headers=AUTH).get_json()
    assert body["all_terminal"] is True and body["by_status"]["succeeded"] == 3
    assert body["completed_at"] is not None and body["on_complete"] == "done"
    for missing in ("nope", "x" * 65):
        response = client.get(f"/admin/jobs/batches/{missing}", headers=AUTH)
        assert response.status_code == 404
        assert response.get_json()["error"]["code"] == "not_found"
    assert client.get(f"/admin/jobs/batches/{batch.id}").status_code == 401
