"""An app for the multi-host tests: every run of a job leaves rows in a side table.

Configuration comes from the environment, as for ``tests/procs/jobsapp.py``:

* ``HOSTAPP_DATABASE_URL``: the database (PostgreSQL; required);
* ``HOSTAPP_HOST``: the name of the "host" this process plays;
* ``HOSTAPP_<KEY>``: any Flask config key, e.g. ``HOSTAPP_DURABLE_JOBS_LEASE_SECONDS=4``
  (values are parsed as JSON when they can be).

Each run of the ``visit`` job inserts a ``start`` row into ``host_runs``
(job id, attempt, host, pid, this host's own clock and the database's) when
its handler begins, sleeps ``payload["sleep"]`` seconds, inserts an ``end``
row, and returns ``{"host", "attempt", "pid"}``: a job's result says which
run's outcome was written.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import sys
import time
import typing as t

import sqlalchemy as sa
from flask import Flask, g
from flask_sqlalchemy import SQLAlchemy

from flask_durable_jobs import DurableJobs, signals

ENV_PREFIX = "HOSTAPP"
JOB = "visit"

db = SQLAlchemy()
jobs = DurableJobs()

runs = sa.Table(
    "host_runs",
    db.metadata,
    sa.Column("id", sa.BigInteger, primary_key=True),
    sa.Column("job_id", sa.BigInteger, nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("event", sa.String(8), nullable=False),
    sa.Column("host", sa.String(40), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("local_at", sa.DateTime(timezone=True), nullable=False),
    # the database's clock when the row was written (not when the transaction began)
    sa.Column("db_at", sa.DateTime(timezone=True), nullable=False,
              server_default=sa.text("clock_timestamp()")),
)


def _host() -> str:
    return os.environ.get("HOSTAPP_HOST", "test")


def _record(event: str) -> None:
    job_id, attempt = g.hostapp_job
    db.session.execute(runs.insert().values(
        job_id=job_id, attempt=attempt, event=event, host=_host(), pid=os.getpid(),
        local_at=dt.datetime.now(dt.timezone.utc),
    ))
    db.session.commit()


@jobs.handler(JOB, max_attempts=10)
def visit(payload: dict[str, t.Any]) -> dict[str, t.Any]:
    """One recorded run; ``payload["sleep"]``: seconds between its start and end rows."""
    _record("start")
    time.sleep(float(payload.get("sleep", 0)))
    _record("end")
    return {"host": _host(), "attempt": g.hostapp_job[1], "pid": os.getpid()}


def _started(app: Flask, *, job_id: int, attempt: int, **_: t.Any) -> None:
    # sent in the app context the handler then runs in
    g.hostapp_job = (job_id, attempt)


def create_app(config: dict[str, t.Any] | None = None) -> Flask:
    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = os.environ.get("HOSTAPP_DATABASE_URL", "")
    app.config["DURABLE_JOBS_ADMIN_TOKEN"] = "hostapp-admin-token"
    app.config.from_prefixed_env(ENV_PREFIX)
    if config:
        app.config.update(config)
    if os.environ.get("HOSTAPP_LOG"):
        logging.basicConfig(
            level=logging.INFO,
            stream=sys.stderr,
            format="%(asctime)s %(process)d %(threadName)s %(name)s %(levelname)s %(message)s",
        )
        logging.getLogger("apscheduler").setLevel(logging.WARNING)
    db.init_app(app)
    jobs.init_app(app, db=db)
    signals.job_started.connect(_started, app)

    @app.get("/")
    def index() -> dict[str, t.Any]:
        return {"host": _host(), "pid": os.getpid()}

    return app
