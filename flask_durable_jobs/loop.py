"""One processing run: what it holds, and the steps that move it on.

A :class:`Run` claims due jobs, hands them to the handler threads, writes
their outcomes and renews their leases until it holds nothing more. Each
pass of :meth:`Run.loop` takes these steps in order; each reads and changes
the run's state only:

* claim, while there is room, budget and work;
* write: settle the write in flight and start the next;
* heartbeat: renew the leases of every job held;
* wait for outcomes, a deadline, a heartbeat or a wake-up;
* fail attempts past their timeout;
* poll for newly due jobs while others run (the scheduler's tick);
* at shutdown, write what finished and give back the rest.

The run holds a job from its claim until its outcome is written: while the
database does not answer, finished outcomes wait in :attr:`Run.unwritten`
and their leases keep being renewed; every statement waits for the run's
:class:`~flask_durable_jobs.faults.Outage` to allow the next try.
"""

from __future__ import annotations

import logging
import queue
import time
import typing as t

from . import faults
from .models import DEAD, RETRYING, SUCCEEDED
from .pool import ABANDONED, QUEUED, RUNNING, WorkItem
from .writer import Pin, Writer

if t.TYPE_CHECKING:
    from .store import Finish
    from .worker import Runner

log = logging.getLogger("flask_durable_jobs")

#: Seconds a run stopping for shutdown keeps trying to write what finished
#: and give back the rest, when the database does not answer.
SHUTDOWN_GRACE = 2.0

#: Put on a run's queue to say new work may be due.
WAKE = object()

Counts = dict[str, int]

_COUNT_KEYS = {SUCCEEDED: "succeeded", RETRYING: "retried", DEAD: "dead"}


def empty_counts() -> Counts:
    return {"claimed": 0, "succeeded": 0, "retried": 0, "dead": 0}


class Run:
    """One call of :meth:`Runner.run <flask_durable_jobs.worker.Runner.run>`."""

    def __init__(self, runner: Runner, limit: int | None, keep_polling: bool) -> None:
        self.runner = runner
        self.store = runner.store
        self.keep_polling = keep_polling
        self.poll_interval = runner.settings.poll_interval
        self.counts = empty_counts()
        #: claims left (``None``: no limit)
        self.budget = limit
        #: where handler threads put outcomes, and :meth:`Runner.wake` wake-ups
        self.done: queue.SimpleQueue[t.Any] = queue.SimpleQueue()
        #: every job held, by id: from its claim until its outcome is written
        self.inflight: dict[int, WorkItem] = {}
        #: outcomes collected and not sent to the database yet
        self.unwritten: list[Finish] = []
        #: ids of outcomes whose write failed with the connection: the
        #: database may have taken it before the connection went
        self.maybe_written: set[int] = set()
        #: nothing more to claim until a wake-up or the next poll
        self.exhausted = False
        self.last_claim = 0.0
        #: a claim refused for good; raised once the jobs held are written
        self.refusal: BaseException | None = None
        self.heartbeat_every = runner.settings.lease_seconds / 3
        self.next_heartbeat = time.monotonic() + self.heartbeat_every
        self.pin = Pin(self.store)
        self.writer = Writer(self.store, self.pin)
        self.outage = faults.Outage(runner.messages)

    def loop(self) -> Counts:
        while True:
            self.claim_step()
            if self.write_step():
                continue  # every job held is being written: claim beside the write
            if not self.inflight:
                if self.runner.retire(self.done):
                    if self.refusal is not None:
                        raise self.refusal
                    return self.counts
                self.exhausted = self.budget == 0
                _drain(self.done)  # wake-ups only: nothing is in flight
                continue
            self.heartbeat_step()
            self.wait_step()
            self.timeout_step()
            self.poll_step()
            if self.runner.stopping and time.monotonic() >= self.runner.stop_deadline:
                self.release_step()
                return self.counts

    def close(self) -> None:
        """Stop the writer and give the connection back (on the run's thread)."""
        self.writer.close()
        self.pin.drop()

    # -- the steps ------------------------------------------------------------

    def claim_step(self) -> None:
        """Claim while there is room, budget and work; a job whose outcome
        only waits to be written leaves its room."""
        runner = self.runner
        running = len(self.inflight) - len(self.unwritten) - len(self.writer.writing)
        size = runner.claim_size()
        room = size - running
        if self.budget is not None:
            room = min(room, self.budget)
        if (self.exhausted or room < runner.least_claim(size, running) or runner.stopping
                or self.refusal is not None or not self.outage.ready(time.monotonic())):
            return
        try:
            if runner.has_lost_claims:
                runner.release_lost_claims()
            self.pin.hold()
            items = runner.claim(room, self.done)
        except Exception as exc:
            if not self.inflight:
                raise  # nothing held: the caller (or the next tick) tries again
            if not self.failed("claiming jobs", exc):
                self.refusal = exc
                log.error("durable jobs: claiming jobs failed; the %d jobs held are"
                          " finished first", len(self.inflight), exc_info=exc)
            return
        self.outage.answered()
        self.last_claim = time.monotonic()
        self.counts["claimed"] += len(items)
        if self.budget is not None:
            self.budget -= len(items)
        if len(items) < room or self.budget == 0:
            self.exhausted = True
        for item in items:
            self.inflight[item.row.id] = item
        runner.pool.submit(items, runner.chunk(len(items)))

    def write_step(self) -> bool:
        """Settle the write in flight once more outcomes wait (or nothing else
        runs), and send those waiting; ``True`` when every job held is now
        being written. The handler threads run what was just claimed
        meanwhile, and on PostgreSQL the write runs beside the next claim."""
        writer = self.writer
        if writer.writing and (self.unwritten or len(writer.writing) == len(self.inflight)):
            self.settle()
        if self.unwritten and not writer.writing and self.outage.ready(time.monotonic()):
            outcomes, self.unwritten = self.unwritten, []
            writer.start(outcomes, self.runner.clock())
            return len(writer.writing) == len(self.inflight)
        return False

    def heartbeat_step(self) -> None:
        """Renew the lease of every job held, those whose outcome waits too."""
        if time.monotonic() < self.next_heartbeat:
            return
        self.settle()  # the write in flight clears leases: settle it first
        held = [(item.row.id, item.row.token) for item in self.inflight.values()]
        if not held or not self.outage.ready(time.monotonic()):
            self.next_heartbeat = max(self.outage.retry_at, time.monotonic() + 0.01)
            return
        try:
            self.pin.hold()
            kept = self.runner.renew(held)
        except Exception as exc:
            if self.failed("renewing leases", exc):
                self.next_heartbeat = self.outage.retry_at
            else:
                self.runner.messages.log(("refused", "renew"), logging.ERROR,
                                         "durable jobs: renewing %d leases failed", len(held),
                                         exc_info=exc)
                self.next_heartbeat = time.monotonic() + self.heartbeat_every
            return
        self.outage.answered()
        self.next_heartbeat = time.monotonic() + self.heartbeat_every
        if self.keep_polling:  # the scheduler's run renews the process record too
            self.runner.beat()
        for job_id, _token in held:
            if job_id not in kept:
                log.warning("job %s: lease lost (another worker may run it)", job_id)

    def wait_step(self) -> None:
        """Wait for outcomes, a deadline, a heartbeat, a retry or a wake-up."""
        now = time.monotonic()
        waits = [self.next_heartbeat - now, 1.0]
        waits.extend(
            item.deadline - now for item in self.inflight.values()
            if item.deadline is not None and item.state == RUNNING
        )
        if self.keep_polling and self.exhausted and self.budget != 0:
            waits.append(self.last_claim + self.poll_interval - now)
        if self.runner.stopping:
            waits.append(self.runner.stop_deadline - now)
        if self.outage.active:
            waits.append(self.outage.retry_at - now)
        try:
            got = self.done.get(timeout=max(0.0, min(waits)))
            while True:
                if got is WAKE:
                    self.exhausted = self.budget == 0
                else:
                    self.unwritten.append(got[1])
                got = self.done.get_nowait()
        except queue.Empty:
            pass

    def timeout_step(self) -> None:
        """Attempts past their timeout fail now; their threads are replaced."""
        now = time.monotonic()
        for item in self.inflight.values():
            if item.deadline is not None and now >= item.deadline:
                with item.lock:
                    if item.state != RUNNING:
                        continue
                    item.state = ABANDONED
                self.runner.pool.replace(item)
                message = (
                    f"JobTimeout: attempt {item.row.attempts} timed out after"
                    f" {item.spec.timeout:g} s (the handler's timeout)"
                )
                log.warning("job %s (%s) timed out", item.row.id, item.row.job_type)
                self.unwritten.append(self.runner.failure(item, message))

    def poll_step(self) -> None:
        """With ``keep_polling``, look for newly due jobs every poll interval."""
        if self.keep_polling and self.exhausted and self.budget != 0 and (
            time.monotonic() - self.last_claim >= self.poll_interval
        ):
            self.exhausted = False

    def release_step(self) -> None:
        """Shutdown: write what finished, give back what did not start or end."""
        self.settle()
        self.unwritten.extend(got[1] for got in _drain(self.done) if got is not WAKE)
        held = []
        for item in self.inflight.values():
            with item.lock:
                if item.state in (QUEUED, RUNNING):
                    item.state = ABANDONED
                    held.append((item.row.id, item.row.token))
        deadline = time.monotonic() + SHUTDOWN_GRACE
        self._write_before(deadline)
        self._release_before(held, deadline)
        self.inflight.clear()

    # -- writing outcomes -------------------------------------------------------

    def settle(self) -> None:
        """Take the write in flight, if any: count what it wrote, or keep
        what it could not write for the next try."""
        taken = self.writer.take()
        if taken is None:
            return
        outcomes, future = taken
        try:
            written = future.result()
        except Exception as exc:
            self._write_failed(outcomes, exc)
            return
        self.outage.answered()
        self._wrote(outcomes, written)

    def _write_failed(self, outcomes: list[Finish], exc: BaseException) -> None:
        if self.failed("writing job outcomes", exc):
            self.unwritten[:0] = outcomes  # first in the next write
            if faults.lost_connection(exc):
                self.maybe_written.update(o.id for o in outcomes)
        elif len(outcomes) > 1:
            # a refusal: one outcome the database cannot take must not hold
            # back the others
            self.runner.messages.log(
                ("refused", "write"), logging.ERROR,
                "durable jobs: writing %d job outcomes failed; will retry them one at a time",
                len(outcomes), exc_info=exc,
            )
            self._write_alone(outcomes)
        else:
            self._drop(outcomes[0], exc)

    def _write_alone(self, outcomes: list[Finish]) -> None:
        for index, outcome in enumerate(outcomes):
            try:
                self.pin.hold()
                written = self.store.finish([outcome], self.runner.clock())
            except Exception as exc:
                if self.failed("writing job outcomes", exc):
                    self.unwritten[:0] = outcomes[index:]
                    return
                self._drop(outcome, exc)
                continue
            self._wrote([outcome], written)

    def _drop(self, outcome: Finish, exc: BaseException) -> None:
        log.error(
            "job %s (%s): its outcome (%s) cannot be written; the job stays running until"
            " its lease expires, then the sweep takes it", outcome.id, outcome.job_type,
            outcome.status, exc_info=exc,
        )
        self._let_go(outcome)

    def _let_go(self, outcome: Finish) -> None:
        item = self.inflight.get(outcome.id)
        # a retry may be claimed again before its write is settled here:
        # that new claim stays held
        if item is not None and item.row.token == outcome.token:
            del self.inflight[outcome.id]

    def _wrote(self, outcomes: list[Finish], written: set[int]) -> None:
        kept = []
        unsure = []
        for outcome in outcomes:
            self._let_go(outcome)
            if outcome.id in written:
                self.counts[_COUNT_KEYS[outcome.status]] += 1
                kept.append(outcome)
            elif outcome.id in self.maybe_written:
                log.info("job %s: its outcome (%s) was written before the connection was"
                         " lost, or its lease was lost meanwhile", outcome.id, outcome.status)
                unsure.append(outcome)
            else:
                log.warning("job %s: lease lost before its outcome (%s) was written;"
                            " discarded", outcome.id, outcome.status)
        if self.maybe_written:
            self.maybe_written.difference_update(o.id for o in outcomes)
        self.runner.written(kept)
        if kept and self.runner.frees_slots(kept):  # a limited type's slot is free
            self.exhausted = self.budget == 0
        # completing a batch checks the database: harmless if these did not end it
        self.runner.batches_ended(o.batch_id for o in unsure if o.status != RETRYING)

    # -- faults -----------------------------------------------------------------

    def unwritten_count(self) -> int:
        """Outcomes kept because the database did not answer (read from
        other threads: each length is read once, a moment's view)."""
        if not self.outage.active:
            return 0
        return len(self.unwritten) + len(self.writer.writing)

    def failed(self, what: str, exc: BaseException) -> bool:
        """A statement of this run failed: ``True`` when it is worth trying
        again once :attr:`outage` allows (the run keeps what it holds)."""
        if faults.lost_connection(exc):
            self.pin.drop()
        running = len(self.inflight) - len(self.unwritten) - len(self.writer.writing)
        holding = (f"{len(self.inflight) - running} outcomes to write and {running} jobs"
                   " running")
        return self.outage.failed(what, exc, holding)

    def _write_before(self, deadline: float) -> None:
        while self.unwritten:
            outcomes, self.unwritten = self.unwritten, []
            self.writer.start(outcomes, self.runner.clock())
            self.settle()
            if not self.unwritten:
                return
            if self.outage.retry_at >= deadline:
                log.warning("durable jobs: %d finished jobs could not be written at shutdown;"
                            " the sweep retries them once their lease expires",
                            len(self.unwritten))
                return
            time.sleep(max(0.0, self.outage.retry_at - time.monotonic()))

    def _release_before(self, held: list[tuple[int, str]], deadline: float) -> None:
        while held:
            try:
                self.pin.hold()
                released = self.store.release(held, self.runner.clock())
            except Exception as exc:
                if self.failed("releasing jobs at shutdown", exc) and (
                    self.outage.retry_at < deadline
                ):
                    time.sleep(max(0.0, self.outage.retry_at - time.monotonic()))
                    continue
                log.warning("durable jobs: releasing %d jobs at shutdown failed (%s); the"
                            " sweep retries them once their lease expires", len(held),
                            faults.summary(exc))
                return
            if released:
                log.warning("released %d unfinished jobs at shutdown; they are due again",
                            released)
            return


def _drain(done: queue.SimpleQueue[t.Any]) -> list[t.Any]:
    out = []
    while True:
        try:
            out.append(done.get_nowait())
        except queue.Empty:
            return out
