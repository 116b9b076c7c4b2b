"""The :class:`DurableJobs` extension: the public entry point."""

from __future__ import annotations

import datetime as dt
import logging
import sys
import threading
import types
import typing as t
import weakref

import sqlalchemy as sa
from flask import Flask, current_app

from . import config as config_module
from . import control as control_module
from . import enqueue as enqueue_module
from . import handlers as handlers_module
from . import listing, standalone
from . import periodic as periodic_module
from .clock import DatabaseClock
from .handlers import Handler, HandlerSpec
from .migrations import define_version_table
from .models import (
    Batch,
    Job,
    as_utc,
    define_batch_table,
    define_control_tables,
    define_table,
    utcnow,
)
from .retry import Backoff, default_backoff
from .scheduler import (
    AFTER_FORK,
    FLASK_RUN,
    NEVER,
    NOW,
    Scheduler,
    exit_on_sigterm,
    in_memory_sqlite,
    say_once,
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


def get_state(app: Flask | None = None) -> State:
    """The extension's state for ``app`` (default: the current app)."""
    target = app if app is not None else current_app
    try:
        return t.cast("State", target.extensions[EXTENSION_KEY])
    except KeyError:
        raise RuntimeError(
            "flask-durable-jobs is not initialised on this app: call jobs.init_app(app)"
        ) from None


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
        self._clock_offset = dt.timedelta()
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
    def clock_offset(self) -> dt.timedelta:
        """How far :meth:`set_clock_offset` moved the clock ahead of real time."""
        return self._clock_offset

    def set_clock_offset(self, offset: dt.timedelta) -> None:
        """Run the clock ``offset`` ahead of real time (zero: real time again).

        For tests (:func:`~flask_durable_jobs.testing.move_time`): only this
        process's view of time moves, for this app.
        """
        if not isinstance(offset, dt.timedelta):
            raise TypeError(f"offset must be a timedelta, got {type(offset).__name__}")
        self._clock_offset = offset
        self.clock = utcnow if not offset else (lambda: utcnow() + offset)

    @property
    def runner_started(self) -> bool:
        """Whether this process has made the runner (the scheduler, a
        ``process_due`` or ``drain``); reading :attr:`runner` would make one."""
        return self._runner is not None

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
                    # an app thrown away without stop() still closes these connections
                    weakref.finalize(self._store, engine.dispose).atexit = False
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
                        handlers=self.ext.handlers,
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
        if store is not None and store.engine is not self.app_engine:
            store.engine.dispose()

    def after_fork(self) -> None:
        """In a forked child: drop the parent's threads and connections."""
        self._lock = threading.RLock()
        self.scheduler = None
        self._runner = None
        if self._store is not None:
            self._store.engine.dispose(close=False)
            self._store = None
        if self.start_policy == AFTER_FORK:
            self.start_policy = NOW
            self.start_scheduler()

    def finish_batches(self, batch_ids: t.Iterable[str]) -> list[str]:
        """Enqueue the completion job of every given batch whose jobs all ended."""
        return enqueue_module.finish_batches(self, batch_ids)

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
        self._admin_authorizer: t.Callable[[], t.Any] | None = None
        self._schedules: dict[str, periodic_module.Schedule] = {}
        if app is not None:
            self.init_app(app, db=db)

    @property
    def handlers(self) -> t.Mapping[str, HandlerSpec]:
        """The registered handlers by job type (read-only; ``@jobs.handler`` adds)."""
        return types.MappingProxyType(self._handlers)

    @property
    def schedules(self) -> t.Mapping[str, periodic_module.Schedule]:
        """The registered recurring schedules by key (read-only; ``jobs.periodic`` adds)."""
        return types.MappingProxyType(self._schedules)

    @property
    def authorizer(self) -> t.Callable[[], t.Any] | None:
        """The function registered with :meth:`admin_authorizer`, or ``None``."""
        return self._admin_authorizer

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
        with app.app_context():
            url = db.engine.url
        config_module.check_driver(url)
        # every table on the app's metadata: db.create_all() and autogenerate see them
        table = define_table(db.metadata)
        batches = define_batch_table(db.metadata)
        periodic_module.define_table(db.metadata)
        define_control_tables(db.metadata)
        define_version_table(db.metadata)
        state = State(self, app, db, settings, table, batches)
        app.extensions[EXTENSION_KEY] = state

        from . import admin, cli, dashboard

        admin.register(app, self, settings)
        dashboard.register(app, settings)
        app.cli.add_command(cli.jobs_cli)
        app.teardown_appcontext(standalone.release)
        if settings.metrics:  # optional: prometheus_client is imported only here
            from .metrics import init_app as init_metrics
            init_metrics(state)
        track(state)
        decision, why = start_decision()
        if (decision != NEVER and not app.testing and settings.admin_token is None
                and settings.admin_read_token is None and self.authorizer is None):
            say_once(logging.WARNING, "The admin API at %s answers 403 to every request: set"
                     " DURABLE_JOBS_ADMIN_TOKEN (or DURABLE_JOBS_ADMIN_READ_TOKEN), or register"
                     " a function with @jobs.admin_authorizer (also possible after init_app),"
                     " to enable it.", settings.url_prefix)
        if settings.scheduler and in_memory_sqlite(url):
            say_once(logging.WARNING, "durable jobs: no scheduler for an in-memory SQLite"
                     " database: it lives in one connection that the app's sessions share;"
                     " run jobs with jobs.drain(), or use a database file")
            decision, why = NEVER, "in-memory SQLite"
        if settings.scheduler:
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
        concurrency: int | None = None,
        concurrency_key: t.Callable[[dict[str, t.Any]], str] | None = None,
        rate_limit: str | None = None,
    ) -> t.Any:
        """Register a job handler: ``@jobs.handler`` or ``@jobs.handler("name", ...)``.

        ``on_orphan="dead"`` sends a job whose worker died mid-run to ``dead``
        instead of retrying it, for side effects that must not repeat blindly.
        ``concurrency=N`` runs at most N attempts at once across every process
        (per ``concurrency_key(payload)`` when given); ``rate_limit="N/s"``
        (``/m``, ``/h``) starts at most N attempts per period.
        """

        def register(func: F) -> F:
            job_type = name if isinstance(name, str) else handlers_module.default_name(func)
            spec = handlers_module.make_spec(
                job_type, t.cast(Handler, func), max_attempts=max_attempts, timeout=timeout,
                queue=queue, priority=priority, backoff=backoff, on_orphan=on_orphan,
                concurrency=concurrency, concurrency_key=concurrency_key,
                rate_limit=rate_limit,
            )
            enqueue_module.check_handler(spec)
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
            self._handlers, self._schedules, schedule, job_type, key=key, payload=payload,
            timezone=timezone, queue=queue, priority=priority,
        )

    def admin_authorizer(self, func: F) -> F:
        """Register ``func()`` deciding access to the admin API for the request:
        ``True`` (everything), ``"read"`` (reads only); anything else refuses."""
        self._admin_authorizer = func
        return func

    # -- enqueue ----------------------------------------------------------------

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
        return enqueue_module.enqueue(
            get_state(), job_type, payload, delay=delay, run_at=run_at, queue=queue,
            priority=priority, max_attempts=max_attempts, idempotency_key=idempotency_key,
            owner=owner, secrets=secrets, callback_url=callback_url, commit=commit,
        )

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
        return enqueue_module.enqueue_many(
            get_state(), job_type, payloads, delay=delay, run_at=run_at, queue=queue,
            priority=priority, max_attempts=max_attempts, commit=commit,
        )

    # -- reading and changing jobs ----------------------------------------------

    def get(self, job_id: int, owner: str | None = None) -> Job | None:
        """The job with this id, or ``None``.

        With ``owner``, a job enqueued for another owner (or for none) is
        ``None`` too, so an app can let its users poll their own jobs by id.
        """
        job = get_state().store.get(job_id)
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
        **filters: t.Any,
    ) -> tuple[list[Job], int]:
        """One page of jobs, newest first, and the number matching the filters.

        Takes every list filter (:mod:`flask_durable_jobs.listing`). The count
        is exact, so it reads every match: for large tables use :meth:`list_page`.
        """
        return listing.list_jobs(
            get_state(), {"status": status, "job_type": job_type, "queue": queue, **filters},
            page=page, per_page=per_page,
        )

    def list_page(
        self,
        *,
        cursor: str | None = None,
        page: int | None = None,
        per_page: int = 50,
        **filters: t.Any,
    ) -> listing.JobPage:
        """One page of matching jobs, newest first; pass ``next_cursor`` back as
        ``cursor`` for the next one (as fast at any depth). ``total`` is counted
        up to 10,000 (``total_exact`` says whether more match)."""
        return listing.list_page(
            get_state(), filters, cursor=cursor, page=page, per_page=per_page
        )

    def retry_many(self, **filters: t.Any) -> int:
        """Send every matching ``dead`` or ``cancelled`` job back to ``pending``,
        due now; returns how many. Works in batches; other jobs are skipped."""
        return listing.bulk(get_state(), "retry", filters)

    def cancel_many(self, **filters: t.Any) -> int:
        """Cancel every matching ``pending`` or ``retrying`` job; returns how many."""
        return listing.bulk(get_state(), "cancel", filters)

    def delete_many(self, **filters: t.Any) -> int:
        """Delete every matching job that is not ``running``; returns how many."""
        return listing.bulk(get_state(), "delete", filters)

    def stats(self) -> dict[str, t.Any]:
        """Counts by status and type, the due backlog, and due types nobody here handles."""
        state = get_state()
        return state.store.stats(state.now(), set(self.handlers))

    def retry(self, job_id: int) -> Job:
        """Send a ``dead`` or ``cancelled`` job back to ``pending``, due now."""
        state = get_state()
        job = state.store.retry(job_id, state.now())
        if state.runner_started:
            state.runner.wake()
        return job

    def cancel(self, job_id: int) -> Job:
        """Cancel a ``pending`` or ``retrying`` job; ask a ``running`` one to
        stop (it stays running, ``cancel_requested_at`` set, and is never retried)."""
        return control_module.cancel(get_state(), job_id)

    def wait(self, job_id: int, timeout: float | None = None) -> Job:
        """Block until the job is ``succeeded``, ``dead`` or ``cancelled`` and
        return it; ``TimeoutError`` after ``timeout`` seconds."""
        return control_module.wait(get_state(), job_id, timeout)

    def get_by_key(self, idempotency_key: str) -> Job | None:
        """The job enqueued with this idempotency key, or ``None``."""
        return control_module.get_by_key(get_state(), idempotency_key)

    # -- queues and processes ------------------------------------------------------

    def pause_queue(self, name: str) -> dict[str, t.Any]:
        """Stop every process and host from claiming the queue's jobs (at its
        next claim); running jobs finish. Returns the queue as :meth:`queues` shows it."""
        from . import queues

        return queues.pause(get_state(), name)

    def resume_queue(self, name: str) -> dict[str, t.Any]:
        """Let every process claim the queue's jobs again."""
        from . import queues

        return queues.resume(get_state(), name)

    def queues(self) -> list[dict[str, t.Any]]:
        """Every queue with jobs or a stored state: ``{"name", "paused", "counts"}``."""
        from . import queues

        return queues.queues(get_state())

    def processes(self) -> list[dict[str, t.Any]]:
        """The registry's live processes: ``id``, ``host``, ``pid``, ``started_at``,
        ``last_seen``, ``queues``, ``concurrency``, ``version``, ``jobs_in_flight``."""
        from . import processes

        return processes.processes(get_state())

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
        return enqueue_module.enqueue_batch(
            get_state(), jobs, on_complete=on_complete, on_complete_payload=on_complete_payload,
            batch_id=batch_id, commit=commit,
        )

    def batch_status(self, batch_id: str) -> dict[str, t.Any] | None:
        """Counts of the batch's jobs by status, and whether all have ended."""
        state = get_state()
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
        get_state().store.delete(job_id)

    # -- processing ----------------------------------------------------------------

    def process_due(self, limit: int | None = None) -> Counts:
        """Claim up to ``limit`` due jobs, run them, wait, and return the counts."""
        state = get_state()
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
        return len(get_state().runner.sweep())

    def prune(self, older_than: dt.timedelta | None = None) -> int:
        """Delete finished jobs past their retention; returns how many."""
        if older_than is not None and not isinstance(older_than, dt.timedelta):
            raise TypeError(f"older_than must be a timedelta, got {type(older_than).__name__}")
        return get_state().prune(older_than)

    def start(self) -> None:
        """Start the current app's scheduler in this process (if not running)."""
        get_state().start_scheduler()

    def stop(self) -> None:
        """Stop the current app's scheduler as at exit: finish, then release."""
        get_state().shutdown()
