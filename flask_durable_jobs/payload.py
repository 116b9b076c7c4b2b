"""Strict JSON: what a payload or a result may hold.

Payloads are checked before anything is stored, so a job that could never be
decoded (or would decode differently) is refused at enqueue time with the key
path that is wrong.
"""

from __future__ import annotations

import json
import math
import typing as t


def _path(parts: list[str | int]) -> str:
    text = "payload"
    for part in parts:
        text += f"[{part!r}]"
    return text


def check(value: t.Any, parts: list[str | int] | None = None, *, root: str = "payload") -> None:
    """Raise ``TypeError`` naming the key path of the first value strict JSON can't carry."""
    parts = [] if parts is None else parts
    if isinstance(value, str):
        if "\x00" in value:
            where = _path(parts).replace("payload", root, 1)
            raise TypeError(f"{where} contains a NUL character (\\x00), which PostgreSQL"
                            " cannot store (refused on every database alike)")
        return
    if value is None or isinstance(value, (bool, int)):
        return
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            where = _path(parts).replace("payload", root, 1)
            raise TypeError(f"{where} is {value!r}, which strict JSON cannot carry")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str) or "\x00" in key:
                where = _path(parts).replace("payload", root, 1)
                problem = (f"of type {type(key).__name__}; JSON object keys must be strings"
                           if not isinstance(key, str) else "containing a NUL character")
                raise TypeError(f"{where} has a key {key!r} {problem}")
            check(item, [*parts, key], root=root)
        return
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            check(item, [*parts, index], root=root)
        return
    where = _path(parts).replace("payload", root, 1)
    raise TypeError(f"{where} is a {type(value).__name__}, which JSON cannot carry")


def check_payload(payload: t.Any) -> None:
    """Validate a job payload: a JSON object that strict JSON can carry."""
    if not isinstance(payload, dict):
        raise TypeError(f"payload must be a JSON object (a dict), got {type(payload).__name__}")
    check(payload)


#: The decoder's scanner: ``json.loads`` without its checks for a ``str``,
#: leading whitespace and trailing data around it.
_scan: t.Callable[[str, int], tuple[t.Any, int]] = t.cast(t.Any, json.JSONDecoder()).scan_once


def loads(text: str) -> t.Any:
    """Decode a stored payload or result.

    The text is what the library stored (or PostgreSQL's ``jsonb`` output):
    one value, nothing around it, so the scanner alone reads it, at about
    half the cost of ``json.loads`` for a small object; anything else takes
    ``json.loads``, with its errors.
    """
    try:
        value, end = _scan(text, 0)
    except StopIteration:
        return json.loads(text)
    return value if end == len(text) else json.loads(text)


def dumps_payload(payload: t.Any) -> str:
    """Validate a job payload and serialise it."""
    check_payload(payload)
    return json.dumps(payload, separators=(",", ":"), allow_nan=False)


def dumps_result(result: t.Any) -> str:
    """Serialise a handler's return value, or raise ``TypeError`` naming the bad type."""
    if result is None:  # most handlers return nothing
        return "null"
    check(result, root="result")
    return json.dumps(result, separators=(",", ":"), allow_nan=False)
