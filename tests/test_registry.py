"""The process registry: every process that runs the processor registers
itself and renews its record; a killed process's record goes after three
leases, a stopped one's at once."""

from __future__ import annotations

import datetime as dt
import os
import pathlib
import signal
import socket
import time

from flask_durable_jobs import __version__
from flask_durable_jobs.extension import get_state
from flask_durable_jobs.health import health_report
from tests.helpers import wait_for
from tests.workers import Workers, worker_app

TOKEN = "registry-admin-token"


def test_processes_register_renew_and_go(database_url: str, tmp_path: pathlib.Path) -> None:
    lease = 1.5
    workers = Workers(database_url, tmp_path, DURABLE_JOBS_LEASE_SECONDS=lease,
                      DURABLE_JOBS_POLL_INTERVAL=0.1, DURABLE_JOBS_CONCURRENCY=3,
                      DURABLE_JOBS_QUEUES="default,mail")
    with worker_app(database_url, DURABLE_JOBS_LEASE_SECONDS=lease,
                    DURABLE_JOBS_ADMIN_TOKEN=TOKEN) as app:
        from tests.procs.limits_app import jobs

        assert jobs.processes() == []
        try:
            procs = workers.start(3)
            pids = {p.pid for p in procs}
            records = wait_for("three records", lambda: len(jobs.processes()) == 3
                               and jobs.processes(), 60, details=workers.logs)
            assert {r["pid"] for r in records} == pids
            for record in records:
                assert record["host"] == socket.gethostname()
                assert record["id"].startswith(f"{record['host']}:{record['pid']}:")
                assert record["queues"] == ["default", "mail"]
                assert record["concurrency"] == 3
                assert record["version"] == __version__
                assert record["jobs_in_flight"] == 0
                assert record["started_at"].tzinfo is not None
            # renewed by the heartbeat
            before = {r["id"]: r["last_seen"] for r in records}
            time.sleep(lease)
            after = {r["id"]: r["last_seen"] for r in jobs.processes()}
            assert all(after[i] > before[i] for i in before)
            # jobs in flight show in the record
            jobs.enqueue_many("traced", [{"tag": f"t{i}", "sleep": 3} for i in range(3)])
            wait_for("jobs in flight to show", lambda: sum(
                r["jobs_in_flight"] for r in jobs.processes()) == 3, 30, details=workers.logs)

            killed = procs[0]
            workers.kill(killed)
            killed_at = time.time()
            # seen late within three leases: health names it
            report = wait_for("health to name the killed process", lambda: (
                r := health_report(get_state())) and any(
                    u["id"].split(":")[1] == str(killed.pid) for u in r["unseen_processes"] or ()
                ) and r, 30)
            assert report["processes"] == 3
            wait_for("the killed process's record to go", lambda: len(jobs.processes()) == 2,
                     30, details=workers.logs)
            assert time.time() - killed_at >= 3 * lease - 0.5
            assert killed.pid not in {r["pid"] for r in jobs.processes()}

            client = app.test_client()
            body = client.get("/admin/jobs/processes",
                              headers={"Authorization": f"Bearer {TOKEN}"}).json
            assert sorted(item["pid"] for item in body["items"]) == sorted(pids - {killed.pid})
            assert dt.datetime.fromisoformat(body["items"][0]["last_seen"]).tzinfo is not None

            # a clean stop removes its own record at once
            stopped = procs[1]
            stopped.send_signal(signal.SIGTERM)
            stopped.wait(30)
            assert stopped.pid not in {r["pid"] for r in jobs.processes()}
            assert len(jobs.processes()) == 1
        finally:
            workers.stop()
        assert jobs.processes() == []
        assert os.getpid() not in {r["pid"] for r in jobs.processes()}


def test_process_due_alone_does_not_register(database_url: str) -> None:
    """drain() and process_due() in a script or test are not a worker process."""
    with worker_app(database_url):
        from tests.procs.limits_app import jobs

        jobs.enqueue("traced", {"tag": "x"})
        assert jobs.drain()["succeeded"] == 1
        assert jobs.processes() == []
