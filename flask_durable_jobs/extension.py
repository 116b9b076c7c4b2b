"""The :class:`DurableJobs` extension: the public entry point."""

from __future__ import annotations

import datetime as dt
import logging
import sys
import threading
import typing as t
import uuid

import sqlalchemy as sa
from flask import Flask, current_app

from . import callbacks, signals
from . import config as config_module
from . import handlers as handlers_module
from . import payload as payload_json
from . import periodic as periodic_module
from .clock import DatabaseClock
from .errors import ConfigError
from .handlers import Handler, HandlerSpec
from .migrations import define_version_table
from .models import PENDING, Batch, Job, as_utc, define_batch_table, define_table, utcnow
from .retry import Backoff, default_backoff
from .scheduler import (
    AFTER_FORK,
    FLASK_RUN,
    NOW,
    Scheduler,
    exit_on_sigterm,
    start_decision,
    track,
)
from .store import Store, build_engine, make_store
from .vault import make_vault
from .worker import Counts, Runner, empty_counts

if t.TYPE_CHECKING:
    from flask_sqlalchemy import SQLAlchemy

    from .config import Settings

log = logging.getLogger("flask_durable_jobs")

EXTENSION_KEY = "durable_jobs"


def _encrypt_secrets(state: State, secrets: t.Any) -> str:
    if state.vault is None:
        raise ConfigError(
            "enqueue(secrets=...) needs DURABLE_JOBS_SECRET_KEY: secrets are never stored"
            " in plain text"
        )
    if not isinstance(secrets, dict):
        raise TypeError(f"secrets must be a dict, got {type(secrets).__name__}")
    try:
        payload_json.check(secrets, root="secrets")
    except TypeError as exc:
        raise TypeError(str(exc)) from None
    return state.vault.encrypt(secrets)


def _new_row(
    spec: HandlerSpec,
    *,
    now: dt.datetime,
    run_at: dt.datetime,
    queue: str | None = None,
    priority: int | None = None,
    max_attempts: int | None = None,
) -> dict[str, t.Any]:
    """The columns of a new job, options falling back to its handler's."""
    return {
        "job_type": spec.name,
        "queue": spec.queue if queue is None else queue,
        "priority": spec.priority if priority is None else priority,
        "max_attempts": spec.max_attempts if max_attempts is None else max_attempts,
        "status": PENDING,
        "attempts": 0,
        "orphan_policy": spec.on_orphan,
        "callback_attempts": 0,
        "run_at": run_at,
        "created_at": now,
        "updated_at": now,
    }


def _unregistered(payload: dict[str, t.Any]) -> None:  # never called: a spec for defaults
    raise LookupError("no handler registered")


def _idle(session: t.Any) -> bool:
    """No transaction begun and nothing pending: a commit would change nothing."""
    if not session.registry.has():  # no Session yet in this context: don't make one
        return True
    current = session()  # the scoped session's Session for this context
    return not current.in_transaction() and not (current.new or current.dirty or current.deleted)


_PENDING = "durable_jobs.on_commit"
_hooked: set[type] = set()  # Session classes whose commits run the pending callbacks
_hook_lock = threading.Lock()


def _on_commit(session: t.Any, callback: t.Callable[[], None]) -> None:
    """Run ``callback`` when the session's transaction commits; drop it on rollback.

    The listeners go on the session's class, once: a session lives for one
    request, and adding listeners to each one costs more than the enqueue's
    own statement. A session with nothing pending pays one dict lookup.
    """
    cls = type(session)
    if cls not in _hooked:
        with _hook_lock:
            if cls not in _hooked:
                sa.event.listen(cls, "after_commit", _run_pending)
                sa.event.listen(cls, "after_rollback", _drop_pending)
                _hooked.add(cls)
    session.info.setdefault(_PENDING, []).append(callback)


def _run_pending(session: t.Any) -> None:
    callbacks = session.info.pop(_PENDING, None)
    for callback in callbacks or ():
        callback()


def _drop_pending(session: t.Any) -> None:
    session.info.pop(_PENDING, None)


def _check_owner(owner: t.Any) -> str:
    if not isinstance(owner, str) or not 0 < len(owner) <= 200:
        raise ValueError(f"owner must be a string of 1 to 200 characters, got {owner!r}")
    return owner
F = t.TypeVar("F", bound=t.Callable[..., t.Any])


class State:
    """Everything the extension keeps for one app (``app.extensions["durable_jobs"]``)."""

    def __init__(
        self,
        ext: DurableJobs,
        app: Flask,
        db: SQLAlchemy,
        settings: Settings,
        table: sa.Table,
        batches: sa.Table,
    ) -> None:
        self.batches = batches
        self.ext = ext
        self.app = app
        self.db = db
        self.settings = settings
        self.table = table
        #: This process's UTC clock; tests move it (testing.move_time).
        self.clock: t.Callable[[], dt.datetime] = utcnow
        #: The offset from it to the database's clock, which judges leases and due times.
        self.db_clock = DatabaseClock(lambda: self.store.engine)
        self.start_policy = ""
        self._lock = threading.RLock()
        self._app_engine: sa.Engine | None = None
        self._store: Store | None = None
        self._runner: Runner | None = None
        self.scheduler: Scheduler | None = None
        self.vault = make_vault(settings.secret_keys)
        self.default_backoff: Backoff = default_backoff(
            settings.backoff_base, settings.backoff_factor,
            settings.backoff_max, settings.backoff_jitter,
        )

    def now(self) -> dt.datetime:
        """The time every timestamp is written and compared at: the database's."""
        return self.clock() + self.db_clock.offset()

    @property
    def app_engine(self) -> sa.Engine:
        """The app's own engine for the job table (Flask-SQLAlchemy makes it
        once per app)."""
        if self._app_engine is None:
            with self.app.app_context():
                self._app_engine = self.db.engine
        return self._app_engine

    @property
    def store(self) -> Store:
        if self._store is None:
            with self._lock:
                if self._store is None:
                    # the app's connect_args (SSL, prepare_threshold for PgBouncer...)
                    options = self.app.config.get("SQLALCHEMY_ENGINE_OPTIONS") or {}
                    engine = build_engine(self.app_engine,
                                          pool_size=self.settings.concurrency + 2,
                                          connect_args=options.get("connect_args"))
                    self._store = make_store(engine, self.table, self.batches)
        return self._store

    @property
    def runner(self) -> Runner:
        if self._runner is None:
            with self._lock:
                if self._runner is None:
                    self._runner = Runner(
                        app=self.app,
                        db=self.db,
                        store=self.store,
                        settings=self.settings,
                        handlers=self.ext._handlers,
                        default_backoff=self.default_backoff,
                        clock=self.now,
                        vault=self.vault,
                    )
                    self._runner.on_batch_ended = self.finish_batches
        return self._runner

    def start_scheduler(self) -> None:
        with self._lock:
            if self.scheduler is not None and self.scheduler.running:
                return
            self.scheduler = Scheduler(self)
            self.scheduler.start()

    def shutdown(self) -> None:
        """Stop the scheduler (releasing unfinished jobs) and close resources."""
        with self._lock:
            scheduler, self.scheduler = self.scheduler, None
            if scheduler is not None:
                scheduler.stop()
            runner, self._runner = self._runner, None
            if runner is not None:
                runner.close()
            store, self._store = self._store, None
        if store is not None:
            store.close_connections()
            if store.engine is not self.app_engine:
                store.engine.dispose()

    def after_fork(self) -> None:
        """In a forked child: drop the parent's threads and connections."""
        self._lock = threading.RLock()
        self.scheduler = None
        self._runner = None
        if self._store is not None:
            self._store.engine.dispose(close=False)
            self._store.close_connections(close=False)
            self._store = None
        if self.start_policy == AFTER_FORK:
            self.start_policy = NOW
            self.start_scheduler()

    def finish_batches(self, batch_ids: t.Iterable[str]) -> list[str]:
        """Enqueue the completion job of every given batch whose jobs all ended."""
        return self.store.complete_batches(batch_ids, self.now(), self._completion_job)

    def _completion_job(self, batch_id: str, batch: t.Any) -> dict[str, t.Any] | None:
        if batch.on_complete is None:
            return None
        # The process that ends the batch may not have this handler: the job
        # is enqueued all the same, with the handler defaults.
        spec = self.ext._handlers.get(batch.on_complete) or HandlerSpec(
            batch.on_complete, func=_unregistered
        )
        now = self.now()
        return {
            **_new_row(spec, now=now, run_at=now),
            "payload": {"batch_id": batch_id, **(batch.on_complete_payload or {})},
            "idempotency_key": f"batch:{batch_id}",
        }

    def prune(self, older_than: dt.timedelta | None = None) -> int:
        now = self.now()
        finished = older_than if older_than is not None else dt.timedelta(
            days=self.settings.retention_days
        )
        dead = dt.timedelta(days=self.settings.dead_retention_days)
        return self.store.prune(now - finished, now - dead)


class DurableJobs:
    """Durable background jobs in the app's own database.

    ``DurableJobs(app, db=db)`` or ``jobs = DurableJobs()`` then
    ``jobs.init_app(app, db=db)``. One object may serve several apps; every
    method that needs an app uses ``current_app``.
    """

    def __init__(self, app: Flask | None = None, db: SQLAlchemy | None = None) -> None:
        self._db = db
        self._handlers: dict[str, HandlerSpec] = {}
        self._admin_authorizer: t.Callable[[], bool] | None = None
        self._schedules: dict[str, periodic_module.Schedule] = {}
        if app is not None:
            self.init_app(app, db=db)

    # -- setup ----------------------------------------------------------------

    def init_app(self, app: Flask, db: SQLAlchemy | None = None) -> None:
        """Register the job table, admin API, CLI and (unless disabled) the scheduler."""
        if EXTENSION_KEY in app.extensions:
            raise RuntimeError(
                "flask-durable-jobs is already registered on this app; call init_app once per app"
            )
        db = db or self._db or app.extensions.get("sqlalchemy")
        if db is None:
            raise RuntimeError(
                "flask-durable-jobs needs Flask-SQLAlchemy: call db.init_app(app) first,"
                " or pass db= to DurableJobs or init_app"
            )
        settings = config_module.load(app.config)
        # every table on the app's metadata: db.create_all() and autogenerate see them
        table = define_table(db.metadata)
        batches = define_batch_table(db.metadata)
        periodic_module.define_table(db.metadata)
        define_version_table(db.metadata)
        state = State(self, app, db, settings, table, batches)
        app.extensions[EXTENSION_KEY] = state

        from . import admin, cli

        admin.register(app, self, settings)
        app.cli.add_command(cli.jobs_cli)
        if settings.metrics:  # optional: prometheus_client is imported only here
            from .metrics import init_app as init_metrics
            init_metrics(state)
        track(state)
        if settings.scheduler:
            decision, why = start_decision()
            state.start_policy = decision
            log.debug("durable jobs scheduler: %s (%s)", decision, why)
            if decision == NOW:
                state.start_scheduler()
                if why == FLASK_RUN:
                    exit_on_sigterm()

    def handler(
        self,
        name: str | F | None = None,
        *,
        max_attempts: int = handlers_module.DEFAULT_MAX_ATTEMPTS,
        timeout: float | None = None,
        queue: str = handlers_module.DEFAULT_QUEUE,
        priority: int = handlers_module.DEFAULT_PRIORITY,
        backoff: Backoff | None = None,
        on_orphan: str = "retry",
    ) -> t.Any:
        """Register a job handler: ``@jobs.handler`` or ``@jobs.handler("name", ...)``.

        ``on_orphan="dead"`` sends a job whose worker died mid-run to ``dead``
        instead of retrying it, for side effects that must not repeat blindly.
        """

        def register(func: F) -> F:
            job_type = name if isinstance(name, str) else handlers_module.default_name(func)
            spec = handlers_module.make_spec(
                job_type, t.cast(Handler, func), max_attempts=max_attempts, timeout=timeout,
                queue=queue, priority=priority, backoff=backoff, on_orphan=on_orphan,
            )
            if job_type in self._handlers:
                raise ValueError(f"a handler named {job_type!r} is already registered")
            self._handlers[job_type] = spec
            return func

        if callable(name):
            return register(name)
        if name is not None and not isinstance(name, str):
            raise TypeError(f"handler name must be a string, got {type(name).__name__}")
        return register

    def periodic(
        self,
        schedule: str,
        job_type: str | None = None,
        *,
        key: str | None = None,
        payload: dict[str, t.Any] | None = None,
        timezone: str = "UTC",
        queue: str | None = None,
        priority: int | None = None,
    ) -> t.Any:
        """Enqueue ``job_type`` at each fire time of a cron schedule, once across processes.

        ``jobs.periodic("*/5 * * * *", "name")``, or ``@jobs.periodic("0 3 * * *")``
        stacked above ``@jobs.handler``; see :mod:`flask_durable_jobs.periodic`.
        """
        return periodic_module.register(
            self, schedule, job_type, key=key, payload=payload, timezone=timezone,
            queue=queue, priority=priority,
        )

    def admin_authorizer(self, func: F) -> F:
        """Register ``func() -> bool`` deciding access to the admin API for the request."""
        self._admin_authorizer = func
        return func

    # -- enqueue ----------------------------------------------------------------

    @staticmethod
    def _state() -> State:
        try:
            return t.cast(State, current_app.extensions[EXTENSION_KEY])
        except KeyError:
            raise RuntimeError(
                "flask-durable-jobs is not initialised on this app: call jobs.init_app(app)"
            ) from None

    def _job_values(
        self,
        state: State,
        job_type: str,
        *,
        delay: float | dt.timedelta | None,
        run_at: dt.datetime | None,
        queue: str | None,
        priority: int | None,
        max_attempts: int | None,
    ) -> dict[str, t.Any]:
        spec = self._handlers.get(job_type)
        if spec is None:
            known = ", ".join(sorted(self._handlers)) or "none"
            raise LookupError(
                f"no handler registered for job type {job_type!r} in this process"
                f" (registered: {known})"
            )
        now = state.now()
        if delay is not None and run_at is not None:
            raise ValueError("give delay or run_at, not both")
        if run_at is not None:
            if not isinstance(run_at, dt.datetime):
                raise TypeError(f"run_at must be a datetime, got {type(run_at).__name__}")
            if run_at.tzinfo is None or run_at.utcoffset() is None:
                raise ValueError(
                    "run_at must be timezone-aware (e.g. datetime.now(timezone.utc));"
                    " a naive datetime is ambiguous"
                )
            when = run_at.astimezone(dt.timezone.utc)
        elif delay is not None:
            seconds = delay.total_seconds() if isinstance(delay, dt.timedelta) else delay
            if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not (
                seconds >= 0
            ):
                raise ValueError(f"delay must be seconds >= 0 or a timedelta, got {delay!r}")
            when = now + dt.timedelta(seconds=seconds)
        else:
            when = now
        return _new_row(
            spec,
            now=now,
            run_at=when,
            queue=None if queue is None else handlers_module.check_queue(queue),
            priority=None if priority is None else handlers_module.check_priority(priority),
            max_attempts=None if max_attempts is None
            else handlers_module.check_max_attempts(max_attempts),
        )

    def enqueue(
        self,
        job_type: str,
        payload: dict[str, t.Any] | None = None,
        *,
        delay: float | dt.timedelta | None = None,
        run_at: dt.datetime | None = None,
        queue: str | None = None,
        priority: int | None = None,
        max_attempts: int | None = None,
        idempotency_key: str | None = None,
        owner: str | None = None,
        secrets: dict[str, t.Any] | None = None,
        callback_url: str | None = None,
        commit: bool = True,
    ) -> Job:
        """Store a job in the caller's ``db.session``; commit it unless ``commit=False``.

        ``owner`` tags the job with who may see it (see :meth:`get`).
        ``secrets`` are stored encrypted and handed only to the handler
        (:func:`~flask_durable_jobs.job_secrets`). ``callback_url`` receives the
        job, signed, when it ends.
        """
        state = self._state()
        values = self._job_values(
            state, job_type, delay=delay, run_at=run_at, queue=queue,
            priority=priority, max_attempts=max_attempts,
        )
        if payload is None:
            payload = {}
        payload_json.check_payload(payload)  # names the bad key path
        values["payload"] = payload
        if idempotency_key is not None:
            if not isinstance(idempotency_key, str) or not 0 < len(idempotency_key) <= 255:
                raise ValueError(
                    f"idempotency_key must be a string of 1 to 255 characters,"
                    f" got {idempotency_key!r}"
                )
            values["idempotency_key"] = idempotency_key
        if owner is not None:
            values["owner"] = _check_owner(owner)
        if secrets is not None:
            values["secrets"] = _encrypt_secrets(state, secrets)
        if callback_url is not None:
            values["callback_url"] = callbacks.check_url(callback_url, state.settings)
        session: t.Any = state.db.session
        if commit and _idle(session):
            # Committing the session would commit the job alone: insert it in
            # a transaction of its own, without the session's machinery. On
            # PostgreSQL that is one autocommitted statement on the library's
            # connections; on SQLite a short one on the app's own engine, with
            # the app's durability settings.
            engine = None if state.store.autocommits else state.app_engine
            job, created = state.store.insert_now(values, engine)
            commit = False  # nothing left to commit; signal and wake below
            session = None
        else:
            job, created = state.store.insert(session, values)
        self._after_enqueue(
            state, session, commit, job_type, [job.id] if created else [],
            job if created else None, due=job.run_at <= values["created_at"],
        )
        return job

    def enqueue_many(
        self,
        job_type: str,
        payloads: t.Iterable[dict[str, t.Any]],
        *,
        delay: float | dt.timedelta | None = None,
        run_at: dt.datetime | None = None,
        queue: str | None = None,
        priority: int | None = None,
        max_attempts: int | None = None,
        commit: bool = True,
    ) -> list[int]:
        """Store many jobs of one type; returns their ids in payload order."""
        state = self._state()
        values = self._job_values(
            state, job_type, delay=delay, run_at=run_at, queue=queue,
            priority=priority, max_attempts=max_attempts,
        )
        texts = []
        for index, payload in enumerate(payloads):
            try:
                texts.append(payload_json.dumps_payload(payload))
            except TypeError as exc:
                raise TypeError(f"payloads[{index}]: {exc}") from None
        session = state.db.session
        ids = state.store.insert_many(session, values, texts)
        self._after_enqueue(state, session, commit, job_type, ids, None,
                            due=values["run_at"] <= values["created_at"])
        return ids

    @staticmethod
    def _after_enqueue(
        state: State,
        session: t.Any,
        commit: bool,
        job_type: str,
        ids: list[int],
        job: Job | None,
        *,
        due: bool,
    ) -> None:
        """Commit (or wait for the caller's commit), then signal and wake."""

        def committed() -> None:  # after the commit that made the jobs durable
            if not ids:
                return
            signals.send(signals.job_enqueued, state.app, job_type=job_type, job_ids=ids,
                         job=job)
            if not due:
                return
            if state.settings.eager:
                state.runner.run()
            elif state.scheduler is not None or state._runner is not None:
                state.runner.wake()

        if session is None:  # already committed on its own
            committed()
        elif commit:
            session.commit()
            committed()
        elif ids:
            _on_commit(session(), committed)

    # -- reading and changing jobs ----------------------------------------------

    def get(self, job_id: int, owner: str | None = None) -> Job | None:
        """The job with this id, or ``None``.

        With ``owner``, a job enqueued for another owner (or for none) is
        ``None`` too, so an app can let its users poll their own jobs by id.
        """
        job = self._state().store.get(job_id)
        if job is None or (owner is not None and job.owner != owner):
            return None
        return job

    def list_jobs(
        self,
        *,
        status: str | None = None,
        job_type: str | None = None,
        queue: str | None = None,
        page: int = 1,
        per_page: int = 50,
    ) -> tuple[list[Job], int]:
        """One page of jobs, newest first, and the number matching the filters."""
        if page < 1 or not 1 <= per_page <= 200:
            raise ValueError("page must be >= 1 and per_page between 1 and 200")
        return self._state().store.list_jobs(
            status=status, job_type=job_type, queue=queue,
            offset=(page - 1) * per_page, limit=per_page,
        )

    def stats(self) -> dict[str, t.Any]:
        """Counts by status and type, the due backlog, and due types nobody here handles."""
        state = self._state()
        return state.store.stats(state.now(), set(self._handlers))

    def retry(self, job_id: int) -> Job:
        """Send a ``dead`` or ``cancelled`` job back to ``pending``, due now."""
        state = self._state()
        job = state.store.retry(job_id, state.now())
        if state._runner is not None:
            state.runner.wake()
        return job

    def cancel(self, job_id: int) -> Job:
        """Cancel a ``pending`` or ``retrying`` job."""
        state = self._state()
        job = state.store.cancel(job_id, state.now())
        if job.batch_id is not None:
            state.finish_batches([job.batch_id])
        return job

    # -- batches ---------------------------------------------------------------------

    def enqueue_batch(
        self,
        jobs: t.Iterable[tuple[str, dict[str, t.Any]]],
        *,
        on_complete: str | None = None,
        on_complete_payload: dict[str, t.Any] | None = None,
        batch_id: str | None = None,
        commit: bool = True,
    ) -> Batch:
        """Enqueue ``(job_type, payload)`` pairs under one batch id, in one transaction.

        When every job of the batch has ended (succeeded, dead or cancelled),
        ``on_complete`` is enqueued once, however many processes finish the
        batch's jobs. Its payload is ``on_complete_payload`` plus ``batch_id``
        (unless the payload has its own).
        """
        state = self._state()
        pairs = list(jobs)
        if not pairs:
            raise ValueError("a batch needs at least one job")
        if on_complete is not None and on_complete not in self._handlers:
            raise LookupError(f"no handler registered for on_complete job type {on_complete!r}")
        if on_complete_payload is not None:
            payload_json.check_payload(on_complete_payload)
        if batch_id is None:
            batch_id = uuid.uuid4().hex
        elif not isinstance(batch_id, str) or not 0 < len(batch_id) <= 64:
            raise ValueError(f"batch_id must be a string of 1 to 64 characters, got {batch_id!r}")
        by_type: dict[str, list[tuple[int, str]]] = {}
        for index, (job_type, payload) in enumerate(pairs):
            try:
                text = payload_json.dumps_payload(payload)
            except TypeError as exc:
                raise TypeError(f"jobs[{index}]: {exc}") from None
            by_type.setdefault(job_type, []).append((index, text))
        session = state.db.session
        now = state.now()
        session.execute(state.batches.insert().values(
            id=batch_id, on_complete=on_complete, on_complete_payload=on_complete_payload,
            created_at=now,
        ))
        ids: list[int] = [0] * len(pairs)
        for job_type, items in by_type.items():
            values = self._job_values(state, job_type, delay=None, run_at=None, queue=None,
                                      priority=None, max_attempts=None)
            values["batch_id"] = batch_id
            new_ids = state.store.insert_many(session, values, [text for _, text in items])
            for (index, _text), job_id in zip(items, new_ids, strict=True):
                ids[index] = job_id
        self._after_enqueue(state, session, commit, pairs[0][0], ids, None, due=True)
        return Batch(id=batch_id, job_ids=ids)

    def batch_status(self, batch_id: str) -> dict[str, t.Any] | None:
        """Counts of the batch's jobs by status, and whether all have ended."""
        state = self._state()
        row = state.store.batch_row(batch_id)
        if row is None:
            return None
        counts = state.store.batch_counts(batch_id)
        total = sum(counts.values())
        ended = sum(counts[s] for s in ("succeeded", "dead", "cancelled"))
        return {
            "batch_id": batch_id,
            "by_status": counts,
            "total": total,
            "all_terminal": total > 0 and ended == total,
            "on_complete": row.on_complete,
            "completed_at": None if row.completed_at is None
            else as_utc(row.completed_at).isoformat(),
        }

    def delete(self, job_id: int) -> None:
        """Delete a job that is not running."""
        self._state().store.delete(job_id)

    # -- processing ----------------------------------------------------------------

    def process_due(self, limit: int | None = None) -> Counts:
        """Claim up to ``limit`` due jobs, run them, wait, and return the counts."""
        state = self._state()
        if limit is None:
            limit = state.settings.batch_size
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit must be an integer >= 1, got {limit!r}")
        return state.runner.run(limit)

    def drain(self) -> Counts:
        """Process due jobs until none is due; returns the summed counts.

        Each call claims batch after batch (no cap on the count), so the next
        batch is claimed and run while the last one's outcomes are written.
        """
        total = empty_counts()
        while True:
            counts = self.process_due(limit=sys.maxsize)
            for key, value in counts.items():
                total[key] += value
            if counts["claimed"] == 0:
                return total

    def sweep_orphans(self) -> int:
        """Recover running jobs whose lease expired; returns how many."""
        return len(self._state().runner.sweep())

    def prune(self, older_than: dt.timedelta | None = None) -> int:
        """Delete finished jobs past their retention; returns how many."""
        if older_than is not None and not isinstance(older_than, dt.timedelta):
            raise TypeError(f"older_than must be a timedelta, got {type(older_than).__name__}")
        return self._state().prune(older_than)

    def start(self) -> None:
        """Start the current app's scheduler in this process (if not running)."""
        self._state().start_scheduler()

    def stop(self) -> None:
        """Stop the current app's scheduler as at exit: finish, then release."""
        self._state().shutdown()
