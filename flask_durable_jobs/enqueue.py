"""Enqueueing: a new job's columns, checked, stored in the caller's transaction.

:class:`~flask_durable_jobs.DurableJobs` delegates ``enqueue``,
``enqueue_many`` and ``enqueue_batch`` here; :mod:`.periodic` and batch
completion build their jobs with :func:`job_values` and
:func:`completion_job`. Every function takes the app's
:class:`~flask_durable_jobs.extension.State`.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import typing as t
import uuid

import sqlalchemy as sa

from . import callbacks, limits, signals
from . import handlers as handlers_module
from . import payload as payload_json
from .errors import ConfigError
from .handlers import HandlerSpec
from .models import PENDING, UTC, Batch, Job

if t.TYPE_CHECKING:
    from .extension import State

#: The bounds of the job table's integer columns (``priority``,
#: ``max_attempts``): PostgreSQL's INTEGER is 32 bits, and the same bounds
#: hold on every database so that a job stores alike on both.
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
#: The span ``run_at`` may take: a day inside Python's datetime, so that no
#: conversion to a time zone (the database session's, a reader's) overflows.
MIN_RUN_AT = dt.datetime.min.replace(tzinfo=UTC) + dt.timedelta(days=1)
MAX_RUN_AT = dt.datetime.max.replace(tzinfo=UTC) - dt.timedelta(days=1)


# -- checks ------------------------------------------------------------------------


def check_text(value: str, name: str) -> str:
    """Refuse a string no database stores alike, naming the argument.

    PostgreSQL refuses NUL in text, and a surrogate code point (half of a
    UTF-16 pair, alone in a Python ``str``) is not Unicode text: UTF-8, and
    so either driver, cannot encode it.
    """
    if "\x00" in value:
        raise ValueError(
            f"{name} contains a NUL character (\\x00), which PostgreSQL cannot store"
            " (refused on every database alike)"
        )
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(
                f"{name} contains the surrogate code point {value[exc.start]!r},"
                " which is not Unicode text (a lone half of a UTF-16 pair)"
            ) from None
    return value


def check_int32(value: int, name: str) -> int:
    """Refuse an integer the job table's INTEGER columns cannot hold."""
    if not INT32_MIN <= value <= INT32_MAX:
        raise ValueError(f"{name} must be between {INT32_MIN} and {INT32_MAX}, got {value!r}")
    return value


def check_strings(value: t.Any, root: str = "payload", text: str | None = None) -> None:
    """Refuse a surrogate code point in any string or key of a JSON value
    (already checked by :func:`.payload.check`), naming its key path.

    ``text`` is the value as :func:`json.dumps` writes it by default (ASCII,
    everything else escaped), when the caller has it: a surrogate can only be
    there as a ``\\ud...`` escape, so the value is walked only then.
    """
    if text is None:
        text = json.dumps(value, ensure_ascii=False)
        if text.isascii():
            return
        try:
            text.encode("utf-8")
            return
        except UnicodeEncodeError:
            pass
    elif "\\ud" not in text:
        return
    parts = _surrogate_at(value, [])
    if parts is not None:
        where = root + "".join(f"[{part!r}]" for part in parts)
        raise TypeError(
            f"{where} holds a surrogate code point, which is not Unicode text"
            " (a lone half of a UTF-16 pair; refused on every database alike)"
        )


def _surrogate_at(value: t.Any, parts: list[str | int]) -> list[str | int] | None:
    """The key path of the first string or key holding a surrogate, or ``None``."""
    if isinstance(value, str):
        return None if _is_text(value) else parts
    items: t.Iterable[tuple[t.Any, t.Any]]
    if isinstance(value, dict):
        for key in value:
            if not _is_text(key):
                return [*parts, key]
        items = value.items()
    elif isinstance(value, (list, tuple)):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        found = _surrogate_at(item, [*parts, key])
        if found is not None:
            return found
    return None


def _is_text(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_handler(spec: HandlerSpec) -> HandlerSpec:
    """Refuse a handler whose name or options no job could be stored with."""
    check_text(spec.name, "handler name")
    check_text(spec.queue, "queue")
    check_int32(spec.priority, "priority")
    check_int32(spec.max_attempts, "max_attempts")
    return spec


def _encrypt_secrets(state: State, secrets: t.Any) -> str:
    if state.vault is None:
        raise ConfigError(
            "enqueue(secrets=...) needs DURABLE_JOBS_SECRET_KEY: secrets are never stored"
            " in plain text"
        )
    if not isinstance(secrets, dict):
        raise TypeError(f"secrets must be a dict, got {type(secrets).__name__}")
    try:
        payload_json.check(secrets, root="secrets")
    except TypeError as exc:
        raise TypeError(str(exc)) from None
    check_strings(secrets, root="secrets")
    return state.vault.encrypt(secrets)


def _new_row(
    spec: HandlerSpec,
    *,
    now: dt.datetime,
    run_at: dt.datetime,
    queue: str | None = None,
    priority: int | None = None,
    max_attempts: int | None = None,
) -> dict[str, t.Any]:
    """The columns of a new job, options falling back to its handler's."""
    return {
        "job_type": spec.name,
        "queue": spec.queue if queue is None else queue,
        "priority": spec.priority if priority is None else priority,
        "max_attempts": spec.max_attempts if max_attempts is None else max_attempts,
        "status": PENDING,
        "attempts": 0,
        "orphan_policy": spec.on_orphan,
        "concurrency_key": limits.default_key(spec),
        "callback_attempts": 0,
        "run_at": run_at,
        "created_at": now,
        "updated_at": now,
    }


def _unregistered(payload: dict[str, t.Any]) -> None:  # never called: a spec for defaults
    raise LookupError("no handler registered")


def _idle(session: t.Any) -> bool:
    """No transaction begun and nothing pending: a commit would change nothing."""
    if not session.registry.has():  # no Session yet in this context: don't make one
        return True
    current = session()  # the scoped session's Session for this context
    return not current.in_transaction() and not (current.new or current.dirty or current.deleted)


_PENDING = "durable_jobs.on_commit"
_hooked: set[type] = set()  # Session classes whose commits run the pending callbacks
_hook_lock = threading.Lock()


def _on_commit(session: t.Any, callback: t.Callable[[], None]) -> None:
    """Run ``callback`` when the session's transaction commits; drop it on rollback.

    The listeners go on the session's class, once, not on each session: a
    session lives for one request, and listeners added per session would be
    set up and torn down on every request that enqueues. A session with
    nothing pending only looks in its ``info``.
    """
    cls = type(session)
    if cls not in _hooked:
        with _hook_lock:
            if cls not in _hooked:
                sa.event.listen(cls, "after_commit", _run_pending)
                sa.event.listen(cls, "after_rollback", _drop_pending)
                _hooked.add(cls)
    session.info.setdefault(_PENDING, []).append(callback)


def _run_pending(session: t.Any) -> None:
    callbacks = session.info.pop(_PENDING, None)
    for callback in callbacks or ():
        callback()


def _drop_pending(session: t.Any) -> None:
    session.info.pop(_PENDING, None)


def _check_owner(owner: t.Any) -> str:
    if not isinstance(owner, str) or not 0 < len(owner) <= 200:
        raise ValueError(f"owner must be a string of 1 to 200 characters, got {owner!r}")
    return check_text(owner, "owner")


# -- enqueueing ----------------------------------------------------------------------


def job_values(
    state: State,
    job_type: str,
    *,
    delay: float | dt.timedelta | None = None,
    run_at: dt.datetime | None = None,
    queue: str | None = None,
    priority: int | None = None,
    max_attempts: int | None = None,
) -> dict[str, t.Any]:
    """The columns of a new ``job_type`` job, every option checked; raises
    ``LookupError`` when no handler is registered for it in this process."""
    if not isinstance(job_type, str):
        raise TypeError(f"job_type must be a string, got {type(job_type).__name__}")
    check_text(job_type, "job_type")
    handlers = state.ext.handlers
    spec = handlers.get(job_type)
    if spec is None:
        known = ", ".join(sorted(handlers)) or "none"
        raise LookupError(
            f"no handler registered for job type {job_type!r} in this process"
            f" (registered: {known})"
        )
    now = state.now()
    if delay is not None and run_at is not None:
        raise ValueError("give delay or run_at, not both")
    if run_at is not None:
        if not isinstance(run_at, dt.datetime):
            raise TypeError(f"run_at must be a datetime, got {type(run_at).__name__}")
        if run_at.tzinfo is None or run_at.utcoffset() is None:
            raise ValueError(
                "run_at must be timezone-aware (e.g. datetime.now(timezone.utc));"
                " a naive datetime is ambiguous"
            )
        when = _within_range(lambda: run_at.astimezone(UTC))
        if when is None:
            raise ValueError(
                f"run_at must be between {MIN_RUN_AT:%Y-%m-%d} and {MAX_RUN_AT:%Y-%m-%d}"
                f" (UTC), got {run_at!r}"
            )
    elif delay is not None:
        seconds = delay.total_seconds() if isinstance(delay, dt.timedelta) else delay
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not (
            seconds >= 0
        ):
            raise ValueError(f"delay must be seconds >= 0 or a timedelta, got {delay!r}")
        when = _within_range(lambda: now + dt.timedelta(seconds=seconds))
        if when is None:
            raise ValueError(
                f"delay must bring run_at no later than {MAX_RUN_AT:%Y-%m-%d} (UTC),"
                f" got {delay!r}"
            )
    else:
        when = now
    return _new_row(
        spec,
        now=now,
        run_at=when,
        queue=None if queue is None
        else check_text(handlers_module.check_queue(queue), "queue"),
        priority=None if priority is None
        else check_int32(handlers_module.check_priority(priority), "priority"),
        max_attempts=None if max_attempts is None
        else check_int32(handlers_module.check_max_attempts(max_attempts), "max_attempts"),
    )


def _within_range(compute: t.Callable[[], dt.datetime]) -> dt.datetime | None:
    """``compute()`` if it lies within [MIN_RUN_AT, MAX_RUN_AT], else ``None``
    (also when computing it overflows Python's datetime: ``delay=inf``)."""
    try:
        when = compute()
    except OverflowError:
        return None
    return when if MIN_RUN_AT <= when <= MAX_RUN_AT else None


def enqueue(
    state: State,
    job_type: str,
    payload: dict[str, t.Any] | None = None,
    *,
    delay: float | dt.timedelta | None = None,
    run_at: dt.datetime | None = None,
    queue: str | None = None,
    priority: int | None = None,
    max_attempts: int | None = None,
    idempotency_key: str | None = None,
    owner: str | None = None,
    secrets: dict[str, t.Any] | None = None,
    callback_url: str | None = None,
    commit: bool = True,
) -> Job:
    """:meth:`DurableJobs.enqueue <flask_durable_jobs.DurableJobs.enqueue>` for ``state``'s app."""
    values = job_values(
        state, job_type, delay=delay, run_at=run_at, queue=queue,
        priority=priority, max_attempts=max_attempts,
    )
    if payload is None:
        payload = {}
    payload_json.check_payload(payload, state.settings.max_payload_bytes)  # names the path
    check_strings(payload)
    values["payload"] = payload
    if values["concurrency_key"] is not None:  # a limited handler's: by this payload
        values["concurrency_key"] = limits.key_for(state.ext.handlers[job_type], payload)
    if idempotency_key is not None:
        if not isinstance(idempotency_key, str) or not 0 < len(idempotency_key) <= 255:
            raise ValueError(
                f"idempotency_key must be a string of 1 to 255 characters,"
                f" got {idempotency_key!r}"
            )
        values["idempotency_key"] = check_text(idempotency_key, "idempotency_key")
    if owner is not None:
        values["owner"] = _check_owner(owner)
    if secrets is not None:
        values["secrets"] = _encrypt_secrets(state, secrets)
    if callback_url is not None:
        if isinstance(callback_url, str):
            check_text(callback_url, "callback_url")
        values["callback_url"] = callbacks.check_url(callback_url, state.settings)
    session: t.Any = state.db.session
    if commit and _idle(session):
        # Committing the session would commit the job alone: insert it in
        # a transaction of its own, without the session's machinery.
        job, created = state.store.insert_now(values, state.app_engine)
        commit = False  # nothing left to commit; signal and wake below
        session = None
    else:
        job, created = state.store.insert(session, values)
    _after_enqueue(
        state, session, commit, {job_type: [job.id] if created else []},
        job if created else None, due=job.run_at <= values["created_at"],
    )
    return job


def enqueue_many(
    state: State,
    job_type: str,
    payloads: t.Iterable[dict[str, t.Any]],
    *,
    delay: float | dt.timedelta | None = None,
    run_at: dt.datetime | None = None,
    queue: str | None = None,
    priority: int | None = None,
    max_attempts: int | None = None,
    commit: bool = True,
) -> list[int]:
    """:meth:`DurableJobs.enqueue_many <flask_durable_jobs.DurableJobs.enqueue_many>`."""
    values = job_values(
        state, job_type, delay=delay, run_at=run_at, queue=queue,
        priority=priority, max_attempts=max_attempts,
    )
    texts = []
    payloads = list(payloads)
    for index, payload in enumerate(payloads):
        try:
            texts.append(payload_json.dumps_payload(payload, state.settings.max_payload_bytes))
            check_strings(payload, text=texts[-1])
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"payloads[{index}]: {exc}") from None
    session = state.db.session
    if values["concurrency_key"] is not None:  # a limited handler's: one insert per key
        ids = _insert_by_key(state, session, values, payloads, texts)
    else:
        ids = state.store.insert_many(session, values, texts)
    _after_enqueue(state, session, commit, {job_type: ids}, None,
                   due=values["run_at"] <= values["created_at"])
    return ids


def _insert_by_key(
    state: State, session: t.Any, values: dict[str, t.Any],
    payloads: list[dict[str, t.Any]], texts: list[str],
) -> list[int]:
    """Insert a limited handler's jobs, one statement per concurrency key
    (every key computed before any SQL); ids in payload order."""
    groups = limits.group_by_key(state.ext.handlers[values["job_type"]], payloads)
    ids = [0] * len(texts)
    for key, positions in groups.items():
        new_ids = state.store.insert_many(
            session, {**values, "concurrency_key": key}, [texts[i] for i in positions]
        )
        for position, job_id in zip(positions, new_ids, strict=True):
            ids[position] = job_id
    return ids


def _after_enqueue(
    state: State,
    session: t.Any,
    commit: bool,
    enqueued: dict[str, list[int]],
    job: Job | None,
    *,
    due: bool,
) -> None:
    """Commit (or wait for the caller's commit), then signal and wake.

    ``enqueued``: the new jobs' ids by job type, one signal for each type.
    """
    ids = [job_id for type_ids in enqueued.values() for job_id in type_ids]

    def committed() -> None:  # after the commit that made the jobs durable
        if not ids:
            return
        for job_type, type_ids in enqueued.items():
            if type_ids:
                signals.send(signals.job_enqueued, state.app, job_type=job_type,
                             job_ids=type_ids, job=job)
        if not due:
            return
        if state.settings.eager:
            state.runner.run()
        elif state.scheduler is not None or state.runner_started:
            state.runner.wake()

    if session is None:  # already committed on its own
        committed()
    elif commit:
        session.commit()
        committed()
    elif ids:
        _on_commit(session(), committed)


def enqueue_batch(
    state: State,
    jobs: t.Iterable[tuple[str, dict[str, t.Any]]],
    *,
    on_complete: str | None = None,
    on_complete_payload: dict[str, t.Any] | None = None,
    batch_id: str | None = None,
    commit: bool = True,
) -> Batch:
    """:meth:`DurableJobs.enqueue_batch <flask_durable_jobs.DurableJobs.enqueue_batch>`."""
    pairs = list(jobs)
    if not pairs:
        raise ValueError("a batch needs at least one job")
    if on_complete is not None and (
        not isinstance(on_complete, str)
        or check_text(on_complete, "on_complete") not in state.ext.handlers
    ):
        raise LookupError(f"no handler registered for on_complete job type {on_complete!r}")
    if on_complete_payload is not None:
        payload_json.check_payload(on_complete_payload, state.settings.max_payload_bytes)
        check_strings(on_complete_payload, root="on_complete_payload")
    if batch_id is None:
        batch_id = uuid.uuid4().hex
    elif not isinstance(batch_id, str) or not 0 < len(batch_id) <= 64:
        raise ValueError(f"batch_id must be a string of 1 to 64 characters, got {batch_id!r}")
    else:
        check_text(batch_id, "batch_id")
    by_type: dict[tuple[str, str | None], list[tuple[int, str]]] = {}
    shared: dict[str, dict[str, t.Any]] = {}  # each type's columns, checked before any SQL
    for index, (job_type, payload) in enumerate(pairs):
        try:
            text = payload_json.dumps_payload(payload, state.settings.max_payload_bytes)
            check_strings(payload, text=text)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"jobs[{index}]: {exc}") from None
        if job_type not in shared:
            shared[job_type] = job_values(state, job_type)
        key = shared[job_type]["concurrency_key"]
        if key is not None:  # a limited handler's: by this payload
            try:
                key = limits.key_for(state.ext.handlers[job_type], payload)
            except (TypeError, ValueError) as exc:
                raise type(exc)(f"jobs[{index}]: {exc}") from None
        by_type.setdefault((job_type, key), []).append((index, text))
    session = state.db.session
    now = state.now()
    state.store.insert_batch(session, batch_id, on_complete=on_complete,
                             on_complete_payload=on_complete_payload, now=now)
    ids: list[int] = [0] * len(pairs)
    enqueued: dict[str, list[int]] = {}
    for (job_type, key), items in by_type.items():
        values = {**shared[job_type], "batch_id": batch_id, "concurrency_key": key}
        new_ids = state.store.insert_many(session, values, [text for _, text in items])
        for (index, _text), job_id in zip(items, new_ids, strict=True):
            ids[index] = job_id
        enqueued.setdefault(job_type, []).extend(new_ids)
    _after_enqueue(state, session, commit, enqueued, None, due=True)
    return Batch(id=batch_id, job_ids=ids)


def completion_job(state: State, batch_id: str, batch: t.Any) -> dict[str, t.Any] | None:
    """The columns of ``batch``'s completion job (``None``: it has none)."""
    if batch.on_complete is None:
        return None
    # The process that ends the batch may not have this handler: the job
    # is enqueued all the same, with the handler defaults.
    spec = state.ext.handlers.get(batch.on_complete) or HandlerSpec(
        batch.on_complete, func=_unregistered
    )
    now = state.now()
    return {
        **_new_row(spec, now=now, run_at=now),
        "payload": {"batch_id": batch_id, **(batch.on_complete_payload or {})},
        "idempotency_key": f"batch:{batch_id}",
    }


def finish_batches(state: State, batch_ids: t.Iterable[str]) -> list[str]:
    """Enqueue the completion job of every given batch whose jobs all ended;
    returns the batches completed by this call."""
    job_types: dict[str, str] = {}

    def completion(batch_id: str, batch: t.Any) -> dict[str, t.Any] | None:
        values = completion_job(state, batch_id, batch)
        if values is not None:
            job_types[batch_id] = values["job_type"]
        return values

    done = state.store.complete_batches(batch_ids, state.now(), completion)
    for batch_id, job_id in done.items():  # committed
        if job_id is not None:
            signals.send(signals.job_enqueued, state.app, job_type=job_types[batch_id],
                         job_ids=[job_id], job=None)
    return list(done)
