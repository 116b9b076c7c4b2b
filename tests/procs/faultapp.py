"""An app whose jobs record a side effect in another database, for the fault tests.

The jobs live in ``FAULTAPP_DATABASE_URL``; each ``record`` job inserts one
row (its tag, the pid that ran it) into the ``side_effects`` table of
``FAULTAPP_SIDE_URL``, a database the faults never touch, as a job would call
an outside service. A tag recorded twice is a job that ran twice.

The app's and the library's connections to the jobs database carry the
``application_name`` ``fdj-jobs``, so a test can terminate exactly those.
Config keys come from the environment as ``FAULTAPP_<KEY>`` (JSON values),
e.g. ``FAULTAPP_DURABLE_JOBS_LEASE_SECONDS=10``.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import typing as t

import sqlalchemy as sa
from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from flask_durable_jobs import DurableJobs

ENV_PREFIX = "FAULTAPP"
APPLICATION_NAME = "fdj-jobs"
JOB = "record"

db = SQLAlchemy()
jobs = DurableJobs()

side_effects = db.Table(
    "side_effects",
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("tag", sa.String(50), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    bind_key="side",
)


# A failed insert (which the side database should never cause) is retried
# soon, so it cannot stall a test behind the default backoff.
@jobs.handler(JOB, max_attempts=20, backoff=lambda attempt: 0.5)
def record(payload: dict[str, t.Any]) -> None:
    """Sleep ``sleep`` seconds, then record ``tag`` once."""
    time.sleep(float(payload.get("sleep", 0)))
    with db.engines["side"].begin() as conn:
        conn.execute(side_effects.insert().values(tag=str(payload["tag"]), pid=os.getpid()))


def create_app(config: dict[str, t.Any] | None = None) -> Flask:
    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = os.environ.get("FAULTAPP_DATABASE_URL", "")
    app.config["SQLALCHEMY_BINDS"] = {
        "side": {"url": os.environ.get("FAULTAPP_SIDE_URL", ""), "pool_pre_ping": True},
    }
    app.config["SQLALCHEMY_ENGINE_OPTIONS"] = {
        "pool_pre_ping": True,
        "connect_args": {"application_name": APPLICATION_NAME},
    }
    app.config.from_prefixed_env(ENV_PREFIX)
    if config:
        app.config.update(config)
    if os.environ.get("FAULTAPP_LOG"):
        logging.basicConfig(
            level=logging.INFO,
            stream=sys.stderr,
            format="%(asctime)s %(process)d %(threadName)s %(levelname)s %(message)s",
        )
        logging.getLogger("apscheduler").setLevel(logging.WARNING)
    db.init_app(app)
    jobs.init_app(app, db=db)
    return app
