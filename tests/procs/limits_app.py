"""An app whose handlers record their start and end times in a side table, for
the queue, limit and registry tests that run it in several processes.

``LIMITSAPP_DATABASE_URL`` names the database; ``LIMITSAPP_<KEY>`` sets any
Flask config key (JSON values parsed). Run with
``flask --app tests.procs.limits_app jobs work``.

Handlers (each writes a ``trace`` row: job type, tag, key, pid, start, end;
times from ``time.time()``, every process on this one host):

* ``traced``: plain; payload ``tag``, optional ``sleep`` seconds;
* ``per_customer``: at most 2 at once per ``payload["customer"]``;
* ``rated``: at most 20 starts per second.
"""

from __future__ import annotations

import os
import time
import typing as t

import sqlalchemy as sa
from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from flask_durable_jobs import DurableJobs

db = SQLAlchemy()
jobs = DurableJobs()

trace = sa.Table(
    "trace", db.metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("job_type", sa.String(50), nullable=False),
    sa.Column("tag", sa.String(50), nullable=False),
    sa.Column("key", sa.String(50), nullable=True),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("started", sa.Float, nullable=False),
    sa.Column("ended", sa.Float, nullable=False),
)


def _record(job_type: str, payload: dict[str, t.Any], key: str | None = None) -> dict[str, t.Any]:
    started = time.time()
    sleep = float(payload.get("sleep", 0))
    if sleep:
        time.sleep(sleep)
    ended = time.time()
    with db.engine.begin() as conn:
        conn.execute(trace.insert().values(
            job_type=job_type, tag=str(payload.get("tag", "")), key=key, pid=os.getpid(),
            started=started, ended=ended,
        ))
    return {"pid": os.getpid()}


@jobs.handler("traced")
def traced(payload: dict[str, t.Any]) -> dict[str, t.Any]:
    return _record("traced", payload)


@jobs.handler("per_customer", concurrency=2, concurrency_key=lambda p: str(p["customer"]))
def per_customer(payload: dict[str, t.Any]) -> dict[str, t.Any]:
    return _record("per_customer", payload, str(payload["customer"]))


@jobs.handler("rated", rate_limit="20/s")
def rated(payload: dict[str, t.Any]) -> dict[str, t.Any]:
    return _record("rated", payload)


def create_app(config: dict[str, t.Any] | None = None) -> Flask:
    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = os.environ.get("LIMITSAPP_DATABASE_URL", "")
    app.config["DURABLE_JOBS_SCHEDULER"] = False  # `flask jobs work` runs the processor
    app.config.from_prefixed_env("LIMITSAPP")
    app.config.update(config or {})
    db.init_app(app)
    jobs.init_app(app, db=db)
    return app
