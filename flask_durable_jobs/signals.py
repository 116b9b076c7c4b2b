"""Signals sent through the job lifecycle, with blinker (as Flask's own are).

Every signal's sender is the Flask app. Connect with
``job_succeeded.connect(receiver, app)`` or for every app with
``job_succeeded.connect(receiver)``. A receiver that raises is logged and
skipped: it never changes the job's outcome nor stops other receivers.

=================  ===========================================================
signal             keyword arguments
=================  ===========================================================
``job_enqueued``   ``job_type``, ``job_ids`` and ``job`` (the
                   :class:`~flask_durable_jobs.Job`; ``None`` for bulk,
                   batch, periodic and batch-completion enqueues), after
                   commit; a batch sends one per job type
``job_started``    ``job_id``, ``job_type``, ``attempt``, ``payload``
``job_succeeded``  ``job_id``, ``job_type``, ``attempt``, ``result``, ``duration``
``job_retried``    ``job_id``, ``job_type``, ``attempt``, ``error``, ``run_at``,
                   ``duration``
``job_dead``       ``job_id``, ``job_type``, ``attempt``, ``error``, ``duration``,
                   ``job`` (the :class:`~flask_durable_jobs.Job` as written,
                   payload included; ``None`` if reading it failed)
``job_rescued``    ``job_id``, ``job_type``, ``status`` (an orphan whose lease
                   expired, now ``retrying`` or ``dead``; ``cancelled`` when a
                   cancel was requested)
=================  ===========================================================

``duration`` is the attempt's run time in seconds (``None`` when unknown).
An attempt that ends ``cancelled`` (a cancel was requested, or the handler
raised :class:`~flask_durable_jobs.Cancelled`) sends no outcome signal.
"""

from __future__ import annotations

import logging
import typing as t

from blinker import Namespace, Signal

log = logging.getLogger("flask_durable_jobs")

_signals = Namespace()

job_enqueued = _signals.signal("durable-jobs-enqueued")
job_started = _signals.signal("durable-jobs-started")
job_succeeded = _signals.signal("durable-jobs-succeeded")
job_retried = _signals.signal("durable-jobs-retried")
job_dead = _signals.signal("durable-jobs-dead")
job_rescued = _signals.signal("durable-jobs-rescued")


def send(signal: Signal, sender: t.Any, **kwargs: t.Any) -> None:
    """Call every receiver; one that raises is logged and the rest still run."""
    if not signal.receivers:
        return
    for receiver in signal.receivers_for(sender):
        try:
            receiver(sender, **kwargs)
        except Exception:
            log.exception(
                "receiver %r of %s raised; ignored", receiver, getattr(signal, "name", signal)
            )
