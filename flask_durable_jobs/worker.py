"""Claim due jobs, run them on handler threads, write their outcomes.

One :class:`Runner` per app and process. :meth:`Runner.run` is the loop both
``jobs.process_due()`` and the scheduler's tick use:

1. claim up to a batch of due jobs of the types this process handles;
2. hand them to the handler threads (each job in its own app context);
3. collect outcomes as they come and write them in batches, each write fenced
   by the claim's lease token; the handler threads run the next batch while
   the write waits on the database, and on PostgreSQL the write runs on a
   second connection while the loop claims the batch after;
4. renew the leases of jobs still in flight (the heartbeat), fail attempts
   that outlive their timeout, and at shutdown give back what did not finish.

A handler thread stuck past its job's timeout cannot be killed in Python; it
is abandoned (its result is discarded, and refused by the database anyway)
and a fresh thread takes its place, with the rest of its chunk.
"""

from __future__ import annotations

import collections
import concurrent.futures
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

from . import payload as payload_json
from . import signals, vault
from .errors import Discard
from .handlers import HandlerSpec
from .models import DEAD, RETRYING, SUCCEEDED
from .retry import Backoff, delay_for
from .store import ClaimedRow, Finish

if t.TYPE_CHECKING:
    import datetime as dt

    from flask import Flask
    from flask_sqlalchemy import SQLAlchemy

    from .config import Settings
    from .store import Store

log = logging.getLogger("flask_durable_jobs")

#: Work a process claims ahead of its threads, in seconds of average run time.
PREFETCH_SECONDS = 0.1

#: Jobs that run this quickly on average are handed to the threads in chunks.
QUICK_JOB_SECONDS = 0.001

#: Longest ``last_error`` kept on a job, in characters (the tail is kept).
MAX_ERROR_LENGTH = 10_000

_QUEUED, _RUNNING, _DONE, _ABANDONED = "queued", "running", "done", "abandoned"
_WAKE = object()
_NO_CHUNK: collections.deque[t.Any] = collections.deque(maxlen=0)

Counts = dict[str, int]


def empty_counts() -> Counts:
    return {"claimed": 0, "succeeded": 0, "retried": 0, "dead": 0}


def _format_error(exc: BaseException) -> str:
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    head = f"{type(exc).__name__}: {exc}"
    full = f"{head}\n\n{text}"
    if len(full) > MAX_ERROR_LENGTH:
        full = head[:2000] + "\n\n[...]\n" + text[-(MAX_ERROR_LENGTH - 2100):]
    return full


class WorkItem:
    """One claimed job on its way through a handler thread."""

    __slots__ = ("chunk", "deadline", "done", "lock", "row", "spec", "started", "state")

    def __init__(self, row: ClaimedRow, spec: HandlerSpec, done: queue.SimpleQueue[t.Any]) -> None:
        self.row = row
        self.spec = spec
        self.done = done
        self.lock = threading.Lock()
        self.state = _QUEUED
        self.started: float | None = None
        self.deadline: float | None = None
        #: the items handed to a thread with this one, those not started yet
        #: (set by HandlerPool.submit)
        self.chunk: collections.deque[WorkItem] = _NO_CHUNK


class HandlerPool:
    """A fixed number of daemon threads running work items.

    Items come in chunks: a thread runs its chunk's items one after another.
    Quick jobs travel many to a chunk, so a batch costs a few hand-offs
    between threads instead of one per job.

    Daemon threads let the interpreter exit even if a handler hangs; the
    shutdown path releases those jobs instead of waiting for them.
    """

    def __init__(self, size: int, run: t.Callable[[WorkItem], bool], name: str) -> None:
        self._queue: queue.SimpleQueue[collections.deque[WorkItem] | None] = queue.SimpleQueue()
        self._run = run
        self._name = name
        self._lock = threading.Lock()
        self._count = 0
        for _ in range(size):
            self._spawn()

    def _spawn(self) -> None:
        with self._lock:
            self._count += 1
            number = self._count
        thread = threading.Thread(
            target=self._main, name=f"{self._name}-{number}", daemon=True
        )
        thread.start()

    def _main(self) -> None:
        while True:
            chunk = self._queue.get()
            if chunk is None:
                return
            while chunk:
                try:
                    item = chunk.popleft()
                except IndexError:  # emptied by the thread that took it over
                    break
                if not self._run(item):
                    return  # abandoned after a timeout; see replace()

    def submit(self, items: list[WorkItem], chunk: int = 1) -> None:
        for start in range(0, len(items), chunk):
            shared: collections.deque[WorkItem] = collections.deque(items[start:start + chunk])
            for item in shared:
                item.chunk = shared
            self._queue.put(shared)

    def replace(self, stuck: WorkItem) -> None:
        """Start a thread in place of the one stuck in ``stuck``'s timed-out
        handler; the items of its chunk not started yet go with it."""
        self._spawn()
        if stuck.chunk:
            self._queue.put(stuck.chunk)

    def close(self, size: int) -> None:
        for _ in range(size):
            self._queue.put(None)


class Writer:
    """Writes one loop's outcomes, one batch in flight at a time.

    Where two connections can write at once (PostgreSQL), the write runs on a
    thread with its own connection, started on first use, so that the write
    and the loop's next claim wait on the database together; otherwise
    (SQLite) it runs at once on the loop's connection. Either way the loop
    settles it later (:meth:`take`): counts, signals, batches.
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self._calls: queue.SimpleQueue[t.Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._future: concurrent.futures.Future[set[int]] | None = None
        #: the outcomes of the write in flight (still in flight for the loop)
        self.writing: list[Finish] = []

    def start(self, outcomes: list[Finish], now: dt.datetime) -> None:
        future: concurrent.futures.Future[set[int]] = concurrent.futures.Future()
        if self._store.concurrent_writes:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._main, name="durable-jobs-writer", daemon=True
                )
                self._thread.start()
            self._calls.put((future, outcomes, now))
        else:
            self._finish(future, outcomes, now)
        self.writing, self._future = outcomes, future

    def take(self) -> tuple[list[Finish], concurrent.futures.Future[set[int]]] | None:
        """The write in flight, to settle; ``None`` if there is none."""
        if self._future is None:
            return None
        taken = self.writing, self._future
        self.writing, self._future = [], None
        return taken

    def _finish(
        self, future: concurrent.futures.Future[set[int]], outcomes: list[Finish],
        now: dt.datetime,
    ) -> None:
        try:
            future.set_result(self._store.finish(outcomes, now))
        except BaseException as exc:  # handed to the loop, which logs it
            future.set_exception(exc)

    def _main(self) -> None:
        with self._store.pinned():
            while (call := self._calls.get()) is not None:
                self._finish(*call)

    def close(self) -> None:
        """Stop the thread, once its connection is back in the pool (the loop
        settles every write before it closes the writer)."""
        if self._thread is not None:
            self._calls.put(None)
            self._thread.join(timeout=10)


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
        self.pool = HandlerPool(settings.concurrency, self._execute, "durable-jobs")
        self._lock = threading.Lock()
        self._loops: list[queue.SimpleQueue[t.Any]] = []
        self._stopping = threading.Event()
        self._stop_deadline = 0.0
        self._closed = False
        self._average_run: float | None = None  # seconds per job, moving average
        #: Called by :meth:`wake` when no loop is running (the scheduler's kick).
        self.on_idle_wake: t.Callable[[], None] | None = None
        #: Called with the ids of batches that had a job end.
        self.on_batch_ended: t.Callable[[set[str]], object] | None = None

    # -- running handlers (on pool threads) -------------------------------

    def _execute(self, item: WorkItem) -> bool:
        with item.lock:
            if item.state != _QUEUED:
                return True  # released at shutdown before it started
            item.state = _RUNNING
            item.started = time.monotonic()
            if item.spec.timeout is not None:
                item.deadline = item.started + item.spec.timeout
        outcome = self._call(item)
        self._observe(time.monotonic() - item.started)
        with item.lock:
            if item.state == _ABANDONED:
                log.warning(
                    "job %s (%s) returned after its attempt was given up; result discarded",
                    item.row.id, item.row.job_type,
                )
                return False
            item.state = _DONE
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
            with self.app.app_context():
                if signals.job_started.receivers:  # before building the arguments
                    signals.send(signals.job_started, self.app, job_id=row.id,
                                 job_type=row.job_type, attempt=row.attempts, payload=payload)
                if secrets is None:
                    value = item.spec.func(payload)
                else:
                    with vault.current_secrets(secrets):
                        value = item.spec.func(payload)
                # Flask-SQLAlchemy removes the job's session as the context pops
        except Discard as exc:
            return self._outcome(item, DEAD, error=vault.scrub(f"Discard: {exc}", secrets))
        except BaseException as exc:
            log.info("job %s (%s) attempt %s failed: %s", row.id, row.job_type, row.attempts,
                     type(exc).__name__)
            return self._failure(item, vault.scrub(_format_error(exc), secrets))
        try:
            text = payload_json.dumps_result(value)
        except (TypeError, ValueError) as exc:
            return self._outcome(
                item, DEAD, error=f"handler returned a value JSON cannot carry: {exc}"
            )
        return self._outcome(item, SUCCEEDED, result=text, value=value)

    def _outcome(
        self, item: WorkItem, status: str, *, result: str | None = None,
        error: str | None = None, run_at: dt.datetime | None = None, value: t.Any = None,
    ) -> Finish:
        row = item.row
        if error is not None and "\x00" in error:  # no database text holds NUL
            error = error.replace("\x00", "\\x00")
        duration = None if item.started is None else time.monotonic() - item.started
        return Finish(row.id, row.token, status, result, error, run_at, row.job_type,
                      row.attempts, duration, value, row.batch_id)

    def _failure(self, item: WorkItem, error: str) -> Finish:
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

    # -- the loop -----------------------------------------------------------

    def _observe(self, seconds: float) -> None:
        # A moving average is enough: it only sizes the next claims.
        average = self._average_run
        self._average_run = seconds if average is None else average * 0.9 + seconds * 0.1

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

    def _chunk(self, count: int) -> int:
        """Items per hand-off: quick jobs are shared out evenly among the
        threads, slower ones go one by one to whichever thread is free."""
        average = self._average_run
        if average is None or average > QUICK_JOB_SECONDS:
            return 1
        threads = self.settings.concurrency
        return max(1, -(-count // threads))

    def _least_claim(self, size: int, running: int) -> int:
        """The fewest jobs worth a claim while ``running`` of at most ``size``
        (:meth:`claim_size`) are in flight.

        Quick jobs are claimed half a batch at a time, not one by one as each
        ends; when the threads hold no backlog, every free thread is worth one.
        """
        if running == 0 or size <= self.settings.concurrency:
            return 1
        return max(1, size // 2)

    def handled_types(self) -> list[str]:
        return sorted(self.handlers)

    def _claim(self, limit: int, done: queue.SimpleQueue[t.Any]) -> list[WorkItem]:
        types = self.handled_types()
        if not types or limit <= 0:
            return []
        now = self.clock()
        rows = self.store.claim(
            job_types=types,
            queues=self.settings.queues,
            limit=limit,
            now=now,
            lease_until=now + timedelta(seconds=self.settings.lease_seconds),
            token=uuid.uuid4().hex,
            worker_id=self.worker_id,
            # without a key, jobs carrying secrets wait for a process that has one
            with_secrets=self.vault is not None,
        )
        items = []
        for row in rows:
            spec = self.handlers.get(row.job_type)
            if spec is None:  # unregistered between claim and now: give it back
                self.store.release([(row.id, row.token)], now)
                continue
            items.append(WorkItem(row, spec, done))
        return items

    def run(self, limit: int | None = None, *, keep_polling: bool = False) -> Counts:
        """Claim and run due jobs until nothing is due (and nothing in flight).

        ``limit`` caps how many jobs are claimed in all. With ``keep_polling``
        (the scheduler's tick), the loop also looks for newly due jobs every
        poll interval while earlier ones are still running. The loop keeps one
        database connection for its claims and writes.
        """
        with self.store.pinned():
            writer = Writer(self.store)
            try:
                return self._loop(limit, keep_polling, writer)
            finally:
                writer.close()

    def _loop(self, limit: int | None, keep_polling: bool, writer: Writer) -> Counts:
        settings = self.settings
        counts = empty_counts()
        done: queue.SimpleQueue[t.Any] = queue.SimpleQueue()
        inflight: dict[int, WorkItem] = {}
        pending: list[Finish] = []  # outcomes whose write failed, to retry
        budget = limit
        exhausted = False
        heartbeat_every = settings.lease_seconds / 3
        next_heartbeat = time.monotonic() + heartbeat_every
        last_claim = 0.0
        outcomes: list[Finish] = []  # collected, not yet written (still in inflight)
        with self._lock:
            self._loops.append(done)
        try:
            while True:
                # 1. claim while there is room, budget and work; a job whose
                # outcome only waits to be written leaves its room
                running = len(inflight) - len(outcomes) - len(writer.writing)
                size = self.claim_size()
                room = size - running
                if budget is not None:
                    room = min(room, budget)
                if (not exhausted and room >= self._least_claim(size, running)
                        and not self._stopping.is_set()):
                    items = self._claim(room, done)
                    last_claim = time.monotonic()
                    counts["claimed"] += len(items)
                    if budget is not None:
                        budget -= len(items)
                    if len(items) < room:
                        exhausted = True
                    for item in items:
                        inflight[item.row.id] = item
                    self.pool.submit(items, self._chunk(len(items)))
                    if budget == 0:
                        exhausted = True

                # 2. write outcomes in one statement; the handler threads run
                # what was just claimed meanwhile. The previous write (on
                # PostgreSQL, run beside the claim above) is settled first.
                if writer.writing and (outcomes or len(writer.writing) == len(inflight)):
                    self._settle(writer, inflight, counts, pending)
                if outcomes:
                    writer.start(outcomes, self.clock())
                    outcomes = []
                    if len(writer.writing) == len(inflight):
                        continue  # nothing else runs: claim beside the write
                if not inflight:
                    with self._lock:
                        if done.empty():
                            self._loops.remove(done)
                            return counts
                    exhausted = budget == 0
                    while not done.empty():
                        done.get_nowait()  # wake-ups only: nothing is in flight
                    continue

                # 3. heartbeat (after the write in progress: it clears leases)
                if time.monotonic() >= next_heartbeat:
                    self._settle(writer, inflight, counts, pending)
                    self._heartbeat(inflight)
                    next_heartbeat = time.monotonic() + heartbeat_every

                # 4. wait for outcomes, a deadline, a heartbeat or a wake-up
                now_m = time.monotonic()
                waits = [next_heartbeat - now_m, 1.0]
                waits.extend(
                    item.deadline - now_m for item in inflight.values()
                    if item.deadline is not None and item.state == _RUNNING
                )
                if keep_polling and exhausted and budget != 0:
                    waits.append(last_claim + settings.poll_interval - now_m)
                if self._stopping.is_set():
                    waits.append(self._stop_deadline - now_m)
                outcomes = list(pending)
                pending.clear()
                try:
                    got = done.get(timeout=max(0.0, min(waits)))
                    while True:
                        if got is _WAKE:
                            exhausted = budget == 0
                        else:
                            outcomes.append(got[1])
                        got = done.get_nowait()
                except queue.Empty:
                    pass

                # 5. attempts past their timeout fail now
                now_m = time.monotonic()
                for item in inflight.values():
                    if item.deadline is not None and now_m >= item.deadline:
                        with item.lock:
                            if item.state != _RUNNING:
                                continue
                            item.state = _ABANDONED
                        self.pool.replace(item)
                        message = (
                            f"JobTimeout: attempt {item.row.attempts} timed out after"
                            f" {item.spec.timeout:g} s (the handler's timeout)"
                        )
                        log.warning("job %s (%s) timed out", item.row.id, item.row.job_type)
                        outcomes.append(self._failure(item, message))

                # 6. polling for new work while jobs run
                if keep_polling and exhausted and budget != 0 and (
                    time.monotonic() - last_claim >= settings.poll_interval
                ):
                    exhausted = False

                # 7. shutdown: give back what did not finish in time
                if self._stopping.is_set() and time.monotonic() >= self._stop_deadline:
                    self._settle(writer, inflight, counts, pending)
                    self._release(inflight, done, counts, [*pending, *outcomes], writer)
                    with self._lock:
                        self._loops.remove(done)
                    return counts
        except BaseException:
            with self._lock:
                if done in self._loops:
                    self._loops.remove(done)
            # Jobs still in flight keep running on their threads; their
            # leases lapse and the sweep recovers them if nobody writes them.
            raise

    def _settle(
        self,
        writer: Writer,
        inflight: dict[int, WorkItem],
        counts: Counts,
        pending: list[Finish],
    ) -> None:
        """Take the writer's write in flight, if any: count what it wrote,
        signal and complete batches; keep what failed to write for a retry."""
        taken = writer.take()
        if taken is None:
            return
        outcomes, future = taken
        try:
            written = future.result()
        except Exception:
            log.exception("writing %d job outcomes failed; will retry", len(outcomes))
            pending.extend(outcomes)
            time.sleep(0.2)
            return
        kept = []
        for outcome in outcomes:
            item = inflight.get(outcome.id)
            # a retry may be claimed again before its write is settled here:
            # that new claim stays in flight
            if item is not None and item.row.token == outcome.token:
                del inflight[outcome.id]
            if outcome.id not in written:
                log.warning(
                    "job %s: lease lost before its outcome (%s) was written; discarded",
                    outcome.id, outcome.status,
                )
                continue
            counts[_COUNT_KEYS[outcome.status]] += 1
            kept.append(outcome)
        if kept and _outcome_receivers():
            with self.app.app_context():
                for outcome in kept:
                    _send_outcome(self.app, outcome)
        self._batches_ended(o.batch_id for o in kept if o.batch_id and o.status != RETRYING)

    def _batches_ended(self, batch_ids: t.Iterable[str | None]) -> None:
        ended = {batch_id for batch_id in batch_ids if batch_id}
        if not ended or self.on_batch_ended is None:
            return
        try:
            self.on_batch_ended(ended)
        except Exception:  # the jobs are written; the next ending job retries this
            log.exception("completing batches %s failed", sorted(ended))

    def _heartbeat(self, inflight: dict[int, WorkItem]) -> None:
        held = [(item.row.id, item.row.token) for item in inflight.values()]
        if not held:
            return
        now = self.clock()
        try:
            kept = self.store.renew(held, now + timedelta(seconds=self.settings.lease_seconds))
        except Exception:
            log.exception("renewing %d leases failed; will retry", len(held))
            return
        for job_id, _token in held:
            if job_id not in kept:
                log.warning("job %s: lease lost (another worker may run it)", job_id)

    def _release(
        self,
        inflight: dict[int, WorkItem],
        done: queue.SimpleQueue[t.Any],
        counts: Counts,
        pending: list[Finish],
        writer: Writer,
    ) -> None:
        finished = [got[1] for got in _drain(done) if got is not _WAKE]
        if finished or pending:
            writer.start([*pending, *finished], self.clock())
            self._settle(writer, inflight, counts, [])
        held = []
        for item in inflight.values():
            with item.lock:
                if item.state in (_QUEUED, _RUNNING):
                    item.state = _ABANDONED
                    held.append((item.row.id, item.row.token))
        try:
            released = self.store.release(held, self.clock())
        except Exception:
            log.exception("releasing %d jobs at shutdown failed; the sweep will", len(held))
            return
        if released:
            log.warning("released %d unfinished jobs at shutdown; they are due again", released)
        inflight.clear()

    # -- control ------------------------------------------------------------

    def wake(self) -> None:
        """New work is due now: tell a running loop, or kick the scheduler."""
        with self._lock:
            if self._loops:
                for done in self._loops:
                    done.put(_WAKE)
                return
        if self.on_idle_wake is not None:
            self.on_idle_wake()

    def sweep(self) -> list[tuple[t.Any, ...]]:
        recovered = self.store.sweep(self.clock())
        for job_id, job_type, status, _batch in recovered:
            log.warning("job %s (%s): lease expired; now %s", job_id, job_type, status)
        if recovered and signals.job_rescued.receivers:
            with self.app.app_context():
                for job_id, job_type, status, _batch in recovered:
                    signals.send(signals.job_rescued, self.app, job_id=job_id,
                                 job_type=job_type, status=status)
        self._batches_ended(batch for _i, _t, status, batch in recovered if status == DEAD)
        return recovered

    def begin_shutdown(self, timeout: float) -> None:
        """Stop claiming; loops release what is unfinished after ``timeout``."""
        self._stop_deadline = time.monotonic() + timeout
        self._stopping.set()
        self.wake()

    @property
    def busy(self) -> bool:
        with self._lock:
            return bool(self._loops)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.pool.close(self.settings.concurrency)


_COUNT_KEYS = {SUCCEEDED: "succeeded", RETRYING: "retried", DEAD: "dead"}


def _outcome_receivers() -> bool:
    return bool(
        signals.job_succeeded.receivers or signals.job_retried.receivers
        or signals.job_dead.receivers
    )


def _send_outcome(app: Flask, o: Finish) -> None:
    common = {"job_id": o.id, "job_type": o.job_type, "attempt": o.attempt,
              "duration": o.duration}
    if o.status == SUCCEEDED:
        signals.send(signals.job_succeeded, app, result=o.value, **common)
    elif o.status == RETRYING:
        signals.send(signals.job_retried, app, error=o.error, run_at=o.run_at, **common)
    else:
        signals.send(signals.job_dead, app, error=o.error, **common)


def _drain(done: queue.SimpleQueue[t.Any]) -> list[t.Any]:
    out = []
    while True:
        try:
            out.append(done.get_nowait())
        except queue.Empty:
            return out

