"""Enqueue with idempotency keys from several processes at once.

``python -m tests.procs.enqueue START_AT ROUNDS`` waits until the wall clock
reaches ``START_AT`` (so every process starts together), then, ``ROUNDS``
times, enqueues with the shared key ``shared``, with the key ``common-<i>``
(the same in every process) and with a key of its own. It prints one JSON
object: the ids it got back for each key, and whether it reached the
start time late.
"""

from __future__ import annotations

import json
import os
import sys
import time

import sqlalchemy as sa

from .jobsapp import JOB, create_app, db, jobs


def main() -> None:
    start_at, rounds = float(sys.argv[1]), int(sys.argv[2])
    app = create_app({"DURABLE_JOBS_SCHEDULER": False})
    pid = os.getpid()
    got: dict[str, list[int]] = {}
    with app.app_context():
        # Connect before the start time, not after it.
        db.session.execute(sa.text("SELECT 1"))
        db.session.rollback()
        jobs.get(0)
        delay = start_at - time.time()
        if delay > 0:
            time.sleep(delay)
        for i in range(rounds):
            for key in ("shared", f"common-{i}", f"own-{pid}-{i}"):
                job = jobs.enqueue(JOB, {"tag": key}, idempotency_key=key, delay=3600)
                got.setdefault(key, []).append(job.id)
    print(json.dumps({"pid": pid, "started_late": delay <= 0, "ids": got}))


if __name__ == "__main__":
    main()
