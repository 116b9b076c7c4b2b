"""Profile one flask-durable-jobs scenario with cProfile and print where time goes.

    bench/.venv/bin/python bench/prof.py single --backend pg --n 2000
    bench/.venv/bin/python bench/prof.py drain_process_due --backend pg --n 20000

Only the measured part is profiled (setup and preloading are not): the
scenario's enqueue loop, ``jobs.drain()`` or ``jobs.enqueue_many`` calls.
Handler threads are not seen by cProfile; use py-spy for the scheduler paths:
``bench/.venv/bin/py-spy record -o out.svg -- bench/.venv/bin/python bench/ours.py ...``.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import time

from ours import CHUNK, _app, _preload, database


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("scenario", choices=["single", "bulk", "drain_process_due", "web_enqueue"])
    parser.add_argument("--backend", choices=["pg", "sqlite"], default="pg")
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    prof = cProfile.Profile()
    with database(args.backend, "profile") as (url, _name):
        if args.scenario == "drain_process_due":
            _preload(url, args.n)
        app, w = _app(url)
        with app.app_context():
            w.db.create_all()
            t0 = time.perf_counter()
            if args.scenario == "single":
                prof.enable()
                for _ in range(args.n):
                    w.jobs.enqueue("noop", {})
            elif args.scenario == "bulk":
                prof.enable()
                for start in range(0, args.n, CHUNK):
                    w.jobs.enqueue_many("noop", [{}] * min(CHUNK, args.n - start))
            elif args.scenario == "drain_process_due":
                prof.enable()
                w.jobs.drain()
        if args.scenario == "web_enqueue":
            client = app.test_client()
            prof.enable()
            for _ in range(args.n):
                client.get("/enqueue")
        prof.disable()
        elapsed = time.perf_counter() - t0
    print(f"{args.scenario} {args.backend}: {args.n} in {elapsed:.2f} s "
          f"({args.n / elapsed:,.0f}/s, profiler overhead included)")
    for sort in ("tottime", "cumulative"):
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats(sort).print_stats(args.top)
        print(out.getvalue())


if __name__ == "__main__":
    main()
