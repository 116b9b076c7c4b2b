"""What each dashboard page asks the admin API, timed at 1M jobs on PostgreSQL.

Run as ``python3 bench/dashboard.py [--rows 1000000] [--reps 20]``. It fills a
fresh database with ``--rows`` jobs (mostly ended, spread over two days, a
few waiting, some in batches and with owners), runs ``ANALYZE`` once, and
times every API call the pages make, in-process through Flask's test client
(server time: routing, access check, SQL, JSON; no network). The same calls
on a 10,000-row database in the same run are the baseline: the ratio says
how much each call grows with the table. ``GET {prefix}/whoami`` (no SQL) is
the floor. Each call's median and 95th percentile are reported.

Then each page is opened ``--browser-reps`` times in Debian's Chromium
(Playwright) against the app behind a real HTTP server, logged in with the
token, and timed from navigation until the page shows its data (the HTML,
the ES modules and all its API calls). Writes bench/results/dashboard.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
import typing as t

from common import RESULTS_DIR, pg_exec, pg_url, temp_db

TOKEN = "bench-token"
CHROMIUM = os.environ.get("DURABLE_JOBS_TEST_CHROMIUM", "/usr/bin/chromium")
PREFIX = "/admin/jobs"
HEADERS = {"Authorization": f"Bearer {TOKEN}"}

FILL = """
INSERT INTO durable_jobs (job_type, queue, status, payload, attempts, max_attempts, priority,
    run_at, created_at, updated_at, started_at, finished_at, orphan_policy, callback_attempts,
    owner, batch_id, last_error)
SELECT
    (ARRAY['send_email', 'resize_image', 'export_report', 'sync_crm', 'bill'])[1 + i % 5],
    (ARRAY['default', 'mail', 'reports'])[1 + i % 3],
    CASE WHEN i % 100 < 90 THEN 'succeeded' WHEN i % 100 < 95 THEN 'dead'
         WHEN i % 100 < 98 THEN 'pending' WHEN i % 100 < 99 THEN 'cancelled'
         ELSE 'retrying' END,
    jsonb_build_object('user_id', i % 5000, 'n', i),
    1, 3, 0,
    t, t, t, t,
    CASE WHEN i % 100 < 95 OR i % 100 = 98 THEN t END,
    'retry', 0,
    CASE WHEN i % 10 = 0 THEN 'user-' || (i % 1000) END,
    CASE WHEN i % 1000 < 10 THEN 'batch-' || (i / 1000) END,
    CASE WHEN i % 100 BETWEEN 90 AND 94 THEN 'Traceback: boom' END
FROM (
    SELECT i, now() - make_interval(secs => (:rows - i) * 172800.0 / :rows) AS t
    FROM generate_series(1, :rows) AS i
) AS s
"""


def build(url: str, rows: int) -> t.Any:
    from flask import Flask
    from flask_sqlalchemy import SQLAlchemy

    from flask_durable_jobs import DurableJobs

    app = Flask(f"bench_dashboard_{rows}")
    app.config.update(
        SQLALCHEMY_DATABASE_URI=url, DURABLE_JOBS_SCHEDULER=False,
        DURABLE_JOBS_ADMIN_TOKEN=TOKEN,
    )
    db = SQLAlchemy(app)
    jobs = DurableJobs(app, db=db)
    for name in ("send_email", "resize_image", "export_report", "sync_crm", "bill"):
        jobs.handler(name)(lambda payload: None)
    with app.app_context():
        db.create_all()
    return app


def calls(client: t.Any) -> list[tuple[str, str, str]]:
    """(page, what, path) for every call the pages make, the cursor one resolved."""
    first = client.get(PREFIX + "?per_page=50", headers=HEADERS).get_json()
    cursor = first.get("next_cursor")
    deep = cursor
    for _ in range(20):  # the 21st page
        if not deep:
            break
        deep = client.get(PREFIX + f"?per_page=50&cursor={deep}", headers=HEADERS).get_json().get(
            "next_cursor"
        )
    job_id = first["items"][0]["id"]
    listing = [
        ("jobs", "newest 50", "?per_page=50"),
        ("jobs", "status=dead", "?status=dead&per_page=50"),
        ("jobs", "type + status", "?job_type=bill&status=succeeded&per_page=50"),
        ("jobs", "queue", "?queue=mail&per_page=50"),
        ("jobs", "owner", "?owner=user-10&per_page=50"),
        ("jobs", "batch", "?batch_id=batch-5&per_page=50"),
        ("jobs", "payload field", "?payload.user_id=42&per_page=50"),
        ("jobs", "created range", "?created_after=2000-01-01T00:00:00Z"
         "&created_before=2100-01-01T00:00:00Z&per_page=50"),
        ("jobs", "bulk count (status, 1 row)", "?job_type=bill&status=dead&per_page=1"),
    ]
    out = [
        ("-", "whoami (floor)", "/whoami"),
        ("overview", "stats", "/stats"),
        ("overview", "health", "/health"),
        ("overview", "throughput", "/throughput?minutes=60"),
        ("overview", "processes", "/processes"),
        *[(page, what, path) for page, what, path in listing],
    ]
    if cursor:
        out.append(("jobs", "next page (cursor)", f"?per_page=50&cursor={cursor}"))
    if deep:
        out.append(("jobs", "page 22 (cursor)", f"?per_page=50&cursor={deep}"))
    out += [
        ("job", "one job", f"/{job_id}"),
        ("queues", "queues", "/queues"),
        ("periodic", "schedules", "/periodic"),
        ("batches", "one batch", "/batches/batch-5"),
    ]
    return out


def p95(samples: list[float]) -> float:
    """The 95th percentile (nearest rank)."""
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def timed(client: t.Any, path: str, reps: int) -> tuple[float, float, int]:
    """(median ms, p95 ms, HTTP status) of ``reps`` calls after one warm-up."""
    status = client.get(PREFIX + path, headers=HEADERS).status_code  # warm-up
    samples = []
    for _ in range(reps):
        start = time.perf_counter()
        client.get(PREFIX + path, headers=HEADERS)
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples), p95(samples), status


#: Each page as the browser opens it, and its name in the page's root
#: (``<div class="page" data-page=...>``, added once its data is shown).
PAGES = [
    ("overview", "#/", "overview"),
    ("jobs", "#/jobs", "jobs"),
    ("jobs, payload field", "#/jobs?payload.user_id=42", "jobs"),
    ("job", "#/jobs/{job_id}", "jobs"),
    ("queues", "#/queues", "queues"),
    ("recurring", "#/periodic", "periodic"),
    ("batches", "#/batches?id=batch-5", "batches"),
    ("processes", "#/processes", "processes"),
]


def interactive(app: t.Any, job_id: int, reps: int) -> list[dict[str, t.Any]]:
    """Milliseconds from navigation to each page shown with its data, in
    Debian's Chromium (Playwright) against the app behind a real HTTP server:
    the HTML, the ES modules and every API call the page makes."""
    import logging
    import threading

    from playwright.sync_api import sync_playwright
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_port}{PREFIX}/dashboard/"
    out = []
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM,
                args=["--headless=new", "--no-sandbox", "--disable-gpu",
                      "--disable-dev-shm-usage"],
            )
            page = browser.new_context(viewport={"width": 1280, "height": 800}).new_page()
            page.goto(base)
            page.fill("#token", TOKEN)  # kept in sessionStorage for the tab
            page.click("form.login button[type=submit]")
            page.wait_for_selector("#who[data-role]")
            for name, route, root in PAGES:
                samples = []
                for _ in range(reps + 1):  # the first warms the browser's cache
                    page.goto("about:blank")
                    start = time.perf_counter()
                    page.goto(base + route.format(job_id=job_id))
                    page.wait_for_selector(f"#main > .page[data-page='{root}']")
                    samples.append((time.perf_counter() - start) * 1000)
                samples = samples[1:]
                out.append({"page": name, "route": route, "ms": statistics.median(samples),
                            "max_ms": max(samples)})
            browser.close()
    finally:
        server.shutdown()
        server.server_close()
    return out


def measure(rows: int, reps: int, browser_reps: int) -> dict[str, t.Any]:
    with temp_db("dash") as name:
        url = pg_url(name)
        app = build(url, rows)
        started = time.perf_counter()
        pg_exec(name, FILL.replace(":rows", str(rows)))
        pg_exec(name, "INSERT INTO durable_jobs_batches (id, created_at) SELECT DISTINCT"
                " batch_id, now() FROM durable_jobs WHERE batch_id IS NOT NULL")
        pg_exec(name, "ANALYZE durable_jobs")
        with app.app_context():
            # the ended rows inserted above were counted one by one; the sweep
            # folds them within DURABLE_JOBS_SWEEP_INTERVAL, as here
            app.extensions["durable_jobs"].store.fold_counts()
        filled = time.perf_counter() - started
        client = app.test_client()
        with app.app_context():
            results = []
            for page, what, path in calls(client):
                ms, slow, status = timed(client, path, reps)
                results.append({"page": page, "call": what, "path": path, "ms": ms,
                                "p95_ms": slow, "status": status})
            job_id = client.get(PREFIX + "?per_page=1", headers=HEADERS).get_json()[
                "items"][0]["id"]
            pages = interactive(app, job_id, browser_reps) if browser_reps else []
            for engine in app.extensions["sqlalchemy"].engines.values():
                engine.dispose()
            app.extensions["durable_jobs"].shutdown()
        return {"rows": rows, "fill_seconds": filled, "calls": results, "pages": pages}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--baseline-rows", type=int, default=10_000)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--browser-reps", type=int, default=5,
                        help="page loads per page in Chromium (0: none)")
    args = parser.parse_args()
    big = measure(args.rows, args.reps, args.browser_reps)
    small = measure(args.baseline_rows, args.reps, args.browser_reps)
    base = {(c["page"], c["call"]): c["ms"] for c in small["calls"]}
    print(f"| page | call | median ms at {args.rows:,} | p95 ms | "
          f"median ms at {args.baseline_rows:,} | ratio |")
    print("|---|---|---:|---:|---:|---:|")
    for c in big["calls"]:
        b = base.get((c["page"], c["call"]))
        ratio = f"{c['ms'] / b:.1f}" if b else "-"
        flag = "" if c["status"] in (200, 503) else f" (HTTP {c['status']})"
        print(f"| {c['page']} | {c['call']}{flag} | {c['ms']:.1f} | {c['p95_ms']:.1f} | "
              f"{'-' if b is None else f'{b:.1f}'} | {ratio} |")
    if big["pages"]:
        small_pages = {p["page"]: p for p in small["pages"]}
        print(f"\n| page | interactive, median ms at {args.rows:,} | slowest | "
              f"median ms at {args.baseline_rows:,} |")
        print("|---|---:|---:|---:|")
        for p in big["pages"]:
            b = small_pages.get(p["page"])
            baseline = "-" if b is None else f"{b['ms']:.0f}"
            print(f"| {p['page']} | {p['ms']:.0f} | {p['max_ms']:.0f} | {baseline} |")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / "dashboard.json").write_text(
        json.dumps({"large": big, "baseline": small, "reps": args.reps,
                    "browser_reps": args.browser_reps, "load": os.getloadavg()[0]},
                   indent=2) + "\n"
    )


if __name__ == "__main__":
    main()
