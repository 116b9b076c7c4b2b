"""Pausing and resuming queues, and what each queue holds.

A queue's state is a row of ``durable_jobs_queues``, read by every claim
statement (the plain claim and the limited one), so a pause is honoured by
every process and host at its next claim; jobs already running finish.
"""

from __future__ import annotations

import typing as t

from .enqueue import check_text
from .handlers import check_queue
from .models import STATUSES
from .store.queues import queue_counts, queue_states, set_queue_state

if t.TYPE_CHECKING:
    from .extension import State


def check_name(name: t.Any) -> str:
    """A queue name as jobs are stored with, or ``ValueError`` naming it."""
    return check_text(check_queue(name), "queue")


def pause(state: State, name: str) -> dict[str, t.Any]:
    """Stop every process from claiming ``name``'s jobs; returns the queue."""
    return _set(state, name, True)


def resume(state: State, name: str) -> dict[str, t.Any]:
    """Let every process claim ``name``'s jobs again; returns the queue."""
    queue = _set(state, name, False)
    if state.runner_started:
        state.runner.wake()
    return queue


def _set(state: State, name: str, paused: bool) -> dict[str, t.Any]:
    name = check_name(name)
    set_queue_state(state.store, name, paused, state.now())
    return describe(state, name)


def describe(state: State, name: str) -> dict[str, t.Any]:
    """One queue as :func:`queues` lists it."""
    for queue in queues(state):
        if queue["name"] == name:
            return queue
    return {"name": name, "paused": False, "counts": dict.fromkeys(STATUSES, 0)}


def queues(state: State) -> list[dict[str, t.Any]]:
    """Every queue that has jobs or a stored state, by name:
    ``{"name", "paused", "counts": {status: n}}``."""
    counts = queue_counts(state.store, state.now())
    states = queue_states(state.store)
    return [
        {"name": name, "paused": states.get(name, False),
         "counts": counts.get(name, dict.fromkeys(STATUSES, 0))}
        for name in sorted(counts.keys() | states.keys())
    ]
