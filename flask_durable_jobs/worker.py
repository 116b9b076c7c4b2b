"""Claim due jobs, run them on handler threads, write their outcomes.

One :class:`Runner` per app and process. :meth:`Runner.run` is what both
``jobs.process_due()`` and the scheduler's tick call; each call is one
processing run (:class:`~flask_durable_jobs.loop.Run`):

1. claim up to a batch of due jobs of the types this process handles;
2. hand them to the handler threads (:mod:`.pool`; each job in its own app
   context, run by :meth:`Runner.execute`);
3. collect outcomes as they come and write them in batches (:mod:`.writer`),
   each write fenced by the claim's lease token;
4. renew the leases of jobs still held (the heartbeat), fail attempts that
   outlive their timeout, and at shutdown give back what did not finish.

A statement that meets a transient database failure (a restart, a failover,
a terminated connection; :mod:`.faults`) is retried with a growing pause
while the run keeps every outcome not written yet and every handler still
running, and keeps renewing their leases, so nobody else takes those jobs.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import queue
import socket
import threading
import time
import traceback
import typing as t
import uuid
from datetime import timedelta

from . import current, faults, limits, signals, vault
from . import payload as payload_json
from .errors import Cancelled, Discard
from .handlers import HandlerSpec
from .loop import WAKE, Counts, Run, empty_counts
from .models import CANCELLED, DEAD, RETRYING, SUCCEEDED, utcnow
from .pool import ABANDONED, DONE, QUEUED, RUNNING, HandlerPool, WorkItem, timeout_message
from .processes import Registration
from .retry import Backoff, delay_for
from .store import Finish

if t.TYPE_CHECKING:
    import datetime as dt

    from flask import Flask
    from flask_sqlalchemy import SQLAlchemy

    from .config import Settings
    from .models import Job
    from .store import Store

__all__ = ["Counts", "Runner", "empty_counts"]

log = logging.getLogger("flask_durable_jobs")

#: Work a process claims ahead of its threads, in seconds of average run time.
PREFETCH_SECONDS = 0.1

#: Jobs that run this quickly on average are handed to the threads in chunks.
QUICK_JOB_SECONDS = 0.001

#: Longest ``last_error`` kept on a job, in characters (the tail is kept).
MAX_ERROR_LENGTH = 10_000


def _format_error(exc: BaseException) -> str:
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    head = f"{type(exc).__name__}: {exc}"
    full = f"{head}\n\n{text}"
    if len(full) > MAX_ERROR_LENGTH:
        full = head[:2000] + "\n\n[...]\n" + text[-(MAX_ERROR_LENGTH - 2100):]
    return full


def _storable(text: str) -> str:
    """``text`` as every database stores it: no NUL, no lone surrogate."""
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


class Runner:
    """The per-app, per-process job processor."""

    def __init__(
        self,
        *,
        app: Flask,
        db: SQLAlchemy,
        store: Store,
        settings: Settings,
        handlers: t.Mapping[str, HandlerSpec],
        default_backoff: Backoff,
        clock: t.Callable[[], dt.datetime],
        vault: vault.Vault | None = None,
    ) -> None:
        self.vault = vault
        self.app = app
        self.db = db
        self.store = store
        self.settings = settings
        self.handlers = handlers
        self.default_backoff = default_backoff
        self.clock = clock
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.pool = HandlerPool(settings.concurrency, self.execute, "durable-jobs")
        faults.replace_closed_connections(store.engine)
        #: Database failures are logged through this, once a minute per kind.
        self.messages = faults.RateLimitedLog()
        self._lock = threading.Lock()
        self._runs: list[queue.SimpleQueue[t.Any]] = []
        #: the runs going on now, for :meth:`unwritten_outcomes`
        self._open_runs: list[Run] = []
        #: tokens of claims that may have been committed without an answer
        self._lost_claims: list[str] = []
        self._stopping = threading.Event()
        #: When a run stopping for shutdown gives back what did not finish
        #: (``time.monotonic()`` seconds; set by :meth:`begin_shutdown`).
        self.stop_deadline = 0.0
        self._closed = False
        self._average_run: float | None = None  # seconds per job, moving average
        #: Called by :meth:`wake` when no loop is running (the scheduler's kick).
        self.on_idle_wake: t.Callable[[], None] | None = None
        #: Called with the ids of batches that had a job end.
        self.on_batch_ended: t.Callable[[set[str]], object] | None = None
        #: Jobs whose progress waits to be written (:mod:`.current`).
        self.progress_board = current.Board()
        #: This process's record in the registry (made by the scheduler's runs).
        self.registration = Registration(store, settings, self.worker_id)
        self._limited_turn = 0  # which limited type claims first, in turn

    # -- running handlers (on pool threads) -------------------------------

    def execute(self, item: WorkItem) -> bool:
        """Run one item on the calling pool thread and hand its outcome to
        its run; ``False`` when the item was given up meanwhile (its thread
        has been replaced and must end)."""
        with item.lock:
            if item.state != QUEUED:
                return True  # released at shutdown before it started
            item.state = RUNNING
            item.started = time.monotonic()
            if item.spec.timeout is not None:
                item.deadline = item.started + item.spec.timeout
        outcome = self._call(item)
        self._observe(time.monotonic() - item.started)
        with item.lock:
            if item.state == ABANDONED:
                log.warning(
                    "job %s (%s) returned after its attempt was given up; result discarded",
                    item.row.id, item.row.job_type,
                )
                return False
            item.state = DONE
        item.done.put((item, outcome))
        return True

    def _call(self, item: WorkItem) -> Finish:
        row = item.row
        secrets = None
        try:
            if row.secrets is not None:
                if self.vault is None:
                    raise vault.SecretsUnavailable(
                        "the job has secrets but DURABLE_JOBS_SECRET_KEY is not set"
                    )
                secrets = self.vault.decrypt(row.secrets)
        except vault.SecretsUnavailable as exc:
            return self._outcome(item, DEAD, error=f"SecretsUnavailable: {exc}")
        try:
            payload = payload_json.loads(row.payload)
            # current_job() builds its view of the job only if the handler asks
            with self.app.app_context(), current.Running(
                item, payload, self.store.job_control, self.progress_board
            ):
                if signals.job_started.receivers:  # before building the arguments
                    signals.send(signals.job_started, self.app, job_id=row.id,
                                 job_type=row.job_type, attempt=row.attempts, payload=payload)
                if secrets is None:
                    value = self._invoke(item, payload)
                else:
                    with vault.current_secrets(secrets):
                        value = self._invoke(item, payload)
                # Flask-SQLAlchemy removes the job's session as the context pops
        except Discard as exc:
            return self._outcome(item, DEAD, error=vault.scrub(f"Discard: {exc}", secrets))
        except Cancelled as exc:
            log.info("job %s (%s) attempt %s cancelled", row.id, row.job_type, row.attempts)
            return self._outcome(item, CANCELLED, error=vault.scrub(f"Cancelled: {exc}", secrets))
        except _Expired:
            return self.failure(item, timeout_message(item))
        except BaseException as exc:
            log.info("job %s (%s) attempt %s failed: %s", row.id, row.job_type, row.attempts,
                     type(exc).__name__)
            return self.failure(item, vault.scrub(_format_error(exc), secrets))
        try:
            text = payload_json.dumps_result(value)
        except (TypeError, ValueError) as exc:
            return self._outcome(
                item, DEAD, error=f"handler returned a value JSON cannot carry: {exc}"
            )
        return self._outcome(item, SUCCEEDED, result=text, value=value)

    def _invoke(self, item: WorkItem, payload: dict[str, t.Any]) -> t.Any:
        """Call the handler; await what an ``async def`` one returns, on an
        event loop of this thread's own, within the attempt's timeout."""
        value = item.spec.func(payload)
        if item.spec.is_async or inspect.iscoroutine(value):
            left = None if item.deadline is None else item.deadline - time.monotonic()
            return asyncio.run(_awaited(value, left))
        return value

    def _outcome(
        self, item: WorkItem, status: str, *, result: str | None = None,
        error: str | None = None, run_at: dt.datetime | None = None, value: t.Any = None,
    ) -> Finish:
        row = item.row
        if error is not None:
            error = _storable(error)
        duration = None if item.started is None else time.monotonic() - item.started
        finish = Finish(row.id, row.token, status, result, error, run_at, row.job_type,
                        row.attempts, duration, value, row.batch_id)
        job = item.current
        if job is not None:  # the handler asked for it: its last progress goes along
            finish.progress = job.take_progress(self.clock() - utcnow())
        return finish

    def failure(self, item: WorkItem, error: str) -> Finish:
        """The outcome of a failed attempt: retried after the backoff, or dead."""
        row = item.row
        if row.attempts >= row.max_attempts:
            return self._outcome(item, DEAD, error=error)
        policy = item.spec.backoff or self.default_backoff
        try:
            delay = delay_for(policy, row.attempts)
        except Exception as exc:  # a broken policy must not lose the job
            log.error("backoff policy of %s failed: %r; using the default", row.job_type, exc)
            delay = delay_for(self.default_backoff, row.attempts)
        run_at = self.clock() + timedelta(seconds=delay)
        return self._outcome(item, RETRYING, error=error, run_at=run_at)

    def _observe(self, seconds: float) -> None:
        # A moving average is enough: it only sizes the next claims.
        average = self._average_run
        self._average_run = seconds if average is None else average * 0.9 + seconds * 0.1

    # -- what a run asks of the runner ----------------------------------------

    def claim_size(self) -> int:
        """How many jobs this process holds at most: what its threads can start
        within :data:`PREFETCH_SECONDS`, at most a batch.

        Quick jobs are claimed a batch at a time (few round trips); slow ones
        about a thread's worth at a time, so the other processes get their
        share instead of watching one process's queue wait behind its leases.
        """
        threads = self.settings.concurrency
        average = self._average_run
        if average is None:
            return min(self.settings.batch_size, threads)
        ahead = int(threads * PREFETCH_SECONDS / max(average, 1e-6))
        return max(1, min(self.settings.batch_size, threads + ahead))

    def chunk(self, count: int) -> int:
        """Items per hand-off: quick jobs are shared out evenly among the
        threads, slower ones go one by one to whichever thread is free."""
        average = self._average_run
        if average is None or average > QUICK_JOB_SECONDS:
            return 1
        threads = self.settings.concurrency
        return max(1, -(-count // threads))

    def least_claim(self, size: int, running: int) -> int:
        """The fewest jobs worth a claim while ``running`` of at most ``size``
        (:meth:`claim_size`) are in flight.

        Quick jobs are claimed half a batch at a time, not one by one as each
        ends; when the threads hold no backlog, every free thread is worth one.
        """
        if running == 0 or size <= self.settings.concurrency:
            return 1
        return max(1, size // 2)

    def handled_types(self) -> list[str]:
        """The plain types this process handles (limited ones: :meth:`limited_specs`)."""
        return sorted(name for name, spec in self.handlers.items() if not spec.limited)

    def limited_specs(self) -> list[HandlerSpec]:
        """The handlers with a concurrency or rate limit, a different one first
        at each call, so that one type never takes every claim's room."""
        specs = [spec for _name, spec in sorted(self.handlers.items()) if spec.limited]
        if specs:
            self._limited_turn = (self._limited_turn + 1) % len(specs)
            specs = specs[self._limited_turn:] + specs[:self._limited_turn]
        return specs

    def idle_threads(self) -> int:
        """Handler threads with nothing to run now (none queued for them)."""
        with self._lock:
            busy = sum(1 for run in self._open_runs for item in run.inflight.values()
                       if item.state in (QUEUED, RUNNING))
        return max(0, self.settings.concurrency - busy)

    def frees_slots(self, outcomes: t.Iterable[Finish]) -> bool:
        """Whether any of these written outcomes ended an attempt of a
        limited type (another job of it may be claimable now)."""
        for outcome in outcomes:
            spec = self.handlers.get(outcome.job_type)
            if spec is not None and spec.limited:
                return True
        return False

    def claim(self, limit: int, done: queue.SimpleQueue[t.Any]) -> list[WorkItem]:
        """Claim up to ``limit`` due jobs as work items reporting to ``done``."""
        types = self.handled_types()
        limited = self.limited_specs()
        if (not types and not limited) or limit <= 0:
            return []
        now = self.clock()
        token = uuid.uuid4().hex
        try:
            rows = [] if not limited else limits.claim(
                self.store, limited, queues=self.settings.queues, limit=limit, clock=self.clock,
                lease=timedelta(seconds=self.settings.lease_seconds),
                token=token, worker_id=self.worker_id, with_secrets=self.vault is not None,
                threads=self.idle_threads(),
            )
            if types and len(rows) < limit:
                rows += self.store.claim(
                    job_types=types,
                    queues=self.settings.queues,
                    limit=limit - len(rows),
                    now=now,
                    lease_until=now + timedelta(seconds=self.settings.lease_seconds),
                    token=token,
                    worker_id=self.worker_id,
                    # without a key, jobs carrying secrets wait for a process that has one
                    with_secrets=self.vault is not None,
                )
        except Exception as exc:
            if faults.lost_connection(exc):
                # the server may have committed the claim before the answer
                # was lost: nobody would run those jobs until their lease ends
                with self._lock:
                    self._lost_claims.append(token)
            raise
        items = []
        for row in rows:
            spec = self.handlers.get(row.job_type)
            if spec is None:  # unregistered between claim and now: give it back
                self.store.release([(row.id, row.token)], now)
                continue
            items.append(WorkItem(row, spec, done))
        return items

    @property
    def has_lost_claims(self) -> bool:
        return bool(self._lost_claims)

    def release_lost_claims(self) -> None:
        """Give back the jobs of claims whose answer was lost with the
        connection, the attempt not counted, instead of leaving them running
        until their lease expires (when ``on_orphan="dead"`` would end them)."""
        while self._lost_claims:
            token = self._lost_claims[0]
            ids = self.store.held_by(token)
            released = self.store.release([(job_id, token) for job_id in ids], self.clock())
            if released:
                log.warning("released %d jobs claimed by a statement whose answer was lost"
                            " with its connection; they are due again", released)
            with self._lock:
                if token in self._lost_claims:
                    self._lost_claims.remove(token)

    def renew(self, held: list[tuple[int, str]]) -> set[int]:
        """Extend the leases of ``held`` (id, token) pairs; the ids still held."""
        return self.store.renew(held, self.clock() + timedelta(seconds=self.settings.lease_seconds))

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def retire(self, done: queue.SimpleQueue[t.Any]) -> bool:
        """End the run reporting to ``done`` unless a wake-up came in: ``True``
        when it is forgotten (a later :meth:`wake` starts a new run)."""
        with self._lock:
            if not done.empty():
                return False
            self._forget(done)
            return True

    def _forget(self, done: queue.SimpleQueue[t.Any]) -> None:
        if done in self._runs:
            self._runs.remove(done)

    # -- after a write: log, signals, batches --------------------------------

    def written(self, outcomes: list[Finish]) -> None:
        """Outcomes the database took: a line for each dead job, the signals,
        and the batches those jobs ended."""
        for outcome in outcomes:
            if outcome.status == DEAD:
                # the reason's kind only, as for a failed attempt: the text
                # may carry what the payload did
                reason = (outcome.error or "").split(":", 1)[0] or "no error"
                log.warning("job %s (%s) is dead after attempt %s: %s",
                            outcome.id, outcome.job_type, outcome.attempt, reason)
        if outcomes and _outcome_receivers():
            with self.app.app_context():
                for outcome in outcomes:
                    self._send_outcome(outcome)
        self.batches_ended(o.batch_id for o in outcomes if o.status != RETRYING)

    def _send_outcome(self, o: Finish) -> None:
        common = {"job_id": o.id, "job_type": o.job_type, "attempt": o.attempt,
                  "duration": o.duration}
        if o.status == SUCCEEDED:
            signals.send(signals.job_succeeded, self.app, result=o.value, **common)
        elif o.status == RETRYING:
            signals.send(signals.job_retried, self.app, error=o.error, run_at=o.run_at,
                         **common)
        elif o.status == DEAD and signals.job_dead.has_receivers_for(self.app):
            signals.send(signals.job_dead, self.app, error=o.error, job=self._job(o.id),
                         **common)

    def _job(self, job_id: int) -> Job | None:
        """The job as written, for receivers of ``job_dead`` (a dead job is
        rare enough for one read each)."""
        try:
            return self.store.get(job_id)
        except Exception as exc:  # the outcome is written; only the signal's job is missing
            log.warning("job %s: reading it for the job_dead signal failed: %s",
                        job_id, faults.summary(exc))
            return None

    def batches_ended(self, batch_ids: t.Iterable[str | None]) -> None:
        ended = {batch_id for batch_id in batch_ids if batch_id}
        if not ended or self.on_batch_ended is None:
            return
        try:
            self.on_batch_ended(ended)
        except Exception:  # the jobs are written; the next ending job retries this
            log.exception("completing batches %s failed", sorted(ended))

    # -- control ------------------------------------------------------------

    def run(self, limit: int | None = None, *, keep_polling: bool = False) -> Counts:
        """Claim and run due jobs until nothing is due (and nothing in flight).

        ``limit`` caps how many jobs are claimed in all. With ``keep_polling``
        (the scheduler's tick), the run also looks for newly due jobs every
        poll interval while earlier ones are still running. The run keeps one
        database connection for its claims and writes.
        """
        if keep_polling:  # the scheduler's run: this process runs the processor
            self.beat()
        run = Run(self, limit, keep_polling)
        with self._lock:
            self._runs.append(run.done)
            self._open_runs.append(run)
        try:
            return run.loop()
        finally:
            with self._lock:
                self._forget(run.done)
                self._open_runs.remove(run)
            # Jobs still in flight after an unexpected error keep running on
            # their threads; their leases lapse and the sweep recovers them.
            run.close()

    def wake(self) -> None:
        """New work is due now: tell a running loop, or kick the scheduler."""
        with self._lock:
            if self._runs:
                for done in self._runs:
                    done.put(WAKE)
                return
        if self.on_idle_wake is not None:
            self.on_idle_wake()

    def sweep(self) -> list[tuple[t.Any, ...]]:
        try:
            recovered = self.store.sweep(self.clock())
        except Exception as exc:
            if not faults.lost_connection(exc):
                raise
            # the connection died under the statement (the store has dropped
            # it): once more, on another
            recovered = self.store.sweep(self.clock())
        for job_id, job_type, status, _batch in recovered:
            log.warning("job %s (%s): lease expired; now %s", job_id, job_type, status)
        if recovered and signals.job_rescued.receivers:
            with self.app.app_context():
                for job_id, job_type, status, _batch in recovered:
                    signals.send(signals.job_rescued, self.app, job_id=job_id,
                                 job_type=job_type, status=status)
        self.batches_ended(batch for _i, _t, status, batch in recovered
                           if status in (DEAD, CANCELLED))
        try:
            self.store.fold_counts()
        except Exception as exc:  # the counts stay right unfolded; the next sweep folds
            log.warning("folding the kept job counts failed: %r", exc)
        return recovered

    def begin_shutdown(self, timeout: float) -> None:
        """Stop claiming; loops release what is unfinished after ``timeout``."""
        self.stop_deadline = time.monotonic() + timeout
        self._stopping.set()
        self.wake()

    def unwritten_outcomes(self) -> int:
        """Finished jobs whose outcome this process keeps because the
        database did not take it: they are written once it answers again
        (the health report's ``unwritten_outcomes``).

        Outcomes on their way in a run that meets no failure are not counted:
        they wait for one write, not for the database.
        """
        with self._lock:
            return sum(run.unwritten_count() for run in self._open_runs)

    def beat(self) -> None:
        """Renew this process's registry record when due, on a thread of its
        own: the run's thread never waits for it."""
        if self.registration.due():
            threading.Thread(target=self._beat, name="durable-jobs-registry",
                             daemon=True).start()

    def _beat(self) -> None:
        """A failure is logged, never raised (the next beat tries again)."""
        try:
            with self._lock:
                inflight = sum(len(run.inflight) for run in self._open_runs)
            self.registration.beat(self.clock(), inflight)
        except Exception as exc:
            self.messages.log(("registry", type(exc).__name__), logging.WARNING,
                              "durable jobs: renewing the process record failed: %s",
                              faults.summary(exc))

    @property
    def busy(self) -> bool:
        with self._lock:
            return bool(self._runs)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.pool.close(self.settings.concurrency)
            try:
                self.registration.forget()
            except Exception as exc:  # it expires after three leases anyway
                log.debug("removing the process record failed: %s", faults.summary(exc))


class _Expired(Exception):
    """An ``async def`` handler's attempt ran out of time."""


async def _awaited(awaitable: t.Any, seconds: float | None) -> t.Any:
    """Await ``awaitable`` for at most ``seconds``: then cancel it and raise
    :class:`_Expired` (a ``TimeoutError`` of the handler's own stays its own)."""
    task = asyncio.ensure_future(awaitable)
    if seconds is None:
        return await task
    done, _ = await asyncio.wait({task}, timeout=max(0.0, seconds))
    if not done:
        task.cancel()
        with contextlib.suppress(BaseException):  # let it clean up; its end is ignored
            await task
        raise _Expired
    return task.result()


def _outcome_receivers() -> bool:
    return bool(
        signals.job_succeeded.receivers or signals.job_retried.receivers
        or signals.job_dead.receivers
    )
