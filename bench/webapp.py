"""The Flask app every flask-durable-jobs scenario uses, also served by gunicorn.

Configured from the environment when imported by gunicorn (``webapp:app``):
``BENCH_DB_URL`` (SQLAlchemy URL) and ``BENCH_SCHEDULER`` (``1``/``0``).
"""

from __future__ import annotations

import os
import time
import typing as t

from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from flask_durable_jobs import DurableJobs

db = SQLAlchemy()
jobs = DurableJobs()

#: Enqueue-to-start latencies (seconds) seen by the "lat" handler in this process.
LATENCIES: list[float] = []
#: perf_counter() of the first and the latest "noop" start in this process.
MARKS: dict[str, float] = {}


@jobs.handler("noop")
def noop(payload: dict[str, t.Any]) -> None:
    MARKS.setdefault("first", time.perf_counter())
    return None


@jobs.handler("lat")
def lat(payload: dict[str, t.Any]) -> dict[str, float]:
    delay = time.time() - payload["t"]
    LATENCIES.append(delay)
    return {"lat": delay}


class Order(db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "bench_orders"
    id = db.Column(db.Integer, primary_key=True)
    note = db.Column(db.String(100), nullable=False)


def create_app(url: str, scheduler: bool, **config: t.Any) -> Flask:
    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = url
    app.config["DURABLE_JOBS_SCHEDULER"] = scheduler
    app.config.update(config)
    db.init_app(app)
    jobs.init_app(app, db=db)

    @app.get("/plain")
    def plain() -> dict[str, int]:
        order = Order(note="order")
        db.session.add(order)
        db.session.commit()
        return {"id": order.id}

    @app.get("/enqueue")
    def enqueue() -> dict[str, int]:
        order = Order(note="order")
        db.session.add(order)
        db.session.flush()
        jobs.enqueue("noop", {"order": order.id}, commit=False)
        db.session.commit()  # the row and its job become durable together
        return {"id": order.id}

    return app


def create_tables(url: str) -> None:
    app = create_app(url, scheduler=False)
    with app.app_context():
        db.create_all()


if os.environ.get("BENCH_DB_URL"):
    app = create_app(
        os.environ["BENCH_DB_URL"], scheduler=os.environ.get("BENCH_SCHEDULER", "0") == "1"
    )
