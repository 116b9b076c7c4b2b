"""The shipped migrations create exactly the models' schema."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import typing as t

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from flask_durable_jobs import DurableJobs
from flask_durable_jobs.migrations import HEAD, SCRIPT_LOCATION, VERSION_TABLE, current
from flask_durable_jobs.models import MADE_BY_SQL_FILE


def _app(url: str) -> tuple[Flask, SQLAlchemy, DurableJobs]:
    app = Flask("migrations")
    app.config.update(SQLALCHEMY_DATABASE_URI=url, DURABLE_JOBS_SCHEDULER=False)
    db = SQLAlchemy(app)
    jobs = DurableJobs(app, db=db)
    return app, db, jobs


def _differences(engine: sa.Engine, metadata: sa.MetaData) -> list[t.Any]:
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={
            "compare_type": True, "compare_server_default": True,
            "include_name": lambda name, _type, _parents: name not in MADE_BY_SQL_FILE,
        })
        return list(compare_metadata(context, metadata))


def _indexes(engine: sa.Engine) -> dict[str, tuple[tuple[str, ...], bool]]:
    out = {}
    for index in sa.inspect(engine).get_indexes("durable_jobs"):
        out[index["name"]] = (tuple(index["column_names"]), bool(index["unique"]))
    return out


def test_upgrade_gives_the_models_schema(database_url: str) -> None:
    app, db, _jobs = _app(database_url)
    with app.app_context():
        assert current(db.engine) is None
        result = app.test_cli_runner().invoke(args=["jobs", "upgrade"])
        assert result.exit_code == 0, result.output
        assert current(db.engine) == HEAD
        assert _differences(db.engine, db.metadata) == []
        migrated = _indexes(db.engine)
        # the partial indexes exist with their predicates
        assert migrated["ix_durable_jobs_due"] == (("priority", "run_at", "id"), False)
        db.drop_all()
        db.create_all()
        assert _indexes(db.engine) == migrated
        # upgrading again is a no-op
        assert app.test_cli_runner().invoke(args=["jobs", "upgrade"]).exit_code == 0
        db.engine.dispose()


def test_partial_due_index_serves_the_claim(database_url: str) -> None:
    app, db, _jobs = _app(database_url)
    with app.app_context():
        db.create_all()
        with db.engine.connect() as conn:
            if db.engine.dialect.name == "postgresql":
                conn.exec_driver_sql("SET enable_seqscan = off")
                plan = "\n".join(r[0] for r in conn.exec_driver_sql(
                    "EXPLAIN SELECT id FROM durable_jobs WHERE status IN ('pending', 'retrying')"
                    " AND run_at <= now() ORDER BY priority, run_at, id LIMIT 100"
                    " FOR UPDATE SKIP LOCKED"))
            else:
                plan = "\n".join(str(r[-1]) for r in conn.exec_driver_sql(
                    # the claim names the index; SQLite refuses if it cannot serve
                    "EXPLAIN QUERY PLAN SELECT id FROM durable_jobs"
                    " INDEXED BY ix_durable_jobs_due WHERE status IN"
                    " ('pending', 'retrying') AND run_at <= '2030-01-01'"
                    " ORDER BY priority, run_at, id LIMIT 100"))
        assert "ix_durable_jobs_due" in plan, plan
        db.engine.dispose()


def test_create_all_then_upgrade(database_url: str) -> None:
    app, db, jobs = _app(database_url)
    with app.app_context():
        db.create_all()  # creates the table and an empty version table
        jobs.handler("t")(lambda p: None)
        job = jobs.enqueue("t", {})
        assert app.test_cli_runner().invoke(args=["jobs", "upgrade"]).exit_code == 0
        assert current(db.engine) == HEAD
        assert jobs.get(job.id) is not None  # nothing was dropped or recreated
        assert VERSION_TABLE in sa.inspect(db.engine).get_table_names()
        jobs.stop()
        db.engine.dispose()


FLASK_MIGRATE_APP = """
import os
from flask import Flask
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from flask_durable_jobs import DurableJobs

db = SQLAlchemy()
jobs = DurableJobs()

class Order(db.Model):
    id = db.Column(db.Integer, primary_key=True)
    total = db.Column(db.Integer, nullable=False)

def create_app():
    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = os.environ["TEST_DB_URL"]
    db.init_app(app)
    jobs.init_app(app, db=db)
    Migrate(app, db)
    return app
"""

ENV_HOOK = (
    "        from flask_durable_jobs.migrations import flask_migrate_hook\n"
    "        flask_migrate_hook(context, connection)\n"
)


def test_flask_migrate_project(database_url: str, tmp_path: pathlib.Path) -> None:
    """A Flask-Migrate user: one edit to env.py, then plain `flask db` commands."""
    (tmp_path / "shop.py").write_text(FLASK_MIGRATE_APP)
    env = {**os.environ, "TEST_DB_URL": database_url, "FLASK_APP": "shop:create_app",
           "PYTHONPATH": str(tmp_path)}
    flask = [sys.executable, "-m", "flask"]

    def run(*args: str) -> str:
        proc = subprocess.run([*flask, *args], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout + proc.stderr

    run("db", "init")
    env_py = tmp_path / "migrations" / "env.py"
    source = env_py.read_text()
    anchor = "        with context.begin_transaction():\n"
    assert source.count(anchor) == 1
    env_py.write_text(source.replace(anchor, ENV_HOOK + anchor))
    run("db", "migrate", "-m", "orders")
    (revision,) = (tmp_path / "migrations" / "versions").glob("*.py")
    text = revision.read_text()
    assert "create_table('order'" in text
    assert "durable_jobs" not in text  # autogenerate leaves the job tables alone
    engine = sa.create_engine(database_url)
    assert "durable_jobs" not in sa.inspect(engine).get_table_names()  # migrate applies nothing
    run("db", "upgrade")
    tables = set(sa.inspect(engine).get_table_names())
    assert {"order", "durable_jobs", VERSION_TABLE} <= tables
    assert current(engine) == HEAD
    # now in sync: a second autogenerate finds nothing
    out = run("db", "migrate", "-m", "nothing")
    assert "No changes in schema detected" in out
    engine.dispose()


def test_authoring_environment_finds_no_changes(database_url: str) -> None:
    """The maintainers' environment (migrations/) sees the shipped revisions
    and the models as one schema: `alembic check` finds nothing to generate."""
    app, db, _jobs = _app(database_url)
    with app.app_context():
        assert app.test_cli_runner().invoke(args=["jobs", "upgrade"]).exit_code == 0
        db.engine.dispose()
    root = pathlib.Path(__file__).resolve().parent.parent
    env = {**os.environ, "DURABLE_JOBS_DEV_DATABASE_URL": database_url}

    def alembic(*args: str) -> str:
        proc = subprocess.run(
            [sys.executable, "-m", "alembic", "-c", str(root / "migrations" / "alembic.ini"),
             *args], cwd=root, env=env, capture_output=True, text=True, timeout=120,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout + proc.stderr

    assert f"{HEAD} (head)" in alembic("current")
    assert "No new upgrade operations detected" in alembic("check")


def test_head_is_the_newest_shipped_revision() -> None:
    from alembic.script import ScriptDirectory

    assert ScriptDirectory(SCRIPT_LOCATION).get_heads() == [HEAD]
