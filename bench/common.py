"""Helpers shared by the benchmark scenarios: databases, timing, output."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"

PG_HOST = os.environ.get("BENCH_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("BENCH_PG_PORT", "5432"))
PG_USER = os.environ.get("BENCH_PG_USER", "postgres")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


def pg_conninfo(dbname: str) -> str:
    return f"host={PG_HOST} port={PG_PORT} user={PG_USER} dbname={dbname}"


def pg_url(dbname: str) -> str:
    return f"postgresql+psycopg://{PG_USER}@{PG_HOST}:{PG_PORT}/{dbname}"


def pg_admin():  # type: ignore[no-untyped-def]
    import psycopg

    return psycopg.connect(pg_conninfo("postgres"), autocommit=True)


def new_db_name(tag: str) -> str:
    return f"bench_{tag}_{os.getpid()}_{uuid.uuid4().hex[:8]}"


def create_db(name: str) -> None:
    assert name.startswith("bench_"), name
    with pg_admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')


def drop_db(name: str) -> None:
    assert name.startswith("bench_"), name
    with pg_admin() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def temp_db(tag: str) -> Iterator[str]:
    """A fresh PostgreSQL database, dropped afterwards."""
    name = new_db_name(tag)
    create_db(name)
    try:
        yield name
    finally:
        drop_db(name)


def pg_exec(dbname: str, sql: str) -> list[tuple]:  # type: ignore[type-arg]
    import psycopg

    with psycopg.connect(pg_conninfo(dbname), autocommit=True) as conn:
        cur = conn.execute(sql)
        return cur.fetchall() if cur.description else []


def pg_vacuum(dbname: str, table: str | None = None) -> None:
    pg_exec(dbname, f"VACUUM ANALYZE {table or ''}")


def checkpoint() -> None:
    with pg_admin() as conn:
        conn.execute("CHECKPOINT")


@contextlib.contextmanager
def temp_sqlite(tag: str) -> Iterator[Path]:
    """A path for a fresh SQLite file (and its -wal/-shm), removed afterwards
    (in ``BENCH_SQLITE_DIR`` if set: a tmpfs there takes the disk's syncs out)."""
    tmp = Path(os.environ.get("BENCH_SQLITE_DIR") or RESULTS_DIR / "tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / f"{tag}_{os.getpid()}_{uuid.uuid4().hex[:8]}.db"
    try:
        yield path
    finally:
        for suffix in ("", "-wal", "-shm", "-journal"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(str(path) + suffix)


def wait_until(pred, timeout: float, interval: float = 0.005) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(interval)
    return bool(pred())


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile (pct in 0..100)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(pct / 100 * len(ordered) + 0.5) - 1))
    return ordered[k]


def emit(result: dict) -> None:  # type: ignore[type-arg]
    """Print a scenario's result as the last line of stdout, for run.py to read."""
    sys.stdout.write("BENCH-RESULT " + json.dumps(result) + "\n")
    sys.stdout.flush()


def run_cmd(cmd: list[str], timeout: float = 600, **kw) -> str:  # type: ignore[no-untyped-def]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, **kw)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd!r} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout
