"""What job data looks like once it leaves the library (admin API, callbacks).

Payloads and results often carry credentials (an SMTP password, a webhook
token) that an operator browsing jobs has no need to see. Masking goes by key
name alone, so it needs no schema, and it builds new containers as it goes:
the job that was read from the database is never changed. A callback URL's
user and password are masked the same way.

Masking walks the data with its own stack, not by recursion, and stops at
:data:`MAX_DEPTH` levels: a payload written into the table by other means,
deeper than enqueue accepts, is shown cut at that depth instead of failing the
answer (or the callback) with a ``RecursionError``.
"""

from __future__ import annotations

import json
import typing as t
import urllib.parse

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

#: Levels of dicts and lists below the payload (or result) that are shown; at
#: least the nesting enqueue accepts. A container deeper than this is
#: replaced by :data:`TOO_DEEP`.
MAX_DEPTH = 100
TOO_DEEP = f"[nested deeper than {MAX_DEPTH} levels: not shown]"

#: In admin lists, a payload or result whose JSON text is longer than this is
#: shown as the text's beginning and a marker (the job's own route shows it whole).
PREVIEW_CHARS = 1000


def _squash(text: str) -> str:
    return "".join(ch for ch in text.lower() if ch.isalnum())


_SQUASHED_PARTS = tuple(_squash(part) for part in SECRET_KEY_PARTS)


def is_secret_key(key: object) -> bool:
    """True when a value stored under ``key`` must not be shown."""
    squashed = _squash(str(key))
    return any(part in squashed for part in _SQUASHED_PARTS)


def mask(value: t.Any, *, max_depth: int = MAX_DEPTH) -> t.Any:
    """Return a copy of ``value`` with every secret key's value replaced by :data:`MASK`.

    Dicts and lists (tuples become lists) are rebuilt down to ``max_depth``
    levels below ``value``; a container deeper than that becomes
    :data:`TOO_DEEP`. Other values are returned as they are (JSON scalars are
    immutable).
    """
    root = _empty_like(value)
    if root is None:
        return value
    # (original container, its copy being filled, the copy's depth)
    stack: list[tuple[t.Any, t.Any, int]] = [(value, root, 0)]
    while stack:
        source, target, depth = stack.pop()
        pairs = source.items() if isinstance(source, dict) else enumerate(source)
        for key, item in pairs:
            if isinstance(source, dict) and is_secret_key(key):
                shown: t.Any = MASK
            else:
                shown = _empty_like(item)
                if shown is None:
                    shown = item
                elif depth >= max_depth:
                    shown = TOO_DEEP
                else:
                    stack.append((item, shown, depth + 1))
            if isinstance(target, dict):
                target[key] = shown
            else:
                target.append(shown)
    return root


def _empty_like(value: t.Any) -> dict[t.Any, t.Any] | list[t.Any] | None:
    if isinstance(value, dict):
        return {}
    if isinstance(value, (list, tuple)):
        return []
    return None


def mask_url(url: str) -> str:
    """``url`` with its user and password, and the values of query parameters
    whose names look secret, replaced by :data:`MASK`."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:  # not a URL at all: show nothing of it
        return MASK
    netloc = parts.netloc
    if "@" in netloc:
        netloc = MASK + "@" + netloc.rpartition("@")[2]
    query = "&".join(_mask_parameter(piece) for piece in parts.query.split("&"))
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _mask_parameter(piece: str) -> str:
    name, sep, _ = piece.partition("=")
    return f"{name}={MASK}" if sep and is_secret_key(urllib.parse.unquote_plus(name)) else piece


def preview(value: t.Any) -> tuple[t.Any, bool]:
    """``(value, False)`` when its JSON text fits :data:`PREVIEW_CHARS`, else
    ``(the text's beginning and a marker, True)``. ``value`` is masked already."""
    if value is None or isinstance(value, (bool, int, float)):
        return value, False
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    if len(text) <= PREVIEW_CHARS:
        return value, False
    return text[:PREVIEW_CHARS] + f"... [{len(text):,} characters in all]", True


def public_job(job: Job, *, summary: bool = False) -> dict[str, t.Any]:
    """A job as it leaves the library (admin API, callbacks): secrets masked,
    ``last_error`` bounded. The encrypted secrets are never part of a Job.

    ``summary`` (admin lists): a large payload or result becomes a preview
    (:func:`preview`), flagged by ``payload_truncated`` and ``result_truncated``.
    """
    data = job.to_dict()
    data["payload"] = mask(data["payload"])
    data["result"] = mask(data["result"])
    if data.get("progress") is not None:
        data["progress"] = mask(data["progress"])
    if summary:
        data["payload"], data["payload_truncated"] = preview(data["payload"])
        data["result"], data["result_truncated"] = preview(data["result"])
    if data.get("callback_url"):
        data["callback_url"] = mask_url(data["callback_url"])
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
