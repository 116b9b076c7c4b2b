"""The example app: run as a real process, enqueue through its routes and
watch the jobs finish through the admin API; and in-process, tested the way
docs/testing.rst tells users to test theirs."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import typing as t
from pathlib import Path

import pytest
import sqlalchemy as sa

from flask_durable_jobs.testing import move_time
from tests.helpers import close, wait_for

requests = pytest.importorskip("requests")

ROOT = Path(__file__).resolve().parent.parent
FLASK = str(Path(sys.executable).with_name("flask"))
GUNICORN = str(Path(sys.executable).with_name("gunicorn"))
TOKEN = "example-test-token"
TERMINAL = ("succeeded", "dead", "cancelled")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def example_env(tmp_path: Path, database_url: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLASK_")}
    env.update(
        PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
        PYTHONUNBUFFERED="1",
        DATABASE_URL=database_url or f"sqlite:///{tmp_path / 'example.db'}",
        ADMIN_TOKEN=TOKEN,
        FLASK_DURABLE_JOBS_POLL_INTERVAL="0.2",
        # A short lease and frequent sweeps: the 6-second report outlives
        # its lease many times and must still finish on its first attempt.
        FLASK_DURABLE_JOBS_LEASE_SECONDS="2",
        FLASK_DURABLE_JOBS_SWEEP_INTERVAL="0.5",
        FLASK_DURABLE_JOBS_SHUTDOWN_TIMEOUT="2",
    )
    return env


class Server:
    def __init__(
        self, tmp_path: Path, gunicorn_workers: int = 0, database_url: str | None = None
    ) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp_path / "server.log"
        self.log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        if gunicorn_workers:
            bind = f"127.0.0.1:{self.port}"
            command = [
                GUNICORN,
                "-w",
                str(gunicorn_workers),
                "-b",
                bind,
                "example_app:create_app()",
            ]
        else:
            command = [
                FLASK,
                "--app",
                "example_app",
                "run",
                "--port",
                str(self.port),
                "--no-reload",
            ]
        self.proc = subprocess.Popen(
            command,
            cwd=tmp_path,
            env=example_env(tmp_path, database_url),
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 30) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"example app exited early:\n{self.output()}")
            try:
                return requests.get(self.base + "/", timeout=1).status_code == 200
            except (requests.ConnectionError, requests.Timeout):
                return False

        wait_for("the example app to answer", ready, timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        self.log.close()


def flask_command(tmp_path: Path, env: dict[str, str], *args: str) -> str:
    """Run ``flask --app example_app ARGS`` in ``tmp_path``; return its output."""
    done = subprocess.run(
        [FLASK, "--app", "example_app", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.fixture(params=["sqlite", "postgresql"])
def example_database(request: pytest.FixtureRequest, tmp_path: Path) -> str | None:
    """None (the SQLite file) or an empty PostgreSQL database, tables created
    the production way (the example creates its tables itself on SQLite only)."""
    if request.param == "sqlite":
        return None
    url: str = request.getfixturevalue("pg_server_url")
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.exec_driver_sql("DROP SCHEMA public CASCADE")
        conn.exec_driver_sql("CREATE SCHEMA public")
    engine.dispose()
    env = example_env(tmp_path, url)
    flask_command(tmp_path, env, "jobs", "upgrade")
    flask_command(tmp_path, env, "init-db")
    return url


@pytest.fixture
def server(tmp_path: Path, example_database: str | None) -> t.Iterator[Server]:
    srv = Server(tmp_path, database_url=example_database)
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


def admin(server: Server, path: str = "", method: str = "GET") -> t.Any:
    response = requests.request(
        method,
        f"{server.base}/admin/jobs{path}",
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=5,
    )
    assert response.status_code == 200, response.text
    return response.json()


def wait_finished(server: Server, job_id: int, timeout: float = 40) -> dict[str, t.Any]:
    def finished() -> dict[str, t.Any] | None:
        job: dict[str, t.Any] = admin(server, f"/{job_id}")
        return job if job["status"] in TERMINAL else None

    try:
        result: dict[str, t.Any] = wait_for(f"job {job_id} to finish", finished, timeout)
    except AssertionError as exc:
        now = admin(server, f"/{job_id}")
        raise AssertionError(f"{exc}; job now: {now}\n{server.output()}") from None
    return result


@pytest.mark.slow
def test_example_app_runs_its_jobs(server: Server) -> None:
    base = server.base
    report = requests.post(base + "/reports", json={"seconds": 6}, timeout=5)
    assert report.status_code == 202, report.text

    ada = requests.post(
        base + "/signup",
        json={"email": "ada@example.com", "name": "Ada", "phone": "+15551234567"},
        timeout=5,
    )
    assert ada.status_code == 201, ada.text
    bob = requests.post(
        base + "/signup", json={"email": "bob@example.com", "phone": "555-bad"}, timeout=5
    )
    assert bob.status_code == 201, bob.text
    ada_jobs, bob_jobs = ada.json()["jobs"], bob.json()["jobs"]

    # The same email again: the user and its jobs are rolled back together.
    total_before = admin(server, "/stats")["total"]
    again = requests.post(base + "/signup", json={"email": "ada@example.com"}, timeout=5)
    assert again.status_code == 409, again.text
    assert admin(server, "/stats")["total"] == total_before

    welcome = wait_finished(server, ada_jobs["send_welcome_email"])
    assert welcome["status"] == "succeeded", welcome
    assert welcome["attempts"] == 1
    assert welcome["result"]["message_id"].startswith("email-")

    crm = wait_finished(server, ada_jobs["sync_to_crm"])
    assert crm["status"] == "succeeded", crm
    assert crm["attempts"] == 3  # two failures, then success
    assert crm["result"] == {"contact_id": f"crm-{ada.json()['user']['id']}"}

    sms = wait_finished(server, ada_jobs["send_sms"])
    assert sms["status"] == "succeeded", sms

    bad_sms = wait_finished(server, bob_jobs["send_sms"])
    assert bad_sms["status"] == "dead", bad_sms
    assert bad_sms["attempts"] == 1  # Discard: no retries
    assert "E.164" in bad_sms["last_error"]

    long_job = wait_finished(server, report.json()["job"])
    assert long_job["status"] == "succeeded", long_job
    assert long_job["attempts"] == 1, "the sweep took a job whose lease was being renewed"
    assert long_job["result"]["took"] >= 6

    for job in (welcome, crm, long_job):
        assert job["finished_at"].endswith("+00:00"), job

    user = requests.get(f"{base}/users/{ada.json()['user']['id']}", timeout=5).json()
    assert user["welcome_message_id"] == welcome["result"]["message_id"]
    assert user["crm_calls"] == 3

    for job_id in bob_jobs.values():
        wait_finished(server, job_id)
    stats = admin(server, "/stats")
    for job_type in ("send_welcome_email", "sync_to_crm", "send_sms", "build_report"):
        assert job_type in stats["by_type"], stats
    assert stats["total"] == 7, stats  # 3 + 3 signup jobs and the report
    assert stats["by_status"]["dead"] == 1, stats
    assert stats["by_status"]["succeeded"] == 6, stats
    assert stats["unhandled"] == {}, stats

    listed = admin(server, "?status=dead")
    assert [item["id"] for item in listed["items"]] == [bad_sms["id"]]
    assert "Traceback" not in server.output(), server.output()


@pytest.mark.slow
def test_example_admin_api_needs_the_token(server: Server) -> None:
    url = server.base + "/admin/jobs/stats"
    assert requests.get(url, timeout=5).status_code == 401
    wrong = requests.get(url, headers={"Authorization": "Bearer nope"}, timeout=5)
    assert wrong.status_code == 401
    assert "error" in wrong.json()


@pytest.mark.slow
def test_example_under_gunicorn_runs_each_job_once(tmp_path: Path) -> None:
    """The production commands from example_app/README.md, on SQLite."""
    if not Path(GUNICORN).exists():
        pytest.skip("gunicorn is not installed")
    env = example_env(tmp_path)
    flask_command(tmp_path, env, "jobs", "upgrade")
    flask_command(tmp_path, env, "init-db")
    srv = Server(tmp_path, gunicorn_workers=3)
    try:
        srv.wait_ready()
        ids = []
        for n in range(6):
            response = requests.post(
                srv.base + "/signup", json={"email": f"user{n}@example.com"}, timeout=5
            )
            assert response.status_code == 201, response.text
            ids += list(response.json()["jobs"].items())
        for job_type, job_id in ids:
            job = wait_finished(srv, job_id)
            assert job["status"] == "succeeded", job
            # Three workers poll the same table; every job still ran only as
            # often as its own failures made it.
            assert job["attempts"] == (3 if job_type == "sync_to_crm" else 1), job
        output = srv.output()
        assert output.count("durable jobs scheduler started") == 3, output
        assert "Traceback" not in output, output
    finally:
        srv.stop()


@pytest.mark.slow
def test_example_cli_works_without_a_server(tmp_path: Path) -> None:
    stats = json.loads(flask_command(tmp_path, example_env(tmp_path), "jobs", "stats"))
    assert stats["total"] == 0 and sum(stats["by_status"].values()) == 0


# -- in-process, as docs/testing.rst describes ---------------------------------


@pytest.fixture
def example(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> t.Iterator[t.Any]:
    for key in list(os.environ):
        if key.startswith("FLASK_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'example.db'}")
    monkeypatch.delenv("ADMIN_TOKEN", raising=False)
    monkeypatch.syspath_prepend(str(ROOT))
    from example_app import create_app
    from example_app.models import db
    from example_app.tasks import jobs

    config = {"TESTING": True, "DURABLE_JOBS_SCHEDULER": False}
    for marker in request.node.iter_markers("config"):
        config.update(marker.kwargs)
    app = create_app(config)
    with app.app_context():
        try:
            yield app, jobs
        finally:
            close(jobs, db)


def test_example_jobs_run_with_drain(example: t.Any) -> None:
    app, jobs = example
    client = app.test_client()
    response = client.post("/signup", json={"email": "ada@example.com", "phone": "555"})
    assert response.status_code == 201, response.json
    ids = response.json["jobs"]
    assert jobs.get(ids["send_welcome_email"]).status == "pending"

    counts = jobs.drain()

    assert counts["claimed"] == 3, counts
    welcome = jobs.get(ids["send_welcome_email"])
    assert welcome.status == "succeeded"
    assert welcome.result["message_id"].startswith("email-")
    sms = jobs.get(ids["send_sms"])
    assert (sms.status, sms.attempts) == ("dead", 1)
    assert "phone number" in sms.last_error
    crm = jobs.get(ids["sync_to_crm"])
    assert (crm.status, crm.attempts) == ("retrying", 1)  # due again in 1 s

    for attempt in (2, 3):
        move_time(seconds=2)  # past the handler's 1-second backoff
        assert jobs.drain()["claimed"] == 1
        assert jobs.get(crm.id).attempts == attempt
    crm = jobs.get(crm.id)
    assert (crm.status, crm.attempts) == ("succeeded", 3)


def test_example_signup_rollback_discards_its_jobs(example: t.Any) -> None:
    app, jobs = example
    client = app.test_client()
    assert client.post("/signup", json={"email": "ada@example.com"}).status_code == 201
    _, before = jobs.list_jobs()
    assert client.post("/signup", json={"email": "ada@example.com"}).status_code == 409
    _, after = jobs.list_jobs()
    assert after == before == 2


@pytest.mark.usefixtures("example")
def test_example_handler_called_directly_is_idempotent() -> None:
    from example_app.models import User, db
    from example_app.tasks import send_welcome_email

    user = User(email="ada@example.com")
    db.session.add(user)
    db.session.commit()
    first = send_welcome_email({"user_id": user.id})
    second = send_welcome_email({"user_id": user.id})  # what a retry would do
    assert first == second


@pytest.mark.config(DURABLE_JOBS_EAGER=True)
def test_example_eager_jobs_run_before_the_response(example: t.Any) -> None:
    app, jobs = example
    response = app.test_client().post("/signup", json={"email": "ada@example.com"})
    assert response.status_code == 201, response.json
    assert jobs.get(response.json["jobs"]["send_welcome_email"]).status == "succeeded"
