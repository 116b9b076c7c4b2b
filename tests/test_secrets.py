"""Secrets at rest, on SQLite and PostgreSQL: ``enqueue(..., secrets=...)``.

The handler reads them with :func:`flask_durable_jobs.job_secrets`; the
database holds only Fernet ciphertext, and only until the job ends; no admin
response, callback body, ``last_error`` or log line ever carries a secret
value; key rotation keeps old jobs running.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import typing as t

import pytest
import sqlalchemy as sa
from cryptography.fernet import Fernet, InvalidToken
from flask import Flask, current_app
from flask_sqlalchemy import SQLAlchemy

from flask_durable_jobs import ConfigError, Discard, DurableJobs, callbacks, job_secrets
from flask_durable_jobs.models import TABLE_NAME
from flask_durable_jobs.testing import move_time
from tests.helpers import another_app
from tests.procs.callback_app import Receiver

KEY_A = Fernet.generate_key().decode()
KEY_B = Fernet.generate_key().decode()
ADMIN = "admin-token-for-the-secret-tests"
AUTH = {"Authorization": f"Bearer {ADMIN}"}
PREFIX = "/admin/jobs"
CALLBACK_SECRET = "callback-signing-secret"

TOKEN = "ghp_Zx81mQ4vRt0LbN6sYk2WcPe9HdJa7FuG3oXi"
DEPLOY_KEY = "dk_live_5e1f0a9c8b7d6e4f"
DB_PASSWORD = "pw-Correct-Horse-77"
SECRETS = {"github_token": TOKEN, "deploy": {"key": DEPLOY_KEY, "db": [DB_PASSWORD]}}
VALUES = (TOKEN, DEPLOY_KEY, DB_PASSWORD)
OTHER_TOKEN = "ghp_Other0Token1For2The3Rotated4App5XYZ"

with_key = pytest.mark.config(
    DURABLE_JOBS_SECRET_KEY=KEY_A,
    DURABLE_JOBS_ADMIN_TOKEN=ADMIN,
    DURABLE_JOBS_CALLBACK_SECRET=CALLBACK_SECRET,
    DURABLE_JOBS_CALLBACK_HOSTS=["127.0.0.1"],
)


def assert_no_secret(text: str | bytes | None, values: t.Sequence[str] = VALUES) -> None:
    if text is None:
        return
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    for value in values:
        assert value not in text, f"secret value {value[:4]}... found in {text[:300]!r}"


def raw_rows(db: SQLAlchemy | sa.Engine) -> list[dict[str, t.Any]]:
    """Every column of every job row, straight from SQL (not through the library)."""
    engine = db if isinstance(db, sa.Engine) else db.engine
    with engine.connect() as conn:
        result = conn.execute(sa.text(f"SELECT * FROM {TABLE_NAME} ORDER BY id"))
        return [dict(row._mapping) for row in result]


def raw_row(db: SQLAlchemy | sa.Engine, job_id: int) -> dict[str, t.Any]:
    (row,) = [row for row in raw_rows(db) if row["id"] == job_id]
    return row


def assert_database_clean(db: SQLAlchemy | sa.Engine, values: t.Sequence[str] = VALUES) -> None:
    rows = raw_rows(db)
    assert rows
    for row in rows:
        for column, value in row.items():
            text = value if isinstance(value, str) else json.dumps(value, default=str)
            for secret in values:
                assert secret not in text, f"{secret[:4]}... in column {column}"


def decrypt(key: str, token: str) -> dict[str, t.Any]:
    return t.cast(dict[str, t.Any], json.loads(Fernet(key.encode()).decrypt(token.encode())))


class Seen:
    """What handlers saw through ``job_secrets()``, by job payload tag."""

    def __init__(self) -> None:
        self.by_tag: dict[str, list[dict[str, t.Any]]] = {}

    def record(self, payload: dict[str, t.Any]) -> dict[str, t.Any]:
        secrets = job_secrets()
        self.by_tag.setdefault(str(payload.get("tag")), []).append(secrets)
        return secrets


@pytest.fixture
def seen() -> Seen:
    return Seen()


def register(jobs: DurableJobs, seen: Seen) -> DurableJobs:
    def use(payload: dict[str, t.Any]) -> dict[str, t.Any]:
        secrets = seen.record(payload)
        return {"used": sorted(secrets)}

    def leak(payload: dict[str, t.Any]) -> None:
        secrets = seen.record(payload)
        try:
            raise KeyError(f"inner detail {secrets['deploy']['key']}")
        except KeyError as inner:
            raise RuntimeError(
                f"GitHub said 401 for {secrets['github_token']}; sent {secrets!r}"
            ) from inner

    def discard(payload: dict[str, t.Any]) -> None:
        secrets = seen.record(payload)
        raise Discard(f"token {secrets['github_token']} was revoked")

    def fail(payload: dict[str, t.Any]) -> None:
        seen.record(payload)
        raise RuntimeError("plain failure")

    jobs.handler("use")(use)
    jobs.handler("leak", max_attempts=2, backoff=lambda attempt: 60)(leak)
    jobs.handler("discard")(discard)
    jobs.handler("fail", max_attempts=1)(fail)
    return jobs


@pytest.fixture
def handlers(jobs: DurableJobs, seen: Seen) -> DurableJobs:
    return register(jobs, seen)


@contextlib.contextmanager
def other_app(database_url: str, seen: Seen, **config: t.Any) -> t.Iterator[DurableJobs]:
    """A second app on the same database with its own config, its context pushed."""
    with another_app(database_url, register(DurableJobs(), seen), **config) as jobs2:
        yield jobs2


def get(jobs: DurableJobs, job_id: int) -> t.Any:
    job = jobs.get(job_id)
    assert job is not None
    return job


# -- the handler gets them; the database never holds them in clear -------------------------


@with_key
def test_the_handler_reads_its_secrets_and_the_database_holds_only_ciphertext(
    app: Flask, handlers: DurableJobs, db: SQLAlchemy, seen: Seen
) -> None:
    jobs = handlers
    job = jobs.enqueue("use", {"tag": "a", "repo": "acme/site"}, secrets=SECRETS)
    plain = jobs.enqueue("use", {"tag": "none"})
    assert not hasattr(job, "secrets")
    assert_no_secret(repr(job))
    assert_no_secret(json.dumps(job.to_dict(), default=str))

    # before it runs: every column of every row, read with plain SQL
    assert_database_clean(db)
    stored = raw_row(db, job.id)["secrets"]
    assert isinstance(stored, str) and stored
    assert decrypt(KEY_A, stored) == SECRETS  # Fernet under the configured key
    assert raw_row(db, plain.id)["secrets"] is None

    assert jobs.drain()["succeeded"] == 2
    assert seen.by_tag == {"a": [SECRETS], "none": [{}]}
    assert get(jobs, job.id).result == {"used": ["deploy", "github_token"]}
    assert job_secrets() == {}  # outside a handler: nothing

    # after it ends: the ciphertext is gone too
    assert raw_row(db, job.id)["secrets"] is None
    assert_database_clean(db)


@with_key
def test_secrets_are_deleted_whenever_the_job_ends(
    app: Flask, handlers: DurableJobs, db: SQLAlchemy, seen: Seen
) -> None:
    jobs = handlers
    discarded = jobs.enqueue("discard", {"tag": "discard"}, secrets=SECRETS)
    exhausted = jobs.enqueue("fail", {"tag": "fail"}, secrets=SECRETS)
    cancelled = jobs.enqueue("use", {"tag": "cancel"}, secrets=SECRETS, delay=3600)
    retried = jobs.enqueue("leak", {"tag": "leak"}, secrets=SECRETS)
    orphan = jobs.enqueue("use", {"tag": "orphan"}, secrets=SECRETS, max_attempts=1)

    jobs.cancel(cancelled.id)
    assert raw_row(db, cancelled.id)["secrets"] is None

    # a worker claims the orphan-to-be and dies: the sweep ends it dead
    state = app.extensions["durable_jobs"]
    now = state.now()
    state.store.claim(job_types=["use"], queues=None, limit=1, now=now,
                      lease_until=now + dt.timedelta(seconds=5), token="d" * 32,
                      worker_id="gone")
    counts = jobs.drain()
    assert (counts["dead"], counts["retried"]) == (2, 1)
    move_time(seconds=10)
    assert jobs.sweep_orphans() == 1

    for job in (discarded, exhausted, cancelled, orphan):
        assert get(jobs, job.id).status in ("dead", "cancelled")
        assert raw_row(db, job.id)["secrets"] is None, job.id
    # a job that will run again keeps them, for its next attempt
    assert get(jobs, retried.id).status == "retrying"
    assert decrypt(KEY_A, raw_row(db, retried.id)["secrets"]) == SECRETS
    move_time(seconds=120)
    assert jobs.drain()["dead"] == 1
    assert seen.by_tag["leak"] == [SECRETS, SECRETS]
    assert raw_row(db, retried.id)["secrets"] is None
    assert_database_clean(db)


# -- nothing lets them out ------------------------------------------------------------------


@with_key
def test_errors_raised_with_a_secret_are_scrubbed(
    app: Flask, handlers: DurableJobs, db: SQLAlchemy
) -> None:
    jobs = handlers
    leak = jobs.enqueue("leak", {"tag": "leak"}, secrets=SECRETS)
    discard = jobs.enqueue("discard", {"tag": "discard"}, secrets=SECRETS)

    jobs.drain()
    retrying = get(jobs, leak.id)
    assert retrying.status == "retrying"
    assert retrying.last_error is not None and "GitHub said 401 for ********" in retrying.last_error
    assert "inner detail ********" in retrying.last_error  # the chained cause too
    assert_no_secret(retrying.last_error)

    move_time(seconds=120)
    jobs.drain()
    dead = get(jobs, leak.id)
    assert dead.status == "dead" and dead.attempts == 2
    assert dead.last_error is not None and "RuntimeError: GitHub said 401" in dead.last_error
    assert_no_secret(dead.last_error)
    discarded = get(jobs, discard.id)
    assert discarded.last_error == "Discard: token ******** was revoked"
    assert_database_clean(db)


@with_key
def test_a_secret_quoted_in_an_error_message_is_scrubbed_too(
    app: Flask, jobs: DurableJobs
) -> None:
    """Handlers often put secrets in messages through ``repr`` or JSON, which
    escape quotes and backslashes: the scrubbed error must not hold the
    escaped form either."""
    password = 'Tr0ub4dor\\&"3'  # a backslash and a double quote
    secrets = {"password": password}

    def quoted(payload: dict[str, t.Any]) -> None:
        given = job_secrets()
        raise RuntimeError(f"login refused: {given!r} / {json.dumps(given)}")

    jobs.handler("quoted", max_attempts=1)(quoted)
    job = jobs.enqueue("quoted", {}, secrets=secrets)
    jobs.drain()
    error = get(jobs, job.id).last_error
    assert error is not None and "login refused" in error
    forms = {password, repr(password)[1:-1], json.dumps(password)[1:-1]}
    assert len(forms) == 3
    assert_no_secret(error, sorted(forms))


@with_key
def test_the_admin_api_never_shows_secrets(
    app: Flask, handlers: DurableJobs, client: t.Any, db: SQLAlchemy
) -> None:
    jobs = handlers
    ids = [
        jobs.enqueue("use", {"tag": "use", "password": "payload-password"}, secrets=SECRETS).id,
        jobs.enqueue("leak", {"tag": "leak"}, secrets=SECRETS, max_attempts=1).id,
        jobs.enqueue("discard", {"tag": "discard"}, secrets=SECRETS).id,
    ]
    ciphertexts = [raw_row(db, job_id)["secrets"] for job_id in ids]

    def check_api() -> None:
        for url in [f"{PREFIX}/{job_id}" for job_id in ids] + [
            PREFIX, f"{PREFIX}?per_page=200", f"{PREFIX}/stats",
            *(f"{PREFIX}?status={status}" for status in ("pending", "succeeded", "dead")),
        ]:
            response = client.get(url, headers=AUTH)
            assert response.status_code == 200, url
            text = response.get_data(as_text=True)
            assert_no_secret(text, (*VALUES, *(c for c in ciphertexts if c)))
            assert "payload-password" not in text
            body = response.get_json()
            for item in body.get("items", [body]):
                assert "secrets" not in item

    check_api()  # before the jobs run
    jobs.drain()
    check_api()  # after they ended
    response = client.post(f"{PREFIX}/{ids[1]}/retry", headers=AUTH)
    assert response.status_code == 200
    assert_no_secret(response.get_data(as_text=True))


@with_key
def test_the_callback_body_carries_no_secret(
    app: Flask, handlers: DurableJobs
) -> None:
    jobs = handlers
    with Receiver() as receiver:
        jobs.enqueue("use", {"tag": "use"}, secrets=SECRETS, callback_url=receiver.url("/u"))
        jobs.enqueue("leak", {"tag": "leak"}, secrets=SECRETS, max_attempts=1,
                     callback_url=receiver.url("/l"))
        cancelled = jobs.enqueue("use", {"tag": "c"}, secrets=SECRETS, delay=60,
                                 callback_url=receiver.url("/c"))
        jobs.cancel(cancelled.id)
        jobs.drain()
        assert callbacks.deliver_due(app.extensions["durable_jobs"]) == 3
        got = receiver.received()
    assert sorted(request.path for request in got) == ["/c", "/l", "/u"]
    for request in got:
        assert_no_secret(request.body)
        assert_no_secret(json.dumps(dict(request.headers)))
        job = request.json()["job"]
        assert "secrets" not in job
    (dead,) = [request.json()["job"] for request in got if request.path == "/l"]
    assert dead["status"] == "dead" and "GitHub said 401 for ********" in dead["last_error"]


@with_key
def test_the_log_output_carries_no_secret(
    app: Flask, handlers: DurableJobs, database_url: str, seen: Seen,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="flask_durable_jobs")
    jobs = handlers
    with Receiver() as receiver:
        receiver.respond(503)
        for name in ("use", "leak", "discard", "fail"):
            jobs.enqueue(name, {"tag": name}, secrets=SECRETS, max_attempts=1,
                         callback_url=receiver.url(f"/{name}"))
        jobs.drain()
        state = app.extensions["durable_jobs"]
        callbacks.deliver_due(state)
        move_time(minutes=5)
        callbacks.deliver_due(state)
        assert len(receiver.received()) == 5
    # an undecryptable job, run by a process without its key
    late = jobs.enqueue("use", {"tag": "late"}, secrets=SECRETS)
    with other_app(database_url, seen, DURABLE_JOBS_SECRET_KEY=KEY_B) as jobs2:
        move_time(minutes=10)  # this app's clock, to where the first one's is
        jobs2.drain()
        assert get(jobs2, late.id).status == "dead"

    assert "flask_durable_jobs" in {record.name for record in caplog.records}
    assert_no_secret(caplog.text)
    for record in caplog.records:
        assert_no_secret(record.getMessage())
        assert_no_secret(repr(record.args))
        if record.exc_info and record.exc_info[1] is not None:
            assert_no_secret(str(record.exc_info[1]))


# -- configuration and key rotation ---------------------------------------------------------


@pytest.mark.config(DURABLE_JOBS_ADMIN_TOKEN=ADMIN)
def test_secrets_need_a_key_and_nothing_is_stored_without_one(
    app: Flask, handlers: DurableJobs, db: SQLAlchemy
) -> None:
    jobs = handlers
    with pytest.raises(ConfigError, match="DURABLE_JOBS_SECRET_KEY") as caught:
        jobs.enqueue("use", {"tag": "x"}, secrets=SECRETS)
    assert_no_secret(str(caught.value))
    assert raw_rows(db) == []
    job = jobs.enqueue("use", {"tag": "x"})  # the session is still usable
    assert [row["id"] for row in raw_rows(db)] == [job.id]


@pytest.mark.parametrize("key", ["not-a-fernet-key", ["", KEY_A], [KEY_A, 42]])
def test_a_bad_key_is_refused_at_init_app(database_url: str, key: t.Any) -> None:
    app = Flask("bad_key")
    app.config.update(SQLALCHEMY_DATABASE_URI=database_url, DURABLE_JOBS_SCHEDULER=False,
                      DURABLE_JOBS_SECRET_KEY=key)
    db = SQLAlchemy()
    db.init_app(app)
    with pytest.raises(ConfigError, match="DURABLE_JOBS_SECRET_KEY") as caught:
        DurableJobs().init_app(app, db=db)
    assert KEY_A not in str(caught.value)
    with app.app_context():
        for engine in db.engines.values():
            engine.dispose()


@with_key
def test_key_rotation_keeps_jobs_of_the_old_key_running(
    app: Flask, handlers: DurableJobs, db: SQLAlchemy, database_url: str, seen: Seen
) -> None:
    engine = db.engine
    old = handlers.enqueue("use", {"tag": "old"}, secrets=SECRETS)
    with other_app(database_url, seen, DURABLE_JOBS_SECRET_KEY=[KEY_B, KEY_A]) as jobs2:
        new = jobs2.enqueue("use", {"tag": "new"}, secrets={"github_token": OTHER_TOKEN})
        stored = raw_row(engine, new.id)["secrets"]
        assert decrypt(KEY_B, stored) == {"github_token": OTHER_TOKEN}  # the first key encrypts
        with pytest.raises(InvalidToken):
            decrypt(KEY_A, stored)
        assert jobs2.drain()["succeeded"] == 2
        assert get(jobs2, old.id).status == "succeeded"
    assert seen.by_tag == {"old": [SECRETS], "new": [{"github_token": OTHER_TOKEN}]}
    assert_database_clean(db, (*VALUES, OTHER_TOKEN))


@with_key
def test_a_job_whose_key_was_removed_goes_dead_without_exposing_anything(
    app: Flask, handlers: DurableJobs, db: SQLAlchemy, database_url: str, seen: Seen,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="flask_durable_jobs")
    job = handlers.enqueue("use", {"tag": "lost"}, secrets=SECRETS, max_attempts=5)
    ciphertext = raw_row(db, job.id)["secrets"]
    with other_app(database_url, seen, DURABLE_JOBS_SECRET_KEY=[KEY_B],
                   DURABLE_JOBS_ADMIN_TOKEN=ADMIN) as jobs2:
        counts = jobs2.drain()
        assert (counts["claimed"], counts["dead"]) == (1, 1)
        dead = get(jobs2, job.id)
        client = current_app.test_client()
        shown = client.get(f"{PREFIX}/{job.id}", headers=AUTH).get_data(as_text=True)
    assert seen.by_tag == {}  # the handler never ran
    assert (dead.status, dead.attempts) == ("dead", 1)
    assert dead.last_error is not None and "could not be decrypted" in dead.last_error
    leaked = (*VALUES, ciphertext, KEY_A, KEY_B)
    assert_no_secret(dead.last_error, leaked)
    assert_no_secret(shown, leaked)
    assert_no_secret(caplog.text, leaked)
    assert raw_row(db, job.id)["secrets"] is None
    assert_database_clean(db)


@pytest.mark.config(DURABLE_JOBS_SECRET_KEY=KEY_A)
def test_a_process_without_a_key_leaves_secret_jobs_waiting(
    app: Flask, jobs: DurableJobs, database_url: str
) -> None:
    """A rolling deploy that forgot the key must not kill jobs that carry secrets:
    such a process leaves them for one that can read them."""
    got: list[dict[str, t.Any]] = []
    jobs.handler("t")(lambda p: got.append(job_secrets()))
    job = jobs.enqueue("t", {}, secrets={"github_token": TOKEN})
    plain = jobs.enqueue("t", {})

    with another_app(database_url, name="keyless") as keyless:
        keyless.handler("t")(lambda p: got.append(job_secrets()))
        assert keyless.drain()["succeeded"] == 1  # only the job without secrets
    assert jobs.get(plain.id).status == "succeeded"  # type: ignore[union-attr]
    assert jobs.get(job.id).status == "pending"  # type: ignore[union-attr]
    assert jobs.drain()["succeeded"] == 1
    assert got == [{}, {"github_token": TOKEN}]


def test_current_secrets_is_seen_by_its_own_thread_only_and_restored_after() -> None:
    """``vault.current_secrets`` (what the runner wraps a handler in) sets what
    ``job_secrets()`` returns on the calling thread, restores the outer value
    when the block ends, also when it raises, and never shows it elsewhere."""
    import threading

    from flask_durable_jobs import vault

    other: list[dict[str, t.Any]] = []
    with vault.current_secrets({"a": "1"}):
        assert job_secrets() == {"a": "1"}
        thread = threading.Thread(target=lambda: other.append(job_secrets()))
        thread.start()
        thread.join()
        with pytest.raises(RuntimeError), vault.current_secrets({"b": "2"}):
            assert job_secrets() == {"b": "2"}
            raise RuntimeError("the handler failed")
        assert job_secrets() == {"a": "1"}
    assert job_secrets() == {}
    assert other == [{}]
