"""The admin API's one schema definition: what requests may send, what answers hold.

The query and body models here validate requests (the routes in admin.py call
:func:`validate`, and a refusal is a 400 naming the parameter); the answer
models describe what the routes return. openapi.py builds the served document
from the JSON Schema of both, so the document and the validation cannot say
different things.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import typing as t

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from pydantic_core import PydanticCustomError, core_schema

from . import health, masking
from .models import STATUSES

if t.TYPE_CHECKING:
    from pydantic import GetCoreSchemaHandler

M = t.TypeVar("M", bound=BaseModel)

DEFAULT_PER_PAGE = 50
MAX_PER_PAGE = 200
#: Keeps ``(page - 1) * per_page`` far inside a 64-bit OFFSET.
MAX_PAGE = 2**31 - 1
#: The largest id a BIGINT (and SQLite's rowid) can hold.
MAX_JOB_ID = 2**63 - 1
#: Most jobs one ``POST {prefix}/process`` may claim; it runs inside the request.
MAX_PROCESS_LIMIT = 10_000
#: Largest ``max_due_age`` (seconds) the health route takes: a year.
MAX_DUE_AGE_SECONDS = 366 * 24 * 3600
#: Longest batch id (the column's size).
MAX_BATCH_ID_CHARS = 64

_ECHO_MAX_CHARS = 60


def echo(value: object) -> str:
    """``value`` for an error message: quoted, and short even if the request was not."""
    text = repr(value)
    return text if len(text) <= _ECHO_MAX_CHARS else text[:_ECHO_MAX_CHARS] + "..."


# -- parameter types ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class WholeNumber:
    """``Annotated[int, WholeNumber(lo, hi)]``: an integer from ``lo`` to ``hi``.

    Strict on purpose. From a query string only ASCII digits count: ``int()``
    would also take ``" 5"``, ``"+5"``, ``"5_0"`` and other scripts' digits,
    and a long run of digits is refused before it is converted. From a JSON
    body only a JSON integer counts (``true`` and ``2.0`` are mistakes).
    """

    lo: int
    hi: int
    text: bool = True
    nullable: bool = False

    def check(self, value: t.Any) -> int | None:
        if value is None and self.nullable:
            return None
        if self.text and isinstance(value, str):
            if value.isascii() and value.isdigit() and len(value) <= len(str(self.hi)):
                number = int(value)
                if self.lo <= number <= self.hi:
                    return number
        elif not self.text and type(value) is int and self.lo <= value <= self.hi:
            return value
        raise PydanticCustomError(
            "whole_number",
            "must be a whole number from {lo} to {hi}, got {got}",
            {"lo": self.lo, "hi": self.hi, "got": echo(value)},
        )

    def __get_pydantic_core_schema__(
        self, source: t.Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        number = core_schema.int_schema(ge=self.lo, le=self.hi)
        return core_schema.no_info_before_validator_function(
            self.check, core_schema.nullable_schema(number) if self.nullable else number
        )


@dataclasses.dataclass(frozen=True)
class FilterText:
    """``Annotated[str | None, FilterText()]``: a list filter, given or left out.

    Empty text would match nothing, and PostgreSQL cannot compare text
    holding NUL; both are a caller's mistake worth a 400.
    """

    def check(self, value: t.Any, info: core_schema.ValidationInfo) -> t.Any:
        if value == "":
            raise PydanticCustomError(
                "empty", "must not be empty; leave it out to match every {name}",
                {"name": info.field_name or "value"},
            )
        if isinstance(value, str) and "\x00" in value:
            raise PydanticCustomError("nul", "must not contain NUL characters")
        return value

    def __get_pydantic_core_schema__(
        self, source: t.Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.with_info_before_validator_function(
            self.check, core_schema.nullable_schema(core_schema.str_schema(min_length=1))
        )


@dataclasses.dataclass(frozen=True)
class OneOf:
    """``Annotated[str | None, OneOf(values)]``: one of a fixed set of words."""

    values: tuple[str, ...]

    def check(self, value: t.Any, info: core_schema.ValidationInfo) -> t.Any:
        value = FilterText().check(value, info)
        if value not in self.values:
            raise PydanticCustomError(
                "one_of", "must be one of {values}; got {got}",
                {"values": ", ".join(self.values), "got": echo(value)},
            )
        return value

    def __get_pydantic_core_schema__(
        self, source: t.Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.with_info_before_validator_function(
            self.check, core_schema.nullable_schema(core_schema.literal_schema(list(self.values)))
        )


JobId = t.Annotated[int, WholeNumber(1, MAX_JOB_ID)]
JOB_ID = TypeAdapter(JobId)
BatchId = t.Annotated[str, Field(min_length=1, max_length=MAX_BATCH_ID_CHARS)]
Count = t.Annotated[int, Field(ge=0)]
Timestamp = t.Annotated[dt.datetime, Field(description="ISO 8601, UTC.")]


def _words(values: t.Iterable[str]) -> t.Any:
    """For an answer's field: its JSON Schema lists the words it may hold."""
    return Field(json_schema_extra={"enum": list(values)})


class Invalid(ValueError):
    """A request parameter or body the API refuses; the message names it (400)."""


def validate(model: type[M], data: t.Any) -> M:
    """``data`` as ``model``, or :class:`Invalid` naming the first bad parameter."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise Invalid(describe(exc, model.__name__)) from None


def validate_job_id(text: str) -> int:
    try:
        return JOB_ID.validate_python(text)
    except ValidationError as exc:
        raise Invalid(describe(exc, "job id")) from None


def describe(exc: ValidationError, subject: str) -> str:
    """The first error of ``exc`` as ``"<parameter> <what is wrong>"``."""
    error = exc.errors(include_url=False)[0]
    name = ".".join(str(part) for part in error["loc"]) or subject
    if error["type"] in ("whole_number", "empty", "nul", "one_of"):
        return f"{name} {error['msg']}"
    # Pydantic's own words, for a shape no model here expects (a body that is
    # not an object, say).
    return f"{name}: {error['msg']}"


# -- requests ----------------------------------------------------------------------


class ListQuery(BaseModel):
    """Query parameters of ``GET {prefix}``, besides ``payload.<field>``; any other
    parameter is a 400 naming it."""

    status: t.Annotated[str | None, OneOf(STATUSES), Field(description="Only this status.")] = None
    job_type: t.Annotated[
        str | None, FilterText(), Field(description="Only this job type.")
    ] = None
    queue: t.Annotated[str | None, FilterText(), Field(description="Only this queue.")] = None
    owner: t.Annotated[
        str | None, FilterText(), Field(description="Only jobs enqueued with this owner.")
    ] = None
    idempotency_key: t.Annotated[
        str | None, FilterText(), Field(description="Only the job with this idempotency key.")
    ] = None
    batch_id: t.Annotated[
        str | None, FilterText(), Field(description="Only the jobs of this batch.")
    ] = None
    created_after: t.Annotated[
        str | None, FilterText(), Field(
            description="Only jobs created at or after this time (ISO 8601; UTC when it"
            " has no offset)."
        )
    ] = None
    created_before: t.Annotated[
        str | None, FilterText(), Field(
            description="Only jobs created before this time (ISO 8601; UTC when it has"
            " no offset)."
        )
    ] = None
    cursor: t.Annotated[
        str | None, FilterText(), Field(
            description="The next_cursor of the previous page: the next page, as fast at"
            " any depth as the first. Not together with page."
        )
    ] = None
    page: t.Annotated[
        int | None, WholeNumber(1, MAX_PAGE),
        Field(description="Page number (default 1); deep pages cost more, use cursor."),
    ] = None
    per_page: t.Annotated[
        int,
        WholeNumber(1, MAX_PER_PAGE),
        Field(description=f"Jobs per page (default {DEFAULT_PER_PAGE})."),
    ] = DEFAULT_PER_PAGE


#: How the list's ``payload.<field>`` parameter appears in the OpenAPI document
#: (a family of names, which a query model cannot declare).
PAYLOAD_PARAMETER: dict[str, t.Any] = {
    "name": "payload.<field>",
    "in": "query",
    "description": "Only jobs whose payload's top-level <field> equals this value in"
    " string form: a string as itself, a number or boolean as its JSON text (42, 2.5,"
    " true); null, objects and arrays never match. One such parameter at most.",
    "schema": {"type": "string", "minLength": 1},
}


class HealthQuery(BaseModel):
    """Query parameters of ``GET {prefix}/health``."""

    max_due_age: t.Annotated[
        int | None,
        WholeNumber(1, MAX_DUE_AGE_SECONDS),
        Field(
            description="Also unhealthy when the oldest due job has waited longer than"
            " this many seconds."
        ),
    ] = None


class ProcessQuery(BaseModel):
    """Query parameters of ``POST {prefix}/process``."""

    limit: t.Annotated[
        int | None,
        WholeNumber(1, MAX_PROCESS_LIMIT),
        Field(
            description="Most jobs to claim (default DURABLE_JOBS_BATCH_SIZE). May be"
            " given in the JSON body instead, not in both."
        ),
    ] = None


class ProcessBody(BaseModel):
    """The optional JSON body of POST {prefix}/process."""

    limit: t.Annotated[
        int | None, WholeNumber(1, MAX_PROCESS_LIMIT, text=False, nullable=True)
    ] = None


# -- answers -----------------------------------------------------------------------


class ErrorDetail(BaseModel):
    code: str = Field(
        description="Machine-readable: bad_request, unauthorized, forbidden, not_found,"
        " method_not_allowed, conflict, internal_error."
    )
    message: str = Field(description="For people: what was wrong and, where it helps, what to do.")


class Error(BaseModel):
    """Every error answer."""

    error: ErrorDetail


class _JobFields(BaseModel):
    id: int = Field(ge=1)
    job_type: str
    queue: str
    status: t.Annotated[str, _words(STATUSES)]
    attempts: Count
    max_attempts: int = Field(ge=1)
    priority: int
    run_at: Timestamp
    last_error: str | None = Field(
        description=f"When longer than {masking.LAST_ERROR_MAX_CHARS:,} characters, its"
        " beginning and end, that many characters in all, with a marker between them"
        " saying how much was left out."
    )
    idempotency_key: str | None
    created_at: Timestamp
    updated_at: Timestamp
    started_at: Timestamp | None
    finished_at: Timestamp | None
    lease_expires_at: Timestamp | None
    orphan_policy: str
    owner: str | None
    batch_id: str | None
    callback_url: str | None = Field(
        description="Where the job's completion is posted; its user and password masked."
    )
    callback_status: str | None
    callback_attempts: Count
    callback_error: str | None
    worker_id: str | None = Field(
        description="The process running the job (host, pid and a run id) while it is"
        " running; null otherwise."
    )
    progress: dict[str, t.Any] | None = Field(
        description="What the handler last reported through current_job().progress():"
        ' {"fraction", "message", "data", "at"}; null when it reported nothing.'
    )
    cancel_requested_at: Timestamp | None = Field(
        description="When a cancel was requested while the job ran (it then ends"
        " cancelled unless its handler returns normally); null otherwise."
    )


class Job(_JobFields):
    """One job. Values under keys that look secret (containing password, token,
    secret, api_key or authorization) are replaced by "********" at any depth of
    payload and result."""

    payload: dict[str, t.Any]
    result: t.Any = Field(description="The handler's JSON result, or null.")


_PREVIEW = (
    f"When its JSON text is longer than {masking.PREVIEW_CHARS:,} characters, a string:"
    " the text's beginning and a marker saying how long it is (the job's own route"
    " answers the whole)."
)


class JobSummary(_JobFields):
    """A job in a list: as one job, except that a large payload or result is a
    preview."""

    payload: dict[str, t.Any] | str = Field(description="The payload. " + _PREVIEW)
    result: t.Any = Field(description="The handler's JSON result, or null. " + _PREVIEW)
    payload_truncated: bool = Field(description="True when payload is a preview.")
    result_truncated: bool = Field(description="True when result is a preview.")


class JobList(BaseModel):
    items: list[JobSummary]
    page: int | None = Field(ge=1, description="The page number; null when cursor was given.")
    per_page: int = Field(ge=1, le=MAX_PER_PAGE)
    total: Count = Field(
        description="Jobs matching the filters, counted up to 10,000 (so no page counts"
        " a whole table); see total_exact."
    )
    total_exact: bool = Field(
        description="False when more than 10,000 jobs match: total is then 10,000."
    )
    next_cursor: str | None = Field(
        description="Pass as cursor for the next page; null on the last page."
    )


class CountsByStatus(BaseModel):
    model_config = ConfigDict(extra="forbid")

    pending: Count
    running: Count
    retrying: Count
    succeeded: Count
    dead: Count
    cancelled: Count


class Stats(BaseModel):
    by_status: CountsByStatus
    by_type: dict[str, CountsByStatus]
    total: Count
    oldest_due_age_seconds: float | None = Field(
        description="Age of the longest-waiting due job (pending or retrying with"
        " run_at <= now), or null when none is due."
    )
    unhandled: dict[str, Count] = Field(
        description="Due jobs per type that the answering process has no handler for."
    )


class DatabaseAnswer(BaseModel):
    """Whether the database answered the health probe in time."""

    ok: bool
    error: str | None = Field(
        description="Why not, in one line (the exception's type and first line); null when"
        " it answered."
    )


class SilentWorker(BaseModel):
    """A process whose every running job's lease has expired: nothing renews them."""

    worker_id: str = Field(description="host:pid:suffix, as the jobs' worker_id holds it.")
    lease_expired_seconds: float = Field(
        ge=0, description="Seconds since its newest lease ended."
    )


class UnseenProcess(BaseModel):
    """A registered process whose heartbeat has not renewed its record within a lease."""

    id: str = Field(description="host:pid:suffix, as the jobs it runs hold in worker_id.")
    last_seen_seconds: float = Field(ge=0, description="Seconds since its last heartbeat.")


class VacuumReading(BaseModel):
    """What keeps vacuum from the job table (PostgreSQL)."""

    dead_tuples: Count = Field(description="Dead row versions in the job table (approximate).")
    live_tuples: Count
    last_autovacuum_age_seconds: float | None = Field(
        description="Seconds since autovacuum last finished on the job table; null: never."
    )
    oldest_snapshot_pid: int | None = Field(
        description="The session holding the oldest snapshot in this database; null: none"
        " (or none this role may see: pg_read_all_stats shows every role's)."
    )
    oldest_snapshot_state: str | None
    oldest_snapshot_age_seconds: float | None = Field(
        description="Since when its transaction (or statement) runs. Beyond"
        " DURABLE_JOBS_HEALTH_SNAPSHOT_WARNING it is a warning."
    )
    oldest_snapshot_xid_age: int | None = Field(
        description="How many transaction ids old its snapshot is."
    )


class Health(BaseModel):
    """The answering process: whether its scheduler is alive, whether the database
    answers, and the due backlog and expired leases of the whole database."""

    healthy: bool
    problems: list[str] = Field(description="Why the process is unhealthy; empty when healthy.")
    warnings: list[str] = Field(
        default_factory=list,
        description="What an operator should look at that leaves the process healthy (a"
        " snapshot pinning vacuum).",
    )
    scheduler: t.Annotated[str, _words(health.SCHEDULER_STATES)] = Field(
        description="running; stalled (its due-job tick stopped firing), dead (started"
        " here, no longer running) or stopped (stopped on purpose): unhealthy; disabled"
        " (DURABLE_JOBS_SCHEDULER = False) or not_started (a process that never runs it):"
        " healthy."
    )
    pid: int
    worker_id: str | None = Field(
        description="host:pid:suffix of this process's job runner; null before it first ran."
    )
    started_at: Timestamp | None
    last_tick: Timestamp | None
    last_sweep: Timestamp | None
    stall_after_seconds: float = Field(ge=0)
    due_count: Count | None = Field(
        description="Due jobs (pending or retrying with run_at <= now); null when the"
        " database could not be read."
    )
    oldest_due_age_seconds: float | None = Field(
        description="Age of the longest-waiting due job; null when none is due or the"
        " database could not be read."
    )
    database: DatabaseAnswer = Field(
        description="Whether the database answered within DURABLE_JOBS_HEALTH_DATABASE_TIMEOUT;"
        " when it did not, the fields read from it are null."
    )
    expired_leases: Count | None = Field(
        description="Running jobs whose lease has expired (their process died, froze or"
        " was cut off), from every process; null when the database could not be read."
    )
    stale_expired_leases: Count | None = Field(
        description="Of those, the ones expired for longer than"
        " expired_lease_grace_seconds: the sweep should have recovered them. More than"
        " DURABLE_JOBS_HEALTH_MAX_EXPIRED_LEASES is unhealthy."
    )
    oldest_expired_lease_age_seconds: float | None = Field(
        description="Seconds since the oldest expired lease ended; null when none has"
        " expired or the database could not be read."
    )
    expired_lease_grace_seconds: float = Field(
        ge=0, description="DURABLE_JOBS_HEALTH_EXPIRED_LEASE_GRACE (default: two sweep"
        " intervals)."
    )
    silent_workers: list[SilentWorker] | None = Field(
        description="Processes not seen within their lease: every running job they hold"
        " has an expired lease. Null when the database could not be read."
    )
    processes: Count | None = Field(
        default=None,
        description="Processes in the registry (every process that runs the processor"
        " renews its record with its heartbeat); null when the database could not be read.",
    )
    unseen_processes: list[UnseenProcess] | None = Field(
        default=None,
        description="Registry records not renewed within a lease: the process froze or"
        " died (its record is removed after three leases). Null when the database could"
        " not be read.",
    )
    unwritten_outcomes: Count = Field(
        description="Finished jobs whose outcome this process keeps because the database"
        " did not take it; written once it answers. More than"
        " DURABLE_JOBS_HEALTH_MAX_UNWRITTEN is unhealthy."
    )
    vacuum: VacuumReading | None = Field(
        default=None,
        description="The job table's dead tuples and the oldest snapshot pinning vacuum;"
        " null on SQLite or when the database could not be read.",
    )
    checked_at: Timestamp


class Batch(BaseModel):
    """Jobs enqueued together by enqueue_batch()."""

    batch_id: str
    by_status: CountsByStatus
    total: Count
    all_terminal: bool = Field(
        description="Every job of the batch has succeeded, died or been cancelled."
    )
    on_complete: str | None
    completed_at: Timestamp | None


class Schedule(BaseModel):
    """A recurring schedule registered in the answering process (payload masked)."""

    key: str
    job_type: str
    cron: str
    timezone: str
    payload: dict[str, t.Any]
    queue: str | None
    priority: int | None
    last_fire_at: Timestamp | None
    next_fire_at: Timestamp | None


class ScheduleList(BaseModel):
    items: list[Schedule]


class ProcessCounts(BaseModel):
    claimed: Count
    succeeded: Count
    retried: Count
    dead: Count


# -- dashboard reads -------------------------------------------------------------

#: Longest window ``GET {prefix}/throughput`` counts, in minutes (a day).
MAX_THROUGHPUT_MINUTES = 24 * 60


class ThroughputQuery(BaseModel):
    """Query parameters of ``GET {prefix}/throughput``."""

    minutes: t.Annotated[
        int,
        WholeNumber(1, MAX_THROUGHPUT_MINUTES),
        Field(description="How many minutes back to count, the current one included."),
    ] = 60


class ThroughputBucket(BaseModel):
    minute: Timestamp = Field(description="The minute's start.")
    succeeded: Count
    retried: Count = Field(
        description="Jobs now waiting for a retry whose last attempt failed in this minute."
    )
    dead: Count


class ThroughputTotals(BaseModel):
    succeeded: Count
    retried: Count
    dead: Count


class Throughput(BaseModel):
    """Jobs that ended (and attempts that failed into a retry) per minute."""

    since: Timestamp
    minutes: int = Field(ge=1, le=MAX_THROUGHPUT_MINUTES)
    buckets: list[ThroughputBucket] = Field(description="One per minute, oldest first.")
    totals: ThroughputTotals


class WhoAmI(BaseModel):
    """What the caller may do, so a client can offer only what will be allowed."""

    role: t.Annotated[str, _words(("all", "read"))] = Field(
        description="all (reads and writes) or read (reads only; writes answer 403)."
    )
    via: t.Annotated[str, _words(("token", "authorizer"))] = Field(
        description="token (a bearer token) or authorizer (the app's admin_authorizer)."
    )


# -- queues and processes ------------------------------------------------------------

QueueName = t.Annotated[str, Field(min_length=1, max_length=100)]


class Queue(BaseModel):
    """A queue that has jobs or a stored state."""

    name: str
    paused: bool = Field(description="No process starts its jobs; running ones finish.")
    counts: CountsByStatus


class QueueList(BaseModel):
    items: list[Queue]


class ProcessRecord(BaseModel):
    """A process that runs the job processor, as its heartbeat last recorded it."""

    id: str = Field(description="host:pid:suffix, as the jobs it runs hold in worker_id.")
    host: str
    pid: int
    started_at: Timestamp
    last_seen: Timestamp
    queues: list[str] | None = Field(description="The queues it works; null: every queue.")
    concurrency: Count = Field(description="Its handler threads.")
    version: str = Field(description="Its flask-durable-jobs version.")
    jobs_in_flight: Count = Field(description="Jobs it held at its last heartbeat.")


class ProcessList(BaseModel):
    items: list[ProcessRecord]


#: Most ids one bulk request may name.
MAX_BULK_IDS = 10_000


class BulkBody(BaseModel):
    """The JSON body of ``POST {prefix}/bulk/<action>``: ``ids`` or ``filter``, not both."""

    model_config = ConfigDict(extra="forbid")

    ids: list[t.Annotated[int, WholeNumber(1, MAX_JOB_ID, text=False)]] | None = Field(
        default=None, max_length=MAX_BULK_IDS,
        description=f"The jobs to act on (at most {MAX_BULK_IDS:,}).",
    )
    filter: dict[str, t.Any] | None = Field(
        default=None,
        description="The list filters, named as the list's query parameters (status,"
        " job_type, queue, owner, idempotency_key, batch_id, created_after,"
        ' created_before, "payload.<field>") or ids; at least one.',
    )


class BulkResult(BaseModel):
    changed: Count = Field(
        description="Jobs changed; matching jobs whose status does not allow the action"
        " (or that another process held at that moment) are skipped."
    )
