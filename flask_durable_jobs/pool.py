"""The handler threads, and the claimed jobs they run (:class:`WorkItem`).

A handler thread stuck past its job's timeout cannot be killed in Python; it
is abandoned (its result is discarded, and refused by the database anyway)
and a fresh thread takes its place, with the rest of its chunk.
"""

from __future__ import annotations

import collections
import queue
import threading
import typing as t
import weakref

if t.TYPE_CHECKING:
    from .current import CurrentJob
    from .handlers import HandlerSpec
    from .store import ClaimedRow

#: A work item's states: handed to a thread, its handler running, its
#: outcome handed back, or given up (timed out, or released at shutdown).
QUEUED, RUNNING, DONE, ABANDONED = "queued", "running", "done", "abandoned"

_NO_CHUNK: collections.deque[t.Any] = collections.deque(maxlen=0)


class WorkItem:
    """One claimed job on its way through a handler thread."""

    __slots__ = ("chunk", "current", "deadline", "done", "lock", "row", "spec", "started",
                 "state")

    def __init__(self, row: ClaimedRow, spec: HandlerSpec, done: queue.SimpleQueue[t.Any]) -> None:
        self.row = row
        self.spec = spec
        #: where the outcome goes: the queue of the run that claimed the job
        self.done = done
        self.lock = threading.Lock()
        self.state = QUEUED
        self.started: float | None = None
        self.deadline: float | None = None
        #: the items handed to a thread with this one, those not started yet
        #: (set by HandlerPool.submit)
        self.chunk: collections.deque[WorkItem] = _NO_CHUNK
        #: the handler's view of its job, once it asked for it (current_job())
        self.current: CurrentJob | None = None


def timeout_message(item: WorkItem) -> str:
    """The ``last_error`` of an attempt that outlived its handler's timeout."""
    return (f"JobTimeout: attempt {item.row.attempts} timed out after"
            f" {item.spec.timeout:g} s (the handler's timeout)")


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
        # ``run`` is a runner's method, held weakly: the threads end when the
        # runner is collected, so an app that was thrown away leaves none.
        self._run = weakref.WeakMethod(run)
        weakref.finalize(t.cast(t.Any, run).__self__, _stop_threads, self._queue, size)
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
        while (chunk := self._queue.get()) is not None:
            if not self._run_chunk(chunk):
                return

    def _run_chunk(self, chunk: collections.deque[WorkItem]) -> bool:
        run = self._run()  # a strong reference only while the chunk runs
        if run is None:
            return False
        while chunk:
            try:
                item = chunk.popleft()
            except IndexError:  # emptied by the thread that took it over
                break
            if not run(item):
                return False  # abandoned after a timeout; see replace()
        return True

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


def _stop_threads(work: queue.SimpleQueue[t.Any], count: int) -> None:
    for _ in range(count):
        work.put(None)
