"""Build the wheel, install it into a fresh virtualenv, and use it there.

This catches files left out of the wheel (the Alembic environment and
revisions above all) that tests running from the source tree can't see.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import typing as t
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
# What a source distribution holds besides the package itself.
PROJECT_FILES = ("pyproject.toml", "setup.cfg", "setup.py", "MANIFEST.in", "README.md", "LICENSE")

TINY_APP = """
import os

from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from flask_durable_jobs import DurableJobs

db = SQLAlchemy()
jobs = DurableJobs()


@jobs.handler("add")
def add(payload):
    return {"sum": payload["a"] + payload["b"]}


def create_app():
    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = os.environ["DATABASE_URL"]
    app.config["DURABLE_JOBS_SCHEDULER"] = False
    db.init_app(app)
    jobs.init_app(app, db=db)
    return app
"""

ENQUEUE = """
import flask_durable_jobs
from tinyapp import create_app, jobs

app = create_app()
with app.app_context():
    job = jobs.enqueue("add", {"a": 2, "b": 3})
print(job.id, flask_durable_jobs.__file__)
"""


def run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 600) -> str:
    proc = subprocess.run(
        cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert proc.returncode == 0, f"{cmd} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}"
    return proc.stdout


def clean_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV") and not k.startswith("FLASK_")
    }
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built from a clean copy of the project (no stale build/ dirs)."""
    work = tmp_path_factory.mktemp("build")
    src = work / "src"
    src.mkdir()
    for name in PROJECT_FILES:
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, src / name)
    shutil.copytree(
        ROOT / "flask_durable_jobs",
        src / "flask_durable_jobs",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    out = work / "dist"
    run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(src)],
        cwd=work,
        env=clean_env(),
    )
    (built,) = out.glob("flask_durable_jobs-*.whl")
    return built


def test_wheel_ships_the_migrations(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert "flask_durable_jobs/migrations/__init__.py" in names, names
    assert any(
        n.startswith("flask_durable_jobs/migrations/versions/") and n.endswith(".py") for n in names
    ), names
    assert "flask_durable_jobs/py.typed" in names
    assert {"flask_durable_jobs/sql/postgresql.sql", "flask_durable_jobs/sql/sqlite.sql"} <= set(
        names
    ), names
    dashboard = {
        f"flask_durable_jobs/dashboard/{name}"
        for name in ("__init__.py", "index.html", "closed.html", "static/app.js",
                     "static/api.js", "static/dom.js", "static/overview.js", "static/jobs.js",
                     "static/job.js", "static/pages.js", "static/style.css")
    }
    assert dashboard <= set(names), sorted(dashboard - set(names))
    assert not any(n.startswith(("tests/", "example_app/", "docs/")) for n in names), names


def test_installed_wheel_upgrades_and_runs_a_job(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path, env=clean_env())
    bindir = venv / ("Scripts" if os.name == "nt" else "bin")
    python, flask = str(bindir / "python"), str(bindir / "flask")
    run([python, "-m", "pip", "install", "-q", str(wheel)], cwd=tmp_path, env=clean_env())

    app_dir = tmp_path / "app"
    app_dir.mkdir()
    (app_dir / "tinyapp.py").write_text(textwrap.dedent(TINY_APP))
    (app_dir / "enqueue.py").write_text(textwrap.dedent(ENQUEUE))
    db_path = tmp_path / "jobs.db"
    env = clean_env(DATABASE_URL=f"sqlite:///{db_path}", PYTHONPATH=str(app_dir))

    run([flask, "--app", "tinyapp", "jobs", "upgrade"], cwd=app_dir, env=env)
    run([flask, "--app", "tinyapp", "jobs", "upgrade"], cwd=app_dir, env=env)  # a no-op now
    with sqlite3.connect(db_path) as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    assert {"durable_jobs", "durable_jobs_alembic_version"} <= tables, tables

    job_id, module_file = run([python, "enqueue.py"], cwd=app_dir, env=env).split()
    assert Path(module_file).resolve().is_relative_to(venv.resolve()), module_file
    run([flask, "--app", "tinyapp", "jobs", "process"], cwd=app_dir, env=env)

    with sqlite3.connect(db_path) as conn:
        row: t.Any = conn.execute(
            "SELECT status, attempts, result FROM durable_jobs WHERE id = ?", (int(job_id),)
        ).fetchone()
    assert row is not None
    status, attempts, result = row
    assert (status, attempts) == ("succeeded", 1), row
    assert json.loads(result) == {"sum": 5}
