"""Finding jobs: the list filters, keyset pagination, and the bulk actions over them.

One set of filters serves the admin list (``GET {prefix}``), ``jobs.list_jobs``,
``jobs.list_page`` and the bulk actions (``jobs.retry_many`` and friends), so
a filter means the same thing everywhere:

* ``status``, ``job_type``, ``queue``, ``owner``, ``idempotency_key``,
  ``batch_id``: equal to the text given.
* ``payload={"field": value}`` (over HTTP ``payload.<field>=<value>``): one
  top-level field of the payload, compared in string form. A JSON string
  compares as itself, a number as its JSON text (``42``, ``2.5``), a boolean
  as ``true`` or ``false``; null, objects and arrays never match. Given from
  Python, a number or boolean is turned into that text first, so
  ``payload={"user": 42}`` and ``payload={"user": "42"}`` match the same jobs.
* ``created_after`` / ``created_before``: ``created_after <= created_at <
  created_before``. ISO 8601 text (without an offset it is UTC) or an aware
  datetime.
* ``ids`` (bulk actions only): a list of job ids.

Pages are newest first (id descending). A cursor is the keyset position after
a page's last job, so every page costs what the first one does; ``page`` /
``per_page`` (OFFSET) still work, and cost grows with the depth. ``total`` is
counted up to :data:`COUNT_LIMIT` so that no page counts a whole table;
``total_exact`` says whether it is the whole count.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime as dt
import json
import typing as t

from .models import CANCELLED, DEAD, RUNNING, STATUSES, WAITING, Job
from .store import lists as store_lists

if t.TYPE_CHECKING:
    from .extension import State

#: Filters that take one text value.
TEXT_FILTERS = ("status", "job_type", "queue", "owner", "idempotency_key", "batch_id")
#: Every filter name, as Python keywords and admin query parameters take them
#: (plus ``payload.<field>`` over HTTP).
FILTERS = (*TEXT_FILTERS, "payload", "created_after", "created_before")
#: ... and the one the bulk actions add.
BULK_FILTERS = (*FILTERS, "ids")
#: The prefix of a payload filter as a query parameter or a bulk body's key.
PAYLOAD_PREFIX = "payload."
#: ``total`` is counted exactly up to this many jobs; beyond, it says "at least".
COUNT_LIMIT = 10_000
DEFAULT_PER_PAGE = 50
MAX_PER_PAGE = 200
#: Jobs one bulk statement selects, locks and changes: each batch is its own
#: short transaction, so no lock is held for longer than one batch.
BULK_BATCH = 1000
#: The largest job id a BIGINT (and SQLite's rowid) holds.
MAX_JOB_ID = 2**63 - 1

_CURSOR_PREFIX = "id:"


@dataclasses.dataclass(frozen=True)
class Filters:
    """Checked filters; ``None`` leaves a column unfiltered."""

    status: str | None = None
    job_type: str | None = None
    queue: str | None = None
    owner: str | None = None
    idempotency_key: str | None = None
    batch_id: str | None = None
    #: (field, value in string form)
    payload: tuple[str, str] | None = None
    created_after: dt.datetime | None = None
    created_before: dt.datetime | None = None
    ids: tuple[int, ...] | None = None

    @property
    def empty(self) -> bool:
        return all(getattr(self, f.name) is None for f in dataclasses.fields(self))


@dataclasses.dataclass(frozen=True)
class JobPage:
    """One page of a list: newest first."""

    items: list[Job]
    #: Pass as ``cursor`` for the next page; ``None`` on the last page.
    next_cursor: str | None
    #: Jobs matching the filters, counted up to :data:`COUNT_LIMIT`.
    total: int
    #: False when more than :data:`COUNT_LIMIT` match (``total`` is then that limit).
    total_exact: bool


# -- checking filters ------------------------------------------------------------


def parse_filters(raw: t.Mapping[str, t.Any], *, bulk: bool = False) -> Filters:
    """``raw`` (keywords, query parameters or a bulk body's filter) as :class:`Filters`.

    Unknown names raise :class:`TypeError`, bad values :class:`ValueError`;
    both name the filter.
    """
    known = BULK_FILTERS if bulk else FILTERS
    unknown = sorted(
        name for name in raw if name not in known and not name.startswith(PAYLOAD_PREFIX)
    )
    if unknown:
        raise TypeError(
            f"unknown filter{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))};"
            f" known: {', '.join(known)}, {PAYLOAD_PREFIX}<field>"
        )
    values: dict[str, t.Any] = {}
    for name in TEXT_FILTERS:
        if raw.get(name) is not None:
            values[name] = _text(name, raw[name])
    if values.get("status") is not None and values["status"] not in STATUSES:
        raise ValueError(f"status must be one of {', '.join(STATUSES)}; got {values['status']!r}")
    payload = _payload(raw)
    if payload is not None:
        values["payload"] = payload
    for name in ("created_after", "created_before"):
        if raw.get(name) is not None:
            values[name] = parse_time(name, raw[name])
    if raw.get("ids") is not None:
        values["ids"] = _ids(raw["ids"])
    return Filters(**values)


def _text(name: str, value: t.Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{name} must be text, got {type(value).__name__}")
    if not value:
        raise ValueError(f"{name} must not be empty; leave it out to match every {name}")
    if "\x00" in value:
        raise ValueError(f"{name} must not contain NUL characters")
    return value


def _payload(raw: t.Mapping[str, t.Any]) -> tuple[str, str] | None:
    given: list[tuple[str, t.Any]] = []
    nested = raw.get("payload")
    if nested is not None:
        if not isinstance(nested, dict):
            raise ValueError(
                "payload must be a dict of one top-level field and its value, like"
                ' {"customer": "42"}'
            )
        given.extend(nested.items())
    given.extend(
        (name[len(PAYLOAD_PREFIX):], value)
        for name, value in raw.items() if name.startswith(PAYLOAD_PREFIX)
    )
    if not given:
        return None
    if len(given) > 1:
        raise ValueError(
            f"payload filters one field, got {len(given)}: "
            + ", ".join(repr(field) for field, _ in given)
        )
    field, value = given[0]
    label = f"{PAYLOAD_PREFIX}{field}"
    if not isinstance(field, str) or not field:
        raise ValueError(f"{PAYLOAD_PREFIX}<field> needs a field name, got {field!r}")
    if any(ch in field for ch in '"\\') or not field.isprintable():
        raise ValueError(
            f"{label}: a payload field name may not hold quotes, backslashes or control"
            " characters"
        )
    return field, _string_form(label, value)


def _string_form(label: str, value: t.Any) -> str:
    """A payload value as the filter compares it (see the module docstring)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        text = json.dumps(value)
        if text in ("NaN", "Infinity", "-Infinity"):
            raise ValueError(f"{label} must be a finite number, got {value!r}")
        return text
    if isinstance(value, str):
        if not value:
            raise ValueError(f"{label} must not be empty")
        if "\x00" in value:
            raise ValueError(f"{label} must not contain NUL characters")
        return value
    raise ValueError(
        f"{label} must be text, a number or a boolean, got {type(value).__name__}"
    )


def parse_time(name: str, value: t.Any) -> dt.datetime:
    """An aware datetime, or ISO 8601 text (UTC when it has no offset), as UTC."""
    if isinstance(value, str):
        try:
            parsed = dt.datetime.fromisoformat(value.strip())
        except ValueError:
            raise ValueError(
                f"{name} must be an ISO 8601 date or time, like 2026-12-03T14:00:00Z;"
                f" got {value[:60]!r}"
            ) from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=dt.timezone.utc)
        return parsed.astimezone(dt.timezone.utc)
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            raise ValueError(f"{name} must be timezone-aware (e.g. tzinfo=timezone.utc)")
        return value.astimezone(dt.timezone.utc)
    raise ValueError(f"{name} must be a datetime or ISO 8601 text, got {type(value).__name__}")


def _ids(value: t.Any) -> tuple[int, ...]:
    if isinstance(value, str | bytes) or not isinstance(value, t.Iterable):
        raise ValueError(f"ids must be a list of job ids, got {type(value).__name__}")
    ids = tuple(value)
    for job_id in ids:
        if type(job_id) is not int or not 1 <= job_id <= MAX_JOB_ID:
            raise ValueError(f"ids must hold whole numbers from 1 to {MAX_JOB_ID}, got {job_id!r}")
    return ids


# -- cursors ---------------------------------------------------------------------


def encode_cursor(job_id: int) -> str:
    """The opaque cursor of the page after the job ``job_id``."""
    text = f"{_CURSOR_PREFIX}{job_id}".encode("ascii")
    return base64.urlsafe_b64encode(text).decode("ascii").rstrip("=")


def decode_cursor(cursor: str) -> int:
    """The job id a cursor from :func:`encode_cursor` stands for; ValueError otherwise."""
    refused = ValueError("cursor is not one this API gave out (pass next_cursor as it came)")
    if not isinstance(cursor, str) or not cursor.isascii() or len(cursor) > 40:
        raise refused
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise refused from None
    digits = text.removeprefix(_CURSOR_PREFIX)
    if (text == digits or not digits.isascii() or not digits.isdigit()
            or len(digits) > len(str(MAX_JOB_ID)) or not 1 <= int(digits) <= MAX_JOB_ID):
        raise refused
    return int(digits)


# -- lists -----------------------------------------------------------------------


def _per_page(per_page: t.Any) -> int:
    if type(per_page) is not int or not 1 <= per_page <= MAX_PER_PAGE:
        raise ValueError(f"per_page must be a whole number from 1 to {MAX_PER_PAGE}")
    return per_page


def list_page(
    state: State,
    filters: t.Mapping[str, t.Any],
    *,
    cursor: str | None = None,
    page: int | None = None,
    per_page: int = DEFAULT_PER_PAGE,
) -> JobPage:
    """One page of matching jobs, newest first, with the next page's cursor."""
    checked = parse_filters(filters)
    per_page = _per_page(per_page)
    if cursor is not None and page is not None:
        raise ValueError("give cursor or page, not both (cursor is the fast way)")
    if page is not None and (type(page) is not int or page < 1):
        raise ValueError("page must be a whole number >= 1")
    below = None if cursor is None else decode_cursor(cursor)
    offset = 0 if page is None else (page - 1) * per_page
    rows = store_lists.select_page(
        state.store, checked, below=below, offset=offset, limit=per_page + 1
    )
    items = rows[:per_page]
    more = len(rows) > per_page
    total = store_lists.count(state.store, checked, limit=COUNT_LIMIT + 1)
    return JobPage(
        items=items,
        next_cursor=encode_cursor(items[-1].id) if more else None,
        total=min(total, COUNT_LIMIT),
        total_exact=total <= COUNT_LIMIT,
    )


def list_jobs(
    state: State, filters: t.Mapping[str, t.Any], *, page: int = 1, per_page: int = DEFAULT_PER_PAGE
) -> tuple[list[Job], int]:
    """One page (OFFSET) and the exact number of matching jobs (counts every match)."""
    checked = parse_filters(filters)
    per_page = _per_page(per_page)
    if type(page) is not int or page < 1:
        raise ValueError("page must be a whole number >= 1")
    items = store_lists.select_page(
        state.store, checked, below=None, offset=(page - 1) * per_page, limit=per_page
    )
    return items, store_lists.count(state.store, checked, limit=None)


# -- bulk actions ----------------------------------------------------------------

#: action -> the statuses it applies to
BULK_ALLOWED: dict[str, tuple[str, ...]] = {
    "retry": (DEAD, CANCELLED),
    "cancel": WAITING,
    "delete": tuple(s for s in STATUSES if s != RUNNING),
}


def bulk(state: State, action: str, filters: t.Mapping[str, t.Any]) -> int:
    """Apply ``action`` to every matching job whose status allows it; returns how many.

    Batches of :data:`BULK_BATCH` jobs, each selected (``FOR UPDATE SKIP
    LOCKED`` on PostgreSQL), changed and committed in its own transaction. A
    job locked by someone else at that moment (a claim, a finish) is skipped.
    """
    if action not in BULK_ALLOWED:
        raise ValueError(f"action must be one of {', '.join(BULK_ALLOWED)}, got {action!r}")
    checked = parse_filters(filters, bulk=True)
    if checked.empty:
        raise ValueError(
            f"{action}_many needs at least one filter ({', '.join(BULK_FILTERS)});"
            " to act on every job, call it once per status"
        )
    store = state.store
    changed = 0
    batches: set[str] = set()
    chunks: list[Filters | None]
    if checked.ids is not None:
        ordered = sorted(set(checked.ids), reverse=True)
        chunks = [
            dataclasses.replace(checked, ids=tuple(ordered[i:i + BULK_BATCH]))
            for i in range(0, len(ordered), BULK_BATCH)
        ]
    else:
        chunks = [None]
    # cancel: waiting jobs end cancelled; running ones get a cancel request
    # (they end cancelled unless their handler returns normally)
    passes = [(action, BULK_ALLOWED[action])]
    if action == "cancel":
        passes.append(("request_cancel", (RUNNING,)))
    for step, allowed in passes:
        for chunk in chunks:
            below: int | None = None
            while True:
                done, lowest = store_lists.bulk_batch(
                    store, chunk or checked, step, allowed,
                    now=state.now(), below=below, limit=BULK_BATCH,
                )
                changed += len(done)
                if step == "cancel":
                    batches.update(batch for _, batch in done if batch is not None)
                if lowest is None or chunk is not None:
                    break
                below = lowest
    if action == "cancel" and batches:
        state.finish_batches(batches)
    if action == "retry" and changed and state.runner_started:
        state.runner.wake()
    return changed

