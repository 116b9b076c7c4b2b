"""Who may do what on the admin API: cross-site writes and read-only roles.

The cross-site tests play a logged-in operator's browser: the host app's
session cookie, and an authorizer that reads the Flask session (what the docs
recommend). Every refused request below is one a page on another site could
make that browser send; each must be refused whatever the authorizer says,
and change nothing.
"""

from __future__ import annotations

import io
import logging
import typing as t

import pytest
from flask import Flask, session

from flask_durable_jobs import ConfigError, Discard, DurableJobs, admin, config

PREFIX = "/admin/jobs"
TOKEN = "full-admin-token"
READ_TOKEN = "read-only-token"
EVIL = "https://evil.example"

with_session = pytest.mark.config(SECRET_KEY="session-signing-key")


def _discard(payload: dict[str, t.Any]) -> t.NoReturn:
    raise Discard("gone")


class Jobs(t.NamedTuple):
    dead: int  # retry would make it pending
    pending: int  # cancel or delete would change it
    ext: DurableJobs

    def snapshot(self) -> dict[int, str | None]:
        return {
            job_id: getattr(self.ext.get(job_id), "status", None)
            for job_id in (self.dead, self.pending)
        }


@pytest.fixture
def seeded(app: Flask, jobs: DurableJobs) -> Jobs:
    jobs.handler("t.ok")(lambda payload: payload)
    jobs.handler("t.discard")(_discard)
    dead = jobs.enqueue("t.discard", {}).id
    jobs.process_due()
    pending = jobs.enqueue("t.ok", {"n": 1}).id
    found = Jobs(dead, pending, jobs)
    assert found.snapshot() == {dead: "dead", pending: "pending"}
    return found


@pytest.fixture
def browser(app: Flask, jobs: DurableJobs, seeded: Jobs) -> t.Any:
    """A logged-in operator's browser: the host app's session cookie."""

    @app.post("/login")
    def login() -> str:
        session["admin"] = True
        return "logged in"

    @jobs.admin_authorizer
    def from_session() -> bool:
        return session.get("admin") is True

    client = app.test_client()
    assert client.get(f"{PREFIX}/stats").status_code == 403  # not logged in yet
    assert client.post("/login").status_code == 200
    return client


def writes(seeded: Jobs) -> list[tuple[str, str]]:
    """Every write route, aimed at a job it would change."""
    return [
        ("POST", f"{PREFIX}/{seeded.dead}/retry"),
        ("POST", f"{PREFIX}/{seeded.pending}/cancel"),
        ("DELETE", f"{PREFIX}/{seeded.pending}"),
        ("POST", f"{PREFIX}/process"),  # would run the pending job
    ]


def assert_forbidden(response: t.Any) -> str:
    assert response.status_code == 403, response.get_data(as_text=True)
    body = response.get_json()
    assert set(body) == {"error"} and body["error"]["code"] == "forbidden"
    message: str = body["error"]["message"]
    return message


# What a page on another site can make a browser send, with the browser's cookie
# (functions: a request body can be read once).
CROSS_SITE: dict[str, t.Callable[[], dict[str, t.Any]]] = {
    "form from another site": lambda: {"data": {"limit": "1"}, "headers": {"Origin": EVIL}},
    "form, no Origin": lambda: {"data": {"limit": "1"}},
    "multipart form": lambda: {"data": {"file": (io.BytesIO(b"{}"), "x.json")}},
    "text/plain": lambda: {"data": '{"limit": 1}', "content_type": "text/plain"},
    "text/plain with a charset": lambda: {
        "data": '{"limit": 1}', "content_type": "Text/Plain; charset=utf-8"
    },
    "no body at all": lambda: {},
    "JSON from another origin": lambda: {"json": {}, "headers": {"Origin": EVIL}},
    "JSON from another port": lambda: {
        "json": {}, "headers": {"Origin": "http://localhost:8080"}
    },
    "JSON from an opaque origin": lambda: {"json": {}, "headers": {"Origin": "null"}},
    "JSON, Sec-Fetch-Site cross-site": lambda: {
        "json": {}, "headers": {"Sec-Fetch-Site": "cross-site"}
    },
    "JSON, Sec-Fetch-Site same-site": lambda: {
        "json": {}, "headers": {"Sec-Fetch-Site": "same-site"}
    },
}


@with_session
@pytest.mark.parametrize("attack", sorted(CROSS_SITE))
def test_cross_site_writes_with_the_session_cookie_are_refused(
    browser: t.Any, seeded: Jobs, attack: str
) -> None:
    before = seeded.snapshot()
    for method, path in writes(seeded):
        response = browser.open(path, method=method, **CROSS_SITE[attack]())
        assert_forbidden(response)
    assert seeded.snapshot() == before


@with_session
def test_the_refusals_say_why(browser: t.Any, seeded: Jobs) -> None:
    path = f"{PREFIX}/{seeded.dead}/retry"
    assert "Origin" in assert_forbidden(browser.post(path, json={}, headers={"Origin": EVIL}))
    assert "Sec-Fetch-Site" in assert_forbidden(
        browser.post(path, json={}, headers={"Sec-Fetch-Site": "cross-site"})
    )
    assert "text/plain" in assert_forbidden(browser.post(path, data="x", content_type="text/plain"))
    assert "application/json" in assert_forbidden(browser.post(path))


@with_session
def test_same_origin_json_writes_with_the_session_cookie_work(
    browser: t.Any, seeded: Jobs
) -> None:
    """What the host app's own pages send with fetch(): JSON, from this origin."""
    own = {"Origin": "http://localhost", "Sec-Fetch-Site": "same-origin"}
    response = browser.post(f"{PREFIX}/{seeded.dead}/retry", json={}, headers=own)
    assert response.status_code == 200 and response.get_json()["status"] == "pending"
    response = browser.post(f"{PREFIX}/process", json={"limit": 1}, headers=own)
    assert response.status_code == 200 and response.get_json()["claimed"] == 1
    # Older browsers send neither header; the JSON content type still stands.
    response = browser.delete(f"{PREFIX}/{seeded.dead}", content_type="application/json")
    assert response.status_code == 204
    assert seeded.ext.get(seeded.dead) is None


@with_session
def test_cross_site_reads_are_answered(browser: t.Any) -> None:
    """A GET changes nothing, and the browser never lets the other site read it."""
    cross_site = {"Origin": EVIL, "Sec-Fetch-Site": "cross-site"}
    response = browser.get(f"{PREFIX}/stats", headers=cross_site)
    assert response.status_code == 200


@pytest.mark.config(DURABLE_JOBS_ADMIN_TOKEN=TOKEN)
def test_a_token_write_needs_no_body(client: t.Any, seeded: Jobs) -> None:
    """``curl -X POST -H 'Authorization: Bearer ...'``: no body, no content type."""
    auth = {"Authorization": f"Bearer {TOKEN}"}
    response = client.post(f"{PREFIX}/{seeded.dead}/retry", headers=auth)
    assert response.status_code == 200 and response.get_json()["status"] == "pending"
    assert client.post(f"{PREFIX}/process", headers=auth).get_json()["claimed"] == 2


@pytest.mark.config(DURABLE_JOBS_ADMIN_TOKEN=TOKEN)
@pytest.mark.parametrize(
    "attack",
    ["form from another site", "text/plain", "JSON from another origin",
     "JSON, Sec-Fetch-Site cross-site"],
)
def test_a_token_does_not_excuse_a_cross_site_write(
    client: t.Any, seeded: Jobs, attack: str
) -> None:
    before = seeded.snapshot()
    for method, path in writes(seeded):
        request = CROSS_SITE[attack]()
        headers = {**request.get("headers", {}), "Authorization": f"Bearer {TOKEN}"}
        assert_forbidden(client.open(path, method=method, **{**request, "headers": headers}))
    assert seeded.snapshot() == before


@pytest.mark.config(DURABLE_JOBS_ADMIN_TOKEN=TOKEN)
def test_process_reads_only_a_json_body(client: t.Any, seeded: Jobs) -> None:
    """A body that does not say it is JSON is not parsed as JSON."""
    auth = {"Authorization": f"Bearer {TOKEN}"}
    response = client.post(f"{PREFIX}/process", headers=auth, data='{"limit": 1}',
                           content_type="application/octet-stream")
    assert response.status_code == 400
    assert "application/json" in response.get_json()["error"]["message"]
    assert seeded.snapshot()[seeded.pending] == "pending"


# -- read-only callers -------------------------------------------------------------------


def assert_reads_only(client: t.Any, seeded: Jobs, **request: t.Any) -> None:
    for path in (f"{PREFIX}/stats", PREFIX, f"{PREFIX}/{seeded.dead}", f"{PREFIX}/health",
                 f"{PREFIX}/openapi.json"):
        assert client.get(path, **request).status_code == 200, path
    assert client.head(f"{PREFIX}/stats", **request).status_code == 200
    assert client.options(f"{PREFIX}/{seeded.dead}", **request).status_code == 204
    assert client.get(f"{PREFIX}/nope", **request).status_code == 404
    before = seeded.snapshot()
    for method, path in writes(seeded):
        message = assert_forbidden(client.open(path, method=method, json={}, **request))
        assert "may only read" in message
    assert seeded.snapshot() == before


@pytest.mark.config(DURABLE_JOBS_ADMIN_READ_TOKEN=READ_TOKEN)
def test_read_token_reads_only(client: t.Any, seeded: Jobs) -> None:
    assert_reads_only(client, seeded, headers={"Authorization": f"Bearer {READ_TOKEN}"})
    response = client.get(f"{PREFIX}/stats")
    assert response.status_code == 401 and response.headers["WWW-Authenticate"].startswith("Bearer")
    assert client.get(f"{PREFIX}/stats", headers={"Authorization": "Bearer x"}).status_code == 401


@pytest.mark.config(DURABLE_JOBS_ADMIN_TOKEN=TOKEN, DURABLE_JOBS_ADMIN_READ_TOKEN=READ_TOKEN)
def test_both_tokens(client: t.Any, seeded: Jobs) -> None:
    assert_reads_only(client, seeded, headers={"Authorization": f"Bearer {READ_TOKEN}"})
    full = {"Authorization": f"Bearer {TOKEN}"}
    assert client.post(f"{PREFIX}/{seeded.dead}/retry", headers=full).status_code == 200
    wrong = {"Authorization": "Bearer x"}
    assert client.post(f"{PREFIX}/{seeded.dead}/retry", headers=wrong).status_code == 401


def test_authorizer_may_grant_reads_only(
    app: Flask, client: t.Any, jobs: DurableJobs, seeded: Jobs
) -> None:
    jobs.admin_authorizer(lambda: "read")
    assert_reads_only(client, seeded)


@pytest.mark.parametrize("verdict", ["READ", "read ", "all", "write", b"read"])
def test_only_the_exact_words_grant(
    app: Flask, client: t.Any, jobs: DurableJobs, verdict: object
) -> None:
    jobs.admin_authorizer(lambda: verdict)
    assert_forbidden(client.get(f"{PREFIX}/stats"))


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"DURABLE_JOBS_ADMIN_READ_TOKEN": ""}, "DURABLE_JOBS_ADMIN_READ_TOKEN"),
        ({"DURABLE_JOBS_ADMIN_READ_TOKEN": 5}, "DURABLE_JOBS_ADMIN_READ_TOKEN"),
        (
            {"DURABLE_JOBS_ADMIN_TOKEN": "same", "DURABLE_JOBS_ADMIN_READ_TOKEN": "same"},
            "must differ",
        ),
    ],
)
def test_read_token_config_is_checked(keys: dict[str, t.Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config.load(keys)


def test_a_read_token_alone_enables_the_api(caplog: pytest.LogCaptureFixture) -> None:
    app = Flask("read_only")
    settings = config.load({"DURABLE_JOBS_ADMIN_READ_TOKEN": READ_TOKEN})
    with caplog.at_level(logging.WARNING, logger="flask_durable_jobs"):
        admin.register(app, DurableJobs(), settings)
    assert [r for r in caplog.records if r.name == "flask_durable_jobs"] == []
