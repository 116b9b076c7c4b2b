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
* anything else that builds the app (a script, a notebook, a test suite):
  at ``init_app``. Set ``DURABLE_JOBS_SCHEDULER = False`` to opt out.
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

from apscheduler.executors.base import BaseExecutor, run_job
from apscheduler.schedulers.background import BackgroundScheduler

from . import callbacks, periodic
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
    """'master' or 'worker' when gunicorn is building the app, else None."""
    if "gunicorn" not in sys.modules:
        return None
    modules = set()
    frame: t.Any = sys._getframe()
    while frame is not None:
        modules.add(frame.f_globals.get("__name__"))
        frame = frame.f_back
    if "gunicorn.workers.base" in modules:
        return "worker"
    if "gunicorn.arbiter" in modules:
        return "master"
    return None


def _missing_table(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "durable_jobs" in text and ("no such table" in text or "does not exist" in text)


#: APScheduler reports every tick at INFO; that chatter goes here, quiet
#: (WARNING) unless the app sets this logger's level itself.
TICK_LOGGER = "flask_durable_jobs.ticks"


class DaemonThreadExecutor(BaseExecutor):  # type: ignore[misc]
    """Runs each tick in a fresh daemon thread.

    APScheduler's default pool uses non-daemon threads that the interpreter
    joins before ``atexit`` handlers run, which would keep a long tick from
    ever seeing the shutdown.
    """

    def start(self, scheduler: t.Any, alias: str) -> None:
        super().start(scheduler, alias)
        self._logger = logging.getLogger(TICK_LOGGER)

    def _do_submit_job(self, job: t.Any, run_times: t.Any) -> None:
        def target() -> None:
            try:
                events = run_job(job, job._jobstore_alias, run_times, self._logger.name)
            except BaseException as exc:
                self._run_job_error(job.id, exc, exc.__traceback__)
            else:
                self._run_job_success(job.id, events)

        threading.Thread(target=target, name="durable-jobs-tick", daemon=True).start()


class Listener:
    """Wakes the processor when another process may have added jobs.

    PostgreSQL: LISTEN for the insert trigger's NOTIFY. SQLite: the file's
    change counter. A shortcut only: a lost notification, a dropped connection
    or a pooler that does not pass LISTEN costs at most one poll interval.
    """

    def __init__(self, state: State) -> None:
        self.state = state
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="durable-jobs-listen",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def _main(self) -> None:
        failures = 0
        while not self._stop.is_set():
            watcher = None
            try:
                watcher = self.state.store.watch()
                failures = 0
                while not self._stop.is_set():
                    if watcher.wait(0.5):
                        self.state.runner.wake()
            except Exception as exc:
                failures += 1
                if failures == 1:
                    log.warning("watching for new jobs failed (%s); polling only until it"
                                " recovers", exc)
                self._stop.wait(min(30.0, 0.5 * 2 ** min(failures, 6)))
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
        self._idle = threading.Condition()
        self.started_at: dt.datetime | None = None
        self.last_tick: dt.datetime | None = None
        self.last_sweep: dt.datetime | None = None

    @property
    def running(self) -> bool:
        return self._aps is not None and self._aps.running

    def start(self) -> None:
        settings = self.state.settings
        ticks = logging.getLogger(TICK_LOGGER)
        if ticks.level == logging.NOTSET:
            ticks.setLevel(logging.WARNING)
        aps = BackgroundScheduler(
            logger=ticks,
            executors={"default": DaemonThreadExecutor()},
            job_defaults={"coalesce": True, "max_instances": 5, "misfire_grace_time": None},
            timezone=UTC,
            daemon=True,
        )
        now = dt.datetime.now(UTC)
        aps.add_job(self.process_tick, "interval", seconds=settings.poll_interval,
                    id=PROCESS_JOB, next_run_time=now)
        aps.add_job(self.sweep_tick, "interval", seconds=settings.sweep_interval,
                    id=SWEEP_JOB, next_run_time=now)
        aps.add_job(self.prune_tick, "interval", seconds=PRUNE_INTERVAL, id=PRUNE_JOB,
                    next_run_time=now + dt.timedelta(seconds=min(60.0, PRUNE_INTERVAL)))
        aps.add_job(self.periodic_tick, "interval", seconds=periodic.TICK_INTERVAL,
                    id=PERIODIC_JOB, next_run_time=now)
        aps.add_job(self.callback_tick, "interval", seconds=max(settings.poll_interval, 1.0),
                    id=CALLBACK_JOB, next_run_time=now)
        self._aps = aps  # before start: the first ticks fire at once
        aps.start()
        self._listener = Listener(self.state)
        self._listener.start()
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
