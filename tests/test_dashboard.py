"""The dashboard's server side: where it is served, who gets it, its headers,
and the read routes it adds to the admin API (whoami, throughput).

The pages themselves are driven in a real browser in test_dashboard_browser.py.
"""

from __future__ import annotations

import datetime as dt
import typing as t

import pytest
from flask import Flask, session

from flask_durable_jobs import DurableJobs
from flask_durable_jobs.models import DEAD, RETRYING, SUCCEEDED

PREFIX = "/admin/jobs"
DASH = PREFIX + "/dashboard/"
ALL = {"Authorization": "Bearer all-token"}
READ = {"Authorization": "Bearer read-token"}
TOKENS = pytest.mark.config(
    DURABLE_JOBS_ADMIN_TOKEN="all-token", DURABLE_JOBS_ADMIN_READ_TOKEN="read-token"
)


def assert_secure_headers(response: t.Any) -> None:
    csp = response.headers["Content-Security-Policy"]
    directives = {part.split()[0]: part.split()[1:] for part in csp.split(";") if part.strip()}
    assert directives["default-src"] == ["'self'"]
    assert directives["script-src"] == ["'self'"]  # no 'unsafe-inline', no other origin
    assert directives["frame-ancestors"] == ["'none'"]
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "same-origin"


def test_closed_with_a_403_page_when_nothing_is_configured(client: t.Any) -> None:
    response = client.get(DASH)
    assert response.status_code == 403
    assert response.mimetype == "text/html"
    assert "DURABLE_JOBS_ADMIN_TOKEN" in response.get_data(as_text=True)
    assert_secure_headers(response)


@TOKENS
def test_page_is_served_with_security_headers_and_no_inline_script(client: t.Any) -> None:
    response = client.get(DASH)
    assert response.status_code == 200 and response.mimetype == "text/html"
    assert_secure_headers(response)
    page = response.get_data(as_text=True)
    assert f'data-api="{PREFIX}"' in page
    # every script is a file of this origin; none is written into the page
    assert '<script type="module" src="static/app.js"></script>' in page
    assert page.count("<script") == 1
    assert "http://" not in page and "https://" not in page
    for name in ("app.js", "api.js", "dom.js", "jobs.js", "job.js", "pages.js", "style.css"):
        with client.get(DASH + "static/" + name) as asset:
            assert asset.status_code == 200, name
            assert_secure_headers(asset)
            text = asset.get_data(as_text=True)
        assert "innerHTML" not in text and "insertAdjacentHTML" not in text, name
        assert "http://" not in text.replace("http://www.w3.org/2000/svg", "")
    with client.get(DASH + "static/app.js") as script:
        assert script.mimetype in ("text/javascript", "application/javascript")


@TOKENS
def test_without_the_slash_redirects_to_the_page(client: t.Any) -> None:
    response = client.get(PREFIX + "/dashboard")
    assert response.status_code == 308
    assert response.headers["Location"].endswith(DASH)
    assert client.get(DASH + "static/nope.js").status_code == 404


@TOKENS
@pytest.mark.config(DURABLE_JOBS_DASHBOARD=False)
def test_switched_off_the_dashboard_is_not_served(client: t.Any) -> None:
    response = client.get(DASH, headers=ALL)
    assert response.status_code == 404
    assert response.get_json()["error"]["code"] == "not_found"  # the API's own 404
    assert client.get(PREFIX + "/stats", headers=ALL).status_code == 200


def test_the_setting_must_be_a_bool(database_url: str) -> None:
    from flask_sqlalchemy import SQLAlchemy

    from flask_durable_jobs.errors import ConfigError

    app = Flask("bad")
    app.config.update(SQLALCHEMY_DATABASE_URI=database_url, DURABLE_JOBS_DASHBOARD="yes")
    db = SQLAlchemy(app)
    with pytest.raises(ConfigError, match="DURABLE_JOBS_DASHBOARD"):
        DurableJobs().init_app(app, db=db)


@TOKENS
def test_whoami_names_the_role(client: t.Any) -> None:
    assert client.get(PREFIX + "/whoami", headers=ALL).get_json() == {
        "role": "all", "via": "token"
    }
    assert client.get(PREFIX + "/whoami", headers=READ).get_json() == {
        "role": "read", "via": "token"
    }
    assert client.get(PREFIX + "/whoami").status_code == 401
    wrong = client.get(PREFIX + "/whoami", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401


@pytest.mark.config(SECRET_KEY="test")
@pytest.mark.parametrize("verdict, role", [(True, "all"), ("read", "read")])
def test_whoami_through_the_authorizer(
    app: Flask, jobs: DurableJobs, client: t.Any, verdict: t.Any, role: str
) -> None:
    @app.post("/login")
    def login() -> str:
        session["admin"] = True
        return "ok"

    asked: list[int] = []

    def authorizer() -> t.Any:
        asked.append(1)
        return verdict if session.get("admin") else False

    jobs.admin_authorizer(authorizer)
    assert client.get(PREFIX + "/whoami").status_code == 403
    client.post("/login")
    asked.clear()
    assert client.get(PREFIX + "/whoami").get_json() == {"role": role, "via": "authorizer"}
    assert len(asked) == 1  # the access check's answer, not asked again


def _finish(app: Flask, job_id: int, status: str, at: dt.datetime) -> None:
    """Put a job in ``status`` as if it ended (or failed into a retry) at ``at``."""
    table = app.extensions["durable_jobs"].table
    values: dict[str, t.Any] = {"status": status, "updated_at": at}
    values["finished_at"] = None if status == RETRYING else at
    db = app.extensions["sqlalchemy"]
    with db.engine.begin() as conn:
        conn.execute(table.update().where(table.c.id == job_id).values(**values))


@TOKENS
def test_throughput_counts_per_minute(app: Flask, jobs: DurableJobs, client: t.Any) -> None:
    jobs.handler("work")(lambda payload: None)
    now = dt.datetime.now(dt.timezone.utc)
    minute = now.replace(second=0, microsecond=0)
    plan = [
        (SUCCEEDED, minute + dt.timedelta(seconds=1)),
        (SUCCEEDED, minute + dt.timedelta(seconds=2)),
        (DEAD, minute + dt.timedelta(seconds=3)),
        (SUCCEEDED, minute - dt.timedelta(minutes=5, seconds=-10)),
        (RETRYING, minute - dt.timedelta(minutes=5, seconds=-20)),
        (SUCCEEDED, minute - dt.timedelta(minutes=90)),  # outside the hour
    ]
    for status, at in plan:
        _finish(app, jobs.enqueue("work", {}).id, status, at)
    jobs.enqueue("work", {})  # pending: not counted

    answer = client.get(PREFIX + "/throughput", headers=READ).get_json()
    buckets = answer["buckets"]
    assert answer["minutes"] == 60 and len(buckets) == 60
    assert dt.datetime.fromisoformat(buckets[-1]["minute"]) == minute
    assert dt.datetime.fromisoformat(buckets[0]["minute"]) == minute - dt.timedelta(minutes=59)
    assert buckets[-1] == {"minute": minute.isoformat(), "succeeded": 2, "retried": 0, "dead": 1}
    five_ago = buckets[-6]
    assert (five_ago["succeeded"], five_ago["retried"], five_ago["dead"]) == (1, 1, 0)
    assert answer["totals"] == {"succeeded": 3, "retried": 1, "dead": 1}

    wider = client.get(PREFIX + "/throughput?minutes=120", headers=READ).get_json()
    assert wider["totals"]["succeeded"] == 4 and len(wider["buckets"]) == 120
    for bad in ("0", "1441", "x", "-1"):
        response = client.get(PREFIX + f"/throughput?minutes={bad}", headers=READ)
        assert response.status_code == 400 and "minutes" in response.get_json()["error"]["message"]
