"""The dashboard in a real browser: Debian's Chromium driven by Playwright,
against the app served by a real HTTP server on a free port.

Most tests run on PostgreSQL; the smoke test runs on both databases. Outside
CI the module skips, with the reason shown, when Chromium or Playwright is
missing; in CI (``CI=true``) it fails instead.

With ``DURABLE_JOBS_SCREENSHOTS=docs`` the screenshots taken along the way
(1280x800) are written to docs/_static/dashboard/ for the documentation;
otherwise to the test's temporary directory.
"""

from __future__ import annotations

import json
import os
import re
import threading
import typing as t
from pathlib import Path

import pytest
import sqlalchemy as sa
from flask import Flask, session
from werkzeug.serving import make_server

from flask_durable_jobs import Discard, DurableJobs
from flask_durable_jobs.extension import get_state
from flask_durable_jobs.periodic import tick
from flask_durable_jobs.testing import move_time, reset_time
from tests.conftest import IN_CI
from tests.helpers import on_postgresql, wait_for

CHROMIUM = os.environ.get("DURABLE_JOBS_TEST_CHROMIUM", "/usr/bin/chromium")
PREFIX = "/admin/jobs"
ALL_TOKEN = "all-token-for-the-browser"
READ_TOKEN = "read-token-for-the-browser"
TOKENS = pytest.mark.config(
    DURABLE_JOBS_ADMIN_TOKEN=ALL_TOKEN, DURABLE_JOBS_ADMIN_READ_TOKEN=READ_TOKEN
)
SHOTS = Path(__file__).resolve().parent.parent / "docs" / "_static" / "dashboard"
XSS = '<script>window.pwned = 1</script><img src="x" onerror="window.pwned = 2">'

pytestmark = pytest.mark.slow


def _unavailable(reason: str) -> t.NoReturn:
    if IN_CI:
        pytest.fail(reason + " (CI=true: the browser tests must run)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def chromium() -> t.Iterator[t.Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed (pip install 'flask-durable-jobs[test]')")
    if not os.path.exists(CHROMIUM):
        _unavailable(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
        )
        try:
            yield browser
        finally:
            browser.close()


class Server:
    """The app behind a real HTTP server, in a thread."""

    def __init__(self, app: Flask, host: str = "127.0.0.1") -> None:
        self.server = make_server(host, 0, app, threaded=True)
        # server_close() then waits for requests still running, so none holds a
        # database connection when the test's app closes its engines.
        self.server.daemon_threads = False
        self.server.block_on_close = True
        self.url = f"http://{host}:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def server(app: Flask) -> t.Iterator[Server]:
    live = Server(app)
    try:
        yield live
    finally:
        live.close()


class Tab:
    """One browser tab on the dashboard, recording every request and error."""

    def __init__(self, browser: t.Any, server: Server, shots: Path) -> None:
        self.context = browser.new_context(viewport={"width": 1280, "height": 800})
        self.page = self.context.new_page()
        self.page.set_default_timeout(10_000)
        self.server = server
        self.shots = shots
        self.requests: list[t.Any] = []
        self.errors: list[str] = []
        self.page.on("request", lambda request: self.requests.append(request))
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        self.page.on("console", self.console)

    def console(self, msg: t.Any) -> None:
        # An API answer of 401/404 is logged by the browser itself; that is not a script error.
        if msg.type == "error" and not msg.text.startswith("Failed to load resource"):
            self.errors.append(msg.text)

    def open(self, hash_route: str = "#/") -> t.Any:
        self.page.goto(f"{self.server.url}{PREFIX}/dashboard/{hash_route}")
        return self.page

    def login(self, token: str, hash_route: str = "#/") -> t.Any:
        page = self.open(hash_route)
        page.fill("#token", token)
        page.click("form.login button[type=submit]")
        page.wait_for_selector("#who[data-role]")
        return page

    def shot(self, name: str) -> Path:
        self.shots.mkdir(parents=True, exist_ok=True)
        path = self.shots / f"{name}.png"
        self.page.screenshot(path=str(path))
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        return path

    def api(self, path: str, token: str = ALL_TOKEN) -> t.Any:
        response = self.context.request.get(
            self.server.url + PREFIX + path, headers={"Authorization": f"Bearer {token}"}
        )
        assert response.ok, response.text()
        return response.json()


@pytest.fixture
def tab(chromium: t.Any, server: Server, tmp_path: Path) -> t.Iterator[Tab]:
    shots = SHOTS if os.environ.get("DURABLE_JOBS_SCREENSHOTS") == "docs" else tmp_path
    opened = Tab(chromium, server, shots)
    try:
        yield opened
        assert opened.errors == [], opened.errors
    finally:
        opened.context.close()


def _jobs(jobs: DurableJobs) -> None:
    """Handlers for the seeded jobs."""
    jobs.handler("send_email", max_attempts=3)(lambda payload: {"message_id": "m-1"})

    def resize(payload: dict[str, t.Any]) -> None:
        raise Discard("the image is gone")

    jobs.handler("resize_image", max_attempts=1)(resize)
    jobs.handler("export_report")(lambda payload: None)


def seed(jobs: DurableJobs) -> dict[str, list[int]]:
    """Jobs in most statuses: succeeded, dead, cancelled, pending."""
    _jobs(jobs)
    ids: dict[str, list[int]] = {}
    ids["succeeded"] = jobs.enqueue_many("send_email", [{"to": f"u{i}@example.com"}
                                                        for i in range(6)])
    ids["dead"] = jobs.enqueue_many("resize_image", [{"image": i} for i in range(3)])
    jobs.drain()
    ids["cancelled"] = [jobs.enqueue("export_report", {"month": "2026-11"}).id]
    jobs.cancel(ids["cancelled"][0])
    ids["pending"] = jobs.enqueue_many(
        "export_report", [{"month": f"2026-{m:02d}", "api_token": "hunter2"} for m in range(1, 5)],
        delay=3600,
    )
    return ids


def status_of(app: Flask, job_id: int) -> str:
    table = app.extensions["durable_jobs"].table
    with app.extensions["sqlalchemy"].engine.connect() as conn:
        return str(conn.execute(sa.select(table.c.status).where(table.c.id == job_id)).scalar())


def counts_on_page(page: t.Any) -> dict[str, int]:
    return {
        el.get_attribute("data-count"): int(el.inner_text())
        for el in page.query_selector_all("#status-counts [data-count]")
    }


# -- on both databases -----------------------------------------------------------


@TOKENS
def test_smoke_log_in_see_the_overview_and_a_job(
    app: Flask, jobs: DurableJobs, tab: Tab
) -> None:
    ids = seed(jobs)
    page = tab.open()
    page.wait_for_selector("form.login")
    assert page.is_visible("#token")
    page = tab.login(ALL_TOKEN)
    page.wait_for_selector("#status-counts")
    assert counts_on_page(page)["succeeded"] == 6
    page.click("a[href='#/jobs?status=dead']")
    page.wait_for_selector("#jobs")
    assert page.url.endswith("#/jobs?status=dead")
    page.click(f"a[href='#/jobs/{ids['dead'][0]}']")
    page.wait_for_selector("#last-error")
    assert "the image is gone" in page.inner_text("#last-error")


# -- PostgreSQL ------------------------------------------------------------------


@on_postgresql
@TOKENS
def test_overview_shows_the_stats_and_loads_nothing_from_elsewhere(
    app: Flask, jobs: DurableJobs, tab: Tab
) -> None:
    seed(jobs)
    page = tab.login(ALL_TOKEN)
    page.wait_for_selector("#throughput")
    stats = tab.api("/stats")
    counts = counts_on_page(page)
    assert counts == {**stats["by_status"], "total": stats["total"]}
    by_type = page.inner_text("#by-type")
    for job_type in stats["by_type"]:
        assert job_type in by_type
    assert page.inner_text("[data-total=succeeded]") == "6"
    assert page.inner_text("[data-total=dead]") == "3"
    assert page.inner_text("[data-fact=expired-leases]") == "0"
    tab.shot("overview")
    page.emulate_media(color_scheme="dark")
    background = page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert background != "rgb(247, 247, 248)", background  # the dark palette applies
    tab.shot("overview-dark")
    page.emulate_media(color_scheme="light")

    for route, ready in [("#/jobs", "#jobs"), ("#/queues", "h1"), ("#/periodic", "h1"),
                         ("#/batches", "h1"), ("#/processes", "h1")]:
        page.goto(f"{tab.server.url}{PREFIX}/dashboard/{route}")
        page.wait_for_selector(ready)
        page.wait_for_load_state("networkidle")
    # Every request went to this server, the token only ever in a header.
    assert tab.requests
    for request in tab.requests:
        assert request.url.startswith(tab.server.url + "/"), request.url
        assert ALL_TOKEN not in request.url
    # (the first question, before the login form, goes without one)
    api_calls = [r for r in tab.requests if "/dashboard/" not in r.url]
    sent = [r.headers.get("authorization") for r in api_calls]
    assert set(sent) == {None, f"Bearer {ALL_TOKEN}"}
    assert sent.count(None) == 1
    assert tab.context.cookies() == []
    assert page.evaluate("sessionStorage.getItem('durable_jobs_token')") == ALL_TOKEN


@on_postgresql
@TOKENS
def test_filter_the_list_and_page_through_it(app: Flask, jobs: DurableJobs, tab: Tab) -> None:
    _jobs(jobs)
    first = jobs.enqueue_many("send_email", [{"n": i} for i in range(70)], delay=60)
    jobs.enqueue_many("export_report", [{"n": i} for i in range(30)], delay=60)
    page = tab.login(ALL_TOKEN, "#/jobs")
    page.wait_for_selector("#jobs")
    page.fill("#filters input[name=job_type]", "send_email")
    page.click("#filters button[type=submit]")
    page.wait_for_function("location.hash === '#/jobs?job_type=send_email'")
    page.wait_for_selector("#list-total:has-text('70 jobs')")
    rows = page.query_selector_all("#jobs tbody tr")
    assert len(rows) == 50
    shown = [int(r.get_attribute("data-job")) for r in rows]
    assert shown == sorted(first, reverse=True)[:50]  # newest first
    tab.shot("jobs")

    page.click("#next-page")
    page.wait_for_function("location.hash.includes('job_type=send_email') && "
                           "(location.hash.includes('cursor=') || location.hash.includes('page='))")
    page.wait_for_selector("#first-page")
    rest = [int(r.get_attribute("data-job")) for r in page.query_selector_all("#jobs tbody tr")]
    assert rest == sorted(first, reverse=True)[50:]
    assert page.query_selector("#next-page") is None

    # The URL keeps the filter: reloading shows the same page.
    page.reload()
    page.wait_for_selector("#jobs")
    again = [int(r.get_attribute("data-job")) for r in page.query_selector_all("#jobs tbody tr")]
    assert again == rest
    assert page.input_value("#filters input[name=job_type]") == "send_email"


@on_postgresql
@TOKENS
def test_retry_a_dead_job_from_its_page(app: Flask, jobs: DurableJobs, tab: Tab) -> None:
    ids = seed(jobs)
    dead = ids["dead"][0]
    page = tab.login(ALL_TOKEN, f"#/jobs/{dead}")
    page.wait_for_selector("#job-actions")
    assert page.inner_text("h1 [data-status]") == "dead"
    assert page.is_visible("[data-action=retry]")
    assert page.query_selector("[data-action=cancel]") is None  # dead: nothing to cancel
    assert "null" not in page.inner_text("main")  # no progress: nothing shown for it
    assert "Discard" in page.inner_text("#last-error") or "gone" in page.inner_text("#last-error")
    tab.shot("job")
    page.click("[data-action=retry]")
    page.wait_for_selector("dialog#confirm[open]")
    page.click("#confirm-yes")
    page.wait_for_selector("h1 [data-status=pending]")
    assert status_of(app, dead) == "pending"
    assert page.query_selector("[data-action=retry]") is None
    assert page.is_visible("[data-action=cancel]")

    # A pending job's masked payload is shown; the secret is not.
    pending = ids["pending"][0]
    page.goto(f"{tab.server.url}{PREFIX}/dashboard/#/jobs/{pending}")
    page.wait_for_selector(f"h1:has-text('Job {pending} ') [data-status=pending]")
    payload = json.loads(page.inner_text("#payload"))
    assert payload["api_token"] != "hunter2" and payload["month"] == "2026-01"


@on_postgresql
@TOKENS
def test_bulk_cancel_everything_matching_a_filter(
    app: Flask, jobs: DurableJobs, tab: Tab
) -> None:
    _jobs(jobs)
    reports = jobs.enqueue_many("export_report", [{"n": i} for i in range(60)], delay=600)
    emails = jobs.enqueue_many("send_email", [{"n": i} for i in range(5)], delay=600)
    page = tab.login(ALL_TOKEN, "#/jobs?job_type=export_report&status=pending")
    page.wait_for_selector("#jobs")
    page.check("#select-page")
    page.click("#select-matching")
    page.wait_for_selector("#list-status:has-text('All 60')")
    page.click("[data-bulk=cancel]")
    page.wait_for_selector("dialog#confirm[open]")
    assert "Cancel 60 jobs" in page.inner_text("#confirm-text")
    page.click("#confirm-yes")
    page.wait_for_selector("text=60 job(s) changed")
    assert {status_of(app, i) for i in reports} == {"cancelled"}
    assert {status_of(app, i) for i in emails} == {"pending"}


@on_postgresql
@TOKENS
def test_pause_and_resume_a_queue(app: Flask, jobs: DurableJobs, tab: Tab) -> None:
    _jobs(jobs)
    jobs.enqueue_many("send_email", [{"n": i} for i in range(3)], delay=600)
    page = tab.login(ALL_TOKEN, "#/queues")
    page.wait_for_selector("#queues [data-queue=default]")
    page.click("#queues [data-queue=default] [data-toggle=pause]")
    page.wait_for_selector("#queues [data-queue=default] .badge.paused")
    queues = {q["name"]: q for q in _items(tab.api("/queues"))}
    assert queues["default"]["paused"] is True
    tab.shot("queues")
    page.click("#queues [data-queue=default] [data-toggle=resume]")
    page.wait_for_selector("#queues [data-queue=default] [data-toggle=pause]")
    queues = {q["name"]: q for q in _items(tab.api("/queues"))}
    assert queues["default"]["paused"] is False


def _items(data: t.Any) -> list[dict[str, t.Any]]:
    return data if isinstance(data, list) else data["items"]


@on_postgresql
@TOKENS
def test_the_read_only_role_sees_no_write_buttons(
    app: Flask, jobs: DurableJobs, tab: Tab
) -> None:
    ids = seed(jobs)
    page = tab.login(READ_TOKEN, f"#/jobs/{ids['dead'][0]}")
    page.wait_for_selector("#payload")
    assert page.inner_text("#who") == "Read only"
    assert page.query_selector("#job-actions") is None
    assert page.query_selector_all("[data-action]") == []
    page.goto(f"{tab.server.url}{PREFIX}/dashboard/#/jobs")
    page.wait_for_selector("#jobs")
    assert page.query_selector("#select-page") is None
    assert not page.is_visible("[data-bulk=retry]")
    page.goto(f"{tab.server.url}{PREFIX}/dashboard/#/queues")
    page.wait_for_selector("h1")
    page.wait_for_load_state("networkidle")
    assert page.query_selector("[data-toggle]") is None
    # The API decides: a write sent anyway is refused.
    status = page.evaluate(
        """async ([api, id, token]) => (await fetch(api + "/" + id + "/retry", {
            method: "POST", body: "{}", headers: {"Content-Type": "application/json",
            "Authorization": "Bearer " + token}})).status""",
        [PREFIX, ids["dead"][0], READ_TOKEN],
    )
    assert status == 403
    assert status_of(app, ids["dead"][0]) == "dead"


@on_postgresql
@TOKENS
def test_a_payload_holding_markup_stays_text(app: Flask, jobs: DurableJobs, tab: Tab) -> None:
    _jobs(jobs)
    job = jobs.enqueue("send_email", {"html": XSS, XSS: "key"}, delay=600)
    page = tab.login(ALL_TOKEN, "#/jobs")
    page.wait_for_selector(f"#jobs [data-job='{job.id}']")
    assert "<script>window.pwned = 1</script>" in page.inner_text(
        f"#jobs [data-job='{job.id}'] .payload"
    )
    page.click(f"a[href='#/jobs/{job.id}']")
    page.wait_for_selector("#payload")
    assert json.loads(page.inner_text("#payload")) == {"html": XSS, XSS: "key"}
    assert page.query_selector("main img") is None
    assert page.query_selector("main script") is None
    assert page.evaluate("typeof window.pwned") == "undefined"
    assert not any("/x" in r.url for r in tab.requests)  # the <img> never loaded


@on_postgresql
@pytest.mark.config(SECRET_KEY="browser-test")
def test_host_app_login_works_and_a_cross_site_form_post_is_refused(
    app: Flask, jobs: DurableJobs, chromium: t.Any, tmp_path: Path
) -> None:
    ids = seed(jobs)

    @app.get("/login")
    def login() -> str:
        session["admin"] = True
        return "logged in"

    jobs.admin_authorizer(lambda: session.get("admin") is True)
    target = Server(app)
    # Another origin (another port: same site, other origin) with a form aimed at the API.
    evil = Flask("evil")
    dead = ids["dead"][0]

    @evil.get("/")
    def form() -> str:
        return (f'<form id="f" method="post" action="{target.url}{PREFIX}/{dead}/retry">'
                '<input name="x" value="1"></form>')

    other = Server(evil)
    context = chromium.new_context(viewport={"width": 1280, "height": 800})
    try:
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(target.url + PREFIX + "/dashboard/")
        page.wait_for_selector("form.login")  # not logged in to the host app yet
        page.goto(target.url + "/login")
        page.goto(target.url + PREFIX + "/dashboard/#/jobs/" + str(dead))
        page.wait_for_selector("[data-action=retry]")  # no token: the host app's login
        assert page.evaluate("sessionStorage.length") == 0
        assert context.cookies()  # the host app's session cookie

        page.goto(other.url + "/")
        with page.expect_navigation():
            page.evaluate("document.getElementById('f').submit()")
        assert "403" in page.content() or "forbidden" in page.content()
        body = json.loads(page.inner_text("body"))
        assert body["error"]["code"] == "forbidden"
        assert status_of(app, dead) == "dead"

        # The dashboard's own write (JSON, same origin) goes through.
        page.goto(target.url + PREFIX + "/dashboard/#/jobs/" + str(dead))
        page.click("[data-action=retry]")
        page.click("#confirm-yes")
        page.wait_for_selector("h1 [data-status=pending]")
        assert status_of(app, dead) == "pending"
        assert errors == []
    finally:
        context.close()
        other.close()
        target.close()


@on_postgresql
@TOKENS
def test_screenshots_of_the_other_pages(app: Flask, jobs: DurableJobs, tab: Tab) -> None:
    ids = seed(jobs)
    jobs.periodic("0 3 * * *", "export_report", key="nightly-report",
                  payload={"month": "current"}, timezone="Europe/Paris")
    jobs.periodic("*/15 * * * *", "send_email", key="digest")
    state = get_state(app)
    tick(state)  # the first tick sets each schedule's watermark
    move_time(minutes=16)
    tick(state)  # the digest fires once
    reset_time()
    batch = jobs.enqueue_batch(
        [("send_email", {"to": "a@example.com"}), ("send_email", {"to": "b@example.com"})]
    )
    page = tab.login(ALL_TOKEN, "#/batches?id=" + batch.id)
    page.wait_for_selector("#batch")
    assert re.search(r"\b2 job\(s\)", page.inner_text("#batch"))
    tab.shot("batches")
    page.goto(f"{tab.server.url}{PREFIX}/dashboard/#/periodic")
    page.wait_for_selector("h1:has-text('Recurring')")
    page.wait_for_selector("#schedules [data-schedule=nightly-report]")
    row = page.inner_text("#schedules [data-schedule=nightly-report]")
    assert "0 3 * * *" in row and "Europe/Paris" in row
    page.wait_for_selector("#schedules [data-schedule=digest] .last-job [data-status=pending]")
    tab.shot("periodic")
    jobs.start()  # this process now works the queue and registers itself
    wait_for("the process record", lambda: _items(tab.api("/processes")), timeout=20)
    page.goto(f"{tab.server.url}{PREFIX}/dashboard/#/processes")
    page.wait_for_selector("#processes")
    assert str(os.getpid()) in page.inner_text("#processes")
    tab.shot("processes")
    jobs.stop()
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(f"{tab.server.url}{PREFIX}/dashboard/#/jobs/{ids['dead'][0]}")
    page.wait_for_selector("#payload")
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"the job page is {width} px wide at phone width"
    tab.shot("job-phone")


@on_postgresql
@TOKENS
def test_a_running_job_shows_its_progress_and_takes_a_cancel_request(
    app: Flask, jobs: DurableJobs, tab: Tab
) -> None:
    from flask_durable_jobs import current_job
    release = threading.Event()

    @jobs.handler("export_posts", timeout=60)
    def export_posts(payload: dict[str, t.Any]) -> None:
        job = current_job()
        job.progress(0.4, message="40 of 100 posts", data={"done": 40})
        release.wait(30)
        job.check_cancelled()

    job_id = jobs.enqueue("export_posts", {}).id

    def work() -> None:
        with app.app_context():
            jobs.process_due()

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    try:
        page = tab.login(ALL_TOKEN, f"#/jobs/{job_id}")
        page.wait_for_selector("#progress", timeout=15_000)  # the page refreshes a running job
        assert page.get_attribute("#progress progress", "value") == "0.4"
        assert "40 of 100 posts" in page.inner_text("#progress")
        assert page.query_selector("[data-action=delete]") is None  # running
        page.click("[data-action=cancel]")
        page.click("#confirm-yes")
        page.wait_for_selector("text=Cancel requested")
        assert page.query_selector("[data-action=cancel]") is None
    finally:
        release.set()
        worker.join(30)
    assert status_of(app, job_id) == "cancelled"


@on_postgresql
@TOKENS
def test_the_overview_refreshes_while_visible_and_pauses_while_hidden(
    app: Flask, jobs: DurableJobs, tab: Tab
) -> None:
    _jobs(jobs)
    jobs.enqueue("send_email", {}, delay=600)
    page = tab.login(ALL_TOKEN)
    page.wait_for_selector("[data-count=pending]:text-is('1')")
    jobs.enqueue("send_email", {}, delay=600)
    page.wait_for_selector("[data-count=pending]:text-is('2')", timeout=12_000)

    def set_visibility(state: str) -> None:
        page.evaluate(
            """state => {
                Object.defineProperty(document, "visibilityState",
                                      {value: state, configurable: true});
                document.dispatchEvent(new Event("visibilitychange"));
            }""",
            state,
        )

    set_visibility("hidden")
    asked = len([r for r in tab.requests if r.url.endswith("/stats")])
    jobs.enqueue("send_email", {}, delay=600)
    page.wait_for_timeout(7_000)  # more than one refresh period
    assert len([r for r in tab.requests if r.url.endswith("/stats")]) == asked
    assert page.inner_text("[data-count=pending]") == "2"
    set_visibility("visible")  # refreshes at once
    page.wait_for_selector("[data-count=pending]:text-is('3')", timeout=3_000)
