"""Strict JSON: what a payload or a result may hold.

Payloads are checked before anything is stored, so a job that could never be
decoded (or would decode differently) is refused at enqueue time with the key
path that is wrong. Two limits keep a payload something every part of the
library can handle: :data:`MAX_DEPTH` levels of nesting, and a size
(``DURABLE_JOBS_MAX_PAYLOAD_BYTES``, :data:`DEFAULT_MAX_BYTES` by default).
The checks walk the value with a stack of their own, never recursing, so a
hostile value fails with a ``ValueError`` naming its path, not a
``RecursionError``.
"""

from __future__ import annotations

import json
import math
import typing as t

#: Most levels of nesting in a payload or result: the object itself is level
#: 1, a dict or list inside it level 2, and so on.
MAX_DEPTH = 100
#: Largest payload accepted at enqueue, in bytes of its compact JSON text
#: (``DURABLE_JOBS_MAX_PAYLOAD_BYTES`` changes it).
DEFAULT_MAX_BYTES = 1024 * 1024

#: How a value's place is remembered while walking: (parent trail, key), or
#: None at the root. Only an error builds the path text from it.
Trail: t.TypeAlias = "tuple[t.Any, str | int] | None"


def _path(trail: Trail, root: str) -> str:
    parts: list[str | int] = []
    while trail is not None:
        trail, key = trail
        parts.append(key)
    return root + "".join(f"[{part!r}]" for part in reversed(parts))


def walk(value: t.Any, *, root: str = "payload") -> int:
    """Check a value strict JSON can carry, nested at most :data:`MAX_DEPTH` deep.

    Raises ``TypeError`` naming the key path of the first value JSON can't
    carry, ``ValueError`` naming the path where the nesting passes the limit.
    Returns an upper bound of the size of its JSON text (see :func:`size`).
    """
    bound = 0
    stack: list[tuple[t.Any, Trail, int]] = [(value, None, 1)]
    while stack:
        item, trail, depth = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                raise TypeError(f"{_path(trail, root)} contains a NUL character (\\x00), which"
                                " PostgreSQL cannot store (refused on every database alike)")
            bound += 6 * len(item) + 3  # \u00XX is the longest a character gets; quotes, comma
        elif isinstance(item, bool) or item is None:
            bound += 6
        elif isinstance(item, int):
            bound += item.bit_length() // 3 + 3  # decimal digits, sign, comma
        elif isinstance(item, float):
            if math.isnan(item) or math.isinf(item):
                raise TypeError(f"{_path(trail, root)} is {item!r}, which strict JSON cannot"
                                " carry")
            bound += 25
        elif isinstance(item, (dict, list, tuple)):
            if depth > MAX_DEPTH:
                raise ValueError(f"{_path(trail, root)} is nested {depth} levels deep; a"
                                 f" payload or result may nest at most {MAX_DEPTH}")
            bound += 3
            children: list[tuple[t.Any, Trail, int]] = []
            if isinstance(item, dict):
                for key, child in item.items():
                    if not isinstance(key, str) or "\x00" in key:
                        problem = (
                            f"of type {type(key).__name__}; JSON object keys must be strings"
                            if not isinstance(key, str) else "containing a NUL character")
                        raise TypeError(f"{_path(trail, root)} has a key {key!r} {problem}")
                    bound += 6 * len(key) + 3
                    children.append((child, (trail, key), depth + 1))
            else:
                children.extend((child, (trail, index), depth + 1)
                                for index, child in enumerate(item))
            stack.extend(reversed(children))  # checked in order: the first problem is named
        else:
            raise TypeError(f"{_path(trail, root)} is a {type(item).__name__}, which JSON"
                            " cannot carry")
    return bound


def size(value: t.Any) -> int:
    """Bytes of a value's compact JSON text, UTF-8 encoded: what the size limit counts."""
    text = json.dumps(value, separators=(",", ":"), allow_nan=False, ensure_ascii=False)
    return len(text.encode("utf-8", "surrogatepass"))


def check(value: t.Any, *, root: str = "payload") -> None:
    """Raise ``TypeError`` (or ``ValueError`` for nesting) naming the key path
    of the first value strict JSON can't carry."""
    walk(value, root=root)


#: Compact strict JSON, built once rather than by every ``json.dumps`` call.
_encoder = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def _dumps(value: t.Any) -> str:
    return _encoder.encode(value)


def _check(payload: t.Any, max_bytes: int) -> None:
    if not isinstance(payload, dict):
        raise TypeError(f"payload must be a JSON object (a dict), got {type(payload).__name__}")
    # measured only when the cheap bound says the payload may be too large
    if walk(payload) > max_bytes and (count := size(payload)) > max_bytes:
        raise ValueError(
            f"payload is {count} bytes of JSON, over the limit of {max_bytes}"
            " (DURABLE_JOBS_MAX_PAYLOAD_BYTES); store large data elsewhere and pass a"
            " reference to it"
        )


def check_payload(payload: t.Any, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
    """Validate a job payload: a JSON object that strict JSON can carry, nested
    at most :data:`MAX_DEPTH` deep, at most ``max_bytes`` of JSON text."""
    _check(payload, max_bytes)


def loads(text: str) -> t.Any:
    """Decode a stored payload or result.

    The text is what the library stored (or PostgreSQL's ``jsonb`` output):
    one value, nothing around it, which ``raw_decode`` reads without looking
    for whitespace around it; anything else takes ``json.loads``, with its
    errors.
    """
    try:
        value, end = _decoder.raw_decode(text)
    except json.JSONDecodeError:
        return json.loads(text)
    return value if end == len(text) else json.loads(text)


_decoder = json.JSONDecoder()


def dumps_payload(payload: t.Any, max_bytes: int = DEFAULT_MAX_BYTES) -> str:
    """Validate a job payload (as :func:`check_payload`) and serialise it."""
    _check(payload, max_bytes)
    return _dumps(payload)


def dumps_result(result: t.Any) -> str:
    """Serialise a handler's return value, or raise ``TypeError`` (``ValueError``
    for nesting) naming what is wrong."""
    if result is None:  # most handlers return nothing
        return "null"
    walk(result, root="result")
    return _dumps(result)
