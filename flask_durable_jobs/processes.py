"""The process registry: every process that runs the processor, as the
database knows it.

A process's runner makes its record at its first scheduled run and renews
it with its heartbeat (at most every third of a lease); records not seen for
:data:`FORGET_AFTER_LEASES` leases are removed by whoever beats next. A
process stopping cleanly removes its own.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import threading
import time
import typing as t

from .store.control import beat_process, forget_process, list_processes

if t.TYPE_CHECKING:
    from .config import Settings
    from .extension import State
    from .store import Store

#: A record not renewed for this many leases belongs to a process gone.
FORGET_AFTER_LEASES = 3


class Registration:
    """One process's record, renewed by its heartbeat (owned by its runner)."""

    def __init__(self, store: Store, settings: Settings, process_id: str) -> None:
        from . import __version__

        self.store = store
        self.settings = settings
        self.id = process_id
        self.version = __version__
        self.started_at: dt.datetime | None = None
        self.every = settings.lease_seconds / 3
        self.next_beat = 0.0
        self._lock = threading.Lock()
        self._closed = False

    def due(self) -> bool:
        """Whether the record should be renewed now."""
        return not self._closed and time.monotonic() >= self.next_beat

    def beat(self, now: dt.datetime, inflight: int, *, force: bool = False) -> bool:
        """Renew the record if a beat is due; ``True`` when this call wrote it."""
        if not force and time.monotonic() < self.next_beat:
            return False
        with self._lock:
            if self._closed or (not force and time.monotonic() < self.next_beat):
                return False
            self.next_beat = time.monotonic() + self.every
            if self.started_at is None:
                self.started_at = now
        queues = self.settings.queues
        beat_process(self.store, {
            "id": self.id, "host": socket.gethostname(), "pid": os.getpid(),
            "started_at": self.started_at, "now": now,
            "queues": None if queues is None else json.dumps(list(queues)),
            "concurrency": self.settings.concurrency, "version": self.version,
            "inflight": inflight,
        }, now - dt.timedelta(seconds=FORGET_AFTER_LEASES * self.settings.lease_seconds))
        return True

    def forget(self) -> None:
        """Remove the record (a clean stop), if it was ever made; no beat after."""
        with self._lock:
            self._closed = True
        if self.started_at is not None:
            forget_process(self.store, self.id)
            self.started_at = None


def processes(state: State) -> list[dict[str, t.Any]]:
    """The live process records, oldest first; datetimes aware UTC."""
    return list_processes(state.store)


def recent(state: State) -> tuple[list[dict[str, t.Any]], dt.datetime]:
    """The records and the time they are judged at (for the health report)."""
    return list_processes(state.store), state.now()
