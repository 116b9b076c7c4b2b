"""The OpenAPI 3.1 description of the admin API, served at ``{prefix}/openapi.json``.

It is built per app because the paths carry the app's
``DURABLE_JOBS_URL_PREFIX``. The test suite checks it against the routes the
blueprint serves and validates real responses against its schemas, so the two
cannot drift apart silently.
"""

from __future__ import annotations

import typing as t

from .models import STATUSES

OPENAPI_VERSION = "3.1.0"


def _nullable(schema: dict[str, t.Any]) -> dict[str, t.Any]:
    return {**schema, "type": [schema["type"], "null"]}


_DATETIME: dict[str, t.Any] = {"type": "string", "format": "date-time"}
_COUNT: dict[str, t.Any] = {"type": "integer", "minimum": 0}
_SCHEDULER_STATES = ("running", "stalled", "dead", "stopped", "disabled", "not_started")
_COUNTS_BY_STATUS: dict[str, t.Any] = {
    "type": "object",
    "properties": {status: _COUNT for status in STATUSES},
    "required": list(STATUSES),
    "additionalProperties": False,
}


def _schemas(last_error_max_chars: int) -> dict[str, t.Any]:
    return {
        "Error": {
            "type": "object",
            "properties": {
                "error": {
                    "type": "object",
                    "properties": {
                        "code": {
                            "type": "string",
                            "description": "Machine-readable, e.g. bad_request, unauthorized,"
                            " forbidden, not_found, method_not_allowed, conflict,"
                            " internal_error.",
                        },
                        "message": {"type": "string"},
                    },
                    "required": ["code", "message"],
                }
            },
            "required": ["error"],
        },
        "Job": {
            "type": "object",
            "description": "One job. Values under keys that look secret (containing"
            " password, token, secret, api_key or authorization) are replaced"
            ' by "********" at any depth of payload and result.',
            "properties": {
                "id": {"type": "integer", "minimum": 1},
                "job_type": {"type": "string"},
                "queue": {"type": "string"},
                "status": {"type": "string", "enum": list(STATUSES)},
                "payload": {"type": "object"},
                "result": {"description": "The handler's JSON result, or null."},
                "attempts": _COUNT,
                "max_attempts": {"type": "integer", "minimum": 1},
                "priority": {"type": "integer"},
                "run_at": _DATETIME,
                "last_error": {
                    "type": ["string", "null"],
                    "description": f"When longer than {last_error_max_chars:,} characters,"
                    " its beginning and end, that many characters in all, with a marker"
                    " between them saying how much was left out.",
                },
                "idempotency_key": {"type": ["string", "null"]},
                "created_at": _DATETIME,
                "updated_at": _DATETIME,
                "started_at": _nullable(_DATETIME),
                "finished_at": _nullable(_DATETIME),
                "lease_expires_at": _nullable(_DATETIME),
            },
            "required": [
                "id",
                "job_type",
                "queue",
                "status",
                "payload",
                "result",
                "attempts",
                "max_attempts",
                "priority",
                "run_at",
                "last_error",
                "idempotency_key",
                "created_at",
                "updated_at",
                "started_at",
                "finished_at",
            ],
        },
        "JobList": {
            "type": "object",
            "properties": {
                "items": {"type": "array", "items": {"$ref": "#/components/schemas/Job"}},
                "page": {"type": "integer", "minimum": 1},
                "per_page": {"type": "integer", "minimum": 1, "maximum": 200},
                "total": _COUNT,
            },
            "required": ["items", "page", "per_page", "total"],
        },
        "Stats": {
            "type": "object",
            "properties": {
                "by_status": _COUNTS_BY_STATUS,
                "by_type": {"type": "object", "additionalProperties": _COUNTS_BY_STATUS},
                "total": _COUNT,
                "oldest_due_age_seconds": {
                    "type": ["number", "null"],
                    "description": "Age of the longest-waiting due job (pending or"
                    " retrying with run_at <= now), or null when none is due.",
                },
                "unhandled": {
                    "type": "object",
                    "description": "Due jobs per type that the answering process has"
                    " no handler for.",
                    "additionalProperties": _COUNT,
                },
            },
            "required": ["by_status", "by_type", "total", "oldest_due_age_seconds", "unhandled"],
        },
        "Health": {
            "type": "object",
            "description": "The answering process: whether its scheduler is alive, and"
            " the due backlog of the whole database.",
            "properties": {
                "healthy": {"type": "boolean"},
                "problems": {
                    "type": "array",
                    "items": {"type": "string"},
                    "description": "Why the process is unhealthy; empty when healthy.",
                },
                "scheduler": {
                    "type": "string",
                    "enum": list(_SCHEDULER_STATES),
                    "description": "running; stalled (its due-job tick stopped firing),"
                    " dead (started here, no longer running) or stopped (stopped on"
                    " purpose): unhealthy; disabled (DURABLE_JOBS_SCHEDULER = False) or"
                    " not_started (a process that never runs it): healthy.",
                },
                "pid": {"type": "integer"},
                "worker_id": {
                    "type": ["string", "null"],
                    "description": "host:pid:suffix of this process's job runner; null"
                    " before it first ran.",
                },
                "started_at": _nullable(_DATETIME),
                "last_tick": _nullable(_DATETIME),
                "last_sweep": _nullable(_DATETIME),
                "stall_after_seconds": {"type": "number", "minimum": 0},
                "due_count": {
                    "type": ["integer", "null"],
                    "minimum": 0,
                    "description": "Due jobs (pending or retrying with run_at <= now);"
                    " null when the database could not be read.",
                },
                "oldest_due_age_seconds": {
                    "type": ["number", "null"],
                    "description": "Age of the longest-waiting due job; null when none"
                    " is due or the database could not be read.",
                },
                "checked_at": _DATETIME,
            },
            "required": [
                "healthy",
                "problems",
                "scheduler",
                "pid",
                "worker_id",
                "started_at",
                "last_tick",
                "last_sweep",
                "stall_after_seconds",
                "due_count",
                "oldest_due_age_seconds",
                "checked_at",
            ],
        },
        "Batch": {
            "type": "object",
            "description": "Jobs enqueued together by enqueue_batch().",
            "properties": {
                "batch_id": {"type": "string"},
                "by_status": _COUNTS_BY_STATUS,
                "total": _COUNT,
                "all_terminal": {
                    "type": "boolean",
                    "description": "Every job of the batch has succeeded, died or been"
                    " cancelled.",
                },
                "on_complete": {"type": ["string", "null"]},
                "completed_at": _nullable(_DATETIME),
            },
            "required": ["batch_id", "by_status", "total", "all_terminal", "on_complete",
                         "completed_at"],
        },
        "Schedule": {
            "type": "object",
            "description": "A recurring schedule registered in the answering process.",
            "properties": {
                "key": {"type": "string"},
                "job_type": {"type": "string"},
                "cron": {"type": "string"},
                "timezone": {"type": "string"},
                "payload": {"type": "object"},
                "last_fire_at": _nullable(_DATETIME),
                "next_fire_at": _nullable(_DATETIME),
            },
            "required": ["key", "job_type", "cron", "timezone", "payload", "last_fire_at",
                         "next_fire_at"],
        },
        "ScheduleList": {
            "type": "object",
            "properties": {
                "items": {"type": "array", "items": {"$ref": "#/components/schemas/Schedule"}},
            },
            "required": ["items"],
        },
        "ProcessCounts": {
            "type": "object",
            "properties": {
                "claimed": _COUNT,
                "succeeded": _COUNT,
                "retried": _COUNT,
                "dead": _COUNT,
            },
            "required": ["claimed", "succeeded", "retried", "dead"],
        },
    }


def _json(schema_name: str, description: str) -> dict[str, t.Any]:
    return {
        "description": description,
        "content": {
            "application/json": {"schema": {"$ref": f"#/components/schemas/{schema_name}"}}
        },
    }


def _errors(*statuses: int) -> dict[str, t.Any]:
    # 401, 403 and 500 can answer any route; each operation lists them too.
    return {str(status): {"$ref": f"#/components/responses/{status}"} for status in statuses}


def _integer_query(name: str, description: str, **bounds: int) -> dict[str, t.Any]:
    return {
        "name": name,
        "in": "query",
        "description": description,
        "schema": {"type": "integer", **bounds},
    }


def build(
    prefix: str,
    *,
    server_url: str = "/",
    max_per_page: int,
    default_per_page: int,
    max_page: int,
    max_job_id: int,
    max_process_limit: int,
    last_error_max_chars: int,
    max_due_age: int = 366 * 24 * 3600,
) -> dict[str, t.Any]:
    """The OpenAPI document for an admin API mounted at ``prefix``."""
    from . import __version__

    job_id = {
        "name": "job_id",
        "in": "path",
        "required": True,
        "description": "A job id. Not a whole number: 404; outside the range: 400.",
        "schema": {"type": "integer", "minimum": 1, "maximum": max_job_id},
    }
    common = (401, 403, 500)
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "flask-durable-jobs admin API",
            "version": __version__,
            "description": "Inspect and act on durable jobs. Every answer is JSON;"
            ' errors are {"error": {"code", "message"}}. Access needs'
            " 'Authorization: Bearer <DURABLE_JOBS_ADMIN_TOKEN>' or a function"
            " registered with @jobs.admin_authorizer that returns True for the"
            " request. Paths under the prefix that match no route answer 404 (405"
            " with an Allow header for a known path and another method), after"
            " the access check.",
        },
        "servers": [{"url": server_url}],
        "security": [{"bearerToken": []}],
        "paths": {
            prefix: {
                "get": {
                    "operationId": "listJobs",
                    "summary": "List jobs, newest first (also served at the prefix plus '/')",
                    "parameters": [
                        {
                            "name": "status",
                            "in": "query",
                            "schema": {"type": "string", "enum": list(STATUSES)},
                        },
                        {"name": "job_type", "in": "query", "schema": {"type": "string"}},
                        {"name": "queue", "in": "query", "schema": {"type": "string"}},
                        _integer_query("page", "Page number.", minimum=1, maximum=max_page),
                        _integer_query(
                            "per_page",
                            f"Jobs per page (default {default_per_page}).",
                            minimum=1,
                            maximum=max_per_page,
                        ),
                    ],
                    "responses": {
                        "200": _json("JobList", "One page of jobs."),
                        **_errors(400, *common),
                    },
                }
            },
            f"{prefix}/stats": {
                "get": {
                    "operationId": "getStats",
                    "summary": "Counts by status and type, the oldest due job's age,"
                    " and due jobs no handler here can run",
                    "responses": {"200": _json("Stats", "The counts."), **_errors(*common)},
                }
            },
            f"{prefix}/health": {
                "get": {
                    "operationId": "getHealth",
                    "summary": "Whether this process's scheduler is alive, and the due backlog",
                    "parameters": [
                        _integer_query(
                            "max_due_age",
                            "Also unhealthy when the oldest due job has waited longer than"
                            " this many seconds.",
                            minimum=1,
                            maximum=max_due_age,
                        )
                    ],
                    "responses": {
                        "200": _json("Health", "Healthy."),
                        "503": _json("Health", "Unhealthy; problems says why."),
                        **_errors(400, *common),
                    },
                }
            },
            f"{prefix}/periodic": {
                "get": {
                    "operationId": "listSchedules",
                    "summary": "Recurring schedules registered in the answering process, with"
                    " their last and next fire times",
                    "responses": {
                        "200": _json("ScheduleList", "The schedules."),
                        **_errors(*common),
                    },
                }
            },
            f"{prefix}/batches/{{batch_id}}": {
                "parameters": [{
                    "name": "batch_id",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string", "minLength": 1, "maxLength": 64},
                }],
                "get": {
                    "operationId": "getBatch",
                    "summary": "Counts of a batch's jobs by status, and whether all have ended",
                    "responses": {
                        "200": _json("Batch", "The batch."),
                        **_errors(404, *common),
                    },
                },
            },
            f"{prefix}/{{job_id}}": {
                "parameters": [job_id],
                "get": {
                    "operationId": "getJob",
                    "summary": "One job",
                    "responses": {
                        "200": _json("Job", "The job."),
                        **_errors(400, 404, *common),
                    },
                },
                "delete": {
                    "operationId": "deleteJob",
                    "summary": "Delete a job that is not running",
                    "responses": {
                        "204": {"description": "Deleted."},
                        **_errors(400, 404, 409, *common),
                    },
                },
            },
            f"{prefix}/{{job_id}}/retry": {
                "parameters": [job_id],
                "post": {
                    "operationId": "retryJob",
                    "summary": "dead or cancelled -> pending, due now, attempts reset to 0",
                    "responses": {
                        "200": _json("Job", "The job, now pending."),
                        **_errors(400, 404, 409, *common),
                    },
                },
            },
            f"{prefix}/{{job_id}}/cancel": {
                "parameters": [job_id],
                "post": {
                    "operationId": "cancelJob",
                    "summary": "pending or retrying -> cancelled",
                    "responses": {
                        "200": _json("Job", "The job, now cancelled."),
                        **_errors(400, 404, 409, *common),
                    },
                },
            },
            f"{prefix}/process": {
                "post": {
                    "operationId": "processDue",
                    "summary": "Run due jobs now, in this request, and return the counts",
                    "parameters": [
                        _integer_query(
                            "limit",
                            "Most jobs to claim (default DURABLE_JOBS_BATCH_SIZE). May be"
                            " given in the JSON body instead, not in both.",
                            minimum=1,
                            maximum=max_process_limit,
                        )
                    ],
                    "requestBody": {
                        "required": False,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {
                                        "limit": {
                                            "type": "integer",
                                            "minimum": 1,
                                            "maximum": max_process_limit,
                                        }
                                    },
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": _json("ProcessCounts", "What the run did."),
                        **_errors(400, *common),
                    },
                }
            },
            f"{prefix}/openapi.json": {
                "get": {
                    "operationId": "getOpenAPI",
                    "summary": "This document",
                    "responses": {
                        "200": {
                            "description": "The OpenAPI document.",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        },
                        **_errors(*common),
                    },
                }
            },
        },
        "components": {
            "schemas": _schemas(last_error_max_chars),
            "responses": {
                "400": _json("Error", "A bad parameter; the message names it and says why."),
                "401": {
                    **_json(
                        "Error",
                        "A token is configured and the request sent a wrong one, or sent"
                        " none while no authorizer is registered.",
                    ),
                    "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}},
                },
                "403": _json(
                    "Error",
                    "The authorizer refused a request that sent no bearer token, or"
                    " no access is configured at all.",
                ),
                "404": _json("Error", "No job with this id."),
                "409": _json("Error", "The job's status does not allow the action."),
                "500": _json("Error", "An unexpected failure; the server log has the details."),
            },
            "securitySchemes": {
                "bearerToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The value of DURABLE_JOBS_ADMIN_TOKEN.",
                }
            },
        },
    }
