"""Pausing and resuming queues: in one process, through the CLI and the admin
API, and across three real worker processes on one database."""

from __future__ import annotations

import pathlib
import time
import typing as t

import pytest
from flask import Flask

from flask_durable_jobs import DurableJobs
from tests.helpers import wait_for
from tests.workers import Workers, traces, worker_app

TOKEN = "queues-admin-token"
READ_TOKEN = "queues-read-token"


@pytest.fixture
def traced(jobs: DurableJobs) -> list[str]:
    ran: list[str] = []

    @jobs.handler("traced")
    def handle(payload: dict[str, t.Any]) -> None:
        ran.append(payload["tag"])

    return ran


def test_a_paused_queue_waits_and_runs_once_resumed(
    app: Flask, jobs: DurableJobs, traced: list[str]
) -> None:
    jobs.enqueue("traced", {"tag": "a1"}, queue="a")
    jobs.enqueue("traced", {"tag": "b1"}, queue="b")
    paused = jobs.pause_queue("a")
    assert paused["name"] == "a" and paused["paused"] is True
    assert paused["counts"]["pending"] == 1
    assert jobs.drain()["claimed"] == 1
    assert traced == ["b1"]
    listed = {q["name"]: q for q in jobs.queues()}
    assert listed["a"]["paused"] is True and listed["a"]["counts"]["pending"] == 1
    assert listed["b"]["paused"] is False and listed["b"]["counts"]["succeeded"] == 1
    resumed = jobs.resume_queue("a")
    assert resumed["paused"] is False
    assert jobs.drain()["claimed"] == 1
    assert traced == ["b1", "a1"]
    assert {q["name"]: q["counts"]["succeeded"] for q in jobs.queues()} == {"a": 1, "b": 1}


def test_a_queue_paused_before_it_has_jobs_is_listed(app: Flask, jobs: DurableJobs) -> None:
    jobs.pause_queue("later")
    assert jobs.queues() == [{"name": "later", "paused": True, "counts": {
        "pending": 0, "running": 0, "retrying": 0, "succeeded": 0, "dead": 0, "cancelled": 0,
    }}]


@pytest.mark.parametrize("name", ["", "   ", "x" * 101, 5, None])
def test_a_bad_queue_name_is_refused_and_nothing_stored(
    app: Flask, jobs: DurableJobs, name: t.Any
) -> None:
    with pytest.raises(ValueError, match="queue"):
        jobs.pause_queue(name)
    with pytest.raises(ValueError, match="queue"):
        jobs.resume_queue(name)
    assert jobs.queues() == []


def test_cli_pause_and_resume(app: Flask, jobs: DurableJobs) -> None:
    runner = app.test_cli_runner()
    result = runner.invoke(args=["jobs", "pause", "mail"])
    assert result.exit_code == 0, result.output
    assert "queue mail is paused" in result.output
    assert jobs.queues()[0]["paused"] is True
    result = runner.invoke(args=["jobs", "resume", "mail"])
    assert result.exit_code == 0, result.output
    assert jobs.queues()[0]["paused"] is False
    result = runner.invoke(args=["jobs", "pause", " "])
    assert result.exit_code == 2
    assert "queue must be" in result.output


@pytest.mark.config(DURABLE_JOBS_ADMIN_TOKEN=TOKEN, DURABLE_JOBS_ADMIN_READ_TOKEN=READ_TOKEN)
def test_admin_queue_routes(app: Flask, jobs: DurableJobs, traced: list[str]) -> None:
    client = app.test_client()
    write = {"Authorization": f"Bearer {TOKEN}"}
    read = {"Authorization": f"Bearer {READ_TOKEN}"}
    jobs.enqueue("traced", {"tag": "x"}, queue="mail")
    assert client.post("/admin/jobs/queues/mail/pause", headers=read).status_code == 403
    assert jobs.queues()[0]["paused"] is False
    response = client.post("/admin/jobs/queues/mail/pause", headers=write)
    assert response.status_code == 200, response.json
    assert response.json["paused"] is True and response.json["counts"]["pending"] == 1
    listed = client.get("/admin/jobs/queues", headers=read)
    assert listed.status_code == 200
    assert listed.json == {"items": [response.json]}
    assert jobs.drain()["claimed"] == 0
    response = client.post("/admin/jobs/queues/mail/resume", headers=write)
    assert response.status_code == 200 and response.json["paused"] is False
    assert jobs.drain()["claimed"] == 1
    bad = client.post("/admin/jobs/queues/%20/pause", headers=write)
    assert bad.status_code == 400 and "queue" in bad.json["error"]["message"]
    document = client.get("/admin/jobs/openapi.json", headers=read).json
    assert "/admin/jobs/queues/{name}/pause" in document["paths"]


def test_pause_holds_across_three_processes(
    database_url: str, tmp_path: pathlib.Path
) -> None:
    """After pause_queue returns and a poll interval passes, no job of the
    queue starts in any process; the other queue keeps flowing; after
    resume_queue they run."""
    poll = 0.2
    workers = Workers(database_url, tmp_path, DURABLE_JOBS_POLL_INTERVAL=poll,
                      DURABLE_JOBS_CONCURRENCY=2)
    with worker_app(database_url):
        from tests.procs.limits_app import jobs

        jobs.enqueue_many("traced", [{"tag": f"a{i}", "sleep": 0.1} for i in range(150)],
                          queue="a")
        jobs.enqueue_many("traced", [{"tag": f"b{i}", "sleep": 0.1} for i in range(150)],
                          queue="b")
        try:
            workers.start(3)
            wait_for("jobs of queue a to run", lambda: len(traces()) >= 10, 60,
                     details=workers.logs)
            jobs.pause_queue("a")
            paused_at = time.time()
            time.sleep(3)
            late = [row for row in traces() if row.tag.startswith("a")
                    and row.started > paused_at + poll + 0.1]
            assert late == []
            during = [row for row in traces() if row.tag.startswith("b")
                      and row.started > paused_at + poll + 0.1]
            assert len(during) >= 10  # the other queue kept flowing
            assert len({row.pid for row in traces()}) == 3
            waiting = {q["name"]: q for q in jobs.queues()}["a"]["counts"]["pending"]
            assert waiting > 0
            jobs.resume_queue("a")
            wait_for("every job to run", lambda: len(traces()) == 300, 120,
                     details=workers.logs)
            assert {q["name"]: q["counts"]["succeeded"] for q in jobs.queues()} == {
                "a": 150, "b": 150}
        finally:
            workers.stop()
