"""Prometheus metrics, switched on with ``DURABLE_JOBS_METRICS``.

Needs ``prometheus_client`` (``pip install 'flask-durable-jobs[metrics]'``);
it is imported only when the setting is on. ``True`` registers the metrics in
``prometheus_client.REGISTRY``, so the ``/metrics`` endpoint the app already
serves shows them; a ``CollectorRegistry`` registers them there instead.

=========================================  ==================================
metric                                     what
=========================================  ==================================
``durable_jobs_enqueued_total``            jobs enqueued, by ``job_type``
``durable_jobs_finished_total``            finished attempts, by ``job_type``
                                           and ``outcome`` (``succeeded``,
                                           ``retried``, ``dead``)
``durable_jobs_rescued_total``             orphans recovered by the sweep, by
                                           ``job_type`` and the ``status`` they
                                           got (``retrying`` or ``dead``)
``durable_jobs_run_seconds``               histogram of attempts' run time,
                                           by ``job_type``
``durable_jobs_due_jobs``                  jobs due now (pending or retrying,
                                           ``run_at`` <= now), read at scrape
``durable_jobs_oldest_due_age_seconds``    how long the oldest due job has
                                           waited (0 when none is due)
``durable_jobs_dead_tuples``               dead row versions in the job table
                                           (PostgreSQL), read at scrape
``durable_jobs_snapshot_age_seconds``      how long the oldest snapshot in
                                           the database has pinned vacuum
                                           (PostgreSQL; 0 when none)
=========================================  ==================================

Counters and the histogram count what this process did: they come from the
job signals (:mod:`.signals`), connected with each app as sender. The two
gauges describe the whole database: each scrape runs one aggregate query
over the waiting jobs (the due index), inside an app context. A scrape whose
query fails leaves the gauges out and logs why; it never fails the scrape.

Several apps in one process may switch metrics on. Apps that use the same
registry share one set of metrics (registered once, so no "duplicated
timeseries" error): their counts add up, and the gauges query each distinct
database once. Give each app its own ``CollectorRegistry`` to tell them apart.
"""

from __future__ import annotations

import logging
import threading
import typing as t
import weakref

from . import signals
from .extension import get_state
from .store import vacuum

if t.TYPE_CHECKING:
    from collections.abc import Iterator

    from flask import Flask
    from prometheus_client import Counter, Histogram
    from prometheus_client.metrics_core import Metric
    from prometheus_client.registry import CollectorRegistry

    from .extension import State

log = logging.getLogger("flask_durable_jobs")

#: Upper bounds (seconds) of the run-time histogram's buckets: jobs run from
#: milliseconds to an hour, far beyond the client's request-sized defaults.
RUN_SECONDS_BUCKETS = (
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
    1800.0, 3600.0, float("inf"),
)

_OUTCOMES = (
    (signals.job_succeeded, "succeeded"),
    (signals.job_retried, "retried"),
    (signals.job_dead, "dead"),
)

_lock = threading.Lock()
# One set of metrics per registry; a registry that is garbage collected takes
# its entry along (the value never refers to the registry itself).
_bundles: weakref.WeakKeyDictionary[CollectorRegistry, _Bundle] = weakref.WeakKeyDictionary()


class _Bundle:
    """The metrics registered in one registry, and the apps that feed them."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Histogram

        #: Each app feeding these metrics, with its signal receivers: blinker
        #: holds receivers weakly, so they live exactly as long as the app.
        self.apps: weakref.WeakKeyDictionary[Flask, list[t.Callable[..., None]]] = (
            weakref.WeakKeyDictionary()
        )
        self.enqueued: Counter = Counter(
            "durable_jobs_enqueued", "Jobs enqueued.", ["job_type"], registry=None
        )
        self.finished: Counter = Counter(
            "durable_jobs_finished", "Finished job attempts, by outcome.",
            ["job_type", "outcome"], registry=None,
        )
        self.rescued: Counter = Counter(
            "durable_jobs_rescued", "Running jobs whose lease expired, recovered by the sweep.",
            ["job_type", "status"], registry=None,
        )
        self.run_seconds: Histogram = Histogram(
            "durable_jobs_run_seconds", "Run time of job attempts, in seconds.",
            ["job_type"], buckets=RUN_SECONDS_BUCKETS, registry=None,
        )
        self.backlog = _BacklogCollector(self.apps)
        self.vacuum = _VacuumCollector(self.apps)

    def collectors(self) -> tuple[t.Any, ...]:
        return (self.enqueued, self.finished, self.rescued, self.run_seconds, self.backlog,
                self.vacuum)

    def register(self, registry: CollectorRegistry) -> None:
        """Register every collector, or none of them."""
        done = []
        try:
            for collector in self.collectors():
                registry.register(collector)
                done.append(collector)
        except ValueError as exc:
            for collector in done:
                registry.unregister(collector)
            from .errors import ConfigError

            raise ConfigError(
                f"DURABLE_JOBS_METRICS: the registry already holds a metric of the same"
                f" name, registered by something else ({exc})"
            ) from None

    def connect(self, app: Flask) -> None:
        """Feed this bundle from ``app``'s signals.

        The receivers refer to the metrics only, never to the app, so the app
        (and with it, through :attr:`apps`, its receivers) can be collected.
        """
        enqueued, finished, rescued, run_seconds = (
            self.enqueued, self.finished, self.rescued, self.run_seconds
        )

        def on_enqueued(sender: t.Any, **kwargs: t.Any) -> None:
            job_ids = kwargs.get("job_ids")
            job_type = kwargs.get("job_type") or kwargs["job"].job_type
            enqueued.labels(job_type).inc(1 if job_ids is None else len(job_ids))

        def on_rescued(sender: t.Any, **kwargs: t.Any) -> None:
            rescued.labels(kwargs["job_type"], kwargs["status"]).inc()

        receivers: list[t.Callable[..., None]] = [on_enqueued, on_rescued]
        signals.job_enqueued.connect(on_enqueued, sender=app)
        signals.job_rescued.connect(on_rescued, sender=app)
        for signal, outcome in _OUTCOMES:

            def on_finished(sender: t.Any, outcome: str = outcome, **kwargs: t.Any) -> None:
                job_type = kwargs["job_type"]
                finished.labels(job_type, outcome).inc()
                duration = kwargs.get("duration")
                if duration is not None:
                    run_seconds.labels(job_type).observe(duration)

            signal.connect(on_finished, sender=app)
            receivers.append(on_finished)
        self.apps[app] = receivers


class _BacklogCollector:
    """The due backlog, read from the database at each scrape."""

    def __init__(self, apps: t.Mapping[Flask, t.Any]) -> None:
        self.apps = apps

    def describe(self) -> Iterator[Metric]:
        yield from self._families()

    def collect(self) -> Iterator[Metric]:
        due_count, oldest_age = 0, 0.0
        seen: set[str] = set()
        with _lock:  # init_app may be adding an app in another thread
            apps = list(self.apps)
        for app in apps:
            try:
                state = get_state(app)
            except RuntimeError:  # not (or no longer) initialised on this app
                continue
            try:
                with app.app_context():
                    store = state.store
                    database = str(store.engine.url)
                    if database in seen:  # two apps on one database: count it once
                        continue
                    seen.add(database)
                    count, age = store.due_backlog(state.now())
            except Exception:
                log.warning(
                    "metrics: reading the due backlog of app %r failed; the due-backlog"
                    " gauges are left out of this scrape", app.name, exc_info=True,
                )
                return
            due_count += count
            oldest_age = max(oldest_age, age or 0.0)
        if seen:
            yield from self._families(due_count, oldest_age)

    @staticmethod
    def _families(due_count: int = 0, oldest_age: float = 0.0) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        yield GaugeMetricFamily(
            "durable_jobs_due_jobs",
            "Jobs due now (pending or retrying with run_at <= now), in the whole database.",
            value=due_count,
        )
        yield GaugeMetricFamily(
            "durable_jobs_oldest_due_age_seconds",
            "Seconds the oldest due job has waited; 0 when none is due.",
            value=oldest_age,
        )


class _VacuumCollector:
    """The job table's dead tuples and the oldest snapshot pinning vacuum
    (PostgreSQL; nothing on SQLite), read from the database at each scrape."""

    def __init__(self, apps: t.Mapping[Flask, t.Any]) -> None:
        self.apps = apps

    def describe(self) -> Iterator[Metric]:
        yield from self._families()

    def collect(self) -> Iterator[Metric]:
        dead, oldest = 0, 0.0
        seen: set[str] = set()
        with _lock:
            apps = list(self.apps)
        for app in apps:
            try:
                state = get_state(app)
            except RuntimeError:
                continue
            try:
                with app.app_context():
                    store = state.store
                    database = str(store.engine.url)
                    if database in seen:
                        continue
                    reading = vacuum.read(store)
            except Exception:
                log.warning(
                    "metrics: reading the vacuum statistics of app %r failed; the vacuum"
                    " gauges are left out of this scrape", app.name, exc_info=True,
                )
                return
            if reading is None:  # SQLite
                continue
            seen.add(database)
            dead += reading.dead_tuples
            oldest = max(oldest, reading.oldest_snapshot_age_seconds or 0.0)
        if seen:
            yield from self._families(dead, oldest)

    @staticmethod
    def _families(dead: int = 0, oldest: float = 0.0) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        yield GaugeMetricFamily(
            "durable_jobs_dead_tuples",
            "Dead row versions in the job table, waiting for vacuum (PostgreSQL).",
            value=dead,
        )
        yield GaugeMetricFamily(
            "durable_jobs_snapshot_age_seconds",
            "Seconds the oldest open snapshot in the database has pinned vacuum"
            " (PostgreSQL); 0 when none.",
            value=oldest,
        )


def init_app(state: State) -> None:
    """Register the metrics for ``state.app`` in the registry the setting names."""
    setting = state.settings.metrics
    if setting is True:
        from prometheus_client import REGISTRY

        registry: CollectorRegistry = REGISTRY
    else:
        registry = setting
    with _lock:
        bundle = _bundles.get(registry)
        if bundle is None:
            bundle = _Bundle()
            bundle.register(registry)
            _bundles[registry] = bundle
        if state.app not in bundle.apps:
            bundle.connect(state.app)
