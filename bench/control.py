"""What job control costs: a drain of plain jobs against the same drain with
the code before job control (the release's base commit), and jobs that
report progress against plain ones, measured side by side in one run::

    python3 bench/control.py [--n 3000] [--reps 3] [--base d3883a6]

Each measurement is its own process (a fresh database, ``enqueue_many`` of
``n`` jobs, then the timed ``jobs.drain()``), run in turns (base, this code,
this code with progress; each first in turn) so that the shared machine's
load falls on all of them alike. Writes ``bench/results/control.json``; ratios are medians.

* ``plain/base``: this code over the base commit, plain jobs (no progress
  call): the finish statement now also writes progress and, on PostgreSQL,
  sends one NOTIFY per batch of outcomes.
* ``progress/plain``: each job reports its progress once (written with its
  outcome), over plain jobs.

``--finish-ab`` times the PostgreSQL finish statement alone, as shipped
(with its NOTIFY) and without the NOTIFY, on batches of 10 claimed jobs,
alternating; writes ``bench/results/control_finish.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))

VARIANTS = ("base", "plain", "progress")


def _python() -> str:
    for candidate in (BENCH_DIR / ".venv" / "bin" / "python",
                      REPO_DIR / ".venv" / "bin" / "python"):
        if candidate.exists():
            return str(candidate)
    return sys.executable


def measure(backend: str, n: int, progress: bool) -> dict[str, object]:
    """One drain, in this process (the library from PYTHONPATH)."""
    import typing as t

    from common import temp_db, temp_sqlite
    from flask import Flask
    from flask_sqlalchemy import SQLAlchemy

    import flask_durable_jobs
    from flask_durable_jobs import DurableJobs

    def run(url: str) -> float:
        db = SQLAlchemy()
        jobs = DurableJobs()

        @jobs.handler("noop")
        def noop(payload: dict[str, t.Any]) -> None:
            if progress:
                job = flask_durable_jobs.current_job()  # type: ignore[attr-defined]
                job.progress(1.0, message="done", data={"n": payload["n"]})

        app = Flask("bench_control")
        app.config.update(SQLALCHEMY_DATABASE_URI=url, DURABLE_JOBS_SCHEDULER=False)
        db.init_app(app)
        jobs.init_app(app, db=db)
        with app.app_context():
            db.create_all()
            for start in range(0, n, 1000):
                jobs.enqueue_many("noop", [{"n": i} for i in range(start, min(n, start + 1000))])
            began = time.perf_counter()
            counts = jobs.drain()
            elapsed = time.perf_counter() - began
            assert counts["succeeded"] == n, counts
            jobs.stop()
            db.engine.dispose()
        return elapsed

    if backend == "pg":
        from common import pg_url

        with temp_db("control") as name:
            elapsed = run(pg_url(name))
    else:
        with temp_sqlite("control") as path:
            elapsed = run(f"sqlite:///{path}")
    return {"seconds": elapsed, "jobs_per_second": n / elapsed,
            "library": str(Path(flask_durable_jobs.__file__).parent)}


def finish_ab(rounds: int) -> None:
    """The finish statement with and without its NOTIFY, in turns."""
    import datetime as dt
    import uuid

    from common import pg_url, temp_db
    from flask import Flask
    from flask_sqlalchemy import SQLAlchemy

    from flask_durable_jobs import DurableJobs
    from flask_durable_jobs.extension import get_state
    from flask_durable_jobs.store import Finish, make_store

    with temp_db("control_finish") as name:
        db = SQLAlchemy()
        jobs = DurableJobs()
        jobs.handler("noop")(lambda payload: None)
        app = Flask("bench_control_finish")
        app.config.update(SQLALCHEMY_DATABASE_URI=pg_url(name), DURABLE_JOBS_SCHEDULER=False)
        db.init_app(app)
        jobs.init_app(app, db=db)
        with app.app_context():
            db.create_all()
            for _ in range(0, rounds * 20, 1000):
                jobs.enqueue_many("noop", [{} for _ in range(1000)])
            shipped = get_state().store
            quiet = make_store(shipped.engine, shipped.table, shipped.batches)
            text = quiet.queries["finish"]
            quiet.queries["finish"] = (text[text.index("UPDATE"):text.index("RETURNING j.id")]
                                       + "RETURNING j.id, j.status")
            times: dict[str, list[float]] = {"with NOTIFY": [], "without": []}
            now = dt.datetime.now(dt.timezone.utc)
            for _ in range(rounds):
                for label, store in (("with NOTIFY", shipped), ("without", quiet)):
                    token = uuid.uuid4().hex
                    rows = store.claim(job_types=["noop"], queues=None, limit=10, now=now,
                                       lease_until=now + dt.timedelta(minutes=5), token=token,
                                       worker_id="bench")
                    outcomes = [Finish(r.id, r.token, "succeeded", "null") for r in rows]
                    began = time.perf_counter()
                    store.finish(outcomes, now)
                    times[label].append(time.perf_counter() - began)
            jobs.stop()
            db.engine.dispose()
    medians = {label: statistics.median(values) * 1e6 for label, values in times.items()}
    report = {"rounds": rounds, "batch": 10, "median_us": medians,
              "ratio": round(medians["with NOTIFY"] / medians["without"], 3)}
    (BENCH_DIR / "results" / "control_finish.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--base", default="d3883a6")
    parser.add_argument("--backends", default="pg,sqlite")
    parser.add_argument("--finish-ab", type=int, metavar="ROUNDS", default=0)
    parser.add_argument("--one", nargs=2, metavar=("BACKEND", "PROGRESS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.finish_ab:
        try:
            import flask_sqlalchemy  # noqa: F401
        except ImportError:  # not in a venv with the package: run in one that has it
            os.execv(_python(), [_python(), __file__, *sys.argv[1:]])
        finish_ab(args.finish_ab)
        return
    if args.one:
        print("BENCH-RESULT " + json.dumps(measure(args.one[0], args.n, args.one[1] == "1")))
        return
    base_dir = Path(tempfile.mkdtemp(prefix="bench-control-base-"))
    try:
        archive = subprocess.run(["git", "-C", str(REPO_DIR), "archive", args.base,
                                  "flask_durable_jobs"], check=True, capture_output=True)
        subprocess.run(["tar", "-x", "-C", str(base_dir)], input=archive.stdout, check=True)
        sources = {"base": base_dir, "plain": REPO_DIR, "progress": REPO_DIR}
        samples: dict[str, dict[str, list[float]]] = {}
        for backend in args.backends.split(","):
            samples[backend] = {variant: [] for variant in VARIANTS}
            for rep in range(args.reps):
                # each variant goes first in turn: no place in the order favours one
                for variant in VARIANTS[rep % 3:] + VARIANTS[:rep % 3]:
                    env = {**os.environ, "PYTHONPATH": f"{sources[variant]}{os.pathsep}{BENCH_DIR}"}
                    out = subprocess.run(
                        [_python(), __file__, "--n", str(args.n), "--one", backend,
                         "1" if variant == "progress" else "0"],
                        env=env, capture_output=True, text=True, check=True, timeout=900,
                    ).stdout
                    result = json.loads(out.rsplit("BENCH-RESULT ", 1)[1])
                    expected = base_dir if variant == "base" else REPO_DIR
                    assert result["library"] == str(expected / "flask_durable_jobs"), result
                    samples[backend][variant].append(result["jobs_per_second"])
                    print(backend, variant, round(result["jobs_per_second"]), flush=True)
    finally:
        shutil.rmtree(base_dir, ignore_errors=True)
    report: dict[str, object] = {"n": args.n, "reps": args.reps, "base": args.base,
                                 "jobs_per_second": samples, "ratios": {}}
    for backend, by_variant in samples.items():
        median = {variant: statistics.median(values) for variant, values in by_variant.items()}
        report["ratios"][backend] = {  # type: ignore[index]
            "plain/base": round(median["plain"] / median["base"], 3),
            "progress/plain": round(median["progress"] / median["plain"], 3),
        }
    out_path = BENCH_DIR / "results" / "control.json"
    out_path.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["ratios"], indent=2))


if __name__ == "__main__":
    main()
