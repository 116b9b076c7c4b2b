"""Single enqueue, side by side: this tree, an earlier revision, and the peers.

    python3 bench/single_enqueue.py                    # 3 interleaved repetitions
    python3 bench/single_enqueue.py --reps 5 --base d3883a6 --n 2000

Each repetition runs, one after another in fresh processes, ``jobs.enqueue``
(commit=True, one commit per job, as ``bench/ours.py single``) on SQLite and
PostgreSQL for this tree and for the ``--base`` revision (exported with
``git archive`` and put first on ``PYTHONPATH``), SqliteHuey's task call,
pgqueuer's ``SyncQueries.enqueue`` and ``pgbench -N -c 1`` (the server's
single-client commit rate). The ``*.tmpfs`` rows repeat the SQLite ones
with the database file in ``/dev/shm``: a loaded machine's disk makes every
commit's sync slow and uneven, which hides the work each system does per
job; in memory that work is what is left. Ratios are taken from the medians
of this one run, so every system saw the same machine. Runs in the venv
``bench/run.py`` sets up (made here if missing). Writes
``bench/results/single_enqueue.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
RESULT = BENCH_DIR / "results" / "single_enqueue.json"


#: Where the ``*.tmpfs`` rows keep their SQLite files: memory, so a commit's
#: sync costs nothing and what is left is the work per job.
TMPFS = "/dev/shm"


def scenarios(n: int, base: str | None, seconds: int) -> dict[str, list[str]]:
    out = {}
    for backend in ("sqlite", "pg"):
        out[f"ours.{backend}"] = ["ours.py", "single", "--backend", backend, "--n", str(n)]
        if base:
            out[f"base.{backend}"] = [*out[f"ours.{backend}"]]
    out["huey"] = ["peers.py", "huey", "single", "--n", str(n)]
    if Path(TMPFS).is_dir():
        for key in ("ours.sqlite", "base.sqlite", "huey"):
            if key in out:
                out[f"{key}.tmpfs"] = out[key]
    out["pgqueuer"] = ["peers.py", "pgqueuer", "single", "--n", str(n)]
    out["pgbench"] = ["pgbench_ref.py", "single", "--seconds", str(seconds)]
    return out


def export(revision: str, into: Path) -> Path:
    """The package as it was at ``revision``, in a folder to put on PYTHONPATH."""
    archive = into / "base.tar"
    with archive.open("wb") as out:
        subprocess.run(["git", "archive", revision, "flask_durable_jobs"], cwd=REPO_DIR,
                       stdout=out, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into / "tree", filter="data")
    return into / "tree"


def run(args: list[str], pythonpath: Path | None, tmpfs: bool) -> dict[str, float]:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    if tmpfs:
        env["BENCH_SQLITE_DIR"] = TMPFS
    proc = subprocess.run([sys.executable, *args], cwd=BENCH_DIR, env=env, capture_output=True,
                          text=True, timeout=900, check=False)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("BENCH-RESULT "):
            result: dict[str, float] = json.loads(line[len("BENCH-RESULT "):])
            return result
    raise RuntimeError(f"{' '.join(args)} failed:\n{proc.stderr[-2000:]}")


def in_bench_venv() -> None:
    """Re-run this script in bench/.venv (made with the peers, as run.py does)."""
    import venv

    from run import PEERS, VENV_DIR, VENV_PY

    if Path(sys.prefix).resolve() == VENV_DIR.resolve():
        return
    if not VENV_PY.exists():
        venv.EnvBuilder(with_pip=True).create(VENV_DIR)
        subprocess.run([str(VENV_PY), "-m", "pip", "install", "-q", "-e",
                        f"{REPO_DIR}[postgresql]", *PEERS], check=True)
    os.execv(str(VENV_PY), [str(VENV_PY), __file__, *sys.argv[1:]])


def main() -> None:
    in_bench_venv()
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--n", type=int, default=2000, help="jobs per run")
    parser.add_argument("--seconds", type=int, default=10, help="pgbench's run")
    parser.add_argument("--base", default=None, help="an earlier revision to run beside")
    args = parser.parse_args()
    rates: dict[str, list[float]] = {}
    loads: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        base_tree = export(args.base, Path(tmp)) if args.base else None
        plan = scenarios(args.n, args.base, args.seconds)
        for rep in range(1, args.reps + 1):
            for key, cmd in plan.items():
                result = run(cmd, base_tree if key.startswith("base.") else None,
                             key.endswith(".tmpfs"))
                rates.setdefault(key, []).append(result["rate"])
                loads.append(os.getloadavg()[0])
                print(f"[rep {rep}/{args.reps}] {key}: {result['rate']:,.0f}/s", flush=True)
    median = {key: statistics.median(values) for key, values in rates.items()}
    ratios = {
        "sqlite: ours / huey": median["ours.sqlite"] / median["huey"],
        "pg: ours / pgbench": median["ours.pg"] / median["pgbench"],
        "pg: ours / pgqueuer": median["ours.pg"] / median["pgqueuer"],
    }
    if "huey.tmpfs" in median:
        ratios["sqlite on tmpfs: ours / huey"] = median["ours.sqlite.tmpfs"] / median["huey.tmpfs"]
    if args.base:
        ratios.update({
            "sqlite: base / huey": median["base.sqlite"] / median["huey"],
            "pg: base / pgbench": median["base.pg"] / median["pgbench"],
            "pg: base / pgqueuer": median["base.pg"] / median["pgqueuer"],
            "sqlite: ours / base": median["ours.sqlite"] / median["base.sqlite"],
            "pg: ours / base": median["ours.pg"] / median["base.pg"],
        })
        if "huey.tmpfs" in median:
            ratios["sqlite on tmpfs: base / huey"] = (
                median["base.sqlite.tmpfs"] / median["huey.tmpfs"])
            ratios["sqlite on tmpfs: ours / base"] = (
                median["ours.sqlite.tmpfs"] / median["base.sqlite.tmpfs"])
    RESULT.parent.mkdir(exist_ok=True)
    RESULT.write_text(json.dumps({
        "started": time.strftime("%Y-%m-%d %H:%M:%S"), "n": args.n, "base": args.base,
        "load1": [min(loads), max(loads)], "rates": rates, "medians": median,
        "ratios": ratios,
    }, indent=1) + "\n")
    for name, ratio in ratios.items():
        print(f"{name}: {ratio:.2f}x")


if __name__ == "__main__":
    main()
