"""An example Flask app using flask-durable-jobs.

Run it on SQLite with ``./scripts/run-example`` (or ``flask --app example_app
run``), and under gunicorn with ``gunicorn -w 3 'example_app:create_app()'``.
See ``example_app/README.md``.
"""

from __future__ import annotations

import logging
import os
import typing as t

from flask import Flask

from flask_durable_jobs.migrations import upgrade as upgrade_job_tables

from .models import db
from .tasks import jobs


def database_url(app: Flask) -> str:
    """``DATABASE_URL`` when set, else an SQLite file in the instance folder."""
    url = os.environ.get("DATABASE_URL", "").strip()
    if not url:
        os.makedirs(app.instance_path, exist_ok=True)
        return "sqlite:///" + os.path.join(app.instance_path, "example.db")
    # Hosting platforms hand out postgres:// URLs; SQLAlchemy needs the
    # dialect name, and psycopg 3 is the driver this project installs.
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def create_app(test_config: dict[str, t.Any] | None = None) -> Flask:
    app = Flask(__name__, instance_relative_config=True)
    app.config["SQLALCHEMY_DATABASE_URI"] = database_url(app)
    # The admin API stays closed (403) unless a token is configured.
    app.config["DURABLE_JOBS_ADMIN_TOKEN"] = os.environ.get("ADMIN_TOKEN") or None
    # Create tables at startup for the SQLite demo only; a real deployment
    # runs migrations instead (see README.md: ``flask jobs upgrade``).
    app.config["CREATE_TABLES"] = app.config["SQLALCHEMY_DATABASE_URI"].startswith("sqlite")
    # Any FLASK_* variable sets the key without the prefix, e.g.
    # FLASK_DURABLE_JOBS_CONCURRENCY=8 or FLASK_DURABLE_JOBS_SCHEDULER=false.
    app.config.from_prefixed_env()
    if test_config:
        app.config.update(test_config)

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s"
    )

    db.init_app(app)
    if app.config["CREATE_TABLES"]:
        # Before jobs.init_app, so the scheduler's first tick finds the table.
        with app.app_context():
            upgrade_job_tables(db.engine)  # what `flask jobs upgrade` does
            db.create_all()  # the example's own tables
    # Registers the job table on db.metadata, the admin API under
    # /admin/jobs, the `flask jobs` commands, and starts the scheduler in
    # processes that serve requests.
    jobs.init_app(app, db=db)

    from .views import bp

    app.register_blueprint(bp)

    @app.cli.command("init-db")
    def init_db() -> None:
        """Create the example's own tables (stands in for your migrations)."""
        db.create_all()
        print("tables created")

    return app
