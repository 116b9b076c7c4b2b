"""Helpers for testing code that enqueues and handles jobs.

Typical pytest setup: ``DURABLE_JOBS_SCHEDULER = False`` in the test config,
then ``jobs.drain()`` runs every due job in the test's own process and
returns the counts. :func:`move_time` brings retries and delayed jobs due
without sleeping; ``DURABLE_JOBS_EAGER = True`` runs due jobs at enqueue.

.. code-block:: python

    def test_signup_sends_mail(app, client):
        client.post("/signup", data={"email": "a@b.c"})
        assert jobs.drain()["succeeded"] == 1

    def test_flaky_mail_is_retried(app):
        job = jobs.enqueue("send_email", {"to": "a@b.c"})
        assert jobs.drain()["retried"] == 1
        move_time(minutes=5)
        assert jobs.drain()["succeeded"] == 1
"""

from __future__ import annotations

import datetime as dt

from flask import Flask

from .extension import get_state


def move_time(
    delta: dt.timedelta | None = None, *, app: Flask | None = None, **units: float
) -> dt.datetime:
    """Move the library's clock forward (``move_time(minutes=5)`` or a timedelta).

    Moves add up. Affects only this process's view of the app's job clock:
    when jobs become due, backoff, leases, prune cut-offs. Returns the new now.
    """
    step = (delta or dt.timedelta()) + dt.timedelta(**units)
    state = get_state(app)
    state.set_clock_offset(state.clock_offset + step)
    return state.now()


def reset_time(app: Flask | None = None) -> None:
    """Return the app's job clock to real time."""
    get_state(app).set_clock_offset(dt.timedelta())
