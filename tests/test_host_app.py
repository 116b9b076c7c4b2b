"""A good guest in the host app: its test suite, its threads, its logs, its driver."""

from __future__ import annotations

import gc
import os
import pathlib
import subprocess
import sys
import textwrap
import threading
import typing as t

import pytest
import sqlalchemy as sa
from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from flask_durable_jobs import ConfigError, DurableJobs
from flask_durable_jobs.migrations import upgrade
from tests.helpers import close, wait_for

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _app(url: str, jobs: DurableJobs, **config: t.Any) -> tuple[Flask, SQLAlchemy]:
    app = Flask("host")
    app.config.update(SQLALCHEMY_DATABASE_URI=url, **config)
    db = SQLAlchemy(app)
    jobs.init_app(app, db=db)
    return app, db


def _python(code: str, *args: str, cwd: pathlib.Path | None = None,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args], cwd=cwd or ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        capture_output=True, text=True, timeout=120,
    )


# -- when the scheduler starts ------------------------------------------------


def test_testing_app_has_no_scheduler_unless_asked(tmp_path: pathlib.Path) -> None:
    jobs = DurableJobs()
    app, db = _app(f"sqlite:///{tmp_path / 'a.db'}", jobs, TESTING=True)
    with app.app_context():
        assert app.extensions["durable_jobs"].scheduler is None
        assert app.extensions["durable_jobs"].settings.scheduler is False
        close(jobs, db)
    asked, db = _app(f"sqlite:///{tmp_path / 'b.db'}", jobs, TESTING=True,
                     DURABLE_JOBS_SCHEDULER=True)
    with asked.app_context():
        db.create_all()
        state = asked.extensions["durable_jobs"]
        assert state.scheduler is not None and state.scheduler.running
        close(jobs, db)


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:"])
def test_in_memory_sqlite_never_gets_a_scheduler(url: str) -> None:
    jobs = DurableJobs()
    app, db = _app(url, jobs, DURABLE_JOBS_SCHEDULER=True)
    with app.app_context():
        assert app.extensions["durable_jobs"].scheduler is None
        with pytest.raises(ConfigError, match="in-memory SQLite"):
            jobs.start()
        close(jobs, db)


def test_in_memory_sqlite_runs_nothing_on_the_sessions_connection() -> None:
    """The library's own work refuses, saying why, instead of running inside
    the caller's transaction; the caller's rows are untouched."""
    db = SQLAlchemy()
    jobs = DurableJobs()

    class Note(db.Model):  # type: ignore[name-defined,misc]
        id = db.Column(db.Integer, primary_key=True)

    jobs.handler("noop")(lambda payload: None)
    app = Flask("memory")
    app.config.update(SQLALCHEMY_DATABASE_URI="sqlite://", TESTING=True,
                      DURABLE_JOBS_SCHEDULER=True)
    db.init_app(app)
    jobs.init_app(app, db=db)
    with app.app_context():
        db.create_all()
        job = jobs.enqueue("noop", {})  # joins the session: that works
        db.session.add(Note())
        db.session.flush()  # the caller's transaction is open
        for call in (jobs.drain, lambda: jobs.get(job.id), jobs.stats):
            with pytest.raises(ConfigError, match="use a database file"):
                call()
        db.session.commit()
        assert db.session.query(Note).count() == 1
        assert db.session.execute(sa.text("SELECT count(*) FROM durable_jobs")).scalar() == 1
        close(jobs, db)


def test_twenty_testing_apps_on_in_memory_sqlite() -> None:
    """The issue's reproduction: create_all, a row, a commit, 20 times; the
    scheduler asked for by name, which in-memory SQLite still does not get."""
    for _ in range(20):
        db = SQLAlchemy()

        class User(db.Model):  # type: ignore[name-defined,misc]
            id = db.Column(db.Integer, primary_key=True)

        jobs = DurableJobs()
        app = Flask("microblog")
        app.config.update(SQLALCHEMY_DATABASE_URI="sqlite://", TESTING=True,
                          DURABLE_JOBS_SCHEDULER=True)
        db.init_app(app)
        jobs.init_app(app, db=db)
        with app.app_context():
            db.create_all()
            db.session.add(User())
            db.session.commit()
            assert db.session.query(User).count() == 1
            close(jobs, db)


def _threads() -> set[threading.Thread]:
    return set(threading.enumerate())


def test_apps_thrown_away_leave_no_threads(database_url: str, tmp_path: pathlib.Path) -> None:
    """50 apps, each with a running scheduler that ran a job, dropped without
    jobs.stop(): once collected, none of their threads is left."""
    before = _threads()
    ran: list[int] = []
    jobs = DurableJobs()
    jobs.handler("t")(lambda payload: ran.append(payload["i"]))
    if database_url.startswith("sqlite"):
        urls = [f"sqlite:///{tmp_path / f'{i}.db'}" for i in range(50)]
    else:
        urls = [database_url] * 50

    def build(i: int) -> None:
        # the tables before the scheduler's first tick, as a deployment has them
        tables = sa.create_engine(urls[i])
        upgrade(tables)
        tables.dispose()
        app, _db = _app(urls[i], jobs, DURABLE_JOBS_POLL_INTERVAL=0.2)
        with app.app_context():
            jobs.enqueue("t", {"i": i})
        assert app.extensions["durable_jobs"].scheduler.running
        wait_for(f"app {i}'s job", lambda: i in ran, 30)

    def gone() -> bool:
        gc.collect()
        return not (_threads() - before)

    for i in range(50):
        build(i)
        # one app at a time, so that PostgreSQL's connections are not exhausted
        wait_for(f"app {i}'s threads to end", gone, 30,
                 details=lambda: str(sorted(th.name for th in _threads() - before)))
    assert sorted(ran) == list(range(50))


# -- a host app's own test suite ------------------------------------------------

HOST_APP = '''
from flask import Flask, request
from flask_sqlalchemy import SQLAlchemy
from flask_durable_jobs import DurableJobs

db = SQLAlchemy()
jobs = DurableJobs()


class User(db.Model):
    id = db.Column(db.Integer, primary_key=True)
    email = db.Column(db.String(120), unique=True, nullable=False)


class Post(db.Model):
    id = db.Column(db.Integer, primary_key=True)
    body = db.Column(db.String(140), nullable=False)
    user_id = db.Column(db.ForeignKey(User.id), nullable=False)


@jobs.handler("export_posts")
def export_posts(payload):
    return {"posts": Post.query.filter_by(user_id=payload["user_id"]).count()}


def create_app(config=None):
    app = Flask(__name__)
    app.config.update(SQLALCHEMY_DATABASE_URI="sqlite://", TESTING=True)
    app.config.update(config or {})
    db.init_app(app)
    jobs.init_app(app, db=db)

    @app.post("/users/<int:user_id>/export")
    def export(user_id):
        job = jobs.enqueue("export_posts", {"user_id": user_id}, commit=False)
        db.session.commit()
        return {"job": job.id}, 202

    @app.post("/users")
    def signup():
        user = User(email=request.json["email"])
        db.session.add(user)
        db.session.commit()
        return {"id": user.id}, 201

    return app
'''

HOST_TESTS = '''
import threading

import pytest

from hostapp import Post, User, create_app, db


@pytest.fixture
def app():
    app = create_app()
    with app.app_context():
        db.create_all()
        yield app
        db.session.remove()
        db.drop_all()


@pytest.mark.parametrize("n", range(12))
def test_users_and_posts(app, n):
    user = User(email=f"u{n}@example.com")
    db.session.add(user)
    db.session.commit()
    for i in range(n):
        db.session.add(Post(body=f"post {i}", user_id=user.id))
    db.session.commit()
    assert Post.query.filter_by(user_id=user.id).count() == n


@pytest.mark.parametrize("n", range(6))
def test_signup_and_export(app, n):
    client = app.test_client()
    response = client.post("/users", json={"email": f"v{n}@example.com"})
    assert response.status_code == 201
    response = client.post(f"/users/{response.json['id']}/export")
    assert response.status_code == 202
    assert User.query.count() == 1


def test_rollback_discards_rows(app):
    db.session.add(User(email="gone@example.com"))
    db.session.rollback()
    assert User.query.count() == 0


def test_no_threads_of_the_library():
    for _ in range(5):
        create_app()
    names = [t.name for t in threading.enumerate() if t.name.startswith("durable-jobs")]
    assert names == []
'''


@pytest.mark.slow
def test_a_host_apps_test_suite_passes_every_time(tmp_path: pathlib.Path) -> None:
    """A small app in the style of the Mega-Tutorial's (its models, a factory
    on sqlite://, 20 tests building apps) passes its own suite 5 times of 5."""
    (tmp_path / "hostapp.py").write_text(HOST_APP)
    (tmp_path / "test_host.py").write_text(HOST_TESTS)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    for run in range(5):
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
             "-W", "error", "test_host.py"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
        )
        assert proc.returncode == 0, f"run {run + 1}:\n{proc.stdout}\n{proc.stderr}"
        assert "20 passed" in proc.stdout, proc.stdout


# -- logs -----------------------------------------------------------------------

LOGGING_APP = '''
import logging
import os

logging.basicConfig(level=logging.INFO, format="LOG %(name)s %(levelname)s %(message)s")
host_logger = logging.getLogger("host.module")

from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from flask_durable_jobs import DurableJobs

db = SQLAlchemy()
jobs = DurableJobs()


def create_app():
    app = Flask(__name__)
    app.config.update(SQLALCHEMY_DATABASE_URI=os.environ["TEST_DB_URL"],
                      TESTING=os.environ.get("TEST_TESTING") == "1",
                      DURABLE_JOBS_SCHEDULER=False)
    db.init_app(app)
    jobs.init_app(app, db=db)

    @app.cli.command("host-log")
    def host_log():
        root = logging.getLogger()
        print("root", logging.getLevelName(root.level), len(root.handlers),
              "disabled" if host_logger.disabled else "enabled")
        host_logger.info("the host still logs")

    return app
'''


@pytest.fixture
def logging_app(tmp_path: pathlib.Path) -> t.Callable[..., str]:
    (tmp_path / "loggingapp.py").write_text(LOGGING_APP)
    url = f"sqlite:///{tmp_path / 'log.db'}"

    def run(*args: str, testing: bool = False, code: str | None = None) -> str:
        env = {**os.environ, "TEST_DB_URL": url, "PYTHONPATH": str(tmp_path),
               "FLASK_APP": "loggingapp:create_app", "TEST_TESTING": "1" if testing else "0"}
        command = [sys.executable, "-c", code] if code else [sys.executable, "-m", "flask",
                                                             *args]
        proc = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout + proc.stderr

    return run


def test_alembic_leaves_the_hosts_logging_alone(logging_app: t.Callable[..., str]) -> None:
    upgraded = logging_app("jobs", "upgrade")
    assert "durable jobs schema at head" in upgraded
    assert "alembic.runtime.plugins" not in upgraded
    # after an upgrade in the same process, the host's logging is as it set it
    out = logging_app(code=(
        "import loggingapp\n"
        "from flask_durable_jobs.migrations import upgrade\n"
        "app = loggingapp.create_app()\n"
        "with app.app_context():\n"
        "    upgrade(loggingapp.db.engine)\n"
        "app.test_cli_runner().invoke(args=['host-log'])\n"
        "import logging; root = logging.getLogger()\n"
        "print('root', logging.getLevelName(root.level), len(root.handlers),\n"
        "      'disabled' if loggingapp.host_logger.disabled else 'enabled')\n"
    ))
    assert "root INFO 1 enabled" in out, out
    assert "alembic.runtime.plugins" not in out
    stats = logging_app("jobs", "stats")
    assert "alembic" not in stats
    assert "LOG" not in stats, stats  # nothing else is said either


ADMIN_CLOSED = "answers 403 to every request"


def test_admin_closed_warning_once_per_serving_process(
    logging_app: t.Callable[..., str]
) -> None:
    script = ("import loggingapp\n"
              "for _ in range(3):\n"
              "    loggingapp.create_app()\n")
    assert logging_app(code=script).count(ADMIN_CLOSED) == 1  # a script: said once
    assert ADMIN_CLOSED not in logging_app(code=script, testing=True)
    assert ADMIN_CLOSED not in logging_app("jobs", "upgrade")
    assert ADMIN_CLOSED not in logging_app("jobs", "stats")


def test_in_memory_warning_said_once(tmp_path: pathlib.Path) -> None:
    out = _python('''
        import logging
        logging.basicConfig(level=logging.INFO)
        from flask import Flask
        from flask_sqlalchemy import SQLAlchemy
        from flask_durable_jobs import DurableJobs
        jobs = DurableJobs()
        for _ in range(3):
            app = Flask("m")
            app.config.update(SQLALCHEMY_DATABASE_URI="sqlite://", DURABLE_JOBS_ADMIN_TOKEN="x")
            jobs.init_app(app, db=SQLAlchemy(app))
            assert app.extensions["durable_jobs"].scheduler is None
    ''')
    assert out.returncode == 0, out.stderr
    assert out.stderr.count("no scheduler for an in-memory SQLite database") == 1, out.stderr


# -- drivers ---------------------------------------------------------------------------


def test_missing_psycopg_is_an_init_app_error_naming_the_fix(pg_server_url: str) -> None:
    out = _python('''
        import sys
        sys.modules["psycopg"] = None  # as if not installed
        from flask import Flask
        from flask_sqlalchemy import SQLAlchemy
        from flask_durable_jobs import ConfigError, DurableJobs
        app = Flask("pg")
        app.config["SQLALCHEMY_DATABASE_URI"] = sys.argv[1]
        db = SQLAlchemy(app)
        try:
            DurableJobs(app, db=db)
        except ConfigError as exc:
            print("refused:", exc)
            assert "durable_jobs" not in app.extensions
    ''', sa.make_url(pg_server_url).set(drivername="postgresql+psycopg2").render_as_string(
        hide_password=False))
    assert out.returncode == 0, out.stderr
    assert "refused:" in out.stdout
    assert "pip install 'flask-durable-jobs[postgresql]'" in out.stdout


@pytest.mark.parametrize("driver", ["postgresql", "postgresql+psycopg2"])
def test_an_app_on_psycopg2_keeps_working(pg_server_url: str, driver: str) -> None:
    url = sa.make_url(pg_server_url).set(drivername=driver).render_as_string(
        hide_password=False)
    engine = sa.create_engine(pg_server_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.exec_driver_sql("DROP SCHEMA public CASCADE")
        conn.exec_driver_sql("CREATE SCHEMA public")
    engine.dispose()
    jobs = DurableJobs()
    jobs.handler("double")(lambda payload: payload["n"] * 2)
    app, db = _app(url, jobs, TESTING=True)
    with app.app_context():
        if driver.endswith("psycopg2"):  # plain postgresql:// is SQLAlchemy's default driver
            assert db.engine.dialect.driver == "psycopg2"
        db.create_all()
        job = jobs.enqueue("double", {"n": 21})
        assert jobs.drain()["succeeded"] == 1
        assert jobs.get(job.id).result == 42
        close(jobs, db)

