"""The admin JSON API: a blueprint mounted at ``DURABLE_JOBS_URL_PREFIX``.

Choices a user can rely on (the docs repeat them):

* Access is closed until configured. A request gets in when it carries
  ``Authorization: Bearer <token>`` with ``DURABLE_JOBS_ADMIN_TOKEN``
  (everything) or ``DURABLE_JOBS_ADMIN_READ_TOKEN`` (reads only), compared in
  constant time, or when the ``@jobs.admin_authorizer`` function returns
  exactly ``True`` (everything) or ``"read"`` (reads only) for it. A token is
  checked first: a valid token never calls the authorizer. A refused request
  that presented a bearer token gets 401 (the token is wrong); one that
  presented none gets 403 when an authorizer said no, 401 when only tokens
  are configured. With nothing configured every route answers 403 saying how
  to enable the API. A read-only caller gets 403 on any write.
* Writes (every method but GET, HEAD and OPTIONS) refuse, with 403 and
  whoever the caller is, what a page on another site could make a browser
  send: an ``Origin`` naming another host, a ``Sec-Fetch-Site`` other than
  ``same-origin`` or ``none``, a form or ``text/plain`` body. A write granted
  by the authorizer (the host app's cookies) must also carry
  ``Content-Type: application/json``, which a browser sends cross-site only
  after a CORS preflight that this API never grants. A write granted by a
  token needs no body: a browser never adds that header on its own.
* The access check runs before routing answers: an unknown path or method
  under the prefix gets 401/403 like any other request, and 404/405 only once
  the caller may use the API, so strangers learn nothing about its shape.
* Every answer under the prefix is JSON, errors included
  (``{"error": {"code", "message"}}``); a catch-all rule keeps unmatched paths
  and methods away from the app's own 404/405 handlers, and nothing here
  changes how the rest of the app answers.
* Parameters, bodies and answers are defined once, in :mod:`.schemas`; the
  routes validate with it and :mod:`.openapi` builds the served document from
  it. Job ids in paths are digits; anything else is not a job route (404).
  Digits outside 1..2**63-1 answer 400, so no id can overflow a database
  integer.
* Job data is shown as :func:`.masking.public_job` makes it: secrets masked,
  ``last_error`` bounded; in lists a large payload or result is a preview.
* ``GET {prefix}/health`` answers :func:`.health.health_report` for the
  answering process: 200 when healthy, 503 with the same body when not. It
  sits behind the same access check as every other route.
"""

from __future__ import annotations

import hmac
import json
import logging
import typing as t

from flask import Blueprint, Flask, current_app, g, jsonify, request
from werkzeug.exceptions import HTTPException
from werkzeug.routing import BaseConverter, Rule

from . import masking, openapi, schemas
from .errors import InvalidTransition, JobNotFound
from .extension import get_state
from .health import health_report
from .listing import BULK_ALLOWED, PAYLOAD_PREFIX
from .models import RUNNING
from .openapi import operation
from .schemas import echo

if t.TYPE_CHECKING:
    from flask import Response

    from .config import Settings
    from .extension import DurableJobs

logger = logging.getLogger("flask_durable_jobs")

BLUEPRINT_NAME = "durable_jobs_admin"
#: Endpoint of the catch-all rules that answer unmatched paths and methods.
UNMATCHED_ENDPOINT = f"{BLUEPRINT_NAME}.unmatched"

#: Methods that only read; every other method is a write.
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: Bodies a page on another site can make a browser send without a CORS
#: preflight (a form, ``fetch`` in no-cors mode); refused on every write.
CROSS_SITE_BODIES = frozenset(
    {"application/x-www-form-urlencoded", "multipart/form-data", "text/plain"}
)
#: ``Sec-Fetch-Site`` values of a request the API's own origin (or the user,
#: typing or bookmarking) made; a sibling subdomain (``same-site``) is another site.
OWN_SITE = frozenset({"same-origin", "none"})

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
_CHALLENGE = 'Bearer realm="flask-durable-jobs"'
_DEFAULT_PORTS = {"http": 80, "https": 443}


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


def _ext() -> DurableJobs:
    return get_state().ext


def _error_response(status: int, code: str, message: str, headers: t.Mapping[str, str]) -> Response:
    response = jsonify({"error": {"code": code, "message": message}})
    response.status_code = status
    response.headers.update(headers)
    return response


def _empty_response(status: int, headers: t.Mapping[str, str] | None = None) -> Response:
    response = current_app.response_class(status=status, headers=headers)
    response.headers.pop("Content-Type", None)
    return response


def _job_id(text: str) -> int:
    return schemas.validate_job_id(text)


def _query(model: type[schemas.M]) -> schemas.M:
    """The query string as ``model`` (the first value of a repeated parameter)."""
    return schemas.validate(model, request.args.to_dict())


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
    write = request.method not in READ_METHODS
    if write:
        _refuse_cross_site()
    role, by_token = g.durable_jobs_grant = _grant()  # whoami answers it
    if write and role == "read":
        raise ApiError(
            403,
            f"{request.method} is a write and this caller may only read"
            " (DURABLE_JOBS_ADMIN_READ_TOKEN, or an authorizer that returned \"read\")",
        )
    if write and not by_token and request.mimetype != "application/json":
        raise ApiError(
            403,
            "a write granted by the admin authorizer must send 'Content-Type:"
            " application/json' (a page on another site cannot, so this keeps the"
            " host app's cookies from acting for it)",
        )


def _grant() -> tuple[str, bool]:
    """``(role, by_token)``: ``"all"`` or ``"read"``, and whether a token granted it."""
    state = get_state()
    tokens = {"all": state.settings.admin_token, "read": state.settings.admin_read_token}
    authorizer = state.ext.authorizer
    configured = any(token is not None for token in tokens.values())
    if not configured and authorizer is None:
        raise ApiError(
            403,
            "the admin API is not enabled: set DURABLE_JOBS_ADMIN_TOKEN and send"
            " 'Authorization: Bearer <token>', or register a function with"
            " @jobs.admin_authorizer that returns True for requests to let in",
        )
    presented = _bearer_token()
    if presented is not None:
        raw = _raw_bytes(presented)
        for role, token in tokens.items():
            if token is not None and hmac.compare_digest(raw, token.encode("utf-8")):
                return role, True
    if authorizer is not None:
        verdict = authorizer()
        # Exactly True or "read": an authorizer that returns a user object or
        # another string by mistake must not open the API.
        if verdict is True:
            return "all", False
        if isinstance(verdict, str) and verdict == "read":
            return "read", False
    if configured and presented is not None:
        raise ApiError(
            401,
            "the bearer token is not valid",
            headers={"WWW-Authenticate": _CHALLENGE + ', error="invalid_token"'},
        )
    if configured and authorizer is None:
        scheme = request.headers.get("Authorization", "").strip().partition(" ")[0]
        message = (
            # a shell variable that was never set leaves "Bearer " with nothing after it
            "the 'Authorization: Bearer' header holds an empty token"
            if scheme.lower() == "bearer"
            else "this request has no 'Authorization: Bearer <token>' header"
        )
        raise ApiError(401, message, headers={"WWW-Authenticate": _CHALLENGE})
    raise ApiError(403, "the admin authorizer refused this request")


def _refuse_cross_site() -> None:
    """403 for a write that a page on another site could make a browser send."""
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site.strip().lower() not in OWN_SITE:
        raise ApiError(
            403,
            f"cross-site write refused: Sec-Fetch-Site is {echo(site)}; the admin API"
            " takes writes only from its own origin",
        )
    origin = request.headers.get("Origin")
    if origin is not None and not _same_host(origin):
        raise ApiError(
            403,
            f"cross-site write refused: Origin {echo(origin)} is not this server"
            f" ({echo(request.host)})",
        )
    if request.mimetype in CROSS_SITE_BODIES:
        raise ApiError(
            403,
            f"a {request.mimetype} body is refused on writes, since a page on another site"
            " can send one; send JSON with 'Content-Type: application/json', or no body",
        )


def _same_host(origin: str) -> bool:
    """``origin`` (``scheme://host[:port]``) names the host this request was sent to.

    The scheme is not compared: behind a proxy that ends TLS the app may see
    ``http`` while the browser says ``https``. ``"null"`` (a sandboxed or
    privacy-sensitive context) is never this server.
    """
    scheme, sep, rest = origin.strip().lower().partition("://")
    if not sep or scheme not in _DEFAULT_PORTS or not rest or "/" in rest:
        return False
    default = f":{_DEFAULT_PORTS[scheme]}"
    host = request.host.lower()
    return rest.removesuffix(default) == host.removesuffix(default)


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
    if isinstance(exc, schemas.Invalid):
        return _error_response(400, "bad_request", str(exc), {})
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


_JOB_ID = {"job_id": (schemas.JobId, "A job id. Not a whole number: 404; outside the range: 400.")}
_JOB_ERRORS = (400, 404, 409)


@blueprint.get("/stats", **_route_options)
@operation("getStats", "Counts by status and type, the oldest due job's age, and due jobs"
           " no handler here can run", responses={200: (schemas.Stats, "The counts.")})
def stats() -> Response:
    return jsonify(_ext().stats())


@blueprint.get("/health", **_route_options)
@operation("getHealth", "Whether this process's scheduler is alive, and the due backlog",
           query=schemas.HealthQuery, errors=(400,), responses={
               200: (schemas.Health, "Healthy."),
               503: (schemas.Health, "Unhealthy; problems says why."),
           })
def health() -> Response:
    max_due_age = _query(schemas.HealthQuery).max_due_age
    report = health_report(get_state(), max_due_age=max_due_age)
    response = jsonify(report)
    response.status_code = 200 if report["healthy"] else 503
    return response


@blueprint.get("/periodic", **_route_options)
@operation("listSchedules", "Recurring schedules registered in the answering process, with"
           " their last and next fire times",
           responses={200: (schemas.ScheduleList, "The schedules.")})
def list_schedules() -> Response:
    from .periodic import describe

    items = describe(get_state())
    for item in items:
        item["payload"] = masking.mask(item["payload"])
    return jsonify({"items": items})


@blueprint.get("/whoami", **_route_options)
@operation("whoAmI", "The caller's role: everything or reads only, and what granted it",
           responses={200: (schemas.WhoAmI, "The role.")})
def whoami() -> Response:
    role, by_token = g.durable_jobs_grant  # what _check_access granted this request
    return jsonify({"role": role, "via": "token" if by_token else "authorizer"})


@blueprint.get("/throughput", **_route_options)
@operation("getThroughput", "Jobs succeeded, retried and dead per minute, counted in the"
           " database", query=schemas.ThroughputQuery, errors=(400,),
           responses={200: (schemas.Throughput, "The counts per minute.")})
def get_throughput() -> Response:
    from .throughput import throughput

    return jsonify(throughput(get_state(), _query(schemas.ThroughputQuery).minutes))


@blueprint.get("/batches/<batch_id>", **_route_options)
@operation("getBatch", "Counts of a batch's jobs by status, and whether all have ended",
           path={"batch_id": (schemas.BatchId, "The id enqueue_batch() returned.")},
           errors=(404,), responses={200: (schemas.Batch, "The batch.")})
def get_batch(batch_id: str) -> Response:
    if len(batch_id) > schemas.MAX_BATCH_ID_CHARS:
        raise ApiError(404, "no such batch")
    status = _ext().batch_status(batch_id)
    if status is None:
        raise ApiError(404, f"no batch with id {echo(batch_id)}")
    return jsonify(status)


@blueprint.get("", strict_slashes=False, **_route_options)
@operation("listJobs", "List jobs, newest first (also served at the prefix plus '/')",
           query=schemas.ListQuery, more_query=(schemas.PAYLOAD_PARAMETER,), errors=(400,),
           responses={200: (schemas.JobList, "One page of jobs.")})
def list_jobs() -> Response:
    args = request.args.to_dict()
    known = schemas.ListQuery.model_fields
    unknown = sorted(
        name for name in args if name not in known and not name.startswith(PAYLOAD_PREFIX)
    )
    if unknown:
        raise ApiError(
            400, f"unknown parameter{'s' if len(unknown) > 1 else ''}"
            f" {', '.join(echo(name) for name in unknown)}; known: {', '.join(known)},"
            f" {PAYLOAD_PREFIX}<field>",
        )
    payload = {name: value for name, value in args.items() if name.startswith(PAYLOAD_PREFIX)}
    query = schemas.validate(
        schemas.ListQuery, {name: value for name, value in args.items() if name not in payload}
    )
    filters = {**query.model_dump(exclude={"cursor", "page", "per_page"}), **payload}
    try:
        found = _ext().list_page(
            cursor=query.cursor, page=query.page, per_page=query.per_page, **filters
        )
    except (TypeError, ValueError) as exc:
        raise ApiError(400, str(exc)) from None
    return jsonify(
        {
            "items": [masking.public_job(job, summary=True) for job in found.items],
            "page": None if query.cursor is not None else query.page or 1,
            "per_page": query.per_page,
            "total": found.total,
            "total_exact": found.total_exact,
            "next_cursor": found.next_cursor,
        }
    )


@blueprint.post("/bulk/<action>", **_route_options)
@operation("bulkAction", "Retry, cancel or delete many jobs: by ids or by the list filters",
           path={"action": (t.Literal["retry", "cancel", "delete"],
                            "retry (dead or cancelled -> pending), cancel (pending or"
                            " retrying -> cancelled) or delete (any status but running).")},
           body=schemas.BulkBody, errors=(400, 404),
           responses={200: (schemas.BulkResult, "How many jobs changed.")})
def bulk(action: str) -> Response:
    if action not in BULK_ALLOWED:
        raise ApiError(
            404, f"no bulk action {echo(action)}; the actions are {', '.join(BULK_ALLOWED)}"
        )
    data = request.get_json(silent=True) if request.is_json else None
    if not isinstance(data, dict):
        raise ApiError(
            400, "the request body must be a JSON object sent with 'Content-Type:"
            ' application/json\', like {"ids": [1, 2]} or {"filter": {"status": "dead"}}'
        )
    body = schemas.validate(schemas.BulkBody, data)
    if (body.ids is None) == (body.filter is None):
        raise ApiError(400, 'give "ids" or "filter" in the body, one of them')
    filters = {"ids": body.ids} if body.ids is not None else dict(body.filter or {})
    method = {"retry": _ext().retry_many, "cancel": _ext().cancel_many,
              "delete": _ext().delete_many}[action]
    try:
        changed = method(**filters)
    except (TypeError, ValueError) as exc:
        raise ApiError(400, str(exc)) from None
    return jsonify({"changed": changed})


@blueprint.get("/<durable_jobs_id:job_id>", **_route_options)
@operation("getJob", "One job, its payload and result whole", path=_JOB_ID,
           errors=(400, 404), responses={200: (schemas.Job, "The job.")})
def get_job(job_id: str) -> Response:
    number = _job_id(job_id)
    job = _ext().get(number)
    if job is None:
        raise JobNotFound(number)
    return jsonify(masking.public_job(job))


@blueprint.post("/<durable_jobs_id:job_id>/retry", **_route_options)
@operation("retryJob", "dead or cancelled -> pending, due now, attempts reset to 0",
           path=_JOB_ID, errors=_JOB_ERRORS,
           responses={200: (schemas.Job, "The job, now pending.")})
def retry_job(job_id: str) -> Response:
    return jsonify(masking.public_job(_ext().retry(_job_id(job_id))))


@blueprint.post("/<durable_jobs_id:job_id>/cancel", **_route_options)
@operation("cancelJob", "pending or retrying -> cancelled; running -> cancel requested",
           path=_JOB_ID, errors=_JOB_ERRORS,
           responses={200: (schemas.Job, "The job, now cancelled."),
                      202: (schemas.Job, "The job, still running: a cancel was requested;"
                            " it ends cancelled unless its handler returns normally.")})
def cancel_job(job_id: str) -> Response:
    job = _ext().cancel(_job_id(job_id))
    response = jsonify(masking.public_job(job))
    if job.status == RUNNING:
        response.status_code = 202
    return response


@blueprint.delete("/<durable_jobs_id:job_id>", **_route_options)
@operation("deleteJob", "Delete a job that is not running", path=_JOB_ID,
           errors=_JOB_ERRORS, responses={204: (None, "Deleted.")})
def delete_job(job_id: str) -> Response:
    _ext().delete(_job_id(job_id))
    return _empty_response(204)


@blueprint.post("/process", **_route_options)
@operation("processDue", "Run due jobs now, in this request, and return the counts",
           query=schemas.ProcessQuery, body=schemas.ProcessBody, errors=(400,),
           responses={200: (schemas.ProcessCounts, "What the run did.")})
def process() -> Response:
    return jsonify(_ext().process_due(_process_limit()))


def _process_limit() -> int | None:
    """``limit`` from the query string or the JSON body (not both), checked."""
    query = _query(schemas.ProcessQuery)
    if not request.get_data(cache=True):
        return query.limit
    # Only a body that says it is JSON is read as JSON.
    data = request.get_json(silent=True) if request.is_json else None
    if not isinstance(data, dict):
        raise ApiError(
            400, "the request body must be a JSON object sent with 'Content-Type:"
            ' application/json\', like {"limit": 10}'
        )
    if query.limit is not None and "limit" in data:
        raise ApiError(400, "give limit in the query string or in the JSON body, not both")
    if query.limit is not None:
        return query.limit
    return schemas.validate(schemas.ProcessBody, data).limit


_QUEUE = {"name": (schemas.QueueName, "A queue's name.")}


@blueprint.get("/queues", **_route_options)
@operation("listQueues", "Every queue with jobs or a stored state: paused or not, and its"
           " job counts", responses={200: (schemas.QueueList, "The queues.")})
def list_queues() -> Response:
    return jsonify({"items": _ext().queues()})


@blueprint.post("/queues/<name>/pause", **_route_options)
@operation("pauseQueue", "Stop every process from starting the queue's jobs (running ones"
           " finish)", path=_QUEUE, errors=(400,),
           responses={200: (schemas.Queue, "The queue, now paused.")})
def pause_queue(name: str) -> Response:
    return jsonify(_queue_action(_ext().pause_queue, name))


@blueprint.post("/queues/<name>/resume", **_route_options)
@operation("resumeQueue", "Let every process start the queue's jobs again", path=_QUEUE,
           errors=(400,), responses={200: (schemas.Queue, "The queue, now running.")})
def resume_queue(name: str) -> Response:
    return jsonify(_queue_action(_ext().resume_queue, name))


def _queue_action(action: t.Callable[[str], dict[str, t.Any]], name: str) -> dict[str, t.Any]:
    try:
        return action(name)
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None


@blueprint.get("/processes", **_route_options)
@operation("listProcesses", "The processes that run jobs, as their heartbeats recorded them"
           " (records unseen for three leases are removed)",
           responses={200: (schemas.ProcessList, "The processes.")})
def list_processes() -> Response:
    items = [{**p, "started_at": p["started_at"].isoformat(),
              "last_seen": p["last_seen"].isoformat()} for p in _ext().processes()]
    return jsonify({"items": items})


@blueprint.get("/openapi.json", **_route_options)
@operation("getOpenAPI", "This document", responses={
    200: ({"type": "object"}, "The OpenAPI document."),
})
def openapi_document() -> Response:
    routes = [
        (rule.rule, rule.methods or (), current_app.view_functions[rule.endpoint])
        for rule in current_app.url_map.iter_rules()
        if rule.endpoint.startswith(BLUEPRINT_NAME + ".") and rule.endpoint != UNMATCHED_ENDPOINT
    ]
    # json.dumps, not jsonify: the app's provider may sort keys, and the
    # document reads best in the order it was built (it is plain JSON data).
    document = json.dumps(openapi.build(routes, server_url=request.script_root or "/"))
    return current_app.response_class(document, mimetype="application/json")


def _unmatched(rest: str = "") -> Response:
    """404 for a path no route serves, 405 (or 204 for OPTIONS) for another method."""
    allowed = _allowed_methods()
    if not allowed:
        prefix = get_state().settings.url_prefix
        raise ApiError(
            404,
            f"no admin API route at {echo(request.path)} (job ids are whole numbers);"
            f" {prefix}/openapi.json lists the routes",
        )
    allow = ", ".join(allowed)
    if request.method == "OPTIONS":
        return _empty_response(204, {"Allow": allow})
    raise ApiError(
        405,
        f"{request.method} is not allowed at {echo(request.path)}; allowed: {allow}",
        headers={"Allow": allow},
    )
