"""A worker process for the batch tests: drains jobs for a few seconds.

Environment: TEST_DB_URL, RUN_LOG (a file each run appends a line to),
WORK_SECONDS (how long to keep draining).
"""

from __future__ import annotations

import os
import time

from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from flask_durable_jobs import DurableJobs

db = SQLAlchemy()
jobs = DurableJobs()


def _log(line: str) -> None:
    fd = os.open(os.environ["RUN_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


@jobs.handler("batch.part")
def part(payload: dict[str, object]) -> None:
    time.sleep(0.02)
    _log(f"part {payload['n']} {os.getpid()}")


@jobs.handler("batch.done")
def done(payload: dict[str, object]) -> None:
    _log(f"done {payload['album']} {os.getpid()}")


def create_app() -> Flask:
    app = Flask(__name__)
    app.config.update(SQLALCHEMY_DATABASE_URI=os.environ["TEST_DB_URL"],
                      DURABLE_JOBS_SCHEDULER=False, DURABLE_JOBS_CONCURRENCY=2,
                      DURABLE_JOBS_BATCH_SIZE=3)
    db.init_app(app)
    jobs.init_app(app, db=db)
    return app


if __name__ == "__main__":
    app = create_app()
    deadline = time.monotonic() + float(os.environ.get("WORK_SECONDS", "5"))
    with app.app_context():
        while time.monotonic() < deadline:
            if jobs.process_due(limit=3)["claimed"] == 0:
                time.sleep(0.02)
        jobs.stop()
