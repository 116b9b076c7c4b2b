"""A small app whose jobs leave a trace that can be counted across processes.

Configuration comes from the environment, so the same module serves
``flask --app tests.procs.jobsapp ...``, ``gunicorn 'tests.procs.jobsapp:create_app()'``
and the test process itself:

* ``JOBSAPP_DATABASE_URL``: the database (required);
* ``JOBSAPP_RUN_FILE``: the file every run appends to;
* ``JOBSAPP_<KEY>``: any Flask config key, e.g. ``JOBSAPP_DURABLE_JOBS_LEASE_SECONDS=1``
  (values are parsed as JSON when they can be).

Each run of the ``work`` job appends ``start <tag> <pid>`` when it begins and
``end <tag> <pid>`` when its handler returns, each line in one ``O_APPEND``
write, so lines from several processes never interleave.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import typing as t

import click
from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from flask_durable_jobs import DurableJobs

ENV_PREFIX = "JOBSAPP"
JOB = "work"

db = SQLAlchemy()
jobs = DurableJobs()


def append_line(path: str, line: str) -> None:
    """Append one line with a single ``O_APPEND`` write."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def _run_file() -> str:
    return os.environ["JOBSAPP_RUN_FILE"]


@jobs.handler(JOB)
def work(payload: dict[str, t.Any]) -> dict[str, t.Any]:
    """One traced run. Payload: ``tag`` (required), and optionally
    ``sleep`` (seconds), ``exit`` (kill this process with ``os._exit(1)``),
    ``fail_first`` (raise on the first run of this tag)."""
    tag = str(payload["tag"])
    pid = os.getpid()
    path = _run_file()
    append_line(path, f"start {tag} {pid}")
    if payload.get("exit"):
        os._exit(1)
    if payload.get("fail_first"):
        marker = f"{path}.failed-{tag}"
        try:
            fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            pass
        else:
            os.close(fd)
            raise RuntimeError(f"first run of {tag} fails on purpose")
    sleep = float(payload.get("sleep", 0))
    if sleep:
        time.sleep(sleep)
    append_line(path, f"end {tag} {pid}")
    return {"pid": pid, "tag": tag}


def create_app(config: dict[str, t.Any] | None = None) -> Flask:
    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = os.environ.get("JOBSAPP_DATABASE_URL", "")
    app.config["DURABLE_JOBS_ADMIN_TOKEN"] = "jobsapp-admin-token"
    app.config.from_prefixed_env(ENV_PREFIX)
    if config:
        app.config.update(config)
    if os.environ.get("JOBSAPP_LOG"):
        logging.basicConfig(
            level=logging.INFO,
            stream=sys.stderr,
            format="%(process)d %(threadName)s %(name)s %(levelname)s %(message)s",
        )
        logging.getLogger("apscheduler").setLevel(logging.WARNING)
    db.init_app(app)
    jobs.init_app(app, db=db)

    @app.get("/")
    def index() -> dict[str, t.Any]:
        return {"pid": os.getpid()}

    @app.cli.command("idle")
    @click.argument("seconds", type=float)
    def idle(seconds: float) -> None:
        """Do nothing for a while (a flask command that is not ``run``)."""
        time.sleep(seconds)
        click.echo(f"idle done {os.getpid()}")

    return app
