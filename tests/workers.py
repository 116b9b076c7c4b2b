"""Real worker processes of ``tests.procs.limits_app`` (``flask jobs work``) on a
shared database, and the handlers' own start and end times they record."""

from __future__ import annotations

import contextlib
import os
import pathlib
import signal
import subprocess
import sys
import typing as t

import sqlalchemy as sa
from flask import Flask

from tests.helpers import close
from tests.procs import limits_app

ROOT = pathlib.Path(__file__).resolve().parent.parent


class Workers:
    """``flask jobs work`` processes on one database; stopped at exit."""

    def __init__(self, url: str, tmp_path: pathlib.Path, **config: t.Any) -> None:
        self.url = url
        self.tmp_path = tmp_path
        self.config = config
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, count: int = 1) -> list[subprocess.Popen[bytes]]:
        env = {**os.environ, "LIMITSAPP_DATABASE_URL": self.url,
               "PYTHONPATH": str(ROOT), "FLASK_APP": "tests.procs.limits_app:create_app"}
        for key, value in self.config.items():
            env[f"LIMITSAPP_{key}"] = str(value)
        started = []
        for _ in range(count):
            log = open(self.tmp_path / f"worker-{len(self.procs)}.log", "wb")  # noqa: SIM115
            proc = subprocess.Popen([sys.executable, "-m", "flask", "jobs", "work"],
                                    cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
            log.close()
            self.procs.append(proc)
            started.append(proc)
        return started

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-3000:]
                         for p in sorted(self.tmp_path.glob("worker-*.log")))


@contextlib.contextmanager
def worker_app(url: str, **config: t.Any) -> t.Iterator[Flask]:
    """The app of the worker processes, in this process (scheduler off),
    its tables and the trace table made; ``config`` as for :class:`Workers`."""
    os.environ["LIMITSAPP_DATABASE_URL"] = url
    app = limits_app.create_app(config)
    with app.app_context():
        limits_app.db.create_all()
        try:
            yield app
        finally:
            close(limits_app.jobs, limits_app.db)
            os.environ.pop("LIMITSAPP_DATABASE_URL", None)


def traces(job_type: str | None = None) -> list[t.Any]:
    """The trace rows (job_type, tag, key, pid, started, ended), by start time."""
    trace = limits_app.trace
    query = sa.select(trace.c.job_type, trace.c.tag, trace.c.key, trace.c.pid,
                      trace.c.started, trace.c.ended).order_by(trace.c.started)
    if job_type is not None:
        query = query.where(trace.c.job_type == job_type)
    with limits_app.db.engine.connect() as conn:
        return list(conn.execute(query).all())


def most_at_once(intervals: t.Iterable[tuple[float, float]]) -> int:
    """The most intervals open at one instant (an end before a start at a tie)."""
    events = sorted([(s, 1) for s, _e in intervals] + [(e, -1) for _s, e in intervals])
    most = now = 0
    for _time, step in events:
        now += step
        most = max(most, now)
    return most
