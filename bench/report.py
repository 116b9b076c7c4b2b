"""Render bench/results/results.json as docs/benchmarks.md and docs/benchmarks.png."""

from __future__ import annotations

import contextlib
import math
import platform
import statistics
import subprocess
from importlib import metadata
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
DOCS_DIR = BENCH_DIR.parent / "docs"
DOC = DOCS_DIR / "benchmarks.md"
CHART = DOCS_DIR / "benchmarks.png"


# ------------------------------------------------------------------------ machine


def machine_info() -> dict[str, str]:
    info: dict[str, str] = {}
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    import os

    info["cpu"] = f"{cpu}, {os.cpu_count()} cores"
    with open("/proc/meminfo") as f:
        kb = int(next(line for line in f if line.startswith("MemTotal")).split()[1])
    info["ram"] = f"{kb / 1024 / 1024:.1f} GiB"
    info["os"] = platform.platform()
    info["python"] = platform.python_version()
    try:
        import psycopg
        from common import pg_conninfo

        with psycopg.connect(pg_conninfo("postgres")) as conn:
            info["postgresql"] = conn.execute("SHOW server_version").fetchone()[0]
            settings = conn.execute(
                "SELECT name, setting FROM pg_settings WHERE name IN "
                "('synchronous_commit', 'fsync', 'shared_buffers', 'wal_level')"
            ).fetchall()
            info["postgresql_settings"] = ", ".join(f"{k}={v}" for k, v in settings)
    except Exception as exc:  # pragma: no cover - informative only
        info["postgresql"] = f"unavailable ({exc})"
    try:
        out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True,
                             check=False).stdout
        info["redis"] = out.split("v=")[1].split()[0] if "v=" in out else out.strip()
    except OSError:
        info["redis"] = "unknown"
    import sqlite3

    info["sqlite"] = sqlite3.sqlite_version
    versions = []
    for dist in ("flask-durable-jobs", "pgqueuer", "procrastinate", "huey", "rq", "psycopg",
                 "SQLAlchemy", "Flask", "APScheduler", "gunicorn"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions.append(f"{dist} {metadata.version(dist)}")
    info["packages"] = ", ".join(versions)
    return info


# -------------------------------------------------------------------------- stats


def _values(data: dict, key: str, field: str = "rate") -> list[float]:  # type: ignore[type-arg]
    return [r[field] for r in data["runs"].get(key, []) if field in r]


def stat(data: dict, key: str, field: str = "rate") -> tuple[float, float, float] | None:  # type: ignore[type-arg]
    vals = _values(data, key, field)
    if not vals:
        return None
    return statistics.median(vals), min(vals), max(vals)


def med(data: dict, key: str, field: str = "rate") -> float | None:  # type: ignore[type-arg]
    s = stat(data, key, field)
    return None if s is None else s[0]


def best(data: dict, keys: list[str]) -> tuple[str, float] | None:  # type: ignore[type-arg]
    found = [(k, med(data, k)) for k in keys]
    found = [(k, v) for k, v in found if v is not None]
    return max(found, key=lambda kv: kv[1]) if found else None


def _fmt(x: float) -> str:
    if x >= 100:
        return f"{x:,.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def cell(data: dict, key: str, field: str = "rate") -> str:  # type: ignore[type-arg]
    s = stat(data, key, field)
    if s is None:
        errs = [r for r in data["runs"].get(key, []) if "error" in r]
        return "failed" if errs else "n/a"
    m, lo, hi = s
    return f"{_fmt(m)} ({_fmt(lo)}\u2013{_fmt(hi)})"


def nruns(data: dict, key: str) -> int:  # type: ignore[type-arg]
    return len(_values(data, key)) or len(_values(data, key, "p50_ms"))


# ------------------------------------------------------------------------- tables

ROWS: list[tuple[str, str, str, str]] = [
    # (section, key, system, setting)
    ("Bulk enqueue (jobs/s, chunks of 1,000)", "bulk.ours.pg", "flask-durable-jobs, PostgreSQL",
     "`jobs.enqueue_many`"),
    ("", "bulk.pgqueuer", "pgqueuer (psycopg)", "`Queries.enqueue` with lists"),
    ("", "bulk.procrastinate", "procrastinate", "`task.batch_defer`"),
    ("", "bulk.ours.sqlite", "flask-durable-jobs, SQLite", "`jobs.enqueue_many`"),
    ("", "bulk.rq", "RQ (Redis)", "`Queue.enqueue_many` (pipeline)"),
    ("Single enqueue (jobs/s, one commit per job)", "single.ours.pg",
     "flask-durable-jobs, PostgreSQL", "`jobs.enqueue` (commit=True)"),
    ("", "single.pgqueuer", "pgqueuer (psycopg)", "`SyncQueries.enqueue`, autocommit"),
    ("", "single.procrastinate", "procrastinate", "`task.defer`"),
    ("", "ref.pgbench_single", "pgbench -N -c 1 (reference)", "TPS"),
    ("", "single.ours.sqlite", "flask-durable-jobs, SQLite", "`jobs.enqueue` (commit=True)"),
    ("", "single.huey", "Huey (SqliteHuey)", "task call"),
    ("", "single.rq", "RQ (Redis)", "`Queue.enqueue`"),
    ("Drain a backlog (jobs/s)", "ref.pgbench_drain", "pgbench, claim-100 + finish (ceiling)",
     "1 client, TPS \u00d7 100"),
    ("", "drain.ours.pg.process_due", "flask-durable-jobs, PostgreSQL",
     "`jobs.drain()` (process_due), 1 process"),
    ("", "drain.ours.pg.scheduler", "flask-durable-jobs, PostgreSQL",
     "in-process scheduler, defaults, 1 process"),
    ("", "drain.ours.pg.gunicorn1", "flask-durable-jobs, PostgreSQL",
     "gunicorn, 1 worker, scheduler"),
    ("", "drain.ours.pg.gunicorn3", "flask-durable-jobs, PostgreSQL",
     "gunicorn, 3 workers, scheduler"),
    ("", "drain.pgqueuer.b10", "pgqueuer (psycopg)", "batch_size=10 (default)"),
    ("", "drain.pgqueuer.b100", "pgqueuer (psycopg)", "batch_size=100"),
    ("", "drain.pgqueuer.b1000", "pgqueuer (psycopg)", "batch_size=1000"),
    ("", "drain.procrastinate.c1", "procrastinate", "concurrency=1 (default)"),
    ("", "drain.procrastinate.c10", "procrastinate", "concurrency=10"),
    ("", "drain.ours.sqlite.process_due", "flask-durable-jobs, SQLite",
     "`jobs.drain()` (process_due)"),
    ("", "drain.ours.sqlite.scheduler", "flask-durable-jobs, SQLite",
     "in-process scheduler, defaults"),
    ("", "drain.huey.w1", "Huey (SqliteHuey)", "consumer, 1 thread worker (default)"),
    ("", "drain.huey.w4", "Huey (SqliteHuey)", "consumer, 4 thread workers"),
    ("", "drain.rq", "RQ (Redis)", "SimpleWorker, burst"),
]


def _backlog(data: dict, key: str) -> str:  # type: ignore[type-arg]
    ns = {r.get("n") for r in data["runs"].get(key, []) if "n" in r}
    return ", ".join(f"{n:,}" for n in sorted(ns)) if ns else ""


def results_table(data: dict) -> str:  # type: ignore[type-arg]
    lines = ["| measurement | system | setting | median (min\u2013max) | jobs per run | runs |",
             "|---|---|---|---:|---:|---:|"]
    for section, key, system, setting in ROWS:
        if key not in data["runs"]:
            continue
        lines.append(f"| {section} | {system} | {setting} | {cell(data, key)} | "
                     f"{_backlog(data, key)} | {nruns(data, key)} |")
    return "\n".join(lines)


def latency_table(data: dict) -> str:  # type: ignore[type-arg]
    rows = [
        ("latency.ours.pg.same", "flask-durable-jobs, PostgreSQL", "enqueue in the same process"),
        ("latency.ours.pg.cross", "flask-durable-jobs, PostgreSQL",
         "enqueue in another process (gunicorn worker runs it)"),
        ("latency.ours.sqlite.same", "flask-durable-jobs, SQLite", "same process"),
        ("latency.ours.sqlite.cross", "flask-durable-jobs, SQLite", "another process"),
        ("latency.pgqueuer.same", "pgqueuer (psycopg)", "same process, LISTEN/NOTIFY"),
    ]
    lines = ["| system | where the job is enqueued | p50 ms, median (min\u2013max) | "
             "p99 ms, median (min\u2013max) | runs |", "|---|---|---:|---:|---:|"]
    for key, system, where in rows:
        if key in data["runs"]:
            lines.append(f"| {system} | {where} | {cell(data, key, 'p50_ms')} | "
                         f"{cell(data, key, 'p99_ms')} | {nruns(data, key)} |")
    return "\n".join(lines)


def web_table(data: dict) -> str:  # type: ignore[type-arg]
    key = "web.ours.pg"
    if key not in data["runs"]:
        return "_not run_"
    rows = [
        ("plain", "writes one row, commits (no job)"),
        ("enqueue", "writes one row + `jobs.enqueue(..., commit=False)`, one commit; "
                    "scheduler off"),
        ("enqueue_scheduler_on", "the same, with the in-process scheduler running the jobs "
                                 "in the same workers"),
    ]
    lines = ["| endpoint | requests/s, median (min\u2013max) | runs |", "|---|---:|---:|"]
    for field_, label in rows:
        lines.append(f"| {label} | {cell(data, key, field_)} | {len(_values(data, key, field_))} |")
    return "\n".join(lines)


def scale_table(data: dict) -> str:  # type: ignore[type-arg]
    key = "scale.ours.pg"
    if key not in data["runs"]:
        return "_not run_"
    rows = [
        ("empty_rate", "drain, empty table (jobs/s)"),
        ("full_rate", "drain, 1,000,000 finished jobs in the table (jobs/s)"),
        ("ratio", "ratio"),
        ("bytes_per_job_after_drain", "table + indexes per job after draining 20,000 (bytes)"),
        ("bytes_after_prune", "table + indexes after `jobs.prune()` of those 20,000 (bytes)"),
        ("bytes_after_prune_vacuum", "… and after `VACUUM` (bytes)"),
        ("bytes_per_finished_job_at_scale",
         "table + indexes per finished job at 1,000,000 rows (bytes)"),
    ]
    lines = ["| quantity | median (min\u2013max) | runs |", "|---|---:|---:|"]
    for field_, label in rows:
        lines.append(f"| {label} | {cell(data, key, field_)} | "
                     f"{len(_values(data, key, field_))} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------ targets


def targets(data: dict) -> list[tuple[str, str, float | None, float, str]]:  # type: ignore[type-arg]
    """(target, compared against, measured ratio or value, threshold, kind)."""
    pgq = best(data, ["drain.pgqueuer.b10", "drain.pgqueuer.b100", "drain.pgqueuer.b1000"])
    proc = best(data, ["drain.procrastinate.c1", "drain.procrastinate.c10"])
    huey = best(data, ["drain.huey.w1", "drain.huey.w4"])

    def ratio(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None or b == 0 else a / b

    pd = med(data, "drain.ours.pg.process_due")
    sch = med(data, "drain.ours.pg.scheduler")
    ceil_ = med(data, "ref.pgbench_drain")
    out: list[tuple[str, str, float | None, float, str]] = [
        ("process_due drain ≥ 0.7\u00d7 pgbench ceiling", "ref.pgbench_drain",
         ratio(pd, ceil_), 0.7, "ratio"),
        ("process_due drain ≥ 10\u00d7 pgqueuer (best batch)", pgq[0] if pgq else "-",
         ratio(pd, pgq[1] if pgq else None), 10, "ratio"),
        ("process_due drain ≥ 40\u00d7 procrastinate (best)", proc[0] if proc else "-",
         ratio(pd, proc[1] if proc else None), 40, "ratio"),
        ("scheduler drain ≥ 0.4\u00d7 pgbench ceiling", "ref.pgbench_drain",
         ratio(sch, ceil_), 0.4, "ratio"),
        ("scheduler drain ≥ 5\u00d7 pgqueuer (best batch)", pgq[0] if pgq else "-",
         ratio(sch, pgq[1] if pgq else None), 5, "ratio"),
        ("3 processes ≥ 1.2\u00d7 1 process (gunicorn, scheduler)", "drain.ours.pg.gunicorn1",
         ratio(med(data, "drain.ours.pg.gunicorn3"), med(data, "drain.ours.pg.gunicorn1")),
         1.2, "ratio"),
        ("bulk enqueue ≥ 1.5\u00d7 pgqueuer", "bulk.pgqueuer",
         ratio(med(data, "bulk.ours.pg"), med(data, "bulk.pgqueuer")), 1.5, "ratio"),
        ("single enqueue ≥ 1\u00d7 pgqueuer", "single.pgqueuer",
         ratio(med(data, "single.ours.pg"), med(data, "single.pgqueuer")), 1.0, "ratio"),
        ("single enqueue ≥ 0.9\u00d7 pgbench -N -c 1 TPS", "ref.pgbench_single",
         ratio(med(data, "single.ours.pg"), med(data, "ref.pgbench_single")), 0.9, "ratio"),
        ("SQLite scheduler drain ≥ 3\u00d7 Huey (best)", huey[0] if huey else "-",
         ratio(med(data, "drain.ours.sqlite.scheduler"), huey[1] if huey else None), 3, "ratio"),
        ("SQLite process_due drain ≥ 5\u00d7 Huey (best)", huey[0] if huey else "-",
         ratio(med(data, "drain.ours.sqlite.process_due"), huey[1] if huey else None), 5,
         "ratio"),
        ("SQLite single enqueue ≥ 1\u00d7 Huey", "single.huey",
         ratio(med(data, "single.ours.sqlite"), med(data, "single.huey")), 1.0, "ratio"),
        ("latency p50 ≤ 10 ms, same process (PostgreSQL)", "",
         med(data, "latency.ours.pg.same", "p50_ms"), 10, "max_ms"),
        ("latency p50 ≤ 50 ms, across processes (PostgreSQL)", "",
         med(data, "latency.ours.pg.cross", "p50_ms"), 50, "max_ms"),
        ("request with enqueue ≥ 0.9\u00d7 without", "web: plain",
         ratio(med(data, "web.ours.pg", "enqueue"), med(data, "web.ours.pg", "plain")),
         0.9, "ratio"),
        ("drain with 1,000,000 finished rows ≥ 0.8\u00d7 empty table", "scale: empty table",
         med(data, "scale.ours.pg", "ratio"), 0.8, "ratio"),
    ]
    return out


def targets_table(data: dict) -> str:  # type: ignore[type-arg]
    lines = ["| target | compared with | measured | result |", "|---|---|---:|:---:|"]
    for name, against, value, threshold, kind in targets(data):
        if value is None or (isinstance(value, float) and math.isnan(value)):
            lines.append(f"| {name} | {against} | n/a | not measured |")
            continue
        if kind == "max_ms":
            ok = value <= threshold
            shown = f"{value:.1f} ms"
        else:
            ok = value >= threshold
            shown = f"{value:.2f}\u00d7"
        lines.append(f"| {name} | {against} | {shown} | {'pass' if ok else '**miss**'} |")
    return "\n".join(lines)


# -------------------------------------------------------------------------- chart


def chart(data: dict) -> None:  # type: ignore[type-arg]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("Bulk enqueue, jobs/s", ["bulk.ours.pg", "bulk.pgqueuer", "bulk.procrastinate",
                                  "bulk.ours.sqlite", "bulk.rq"]),
        ("Single enqueue (one commit each), jobs/s",
         ["single.ours.pg", "single.pgqueuer", "single.procrastinate", "ref.pgbench_single",
          "single.ours.sqlite", "single.huey", "single.rq"]),
        ("Drain, PostgreSQL, jobs/s",
         ["ref.pgbench_drain", "drain.ours.pg.process_due", "drain.ours.pg.scheduler",
          "drain.ours.pg.gunicorn1", "drain.ours.pg.gunicorn3", "drain.pgqueuer.b10",
          "drain.pgqueuer.b100", "drain.pgqueuer.b1000", "drain.procrastinate.c1",
          "drain.procrastinate.c10"]),
        ("Drain, SQLite and Redis, jobs/s",
         ["drain.ours.sqlite.process_due", "drain.ours.sqlite.scheduler", "drain.huey.w1",
          "drain.huey.w4", "drain.rq"]),
    ]
    labels = {
        "bulk.ours.pg": "ours PG", "bulk.pgqueuer": "pgqueuer", "bulk.procrastinate":
        "procrastinate", "bulk.ours.sqlite": "ours SQLite", "bulk.rq": "RQ",
        "single.ours.pg": "ours PG", "single.pgqueuer": "pgqueuer",
        "single.procrastinate": "procrastinate", "ref.pgbench_single": "pgbench -N -c 1",
        "single.ours.sqlite": "ours SQLite", "single.huey": "Huey", "single.rq": "RQ",
        "ref.pgbench_drain": "pgbench ceiling", "drain.ours.pg.process_due": "ours process_due",
        "drain.ours.pg.scheduler": "ours scheduler", "drain.ours.pg.gunicorn1":
        "ours gunicorn \u00d71", "drain.ours.pg.gunicorn3": "ours gunicorn \u00d73",
        "drain.pgqueuer.b10": "pgqueuer b=10", "drain.pgqueuer.b100": "pgqueuer b=100",
        "drain.pgqueuer.b1000": "pgqueuer b=1000", "drain.procrastinate.c1": "procrastinate c=1",
        "drain.procrastinate.c10": "procrastinate c=10",
        "drain.ours.sqlite.process_due": "ours process_due", "drain.ours.sqlite.scheduler":
        "ours scheduler", "drain.huey.w1": "Huey 1 worker", "drain.huey.w4": "Huey 4 workers",
        "drain.rq": "RQ SimpleWorker",
    }
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, 13))
    for ax, (title, keys) in zip(axes, panels, strict=True):
        names, meds, lo, hi, colors = [], [], [], [], []
        for k in keys:
            s = stat(data, k)
            if s is None:
                continue
            names.append(labels.get(k, k))
            meds.append(s[0])
            lo.append(s[0] - s[1])
            hi.append(s[2] - s[0])
            colors.append("#1f77b4" if ".ours." in k else ("#999999" if k.startswith("ref.")
                                                           else "#ff7f0e"))
        y = list(range(len(names)))
        ax.barh(y, meds, xerr=[lo, hi], color=colors, capsize=3)
        ax.set_yticks(y)
        ax.set_yticklabels(names)
        ax.invert_yaxis()
        ax.set_title(title, loc="left", fontsize=11)
        ax.grid(axis="x", alpha=0.3)
        for yi, m in zip(y, meds, strict=True):
            ax.text(m, yi, f" {m:,.0f}", va="center", fontsize=8)
        ax.set_xlim(0, max([*meds, 1]) * 1.18)
    fig.suptitle("flask-durable-jobs vs peers — median of runs, bars show min\u2013max "
                 "(blue: ours, orange: peers, grey: pgbench)", fontsize=10)
    fig.tight_layout()
    fig.savefig(CHART, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------- doc


def cliffs_section() -> str:
    """The cliffs scenarios' tables (bench/cliffs.py, bench/results/cliffs.json)."""
    import json
    import sys

    sys.path.insert(0, str(BENCH_DIR))
    import cliffs

    path = BENCH_DIR / "results" / "cliffs.json"
    return cliffs.render(json.loads(path.read_text()) if path.exists() else {})


def write(data: dict) -> None:  # type: ignore[type-arg]
    DOCS_DIR.mkdir(exist_ok=True)
    chart(data)
    m = data.get("machine", {})
    loads = [r["_load1"] for runs in data["runs"].values() for r in runs if "_load1" in r]
    load = f"{min(loads):.1f} to {max(loads):.1f}" if loads else "not recorded"
    template = (BENCH_DIR / "benchmarks.md.in").read_text()
    text = template.format(
        cpu=m.get("cpu", "?"), ram=m.get("ram", "?"), os=m.get("os", "?"),
        python=m.get("python", "?"), postgresql=m.get("postgresql", "?"),
        pg_settings=m.get("postgresql_settings", "?"), redis=m.get("redis", "?"),
        sqlite=m.get("sqlite", "?"), packages=m.get("packages", "?"),
        started=data.get("started", "?"),
        total_minutes=f"{data.get('total_seconds', 0) / 60:.0f}",
        reps=max((len(v) for v in data["runs"].values()), default=0),
        results_table=results_table(data), targets_table=targets_table(data),
        latency_table=latency_table(data), web_table=web_table(data),
        scale_table=scale_table(data), load=load, cliffs_section=cliffs_section(),
    )
    DOC.write_text(text)
