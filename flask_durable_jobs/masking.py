"""Masking of secret-looking values in the job data the admin API returns.

Payloads and results often carry credentials (an SMTP password, a webhook
token) that an operator browsing jobs has no need to see. Masking goes by key
name alone, so it needs no schema, and it builds new containers as it goes:
the job that was read from the database is never changed.
"""

from __future__ import annotations

import typing as t

if t.TYPE_CHECKING:
    from .models import Job

#: Longest ``last_error`` shown outside the database (admin API, callbacks):
#: the first :data:`LAST_ERROR_HEAD_CHARS` and the last characters are kept.
LAST_ERROR_MAX_CHARS = 4000
LAST_ERROR_HEAD_CHARS = 1000

#: A key is secret when it contains one of these, ignoring case and ignoring
#: characters other than letters and digits (so ``api_key``, ``API-Key`` and
#: ``apiKey`` all match). A plain substring match: ``tokens_used`` is masked
#: too, which is the safe mistake to make.
SECRET_KEY_PARTS: tuple[str, ...] = ("password", "token", "secret", "api_key", "authorization")

#: What a secret value is replaced with, whatever its type.
MASK = "********"


def _squash(text: str) -> str:
    return "".join(ch for ch in text.lower() if ch.isalnum())


_SQUASHED_PARTS = tuple(_squash(part) for part in SECRET_KEY_PARTS)


def is_secret_key(key: object) -> bool:
    """True when a value stored under ``key`` must not be shown."""
    squashed = _squash(str(key))
    return any(part in squashed for part in _SQUASHED_PARTS)


def mask(value: t.Any) -> t.Any:
    """Return a copy of ``value`` with every secret key's value replaced by :data:`MASK`.

    Dicts and lists are rebuilt at every depth; other values are returned as
    they are (JSON scalars are immutable).
    """
    if isinstance(value, dict):
        return {key: MASK if is_secret_key(key) else mask(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [mask(item) for item in value]
    return value


def public_job(job: Job) -> dict[str, t.Any]:
    """A job as it leaves the library (admin API, callbacks): secrets masked,
    ``last_error`` bounded. The encrypted secrets are never part of a Job."""
    data = job.to_dict()
    data["payload"] = mask(data["payload"])
    data["result"] = mask(data["result"])
    error = data.get("last_error")
    if isinstance(error, str) and len(error) > LAST_ERROR_MAX_CHARS:
        cut = len(error) - LAST_ERROR_MAX_CHARS
        tail = LAST_ERROR_MAX_CHARS - LAST_ERROR_HEAD_CHARS
        data["last_error"] = (
            error[:LAST_ERROR_HEAD_CHARS]
            + f"\n[... truncated: {cut:,} of {len(error):,} characters not shown ...]\n"
            + error[-tail:]
        )
    return data
