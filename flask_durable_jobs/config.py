"""Configuration keys, their defaults, and their validation.

Every ``DURABLE_JOBS_*`` key is read and checked once, in ``init_app``; the
result is an immutable :class:`Settings` kept in the app's extension state.
"""

from __future__ import annotations

import dataclasses
import typing as t

import sqlalchemy as sa

from .errors import ConfigError

#: Defaults, with units. Keys are the config names without ``DURABLE_JOBS_``.
DEFAULTS: dict[str, t.Any] = {
    "SCHEDULER": True,  # start the in-process scheduler (unset under TESTING: False)
    "POLL_INTERVAL": 1.0,  # seconds between due-job ticks
    "SWEEP_INTERVAL": 30.0,  # seconds between orphan sweeps
    "LEASE_SECONDS": 60.0,  # lease length, renewed while a handler runs
    "CONCURRENCY": 4,  # handler threads per process
    "BATCH_SIZE": 500,  # most jobs claimed per statement
    "QUEUES": None,  # queues this process works; None = all
    "SHUTDOWN_TIMEOUT": 10.0,  # seconds running jobs get at exit
    "BACKOFF_BASE": 30.0,  # seconds before the first retry
    "BACKOFF_FACTOR": 4.0,  # growth per failed attempt
    "BACKOFF_MAX": 3600.0,  # cap, seconds
    "BACKOFF_JITTER": 0.1,  # +/- fraction added to the default policy
    "RETENTION_DAYS": 30.0,  # prune succeeded and cancelled jobs older than this
    "DEAD_RETENTION_DAYS": 90.0,  # prune dead jobs older than this
    "URL_PREFIX": "/admin/jobs",  # where the admin blueprint lives
    "ADMIN_TOKEN": None,  # bearer token for the admin API
    "ADMIN_READ_TOKEN": None,  # bearer token for the admin API's reads (GET) only
    "DASHBOARD": True,  # serve the HTML dashboard at {URL_PREFIX}/dashboard/
    "EAGER": False,  # run due jobs at enqueue, in the enqueuing thread (for tests)
    "SECRET_KEY": None,  # Fernet key(s) for job secrets; the first encrypts, all decrypt
    "CALLBACK_SECRET": None,  # HMAC-SHA256 key that signs completion callbacks
    "CALLBACK_HOSTS": None,  # hosts callbacks may target; None: public addresses only
    "CALLBACK_TIMEOUT": (3.0, 10.0),  # seconds: connect, read
    "METRICS": False,  # True (prometheus_client's REGISTRY) or a CollectorRegistry
    "MAX_PAYLOAD_BYTES": 1024 * 1024,  # largest payload accepted at enqueue (its JSON text)
    # health: unhealthy past any of these
    "HEALTH_MAX_EXPIRED_LEASES": 0,  # leases expired longer than the grace below
    "HEALTH_EXPIRED_LEASE_GRACE": None,  # seconds; None: two sweep intervals
    "HEALTH_MAX_UNWRITTEN": 0,  # outcomes kept because the database did not answer
    "HEALTH_DATABASE_TIMEOUT": 2.0,  # seconds the database has to answer a probe
    # health: a warning (still healthy) past this
    "HEALTH_SNAPSHOT_WARNING": 300.0,  # seconds a snapshot may pin vacuum (PostgreSQL)
}

PREFIX = "DURABLE_JOBS_"


@dataclasses.dataclass(frozen=True)
class Settings:
    scheduler: bool
    poll_interval: float
    sweep_interval: float
    lease_seconds: float
    concurrency: int
    batch_size: int
    queues: tuple[str, ...] | None
    shutdown_timeout: float
    backoff_base: float
    backoff_factor: float
    backoff_max: float
    backoff_jitter: float
    retention_days: float
    dead_retention_days: float
    url_prefix: str
    admin_token: str | None
    admin_read_token: str | None = None
    eager: bool = False
    secret_keys: tuple[str, ...] = ()
    callback_secret: str | None = None
    callback_hosts: tuple[str, ...] | None = None
    callback_timeout: tuple[float, float] = (3.0, 10.0)
    metrics: t.Any = False  # False, True or a prometheus_client CollectorRegistry
    max_payload_bytes: int = DEFAULTS["MAX_PAYLOAD_BYTES"]
    health_max_expired_leases: int = 0
    health_expired_lease_grace: float = 60.0
    health_max_unwritten: int = 0
    health_database_timeout: float = 2.0
    health_snapshot_warning: float = 300.0
    dashboard: bool = True


def _number(key: str, value: t.Any, *, minimum: float, strict: bool) -> float:
    # bool is an int subclass; True as an interval is a mistake, not 1 second.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{PREFIX}{key} must be a number, got {type(value).__name__} {value!r}")
    if value != value or value in (float("inf"), float("-inf")):
        raise ConfigError(f"{PREFIX}{key} must be a finite number, got {value!r}")
    if (strict and value <= minimum) or (not strict and value < minimum):
        relation = "greater than" if strict else "at least"
        raise ConfigError(f"{PREFIX}{key} must be {relation} {minimum:g}, got {value!r}")
    return float(value)


def _integer(key: str, value: t.Any, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{PREFIX}{key} must be an integer, got {type(value).__name__} {value!r}")
    if isinstance(value, float) and not value.is_integer():
        raise ConfigError(f"{PREFIX}{key} must be a whole number, got {value!r}")
    if value < minimum:
        raise ConfigError(f"{PREFIX}{key} must be at least {minimum}, got {value!r}")
    return int(value)


def _queues(value: t.Any) -> tuple[str, ...] | None:
    key = PREFIX + "QUEUES"
    if value is None:
        return None
    if isinstance(value, str):
        names = [part.strip() for part in value.split(",")]
    elif isinstance(value, (list, tuple, set, frozenset)):
        names = list(value)
    else:
        raise ConfigError(
            f"{key} must be a list of queue names or a comma-separated string,"
            f" got {type(value).__name__}"
        )
    if not all(isinstance(name, str) and name.strip() for name in names):
        raise ConfigError(f"{key} must name non-empty queues, got {value!r}")
    return tuple(dict.fromkeys(name.strip() for name in names))


def _strings(key: str, value: t.Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not items or not all(
        isinstance(item, str) and item.strip() for item in items
    ):
        raise ConfigError(f"{PREFIX}{key} must be a non-empty string or list of strings")
    return tuple(item.strip() for item in items)


def _timeout(value: t.Any) -> tuple[float, float]:
    key = "CALLBACK_TIMEOUT"
    pair = (value, value) if isinstance(value, (int, float)) else value
    if not isinstance(pair, (list, tuple)) or len(pair) != 2:
        raise ConfigError(f"{PREFIX}{key} must be seconds or (connect, read) seconds")
    connect, read = (_number(key, part, minimum=0, strict=True) for part in pair)
    return connect, read


def _metrics(value: t.Any) -> t.Any:
    # prometheus_client is optional: imported only when metrics are switched on.
    key = PREFIX + "METRICS"
    if value is False or value is None:
        return False
    try:
        from prometheus_client.registry import CollectorRegistry
    except ImportError:
        raise ConfigError(
            f"{key} needs prometheus_client: pip install 'flask-durable-jobs[metrics]'"
        ) from None
    if value is not True and not isinstance(value, CollectorRegistry):
        raise ConfigError(
            f"{key} must be True, False or a prometheus_client CollectorRegistry,"
            f" got {type(value).__name__} {value!r}"
        )
    return value


def load(config: t.Mapping[str, t.Any]) -> Settings:
    """Read every key from a Flask config, apply defaults, and validate."""

    def get(key: str) -> t.Any:
        return config.get(PREFIX + key, DEFAULTS[key])

    # A test suite builds many apps and runs jobs with drain() or eager mode;
    # under TESTING the scheduler starts only when asked for by name.
    scheduler = config.get(PREFIX + "SCHEDULER")
    if scheduler is None:
        scheduler = DEFAULTS["SCHEDULER"] and not config.get("TESTING", False)
    if not isinstance(scheduler, bool):
        raise ConfigError(f"{PREFIX}SCHEDULER must be True or False, got {scheduler!r}")
    eager = get("EAGER")
    if not isinstance(eager, bool):
        raise ConfigError(f"{PREFIX}EAGER must be True or False, got {eager!r}")

    prefix = get("URL_PREFIX")
    if not isinstance(prefix, str) or not prefix.startswith("/") or prefix.endswith("/"):
        raise ConfigError(
            f"{PREFIX}URL_PREFIX must be a path starting with '/' and not ending"
            f" with '/', got {prefix!r}"
        )

    token = get("ADMIN_TOKEN")
    if token is not None and (not isinstance(token, str) or not token):
        raise ConfigError(f"{PREFIX}ADMIN_TOKEN must be a non-empty string or unset")
    read_token = get("ADMIN_READ_TOKEN")
    if read_token is not None and (not isinstance(read_token, str) or not read_token):
        raise ConfigError(f"{PREFIX}ADMIN_READ_TOKEN must be a non-empty string or unset")
    if read_token is not None and read_token == token:
        raise ConfigError(
            f"{PREFIX}ADMIN_READ_TOKEN must differ from {PREFIX}ADMIN_TOKEN: the same"
            " token cannot grant only reads and also everything"
        )

    dashboard = get("DASHBOARD")
    if not isinstance(dashboard, bool):
        raise ConfigError(f"{PREFIX}DASHBOARD must be True or False, got {dashboard!r}")

    jitter = _number("BACKOFF_JITTER", get("BACKOFF_JITTER"), minimum=0, strict=False)
    if jitter >= 1:
        raise ConfigError(f"{PREFIX}BACKOFF_JITTER must be below 1, got {jitter!r}")

    sweep_interval = _number("SWEEP_INTERVAL", get("SWEEP_INTERVAL"), minimum=0, strict=True)
    grace = get("HEALTH_EXPIRED_LEASE_GRACE")
    # The sweep recovers an expired lease within one interval (of whichever
    # process runs it next); one more interval is the margin for a slow tick.
    grace = 2 * sweep_interval if grace is None else _number(
        "HEALTH_EXPIRED_LEASE_GRACE", grace, minimum=0, strict=False
    )

    return Settings(
        scheduler=scheduler,
        poll_interval=_number("POLL_INTERVAL", get("POLL_INTERVAL"), minimum=0, strict=True),
        sweep_interval=sweep_interval,
        lease_seconds=_number("LEASE_SECONDS", get("LEASE_SECONDS"), minimum=0, strict=True),
        concurrency=_integer("CONCURRENCY", get("CONCURRENCY"), minimum=1),
        batch_size=_integer("BATCH_SIZE", get("BATCH_SIZE"), minimum=1),
        queues=_queues(get("QUEUES")),
        shutdown_timeout=_number(
            "SHUTDOWN_TIMEOUT", get("SHUTDOWN_TIMEOUT"), minimum=0, strict=False
        ),
        backoff_base=_number("BACKOFF_BASE", get("BACKOFF_BASE"), minimum=0, strict=False),
        backoff_factor=_number("BACKOFF_FACTOR", get("BACKOFF_FACTOR"), minimum=1, strict=False),
        backoff_max=_number("BACKOFF_MAX", get("BACKOFF_MAX"), minimum=0, strict=False),
        backoff_jitter=jitter,
        retention_days=_number("RETENTION_DAYS", get("RETENTION_DAYS"), minimum=0, strict=True),
        dead_retention_days=_number(
            "DEAD_RETENTION_DAYS", get("DEAD_RETENTION_DAYS"), minimum=0, strict=True
        ),
        url_prefix=prefix,
        admin_token=token,
        admin_read_token=read_token,
        eager=eager,
        secret_keys=_strings("SECRET_KEY", get("SECRET_KEY")) or (),
        callback_secret=(_strings("CALLBACK_SECRET", get("CALLBACK_SECRET")) or (None,))[0],
        callback_hosts=_strings("CALLBACK_HOSTS", get("CALLBACK_HOSTS")),
        callback_timeout=_timeout(get("CALLBACK_TIMEOUT")),
        metrics=_metrics(get("METRICS")),
        max_payload_bytes=_integer("MAX_PAYLOAD_BYTES", get("MAX_PAYLOAD_BYTES"), minimum=1),
        health_max_expired_leases=_integer(
            "HEALTH_MAX_EXPIRED_LEASES", get("HEALTH_MAX_EXPIRED_LEASES"), minimum=0
        ),
        health_expired_lease_grace=grace,
        health_max_unwritten=_integer(
            "HEALTH_MAX_UNWRITTEN", get("HEALTH_MAX_UNWRITTEN"), minimum=0
        ),
        health_database_timeout=_number(
            "HEALTH_DATABASE_TIMEOUT", get("HEALTH_DATABASE_TIMEOUT"), minimum=0, strict=True
        ),
        health_snapshot_warning=_number(
            "HEALTH_SNAPSHOT_WARNING", get("HEALTH_SNAPSHOT_WARNING"), minimum=0, strict=True
        ),
        dashboard=dashboard,
    )


def check_driver(url: sa.URL) -> None:
    """Raise at ``init_app`` when the library could not reach this database.

    On PostgreSQL the library's own connections use psycopg 3, whatever
    driver the app's URL names (an app on psycopg2 keeps it for its models),
    so a missing psycopg shows now rather than in every worker at its first
    tick.
    """
    if url.get_backend_name() != "postgresql":
        return
    try:
        import psycopg  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            "flask-durable-jobs needs psycopg 3 for PostgreSQL (its own connections use it,"
            " whatever driver the app's URL names): pip install"
            f" 'flask-durable-jobs[postgresql]' ({type(exc).__name__}: {exc})"
        ) from None
