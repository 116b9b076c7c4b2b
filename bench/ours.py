"""Scenarios for flask-durable-jobs. One scenario per process::

    bench/.venv/bin/python bench/ours.py drain_process_due --backend pg --n 20000

The last line of stdout is ``BENCH-RESULT {json}``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import sqlalchemy as sa
from common import (
    BENCH_DIR,
    emit,
    percentile,
    pg_exec,
    pg_url,
    pg_vacuum,
    run_cmd,
    temp_db,
    temp_sqlite,
    wait_until,
)

CHUNK = 1000
VENV_BIN = Path(sys.executable).parent


@contextlib.contextmanager
def database(backend: str, tag: str) -> Iterator[tuple[str, str | None]]:
    """Yield (SQLAlchemy URL, PostgreSQL database name or None) for a fresh database."""
    if backend == "pg":
        with temp_db(tag) as name:
            yield pg_url(name), name
    else:
        with temp_sqlite(tag) as path:
            yield f"sqlite:///{path}", None


def _app(url: str, scheduler: bool = False, **config: object):  # type: ignore[no-untyped-def]
    import webapp

    app = webapp.create_app(url, scheduler=scheduler, **config)
    return app, webapp


def _preload(url: str, n: int, job_type: str = "noop") -> None:
    app, w = _app(url)
    with app.app_context():
        w.db.create_all()
        for start in range(0, n, CHUNK):
            w.jobs.enqueue_many(job_type, [{}] * min(CHUNK, n - start))
        w.jobs.stop()
    name = sa.make_url(url).database
    if url.startswith("postgresql") and n and name:
        # analysed, as autovacuum keeps a live table (and as every drain here)
        pg_vacuum(name)


def _count(url: str, status: str) -> int:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return int(
                conn.execute(
                    sa.text("SELECT count(*) FROM durable_jobs WHERE status = :s"), {"s": status}
                ).scalar_one()
            )
    finally:
        engine.dispose()


def _db_span(url: str) -> float:
    """Seconds from the first claim to the last finish, from the job rows."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            first, last = conn.execute(
                sa.text("SELECT min(started_at), max(finished_at) FROM durable_jobs")
            ).one()
    finally:
        engine.dispose()
    if isinstance(first, str):
        first, last = dt.datetime.fromisoformat(first), dt.datetime.fromisoformat(last)
    return (last - first).total_seconds()


# --------------------------------------------------------------------------- enqueue


def bulk(backend: str, n: int, **_: object) -> dict:  # type: ignore[type-arg]
    with database(backend, "ours_bulk") as (url, _name):
        app, w = _app(url)
        with app.app_context():
            w.db.create_all()
            w.jobs.enqueue_many("noop", [{}] * CHUNK)  # warm-up
            t0 = time.perf_counter()
            for start in range(0, n, CHUNK):
                w.jobs.enqueue_many("noop", [{}] * min(CHUNK, n - start))
            elapsed = time.perf_counter() - t0
    return {"rate": n / elapsed, "n": n, "elapsed": elapsed}


def single(backend: str, n: int, **_: object) -> dict:  # type: ignore[type-arg]
    with database(backend, "ours_single") as (url, _name):
        app, w = _app(url)
        with app.app_context():
            w.db.create_all()
            for _ in range(50):
                w.jobs.enqueue("noop", {})
            t0 = time.perf_counter()
            for _ in range(n):
                w.jobs.enqueue("noop", {})  # commit=True: one commit per job
            elapsed = time.perf_counter() - t0
    return {"rate": n / elapsed, "n": n, "elapsed": elapsed}


# ----------------------------------------------------------------------------- drain


def drain_process_due(backend: str, n: int, **_: object) -> dict:  # type: ignore[type-arg]
    with database(backend, "ours_drain") as (url, _name):
        _preload(url, n)
        app, w = _app(url)
        with app.app_context():
            t0 = time.perf_counter()
            counts = w.jobs.drain()
            elapsed = time.perf_counter() - t0
        left = n - _count(url, "succeeded")
    assert counts["succeeded"] == n and left == 0, (counts, left)
    return {"rate": n / elapsed, "n": n, "elapsed": elapsed}


def drain_scheduler(backend: str, n: int, **_: object) -> dict:  # type: ignore[type-arg]
    """The in-process scheduler with default settings works a preloaded backlog."""
    with database(backend, "ours_sched") as (url, _name):
        _preload(url, n)
        t0 = time.perf_counter()
        app, w = _app(url, scheduler=True)
        ok = wait_until(lambda: _count(url, "succeeded") >= n, timeout=600, interval=0.05)
        t_done = time.perf_counter()
        with app.app_context():
            w.jobs.stop()
        assert ok, "backlog not drained"
        span = _db_span(url)
    wall = t_done - t0
    return {"rate": n / span, "n": n, "span": span, "wall": wall, "rate_wall": n / wall}


@contextlib.contextmanager
def gunicorn(url: str, workers: int, scheduler: bool) -> Iterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, BENCH_DB_URL=url, BENCH_SCHEDULER="1" if scheduler else "0")
    proc = subprocess.Popen(
        [str(VENV_BIN / "gunicorn"), "-w", str(workers), "-b", f"127.0.0.1:{port}",
         "--chdir", str(BENCH_DIR), "--log-level", "warning", "webapp:app"],
        env=env,
    )
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return True
        except OSError:
            return False

    try:
        if not wait_until(up, timeout=30, interval=0.05):
            raise RuntimeError("gunicorn did not start")
        yield base
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def drain_gunicorn(backend: str, n: int, workers: int = 3, **_: object) -> dict:  # type: ignore[type-arg]
    """A preloaded backlog drained by gunicorn workers, each with its scheduler."""
    with database(backend, "ours_gunicorn") as (url, _name):
        _preload(url, n)
        with gunicorn(url, workers, scheduler=True):
            ok = wait_until(lambda: _count(url, "succeeded") >= n, timeout=600, interval=0.05)
        assert ok, "backlog not drained"
        span = _db_span(url)
    return {"rate": n / span, "n": n, "span": span, "workers": workers}


# --------------------------------------------------------------------------- latency


def _lat_enqueue(w, app, m: int, gap: float) -> None:  # type: ignore[no-untyped-def]
    for _ in range(m):
        with app.app_context():
            w.jobs.enqueue("lat", {"t": time.time()})
        time.sleep(gap)


def latency_same(backend: str, n: int, gap: float = 0.02, **_: object) -> dict:  # type: ignore[type-arg]
    """Enqueue in the process whose scheduler runs the job (default settings)."""
    with database(backend, "ours_lat") as (url, _name):
        import webapp

        webapp.create_tables(url)
        app, w = _app(url, scheduler=True)
        time.sleep(1.5)  # let the scheduler settle into its idle rhythm
        _lat_enqueue(w, app, n, gap)
        ok = wait_until(lambda: len(w.LATENCIES) >= n, timeout=60)
        with app.app_context():
            w.jobs.stop()
        assert ok, len(w.LATENCIES)
    ms = [x * 1000 for x in w.LATENCIES]
    return {"p50_ms": percentile(ms, 50), "p99_ms": percentile(ms, 99), "n": len(ms)}


def latency_cross(backend: str, n: int, gap: float = 0.02, **_: object) -> dict:  # type: ignore[type-arg]
    """Enqueue here; a gunicorn worker (another process) runs the job."""
    with database(backend, "ours_latx") as (url, _name):
        app, w = _app(url)
        with app.app_context():
            w.db.create_all()
        with gunicorn(url, 1, scheduler=True):
            time.sleep(1.5)
            _lat_enqueue(w, app, n, gap)
            ok = wait_until(lambda: _count(url, "succeeded") >= n, timeout=60, interval=0.05)
        assert ok
        engine = sa.create_engine(url)
        with engine.connect() as conn:
            results = conn.execute(sa.text("SELECT result FROM durable_jobs")).scalars().all()
        engine.dispose()
    import json

    ms = [(json.loads(r) if isinstance(r, str) else r)["lat"] * 1000 for r in results]
    return {"p50_ms": percentile(ms, 50), "p99_ms": percentile(ms, 99), "n": len(ms)}


# ------------------------------------------------------------------------ web request


def web(backend: str, n: int = 0, seconds: int = 10, workers: int = 2,
        connections: int = 8, **_: object) -> dict:  # type: ignore[type-arg]
    """Requests/s of an endpoint that writes a row, with and without an enqueue."""
    out: dict[str, float] = {}
    for label, path, scheduler in (
        ("plain", "/plain", False),
        ("enqueue", "/enqueue", False),
        ("enqueue_scheduler_on", "/enqueue", True),
    ):
        with database(backend, "ours_web") as (url, _name):
            import webapp

            webapp.create_tables(url)
            with gunicorn(url, workers, scheduler=scheduler) as base:
                run_cmd(["wrk", "-t1", "-c2", "-d2s", base + path])  # warm-up
                text = run_cmd(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", base + path])
        rps = float(text.split("Requests/sec:")[1].split()[0])
        if "Non-2xx" in text or "Socket errors" in text:
            raise RuntimeError(f"wrk saw errors on {path}:\n{text}")
        out[label] = rps
    out["rate"] = out["enqueue"]
    return out


# ------------------------------------------------------------------------------ scale


def _size(dbname: str) -> int:
    return int(pg_exec(dbname, "SELECT pg_total_relation_size('durable_jobs')")[0][0])


def scale(backend: str, n: int, rows: int = 1_000_000, **_: object) -> dict:  # type: ignore[type-arg]
    """Drain rate with `rows` finished jobs in the table vs an empty table; bytes per job."""
    assert backend == "pg"
    from pgbench_ref import preload

    res: dict[str, float] = {}
    with database(backend, "ours_scale") as (url, name):
        assert name is not None
        # empty table; a warm-up drain first, so that both measurements below
        # are of a warm process (the second one follows the first)
        _preload(url, 0)  # the tables
        app, w = _app(url)
        with app.app_context():
            w.jobs.enqueue_many("noop", [{}] * CHUNK)
            w.jobs.drain()
            w.jobs.prune(older_than=dt.timedelta(0))
        _preload(url, n)
        pg_vacuum(name, "durable_jobs")
        with app.app_context():
            t0 = time.perf_counter()
            w.jobs.drain()
            res["empty_rate"] = n / (time.perf_counter() - t0)
        res["bytes_after_drain"] = _size(name)
        res["bytes_per_job_after_drain"] = _size(name) / n
        with app.app_context():
            pruned = w.jobs.prune(older_than=dt.timedelta(0))
        res["pruned"] = pruned
        res["bytes_after_prune"] = _size(name)
        pg_vacuum(name, "durable_jobs")
        res["bytes_after_prune_vacuum"] = _size(name)
        # `rows` finished jobs
        preload(name, rows, status="succeeded")
        pg_vacuum(name, "durable_jobs")
        res["bytes_per_finished_job_at_scale"] = _size(name) / rows
        with app.app_context():
            for start in range(0, n, CHUNK):
                w.jobs.enqueue_many("noop", [{}] * min(CHUNK, n - start))
        pg_vacuum(name, "durable_jobs")
        with app.app_context():
            t0 = time.perf_counter()
            counts = w.jobs.drain()
            res["full_rate"] = n / (time.perf_counter() - t0)
        assert counts["succeeded"] == n, counts
    res["rate"] = res["full_rate"]
    res["ratio"] = res["full_rate"] / res["empty_rate"]
    return res


SCENARIOS = {
    "bulk": bulk,
    "single": single,
    "drain_process_due": drain_process_due,
    "drain_scheduler": drain_scheduler,
    "drain_gunicorn": drain_gunicorn,
    "latency_same": latency_same,
    "latency_cross": latency_cross,
    "web": web,
    "scale": scale,
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    parser.add_argument("--backend", choices=["pg", "sqlite"], default="pg")
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    fn = SCENARIOS[args.scenario]
    kw: dict[str, object] = {"backend": args.backend, "n": args.n}
    if args.scenario == "drain_gunicorn":
        kw["workers"] = args.workers
    if args.scenario == "web":
        kw["seconds"] = args.seconds
    if args.scenario == "scale":
        kw["rows"] = args.rows
    emit(fn(**kw))


if __name__ == "__main__":
    main()
