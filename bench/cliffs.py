"""Cliffs: drains that real bursts meet, measured side by side in one run.

* a burst into a table PostgreSQL has never analysed (no ``VACUUM ANALYZE``
  before the drain) against the same drain after ``VACUUM ANALYZE``;
* the drain while another session holds a REPEATABLE READ transaction open
  the whole time (an old snapshot pins vacuum), rate by fifths;
* ``process_due`` and the in-process scheduler, unanalysed, against the
  one-client SQL ceiling of ``pgbench_ref.py``;
* optionally (``--big N``) a drain of N jobs with and without a held
  snapshot, ours and pgqueuer side by side, rate over time (the chart);
* SQLite: a reader holding a read transaction open during the drain (WAL
  growth and drain rate).

    python3 bench/cliffs.py              # bench/.venv if present, else this Python
    python3 bench/cliffs.py --big 1000000

Writes ``bench/results/cliffs.json`` and ``docs/cliffs.png``; ``report.py``
renders the section of ``docs/benchmarks.md`` from them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sqlite3
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
VENV_PY = BENCH_DIR / ".venv" / "bin" / "python"
if (__name__ == "__main__" and VENV_PY.exists()
        and Path(sys.prefix).resolve() != (BENCH_DIR / ".venv").resolve()):
    os.execv(str(VENV_PY), [str(VENV_PY), __file__, *sys.argv[1:]])
sys.path.insert(0, str(BENCH_DIR))

from common import (  # noqa: E402
    RESULTS_DIR,
    pg_conninfo,
    pg_url,
    pg_vacuum,
    temp_db,
    temp_sqlite,
)

CHUNK = 1000
RESULTS = RESULTS_DIR / "cliffs.json"
CHART = BENCH_DIR.parent / "docs" / "cliffs.png"


def _app(url: str, scheduler: bool = False):  # type: ignore[no-untyped-def]
    import webapp

    app = webapp.create_app(url, scheduler=scheduler)
    return app, webapp


def _enqueue(url: str, n: int) -> None:
    app, w = _app(url)
    with app.app_context():
        w.db.create_all()
        for start in range(0, n, CHUNK):
            w.jobs.enqueue_many("noop", [{}] * min(CHUNK, n - start))
        w.jobs.stop()


@contextlib.contextmanager
def held_snapshot(dbname: str) -> Iterator[None]:
    """Another session with a REPEATABLE READ transaction open throughout."""
    import psycopg

    conn = psycopg.connect(pg_conninfo(dbname))
    try:
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        conn.execute("SELECT count(*) FROM durable_jobs").fetchone()
        yield
    finally:
        conn.rollback()
        conn.close()


def fifths(series: list[tuple[float, int]], n: int) -> list[float]:
    """Jobs/s over each fifth of the jobs, from (seconds, jobs done) samples."""
    out, prev_t, prev_k = [], 0.0, 0
    for i in range(1, 6):
        goal = n * i // 5
        t_at = next(t for t, k in series if k >= goal)
        k_at = next(k for t, k in series if k >= goal)
        out.append((k_at - prev_k) / max(t_at - prev_t, 1e-9))
        prev_t, prev_k = t_at, k_at
    return out


def ours_drain(n: int, mode: str, limit: int = 1000) -> dict:  # type: ignore[type-arg]
    """process_due(limit) in a loop; mode: analysed, unanalysed, snapshot
    (analysed, snapshot held), cold_snapshot (never analysed, snapshot held)."""
    with temp_db(f"cliff_{mode}") as name:
        url = pg_url(name)
        _enqueue(url, n)
        if mode in ("analysed", "snapshot"):
            pg_vacuum(name)
        holder = held_snapshot(name) if "snapshot" in mode else contextlib.nullcontext()
        app, w = _app(url)
        series: list[tuple[float, int]] = [(0.0, 0)]
        with holder, app.app_context():
            done = 0
            t0 = time.perf_counter()
            while True:
                got = w.jobs.process_due(limit=limit)["succeeded"]
                if not got:
                    break
                done += got
                series.append((time.perf_counter() - t0, done))
            elapsed = series[-1][0]
            w.jobs.stop()
    assert done == n, (done, n)
    return {"rate": n / elapsed, "n": n, "elapsed": elapsed, "fifths": fifths(series, n),
            "series": [*series[::max(1, len(series) // 400)], series[-1]]}


def ours_scheduler(n: int) -> dict:  # type: ignore[type-arg]
    """The in-process scheduler with default settings, table never analysed."""
    import ours

    with temp_db("cliff_sched") as name:
        url = pg_url(name)
        _enqueue(url, n)
        t0 = time.perf_counter()
        app, w = _app(url, scheduler=True)
        while ours._count(url, "succeeded") < n:
            time.sleep(0.05)
        with app.app_context():
            w.jobs.stop()
        span = ours._db_span(url)
    return {"rate": n / span, "n": n, "span": span, "wall": time.perf_counter() - t0}


def pgbench_ceiling(n: int, batch: int | None = None) -> dict:  # type: ignore[type-arg]
    """The one-client SQL ceiling: claims of 100 (the reference), or of
    ``batch`` (the library's default batch size, as the scheduler claims)."""
    import pgbench_ref

    return pgbench_ref.drain(n, batch=batch or pgbench_ref.BATCH)


def default_batch() -> int:
    from flask_durable_jobs.config import DEFAULTS

    return int(DEFAULTS["BATCH_SIZE"])


async def _pgq_series(dbname: str, n: int, batch: int,
                      cap: float) -> list[tuple[float, int]]:
    from peers import pgq_connect
    from pgqueuer import QueueManager
    from pgqueuer.domain.types import QueueExecutionMode
    from pgqueuer.queries import Queries

    done = 0
    series: list[tuple[float, int]] = [(0.0, 0)]
    conn = await pgq_connect(dbname)
    async with conn:
        qm = QueueManager(Queries.from_psycopg_connection(conn))

        @qm.entrypoint("noop")
        async def noop(job: object) -> None:
            nonlocal done
            done += 1

        t0 = time.perf_counter()

        async def sample() -> None:
            while True:
                await asyncio.sleep(0.25)
                series.append((time.perf_counter() - t0, done))
                if series[-1][0] > cap:  # a drain that collapsed: stop, keep the rate so far
                    qm.shutdown.set()

        sampler = asyncio.create_task(sample())
        await qm.run(batch_size=batch, mode=QueueExecutionMode.drain,
                     dequeue_timeout=timedelta(seconds=1))
        sampler.cancel()
        series.append((time.perf_counter() - t0, done))
    return series


def pgqueuer_drain(n: int, snapshot: bool, batch: int = 100,
                   cap: float = 600.0) -> dict:  # type: ignore[type-arg]
    from peers import _pgq_bulk, _pgq_install

    with temp_db("cliff_pgq") as name:
        asyncio.run(_pgq_install(name))
        asyncio.run(_pgq_bulk(name, n))
        holder = held_snapshot_on(name, "pgqueuer") if snapshot else contextlib.nullcontext()
        with holder:
            series = asyncio.run(_pgq_series(name, n, batch, cap))
    done = series[-1][1]
    # the last samples may wait out the dequeue timeout of the drain mode
    end = next((t for t, k in series if k >= n), series[-1][0])
    out = {"rate": done / end, "n": n, "done": done, "elapsed": end,
           "series": [*series[:: max(1, len(series) // 400)], series[-1]]}
    if done >= n:
        out["fifths"] = fifths(series, n)
    return out


@contextlib.contextmanager
def held_snapshot_on(dbname: str, table: str) -> Iterator[None]:
    import psycopg

    conn = psycopg.connect(pg_conninfo(dbname))
    try:
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        conn.execute(f"SELECT count(*) FROM {table}").fetchone()
        yield
    finally:
        conn.rollback()
        conn.close()


def sqlite_drain(n: int, reader: bool) -> dict:  # type: ignore[type-arg]
    """SQLite: process_due(limit=1000) in a loop, with or without another
    connection holding a read transaction open (no checkpoint can finish)."""
    with temp_sqlite("cliff") as path:
        url = f"sqlite:///{path}"
        _enqueue(url, n)
        wal = Path(str(path) + "-wal")
        other = sqlite3.connect(path, isolation_level=None)
        if reader:
            other.execute("BEGIN")
            other.execute("SELECT count(*) FROM durable_jobs").fetchone()
        app, w = _app(url)
        series: list[tuple[float, int]] = [(0.0, 0)]
        wal_max = 0
        with app.app_context():
            done = 0
            t0 = time.perf_counter()
            while True:
                got = w.jobs.process_due(limit=1000)["succeeded"]
                if not got:
                    break
                done += got
                series.append((time.perf_counter() - t0, done))
                wal_max = max(wal_max, wal.stat().st_size if wal.exists() else 0)
            w.jobs.stop()
        if reader:
            other.execute("ROLLBACK")
        other.close()
    assert done == n, (done, n)
    return {"rate": n / series[-1][0], "n": n, "fifths": fifths(series, n),
            "wal_max_mb": wal_max / 1e6}


def run(args: argparse.Namespace) -> dict:  # type: ignore[type-arg]
    out: dict = {"started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),  # type: ignore[type-arg]
                 "load": [], "runs": {}}

    def measure(key: str, fn, *a) -> None:  # type: ignore[no-untyped-def]
        load = os.getloadavg()[0]
        t0 = time.monotonic()
        result = fn(*a)
        result["_load1"] = round(max(load, os.getloadavg()[0]), 2)
        result["_seconds"] = round(time.monotonic() - t0, 1)
        out["runs"].setdefault(key, []).append(result)
        save(out)  # kept as it goes: a long run stopped halfway keeps what it measured
        print(f"{key}: {result['rate']:,.0f} jobs/s"
              + (" fifths " + " · ".join(f"{f:,.0f}" for f in result["fifths"])
                 if "fifths" in result else "")
              + f" (load {result['_load1']})", flush=True)

    for _ in range(args.reps):
        for n in args.n:
            # side by side: the analysed drain between the cliffs it is compared with
            measure(f"pg.unanalysed.{n}", ours_drain, n, "unanalysed")
            measure(f"pg.analysed.{n}", ours_drain, n, "analysed")
            measure(f"pg.snapshot.{n}", ours_drain, n, "snapshot")
            measure(f"pg.cold_snapshot.{n}", ours_drain, n, "cold_snapshot")
        ref_n = max(args.n)
        measure(f"pg.pgbench_ceiling.{ref_n}", pgbench_ceiling, ref_n)
        measure(f"pg.scheduler.{ref_n}", ours_scheduler, ref_n)
        measure(f"pg.pgbench_ceiling_batch.{ref_n}", pgbench_ceiling, ref_n, default_batch())
        if not args.no_sqlite:
            measure(f"sqlite.plain.{args.sqlite_n}", sqlite_drain, args.sqlite_n, False)
            measure(f"sqlite.reader.{args.sqlite_n}", sqlite_drain, args.sqlite_n, True)
    if args.big:
        measure(f"big.ours.plain.{args.big}", ours_drain, args.big, "unanalysed")
        measure(f"big.ours.snapshot.{args.big}", ours_drain, args.big, "cold_snapshot")
        measure(f"big.pgqueuer.plain.{args.big}", pgqueuer_drain, args.big, False)
        measure(f"big.pgqueuer.snapshot.{args.big}", pgqueuer_drain, args.big, True)
    return out


def save(new: dict) -> None:  # type: ignore[type-arg]
    """Merge ``new`` into bench/results/cliffs.json."""
    old = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(merge(old, new), indent=1) + "\n")


def merge(old: dict, new: dict) -> dict:  # type: ignore[type-arg]
    """New runs replace the old ones of the same keys."""
    runs = {**old.get("runs", {}), **new["runs"]}
    return {**old, **{k: v for k, v in new.items() if k != "runs"}, "runs": runs}


def chart(data: dict) -> None:  # type: ignore[type-arg]
    big = sorted({k.rsplit(".", 1)[1] for k in data["runs"] if k.startswith("big.")})
    if not big:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = big[-1]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))  # own scales: the rates differ widely
    for ax, system, title in ((axes[0], "ours", "flask-durable-jobs (process_due, 1000)"),
                              (axes[1], "pgqueuer", "pgqueuer (batch 100)")):
        for variant, style, label in (("plain", "-", "no other session"),
                                      ("snapshot", "--", "REPEATABLE READ held throughout")):
            runs = data["runs"].get(f"big.{system}.{variant}.{n}")
            if not runs:
                continue
            series = runs[-1]["series"]
            xs, ys = [], []
            step = max(1, len(series) // 60)
            for (t1, k1), (t2, k2) in zip(series[::step], series[step::step], strict=False):
                if t2 > t1:
                    xs.append(t2)
                    ys.append((k2 - k1) / (t2 - t1))
            ax.plot(xs, ys, style, label=label)
        ax.set_title(f"{title}, {int(n):,} jobs", fontsize=10)
        ax.set_xlabel("seconds into the drain")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("jobs/s")
    for ax in axes:
        ax.set_ylim(bottom=0)
    fig.tight_layout()
    fig.savefig(CHART, dpi=100)
    plt.close(fig)


LABELS = {
    "unanalysed": "burst, never analysed",
    "analysed": "after VACUUM ANALYZE",
    "snapshot": "analysed, REPEATABLE READ held throughout",
    "cold_snapshot": "never analysed, REPEATABLE READ held throughout",
}


def _typical(data: dict, key: str) -> dict | None:  # type: ignore[type-arg]
    """The run of ``key`` with the median rate (of the last invocation's
    ``--reps``; with an even count, the slower of the middle two), with how
    many runs there were and their range."""
    runs = data.get("runs", {}).get(key)
    if not runs:
        return None
    ordered = sorted(runs, key=lambda r: r["rate"])
    typical = dict(ordered[(len(ordered) - 1) // 2])
    typical["_reps"] = len(runs)
    typical["_range"] = (ordered[0]["rate"], ordered[-1]["rate"])
    return typical


def _rate(r: dict) -> str:  # type: ignore[type-arg]
    """A row's rate: the median run's, and the range when there were several."""
    text = f"{r['rate']:,.0f}"
    if r.get("_reps", 1) > 1:
        low, high = r["_range"]
        text += f" ({low:,.0f} to {high:,.0f})"
    return text


def render(data: dict) -> str:  # type: ignore[type-arg]
    """The tables of docs/benchmarks.md's cliffs section, from cliffs.json."""
    if not data.get("runs"):
        return "_Not measured yet: run `python3 bench/cliffs.py`._"
    runs = data["runs"]
    lines = ["| drain | jobs | jobs/s | by fifths of the jobs | load |",
             "|---|---:|---:|---|---:|"]
    sizes = sorted({int(k.rsplit(".", 1)[1]) for k in runs if k.startswith("pg.")})
    for n in sizes:
        for mode, label in LABELS.items():
            r = _typical(data, f"pg.{mode}.{n}")
            if r:
                lines.append(f"| PostgreSQL, process_due(limit=1000), {label} | {n:,} |"
                             f" {_rate(r)} | {' · '.join(f'{f:,.0f}' for f in r['fifths'])}"
                             f" | {r['_load1']} |")
        for key, label in (("pgbench_ceiling", "one-client SQL ceiling (pgbench_ref.py,"
                            " claims of 100, analysed)"),
                           ("pgbench_ceiling_batch", "one-client SQL ceiling, claims of the"
                            " default batch size, analysed"),
                           ("scheduler", "in-process scheduler, defaults,"
                            " never analysed")):
            r = _typical(data, f"pg.{key}.{n}")
            if r:
                lines.append(f"| PostgreSQL, {label} | {n:,} | {_rate(r)} | |"
                             f" {r['_load1']} |")
    for key in sorted(k for k in runs if k.startswith(("sqlite.", "big."))):
        r = _typical(data, key) or {}
        what, n = key.rsplit(".", 1)
        label = {
            "sqlite.plain": "SQLite, process_due(limit=1000)",
            "sqlite.reader": "SQLite, process_due(limit=1000), a reader holding a read"
                             " transaction throughout",
            "big.ours.plain": "PostgreSQL, ours, never analysed",
            "big.ours.snapshot": "PostgreSQL, ours, never analysed, REPEATABLE READ held",
            "big.pgqueuer.plain": "PostgreSQL, pgqueuer (batch 100)",
            "big.pgqueuer.snapshot": "PostgreSQL, pgqueuer (batch 100), REPEATABLE READ held",
        }.get(what, what)
        extra = f" (WAL up to {r['wal_max_mb']:.0f} MB)" if "wal_max_mb" in r else ""
        if "done" in r and r["done"] < r["n"]:
            extra += f" (stopped after {r['elapsed']:.0f} s, {r['done']:,} done)"
        fifth = " · ".join(f"{f:,.0f}" for f in r.get("fifths", []))
        lines.append(f"| {label}{extra} | {int(n):,} | {_rate(r)} | {fifth} |"
                     f" {r['_load1']} |")

    def rate(key: str) -> float | None:
        r = _typical(data, key)
        return None if r is None else float(r["rate"])

    goals = ["", "| goal | measured | target | met |", "|---|---:|---:|---|"]

    def goal(text: str, value: float | None, target: float) -> None:
        if value is not None:
            goals.append(f"| {text} | {value:.2f} | >= {target} |"
                         f" {'yes' if value >= target else '**no**'} |")

    for n in sizes:
        a, u = rate(f"pg.analysed.{n}"), rate(f"pg.unanalysed.{n}")
        goal(f"never analysed / analysed, {n:,} jobs", u / a if a and u else None, 0.9)
    n = max(sizes) if sizes else 0
    snap = _typical(data, f"pg.snapshot.{n}")
    if snap:
        goal(f"old snapshot: last fifth / first fifth, {n:,} jobs",
             snap["fifths"][4] / snap["fifths"][0], 0.8)
        a = rate(f"pg.analysed.{n}")
        goal(f"old snapshot / analysed, {n:,} jobs", snap["rate"] / a if a else None, 0.8)
    ceiling = rate(f"pg.pgbench_ceiling.{n}")
    if ceiling:
        u, sched = rate(f"pg.unanalysed.{n}"), rate(f"pg.scheduler.{n}")
        goal("process_due never analysed / SQL ceiling", u / ceiling if u else None, 0.9)
        goal("scheduler never analysed / SQL ceiling", sched / ceiling if sched else None, 0.6)
    same = rate(f"pg.pgbench_ceiling_batch.{n}")
    if same:
        u, sched = rate(f"pg.unanalysed.{n}"), rate(f"pg.scheduler.{n}")
        goal("process_due never analysed / SQL ceiling at the default batch size",
             u / same if u else None, 0.9)
        goal("scheduler never analysed / SQL ceiling at the default batch size",
             sched / same if sched else None, 0.6)
    started = data.get("started", "?")
    reps = max((len(v) for v in runs.values()), default=1)
    each = (f"rows measured {reps} times show the median run, with the range of rates in"
            " brackets; " if reps > 1 else "")
    return "\n".join([f"Run started {started}; {each}1-minute load average per row (2 cores).", "",
                       *lines, *goals])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[20_000, 100_000])
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--big", type=int, default=0, help="jobs for the chart's drains")
    parser.add_argument("--sqlite-n", type=int, default=20_000)
    parser.add_argument("--no-sqlite", action="store_true")
    parser.add_argument("--only-big", action="store_true", help="only the --big drains")
    args = parser.parse_args()
    if args.only_big:
        args.reps = 0
    save(run(args))
    chart(json.loads(RESULTS.read_text()))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
