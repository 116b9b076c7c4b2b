"""Writing a processing run's outcomes, and the connection a thread keeps."""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import queue
import threading
import typing as t

from . import faults

log = logging.getLogger("flask_durable_jobs")

if t.TYPE_CHECKING:
    import datetime as dt

    from .store import Finish, Store


class Pin:
    """The pooled connection one thread keeps for its statements
    (:meth:`Store.pinned <flask_durable_jobs.store.Store.pinned>`).

    Taken on first use; after a lost connection :meth:`drop` gives it up (the
    store has invalidated it already when the driver saw it broken), and the
    next statement takes a new one.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self._stack: contextlib.ExitStack | None = None

    def hold(self) -> None:
        if self._stack is None:
            stack = contextlib.ExitStack()
            stack.enter_context(self.store.pinned())  # may raise: the database is down
            self._stack = stack

    def drop(self) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            stack.close()


class Writer:
    """Writes one run's outcomes, one batch in flight at a time.

    Where two connections can write at once (PostgreSQL), the write runs on a
    thread with its own connection, started on first use, so that the write
    and the loop's next claim wait on the database together; otherwise
    (SQLite) it runs at once on the loop's connection. Either way the loop
    settles it later (:meth:`take`): a failed write hands its exception to the
    loop, which decides whether and when to write the outcomes again.
    """

    def __init__(self, store: Store, loop_pin: Pin) -> None:
        self._store = store
        self._loop_pin = loop_pin
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
            self._finish(self._loop_pin, future, outcomes, now)
        self.writing, self._future = outcomes, future

    def progress(self, updates: list[tuple[int, str, str]]) -> None:
        """Write handlers' progress, (id, lease token, JSON text) each: after
        the outcomes sent before, on the same thread, nothing waiting for it.
        Progress is advisory: a failed write is logged, and the handler's
        next report (or its outcome, which carries any report not taken
        yet) writes a newer value."""
        if self._store.concurrent_writes:
            self._ensure_thread()
            self._calls.put(updates)
        else:
            self._write_progress(self._loop_pin, updates)

    def _write_progress(self, pin: Pin, updates: list[tuple[int, str, str]]) -> None:
        try:
            pin.hold()
            self._store.write_progress(updates)
        except Exception as exc:
            if faults.lost_connection(exc):
                pin.drop()
            log.warning("durable jobs: writing the progress of %d jobs failed: %s",
                        len(updates), faults.summary(exc))

    def _ensure_thread(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._main, name="durable-jobs-writer", daemon=True
            )
            self._thread.start()

    def take(self) -> tuple[list[Finish], concurrent.futures.Future[set[int]]] | None:
        """The write in flight, to settle; ``None`` if there is none."""
        if self._future is None:
            return None
        taken = self.writing, self._future
        self.writing, self._future = [], None
        return taken

    def _finish(
        self, pin: Pin, future: concurrent.futures.Future[set[int]], outcomes: list[Finish],
        now: dt.datetime,
    ) -> None:
        try:
            pin.hold()
            future.set_result(self._store.finish(outcomes, now))
        except BaseException as exc:  # handed to the loop, which logs it
            if faults.lost_connection(exc):
                pin.drop()
            future.set_exception(exc)

    def _main(self) -> None:
        pin = Pin(self._store)
        try:
            while (call := self._calls.get()) is not None:
                if isinstance(call, list):
                    self._write_progress(pin, call)
                else:
                    self._finish(pin, *call)
        finally:
            pin.drop()

    def close(self) -> None:
        """Stop the thread, once its connection is back in the pool (the loop
        settles every write before it closes the writer)."""
        if self._thread is not None:
            self._calls.put(None)
            self._thread.join(timeout=10)
