"""A worker process for the job-control tests: runs due jobs for a while.

``python -m tests.procs.control_app`` with TEST_DB_URL (the database) and
WORK_SECONDS (how long to keep processing). Handlers:

* ``control.slow``: sleeps ``seconds``, reports progress, returns its pid;
* ``control.until_cancelled``: checks for a cancel request every 20 ms, for
  at most ``seconds``; returns ``{"ignored": true}`` if none came.
"""

from __future__ import annotations

import os
import time
import typing as t

from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from flask_durable_jobs import DurableJobs, current_job

db = SQLAlchemy()
jobs = DurableJobs()


@jobs.handler("control.slow")
def slow(payload: dict[str, t.Any]) -> dict[str, t.Any]:
    job = current_job()
    assert job is not None
    job.progress(0.5, message="half way")
    time.sleep(float(payload["seconds"]))
    job.progress(1.0, message="done")
    return {"pid": os.getpid()}


@jobs.handler("control.until_cancelled", max_attempts=3)
def until_cancelled(payload: dict[str, t.Any]) -> dict[str, t.Any]:
    job = current_job()
    assert job is not None
    deadline = time.monotonic() + float(payload["seconds"])
    while time.monotonic() < deadline:
        job.check_cancelled()
        time.sleep(0.02)
    return {"ignored": True}


def create_app() -> Flask:
    app = Flask(__name__)
    app.config.update(SQLALCHEMY_DATABASE_URI=os.environ["TEST_DB_URL"],
                      DURABLE_JOBS_SCHEDULER=False, DURABLE_JOBS_CONCURRENCY=2)
    db.init_app(app)
    jobs.init_app(app, db=db)
    return app


if __name__ == "__main__":
    app = create_app()
    deadline = time.monotonic() + float(os.environ.get("WORK_SECONDS", "10"))
    with app.app_context():
        print("ready", flush=True)
        while time.monotonic() < deadline:
            if jobs.process_due()["claimed"] == 0:
                time.sleep(0.05)
        jobs.stop()
