"""Run the flask-durable-jobs benchmark and write docs/benchmarks.md.

    python bench/run.py                      # set up bench/.venv, run everything, 3 repetitions
    python bench/run.py --reps 5 --only drain,enqueue
    python bench/run.py --report-only        # re-render the doc from bench/results/results.json
    python bench/run.py --list               # show the scenarios

Every scenario runs in a fresh process, one after another, repetition by
repetition (rep 1 of every scenario, then rep 2, ...), so drift on the machine
touches every system alike. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import venv
from dataclasses import dataclass, field
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
VENV_DIR = BENCH_DIR / ".venv"
VENV_PY = VENV_DIR / "bin" / "python"
RESULTS_DIR = BENCH_DIR / "results"
RESULTS_FILE = RESULTS_DIR / "results.json"

PEERS = [
    "pgqueuer==1.6.0",
    "procrastinate[psycopg]==3.10.0",
    "huey==3.5.4",
    "rq==3.0.0",
    "redis==8.1.0",
    "gunicorn==27.0.1",
    "matplotlib==3.11.2",
    "py-spy==0.4.3",
]


@dataclass
class Scenario:
    key: str
    group: str  # enqueue | drain | latency | web | scale | reference
    script: str
    args: list[str]
    max_reps: int = 99
    env: dict[str, str] = field(default_factory=dict)


N = 20000


def plan(n: int, single_n: int) -> list[Scenario]:
    s: list[Scenario] = []
    add = s.append
    # References
    add(Scenario("ref.pgbench_single", "reference", "pgbench_ref.py",
                 ["single", "--seconds", "10"]))
    add(Scenario("ref.pgbench_drain", "reference", "pgbench_ref.py", ["drain", "--n", str(n)]))
    # Bulk enqueue
    for b in ("pg", "sqlite"):
        add(Scenario(f"bulk.ours.{b}", "enqueue", "ours.py",
                     ["bulk", "--backend", b, "--n", str(n)]))
    for p in ("pgqueuer", "procrastinate", "rq"):
        add(Scenario(f"bulk.{p}", "enqueue", "peers.py", [p, "bulk", "--n", str(n)]))
    # Single enqueue
    for b in ("pg", "sqlite"):
        add(Scenario(f"single.ours.{b}", "enqueue", "ours.py",
                     ["single", "--backend", b, "--n", str(single_n)]))
    for p in ("pgqueuer", "procrastinate", "huey", "rq"):
        add(Scenario(f"single.{p}", "enqueue", "peers.py", [p, "single", "--n", str(single_n)]))
    # Drain
    for b in ("pg", "sqlite"):
        add(Scenario(f"drain.ours.{b}.process_due", "drain", "ours.py",
                     ["drain_process_due", "--backend", b, "--n", str(n)]))
        add(Scenario(f"drain.ours.{b}.scheduler", "drain", "ours.py",
                     ["drain_scheduler", "--backend", b, "--n", str(n)]))
    for w in (1, 3):
        add(Scenario(f"drain.ours.pg.gunicorn{w}", "drain", "ours.py",
                     ["drain_gunicorn", "--backend", "pg", "--n", str(n), "--workers", str(w)]))
    for batch in (10, 100, 1000):
        add(Scenario(f"drain.pgqueuer.b{batch}", "drain", "peers.py",
                     ["pgqueuer", "drain", "--n", str(n), "--batch", str(batch)]))
    # procrastinate and RQ fetch one job per round trip: a smaller backlog keeps
    # the run short; the rate (jobs/s) is what is compared.
    for c in (1, 10):
        add(Scenario(f"drain.procrastinate.c{c}", "drain", "peers.py",
                     ["procrastinate", "drain", "--n", str(max(n // 10, 500)),
                      "--concurrency", str(c)]))
    for w in (1, 4):
        add(Scenario(f"drain.huey.w{w}", "drain", "peers.py",
                     ["huey", "drain", "--n", str(n), "--workers", str(w)]))
    add(Scenario("drain.rq", "drain", "peers.py", ["rq", "drain", "--n", str(max(n // 10, 200))]))
    # Latency
    for b in ("pg", "sqlite"):
        add(Scenario(f"latency.ours.{b}.same", "latency", "ours.py",
                     ["latency_same", "--backend", b, "--n", "100"]))
        add(Scenario(f"latency.ours.{b}.cross", "latency", "ours.py",
                     ["latency_cross", "--backend", b, "--n", "100"]))
    add(Scenario("latency.pgqueuer.same", "latency", "peers.py",
                 ["pgqueuer", "latency", "--n", "200"]))
    # Web request cost
    add(Scenario("web.ours.pg", "web", "ours.py", ["web", "--backend", "pg", "--seconds", "6"]))
    # Scale
    add(Scenario("scale.ours.pg", "scale", "ours.py",
                 ["scale", "--backend", "pg", "--n", str(n), "--rows", "1000000"], max_reps=3))
    return s


def ensure_venv(skip_install: bool) -> None:
    """Create bench/.venv with the peers and this package (editable), then re-exec in it."""
    if Path(sys.prefix).resolve() == VENV_DIR.resolve():
        return
    if not VENV_PY.exists():
        print(f"creating {VENV_DIR}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV_DIR)
        skip_install = False
    if not skip_install:
        pip = [str(VENV_PY), "-m", "pip", "install", "-q"]
        subprocess.run([*pip, "--upgrade", "pip"], check=True)
        subprocess.run([*pip, "-e", f"{REPO_DIR}[postgresql]", *PEERS], check=True)
    os.execv(str(VENV_PY), [str(VENV_PY), __file__, *sys.argv[1:], "--no-install"])


def run_one(sc: Scenario, timeout: float) -> dict:  # type: ignore[type-arg]
    cmd = [sys.executable, str(BENCH_DIR / sc.script), *sc.args]
    t0 = time.monotonic()
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, cwd=BENCH_DIR,
        env={**os.environ, "PYTHONWARNINGS": "ignore", **sc.env}, check=False,
    )
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("BENCH-RESULT "):
            out = json.loads(line[len("BENCH-RESULT "):])
            out["_seconds"] = round(time.monotonic() - t0, 2)
            out["_load1"] = round(os.getloadavg()[0], 2)
            return out
    tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-15:])
    raise RuntimeError(f"{sc.key} failed (exit {proc.returncode}):\n{tail}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=3, help="repetitions of each scenario")
    parser.add_argument("--only", default="",
                        help="comma-separated groups or key prefixes "
                             "(enqueue, drain, latency, web, scale, reference, drain.ours, ...)")
    parser.add_argument("--n", type=int, default=N, help="backlog / bulk size (default 20000)")
    parser.add_argument("--single-n", type=int, default=2000, help="jobs per single-enqueue run")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per scenario run")
    parser.add_argument("--report-only", action="store_true", help="only re-render the doc")
    parser.add_argument("--fresh", action="store_true",
                        help="discard earlier results instead of merging into them")
    parser.add_argument("--append", action="store_true",
                        help="add these runs to the earlier ones of the same scenarios")
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    parser.add_argument("--no-install", action="store_true", help="don't (re)install bench/.venv")
    args = parser.parse_args()

    scenarios = plan(args.n, args.single_n)
    if args.list:
        for sc in scenarios:
            print(f"{sc.key:40} {sc.script} {' '.join(sc.args)}")
        return
    ensure_venv(args.no_install)
    sys.path.insert(0, str(BENCH_DIR))
    import report

    if args.report_only:
        report.write(json.loads(RESULTS_FILE.read_text()))
        return

    if args.only:
        wanted = [w.strip() for w in args.only.split(",") if w.strip()]
        scenarios = [sc for sc in scenarios
                     if sc.group in wanted or any(sc.key.startswith(w) for w in wanted)]
    RESULTS_DIR.mkdir(exist_ok=True)
    data: dict = {"runs": {}}  # type: ignore[type-arg]
    if RESULTS_FILE.exists() and not args.fresh:
        data = json.loads(RESULTS_FILE.read_text())
    for sc in scenarios:
        if not args.append or sc.key not in data["runs"]:
            data["runs"][sc.key] = []
    data["machine"] = report.machine_info()
    data["started"] = time.strftime("%Y-%m-%d %H:%M:%S")
    t_start = time.monotonic()
    for rep in range(1, args.reps + 1):
        for sc in scenarios:
            if rep > sc.max_reps:
                continue
            print(f"[rep {rep}/{args.reps}] {sc.key} ...", end=" ", flush=True)
            try:
                res = run_one(sc, args.timeout)
            except Exception as exc:  # report and go on with the other systems
                print(f"FAILED\n{exc}", flush=True)
                data["runs"][sc.key].append({"error": str(exc)[-2000:]})
            else:
                shown = {k: (round(v, 1) if isinstance(v, float) else v)
                         for k, v in res.items()}
                print(shown, flush=True)
                data["runs"][sc.key].append(res)
            RESULTS_FILE.write_text(json.dumps(data, indent=1))
    data["total_seconds"] = round(time.monotonic() - t_start, 1)
    RESULTS_FILE.write_text(json.dumps(data, indent=1))
    report.write(data)
    print(f"done in {data['total_seconds']:.0f} s; wrote docs/benchmarks.md", flush=True)


if __name__ == "__main__":
    main()
