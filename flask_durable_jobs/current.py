"""The job a handler is running: :func:`current_job`, its progress and cancel requests.

A handler thread (or the task of an ``async def`` handler) sees its job
through a context variable, so nothing has to be passed down to the code
the handler calls. What the handler reports goes to the database without
ever making it wait:

* ``progress()`` only keeps the newest value in memory; the processing run
  writes the values of its jobs in one statement at most once a second
  (:data:`PROGRESS_INTERVAL`), and the last value always goes with the
  job's outcome, in the same statement.
* ``cancel_requested`` asks the database only when read, at most once a
  second per job (:data:`CANCEL_CHECK_INTERVAL`); a job that never asks
  costs nothing.
"""

from __future__ import annotations

import collections
import contextvars
import datetime as dt
import json
import logging
import math
import threading
import time
import typing as t

from . import payload as payload_json
from .errors import Cancelled
from .models import utcnow

if t.TYPE_CHECKING:
    from .pool import WorkItem
    from .store import ClaimedRow

__all__ = ["CANCEL_CHECK_INTERVAL", "PROGRESS_INTERVAL", "CurrentJob", "current_job"]

log = logging.getLogger("flask_durable_jobs")

#: Seconds between two writes of one job's progress.
PROGRESS_INTERVAL = 1.0
#: Seconds between two reads of one job's cancel request.
CANCEL_CHECK_INTERVAL = 1.0
#: Longest progress ``message``, in characters.
MAX_MESSAGE_CHARS = 2000
#: Largest progress ``data``, in bytes of its JSON text.
MAX_DATA_BYTES = 64 * 1024

#: Reads (idempotency_key, owner, cancel requested) of a job by id; ``None``
#: when the job is gone.
Lookup = t.Callable[[int], "tuple[str | None, str | None, bool] | None"]

#: What a handler's context knows of its job: (work item, payload, lookup,
#: board); :func:`current_job` builds the :class:`CurrentJob` from it on first use.
Scope = tuple["WorkItem", dict[str, t.Any], Lookup, "Board"]

#: Strict, compact JSON; one encoder for every call (``json.dumps`` with
#: options builds a new one each time).
_encode = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode

_current: contextvars.ContextVar[Scope | None] = contextvars.ContextVar(
    "durable_jobs_current_job", default=None
)


def current_job() -> CurrentJob | None:
    """The job the calling handler runs, or ``None`` outside a handler."""
    found = _current.get()
    if found is None:
        return None
    item, payload, lookup, board = found
    job = item.current
    if job is None:
        with item.lock:
            job = item.current
            if job is None:
                job = item.current = CurrentJob(item.row, payload, lookup=lookup, board=board)
    return job


class Board:
    """The jobs whose progress waits to be written, shared by a runner's
    handler threads (who add) and processing runs (who take)."""

    def __init__(self) -> None:
        self._waiting: collections.deque[CurrentJob] = collections.deque()

    def __bool__(self) -> bool:
        return bool(self._waiting)

    def add(self, job: CurrentJob) -> None:
        self._waiting.append(job)  # deque.append is atomic

    def take(self) -> list[CurrentJob]:
        taken = []
        while True:
            try:
                taken.append(self._waiting.popleft())
            except IndexError:
                return taken


class CurrentJob:
    """What a handler knows of, and tells about, the job it runs."""

    def __init__(self, row: ClaimedRow, payload: dict[str, t.Any], *, lookup: Lookup,
                 board: Board) -> None:
        #: The job's id.
        self.id = row.id
        #: The handler's name.
        self.job_type = row.job_type
        #: This attempt's number, from 1.
        self.attempt = row.attempts
        self.max_attempts = row.max_attempts
        #: The job's payload, as the handler received it.
        self.payload = payload
        #: The claim's lease token: progress writes are fenced by it.
        self.token = row.token
        self._lookup = lookup
        self._board = board
        self._lock = threading.Lock()
        #: (fraction, message, data as JSON text, when) not written yet
        self._pending: tuple[float, str | None, str, dt.datetime] | None = None
        self._details: tuple[str | None, str | None] | None = None
        self._cancelled = False
        self._checked_at: float | None = None

    def __repr__(self) -> str:
        return f"<CurrentJob {self.id} {self.job_type!r} attempt {self.attempt}>"

    # -- reading the row (only when asked) ------------------------------------------

    def _read(self) -> None:
        try:
            found = self._lookup(self.id)
        except Exception as exc:  # advisory: the handler goes on with what it knew
            log.warning("job %s: reading its cancel request failed: %s", self.id,
                        type(exc).__name__)
            return
        if found is None:
            return
        key, owner, cancelled = found
        self._details = (key, owner)
        self._cancelled = self._cancelled or cancelled

    def _details_read(self) -> tuple[str | None, str | None]:
        if self._details is None:
            self._read()
        return self._details or (None, None)

    @property
    def idempotency_key(self) -> str | None:
        """The key the job was enqueued with, or ``None``."""
        return self._details_read()[0]

    @property
    def owner(self) -> str | None:
        """The owner the job was enqueued for, or ``None``."""
        return self._details_read()[1]

    @property
    def cancel_requested(self) -> bool:
        """Whether ``jobs.cancel()`` asked this job to stop; read from the
        database at most once a second."""
        if not self._cancelled:
            now = time.monotonic()
            if self._checked_at is None or now - self._checked_at >= CANCEL_CHECK_INTERVAL:
                self._checked_at = now
                self._read()
        return self._cancelled

    def check_cancelled(self) -> None:
        """Raise :class:`~flask_durable_jobs.Cancelled` once a cancel was requested."""
        if self.cancel_requested:
            raise Cancelled(f"job {self.id} was cancelled while running")

    # -- progress -------------------------------------------------------------------

    def progress(self, fraction: float, message: str | None = None, data: t.Any = None) -> None:
        """Report how far the job is: ``fraction`` from 0 to 1, an optional
        ``message`` and JSON ``data``. Returns at once; the newest value is
        written within about a second, and always with the outcome."""
        if (isinstance(fraction, bool) or not isinstance(fraction, (int, float))
                or not math.isfinite(fraction) or not 0 <= fraction <= 1):
            raise ValueError(f"fraction must be a number from 0 to 1, got {fraction!r}")
        if message is not None:
            if not isinstance(message, str):
                raise ValueError(
                    f"message must be a string or None, got {type(message).__name__}"
                )
            if len(message) > MAX_MESSAGE_CHARS or "\x00" in message:
                raise ValueError(f"message must be at most {MAX_MESSAGE_CHARS} characters"
                                 " without NUL")
        if data is None:
            text = "null"
        else:
            try:
                payload_json.check(data, root="data")
                text = _encode(data)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"data must be JSON: {exc}") from None
        if len(text) > MAX_DATA_BYTES:
            raise ValueError(f"data is {len(text)} characters of JSON, over the limit of"
                             f" {MAX_DATA_BYTES}")
        with self._lock:
            first = self._pending is None
            self._pending = (float(fraction), message, text, utcnow())
        if first:
            self._board.add(self)

    def take_progress(self, offset: dt.timedelta = dt.timedelta()) -> str | None:
        """The progress not written yet, as the JSON text stored, or ``None``;
        ``offset`` moves its time onto the database's clock."""
        with self._lock:
            pending, self._pending = self._pending, None
        if pending is None:
            return None
        fraction, message, data, at = pending
        head = _encode({"fraction": fraction, "message": message,
                        "at": (at + offset).isoformat()})
        return head[:-1] + ',"data":' + data + "}"


class Running:
    """``with Running(item, payload, lookup, board):`` makes ``item`` the job
    of this context; cheap: nothing is built until the handler calls
    :func:`current_job`."""

    __slots__ = ("scope", "token")

    def __init__(self, item: WorkItem, payload: dict[str, t.Any], lookup: Lookup,
                 board: Board) -> None:
        self.scope: Scope = (item, payload, lookup, board)
        self.token: contextvars.Token[Scope | None] | None = None

    def __enter__(self) -> None:
        self.token = _current.set(self.scope)

    def __exit__(self, *exc_info: object) -> None:
        if self.token is not None:
            _current.reset(self.token)
