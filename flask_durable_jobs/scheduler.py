"""The in-process scheduler: what it runs, and in which processes it starts.

Every process that serves requests runs an APScheduler ``BackgroundScheduler``
with four jobs: the due-job processor (every ``DURABLE_JOBS_POLL_INTERVAL``),
the orphan sweep (every ``DURABLE_JOBS_SWEEP_INTERVAL``), retention pruning
(hourly) and the recurring schedules' tick (every second, :mod:`.periodic`).
Many processes doing the same is safe: the database decides who gets which
job.

Where it starts (:func:`start_decision`):

* ``flask run``: in the reloader's child only (or the single process with
  ``--no-reload``); never in ``flask shell``, ``flask db ...``, ``flask jobs ...``
  or any other command;
* gunicorn: in each worker. With ``--preload`` the app is built in the master;
  the scheduler then starts in each worker right after the fork, never in the
  master;
* anything else that builds the app (a script, a notebook): at ``init_app``.
  Set ``DURABLE_JOBS_SCHEDULER = False`` to opt out.

Never for an app under ``TESTING`` unless ``DURABLE_JOBS_SCHEDULER`` is
``True`` in its config (:mod:`.config`), and never on an in-memory SQLite
database (:func:`in_memory_sqlite`).

The scheduler's threads belong to the app: they hold only weak references to
it, so an app that is thrown away (a test suite builds hundreds) takes its
threads with it, and every live app's scheduler stops at interpreter exit.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime as dt
import logging
import os
import signal
import sys
import threading
import time
import typing as t
import weakref

import sqlalchemy as sa
from apscheduler.executors.debug import DebugExecutor
from apscheduler.schedulers.background import BackgroundScheduler

from . import callbacks, periodic
from .errors import ConfigError
from .models import UTC

if t.TYPE_CHECKING:
    from .extension import State

log = logging.getLogger("flask_durable_jobs")

NOW = "now"
AFTER_FORK = "after_fork"
NEVER = "never"
FLASK_RUN = "flask run"

PROCESS_JOB = "durable_jobs.process"
SWEEP_JOB = "durable_jobs.sweep"
PRUNE_JOB = "durable_jobs.prune"
PERIODIC_JOB = "durable_jobs.periodic"
CALLBACK_JOB = "durable_jobs.callbacks"
#: Seconds between retention prunes by the scheduler.
PRUNE_INTERVAL = 3600.0
#: Repeated identical tick errors are logged at most this often (seconds).
ERROR_LOG_INTERVAL = 60.0


def start_decision() -> tuple[str, str]:
    """Whether this process should run the scheduler: (NOW|AFTER_FORK|NEVER, why)."""
    flask_command = _flask_cli_command()
    if flask_command is not None:
        name, reload = flask_command
        if name != "run":
            return NEVER, f"'flask {name}' does not serve requests"
        if reload and os.environ.get("WERKZEUG_RUN_MAIN") != "true":
            return NEVER, "the reloader's watcher process does not serve requests"
        return NOW, FLASK_RUN
    role = _gunicorn_role()
    if role == "master":
        return AFTER_FORK, "gunicorn --preload: starting in each worker after the fork"
    return NOW, "gunicorn worker" if role == "worker" else "app built outside a CLI"


_said: set[str] = set()
_said_lock = threading.Lock()


def say_once(level: int, message: str, *args: t.Any) -> None:
    """Log ``message`` the first time this process says it, never again: a
    process that builds many apps (a test suite, a script) hears it once."""
    with _said_lock:
        if message in _said:
            return
        _said.add(message)
    log.log(level, message, *args)


def exit_on_sigterm() -> None:
    """Make SIGTERM a normal exit, so ``atexit`` releases unfinished jobs.

    Werkzeug's server without the reloader leaves SIGTERM at its default,
    which kills the process before any cleanup. Only in the main thread, and
    only when nothing else has claimed the signal.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return

    def on_sigterm(signum: int, _frame: t.Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_sigterm)


def _flask_cli_command() -> tuple[str, bool] | None:
    """(command name, reloader on) when the app is being built by the flask CLI."""
    try:
        import click
        from flask.cli import FlaskGroup
        from flask.helpers import get_debug_flag
    except ImportError:  # pragma: no cover - flask always ships click
        return None
    ctx = click.get_current_context(silent=True)
    if ctx is None or not isinstance(ctx.find_root().command, FlaskGroup):
        return None
    name = ctx.command.name or ""
    reload = ctx.params.get("reload")
    if reload is None:
        reload = get_debug_flag()
    return name, bool(reload)


def _gunicorn_role() -> str | None:
    """'master' or 'worker' when gunicorn is building the app, else None.

    gunicorn's arbiter sets ``SERVER_SOFTWARE`` in the environment before it
    loads the app (in the master with ``--preload``), and a worker installs
    its signal handlers (methods of its ``Worker``) before it loads the app.
    """
    if not os.environ.get("SERVER_SOFTWARE", "").startswith("gunicorn/"):
        return None
    if "gunicorn" not in sys.modules:  # a process started by a worker, not gunicorn
        return None
    from gunicorn.workers.base import Worker

    handler = signal.getsignal(signal.SIGTERM)
    return "worker" if isinstance(getattr(handler, "__self__", None), Worker) else "master"


def in_memory_sqlite(url: sa.URL) -> bool:
    """An SQLite database that lives in one connection of this process.

    Flask-SQLAlchemy gives such a database one connection that every session
    of every thread shares; the library's own work there would run inside the
    caller's transactions, so it gets no scheduler.
    """
    if url.get_backend_name() != "sqlite":
        return False
    return (url.database or "") in ("", ":memory:") or url.query.get("mode") == "memory"


def _missing_table(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "durable_jobs" in text and ("no such table" in text or "does not exist" in text)


#: APScheduler reports every tick at INFO; that chatter goes here, quiet
#: (WARNING) unless the app sets this logger's level itself.
TICK_LOGGER = "flask_durable_jobs.ticks"
#: The alias of the scheduler's executor, so its per-run log lines go to
#: ``apscheduler.executors.durable_jobs`` (also quiet unless the app says
#: otherwise), not to the ``default`` executor's logger the app may use.
TICK_EXECUTOR = "durable_jobs"


def _quiet(name: str) -> logging.Logger:
    logger = logging.getLogger(name)
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.WARNING)
    return logger


def _fire(ref: weakref.ref[Scheduler], tick: str) -> None:
    """An APScheduler job: start ``tick`` on a daemon thread of its own.

    APScheduler runs this in its own (daemon) thread and it returns at once,
    so no pool thread ever holds a tick: the interpreter joins non-daemon
    threads before ``atexit`` runs, and a processor tick lasts as long as jobs
    keep coming, so it would never see the shutdown that ends it.
    """
    scheduler = ref()
    if scheduler is not None and scheduler.begin_tick(tick):
        threading.Thread(target=_run_tick, args=(ref, tick), name="durable-jobs-tick",
                         daemon=True).start()


def _run_tick(ref: weakref.ref[Scheduler], tick: str) -> None:
    scheduler = ref()
    if scheduler is None:
        return
    try:
        getattr(scheduler, tick)()
    finally:
        scheduler.end_tick(tick)


def _abandon(aps: BackgroundScheduler, stop_listening: threading.Event) -> None:
    """Stop the threads of a scheduler whose app was garbage collected.

    Its ticks hold the app while they run, so none is running; a thread of
    its own, because the collection may happen on APScheduler's thread, which
    cannot join itself.
    """
    stop_listening.set()
    if aps.running:
        threading.Thread(target=aps.shutdown, kwargs={"wait": False},
                         name="durable-jobs-abandon", daemon=True).start()


class Listener:
    """Wakes the processor when another process may have added jobs.

    PostgreSQL: LISTEN for the insert trigger's NOTIFY. SQLite: the file's
    change counter. A shortcut only: a lost notification, a dropped connection
    or a pooler that does not pass LISTEN costs at most one poll interval.
    Holds the app's state weakly: its thread ends when the app is gone.
    """

    def __init__(self, state: State) -> None:
        self._state = weakref.ref(state)
        self.stopped = threading.Event()
        self._thread = threading.Thread(target=self._main, name="durable-jobs-listen",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.stopped.set()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def _watch(self) -> t.Any:
        state = self._state()
        return None if state is None else state.store.watch()

    def _wake(self) -> bool:
        state = self._state()
        if state is None:
            return False
        state.runner.wake()
        return True

    def _main(self) -> None:
        failures = 0
        while not self.stopped.is_set():
            watcher = None
            try:
                watcher = self._watch()
                if watcher is None:
                    return  # the app is gone
                failures = 0
                while not self.stopped.is_set():
                    if watcher.wait(0.5):
                        if not self._wake():
                            return
                    elif self._state() is None:
                        return
            except Exception as exc:
                failures += 1
                if failures == 1:
                    log.warning("watching for new jobs failed (%s); polling only until it"
                                " recovers", exc)
                self.stopped.wait(min(30.0, 0.5 * 2 ** min(failures, 6)))
            finally:
                if watcher is not None:
                    with contextlib.suppress(Exception):
                        watcher.close()


class Scheduler:
    """One app's scheduler in this process."""

    def __init__(self, state: State) -> None:
        self.state = state
        self._tick_lock = threading.Lock()
        self._errors: dict[str, tuple[str, float]] = {}
        self._aps: t.Any = None
        self._listener: Listener | None = None
        self._active = 0  # ticks running now
        self._ticking: set[str] = set()  # tick methods started and not yet ended
        self._idle = threading.Condition()
        self._finalizer: weakref.finalize[..., Scheduler] | None = None
        self.started_at: dt.datetime | None = None
        self.last_tick: dt.datetime | None = None
        self.last_sweep: dt.datetime | None = None

    @property
    def running(self) -> bool:
        return self._aps is not None and self._aps.running

    def start(self) -> None:
        if in_memory_sqlite(self.state.app_engine.url):
            raise ConfigError(
                "flask-durable-jobs cannot run a scheduler on an in-memory SQLite database:"
                " it lives in one connection that the app's sessions share. Run jobs with"
                " jobs.drain(), or use a database file."
            )
        settings = self.state.settings
        _quiet(f"apscheduler.executors.{TICK_EXECUTOR}")
        aps = BackgroundScheduler(
            logger=_quiet(TICK_LOGGER),
            executors={TICK_EXECUTOR: DebugExecutor()},
            job_defaults={"coalesce": True, "misfire_grace_time": None},
            timezone=UTC,
            daemon=True,
        )
        # The jobs hold the scheduler weakly (see _fire): APScheduler's thread
        # must not keep a thrown-away app alive.
        ref = weakref.ref(self)
        now = dt.datetime.now(UTC)
        jobs: list[tuple[str, str, float, dt.datetime]] = [
            (PROCESS_JOB, "process_tick", settings.poll_interval, now),
            (SWEEP_JOB, "sweep_tick", settings.sweep_interval, now),
            (PRUNE_JOB, "prune_tick", PRUNE_INTERVAL,
             now + dt.timedelta(seconds=min(60.0, PRUNE_INTERVAL))),
            (PERIODIC_JOB, "periodic_tick", periodic.TICK_INTERVAL, now),
            (CALLBACK_JOB, "callback_tick", max(settings.poll_interval, 1.0), now),
        ]
        for job_id, tick, seconds, first in jobs:
            aps.add_job(_fire, "interval", args=(ref, tick), seconds=seconds, id=job_id,
                        next_run_time=first, executor=TICK_EXECUTOR)
        listener = Listener(self.state)
        self._listener = listener
        self._aps = aps  # before start: the first ticks fire at once
        self._finalizer = weakref.finalize(self, _abandon, aps, listener.stopped)
        self._finalizer.atexit = False  # at exit, _at_exit stops live apps properly
        aps.start()
        listener.start()
        self.started_at = now
        self.state.runner.on_idle_wake = self.kick
        log.info("durable jobs scheduler started (pid %s, worker %s)",
                 os.getpid(), self.state.runner.worker_id)

    def kick(self) -> None:
        """Run the processor now instead of at the next interval."""
        aps = self._aps
        if aps is None or not aps.running:
            return
        try:
            aps.modify_job(PROCESS_JOB, next_run_time=dt.datetime.now(UTC))
        except Exception:  # shutting down: the job is gone
            log.debug("kick ignored", exc_info=True)

    def stop(self) -> None:
        """Stop claiming, let running jobs finish within the shutdown timeout,
        release the rest, and stop the scheduler."""
        with self._idle:
            aps, self._aps = self._aps, None  # from now on no tick starts work
        if aps is None:
            return
        if self._finalizer is not None:
            self._finalizer.detach()
        if self._listener is not None:
            self._listener.stop()
        runner = self.state.runner
        timeout = self.state.settings.shutdown_timeout
        runner.begin_shutdown(timeout)
        if aps.running:
            aps.shutdown(wait=False)
        # Ticks still in flight finish before the caller disposes the store:
        # the processor within the shutdown timeout, the others promptly.
        deadline = time.monotonic() + timeout + 5.0
        with self._idle:
            while self._active and time.monotonic() < deadline:
                self._idle.wait(0.05)
        if self._listener is not None:
            self._listener.join(max(0.0, min(2.0, deadline - time.monotonic())))
        log.info("durable jobs scheduler stopped (pid %s)", os.getpid())

    # -- ticks: never raise, so one bad tick never stops the next -------------

    def begin_tick(self, tick: str) -> bool:
        """Claim ``tick`` for a new run; False while its last run goes on
        (a slow tick is skipped, not piled up)."""
        with self._idle:
            if tick in self._ticking:
                return False
            self._ticking.add(tick)
            return True

    def end_tick(self, tick: str) -> None:
        with self._idle:
            self._ticking.discard(tick)

    def _guard(self, name: str, func: t.Callable[[], t.Any]) -> None:
        with self._idle:
            if self._aps is None:
                return  # stopped: no new work, and nothing to touch the store
            self._active += 1
        try:
            func()
        except Exception as exc:
            text = f"{type(exc).__name__}: {exc}"
            previous = self._errors.get(name)
            now = time.monotonic()
            if previous is None or previous[0] != text or now - previous[1] > ERROR_LOG_INTERVAL:
                if _missing_table(exc):
                    log.error("durable jobs %s tick: the job tables do not exist yet; run"
                              " `flask jobs upgrade` (or db.create_all()). Retrying.", name)
                else:
                    log.exception("durable jobs %s tick failed (repeats are logged once a"
                                  " minute)", name)
                self._errors[name] = (text, now)
        else:
            self._errors.pop(name, None)
        finally:
            with self._idle:
                self._active -= 1
                self._idle.notify_all()

    def process_tick(self) -> None:
        self.last_tick = dt.datetime.now(UTC)
        if not self._tick_lock.acquire(blocking=False):
            return  # a tick is still draining; it sees new work itself
        try:
            self._guard("process", lambda: self.state.runner.run(keep_polling=True))
        finally:
            self._tick_lock.release()

    def sweep_tick(self) -> None:
        self.last_sweep = dt.datetime.now(UTC)
        self._guard("sweep", self.state.runner.sweep)

    def callback_tick(self) -> None:
        self._guard("callbacks", lambda: callbacks.deliver_due(self.state))

    def prune_tick(self) -> None:
        self._guard("prune", self.state.prune)

    def periodic_tick(self) -> None:
        self._guard("periodic", lambda: periodic.tick(self.state))


_states: weakref.WeakSet[State] = weakref.WeakSet()
_hooks_installed = False
_hooks_lock = threading.Lock()


def track(state: State) -> None:
    """Watch a state across fork and interpreter exit."""
    global _hooks_installed
    with _hooks_lock:
        _states.add(state)
        if not _hooks_installed:
            _hooks_installed = True
            if hasattr(os, "register_at_fork"):
                os.register_at_fork(after_in_child=_after_fork_in_child)
            atexit.register(_at_exit)


def _after_fork_in_child() -> None:
    # Threads do not survive a fork: forget the parent's scheduler and
    # connections, and start a fresh scheduler where one was deferred to here.
    for state in list(_states):
        state.after_fork()


def _at_exit() -> None:
    for state in list(_states):
        try:
            state.shutdown()
        except Exception:  # pragma: no cover - best effort at exit
            log.exception("stopping durable jobs at exit failed")
