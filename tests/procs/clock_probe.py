"""Enqueue delayed jobs from a process whose clock libfaketime moves; print what was stored.

``python -m tests.procs.clock_probe DATABASE_URL TIMESTAMP_FILE``, run with
``LD_PRELOAD=.../libfaketime.so.1 FAKETIME_TIMESTAMP_FILE=TIMESTAMP_FILE
FAKETIME_NO_CACHE=1 FAKETIME_DONT_FAKE_MONOTONIC=1``. Enqueues a job delayed
by 60 s, steps the clock 5 minutes further (rewriting the timestamp file, as
NTP or an operator would set the clock), enqueues another, and prints one
JSON object: for each phase, how far this process's clock and the job's
``run_at`` are ahead of the database's clock, in seconds.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import typing as t

import sqlalchemy as sa
from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from flask_durable_jobs import DurableJobs

db = SQLAlchemy()
jobs = DurableJobs()


@jobs.handler("noop")
def noop(payload: dict[str, t.Any]) -> None:
    return None


def phase() -> dict[str, float]:
    job = jobs.enqueue("noop", delay=60)
    local = dt.datetime.now(dt.timezone.utc)
    database = db.session.execute(sa.text("SELECT clock_timestamp()")).scalar_one()
    db.session.rollback()
    return {
        "clock_ahead": (local - database).total_seconds(),
        "run_at_ahead": (job.run_at - database).total_seconds(),
    }


def main(url: str, timestamp_file: str) -> None:
    app = Flask(__name__)
    app.config.update(SQLALCHEMY_DATABASE_URI=url, DURABLE_JOBS_SCHEDULER=False)
    db.init_app(app)
    jobs.init_app(app, db=db)
    with app.app_context():
        db.create_all()
        before = phase()
        with open(timestamp_file, "w") as file:
            file.write("+10m\n")
        after = phase()
        jobs.stop()
    print(json.dumps({"before": before, "after": after}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
