"""The admin list's filters and keyset pagination, on SQLite and PostgreSQL,
through ``jobs.list_page`` / ``jobs.list_jobs`` and ``GET {prefix}``."""

from __future__ import annotations

import datetime as dt
import typing as t

import pytest
import sqlalchemy as sa
from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from flask_durable_jobs import DurableJobs, listing
from flask_durable_jobs.models import TABLE_NAME

pytestmark = pytest.mark.config(DURABLE_JOBS_ADMIN_TOKEN="list-token")

PREFIX = "/admin/jobs"
TOKEN = "list-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
UTC = dt.timezone.utc


@pytest.fixture
def api(app: Flask, jobs: DurableJobs) -> t.Any:
    jobs.handler("t.ok")(lambda payload: payload)
    jobs.handler("t.other", queue="mail")(lambda payload: payload)
    return app.test_client()


def set_created(db: SQLAlchemy, job_id: int, when: dt.datetime) -> None:
    table = db.metadata.tables[TABLE_NAME]
    db.session.execute(sa.update(table).where(table.c.id == job_id).values(created_at=when))
    db.session.commit()


def listed(api: t.Any, query: str) -> list[int]:
    response = api.get(f"{PREFIX}?{query}", headers=AUTH)
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert body["total"] == len(body["items"]) and body["total_exact"] is True
    return [item["id"] for item in body["items"]]


def error(api: t.Any, query: str) -> str:
    response = api.get(f"{PREFIX}?{query}", headers=AUTH)
    assert response.status_code == 400, response.get_data(as_text=True)
    message: str = response.get_json()["error"]["message"]
    return message


def test_owner_key_and_batch_filters(api: t.Any, jobs: DurableJobs) -> None:
    alice = jobs.enqueue("t.ok", {"n": 1}, owner="alice").id
    bob = jobs.enqueue("t.ok", {"n": 2}, owner="bob").id
    keyed = jobs.enqueue("t.ok", {"n": 3}, idempotency_key="order-7").id
    batch = jobs.enqueue_batch([("t.ok", {"n": 4}), ("t.other", {"n": 5})], batch_id="b-1")
    assert listed(api, "owner=alice") == [alice]
    assert listed(api, "owner=bob") == [bob]
    assert listed(api, "owner=carol") == []
    assert listed(api, "idempotency_key=order-7") == [keyed]
    assert listed(api, "batch_id=b-1") == sorted(batch.job_ids, reverse=True)
    assert listed(api, "batch_id=b-1&queue=mail") == [max(batch.job_ids)]
    # the same through Python
    assert [job.id for job in jobs.list_page(owner="alice").items] == [alice]
    items, total = jobs.list_jobs(batch_id="b-1", job_type="t.ok")
    assert [job.id for job in items] == [min(batch.job_ids)] and total == 1


def test_payload_field_compares_in_string_form(api: t.Any, jobs: DurableJobs) -> None:
    text = jobs.enqueue("t.ok", {"customer": "42"}).id
    number = jobs.enqueue("t.ok", {"customer": 42}).id
    real = jobs.enqueue("t.ok", {"customer": 2.5}).id
    yes = jobs.enqueue("t.ok", {"customer": True}).id
    jobs.enqueue("t.ok", {"customer": None})
    jobs.enqueue("t.ok", {"customer": {"id": 42}})
    jobs.enqueue("t.ok", {"customer": [42]})
    jobs.enqueue("t.ok", {"other": 42, "nested": {"customer": 42}})
    spaced = jobs.enqueue("t.ok", {"first name": "Ada"}).id
    assert listed(api, "payload.customer=42") == [number, text]
    assert listed(api, "payload.customer=2.5") == [real]
    assert listed(api, "payload.customer=true") == [yes]
    assert listed(api, "payload.customer=1") == []  # true is not 1
    assert listed(api, "payload.customer=null") == []
    assert listed(api, "payload.first%20name=Ada") == [spaced]
    assert listed(api, "payload.customer=42&job_type=t.ok") == [number, text]
    assert [job.id for job in jobs.list_page(payload={"customer": 42}).items] == [number, text]
    assert [job.id for job in jobs.list_page(payload={"customer": True}).items] == [yes]


def test_created_window(api: t.Any, jobs: DurableJobs, db: SQLAlchemy) -> None:
    days = [jobs.enqueue("t.ok", {"n": n}).id for n in range(3)]
    for n, job_id in enumerate(days):
        set_created(db, job_id, dt.datetime(2026, 3, 1 + n, 12, tzinfo=UTC))
    assert listed(api, "created_after=2026-03-02") == [days[2], days[1]]
    assert listed(api, "created_before=2026-03-02T12:00:00Z") == [days[0]]
    # after is inclusive, before exclusive; an offset is honoured
    assert listed(api, "created_after=2026-03-02T12:00:00%2B00:00"
                  "&created_before=2026-03-03T13:00:00%2B01:00") == [days[1]]
    page = jobs.list_page(created_after=dt.datetime(2026, 3, 2, 12, tzinfo=UTC))
    assert [job.id for job in page.items] == [days[2], days[1]]
    with pytest.raises(ValueError, match="created_before must be timezone-aware"):
        jobs.list_page(created_before=dt.datetime(2026, 3, 2))


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("colour=red", "'colour'"),
        ("status=dead&sort=id&limit=3", "'limit', 'sort'"),
        ("created_after=yesterday", "created_after"),
        ("created_before=2026-13-01", "created_before"),
        ("created_after=", "created_after"),
        ("owner=", "owner"),
        ("batch_id=a%00b", "batch_id"),
        ("payload.=x", "payload.<field>"),
        ("payload.a=", "payload.a must not be empty"),
        ("payload.a=1&payload.b=2", "payload filters one field"),
        ('payload.a"b=1', "payload.a\"b"),
        ("cursor=nonsense", "cursor"),
        ("cursor=" + listing.encode_cursor(5) + "&page=2", "cursor or page"),
        ("cursor=", "cursor"),
    ],
)
def test_bad_parameters_are_400_naming_them(api: t.Any, query: str, named: str) -> None:
    assert named in error(api, query)


def test_python_filters_refuse_unknown_names_and_bad_values(jobs: DurableJobs, app: Flask) -> None:
    with pytest.raises(TypeError, match="'colour'"):
        jobs.list_page(colour="red")
    with pytest.raises(TypeError, match="'colour'"):
        jobs.list_jobs(colour="red")
    with pytest.raises(ValueError, match="status must be one of"):
        jobs.list_page(status="finished")
    with pytest.raises(ValueError, match="payload"):
        jobs.list_page(payload={"a": [1]})
    with pytest.raises(ValueError, match="cursor"):
        jobs.list_page(cursor="abc")


def test_cursor_walks_every_job_once_newest_first(api: t.Any, jobs: DurableJobs) -> None:
    ids = [jobs.enqueue("t.ok" if n % 3 else "t.other", {"n": n}).id for n in range(11)]
    seen: list[int] = []
    response = api.get(f"{PREFIX}?per_page=4", headers=AUTH).get_json()
    assert response["page"] == 1 and response["total"] == 11
    while True:
        seen.extend(item["id"] for item in response["items"])
        if response["next_cursor"] is None:
            break
        response = api.get(
            f"{PREFIX}?per_page=4&cursor={response['next_cursor']}", headers=AUTH
        ).get_json()
        assert response["page"] is None
    assert seen == ids[::-1]
    # with a filter; a full last page has no next cursor
    other = [job_id for n, job_id in enumerate(ids) if n % 3 == 0]
    first = jobs.list_page(job_type="t.other", per_page=2)
    assert [job.id for job in first.items] == other[::-1][:2]
    second = jobs.list_page(job_type="t.other", per_page=2, cursor=first.next_cursor)
    assert [job.id for job in second.items] == other[::-1][2:]
    assert second.next_cursor is None
    # a page-mode answer carries a cursor too, to switch to the fast way
    paged = api.get(f"{PREFIX}?per_page=4&page=2", headers=AUTH).get_json()
    assert [item["id"] for item in paged["items"]] == ids[::-1][4:8]
    after = api.get(f"{PREFIX}?per_page=4&cursor={paged['next_cursor']}", headers=AUTH)
    assert [item["id"] for item in after.get_json()["items"]] == ids[::-1][8:]


def test_total_is_counted_up_to_the_limit(
    api: t.Any, jobs: DurableJobs, monkeypatch: pytest.MonkeyPatch
) -> None:
    jobs.enqueue_many("t.ok", [{"n": n} for n in range(5)])
    monkeypatch.setattr(listing, "COUNT_LIMIT", 3)
    body = api.get(f"{PREFIX}?per_page=2", headers=AUTH).get_json()
    assert (body["total"], body["total_exact"], len(body["items"])) == (3, False, 2)
    body = api.get(f"{PREFIX}?per_page=2&status=pending&job_type=t.other", headers=AUTH).get_json()
    assert (body["total"], body["total_exact"]) == (0, True)
    # jobs.list_jobs keeps counting every match
    assert jobs.list_jobs(per_page=1)[1] == 5


def test_openapi_lists_the_filters_and_bulk_routes(api: t.Any) -> None:
    document = api.get(f"{PREFIX}/openapi.json", headers=AUTH).get_json()
    names = {p["name"] for p in document["paths"][PREFIX]["get"]["parameters"]}
    assert {"owner", "idempotency_key", "batch_id", "created_after", "created_before",
            "cursor", "payload.<field>"} <= names
    bulk = document["paths"][PREFIX + "/bulk/{action}"]["post"]
    assert bulk["parameters"][0]["schema"]["enum"] == ["retry", "cancel", "delete"]
    job_list = document["components"]["schemas"]["JobList"]["properties"]
    assert {"next_cursor", "total_exact"} <= job_list.keys()


def test_revision_0004_adds_the_list_indexes_to_a_table_holding_jobs(database_url: str) -> None:
    import alembic.command

    from flask_durable_jobs.migrations import config, upgrade

    app = Flask("lists_migration")
    app.config.update(SQLALCHEMY_DATABASE_URI=database_url, DURABLE_JOBS_SCHEDULER=False)
    db = SQLAlchemy(app)
    jobs = DurableJobs(app, db=db)
    jobs.handler("t.ok")(lambda payload: payload)
    with app.app_context():
        upgrade(db.engine, "0003")
        names = {index["name"] for index in sa.inspect(db.engine).get_indexes(TABLE_NAME)}
        assert "ix_durable_jobs_owner" not in names
        job = jobs.enqueue("t.ok", {"n": 1}, owner="ann")
        upgrade(db.engine)
        names = {index["name"] for index in sa.inspect(db.engine).get_indexes(TABLE_NAME)}
        assert {"ix_durable_jobs_owner", "ix_durable_jobs_created"} <= names
        assert [found.id for found in jobs.list_page(owner="ann").items] == [job.id]
        with db.engine.begin() as conn:  # and back
            alembic.command.downgrade(config(conn), "0003")
        names = {index["name"] for index in sa.inspect(db.engine).get_indexes(TABLE_NAME)}
        assert "ix_durable_jobs_owner" not in names and jobs.get(job.id) is not None
        jobs.stop()
        db.engine.dispose()
