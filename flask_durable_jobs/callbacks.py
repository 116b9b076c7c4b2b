"""Completion callbacks: tell another system when a job ends.

``enqueue(..., callback_url="https://...")``: when the job reaches
``succeeded``, ``dead`` or ``cancelled``, the same write that ends it marks
its callback ``pending``. The scheduler then POSTs the job (masked as in the
admin API) to the URL; the delivery is recorded on the job
(``callback_status``: ``pending``, ``delivered`` or ``failed``, with
``callback_attempts`` and ``callback_error``), retried with backoff on network
errors, 429 and 5xx, and not retried on other answers. A delivery is claimed
in the database before it is sent, so several processes never both send it
within the claim, and only the claimer can mark it ``delivered``.

Requests go out through urllib3 (the HTTP library under ``requests``). It never
changes the job's own outcome.

Each request is signed (:func:`sign`): ``X-Durable-Jobs-Timestamp`` (Unix
seconds) and ``X-Durable-Jobs-Signature: sha256=<hex HMAC-SHA256 of
"<timestamp>.<body>" keyed with DURABLE_JOBS_CALLBACK_SECRET>``. Receivers
check both with :func:`verify`, refusing forgeries and replays.

Targets: ``http``/``https`` only. With ``DURABLE_JOBS_CALLBACK_HOSTS`` set,
only those host names; without it, only hosts whose every address is public
(no loopback, private, link-local or reserved address), checked at each
delivery, so callbacks can't be aimed at internal services. An IPv6 address
that carries an IPv4 address (NAT64 ``64:ff9b::/96``, 6to4 ``2002::/16``,
IPv4-mapped and IPv4-compatible) is judged by the IPv4 address it carries.

A delivery that fails for a reason of its own (its body cannot be built, an
unexpected error) marks or leaves that callback alone; the others claimed
with it are still sent.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import random
import socket
import time
import typing as t
import urllib.parse
from datetime import timedelta

from . import masking
from .errors import ConfigError
from .models import CallbackStatus

if t.TYPE_CHECKING:
    from .config import Settings
    from .extension import State
    from .models import Job

log = logging.getLogger("flask_durable_jobs")

SIGNATURE_HEADER = "X-Durable-Jobs-Signature"
TIMESTAMP_HEADER = "X-Durable-Jobs-Timestamp"
#: Deliveries tried at most this many times before the callback is ``failed``.
MAX_ATTEMPTS = 10
#: How long a claimed delivery is held (longer than any request's timeouts).
CLAIM_SECONDS = 120.0
#: Deliveries taken per scheduler tick.
BATCH = 20
#: Most seconds a receiver should accept between the timestamp and now.
DEFAULT_TOLERANCE = 300


def check_url(url: t.Any, settings: Settings) -> str:
    """Validate a callback URL at enqueue; raises ``ValueError`` saying why."""
    if settings.callback_secret is None:
        raise ConfigError(
            "callback_url needs DURABLE_JOBS_CALLBACK_SECRET: every callback is signed"
        )
    if not isinstance(url, str) or len(url) > 2000:
        raise ValueError("callback_url must be a URL string of at most 2000 characters")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"callback_url must be an http or https URL with a host, got {url!r}")
    hosts = settings.callback_hosts
    if hosts is not None and parts.hostname.lower() not in {h.lower() for h in hosts}:
        raise ValueError(
            f"callback_url host {parts.hostname!r} is not in DURABLE_JOBS_CALLBACK_HOSTS"
        )
    return url


class Refused(Exception):
    """The target may not be contacted; never retried."""


_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
#: RFC 8215's prefix for NAT64 inside one network: never a public target.
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for, if it carries one.

    A connection to it reaches that IPv4 host (through a NAT64 gateway, a
    6to4 relay or the host's own stack), so it is judged by that address.
    """
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64 or address in _IPV4_COMPATIBLE:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def non_public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why ``address`` is no public target (in words), or None when it is one."""
    if isinstance(address, ipaddress.IPv6Address):
        if address in _NAT64_LOCAL:
            return f"the non-public address {address} (local-use NAT64)"
        carried = embedded_ipv4(address)
        if carried is not None:
            return None if carried.is_global else f"the non-public address {address} ({carried})"
    return None if address.is_global else f"the non-public address {address}"


def resolve_target(url: str, settings: Settings) -> str:
    """The address to connect to, checked; raises :class:`Refused` or ``OSError``.

    The request then goes to this very address (the name is kept for the
    ``Host`` header and TLS), so a name that resolves differently a moment
    later (DNS rebinding) cannot redirect it to an internal service.
    """
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme not in ("http", "https") or not host:
        raise Refused(f"not an http(s) URL: {masking.mask_url(url)!r}")
    allowed = settings.callback_hosts
    if allowed is not None and host.lower() not in {h.lower() for h in allowed}:
        raise Refused(f"host {host!r} is not in DURABLE_JOBS_CALLBACK_HOSTS")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:  # retried: a failed lookup may be temporary
        raise OSError(f"host {host!r} does not resolve: {exc}") from exc
    addresses = [ipaddress.ip_address(info[4][0]) for info in infos]
    if allowed is None:
        for address in addresses:
            why = non_public(address)
            if why is not None:
                raise Refused(
                    f"host {host!r} resolves to {why};"
                    " list it in DURABLE_JOBS_CALLBACK_HOSTS to allow it"
                )
    return str(addresses[0])


def post(url: str, address: str, body: bytes, headers: dict[str, str],
         timeout: tuple[float, float]) -> int:
    """POST to ``address`` (already checked) on behalf of ``url``; returns the status."""
    import urllib3

    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    netloc_host = f"[{host}]" if ":" in host else host
    default_port = 443 if parts.scheme == "https" else 80
    headers = {**headers, "Host": netloc_host if port == default_port else f"{netloc_host}:{port}"}
    pool_timeout = urllib3.Timeout(connect=timeout[0], read=timeout[1])
    pool: t.Any
    if parts.scheme == "https":
        pool = urllib3.HTTPSConnectionPool(
            address, port, timeout=pool_timeout, retries=False, server_hostname=host,
            assert_hostname=host, cert_reqs="CERT_REQUIRED",
        )
    else:
        pool = urllib3.HTTPConnectionPool(address, port, timeout=pool_timeout, retries=False)
    try:
        response = pool.urlopen("POST", path, body=body, headers=headers, redirect=False,
                                retries=False, preload_content=True)
        return int(response.status)
    finally:
        pool.close()


def sign(secret: str, timestamp: str, body: bytes) -> str:
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + digest.hexdigest()


def verify(
    secret: str,
    timestamp: str,
    body: bytes,
    signature: str,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    now: float | None = None,
) -> bool:
    """For receivers: is this request signed with ``secret`` and recent?"""
    try:
        sent = int(timestamp)
    except (TypeError, ValueError):
        return False
    current = time.time() if now is None else now
    if abs(current - sent) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), signature or "")


def body_for(job: Job) -> bytes:
    data = masking.public_job(job)
    for key in ("callback_url", "callback_status", "callback_attempts", "callback_error",
                "lease_expires_at", "orphan_policy"):
        data.pop(key, None)
    return json.dumps({"event": "job.finished", "job": data}, separators=(",", ":")).encode()


def _retry_delay(attempt: int) -> float:
    base: float = min(3600.0, 10.0 * 2.0 ** (attempt - 1))
    return base * random.uniform(0.9, 1.1)


def deliver_due(state: State) -> int:
    """Send the callbacks that are due; returns how many were delivered."""
    now = state.now()
    claimed_until = now + timedelta(seconds=CLAIM_SECONDS)
    jobs = state.store.claim_callbacks(now, claimed_until, BATCH)
    delivered = 0
    for job in jobs:
        try:
            delivered += _deliver(state, job, claimed_until)
        except Exception:
            # Its claim runs out and it is tried again then; the rest of the
            # batch must not wait for it.
            log.exception("job %s: callback delivery failed", job.id)
    return delivered


def _deliver(state: State, job: Job, claimed_until: t.Any) -> bool:
    settings = state.settings
    attempt = job.callback_attempts + 1
    url = job.callback_url or ""

    def record(status: CallbackStatus, error: str | None, next_at: t.Any = None) -> None:
        written = state.store.record_callback(
            job.id, claimed_until, status=status, attempts=attempt, error=error,
            next_at=next_at,
        )
        if not written:
            log.warning("job %s: callback outcome not recorded (claim lost)", job.id)

    def retry(error: str) -> None:
        if attempt >= MAX_ATTEMPTS:
            record(CallbackStatus.FAILED, f"{error} (gave up after {attempt} attempts)")
        else:
            record(CallbackStatus.PENDING, error,
                   state.now() + timedelta(seconds=_retry_delay(attempt)))

    try:
        address = resolve_target(url, settings)
    except Refused as exc:
        log.warning("job %s: callback refused: %s", job.id, exc)
        record(CallbackStatus.FAILED, f"refused: {exc}")
        return False
    except OSError as exc:  # a failed lookup may be temporary
        retry(str(exc)[:1000])
        return False
    secret = settings.callback_secret
    if secret is None:
        retry("DURABLE_JOBS_CALLBACK_SECRET is not set")
        return False
    try:
        body = body_for(job)
    except Exception as exc:  # the same job would fail the same way every time
        log.warning("job %s: callback body could not be built", job.id, exc_info=True)
        why = f"the callback body could not be built: {type(exc).__name__}: {exc}"
        record(CallbackStatus.FAILED, why[:1000])
        return False
    timestamp = str(int(time.time()))
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "flask-durable-jobs",
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: sign(secret, timestamp, body),
    }
    try:
        status = post(url, address, body, headers, settings.callback_timeout)
    except Exception as exc:  # connection refused, timeout, TLS, protocol errors
        retry(f"{type(exc).__name__}: {exc}"[:1000])
        return False
    if 200 <= status < 300:
        record(CallbackStatus.DELIVERED, None)
        return True
    if status >= 500 or status == 429:
        retry(f"HTTP {status}")
    else:
        record(CallbackStatus.FAILED, f"HTTP {status} (not retried)")
    return False
