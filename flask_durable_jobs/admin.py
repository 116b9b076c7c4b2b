"""The admin JSON API: a blueprint mounted at ``DURABLE_JOBS_URL_PREFIX``.

Choices a user can rely on (the docs repeat them):

* Access is closed until configured. A request gets in when it carries
  ``Authorization: Bearer <DURABLE_JOBS_ADMIN_TOKEN>`` (compared in constant
  time) or when the ``@jobs.admin_authorizer`` function returns exactly
  ``True`` for it. The token is checked first: a valid token never calls the
  authorizer. A refused request that presented a bearer token gets 401 (the
  token is wrong); one that presented none gets 403 when an authorizer said
  no, 401 when only a token is configured. With neither configured every
  route answers 403 saying how to enable the API.
* The access check runs before routing answers: an unknown path or method
  under the prefix gets 401/403 like any other request, and 404/405 only once
  the caller may use the API, so strangers learn nothing about its shape.
* Every answer under the prefix is JSON, errors included
  (``{"error": {"code", "message"}}``); a catch-all rule keeps unmatched paths
  and methods away from the app's own 404/405 handlers, and nothing here
  changes how the rest of the app answers.
* Job ids in paths are digits; anything else is not a job route (404). Digits
  outside 1..2**63-1 answer 400, so no id can overflow a database integer.
* ``payload`` and ``result`` are masked (:mod:`.masking`); ``last_error`` is
  cut to :data:`LAST_ERROR_MAX_CHARS` characters (plus a marker) so one
  runaway traceback cannot bloat a page of jobs.
* ``GET {prefix}/health`` describes the answering process (see
  :func:`health_report`): 200 when healthy, 503 with the same body when not.
  It sits behind the same access check as every other route.
"""

from __future__ import annotations

import datetime as dt
import hmac
import json
import logging
import os
import typing as t

from flask import Blueprint, Flask, current_app, jsonify, request
from werkzeug.exceptions import HTTPException
from werkzeug.routing import BaseConverter, Rule

from . import masking, openapi
from .errors import InvalidTransition, JobNotFound
from .models import STATUSES, UTC
from .scheduler import AFTER_FORK, NEVER

if t.TYPE_CHECKING:
    from flask import Response

    from .config import Settings
    from .extension import DurableJobs, State
    from .models import Job

logger = logging.getLogger("flask_durable_jobs")

BLUEPRINT_NAME = "durable_jobs_admin"
#: Endpoint of the catch-all rules that answer unmatched paths and methods.
UNMATCHED_ENDPOINT = f"{BLUEPRINT_NAME}.unmatched"

#: ``last_error`` longer than this is shown as its first and last parts with a
#: marker between them: the exception's type and message lead, and a traceback
#: ends with the innermost frames, so both ends are what an operator needs.
LAST_ERROR_MAX_CHARS = masking.LAST_ERROR_MAX_CHARS
DEFAULT_PER_PAGE = 50
MAX_PER_PAGE = 200
#: Keeps ``(page - 1) * per_page`` far inside a 64-bit OFFSET.
MAX_PAGE = 2**31 - 1
#: The largest id a BIGINT (and SQLite's rowid) can hold.
MAX_JOB_ID = 2**63 - 1
#: Most jobs one ``POST {prefix}/process`` may claim; it runs inside the request.
MAX_PROCESS_LIMIT = 10_000
#: A running scheduler whose due-job tick has not fired for this many poll
#: intervals, and at least :data:`HEALTH_MIN_STALL_SECONDS`, is stalled.
HEALTH_STALL_INTERVALS = 3
HEALTH_MIN_STALL_SECONDS = 5.0
#: Largest ``max_due_age`` (seconds) the health route takes: a year.
MAX_DUE_AGE_SECONDS = 366 * 24 * 3600

_ERROR_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    500: "internal_error",
}
_ROUTED_METHODS = ("GET", "POST", "DELETE")
_ECHO_MAX_CHARS = 60
_CHALLENGE = 'Bearer realm="flask-durable-jobs"'


class ApiError(Exception):
    """An answer other than success; rendered as the JSON error body."""

    def __init__(
        self, status: int, message: str, *, headers: t.Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


class _JobIdConverter(BaseConverter):
    """Digits only, kept as text: the view checks the range and answers 400.

    Converting here would turn an out-of-range id into "no route" (werkzeug
    treats a converter's refusal as a failed match for the whole URL).
    """

    regex = "[0-9]+"


class _RestConverter(BaseConverter):
    """Whatever is left of the path, empty segments included.

    Unlike ``path`` it also matches text starting with ``/``, so ``//`` under
    the prefix reaches the catch-all instead of werkzeug's merge-slashes
    redirect (an HTML page).
    """

    regex = r"[\s\S]+"  # "." would stop at a newline (%0A)
    part_isolating = False
    weight = 1000


blueprint = Blueprint(BLUEPRINT_NAME, __name__)

# Automatic OPTIONS answers are empty text/html; the catch-all answers OPTIONS
# itself (204 with Allow), after the access check.
_route_options: dict[str, t.Any] = {"provide_automatic_options": False}


def register(app: Flask, ext: DurableJobs, settings: Settings) -> None:
    """Mount the admin API on ``app`` at ``settings.url_prefix``."""
    app.url_map.converters["durable_jobs_id"] = _JobIdConverter
    app.url_map.converters["durable_jobs_rest"] = _RestConverter
    app.register_blueprint(blueprint, url_prefix=settings.url_prefix)
    # Added after the blueprint's rules so that, for one path, a real route
    # wins and these catch what is left. ``methods=None`` matches every
    # method, which Flask's add_url_rule cannot express.
    for path in (settings.url_prefix, settings.url_prefix + "/<durable_jobs_rest:rest>"):
        app.url_map.add(Rule(path, endpoint=UNMATCHED_ENDPOINT, methods=None, strict_slashes=False))
    app.view_functions[UNMATCHED_ENDPOINT] = _unmatched


# -- helpers ---------------------------------------------------------------


def _state() -> State:
    return t.cast("State", current_app.extensions["durable_jobs"])


def _ext() -> DurableJobs:
    return _state().ext


def _echo(value: object) -> str:
    """``value`` for an error message: quoted, and short even if the request was not."""
    text = repr(value)
    return text if len(text) <= _ECHO_MAX_CHARS else text[:_ECHO_MAX_CHARS] + "..."


def _error_response(status: int, code: str, message: str, headers: t.Mapping[str, str]) -> Response:
    response = jsonify({"error": {"code": code, "message": message}})
    response.status_code = status
    response.headers.update(headers)
    return response


def _empty_response(status: int, headers: t.Mapping[str, str] | None = None) -> Response:
    response = current_app.response_class(status=status, headers=headers)
    response.headers.pop("Content-Type", None)
    return response


def _job_json(job: Job) -> dict[str, t.Any]:
    """The job as the API shows it: secrets masked, ``last_error`` bounded."""
    return masking.public_job(job)


def _parse_int(name: str, text: str, *, minimum: int, maximum: int) -> int:
    # Strict on purpose: int() would also take " 5", "+5", "5_0" and other scripts' digits.
    if text.isascii() and text.isdigit() and len(text) <= len(str(maximum)):
        value = int(text)
        if minimum <= value <= maximum:
            return value
    raise ApiError(
        400, f"{name} must be a whole number from {minimum} to {maximum}, got {_echo(text)}"
    )


def _int_arg(name: str, default: int, *, maximum: int) -> int:
    text = request.args.get(name)
    return default if text is None else _parse_int(name, text, minimum=1, maximum=maximum)


def _text_arg(name: str) -> str | None:
    value = request.args.get(name)
    if value is None:
        return None
    if not value:
        raise ApiError(400, f"{name} must not be empty; leave it out to match every {name}")
    if "\x00" in value:
        raise ApiError(400, f"{name} must not contain NUL characters")
    return value


def _job_id(text: str) -> int:
    return _parse_int("job id", text, minimum=1, maximum=MAX_JOB_ID)


def _bearer_token() -> str | None:
    scheme, _, credentials = request.headers.get("Authorization", "").strip().partition(" ")
    credentials = credentials.strip()
    return credentials if scheme.lower() == "bearer" and credentials else None


def _raw_bytes(header_value: str) -> bytes:
    # WSGI hands headers over as latin-1-decoded text; this undoes that.
    try:
        return header_value.encode("latin-1")
    except UnicodeEncodeError:
        return header_value.encode("utf-8")


def _allowed_methods() -> list[str]:
    """Methods some real admin route serves at this request's path."""
    adapter = current_app.create_url_adapter(request)
    allowed: set[str] = set()
    if adapter is None:  # pragma: no cover - only without a request
        return []
    for method in _ROUTED_METHODS:
        try:
            endpoint, _ = adapter.match(method=method)
        except HTTPException:
            continue
        if endpoint != UNMATCHED_ENDPOINT:
            allowed.add(method)
    if "GET" in allowed:
        allowed.add("HEAD")
    if allowed:
        allowed.add("OPTIONS")
    return sorted(allowed)


# -- access, errors ----------------------------------------------------------


@blueprint.before_request
def _check_access() -> None:
    """Let the request in, or raise the 401/403 the module docstring describes."""
    state = _state()
    token = state.settings.admin_token
    authorizer = state.ext._admin_authorizer
    if token is None and authorizer is None:
        raise ApiError(
            403,
            "the admin API is not enabled: set DURABLE_JOBS_ADMIN_TOKEN and send"
            " 'Authorization: Bearer <token>', or register a function with"
            " @jobs.admin_authorizer that returns True for requests to let in",
        )
    presented = _bearer_token()
    if (
        token is not None
        and presented is not None
        and hmac.compare_digest(_raw_bytes(presented), token.encode("utf-8"))
    ):
        return
    # Exactly True: an authorizer that returns a user object or a string by
    # mistake must not open the API.
    if authorizer is not None and authorizer() is True:
        return
    if token is not None and presented is not None:
        raise ApiError(
            401,
            "the bearer token is not valid",
            headers={"WWW-Authenticate": _CHALLENGE + ', error="invalid_token"'},
        )
    if token is not None and authorizer is None:
        raise ApiError(
            401,
            "this request has no 'Authorization: Bearer <token>' header",
            headers={"WWW-Authenticate": _CHALLENGE},
        )
    raise ApiError(403, "the admin authorizer refused this request")


@blueprint.after_request
def _no_store(response: Response) -> Response:
    # Job data and the access decision are per caller; keep them out of caches.
    response.headers.setdefault("Cache-Control", "no-store")
    return response


@blueprint.errorhandler(Exception)
def _handle_error(exc: Exception) -> Response:
    """Render every failure under the prefix as the JSON error body, never a traceback."""
    if isinstance(exc, ApiError):
        return _error_response(exc.status, _ERROR_CODES[exc.status], exc.message, exc.headers)
    if isinstance(exc, JobNotFound):
        return _error_response(404, "not_found", str(exc), {})
    if isinstance(exc, InvalidTransition):
        # The message names the job's status and the statuses the action needs.
        return _error_response(409, "conflict", str(exc), {})
    if isinstance(exc, HTTPException) and exc.code is not None:
        # Raised by werkzeug (a body too large) or by an authorizer calling abort().
        headers = {key: value for key, value in exc.get_headers() if key.lower() != "content-type"}
        code = _ERROR_CODES.get(exc.code) or exc.name.lower().replace(" ", "_")
        return _error_response(exc.code, code, exc.description or exc.name, headers)
    job_id = (request.view_args or {}).get("job_id")
    logger.exception(
        "admin API: %s %s failed%s",
        request.method,
        request.path,
        f" (job id {job_id})" if job_id is not None else "",
    )
    return _error_response(
        500, "internal_error", "the server failed to answer; its log has the details", {}
    )


# -- routes ------------------------------------------------------------------


@blueprint.get("/stats", **_route_options)
def stats() -> Response:
    return jsonify(_ext().stats())


def health_report(state: State, *, max_due_age: int | None = None) -> dict[str, t.Any]:
    """This process's scheduler and the due backlog, with a ``healthy`` verdict.

    ``scheduler`` is one of:

    * ``running``: its APScheduler runs and the due-job tick fired recently;
    * ``stalled``: its APScheduler runs but the tick has not fired for
      ``stall_after_seconds``;
    * ``dead``: it was started here and its APScheduler no longer runs;
    * ``stopped``: it should run here (it started at ``init_app``) and was
      stopped (``jobs.stop()``, or the interpreter is exiting);
    * ``disabled``: ``DURABLE_JOBS_SCHEDULER = False`` and none was started;
    * ``not_started``: a process that never runs it (a ``flask`` command such
      as ``flask jobs health`` itself, gunicorn's master before the fork).

    The last two are healthy: nothing here is meant to tick. The process is
    unhealthy when the scheduler is ``stalled``, ``dead`` or ``stopped``, when
    the backlog cannot be read, or when the oldest due job has waited longer
    than ``max_due_age`` seconds (given). ``problems`` says why, in words.

    The tick proves that the scheduler fires, not that a processor loop
    already inside a slow statement moves on: ``max_due_age`` catches that,
    and work stuck anywhere, from any process.
    """
    settings = state.settings
    now = dt.datetime.now(UTC)
    stall_after = max(HEALTH_STALL_INTERVALS * settings.poll_interval, HEALTH_MIN_STALL_SECONDS)
    problems: list[str] = []
    scheduler = state.scheduler
    if scheduler is not None:
        last = scheduler.last_tick or scheduler.started_at
        silent = 0.0 if last is None else (now - last).total_seconds()
        if not scheduler.running:
            status = "dead"
            problems.append("the scheduler started in this process is no longer running")
        elif silent > stall_after:
            status = "stalled"
            problems.append(
                f"the scheduler's due-job tick last fired {silent:.1f} s ago"
                f" (stalled after {stall_after:g} s)"
            )
        else:
            status = "running"
    elif not settings.scheduler:
        status = "disabled"
    elif state.start_policy in (NEVER, AFTER_FORK):
        status = "not_started"
    else:
        status = "stopped"
        problems.append("the scheduler of this process was stopped")

    due_count: int | None = None
    oldest: float | None = None
    try:
        due_count, oldest = state.store.due_backlog(state.now())
    except Exception as exc:
        logger.warning("health: reading the due backlog failed", exc_info=True)
        problems.append(
            f"the due backlog could not be read ({type(exc).__name__}); the log has the details"
        )
    if max_due_age is not None and oldest is not None and oldest > max_due_age:
        problems.append(
            f"the oldest due job has waited {oldest:.1f} s (more than max_due_age,"
            f" {max_due_age} s)"
        )

    runner = state._runner
    return {
        "healthy": not problems,
        "problems": problems,
        "scheduler": status,
        "pid": os.getpid(),
        "worker_id": None if runner is None else runner.worker_id,
        "started_at": _iso(None if scheduler is None else scheduler.started_at),
        "last_tick": _iso(None if scheduler is None else scheduler.last_tick),
        "last_sweep": _iso(None if scheduler is None else scheduler.last_sweep),
        "stall_after_seconds": stall_after,
        "due_count": due_count,
        "oldest_due_age_seconds": oldest,
        "checked_at": now.isoformat(),
    }


def _iso(value: dt.datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat()


@blueprint.get("/health", **_route_options)
def health() -> Response:
    text = request.args.get("max_due_age")
    max_due_age = None if text is None else _parse_int(
        "max_due_age", text, minimum=1, maximum=MAX_DUE_AGE_SECONDS
    )
    report = health_report(_state(), max_due_age=max_due_age)
    response = jsonify(report)
    response.status_code = 200 if report["healthy"] else 503
    return response


@blueprint.get("/periodic", **_route_options)
def list_schedules() -> Response:
    from .periodic import describe

    return jsonify({"items": describe(_state())})


@blueprint.get("/batches/<batch_id>", **_route_options)
def get_batch(batch_id: str) -> Response:
    if len(batch_id) > 64:
        raise ApiError(404, "no such batch")
    status = _ext().batch_status(batch_id)
    if status is None:
        raise ApiError(404, f"no batch with id {_echo(batch_id)}")
    return jsonify(status)


@blueprint.get("", strict_slashes=False, **_route_options)
def list_jobs() -> Response:
    status = _text_arg("status")
    if status is not None and status not in STATUSES:
        raise ApiError(400, f"status must be one of {', '.join(STATUSES)}; got {_echo(status)}")
    job_type = _text_arg("job_type")
    queue = _text_arg("queue")
    page = _int_arg("page", 1, maximum=MAX_PAGE)
    per_page = _int_arg("per_page", DEFAULT_PER_PAGE, maximum=MAX_PER_PAGE)
    items, total = _ext().list_jobs(
        status=status, job_type=job_type, queue=queue, page=page, per_page=per_page
    )
    return jsonify(
        {
            "items": [_job_json(job) for job in items],
            "page": page,
            "per_page": per_page,
            "total": total,
        }
    )


@blueprint.get("/<durable_jobs_id:job_id>", **_route_options)
def get_job(job_id: str) -> Response:
    number = _job_id(job_id)
    job = _ext().get(number)
    if job is None:
        raise JobNotFound(number)
    return jsonify(_job_json(job))


@blueprint.post("/<durable_jobs_id:job_id>/retry", **_route_options)
def retry_job(job_id: str) -> Response:
    return jsonify(_job_json(_ext().retry(_job_id(job_id))))


@blueprint.post("/<durable_jobs_id:job_id>/cancel", **_route_options)
def cancel_job(job_id: str) -> Response:
    return jsonify(_job_json(_ext().cancel(_job_id(job_id))))


@blueprint.delete("/<durable_jobs_id:job_id>", **_route_options)
def delete_job(job_id: str) -> Response:
    _ext().delete(_job_id(job_id))
    return _empty_response(204)


@blueprint.post("/process", **_route_options)
def process() -> Response:
    limit = _process_limit()
    return jsonify(_ext().process_due(limit))


def _process_limit() -> int | None:
    """``limit`` from the query string or the JSON body (not both), checked."""
    query = request.args.get("limit")
    body: t.Any = None
    if request.get_data(cache=True):
        body = request.get_json(force=True, silent=True)
        if not isinstance(body, dict):
            raise ApiError(400, 'the request body must be a JSON object, like {"limit": 10}')
    if query is not None and body is not None and "limit" in body:
        raise ApiError(400, "give limit in the query string or in the JSON body, not both")
    if query is not None:
        return _parse_int("limit", query, minimum=1, maximum=MAX_PROCESS_LIMIT)
    if body is None or body.get("limit") is None:
        return None
    limit = body["limit"]
    # bool is an int subclass; {"limit": true} is a mistake, not 1.
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PROCESS_LIMIT:
        raise ApiError(
            400, f"limit must be a whole number from 1 to {MAX_PROCESS_LIMIT}, got {_echo(limit)}"
        )
    return limit


@blueprint.get("/openapi.json", **_route_options)
def openapi_document() -> Response:
    # json.dumps, not jsonify: the app's provider may sort keys, and the
    # document reads best in the order it was written (it is plain JSON data).
    document = json.dumps(
        openapi.build(
            _state().settings.url_prefix,
            server_url=request.script_root or "/",
            max_per_page=MAX_PER_PAGE,
            default_per_page=DEFAULT_PER_PAGE,
            max_page=MAX_PAGE,
            max_job_id=MAX_JOB_ID,
            max_process_limit=MAX_PROCESS_LIMIT,
            last_error_max_chars=LAST_ERROR_MAX_CHARS,
            max_due_age=MAX_DUE_AGE_SECONDS,
        )
    )
    return current_app.response_class(document, mimetype="application/json")


def _unmatched(rest: str = "") -> Response:
    """404 for a path no route serves, 405 (or 204 for OPTIONS) for another method."""
    allowed = _allowed_methods()
    if not allowed:
        prefix = _state().settings.url_prefix
        raise ApiError(
            404,
            f"no admin API route at {_echo(request.path)} (job ids are whole numbers);"
            f" {prefix}/openapi.json lists the routes",
        )
    allow = ", ".join(allowed)
    if request.method == "OPTIONS":
        return _empty_response(204, {"Allow": allow})
    raise ApiError(
        405,
        f"{request.method} is not allowed at {_echo(request.path)}; allowed: {allow}",
        headers={"Allow": allow},
    )
