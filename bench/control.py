"""What job control costs: a drain of plain jobs against the same drain with
the code before job control (the release's base commit), and jobs that
report progress against plain ones, measured side by side in one run::

    python3 bench/control.py [--n 3000] [--reps 3] [--base d3883a6]

Each measurement is its own process (a fresh database, ``enqueue_many`` of
``n`` jobs, then the timed ``jobs.drain()``), run in turns (base, this code,
this code with progress) so that the shared machine's load falls on all of
them alike. Writes ``bench/results/control.json``; ratios are medians.

* ``plain/base``: this code over the base commit, plain jobs (no progress
  call): the finish statement now also writes progress and, on PostgreSQL,
  sends one NOTIFY per batch of outcomes.
* ``progress/plain``: each job reports its progress once (written with its
  outcome), over plain jobs.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--base", default="d3883a6")
    parser.add_argument("--backends", default="pg,sqlite")
    parser.add_argument("--one", nargs=2, metavar=("BACKEND", "PROGRESS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
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
            for _rep in range(args.reps):
                for variant in VARIANTS:
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
