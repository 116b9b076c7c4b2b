"""Tick one every-second schedule from several processes at once.

``python -m tests.procs.periodic_app DATABASE_URL START_AT SECONDS`` builds an
app (scheduler off) with the schedule ``* * * * * *`` on the ``beat`` handler,
waits until the wall clock reaches ``START_AT`` (so every process starts
together), then calls :func:`flask_durable_jobs.periodic.tick` every few
milliseconds for ``SECONDS``. It prints one JSON object: the number of ticks
and of jobs this process enqueued.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
import typing as t

from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from flask_durable_jobs import DurableJobs
from flask_durable_jobs.periodic import tick

db = SQLAlchemy()
jobs = DurableJobs()


@jobs.periodic("* * * * * *")
@jobs.handler("beat")
def beat(payload: dict[str, t.Any]) -> None:
    return None


def create_app(url: str) -> Flask:
    app = Flask(__name__)
    app.config.update(SQLALCHEMY_DATABASE_URI=url, DURABLE_JOBS_SCHEDULER=False)
    db.init_app(app)
    jobs.init_app(app, db=db)
    return app


def main() -> None:
    url, start_at, seconds = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
    app = create_app(url)
    state = app.extensions["durable_jobs"]
    with state.store.engine.connect():  # connect before the start time, not after it
        pass
    late = time.time() > start_at
    time.sleep(max(0.0, start_at - time.time()))
    rng = random.Random(os.getpid())
    ticks = enqueued = 0
    while time.time() < start_at + seconds:
        enqueued += tick(state)
        ticks += 1
        time.sleep(rng.uniform(0.0, 0.02))
    state.shutdown()
    print(json.dumps({"pid": os.getpid(), "ticks": ticks, "enqueued": enqueued,
                      "started_late": late}))


if __name__ == "__main__":
    main()
