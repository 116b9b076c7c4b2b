"""Completion callbacks against a real local HTTP receiver, on SQLite and PostgreSQL.

The receiver (``tests/procs/callback_app.py``) listens on 127.0.0.1 and records
every request; the tests call :func:`callbacks.deliver_due` themselves (the
scheduler is off) and move the library clock to make retries due.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
import socket
import subprocess
import sys
import time
import typing as t
from pathlib import Path

import pytest
import sqlalchemy as sa
from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from flask_durable_jobs import ConfigError, Discard, DurableJobs, callbacks, config, masking
from flask_durable_jobs.masking import MASK
from flask_durable_jobs.models import TABLE_NAME
from flask_durable_jobs.testing import move_time
from tests.procs.callback_app import Received, Receiver

ROOT = Path(__file__).resolve().parent.parent

SECRET = "test-callback-signing-secret"
HOSTS = ["127.0.0.1"]
allowed = pytest.mark.config(
    DURABLE_JOBS_CALLBACK_SECRET=SECRET, DURABLE_JOBS_CALLBACK_HOSTS=HOSTS
)
CALLBACK_FIELDS = ("status", "result", "attempts", "last_error", "finished_at", "updated_at",
                   "payload", "run_at")


@pytest.fixture
def receiver() -> t.Iterator[Receiver]:
    with Receiver() as server:
        yield server


@pytest.fixture
def handlers(jobs: DurableJobs) -> DurableJobs:
    def ok(payload: dict[str, t.Any]) -> dict[str, t.Any]:
        return {"sent": True, "api_token": "result-token-value"}

    def discard(payload: dict[str, t.Any]) -> None:
        raise Discard("recipient does not exist")

    def flaky(payload: dict[str, t.Any]) -> None:
        raise RuntimeError("upstream is down")

    jobs.handler("ok")(ok)
    jobs.handler("discard")(discard)
    jobs.handler("flaky", max_attempts=3, backoff=lambda attempt: 3600)(flaky)
    return jobs


def deliver(app: Flask) -> int:
    return callbacks.deliver_due(app.extensions["durable_jobs"])


def job_row(jobs: DurableJobs, job_id: int) -> t.Any:
    job = jobs.get(job_id)
    assert job is not None
    return job


def outcome(jobs: DurableJobs, job_id: int) -> dict[str, t.Any]:
    """The job's own fields, which callbacks must never change."""
    job = job_row(jobs, job_id)
    return {name: getattr(job, name) for name in CALLBACK_FIELDS}


def count_rows(db: SQLAlchemy) -> int:
    with db.engine.connect() as conn:
        return int(conn.execute(sa.text(f"SELECT count(*) FROM {TABLE_NAME}")).scalar_one())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def assert_signed(request: Received) -> None:
    timestamp = request.headers["x-durable-jobs-timestamp"]
    signature = request.headers["x-durable-jobs-signature"]
    assert signature.startswith("sha256=")
    assert callbacks.verify(SECRET, timestamp, request.body, signature)


# -- delivery ---------------------------------------------------------------------------


@allowed
def test_each_terminal_job_gets_exactly_one_signed_masked_delivery(
    app: Flask, handlers: DurableJobs, receiver: Receiver
) -> None:
    jobs = handlers
    succeeded = jobs.enqueue("ok", {"to": "a@b.c", "password": "hunter2"},
                             callback_url=receiver.url("/hooks/succeeded"))
    dead = jobs.enqueue("discard", {"to": "x@y.z"}, callback_url=receiver.url("/hooks/dead"))
    cancelled = jobs.enqueue("ok", {"n": 1}, delay=3600,
                             callback_url=receiver.url("/hooks/cancelled?x=1"))
    retrying = jobs.enqueue("flaky", {}, callback_url=receiver.url("/hooks/retrying"))
    plain = jobs.enqueue("ok", {})
    assert job_row(jobs, succeeded.id).callback_status is None  # not before the end

    jobs.cancel(cancelled.id)
    counts = jobs.drain()
    assert (counts["succeeded"], counts["dead"], counts["retried"]) == (2, 1, 1)
    for job in (succeeded, dead, cancelled):
        row = job_row(jobs, job.id)
        assert (row.callback_status, row.callback_attempts) == ("pending", 0)
    assert job_row(jobs, retrying.id).status == "retrying"
    assert job_row(jobs, retrying.id).callback_status is None
    assert job_row(jobs, plain.id).callback_status is None

    assert deliver(app) == 3
    assert deliver(app) == 0
    move_time(minutes=30)  # nothing is waiting for a retry: nothing more is sent
    assert deliver(app) == 0

    got = receiver.received()
    assert sorted(r.path for r in got) == [
        "/hooks/cancelled?x=1", "/hooks/dead", "/hooks/succeeded"
    ]
    by_path = {r.path: r for r in got}
    expected = {"/hooks/succeeded": (succeeded.id, "succeeded"),
                "/hooks/dead": (dead.id, "dead"),
                "/hooks/cancelled?x=1": (cancelled.id, "cancelled")}
    for path, (job_id, status) in expected.items():
        request = by_path[path]
        assert request.method == "POST"
        assert request.headers["content-type"] == "application/json"
        assert_signed(request)
        body = request.json()
        assert body["event"] == "job.finished"
        assert (body["job"]["id"], body["job"]["status"]) == (job_id, status)
        for hidden in ("callback_url", "secrets", "lease_token", "callback_status"):
            assert hidden not in body["job"]
        row = job_row(jobs, job_id)
        assert (row.callback_status, row.callback_attempts, row.callback_error) == (
            "delivered", 1, None
        )

    done = by_path["/hooks/succeeded"].json()["job"]
    assert done["payload"] == {"to": "a@b.c", "password": MASK}
    assert done["result"] == {"sent": True, "api_token": MASK}
    assert b"hunter2" not in by_path["/hooks/succeeded"].body
    assert b"result-token-value" not in by_path["/hooks/succeeded"].body
    assert by_path["/hooks/dead"].json()["job"]["last_error"] == "Discard: recipient does not exist"

    # the retrying job sent nothing, and still has no callback state
    row = job_row(jobs, retrying.id)
    assert (row.status, row.callback_status, row.callback_attempts) == ("retrying", None, 0)


@allowed
def test_signature_refuses_wrong_secret_tampering_and_old_timestamps(
    app: Flask, handlers: DurableJobs, receiver: Receiver
) -> None:
    handlers.enqueue("ok", {"amount": 10}, callback_url=receiver.url())
    handlers.drain()
    assert deliver(app) == 1
    (request,) = receiver.received()
    timestamp = request.headers["x-durable-jobs-timestamp"]
    signature = request.headers["x-durable-jobs-signature"]
    body = request.body
    assert abs(int(timestamp) - time.time()) < 60
    assert signature == callbacks.sign(SECRET, timestamp, body)
    assert callbacks.verify(SECRET, timestamp, body, signature)

    assert not callbacks.verify("another-secret", timestamp, body, signature)
    assert not callbacks.verify(SECRET, timestamp, body.replace(b"10", b"99"), signature)
    assert not callbacks.verify(SECRET, timestamp, body + b" ", signature)
    assert not callbacks.verify(SECRET, str(int(timestamp) + 1), body, signature)
    assert not callbacks.verify(SECRET, timestamp, body, "")
    assert not callbacks.verify(SECRET, "not-a-number", body, signature)
    # the same request replayed later than the tolerance
    late = int(timestamp) + callbacks.DEFAULT_TOLERANCE + 1
    assert not callbacks.verify(SECRET, timestamp, body, signature, now=late)
    assert callbacks.verify(SECRET, timestamp, body, signature, now=late - 2)
    # a correct signature over an old timestamp is still refused
    old = str(int(time.time()) - 3600)
    assert not callbacks.verify(SECRET, old, body, callbacks.sign(SECRET, old, body))


# -- outages and answers ----------------------------------------------------------------


@allowed
@pytest.mark.parametrize("answer", [503, 429])
def test_an_outage_is_retried_with_backoff_until_delivered(
    app: Flask, handlers: DurableJobs, receiver: Receiver, answer: int
) -> None:
    jobs = handlers
    receiver.respond(answer)
    job = jobs.enqueue("ok", {}, callback_url=receiver.url())
    jobs.drain()
    before = outcome(jobs, job.id)

    assert deliver(app) == 0
    row = job_row(jobs, job.id)
    assert (row.callback_status, row.callback_attempts) == ("pending", 1)
    assert row.callback_error == f"HTTP {answer}"
    assert deliver(app) == 0  # the retry waits for its backoff (about 10 s)
    move_time(seconds=5)
    assert deliver(app) == 0
    assert len(receiver.received()) == 1

    move_time(seconds=10)
    assert deliver(app) == 1
    row = job_row(jobs, job.id)
    assert (row.callback_status, row.callback_attempts, row.callback_error) == (
        "delivered", 2, None
    )
    first, second = receiver.received()
    assert first.body == second.body  # the same event, sent again
    assert_signed(first)
    assert_signed(second)
    move_time(hours=2)
    assert deliver(app) == 0
    assert len(receiver.received()) == 2
    assert outcome(jobs, job.id) == before


@allowed
@pytest.mark.parametrize("answer", [400, 404, 410, 301, 302])
def test_other_answers_fail_the_callback_without_retrying(
    app: Flask, handlers: DurableJobs, receiver: Receiver, answer: int
) -> None:
    jobs = handlers
    receiver.respond(answer)
    job = jobs.enqueue("ok", {}, callback_url=receiver.url())
    jobs.drain()

    assert deliver(app) == 0
    row = job_row(jobs, job.id)
    assert (row.callback_status, row.callback_attempts) == ("failed", 1)
    assert row.callback_error is not None and f"HTTP {answer}" in row.callback_error
    for _ in range(3):
        move_time(hours=2)
        assert deliver(app) == 0
    assert len(receiver.received()) == 1
    assert job_row(jobs, job.id).status == "succeeded"


@allowed
def test_a_refused_connection_is_retried(app: Flask, handlers: DurableJobs) -> None:
    jobs = handlers
    port = free_port()  # nothing listens there now
    job = jobs.enqueue("ok", {}, callback_url=f"http://127.0.0.1:{port}/late")
    jobs.drain()

    assert deliver(app) == 0
    row = job_row(jobs, job.id)
    assert (row.callback_status, row.callback_attempts) == ("pending", 1)
    assert row.callback_error is not None and "ConnectionError" in row.callback_error

    with Receiver(port=port) as receiver:  # the receiver comes back
        move_time(seconds=15)
        assert deliver(app) == 1
        (request,) = receiver.received()
    assert request.path == "/late"
    assert_signed(request)
    row = job_row(jobs, job.id)
    assert (row.callback_status, row.callback_attempts, row.callback_error) == (
        "delivered", 2, None
    )


@allowed
def test_callback_failures_never_change_the_jobs_outcome(
    app: Flask, handlers: DurableJobs, receiver: Receiver
) -> None:
    jobs = handlers
    receiver.respond(400, path="/ok")
    receiver.respond(500, 500, 500, path="/cancelled")
    refused = f"http://127.0.0.1:{free_port()}/gone"
    succeeded = jobs.enqueue("ok", {}, callback_url=receiver.url("/ok"))
    dead = jobs.enqueue("discard", {}, callback_url=refused)
    cancelled = jobs.enqueue("ok", {}, delay=60, callback_url=receiver.url("/cancelled"))
    jobs.cancel(cancelled.id)
    jobs.drain()
    before = {job.id: outcome(jobs, job.id) for job in (succeeded, dead, cancelled)}

    for _ in range(callbacks.MAX_ATTEMPTS + 2):
        deliver(app)
        move_time(hours=2)  # longer than any callback backoff
    assert jobs.drain()["claimed"] == 0

    after = {job_id: outcome(jobs, job_id) for job_id in before}
    assert after == before
    row = job_row(jobs, succeeded.id)
    assert (row.callback_status, row.callback_attempts) == ("failed", 1)
    row = job_row(jobs, dead.id)
    assert (row.callback_status, row.callback_attempts) == ("failed", callbacks.MAX_ATTEMPTS)
    assert row.callback_error is not None
    assert f"gave up after {callbacks.MAX_ATTEMPTS} attempts" in row.callback_error
    row = job_row(jobs, cancelled.id)  # 500 three times, then 200
    assert (row.callback_status, row.callback_attempts) == ("delivered", 4)
    # the admin view shows the job as it ended, with the callback's own state beside it
    assert job_row(jobs, dead.id).last_error == "Discard: recipient does not exist"


@allowed
def test_a_pending_callback_keeps_its_job_from_being_pruned(
    app: Flask, handlers: DurableJobs, receiver: Receiver
) -> None:
    jobs = handlers
    receiver.respond(503)
    job = jobs.enqueue("ok", {}, callback_url=receiver.url())
    other = jobs.enqueue("ok", {})
    jobs.drain()
    assert deliver(app) == 0
    move_time(days=40)
    assert jobs.prune() == 1  # only the job without a callback
    assert jobs.get(other.id) is None
    assert job_row(jobs, job.id).callback_status == "pending"
    assert deliver(app) == 1
    assert jobs.prune() == 1
    assert jobs.get(job.id) is None


# -- where callbacks may go -------------------------------------------------------------


@pytest.mark.config(DURABLE_JOBS_CALLBACK_SECRET=SECRET)
@pytest.mark.parametrize("host", [
    "127.0.0.1", "localhost", "127.1", "2130706433", "0.0.0.0", "[::1]",
    "[::ffff:127.0.0.1]", "10.0.0.1", "169.254.169.254",
    # IPv6 addresses that carry an IPv4 one: NAT64, 6to4, IPv4-compatible
    "[64:ff9b::7f00:1]", "[64:ff9b::a9fe:a9fe]", "[2002:7f00:1::1]", "[2002:a00:1::]",
    "[::127.0.0.1]", "[64:ff9b:1::808:808]",
])
def test_internal_hosts_are_refused_and_never_contacted(
    app: Flask, handlers: DurableJobs, receiver: Receiver, host: str
) -> None:
    """No allow-list: only public addresses, however the host is spelled."""
    jobs = handlers
    job = jobs.enqueue("ok", {}, callback_url=f"http://{host}:{receiver.port}/internal")
    jobs.drain()

    assert deliver(app) == 0
    row = job_row(jobs, job.id)
    assert (row.status, row.callback_status, row.callback_attempts) == ("succeeded", "failed", 1)
    assert row.callback_error is not None and "refused" in row.callback_error
    assert repr(host.strip("[]")) in row.callback_error  # names the host
    move_time(hours=2)
    assert deliver(app) == 0
    assert receiver.received() == []


@pytest.mark.parametrize(("host", "carried"), [
    ("64:ff9b::808:808", "8.8.8.8"), ("2002:808:808::1", "8.8.8.8"),
    ("64:ff9b::7f00:1", "127.0.0.1"), ("2002:a9fe:a9fe::", "169.254.169.254"),
])
def test_an_ipv6_address_is_judged_by_the_ipv4_address_it_carries(
    host: str, carried: str
) -> None:
    settings = config.load({"DURABLE_JOBS_CALLBACK_SECRET": SECRET})
    url = f"https://[{host}]/hook"
    if ipaddress.ip_address(carried).is_global:
        assert callbacks.resolve_target(url, settings) == host
    else:
        with pytest.raises(callbacks.Refused, match=re.escape(f"({carried})")):
            callbacks.resolve_target(url, settings)


def test_a_refusal_does_not_show_the_urls_password() -> None:
    settings = config.load({"DURABLE_JOBS_CALLBACK_SECRET": SECRET})
    with pytest.raises(callbacks.Refused) as caught:
        callbacks.resolve_target("ftp://ops:s3cr3t@hooks.example.com/x", settings)
    assert "s3cr3t" not in str(caught.value) and "hooks.example.com" in str(caught.value)


@pytest.mark.config(DURABLE_JOBS_CALLBACK_SECRET=SECRET)
def test_a_name_that_resolves_to_an_internal_address_when_connecting_is_never_contacted(
    app: Flask, handlers: DurableJobs, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DNS rebinding: the name resolves to a public address when the target is
    checked, and to 127.0.0.1 afterwards. The receiver must still see nothing."""
    real = socket.getaddrinfo
    lookups: list[str] = []

    def rebinding(host: t.Any, port: t.Any, *args: t.Any, **kwargs: t.Any) -> t.Any:
        if host == "rebind.example":
            lookups.append(host)
            address = "93.184.216.34" if len(lookups) == 1 else "127.0.0.1"
            return real(address, port, *args, **kwargs)
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    job = handlers.enqueue("ok", {}, callback_url=f"http://rebind.example:{receiver.port}/x")
    handlers.drain()
    deliver(app)
    assert lookups, "the host was never looked up"
    assert receiver.received() == [], (
        "a callback reached 127.0.0.1 through a name that resolved to a public"
        " address only when it was checked"
    )
    assert job_row(handlers, job.id).callback_status != "delivered"


@pytest.mark.config(DURABLE_JOBS_CALLBACK_SECRET=SECRET)
def test_a_temporary_dns_failure_is_retried(
    app: Flask, handlers: DurableJobs, monkeypatch: pytest.MonkeyPatch
) -> None:
    """'Temporary failure in name resolution' is a network error like any other:
    the delivery is retried, as it is when requests itself fails to resolve."""
    real = socket.getaddrinfo

    def failing(host: t.Any, port: t.Any, *args: t.Any, **kwargs: t.Any) -> t.Any:
        if host == "hooks.example.com":
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", failing)
    job = handlers.enqueue("ok", {}, callback_url="https://hooks.example.com/done")
    handlers.drain()
    assert deliver(app) == 0
    row = job_row(handlers, job.id)
    assert row.callback_error is not None and "hooks.example.com" in row.callback_error
    assert (row.callback_status, row.callback_attempts) == ("pending", 1), row.callback_error


@allowed
def test_with_an_allow_list_a_dns_failure_is_retried(
    app: Flask, handlers: DurableJobs, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = socket.getaddrinfo

    def failing(host: t.Any, port: t.Any, *args: t.Any, **kwargs: t.Any) -> t.Any:
        if host == "127.0.0.1":
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return real(host, port, *args, **kwargs)

    job = handlers.enqueue("ok", {}, callback_url=f"http://127.0.0.1:{free_port()}/done")
    handlers.drain()
    monkeypatch.setattr(socket, "getaddrinfo", failing)
    assert deliver(app) == 0
    row = job_row(handlers, job.id)
    assert (row.callback_status, row.callback_attempts) == ("pending", 1), row.callback_error


@allowed
@pytest.mark.parametrize(("url", "why"), [
    ("ftp://127.0.0.1/hook", "http or https"),
    ("file:///etc/passwd", "http or https"),
    ("javascript:alert(1)", "http or https"),
    ("127.0.0.1/hook", "http or https"),
    ("http:///no-host", "with a host"),
    ("https://example.com/hook", "'example.com' is not in DURABLE_JOBS_CALLBACK_HOSTS"),
    ("http://127.0.0.2/hook", "'127.0.0.2' is not in DURABLE_JOBS_CALLBACK_HOSTS"),
    ("http://127.0.0.1.example.com/x", "not in DURABLE_JOBS_CALLBACK_HOSTS"),
    (12345, "URL string"),
])
def test_enqueue_refuses_bad_callback_urls(
    app: Flask, handlers: DurableJobs, db: SQLAlchemy, url: t.Any, why: str
) -> None:
    with pytest.raises(ValueError, match="callback_url") as caught:
        handlers.enqueue("ok", {}, callback_url=url)
    assert why in str(caught.value)
    assert count_rows(db) == 0


@pytest.mark.config(DURABLE_JOBS_CALLBACK_HOSTS=HOSTS)
def test_enqueue_with_a_callback_needs_a_signing_secret(
    app: Flask, handlers: DurableJobs, db: SQLAlchemy, receiver: Receiver
) -> None:
    with pytest.raises(ConfigError, match="DURABLE_JOBS_CALLBACK_SECRET"):
        handlers.enqueue("ok", {}, callback_url=receiver.url())
    assert count_rows(db) == 0
    handlers.enqueue("ok", {})  # without a callback, fine
    assert count_rows(db) == 1


# -- one bad callback among others -------------------------------------------------------


def three_pending(jobs: DurableJobs, receiver: Receiver) -> list[int]:
    ids = [jobs.enqueue("ok", {"i": i}, callback_url=receiver.url(f"/hook/{i}")).id
           for i in range(3)]
    jobs.drain()
    assert {job_row(jobs, i).callback_status for i in ids} == {"pending"}
    return ids


@allowed
def test_a_payload_stored_deeper_than_enqueue_accepts_is_delivered_cut(
    app: Flask, handlers: DurableJobs, db: SQLAlchemy, receiver: Receiver
) -> None:
    """Written into the table by other means, 500 levels deep: the callback is
    built all the same (masked, cut at masking's depth), and so are the others."""
    first, deep_id, last = three_pending(handlers, receiver)
    deep: t.Any = {"leaf": True}
    for _ in range(500):
        deep = {"password": "p", "next": deep}
    table = db.metadata.tables[TABLE_NAME]
    db.session.execute(sa.update(table).where(table.c.id == deep_id).values(payload=deep))
    db.session.commit()

    assert deliver(app) == 3
    by_path = {r.path: r.json()["job"] for r in receiver.received()}
    assert sorted(by_path) == ["/hook/0", "/hook/1", "/hook/2"]
    payload, levels = by_path["/hook/1"]["payload"], 0
    while isinstance(payload, dict):
        assert payload["password"] == MASK
        payload, levels = payload["next"], levels + 1
    assert (payload, levels) == (masking.TOO_DEEP, masking.MAX_DEPTH + 1)
    for job_id in (first, deep_id, last):
        assert job_row(handlers, job_id).callback_status == "delivered"


@allowed
def test_a_callback_whose_body_cannot_be_built_fails_alone(
    app: Flask, handlers: DurableJobs, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, broken, last = three_pending(handlers, receiver)
    real = callbacks.body_for

    def body_for(job: t.Any) -> bytes:
        if job.id == broken:
            raise RecursionError("maximum recursion depth exceeded")
        return real(job)

    monkeypatch.setattr(callbacks, "body_for", body_for)
    assert deliver(app) == 2
    assert sorted(r.path for r in receiver.received()) == ["/hook/0", "/hook/2"]
    row = job_row(handlers, broken)
    assert (row.callback_status, row.callback_attempts) == ("failed", 1)
    assert row.callback_error == (
        "the callback body could not be built: RecursionError: maximum recursion depth exceeded"
    )
    assert row.status == "succeeded"  # the job's own outcome is untouched
    for job_id in (first, last):
        assert job_row(handlers, job_id).callback_status == "delivered"
    move_time(hours=2)
    assert deliver(app) == 0 and len(receiver.received()) == 2  # not retried


@allowed
def test_an_unexpected_error_leaves_that_callback_to_its_claim(
    app: Flask, handlers: DurableJobs, receiver: Receiver, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, unlucky, _ = three_pending(handlers, receiver)
    real = callbacks.resolve_target

    def resolve(url: str, settings: t.Any) -> str:
        if url.endswith("/hook/1"):
            raise KeyError("a bug somewhere")
        return real(url, settings)

    monkeypatch.setattr(callbacks, "resolve_target", resolve)
    with caplog.at_level(logging.ERROR, logger="flask_durable_jobs"):
        assert deliver(app) == 2
    [record] = [r for r in caplog.records if r.name == "flask_durable_jobs"]
    assert f"job {unlucky}" in record.getMessage() and record.exc_info is not None
    row = job_row(handlers, unlucky)
    assert (row.callback_status, row.callback_attempts) == ("pending", 0)

    monkeypatch.setattr(callbacks, "resolve_target", real)
    assert deliver(app) == 0  # still claimed
    move_time(seconds=callbacks.CLAIM_SECONDS + 1)
    assert deliver(app) == 1
    assert sorted(r.path for r in receiver.received()) == ["/hook/0", "/hook/1", "/hook/2"]
    assert job_row(handlers, unlucky).callback_status == "delivered"


# -- several processes ------------------------------------------------------------------


@pytest.mark.slow
@allowed
def test_three_processes_deliver_each_callback_exactly_once(
    app: Flask, handlers: DurableJobs, database_url: str, tmp_path: Path
) -> None:
    jobs = handlers
    with Receiver(delay=0.02) as receiver:
        ids = [jobs.enqueue("ok", {"i": i}, callback_url=receiver.url(f"/ok/{i}")).id
               for i in range(40)]
        ids += [jobs.enqueue("discard", {"i": i}, callback_url=receiver.url(f"/dead/{i}")).id
                for i in range(5)]
        for i in range(5):
            job = jobs.enqueue("ok", {"i": i}, delay=3600,
                               callback_url=receiver.url(f"/cancelled/{i}"))
            jobs.cancel(job.id)
            ids.append(job.id)
        jobs.drain()
        assert {job_row(jobs, i).callback_status for i in ids} == {"pending"}

        env = {k: v for k, v in os.environ.items() if not k.startswith("CALLBACKAPP_")}
        env.update(
            PYTHONUNBUFFERED="1",
            CALLBACKAPP_SQLALCHEMY_DATABASE_URI=database_url,
            CALLBACKAPP_DURABLE_JOBS_CALLBACK_SECRET=SECRET,
            CALLBACKAPP_DURABLE_JOBS_CALLBACK_HOSTS=json.dumps(HOSTS),
        )
        script = str(ROOT / "tests" / "procs" / "callback_app.py")
        go = tmp_path / "go"
        procs = [
            subprocess.Popen(
                [sys.executable, script, str(go), "60"], cwd=tmp_path, env=env,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )
            for _ in range(3)
        ]
        reports = []
        try:
            deadline = time.monotonic() + 60
            while len(list(tmp_path.glob("go.ready-*"))) < 3:
                assert time.monotonic() < deadline, "the delivering processes did not start"
                assert all(proc.poll() is None for proc in procs), "a process exited early"
                time.sleep(0.02)
            go.touch()  # all three start delivering together
            for proc in procs:
                out, err = proc.communicate(timeout=120)
                assert proc.returncode == 0, err
                reports.append(json.loads(out.strip().splitlines()[-1]))
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(timeout=10)
        got = receiver.received()

    assert len({report["pid"] for report in reports}) == 3
    assert sum(report["delivered"] for report in reports) == len(ids), reports
    assert all(report["pending_left"] == 0 for report in reports), reports

    delivered_ids = [request.json()["job"]["id"] for request in got]
    assert sorted(delivered_ids) == sorted(ids), "each job delivered exactly once"
    for request in got:
        assert_signed(request)
        kind = request.path.split("/")[1]
        job = request.json()["job"]
        assert job["status"] == {"ok": "succeeded", "dead": "dead",
                                 "cancelled": "cancelled"}[kind]
        assert request.path == f"/{kind}/{job['payload']['i']}"
    for job_id in ids:
        row = job_row(jobs, job_id)
        assert (row.callback_status, row.callback_attempts, row.callback_error) == (
            "delivered", 1, None
        )
