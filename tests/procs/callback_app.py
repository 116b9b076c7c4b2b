"""Completion-callback helpers for ``tests/test_callbacks.py`` and ``tests/test_secrets.py``.

Two things live here:

* :class:`Receiver`, a real HTTP server on ``127.0.0.1`` (port 0 unless told
  otherwise) running in a thread. It records every request (method, path,
  headers, body) and answers with scripted status codes, one per request (for
  every path, or for one path), then 200 once the script is used up.
* A program that only delivers callbacks. ``python tests/procs/callback_app.py
  GO_FILE TIMEOUT`` builds an app from the environment, connects to the
  database, creates ``GO_FILE.ready-<pid>``, and waits for ``GO_FILE`` to
  exist (so several processes start together, however slowly each one
  started up). Then it calls :func:`flask_durable_jobs.callbacks.deliver_due`
  in a loop until no callback is pending in the database (or ``TIMEOUT``
  seconds passed). It prints one JSON object: its pid, how many callbacks it
  delivered, and how many were still pending when it stopped.

Configuration comes from ``CALLBACKAPP_<KEY>`` environment variables, any Flask
config key (``CALLBACKAPP_SQLALCHEMY_DATABASE_URI``,
``CALLBACKAPP_DURABLE_JOBS_CALLBACK_SECRET``,
``CALLBACKAPP_DURABLE_JOBS_CALLBACK_HOSTS='["127.0.0.1"]'``; values are parsed
as JSON when they can be). The module imports nothing relative, so it runs as
a file as well as ``-m tests.procs.callback_app``.
"""

from __future__ import annotations

import collections
import dataclasses
import http.server
import json
import os
import sys
import threading
import time
import typing as t

import sqlalchemy as sa
from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from flask_durable_jobs import DurableJobs, callbacks

ENV_PREFIX = "CALLBACKAPP"


# -- the receiving side ----------------------------------------------------------------


@dataclasses.dataclass
class Received:
    """One request as the receiver saw it; header names are lower-cased."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> t.Any:
        return json.loads(self.body)


class Receiver:
    """A recording HTTP server with scripted answers; use as a context manager."""

    def __init__(self, port: int = 0, *, delay: float = 0.0) -> None:
        self.requests: list[Received] = []
        self._scripts: dict[str | None, collections.deque[int]] = {}
        self._lock = threading.Lock()
        self.delay = delay
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with receiver._lock:
                    receiver.requests.append(Received(
                        self.command, self.path,
                        {k.lower(): v for k, v in self.headers.items()}, body,
                    ))
                    status = receiver._next_status(self.path)
                if receiver.delay:
                    time.sleep(receiver.delay)
                reply = b'{"ok": true}'
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            do_POST = do_GET = do_PUT = _answer

            def log_message(self, format: str, *args: t.Any) -> None:
                pass  # keep the test output quiet

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
            name="callback-receiver", daemon=True,
        )
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def respond(self, *statuses: int, path: str | None = None) -> None:
        """Answer the next requests (to ``path`` only, if given) with these
        statuses, in order; then 200."""
        with self._lock:
            self._scripts.setdefault(path, collections.deque()).extend(statuses)

    def _next_status(self, path: str) -> int:
        for key in (path, None):
            script = self._scripts.get(key)
            if script:
                return script.popleft()
        return 200

    def received(self) -> list[Received]:
        with self._lock:
            return list(self.requests)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=10)

    def __enter__(self) -> Receiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- the delivering side -----------------------------------------------------------------

db = SQLAlchemy()
jobs = DurableJobs()


def create_app(config: dict[str, t.Any] | None = None) -> Flask:
    app = Flask("callback_app")
    app.config["DURABLE_JOBS_SCHEDULER"] = False
    app.config.from_prefixed_env(ENV_PREFIX)
    if config:
        app.config.update(config)
    db.init_app(app)
    jobs.init_app(app, db=db)
    return app


def pending_callbacks(state: t.Any) -> int:
    c = state.table.c
    with state.store.engine.connect() as conn:
        count = conn.execute(
            sa.select(sa.func.count()).select_from(state.table)
            .where(c.callback_status == "pending")
        ).scalar_one()
    return int(count)


def main() -> None:
    go_file, timeout = sys.argv[1], float(sys.argv[2])
    app = create_app()
    state = app.extensions["durable_jobs"]
    delivered = rounds = 0
    with app.app_context():
        pending_callbacks(state)  # connect before the start, not after it
        with open(f"{go_file}.ready-{os.getpid()}", "w"):
            pass
        give_up = time.monotonic() + timeout
        while not os.path.exists(go_file) and time.monotonic() < give_up:
            time.sleep(0.005)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rounds += 1
            delivered += callbacks.deliver_due(state)
            if pending_callbacks(state) == 0:
                break
            time.sleep(0.01)
        left = pending_callbacks(state)
        jobs.stop()
        for engine in db.engines.values():
            engine.dispose()
    print(json.dumps({"pid": os.getpid(), "delivered": delivered, "rounds": rounds,
                      "pending_left": left}))


if __name__ == "__main__":
    main()
