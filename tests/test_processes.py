"""Real processes on a real database: kill -9, SIGSTOP, gunicorn, the reloader.

Every test runs on SQLite (a file) and on PostgreSQL. The app under test is
``tests/procs/jobsapp.py``; its ``work`` job appends ``start <tag> <pid>`` and
``end <tag> <pid>`` lines to a run file, so runs are counted across processes.
The test process itself only creates the tables, enqueues and reads rows; it
never runs a scheduler.
"""

from __future__ import annotations

import collections
import contextlib
import datetime as dt
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import typing as t
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.helpers import wait_for
from tests.procs import jobsapp

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
FLASK = str(BIN / "flask")
GUNICORN = str(BIN / "gunicorn")
APP = "tests.procs.jobsapp"
JOB = jobsapp.JOB
UTC = dt.timezone.utc

#: Short intervals so that every test finishes in seconds.
FAST = {"POLL_INTERVAL": 0.1, "SWEEP_INTERVAL": 0.5, "LEASE_SECONDS": 1}
STARTED = re.compile(r"durable jobs scheduler started \(pid (\d+)")


# -- helpers ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Proc:
    """A child process in its own session, its output in a log file."""

    def __init__(
        self, name: str, args: list[str], env: dict[str, str], cwd: Path, stdin: t.Any = None
    ) -> None:
        self.name = name
        self.args = args
        self.log_path = cwd / f"{name}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in kill()
        self.proc = subprocess.Popen(
            args,
            cwd=cwd,
            env=env,
            stdin=stdin if stdin is not None else subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.pid = self.proc.pid

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def scheduler_pids(self) -> list[int]:
        """Pids that logged a scheduler start, in order."""
        return [int(pid) for pid in STARTED.findall(self.output())]

    def signal(self, signum: int) -> None:
        if self.alive():
            os.kill(self.pid, signum)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        """SIGKILL the whole session (the process and any children it forked)."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGCONT)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        self._log.close()


class World:
    """One test's database, run file and processes."""

    def __init__(self, url: str, tmp_path: Path) -> None:
        self.url = url
        self.tmp = tmp_path
        self.run_file = tmp_path / "runs.txt"
        self.procs: list[Proc] = []
        self.app = jobsapp.create_app(
            {"SQLALCHEMY_DATABASE_URI": url, "DURABLE_JOBS_SCHEDULER": False}
        )
        self._ctx = self.app.app_context()
        self._ctx.push()
        jobsapp.db.create_all()
        self.table = jobsapp.db.metadata.tables["durable_jobs"]

    @property
    def sqlite(self) -> bool:
        return self.url.startswith("sqlite")

    def close(self) -> None:
        try:
            for proc in self.procs:
                proc.kill()
        finally:
            jobsapp.jobs.stop()
            jobsapp.db.session.remove()
            for engine in jobsapp.db.engines.values():
                engine.dispose()
            self._ctx.pop()

    # processes

    def env(self, **config: t.Any) -> dict[str, str]:
        env = {
            k: v for k, v in os.environ.items()
            if not k.startswith(("FLASK_", "JOBSAPP_", "WERKZEUG_", "GUNICORN_"))
        }
        env.update(
            PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
            PYTHONUNBUFFERED="1",
            JOBSAPP_DATABASE_URL=self.url,
            JOBSAPP_RUN_FILE=str(self.run_file),
            JOBSAPP_LOG="1",
        )
        for key, value in config.items():
            env[f"JOBSAPP_DURABLE_JOBS_{key}"] = json.dumps(value)
        return env

    def spawn(self, name: str, args: list[str], stdin: t.Any = None, **config: t.Any) -> Proc:
        proc = Proc(name, args, self.env(**config), self.tmp, stdin=stdin)
        self.procs.append(proc)
        return proc

    def worker(self, name: str, **config: t.Any) -> Proc:
        """``flask jobs work``: the processor in the foreground."""
        return self.spawn(name, [FLASK, "--app", APP, "jobs", "work"], **config)

    def flask(self, *args: str, stdin: str | None = None, timeout: float = 60,
              **config: t.Any) -> subprocess.CompletedProcess[str]:
        """Run a short ``flask`` command to completion."""
        return subprocess.run(
            [FLASK, "--app", APP, *args],
            cwd=self.tmp,
            env=self.env(**config),
            input=stdin if stdin is not None else "",
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def details(self) -> str:
        parts = [f"runs: {self.runs()[-20:]}", f"by status: {self.by_status()}"]
        for proc in self.procs:
            tail = proc.output()[-3000:]
            parts.append(f"--- {proc.name} (pid {proc.pid}, rc {proc.proc.poll()}):\n{tail}")
        return "\n".join(parts)

    # jobs and rows

    def enqueue(self, tags: t.Sequence[str], **options: t.Any) -> dict[str, int]:
        """Enqueue one ``work`` job per tag; returns tag -> job id."""
        extra = options.pop("payload", {})
        ids = jobsapp.jobs.enqueue_many(JOB, [{"tag": tag, **extra} for tag in tags], **options)
        return dict(zip(tags, ids, strict=True))

    def rows(self) -> dict[int, t.Any]:
        with jobsapp.db.engine.connect() as conn:
            return {row.id: row for row in conn.execute(sa.select(self.table))}

    def row(self, job_id: int) -> t.Any:
        with jobsapp.db.engine.connect() as conn:
            return conn.execute(sa.select(self.table).where(self.table.c.id == job_id)).one()

    def by_status(self) -> dict[str, int]:
        c = self.table.c
        with jobsapp.db.engine.connect() as conn:
            result = conn.execute(sa.select(c.status, sa.func.count()).group_by(c.status))
            return {status: count for status, count in result}

    def count(self, status: str) -> int:
        return self.by_status().get(status, 0)

    def runs(self, event: str = "start") -> list[tuple[str, int]]:
        """(tag, pid) of every run line of this event, in file order."""
        if not self.run_file.exists():
            return []
        out = []
        for line in self.run_file.read_text().splitlines():
            kind, tag, pid = line.split()
            if kind == event:
                out.append((tag, int(pid)))
        return out

    def wait_status(self, job_id: int, status: str, timeout: float) -> t.Any:
        return wait_for(
            f"job {job_id} to be {status}",
            lambda: (lambda r: r if r.status == status else None)(self.row(job_id)),
            timeout,
            details=self.details,
        )

    def wait_all(self, status: str, total: int, timeout: float) -> None:
        wait_for(f"{total} jobs {status}", lambda: self.count(status) == total, timeout,
                 interval=0.2, details=self.details)

    # freezing a process without freezing the database

    def _write_lock_free(self) -> bool:
        """True when no other connection holds a write lock or an open transaction."""
        if self.sqlite:
            path = sa.make_url(self.url).database
            conn = sqlite3.connect(path, timeout=0.3, isolation_level=None)
            try:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("ROLLBACK")
                return True
            except sqlite3.OperationalError:
                return False
            finally:
                conn.close()
        with jobsapp.db.engine.connect() as conn:
            busy = conn.execute(sa.text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND pid <> pg_backend_pid()"
                " AND (state LIKE 'idle in transaction%' OR state = 'active')"
            )).scalar_one()
        return busy == 0

    def freeze(self, proc: Proc, timeout: float = 10) -> None:
        """SIGSTOP ``proc`` at a moment it holds no transaction open.

        A process frozen inside a write transaction would stall SQLite (one
        writer) and hide a row behind its lock on PostgreSQL; that is not the
        situation under test.
        """
        deadline = time.monotonic() + timeout
        while True:
            os.kill(proc.pid, signal.SIGSTOP)
            if self._write_lock_free():
                return
            os.kill(proc.pid, signal.SIGCONT)
            if time.monotonic() > deadline:
                raise AssertionError(f"{proc.name} never left its transaction")
            time.sleep(0.03)


@pytest.fixture
def world(database_url: str, tmp_path: Path) -> t.Iterator[World]:
    w = World(database_url, tmp_path)
    try:
        yield w
    finally:
        w.close()


def aware(value: t.Any) -> dt.datetime:
    """A timestamp column read back on either backend, as aware UTC."""
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# -- 1. kill -9 in the middle of a batch -------------------------------------------------


def test_kill_9_loses_nothing_and_reruns_only_what_was_in_flight(world: World) -> None:
    total, concurrency, batch = 200, 4, 8
    config = dict(FAST, LEASE_SECONDS=2, SWEEP_INTERVAL=1, CONCURRENCY=concurrency,
                  BATCH_SIZE=batch)
    tags = [f"k{i}" for i in range(total)]
    ids = world.enqueue(tags, payload={"sleep": 0.05})

    a = world.worker("worker-a", **config)
    wait_for("worker A to finish some jobs", lambda: len(world.runs("end")) >= 40, 60,
             details=world.details)
    os.kill(a.pid, signal.SIGKILL)
    a.wait(10)
    a_finished = {tag for tag, pid in world.runs("end") if pid == a.pid}
    assert len(a_finished) < total, "worker A finished everything before the kill"
    rows = world.rows()
    written_by_a = {
        tag for tag in tags
        if rows[ids[tag]].status == "succeeded" and rows[ids[tag]].result["pid"] == a.pid
    }
    a_claimed = {tag for tag in tags if rows[ids[tag]].status == "running"}
    # What A held: its claimed jobs (at most a batch), and the outcomes its
    # writer was writing, which left their room to the next claim (loop.py's
    # claim_step) and so can add up to a batch more.
    held_at_most = 2 * batch
    assert len(a_claimed) <= held_at_most, a_claimed

    b = world.worker("worker-b", **config)
    world.wait_all("succeeded", total, 90)

    rows = world.rows()
    assert world.by_status() == {"succeeded": total}
    starts = collections.Counter(tag for tag, _pid in world.runs("start"))
    assert set(starts) == set(tags), "a job never ran"
    assert max(starts.values()) <= 2, starts.most_common(5)
    twice = {tag for tag, n in starts.items() if n == 2}
    # Only jobs that A had claimed but not yet written ran again, never more
    # than A could hold at once; every job A had written ran exactly once.
    assert len(twice) <= held_at_most, twice
    assert twice <= a_claimed, twice - a_claimed
    assert not twice & written_by_a
    for tag in twice:
        pids = [pid for run_tag, pid in world.runs("start") if run_tag == tag]
        assert pids == [a.pid, b.pid], (tag, pids)
        row = rows[ids[tag]]
        assert row.result == {"pid": b.pid, "tag": tag}
        assert row.attempts == 2
    for tag in written_by_a:
        assert rows[ids[tag]].attempts == 1
    retried = {tag for tag in tags if rows[ids[tag]].attempts > 1}
    assert retried == a_claimed, "only the jobs A held when it died count a lost attempt"
    assert "database is locked" not in a.output() + b.output()


def test_kill_9_charges_an_attempt_only_to_jobs_that_had_started(world: World) -> None:
    """Jobs a worker had claimed but not yet handed to a handler never ran:
    its death is no failed attempt of theirs, and with ``max_attempts=1`` it
    must not send them to ``dead`` with "lease expired"."""
    total = 12
    tags = [f"q{i}" for i in range(total)]
    ids = world.enqueue(tags, payload={"sleep": 1}, max_attempts=1)
    config = dict(FAST, CONCURRENCY=1)
    a = world.worker("worker-a", **config)
    wait_for("worker A to start a job", lambda: world.runs("start"), 30, details=world.details)
    os.kill(a.pid, signal.SIGKILL)
    a.wait(10)
    ((started, _pid),) = world.runs("start")

    world.worker("worker-b", **dict(config, CONCURRENCY=4))
    wait_for("every job to end",
             lambda: world.count("succeeded") + world.count("dead") == total, 60,
             interval=0.2, details=world.details)
    rows = world.rows()
    dead = sorted(tag for tag in tags if rows[ids[tag]].status == "dead")
    assert dead == [started], (
        f"{len(dead)} jobs went dead though only {started} had started when the worker"
        f" died; e.g. {rows[ids[dead[-1]]].last_error!r}"
    )
    assert "lease expired" in rows[ids[started]].last_error
    never_started = [tag for tag in tags if tag != started]
    assert all(rows[ids[tag]].status == "succeeded" for tag in never_started)
    assert collections.Counter(tag for tag, _pid in world.runs("start")) == dict.fromkeys(tags, 1)


# -- 2. gunicorn: three workers, each with its scheduler ----------------------------------


#: The warning of a process that serves an admin API nobody can use.
ADMIN_CLOSED = "answers 403 to every request"


def gunicorn(world: World, name: str, *extra: str, workers: int = 3, **config: t.Any) -> Proc:
    return world.spawn(
        name,
        [GUNICORN, "-w", str(workers), "-b", f"127.0.0.1:{free_port()}",
         "--graceful-timeout", "10", *extra, f"{APP}:create_app()"],
        **config,
    )


def stop_gunicorn(proc: Proc, timeout: float = 20) -> None:
    proc.signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"gunicorn did not stop:\n{proc.output()[-3000:]}") from None


def test_gunicorn_workers_run_every_job_exactly_once(world: World) -> None:
    total = 1200
    tags = [f"g{i}" for i in range(total)]
    ids = world.enqueue(tags)
    server = gunicorn(world, "gunicorn",
                      **dict(FAST, LEASE_SECONDS=5, SWEEP_INTERVAL=1, ADMIN_TOKEN=None))
    world.wait_all("succeeded", total, 120)
    stop_gunicorn(server)

    starts = world.runs("start")
    counts = collections.Counter(tag for tag, _pid in starts)
    assert set(counts) == set(tags)
    assert max(counts.values()) == 1, counts.most_common(5)
    assert len(world.runs("end")) == total
    rows = world.rows()
    assert all(rows[ids[tag]].attempts == 1 for tag in tags)
    schedulers = server.scheduler_pids()
    assert len(schedulers) == 3 and len(set(schedulers)) == 3, schedulers
    assert server.pid not in schedulers
    assert {pid for _tag, pid in starts} <= set(schedulers)
    output = server.output()
    assert "database is locked" not in output
    assert "tick failed" not in output, output[-3000:]
    assert output.count(ADMIN_CLOSED) == 3  # once in each worker, which built the app


def test_gunicorn_preload_runs_jobs_in_workers_only(world: World) -> None:
    total = 300
    tags = [f"p{i}" for i in range(total)]
    world.enqueue(tags)
    server = gunicorn(world, "gunicorn-preload", "--preload", **dict(FAST, ADMIN_TOKEN=None))
    world.wait_all("succeeded", total, 90)
    # Give a scheduler in the master, if any, every chance to show itself.
    time.sleep(1)
    stop_gunicorn(server)

    starts = world.runs("start")
    assert collections.Counter(tag for tag, _pid in starts) == dict.fromkeys(tags, 1)
    pids = {pid for _tag, pid in starts}
    assert server.pid not in pids
    schedulers = server.scheduler_pids()
    assert server.pid not in schedulers, server.output()[-3000:]
    assert len(schedulers) == 3 and len(set(schedulers)) == 3, schedulers
    assert pids <= set(schedulers)
    output = server.output()
    assert "database is locked" not in output
    assert "tick failed" not in output, output[-3000:]
    assert output.count(ADMIN_CLOSED) == 1  # the master built the app, once


# -- 3. a lease far shorter than the job --------------------------------------------------


def test_heartbeats_keep_a_short_lease_through_a_long_job(world: World) -> None:
    # Two workers, each sweeping every 0.5 s with a 1 s lease, both up
    # before the job exists: whichever claims the 5 s job, the other sweeps
    # (and would claim it again) all along.
    workers = [world.worker(f"worker-{i}", **FAST) for i in (1, 2)]
    for proc in workers:
        wait_for(f"{proc.name}'s scheduler", proc.scheduler_pids, 30, details=world.details)
    job_id = world.enqueue(["long"], payload={"sleep": 5})["long"]
    wait_for("the job to start", lambda: world.runs("start"), 30, details=world.details)
    ((_tag, runner),) = world.runs("start")
    assert runner in {proc.pid for proc in workers}

    row = world.wait_status(job_id, "succeeded", 30)
    assert row.attempts == 1
    assert row.result == {"pid": runner, "tag": "long"}
    assert world.runs("start") == [("long", runner)]
    assert all(proc.alive() for proc in workers)
    output = "".join(proc.output() for proc in workers)
    assert "lease expired" not in output and "lease lost" not in output, output[-3000:]


# -- 4. fencing: a frozen worker's late completion is refused ----------------------------


def test_frozen_worker_cannot_overwrite_the_job_after_losing_its_lease(world: World) -> None:
    job_id = world.enqueue(["fenced"], payload={"sleep": 3})["fenced"]
    config = dict(FAST, CONCURRENCY=1)
    first = world.worker("worker-1", **config)
    try:
        wait_for("worker 1 to start the job", lambda: world.runs("start"), 30,
                 details=world.details)
        world.freeze(first)
        lease = aware(world.row(job_id).lease_expires_at)
        wait_for("the lease to expire",
                 lambda: dt.datetime.now(UTC) > lease + dt.timedelta(seconds=0.3), 10)

        second = world.worker("worker-2", **config)
        done = world.wait_status(job_id, "succeeded", 30)
        assert done.result == {"pid": second.pid, "tag": "fenced"}
        assert done.attempts == 2
        assert done.status == "succeeded"
        runs = world.runs("start")
        assert runs == [("fenced", first.pid), ("fenced", second.pid)]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(first.pid, signal.SIGCONT)

    # Worker 1 wakes up, its handler returns, and its write is refused.
    wait_for("worker 1's handler to return",
             lambda: ("fenced", first.pid) in world.runs("end"), 15, details=world.details)
    wait_for("worker 1 to report its outcome refused",
             lambda: "lease lost before its outcome" in first.output(), 15,
             details=world.details)
    time.sleep(0.5)
    after = world.row(job_id)
    assert after == done, "the frozen worker overwrote the job"
    assert after.result == {"pid": second.pid, "tag": "fenced"}
    assert world.count("succeeded") == 1 and len(world.rows()) == 1
    assert first.alive() and second.alive()


# -- 5. idempotent enqueue from several processes at once ---------------------------------


def test_concurrent_idempotent_enqueue_stores_one_job_per_key(world: World) -> None:
    nprocs, rounds = 4, 40
    start_at = time.time() + 6
    procs = [
        world.spawn(f"enqueue-{i}",
                    [sys.executable, "-m", "tests.procs.enqueue", str(start_at), str(rounds)],
                    SCHEDULER=False)
        for i in range(nprocs)
    ]
    for proc in procs:
        try:
            assert proc.wait(90) == 0, proc.output()
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{proc.name} hung:\n{proc.output()[-3000:]}") from None
    reports = []
    for proc in procs:
        lines = [line for line in proc.output().splitlines() if line.startswith("{")]
        assert lines, proc.output()
        reports.append(json.loads(lines[-1]))
    assert all(r["started_late"] is False for r in reports), "a process missed the start"

    rows = world.rows()
    keys = collections.Counter(row.idempotency_key for row in rows.values())
    assert len(rows) == 1 + rounds + nprocs * rounds
    assert max(keys.values()) == 1
    by_key = {row.idempotency_key: row.id for row in rows.values()}

    shared = {i for r in reports for i in r["ids"]["shared"]}
    assert shared == {by_key["shared"]}, shared
    for i in range(rounds):
        key = f"common-{i}"
        assert {r["ids"][key][0] for r in reports} == {by_key[key]}, key
    for r in reports:
        for key, got in r["ids"].items():
            assert got == [by_key[key]] * len(got), key
    assert "database is locked" not in "".join(p.output() for p in procs)


# -- 6. shutdown releases unfinished jobs ------------------------------------------------


def server_for(world: World, runner: str, **config: t.Any) -> Proc:
    """A process that runs the scheduler: ``flask jobs work``, gunicorn or ``flask run``."""
    if runner == "work":
        return world.worker("worker", **config)
    if runner == "gunicorn":
        return gunicorn(world, "gunicorn", workers=1, **config)
    assert runner == "flask-run"
    return world.spawn("flask-run", [FLASK, "--app", APP, "run", "--port", str(free_port()),
                                     "--no-reload"], **config)


@pytest.mark.parametrize("runner", ["work", "gunicorn", "flask-run"])
def test_shutdown_releases_unfinished_jobs_without_counting_the_attempt(
    world: World, runner: str
) -> None:
    fresh = world.enqueue(["fresh"], payload={"sleep": 30})["fresh"]
    again = world.enqueue(["again"], payload={"sleep": 30, "fail_first": True})["again"]
    # Claimed once both handler threads are busy: it waits in the process, never started.
    queued = world.enqueue(["queued"], payload={"sleep": 30}, delay=2.5)["queued"]
    config = dict(FAST, LEASE_SECONDS=2, SHUTDOWN_TIMEOUT=1, CONCURRENCY=2, BACKOFF_BASE=0)
    proc = server_for(world, runner, **config)

    def all_claimed() -> bool:
        starts = collections.Counter(tag for tag, _pid in world.runs("start"))
        rows = world.rows()
        return (
            starts["fresh"] == 1 and starts["again"] == 2
            and all(rows[i].status == "running" for i in (fresh, again, queued))
        )

    wait_for("three jobs to be claimed", all_claimed, 30, details=world.details)
    assert world.row(again).attempts == 2
    assert world.row(queued).attempts == 1
    assert "queued" not in {tag for tag, _pid in world.runs("start")}

    sent = time.monotonic()
    proc.signal(signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{runner} ignored SIGTERM:\n{world.details()}") from None
    took = time.monotonic() - sent
    assert took < 6, f"{runner} took {took:.1f} s to stop with a 1 s shutdown timeout"
    assert proc.proc.returncode != -signal.SIGTERM, (
        f"{runner} died of SIGTERM's default action: no shutdown ran, nothing was released"
        f" (its jobs stay 'running' until their lease expires and lose an attempt)"
    )

    now = dt.datetime.now(UTC)
    rows = world.rows()
    assert rows[again].status == "retrying", (runner, rows[again])
    assert rows[again].attempts == 1, "the released attempt was counted"
    assert "first run of again fails" in (rows[again].last_error or "")
    for job_id in (fresh, queued):
        assert rows[job_id].status == "pending", (runner, rows[job_id])
        assert rows[job_id].attempts == 0, "the released attempt was counted"
    for job_id in (fresh, again, queued):
        row = rows[job_id]
        assert aware(row.run_at) <= now, row
        assert row.lease_token is None and row.lease_expires_at is None, row
        assert row.started_at is None and row.finished_at is None, row
    assert world.runs("end") == []


# -- 7. where the scheduler runs ----------------------------------------------------------


def test_flask_run_with_reloader_runs_the_scheduler_in_the_child_only(world: World) -> None:
    tags = [f"r{i}" for i in range(5)]
    world.enqueue(tags)
    port = free_port()
    server = world.spawn("flask-run", [FLASK, "--app", APP, "run", "--port", str(port),
                                       "--reload"], **FAST)
    world.wait_all("succeeded", len(tags), 60)

    def answers() -> bool:
        with socket.socket() as sock:
            sock.settimeout(1)
            return sock.connect_ex(("127.0.0.1", port)) == 0

    wait_for("the server to listen", answers, 30, details=world.details)
    time.sleep(1)  # a scheduler in the watcher process would have started by now
    pids = {pid for _tag, pid in world.runs("start")}
    assert len(pids) == 1, pids
    (child,) = pids
    assert child != server.pid
    assert server.scheduler_pids() == [child], server.output()[-3000:]
    assert server.alive()


def test_other_flask_commands_never_start_the_scheduler(world: World) -> None:
    job_id = world.enqueue(["idle"])["idle"]

    closed = dict(FAST, ADMIN_TOKEN=None)
    stats = world.flask("jobs", "stats", **closed)
    assert stats.returncode == 0, stats.stderr
    assert json.loads(stats.stdout)["by_status"]["pending"] == 1
    shell = world.flask("shell", stdin="import time\ntime.sleep(1.5)\nprint('shell done')\n",
                        **closed)
    assert shell.returncode == 0, shell.stderr
    assert "shell done" in shell.stdout + shell.stderr
    idle = world.flask("idle", "1.5", **closed)
    assert idle.returncode == 0, idle.stderr
    assert "idle done" in idle.stdout
    for done in (stats, shell, idle):
        assert not STARTED.search(done.stdout + done.stderr), done.args
        assert ADMIN_CLOSED not in done.stdout + done.stderr, done.args
    assert world.row(job_id).status == "pending"
    assert world.runs() == []

    worker = world.worker("worker", **FAST)
    row = world.wait_status(job_id, "succeeded", 30)
    assert row.result == {"pid": worker.pid, "tag": "idle"}
    assert worker.scheduler_pids() == [worker.pid]


# -- 8. a poison job that kills its process ----------------------------------------------


def test_a_job_that_kills_its_worker_ends_dead_after_max_attempts(world: World) -> None:
    job_id = world.enqueue(["poison"], payload={"exit": True}, max_attempts=2)["poison"]
    deadline = time.monotonic() + 60
    workers: list[Proc] = []
    while world.row(job_id).status != "dead":
        assert time.monotonic() < deadline, f"the poison job never died\n{world.details()}"
        if not workers or not workers[-1].alive():
            assert len(workers) < 6, f"restarted the worker {len(workers)} times\n" + (
                world.details())
            workers.append(world.worker(f"worker-{len(workers)}", **FAST))
        time.sleep(0.1)

    row = world.row(job_id)
    assert row.attempts == 2
    assert "lease expired" in row.last_error, row.last_error
    assert row.finished_at is not None
    runs = world.runs("start")
    assert [tag for tag, _pid in runs] == ["poison", "poison"]
    assert [pid for _tag, pid in runs] == [w.pid for w in workers[:2]]
    assert all(w.proc.returncode == 1 for w in workers[:2])
    # The worker that found it dead lives on and never runs it again.
    time.sleep(1)
    assert workers[-1].alive()
    assert len(world.runs("start")) == 2
    assert world.row(job_id).status == "dead"
