"""Scenarios for the peer systems: pgqueuer, procrastinate, Huey and RQ.

Run one scenario per process, e.g.::

    bench/.venv/bin/python bench/peers.py pgqueuer drain --n 20000 --batch 100

The last line of stdout is ``BENCH-RESULT {json}``. Every job is a no-op.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import threading
import time
from datetime import timedelta

from common import (
    REDIS_URL,
    emit,
    percentile,
    pg_conninfo,
    pg_vacuum,
    temp_db,
    temp_sqlite,
    wait_until,
)

CHUNK = 1000

# --------------------------------------------------------------------------- pgqueuer


async def pgq_connect(dbname: str):  # type: ignore[no-untyped-def]
    import psycopg

    return await psycopg.AsyncConnection.connect(pg_conninfo(dbname), autocommit=True)


async def _pgq_install(dbname: str) -> None:
    from pgqueuer import Queries

    conn = await pgq_connect(dbname)
    async with conn:
        await Queries.from_psycopg_connection(conn).install()


async def _pgq_bulk(dbname: str, n: int) -> float:
    from pgqueuer import Queries

    conn = await pgq_connect(dbname)
    async with conn:
        q = Queries.from_psycopg_connection(conn)
        t0 = time.perf_counter()
        for start in range(0, n, CHUNK):
            k = min(CHUNK, n - start)
            await q.enqueue(["noop"] * k, [None] * k, [0] * k)
        return time.perf_counter() - t0


def pgqueuer_bulk(n: int, **_: object) -> dict:  # type: ignore[type-arg]
    with temp_db("pgq") as db:
        asyncio.run(_pgq_install(db))
        elapsed = asyncio.run(_pgq_bulk(db, n))
    return {"rate": n / elapsed, "n": n, "elapsed": elapsed}


def pgqueuer_single(n: int, **_: object) -> dict:  # type: ignore[type-arg]
    import psycopg
    from pgqueuer.db import SyncPsycopgDriver
    from pgqueuer.queries import SyncQueries

    with temp_db("pgq") as db:
        asyncio.run(_pgq_install(db))
        with psycopg.connect(pg_conninfo(db), autocommit=True) as conn:
            q = SyncQueries(SyncPsycopgDriver(conn))
            for _ in range(50):  # warm-up (prepared statements, caches)
                q.enqueue("noop", None)
            t0 = time.perf_counter()
            for _ in range(n):
                q.enqueue("noop", None)  # autocommit: one commit per job
            elapsed = time.perf_counter() - t0
    return {"rate": n / elapsed, "n": n, "elapsed": elapsed}


async def _pgq_drain(dbname: str, n: int, batch: int) -> tuple[float, int]:
    from pgqueuer import Queries, QueueManager
    from pgqueuer.domain.types import QueueExecutionMode

    done = 0
    conn = await pgq_connect(dbname)
    async with conn:
        qm = QueueManager(Queries.from_psycopg_connection(conn))

        @qm.entrypoint("noop")
        async def noop(job: object) -> None:
            nonlocal done
            done += 1

        t0 = time.perf_counter()
        await qm.run(
            batch_size=batch,
            mode=QueueExecutionMode.drain,
            dequeue_timeout=timedelta(seconds=1),
        )
        return time.perf_counter() - t0, done


def pgqueuer_drain(n: int, batch: int = 10, **_: object) -> dict:  # type: ignore[type-arg]
    with temp_db("pgq") as db:
        asyncio.run(_pgq_install(db))
        asyncio.run(_pgq_bulk(db, n))
        pg_vacuum(db)  # analysed, as every drain here
        elapsed, done = asyncio.run(_pgq_drain(db, n, batch))
    assert done == n, (done, n)
    return {"rate": n / elapsed, "n": n, "elapsed": elapsed, "batch": batch}


# --------------------------------------------------------------------- procrastinate


def _proc_app(dbname: str):  # type: ignore[no-untyped-def]
    import procrastinate

    app = procrastinate.App(
        connector=procrastinate.PsycopgConnector(conninfo=pg_conninfo(dbname))
    )
    state = {"done": 0}

    @app.task(name="noop")
    async def noop() -> None:
        state["done"] += 1

    return app, noop, state


def procrastinate_bulk(n: int, **_: object) -> dict:  # type: ignore[type-arg]
    with temp_db("proc") as db:
        app, noop, _state = _proc_app(db)
        with app.open():
            app.schema_manager.apply_schema()
            t0 = time.perf_counter()
            for start in range(0, n, CHUNK):
                noop.batch_defer(*([{}] * min(CHUNK, n - start)))
            elapsed = time.perf_counter() - t0
    return {"rate": n / elapsed, "n": n, "elapsed": elapsed}


def procrastinate_single(n: int, **_: object) -> dict:  # type: ignore[type-arg]
    with temp_db("proc") as db:
        app, noop, _state = _proc_app(db)
        with app.open():
            app.schema_manager.apply_schema()
            for _ in range(50):
                noop.defer()
            t0 = time.perf_counter()
            for _ in range(n):
                noop.defer()
            elapsed = time.perf_counter() - t0
    return {"rate": n / elapsed, "n": n, "elapsed": elapsed}


def procrastinate_drain(n: int, concurrency: int = 1, **_: object) -> dict:  # type: ignore[type-arg]
    with temp_db("proc") as db:
        app, noop, state = _proc_app(db)
        with app.open():
            app.schema_manager.apply_schema()
            for start in range(0, n, CHUNK):
                noop.batch_defer(*([{}] * min(CHUNK, n - start)))
        pg_vacuum(db)  # analysed, as every drain here

        async def work() -> float:
            async with app.open_async():
                t0 = time.perf_counter()
                await app.run_worker_async(
                    wait=False, concurrency=concurrency, install_signal_handlers=False
                )
                return time.perf_counter() - t0

        elapsed = asyncio.run(work())
    assert state["done"] == n, (state["done"], n)
    return {"rate": n / elapsed, "n": n, "elapsed": elapsed, "concurrency": concurrency}


# ------------------------------------------------------------------------------ Huey


def _huey(path: str):  # type: ignore[no-untyped-def]
    from huey import SqliteHuey

    huey = SqliteHuey("bench", filename=path)
    lock = threading.Lock()
    state = {"done": 0}

    @huey.task()
    def noop() -> None:
        with lock:
            state["done"] += 1

    return huey, noop, state


def huey_single(n: int, **_: object) -> dict:  # type: ignore[type-arg]
    with temp_sqlite("huey") as path:
        _huey_obj, noop, _state = _huey(str(path))
        for _ in range(50):
            noop()
        t0 = time.perf_counter()
        for _ in range(n):
            noop()  # one INSERT, autocommit
        elapsed = time.perf_counter() - t0
    return {"rate": n / elapsed, "n": n, "elapsed": elapsed}


def huey_drain(n: int, workers: int = 1, **_: object) -> dict:  # type: ignore[type-arg]
    logging.getLogger("huey").setLevel(logging.WARNING)
    with temp_sqlite("huey") as path:
        huey, noop, state = _huey(str(path))
        for _ in range(n):
            noop()
        consumer = huey.create_consumer(
            workers=workers, worker_type="thread", periodic=False, check_worker_health=False
        )
        t0 = time.perf_counter()
        consumer.start()
        ok = wait_until(lambda: state["done"] >= n, timeout=600, interval=0.002)
        elapsed = time.perf_counter() - t0
        consumer.stop(graceful=True)
    assert ok, state
    return {"rate": n / elapsed, "n": n, "elapsed": elapsed, "workers": workers}


# -------------------------------------------------------------------------------- RQ


def _rq():  # type: ignore[no-untyped-def]
    import uuid

    from redis import Redis
    from rq import Queue

    conn = Redis.from_url(REDIS_URL)
    q = Queue(f"bench-{uuid.uuid4().hex[:8]}", connection=conn)
    return conn, q


def _rq_cleanup(conn, q, ids) -> None:  # type: ignore[no-untyped-def]
    q.delete(delete_jobs=True)
    pipe = conn.pipeline()
    for job_id in ids:
        pipe.delete(f"rq:job:{job_id}", f"rq:results:{job_id}")
    pipe.execute()


def _rq_bulk_enqueue(q, n: int) -> list[str]:  # type: ignore[no-untyped-def]
    from bench_tasks import noop
    from rq import Queue

    ids: list[str] = []
    for start in range(0, n, CHUNK):
        datas = [Queue.prepare_data(noop) for _ in range(min(CHUNK, n - start))]
        ids.extend(j.id for j in q.enqueue_many(datas))
    return ids


def rq_bulk(n: int, **_: object) -> dict:  # type: ignore[type-arg]
    conn, q = _rq()
    t0 = time.perf_counter()
    ids = _rq_bulk_enqueue(q, n)
    elapsed = time.perf_counter() - t0
    _rq_cleanup(conn, q, ids)
    return {"rate": n / elapsed, "n": n, "elapsed": elapsed}


def rq_single(n: int, **_: object) -> dict:  # type: ignore[type-arg]
    from bench_tasks import noop

    conn, q = _rq()
    ids = [q.enqueue(noop).id for _ in range(50)]
    t0 = time.perf_counter()
    for _ in range(n):
        ids.append(q.enqueue(noop).id)
    elapsed = time.perf_counter() - t0
    _rq_cleanup(conn, q, ids)
    return {"rate": n / elapsed, "n": n, "elapsed": elapsed}


def rq_drain(n: int, **_: object) -> dict:  # type: ignore[type-arg]
    from rq import SimpleWorker

    logging.getLogger("rq.worker").setLevel(logging.WARNING)
    conn, q = _rq()
    ids = _rq_bulk_enqueue(q, n)
    worker = SimpleWorker([q], connection=conn)
    t0 = time.perf_counter()
    worker.work(burst=True, logging_level="WARNING")
    elapsed = time.perf_counter() - t0
    left = q.count
    _rq_cleanup(conn, q, ids)
    assert left == 0, left
    return {"rate": n / elapsed, "n": n, "elapsed": elapsed}


# ------------------------------------------------------------------ pgqueuer latency


def pgqueuer_latency(n: int, gap: float = 0.02, **_: object) -> dict:  # type: ignore[type-arg]
    """Enqueue-to-start latency, enqueuer and worker in one process (LISTEN/NOTIFY)."""
    from pgqueuer import Queries, QueueManager

    lat: list[float] = []

    async def main(db: str) -> None:
        wconn = await pgq_connect(db)
        econn = await pgq_connect(db)
        async with wconn, econn:
            qm = QueueManager(Queries.from_psycopg_connection(wconn))
            enq = Queries.from_psycopg_connection(econn)

            @qm.entrypoint("noop")
            async def noop(job) -> None:  # type: ignore[no-untyped-def]
                lat.append(time.time() - float(job.payload.decode()))
                if len(lat) >= n:
                    qm.shutdown.set()

            async def producer() -> None:
                await asyncio.sleep(0.5)
                for _ in range(n):
                    await enq.enqueue("noop", str(time.time()).encode())
                    await asyncio.sleep(gap)

            prod = asyncio.create_task(producer())
            await asyncio.wait_for(qm.run(batch_size=10), timeout=120)
            await prod

    with temp_db("pgq") as db:
        asyncio.run(_pgq_install(db))
        asyncio.run(main(db))
    ms = [x * 1000 for x in lat]
    return {"p50_ms": percentile(ms, 50), "p99_ms": percentile(ms, 99), "n": len(ms)}


SCENARIOS = {
    ("pgqueuer", "bulk"): pgqueuer_bulk,
    ("pgqueuer", "single"): pgqueuer_single,
    ("pgqueuer", "drain"): pgqueuer_drain,
    ("pgqueuer", "latency"): pgqueuer_latency,
    ("procrastinate", "bulk"): procrastinate_bulk,
    ("procrastinate", "single"): procrastinate_single,
    ("procrastinate", "drain"): procrastinate_drain,
    ("huey", "single"): huey_single,
    ("huey", "drain"): huey_drain,
    ("rq", "bulk"): rq_bulk,
    ("rq", "single"): rq_single,
    ("rq", "drain"): rq_drain,
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("system")
    parser.add_argument("scenario")
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    fn = SCENARIOS[(args.system, args.scenario)]
    emit(fn(n=args.n, batch=args.batch, concurrency=args.concurrency, workers=args.workers))


if __name__ == "__main__":
    main()
