"""The admin JSON API, on SQLite and PostgreSQL: routes, errors, masking, access."""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import typing as t

import pytest
import sqlalchemy as sa
from flask import Flask, abort, request
from flask.testing import FlaskClient
from flask_sqlalchemy import SQLAlchemy

from flask_durable_jobs import STATUSES, Discard, DurableJobs, admin, listing, masking
from flask_durable_jobs.masking import MASK
from flask_durable_jobs.models import TABLE_NAME

PREFIX = "/admin/jobs"
TOKEN = "s3cret-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SECRETS = {
    "to": "a@example.com",
    "password": "hunter2",
    "smtp": {"API_KEY": "k-1", "servers": [{"host": "mx", "authToken": "t-1"}]},
    "headers": [{"Authorization": "Basic abc"}, {"x-client-secret": "s-1"}],
}
MASKED = {
    "to": "a@example.com",
    "password": MASK,
    "smtp": {"API_KEY": MASK, "servers": [{"host": "mx", "authToken": MASK}]},
    "headers": [{"Authorization": MASK}, {"x-client-secret": MASK}],
}

# Every route, with an id that exists in the tests that use this list, and
# what it answers there: job 1 is pending.
ROUTES = [
    ("GET", f"{PREFIX}/stats", 200),
    ("GET", PREFIX, 200),
    ("GET", f"{PREFIX}/", 200),
    ("GET", f"{PREFIX}/1", 200),
    ("POST", f"{PREFIX}/1/retry", 409),  # pending: refused, past the access check
    ("POST", f"{PREFIX}/1/cancel", 200),
    ("DELETE", f"{PREFIX}/1", 204),
    ("POST", f"{PREFIX}/process", 200),
    ("GET", f"{PREFIX}/openapi.json", 200),
    ("GET", f"{PREFIX}/health", 200),
    ("GET", f"{PREFIX}/periodic", 200),
    ("GET", f"{PREFIX}/batches/b-1", 404),
    ("GET", f"{PREFIX}/no/such/route", 404),
]


def _fail(payload: dict[str, t.Any]) -> t.NoReturn:
    raise RuntimeError(payload.get("message", "boom"))


def _discard(payload: dict[str, t.Any]) -> t.NoReturn:
    raise Discard("not worth retrying")


@pytest.fixture
def handlers(jobs: DurableJobs) -> DurableJobs:
    jobs.handler("t.ok")(lambda payload: payload)
    jobs.handler("t.fail", max_attempts=2)(_fail)
    jobs.handler("t.discard", queue="slow")(_discard)
    return jobs


class JsonClient(FlaskClient):
    """Sends ``Content-Type: application/json`` unless the request says otherwise,
    as the host app's own pages do (a write the authorizer grants needs it)."""

    def open(self, *args: t.Any, **kwargs: t.Any) -> t.Any:
        if not {"json", "data", "content_type"} & kwargs.keys():
            headers = kwargs.get("headers") or {}
            kwargs["headers"] = {"Content-Type": "application/json", **headers}
        return super().open(*args, **kwargs)


@pytest.fixture
def api(app: Flask, handlers: DurableJobs) -> t.Any:
    """A client the admin API lets in (through an authorizer), handlers registered."""
    handlers.admin_authorizer(lambda: True)
    app.test_client_class = JsonClient
    return app.test_client()


def assert_error(response: t.Any, status: int, code: str) -> str:
    """Check the JSON error body; return its message."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.is_json
    body = response.get_json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message"}
    assert body["error"]["code"] == code
    message: str = body["error"]["message"]
    assert message
    return message


def make_job(jobs: DurableJobs, db: SQLAlchemy, status: str, **options: t.Any) -> int:
    """A job in ``status``, reached the way production reaches it where possible."""
    if status in ("pending", "cancelled", "running"):
        job_id = jobs.enqueue("t.ok", {"n": 1}, **options).id
        if status == "cancelled":
            jobs.cancel(job_id)
        elif status == "running":
            # A claimed job whose worker is busy; a live handler thread would
            # make the test depend on timing.
            table = db.metadata.tables[TABLE_NAME]
            now = dt.datetime.now(dt.timezone.utc)
            db.session.execute(
                sa.update(table)
                .where(table.c.id == job_id)
                .values(
                    status="running", started_at=now, lease_expires_at=now + dt.timedelta(hours=1)
                )
            )
            db.session.commit()
        return job_id
    job_type = {"succeeded": "t.ok", "retrying": "t.fail", "dead": "t.discard"}[status]
    # First in line and alone in the batch, so other due jobs stay as they are.
    job_id = jobs.enqueue(job_type, {"n": 1}, priority=-100, **options).id
    jobs.process_due(limit=1)
    job = jobs.get(job_id)
    assert job is not None and job.status == status
    return job_id


# -- stats -------------------------------------------------------------------------


def test_stats(api: t.Any, jobs: DurableJobs, db: SQLAlchemy) -> None:
    make_job(jobs, db, "pending")
    due = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=10)
    make_job(jobs, db, "pending", run_at=due)
    make_job(jobs, db, "dead")
    response = api.get(f"{PREFIX}/stats")
    assert response.status_code == 200
    body = response.get_json()
    assert set(body) == {"by_status", "by_type", "total", "oldest_due_age_seconds", "unhandled"}
    assert body["by_status"] == {**dict.fromkeys(STATUSES, 0), "pending": 2, "dead": 1}
    assert body["by_type"]["t.ok"]["pending"] == 2
    assert body["by_type"]["t.discard"]["dead"] == 1
    assert body["total"] == 3
    assert 600 <= body["oldest_due_age_seconds"] < 660  # the job due 10 minutes ago
    assert body["unhandled"] == {}


# -- list --------------------------------------------------------------------------


def test_list_newest_first_with_pages(api: t.Any, jobs: DurableJobs) -> None:
    ids = [jobs.enqueue("t.ok", {"n": n}).id for n in range(5)]
    first = api.get(f"{PREFIX}?per_page=2").get_json()
    assert [item["id"] for item in first["items"]] == ids[::-1][:2]
    assert (first["page"], first["per_page"], first["total"]) == (1, 2, 5)
    last = api.get(f"{PREFIX}?per_page=2&page=3").get_json()
    assert [item["id"] for item in last["items"]] == [ids[0]]
    beyond = api.get(f"{PREFIX}?per_page=2&page=4").get_json()
    assert beyond["items"] == [] and beyond["total"] == 5


def test_list_defaults_and_trailing_slash(api: t.Any, jobs: DurableJobs) -> None:
    job = jobs.enqueue("t.ok", {"n": 1})
    for path in (PREFIX, f"{PREFIX}/"):
        response = api.get(path)
        assert response.status_code == 200
        body = response.get_json()
        assert (body["page"], body["per_page"], body["total"]) == (1, 50, 1)
        detail = api.get(f"{PREFIX}/{job.id}").get_json()
        # A small payload and result are shown whole in the list, as in the detail.
        assert body["items"] == [{**detail, "payload_truncated": False, "result_truncated": False}]


def test_list_filters(api: t.Any, jobs: DurableJobs, db: SQLAlchemy) -> None:
    pending = make_job(jobs, db, "pending")
    other_queue = make_job(jobs, db, "pending", queue="mail")
    dead = make_job(jobs, db, "dead")
    succeeded = make_job(jobs, db, "succeeded")

    def ids(query: str) -> list[int]:
        response = api.get(f"{PREFIX}?{query}")
        assert response.status_code == 200
        body = response.get_json()
        assert body["total"] == len(body["items"])
        return [item["id"] for item in body["items"]]

    assert ids("status=pending") == [other_queue, pending]
    assert ids("status=dead") == [dead]
    assert ids("status=running") == []
    assert ids("job_type=t.ok") == [succeeded, other_queue, pending]
    assert ids("job_type=t.discard") == [dead]
    assert ids("queue=mail") == [other_queue]
    assert ids("queue=slow") == [dead]
    assert ids("status=pending&queue=default&job_type=t.ok") == [pending]
    assert ids("job_type=nothing.like.this") == []


@pytest.mark.parametrize(
    ("query", "name"),
    [
        ("page=0", "page"),
        ("page=-1", "page"),
        ("page=abc", "page"),
        ("page=1.5", "page"),
        ("page=+2", "page"),
        ("page=%201", "page"),
        ("page=" + "9" * 40, "page"),
        ("per_page=0", "per_page"),
        ("per_page=201", "per_page"),
        ("per_page=", "per_page"),
        ("per_page=ten", "per_page"),
        ("job_type=", "job_type"),
        ("queue=a%00b", "queue"),
        ("status=", "status"),
    ],
)
def test_list_bad_parameter(api: t.Any, query: str, name: str) -> None:
    message = assert_error(api.get(f"{PREFIX}?{query}"), 400, "bad_request")
    assert message.startswith(name + " ")


def test_list_per_page_bounds(api: t.Any) -> None:
    assert api.get(f"{PREFIX}?per_page=1").status_code == 200
    assert api.get(f"{PREFIX}?per_page=200").get_json()["per_page"] == 200


def test_list_unknown_status_names_the_valid_ones(api: t.Any) -> None:
    message = assert_error(api.get(f"{PREFIX}?status=finished"), 400, "bad_request")
    assert "status" in message and "'finished'" in message
    for status in STATUSES:
        assert status in message


# -- one job -----------------------------------------------------------------------


def test_get_job(api: t.Any, jobs: DurableJobs) -> None:
    job_id = jobs.enqueue("t.ok", {"n": 7}, priority=3, idempotency_key="k-7").id
    response = api.get(f"{PREFIX}/{job_id}")
    assert response.status_code == 200
    body = response.get_json()
    stored = jobs.get(job_id)
    assert stored is not None and body == stored.to_dict()
    assert body["status"] == "pending" and body["priority"] == 3


@pytest.mark.parametrize(
    ("raw_id", "status"),
    [
        ("424242", 404),  # well-formed, no such job
        (str(2**63 - 1), 404),  # the largest id there can be
        (str(2**63), 400),
        ("9" * 30, 400),
        ("9" * 5000, 400),  # longer than int() accepts by default
        ("0", 400),
        ("-1", 404),
        ("abc", 404),
        ("1.5", 404),
        ("%C2%B2", 404),  # a superscript two: a digit to str.isdigit, not to us
    ],
)
def test_get_bad_or_unknown_id(api: t.Any, raw_id: str, status: int) -> None:
    code = "not_found" if status == 404 else "bad_request"
    message = assert_error(api.get(f"{PREFIX}/{raw_id}"), status, code)
    if status == 400:
        assert message.startswith("job id must be a whole number")


@pytest.mark.parametrize(
    ("method", "action"), [("POST", "retry"), ("POST", "cancel"), ("DELETE", "")]
)
@pytest.mark.parametrize("raw_id", ["424242", str(2**64), "abc"])
def test_actions_on_unknown_or_bad_id(api: t.Any, method: str, action: str, raw_id: str) -> None:
    path = f"{PREFIX}/{raw_id}" + (f"/{action}" if action else "")
    response = api.open(path, method=method)
    if raw_id == "424242":
        assert "424242" in assert_error(response, 404, "not_found")
    elif raw_id == "abc":
        assert_error(response, 404, "not_found")
    else:
        assert_error(response, 400, "bad_request")


# -- transitions ---------------------------------------------------------------------


@pytest.mark.parametrize("start", ["dead", "cancelled"])
def test_retry(api: t.Any, jobs: DurableJobs, db: SQLAlchemy, start: str) -> None:
    job_id = make_job(jobs, db, start)
    response = api.post(f"{PREFIX}/{job_id}/retry")
    assert response.status_code == 200
    body = response.get_json()
    assert body["id"] == job_id
    assert body["status"] == "pending" and body["attempts"] == 0
    stored = jobs.get(job_id)
    assert stored is not None and stored.status == "pending"
    assert stored.run_at <= dt.datetime.now(dt.timezone.utc)
    assert api.post(f"{PREFIX}/process").get_json()["claimed"] == 1


@pytest.mark.parametrize("start", ["pending", "retrying", "running", "succeeded"])
def test_retry_refused(api: t.Any, jobs: DurableJobs, db: SQLAlchemy, start: str) -> None:
    job_id = make_job(jobs, db, start)
    message = assert_error(api.post(f"{PREFIX}/{job_id}/retry"), 409, "conflict")
    assert repr(start) in message
    stored = jobs.get(job_id)
    assert stored is not None and stored.status == start


@pytest.mark.parametrize("start", ["pending", "retrying"])
def test_cancel(api: t.Any, jobs: DurableJobs, db: SQLAlchemy, start: str) -> None:
    job_id = make_job(jobs, db, start)
    response = api.post(f"{PREFIX}/{job_id}/cancel")
    assert response.status_code == 200
    assert response.get_json()["status"] == "cancelled"
    stored = jobs.get(job_id)
    assert stored is not None and stored.status == "cancelled"


@pytest.mark.parametrize("start", ["succeeded", "dead", "cancelled"])
def test_cancel_refused(api: t.Any, jobs: DurableJobs, db: SQLAlchemy, start: str) -> None:
    job_id = make_job(jobs, db, start)
    message = assert_error(api.post(f"{PREFIX}/{job_id}/cancel"), 409, "conflict")
    assert repr(start) in message


def test_cancel_of_a_running_job_is_a_request(
    api: t.Any, jobs: DurableJobs, db: SQLAlchemy
) -> None:
    job_id = make_job(jobs, db, "running")
    response = api.post(f"{PREFIX}/{job_id}/cancel")
    assert response.status_code == 202
    body = response.get_json()
    assert body["status"] == "running" and body["cancel_requested_at"] is not None
    stored = jobs.get(job_id)
    assert stored is not None and stored.status == "running"
    assert stored.cancel_requested_at is not None


@pytest.mark.parametrize("start", ["pending", "retrying", "succeeded", "dead", "cancelled"])
def test_delete(api: t.Any, jobs: DurableJobs, db: SQLAlchemy, start: str) -> None:
    job_id = make_job(jobs, db, start)
    response = api.delete(f"{PREFIX}/{job_id}")
    assert response.status_code == 204
    assert response.data == b""
    assert jobs.get(job_id) is None
    assert_error(api.get(f"{PREFIX}/{job_id}"), 404, "not_found")
    assert_error(api.delete(f"{PREFIX}/{job_id}"), 404, "not_found")


def test_delete_running_refused(api: t.Any, jobs: DurableJobs, db: SQLAlchemy) -> None:
    job_id = make_job(jobs, db, "running")
    message = assert_error(api.delete(f"{PREFIX}/{job_id}"), 409, "conflict")
    assert "'running'" in message
    assert jobs.get(job_id) is not None


# -- process -------------------------------------------------------------------------


def test_process_runs_due_jobs(api: t.Any, jobs: DurableJobs) -> None:
    ok = jobs.enqueue("t.ok", {"n": 1}).id
    failing = jobs.enqueue("t.fail", {"message": "nope"}).id
    doomed = jobs.enqueue("t.discard", {}).id
    jobs.enqueue("t.ok", {"n": 2}, delay=3600)
    response = api.post(f"{PREFIX}/process")
    assert response.status_code == 200
    assert response.get_json() == {"claimed": 3, "succeeded": 1, "retried": 1, "dead": 1}
    statuses = {
        job_id: getattr(jobs.get(job_id), "status", None) for job_id in (ok, failing, doomed)
    }
    assert statuses == {ok: "succeeded", failing: "retrying", doomed: "dead"}
    assert api.post(f"{PREFIX}/process").get_json()["claimed"] == 0


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"query_string": {"limit": "2"}}, 2),
        ({"json": {"limit": 1}}, 1),
        ({"json": {}}, 3),
        ({"json": {"limit": None}}, 3),
        ({"query_string": {"limit": "10000"}}, 3),
    ],
)
def test_process_limit(
    api: t.Any, jobs: DurableJobs, kwargs: dict[str, t.Any], expected: int
) -> None:
    jobs.enqueue_many("t.ok", [{"n": n} for n in range(3)])
    response = api.post(f"{PREFIX}/process", **kwargs)
    assert response.status_code == 200
    assert response.get_json()["claimed"] == expected


NOT_A_WHOLE_NUMBER = "limit must be a whole number from 1 to 10000, got "
NOT_AN_OBJECT = "the request body must be a JSON object"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"query_string": {"limit": "0"}}, NOT_A_WHOLE_NUMBER),
        ({"query_string": {"limit": "-3"}}, NOT_A_WHOLE_NUMBER),
        ({"query_string": {"limit": "ten"}}, NOT_A_WHOLE_NUMBER),
        ({"query_string": {"limit": "10001"}}, NOT_A_WHOLE_NUMBER),
        ({"query_string": {"limit": "9" * 30}}, NOT_A_WHOLE_NUMBER),
        ({"query_string": {"limit": ""}}, NOT_A_WHOLE_NUMBER),
        ({"json": {"limit": 0}}, NOT_A_WHOLE_NUMBER),
        ({"json": {"limit": True}}, NOT_A_WHOLE_NUMBER),
        ({"json": {"limit": 2.5}}, NOT_A_WHOLE_NUMBER),
        ({"json": {"limit": "5"}}, NOT_A_WHOLE_NUMBER),
        ({"json": {"limit": 10**30}}, NOT_A_WHOLE_NUMBER),
        ({"json": [1]}, NOT_AN_OBJECT),
        ({"data": "{not json", "content_type": "application/json"}, NOT_AN_OBJECT),
        ({"query_string": {"limit": "1"}, "json": {"limit": 1}},
         "give limit in the query string or in the JSON body, not both"),
    ],
)
def test_process_bad_limit(
    api: t.Any, jobs: DurableJobs, kwargs: dict[str, t.Any], message: str
) -> None:
    job_id = jobs.enqueue("t.ok", {"n": 1}).id
    answer = assert_error(api.post(f"{PREFIX}/process", **kwargs), 400, "bad_request")
    assert answer.startswith(message), answer
    job = jobs.get(job_id)
    assert job is not None and job.status == "pending"


# -- masking and truncation -----------------------------------------------------------


def test_secrets_masked_in_every_response(api: t.Any, jobs: DurableJobs) -> None:
    job_id = jobs.enqueue("t.ok", SECRETS).id
    assert api.get(f"{PREFIX}/{job_id}").get_json()["payload"] == MASKED
    assert api.get(PREFIX).get_json()["items"][0]["payload"] == MASKED
    api.post(f"{PREFIX}/process")
    finished = api.get(f"{PREFIX}/{job_id}").get_json()
    # t.ok returns its payload, so the result carries the same secrets.
    assert finished["payload"] == MASKED and finished["result"] == MASKED
    other = jobs.enqueue("t.ok", SECRETS).id
    assert api.post(f"{PREFIX}/{other}/cancel").get_json()["payload"] == MASKED
    retried = api.post(f"{PREFIX}/{other}/retry").get_json()
    assert retried["payload"] == MASKED
    for body in (finished, retried):
        assert "hunter2" not in str(body)
    stored = jobs.get(job_id)
    assert stored is not None
    assert stored.payload == SECRETS and stored.result == SECRETS


def test_list_shows_a_preview_of_a_large_payload_and_the_detail_shows_it_whole(
    api: t.Any, jobs: DurableJobs
) -> None:
    # "a" leads on both databases (PostgreSQL's jsonb orders keys by length).
    big = {"a": {"password": "hunter2"}, "rows": ["x" * 100] * 100}
    job_id = jobs.enqueue("t.ok", big).id
    jobs.process_due()  # t.ok returns its payload: the result is as large
    [item] = api.get(PREFIX).get_json()["items"]
    full_text = json.dumps(masking.mask(big), separators=(",", ":"))
    for field in ("payload", "result"):
        preview = item[field]
        assert isinstance(preview, str) and item[f"{field}_truncated"] is True
        head, _, marker = preview.partition("... [")
        assert len(head) == masking.PREVIEW_CHARS
        assert marker == f"{len(full_text):,} characters in all]"
        assert "hunter2" not in preview and masking.MASK in preview
    detail = api.get(f"{PREFIX}/{job_id}").get_json()
    assert detail["payload"] == {**big, "a": {"password": masking.MASK}}
    assert detail["result"] == detail["payload"]
    assert "payload_truncated" not in detail


def test_a_payload_nested_deeper_than_enqueue_accepts_is_shown_cut(
    api: t.Any, jobs: DurableJobs, db: SQLAlchemy
) -> None:
    """A payload written into the table by other means, 500 levels deep: the
    answers cut it at masking's depth instead of failing."""
    job_id = jobs.enqueue("t.ok", {"n": 1}).id
    deep: t.Any = {"token": "t-1", "leaf": 1}
    for _ in range(500):
        deep = {"password": "p", "next": deep}
    table = db.metadata.tables[TABLE_NAME]
    db.session.execute(sa.update(table).where(table.c.id == job_id).values(payload=deep))
    db.session.commit()

    for body in (api.get(f"{PREFIX}/{job_id}").get_json(), api.get(PREFIX).get_json()["items"][0],
                 api.post(f"{PREFIX}/{job_id}/cancel").get_json()):
        payload = body["payload"]
        if isinstance(payload, str):  # the list's preview
            assert body["payload_truncated"] and '"password":"********"' in payload
            continue
        levels = 0
        while isinstance(payload, dict):
            assert payload["password"] == masking.MASK
            payload = payload["next"]
            levels += 1
        assert payload == masking.TOO_DEEP
        assert levels == masking.MAX_DEPTH + 1  # the payload itself and 100 levels below


@pytest.mark.config(
    DURABLE_JOBS_CALLBACK_SECRET="callback-signing-secret",
    DURABLE_JOBS_CALLBACK_HOSTS=["hooks.example.com"],
)
def test_callback_url_user_and_password_are_masked(api: t.Any, jobs: DurableJobs) -> None:
    url = "https://ops:s3cr3t-pw@hooks.example.com/done?api_key=k-9&ref=7"
    job_id = jobs.enqueue("t.ok", {}, delay=60, callback_url=url).id
    shown = "https://********@hooks.example.com/done?api_key=********&ref=7"
    assert api.get(f"{PREFIX}/{job_id}").get_json()["callback_url"] == shown
    assert api.get(PREFIX).get_json()["items"][0]["callback_url"] == shown
    cancelled = api.post(f"{PREFIX}/{job_id}/cancel")
    assert cancelled.get_json()["callback_url"] == shown
    retried = api.post(f"{PREFIX}/{job_id}/retry")
    assert retried.get_json()["callback_url"] == shown
    for response in (cancelled, retried):
        assert b"s3cr3t-pw" not in response.data and b"k-9" not in response.data
    stored = jobs.get(job_id)
    assert stored is not None and stored.callback_url == url


def test_last_error_truncated(api: t.Any, jobs: DurableJobs) -> None:
    long_id = jobs.enqueue("t.fail", {"message": "start-" + "x" * 6000}, max_attempts=1).id
    short_id = jobs.enqueue("t.fail", {"message": "short and sweet"}, max_attempts=1).id
    jobs.process_due()
    stored = jobs.get(long_id)
    assert stored is not None and stored.last_error is not None
    assert len(stored.last_error) > masking.LAST_ERROR_MAX_CHARS
    shown = api.get(f"{PREFIX}/{long_id}").get_json()["last_error"]
    marker = re.search(
        r"\n\[\.\.\. truncated: [\d,]+ of [\d,]+ characters not shown \.\.\.\]\n", shown
    )
    assert marker is not None
    assert len(shown) - len(marker.group()) == masking.LAST_ERROR_MAX_CHARS
    assert shown.startswith(stored.last_error[: masking.LAST_ERROR_HEAD_CHARS])
    assert shown.endswith(stored.last_error[-100:])
    assert "RuntimeError: start-" in shown
    short = jobs.get(short_id)
    assert short is not None
    assert api.get(f"{PREFIX}/{short_id}").get_json()["last_error"] == short.last_error


# -- errors and routing ----------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/nope",
        "/1/",
        "/1/explode",
        "/stats/",
        "//stats",
        "//",
        "/1//retry",
        "/a/b/c",
        "/%00",
        "/openapi.yaml",
    ],
)
@pytest.mark.parametrize("method", ["GET", "DELETE", "BREW"])
def test_unmatched_path_is_json_404(api: t.Any, path: str, method: str) -> None:
    message = assert_error(api.open(PREFIX + path, method=method), 404, "not_found")
    assert "openapi.json" in message


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("POST", PREFIX, "GET, HEAD, OPTIONS"),
        ("DELETE", f"{PREFIX}/", "GET, HEAD, OPTIONS"),
        ("PUT", f"{PREFIX}/1", "DELETE, GET, HEAD, OPTIONS"),
        ("POST", f"{PREFIX}/1", "DELETE, GET, HEAD, OPTIONS"),
        ("GET", f"{PREFIX}/1/retry", "OPTIONS, POST"),
        ("DELETE", f"{PREFIX}/1/cancel", "OPTIONS, POST"),
        ("GET", f"{PREFIX}/process", "OPTIONS, POST"),
        ("POST", f"{PREFIX}/stats", "GET, HEAD, OPTIONS"),
        ("PATCH", f"{PREFIX}/openapi.json", "GET, HEAD, OPTIONS"),
        ("BREW", f"{PREFIX}/stats", "GET, HEAD, OPTIONS"),
    ],
)
def test_wrong_method_is_json_405(api: t.Any, method: str, path: str, allow: str) -> None:
    response = api.open(path, method=method)
    assert_error(response, 405, "method_not_allowed")
    assert response.headers["Allow"] == allow


def test_options_and_head(api: t.Any, jobs: DurableJobs) -> None:
    response = api.options(f"{PREFIX}/1")
    assert response.status_code == 204 and response.data == b""
    assert response.headers["Allow"] == "DELETE, GET, HEAD, OPTIONS"
    assert_error(api.options(f"{PREFIX}/nope"), 404, "not_found")
    head = api.head(f"{PREFIX}/stats")
    assert head.status_code == 200 and head.data == b""


def test_responses_are_json_and_not_cached(api: t.Any, jobs: DurableJobs) -> None:
    job_id = jobs.enqueue("t.ok", {}).id
    for path in (PREFIX, f"{PREFIX}/stats", f"{PREFIX}/{job_id}", f"{PREFIX}/nope"):
        response = api.get(path)
        assert response.mimetype == "application/json"
        assert response.headers["Cache-Control"] == "no-store"


def test_errors_outside_the_prefix_untouched(app: Flask, handlers: DurableJobs) -> None:
    handlers.admin_authorizer(lambda: True)

    @app.errorhandler(404)
    def not_found(exc: Exception) -> tuple[str, int]:
        return "the app's own 404", 404

    @app.get("/boom")
    def boom() -> str:
        raise ZeroDivisionError

    client = app.test_client()
    assert client.get("/elsewhere").get_data(as_text=True) == "the app's own 404"
    # Shares the prefix's characters but is not under it.
    assert client.get(PREFIX + "x").get_data(as_text=True) == "the app's own 404"
    assert_error(client.get(PREFIX + "/elsewhere"), 404, "not_found")
    with pytest.raises(ZeroDivisionError):  # TESTING propagates; no JSON handler caught it
        client.get("/boom")


def test_unexpected_error_is_logged_not_leaked(
    api: t.Any, jobs: DurableJobs, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def explode(job_id: int) -> None:
        raise RuntimeError("db password=hunter2 went away")

    monkeypatch.setattr(jobs, "get", explode)
    with caplog.at_level(logging.ERROR, logger="flask_durable_jobs"):
        response = api.get(f"{PREFIX}/77")
    message = assert_error(response, 500, "internal_error")
    body = response.get_data(as_text=True)
    assert "hunter2" not in body and "Traceback" not in body and "RuntimeError" not in body
    assert "log" in message
    [record] = [r for r in caplog.records if r.name == "flask_durable_jobs"]
    assert "job id 77" in record.getMessage() and f"{PREFIX}/77" in record.getMessage()
    assert record.exc_info is not None and record.exc_info[0] is RuntimeError


# -- access ---------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path", "status"), ROUTES)
def test_closed_when_nothing_configured(
    app: Flask, client: t.Any, method: str, path: str, status: int
) -> None:
    message = assert_error(client.open(path, method=method, headers=AUTH), 403, "forbidden")
    assert "DURABLE_JOBS_ADMIN_TOKEN" in message and "@jobs.admin_authorizer" in message


@pytest.mark.config(DURABLE_JOBS_ADMIN_TOKEN=TOKEN)
@pytest.mark.parametrize(("method", "path", "status"), ROUTES)
def test_token_opens_every_route(
    client: t.Any, handlers: DurableJobs, method: str, path: str, status: int
) -> None:
    assert handlers.enqueue("t.ok", {}).id == 1
    response = client.open(path, method=method, headers=AUTH)
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.status_code == 204 or response.is_json
    unauthenticated = client.open(path, method=method)
    assert_error(unauthenticated, 401, "unauthorized")
    assert unauthenticated.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.config(DURABLE_JOBS_ADMIN_TOKEN=TOKEN)
@pytest.mark.parametrize(
    ("authorization", "outcome"),
    [
        (f"Bearer {TOKEN}", "ok"),
        (f"bearer {TOKEN}", "ok"),
        (f"  Bearer   {TOKEN}  ", "ok"),
        (None, "missing"),
        ("", "missing"),
        ("Bearer", "missing"),
        ("Bearer ", "missing"),
        (f"Basic {TOKEN}", "missing"),
        (TOKEN, "missing"),
        ("Bearer wrong", "invalid"),
        (f"Bearer {TOKEN}x", "invalid"),
        (f"Bearer {TOKEN[:-1]}", "invalid"),
        (f"Bearer {TOKEN.upper()}", "invalid"),
        ("Bearer \u00e9t\u00e9", "invalid"),
    ],
)
def test_token(client: t.Any, authorization: str | None, outcome: str) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    response = client.get(f"{PREFIX}/stats", headers=headers)
    if outcome == "ok":
        assert response.status_code == 200
        return
    assert_error(response, 401, "unauthorized")
    challenge = response.headers["WWW-Authenticate"]
    assert challenge.startswith("Bearer ")
    assert ('error="invalid_token"' in challenge) == (outcome == "invalid")


@pytest.mark.parametrize(
    ("verdict", "status"),
    [(True, 200), (False, 403), (None, 403), (1, 403), ("yes", 403), (object(), 403)],
)
def test_authorizer(
    app: Flask, client: t.Any, jobs: DurableJobs, verdict: t.Any, status: int
) -> None:
    seen: list[str] = []

    @jobs.admin_authorizer
    def allow() -> t.Any:
        seen.append(request.path)
        return verdict

    response = client.get(f"{PREFIX}/stats")
    assert response.status_code == status
    if status == 403:
        assert "authorizer" in assert_error(response, 403, "forbidden")
        assert "WWW-Authenticate" not in response.headers
    assert seen == [f"{PREFIX}/stats"]


@pytest.mark.config(DURABLE_JOBS_ADMIN_TOKEN=TOKEN)
@pytest.mark.parametrize(
    ("authorization", "verdict", "status"),
    [
        (f"Bearer {TOKEN}", False, 200),  # either one grants access
        (None, True, 200),
        ("Bearer wrong", True, 200),
        ("Bearer wrong", False, 401),  # a token was tried and is wrong
        (None, False, 403),  # no token tried; the authorizer refused
    ],
)
def test_token_and_authorizer(
    client: t.Any, jobs: DurableJobs, authorization: str | None, verdict: bool, status: int
) -> None:
    calls: list[bool] = []

    def authorizer() -> bool:
        calls.append(verdict)
        return verdict

    jobs.admin_authorizer(authorizer)
    headers = {} if authorization is None else {"Authorization": authorization}
    response = client.get(f"{PREFIX}/stats", headers=headers)
    assert response.status_code == status
    if status != 200:
        assert_error(response, status, {401: "unauthorized", 403: "forbidden"}[status])
    # A valid token is enough: the authorizer is not consulted.
    assert calls == ([] if authorization == f"Bearer {TOKEN}" else [verdict])


def test_authorizer_that_raises_is_a_500(app: Flask, client: t.Any, jobs: DurableJobs) -> None:
    @jobs.admin_authorizer
    def broken() -> bool:
        raise KeyError("user")

    assert_error(client.get(f"{PREFIX}/stats"), 500, "internal_error")


def test_authorizer_may_abort(app: Flask, client: t.Any, jobs: DurableJobs) -> None:
    @jobs.admin_authorizer
    def login_required() -> bool:
        abort(401, description="log in first")

    response = client.get(f"{PREFIX}/stats")
    assert assert_error(response, 401, "unauthorized") == "log in first"


@pytest.mark.config(DURABLE_JOBS_URL_PREFIX="/ops/queue", DURABLE_JOBS_ADMIN_TOKEN=TOKEN)
def test_custom_prefix(client: t.Any) -> None:
    assert client.get("/ops/queue/stats", headers=AUTH).status_code == 200
    assert client.get("/ops/queue", headers=AUTH).status_code == 200
    assert_error(client.get("/ops/queue/nope", headers=AUTH), 404, "not_found")
    assert client.get(f"{PREFIX}/stats", headers=AUTH).status_code == 404
    doc = client.get("/ops/queue/openapi.json", headers=AUTH).get_json()
    assert "/ops/queue/{job_id}" in doc["paths"]


# -- OpenAPI --------------------------------------------------------------------------


def _served_operations(app: Flask) -> set[tuple[str, str]]:
    operations = set()
    for rule in app.url_map.iter_rules():
        if not rule.endpoint.startswith(admin.BLUEPRINT_NAME + "."):
            continue
        if rule.endpoint == admin.UNMATCHED_ENDPOINT:
            continue
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}:
            operations.add((method.lower(), path))
    return operations


def test_openapi_covers_exactly_the_routes(api: t.Any, app: Flask) -> None:
    response = api.get(f"{PREFIX}/openapi.json")
    assert response.status_code == 200
    doc = response.get_json()
    assert doc["openapi"].startswith("3.1")
    documented = {
        (method, path)
        for path, item in doc["paths"].items()
        for method in item
        if method in ("get", "post", "put", "patch", "delete")
    }
    assert documented == _served_operations(app)
    operation_ids = [
        operation["operationId"]
        for item in doc["paths"].values()
        for method, operation in item.items()
        if method != "parameters"
    ]
    assert len(operation_ids) == len(set(operation_ids))


#: Text parameters with a format of their own: a value each accepts.
FORMATTED = {
    "created_after": "2026-01-01",
    "created_before": "2026-01-01T00:00:00Z",
    "cursor": listing.encode_cursor(1),
}


def test_documented_query_parameters_are_the_validated_ones(api: t.Any) -> None:
    """Every query parameter's documented bounds and words are exactly what the
    route accepts: one definition serves both."""
    doc = api.get(f"{PREFIX}/openapi.json").get_json()
    checked = []
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            for parameter in operation.get("parameters", []):
                if parameter["in"] != "query":
                    continue
                name, schema = parameter["name"], parameter["schema"]
                if schema.get("type") == "integer":
                    low, high = schema["minimum"], schema["maximum"]
                    good = [low, high]
                    bad = [low - 1, high + 1]
                elif "enum" in schema:
                    good, bad = schema["enum"], ["not-one-of-them"]
                else:
                    assert schema == {"type": "string", "minLength": 1}, (path, name)
                    good, bad = [FORMATTED.get(name, "x")], [""]
                for value in good:
                    response = api.open(path, method=method, query_string={name: str(value)})
                    assert response.status_code == 200, (path, name, value)
                for value in bad:
                    response = api.open(path, method=method, query_string={name: str(value)})
                    message = assert_error(response, 400, "bad_request")
                    assert message.startswith(name + " "), message
                checked.append(name)
    assert sorted(checked) == sorted(
        ["status", "job_type", "queue", "page", "per_page", "max_due_age", "limit",
         "owner", "idempotency_key", "batch_id", "payload.<field>", *FORMATTED, "minutes"]
    )


def test_openapi_schemas_match_responses(api: t.Any, jobs: DurableJobs, db: SQLAlchemy) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    doc = api.get(f"{PREFIX}/openapi.json").get_json()
    for schema in doc["components"]["schemas"].values():
        jsonschema.Draft202012Validator.check_schema(schema)

    def check(method: str, template: str, response: t.Any) -> None:
        operation = doc["paths"][PREFIX + template][method]
        declared = operation["responses"][str(response.status_code)]
        if "$ref" in declared:
            declared = doc["components"]["responses"][declared["$ref"].rsplit("/", 1)[1]]
        if "content" not in declared:
            assert response.data == b""
            return
        schema = declared["content"]["application/json"]["schema"]
        # The whole document as the root, so "#/components/..." references resolve.
        jsonschema.Draft202012Validator({**doc, **schema}).validate(response.get_json())

    secret = jobs.enqueue("t.ok", SECRETS).id
    dead = make_job(jobs, db, "dead")
    make_job(jobs, db, "retrying")
    check("get", "", api.get(PREFIX))
    check("get", "", api.get(f"{PREFIX}?per_page=0"))
    check("get", "/stats", api.get(f"{PREFIX}/stats"))
    check("get", "/{job_id}", api.get(f"{PREFIX}/{secret}"))
    check("get", "/{job_id}", api.get(f"{PREFIX}/424242"))
    check("get", "/{job_id}", api.get(f"{PREFIX}/{2**64}"))
    check("post", "/{job_id}/retry", api.post(f"{PREFIX}/{dead}/retry"))
    check("post", "/{job_id}/retry", api.post(f"{PREFIX}/{dead}/retry"))  # 409 now
    check("post", "/{job_id}/cancel", api.post(f"{PREFIX}/{dead}/cancel"))
    check("post", "/{job_id}/cancel", api.post(f"{PREFIX}/{dead}/cancel"))
    check("post", "/process", api.post(f"{PREFIX}/process"))
    check("post", "/process", api.post(f"{PREFIX}/process?limit=0"))
    check("get", "", api.get(PREFIX))  # succeeded and dead jobs, with results and errors
    check("get", "/openapi.json", api.get(f"{PREFIX}/openapi.json"))
    check("delete", "/{job_id}", api.delete(f"{PREFIX}/{dead}"))
    check("delete", "/{job_id}", api.delete(f"{PREFIX}/{dead}"))


@pytest.mark.config(DURABLE_JOBS_ADMIN_TOKEN=TOKEN)
@pytest.mark.parametrize(
    ("authorization", "says"),
    [
        ("Bearer ", "holds an empty token"),  # curl -H "Authorization: Bearer $UNSET"
        ("Bearer    ", "holds an empty token"),
        (None, "has no 'Authorization: Bearer <token>' header"),
        ("Basic abc", "has no 'Authorization: Bearer <token>' header"),
    ],
)
def test_a_missing_token_is_told_from_an_empty_one(
    client: t.Any, authorization: str | None, says: str
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    message = assert_error(client.get(f"{PREFIX}/stats", headers=headers), 401, "unauthorized")
    assert says in message


def test_a_running_job_names_its_worker(api: t.Any, app: Flask, jobs: DurableJobs) -> None:
    first = jobs.enqueue("t.ok", {"n": 1})
    second = jobs.enqueue("t.ok", {"n": 2})
    state = app.extensions["durable_jobs"]
    now = state.now()
    (claimed,) = state.store.claim(
        job_types=["t.ok"], queues=None, limit=1, now=now,
        lease_until=now + dt.timedelta(seconds=60), token="w" * 32, worker_id="host-a:123:r1",
    )
    assert claimed.id == first.id  # first in line
    listed = {item["id"]: item for item in api.get(PREFIX).get_json()["items"]}
    assert listed[first.id]["worker_id"] == "host-a:123:r1"
    assert listed[second.id]["worker_id"] is None
    assert api.get(f"{PREFIX}/{first.id}").get_json()["worker_id"] == "host-a:123:r1"
