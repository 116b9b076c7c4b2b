"""The OpenAPI 3.1 description of the admin API, served at ``{prefix}/openapi.json``.

Nothing here is written twice. Each admin view declares its operation with
:func:`operation` (its query, body and answer models from :mod:`.schemas`);
:func:`build` walks the routes the app really serves, and the models' JSON
Schema becomes the parameters and the components. The document is built per
app because the paths carry the app's ``DURABLE_JOBS_URL_PREFIX``.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import typing as t

from pydantic import BaseModel, TypeAdapter
from pydantic.json_schema import GenerateJsonSchema, models_json_schema

from . import schemas

if t.TYPE_CHECKING:
    from pydantic_core import CoreSchema

OPENAPI_VERSION = "3.1.0"
REF_TEMPLATE = "#/components/schemas/{model}"

F = t.TypeVar("F", bound=t.Callable[..., t.Any])
#: An answer's content: a model, a literal JSON Schema, or None for no body.
Content = t.Union[type[BaseModel], dict[str, t.Any], None]  # noqa: UP007 (a runtime alias)

#: Statuses any route may answer; each operation lists them.
COMMON_ERRORS = (401, 403, 500)


@dataclasses.dataclass(frozen=True)
class Operation:
    """What the document says about one view."""

    operation_id: str
    summary: str
    responses: t.Mapping[int, tuple[Content, str]]
    errors: tuple[int, ...] = ()
    query: type[BaseModel] | None = None
    body: type[BaseModel] | None = None
    #: path parameter name -> (its type, as for a TypeAdapter; description)
    path: t.Mapping[str, tuple[t.Any, str]] = dataclasses.field(default_factory=dict)
    #: query parameters no model can declare (a family of names), as written
    more_query: tuple[dict[str, t.Any], ...] = ()


#: Every declared view, by view function.
OPERATIONS: dict[t.Callable[..., t.Any], Operation] = {}


def operation(
    operation_id: str,
    summary: str,
    *,
    responses: t.Mapping[int, tuple[Content, str]],
    errors: tuple[int, ...] = (),
    query: type[BaseModel] | None = None,
    body: type[BaseModel] | None = None,
    path: t.Mapping[str, tuple[t.Any, str]] | None = None,
    more_query: tuple[dict[str, t.Any], ...] = (),
) -> t.Callable[[F], F]:
    """Declare the view's operation for the document; the view is unchanged."""

    def declare(view: F) -> F:
        OPERATIONS[view] = Operation(
            operation_id, summary, responses, errors, query, body, dict(path or {}),
            more_query,
        )
        return view

    return declare


class _Untitled(GenerateJsonSchema):
    """Pydantic's JSON Schema without a "title" on every property (the name says it)."""

    def field_title_should_be_set(self, schema: CoreSchema) -> bool:
        return False


@functools.cache
def _components(models: tuple[type[BaseModel], ...]) -> dict[str, t.Any]:
    _, top = models_json_schema(
        [(model, "validation") for model in models],
        ref_template=REF_TEMPLATE,
        schema_generator=_Untitled,
    )
    defs: dict[str, t.Any] = top.get("$defs", {})
    return defs


def _plain(schema: dict[str, t.Any]) -> dict[str, t.Any]:
    """A parameter's schema: absent stands for null, so only the given branch."""
    schema = {key: value for key, value in schema.items() if key not in ("default", "description")}
    branches = schema.pop("anyOf", None)
    if branches:
        given = [branch for branch in branches if branch.get("type") != "null"]
        if len(given) == 1:
            schema.update(given[0])
        else:
            schema["anyOf"] = given
    return schema


def _query_parameters(model: type[BaseModel]) -> list[dict[str, t.Any]]:
    schema = model.model_json_schema(schema_generator=_Untitled)
    required = set(schema.get("required", ()))
    out = []
    for name, prop in schema["properties"].items():
        parameter: dict[str, t.Any] = {"name": name, "in": "query"}
        if prop.get("description"):
            parameter["description"] = prop["description"]
        if name in required:
            parameter["required"] = True
        parameter["schema"] = _plain(prop)
        out.append(parameter)
    return out


def _path_parameter(name: str, kind: t.Any, description: str) -> dict[str, t.Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": TypeAdapter(kind).json_schema(),
    }


def _content(content: Content, description: str) -> dict[str, t.Any]:
    if content is None:
        return {"description": description}
    schema = content if isinstance(content, dict) else {
        "$ref": REF_TEMPLATE.format(model=content.__name__)
    }
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _operation(spec: Operation) -> dict[str, t.Any]:
    out: dict[str, t.Any] = {"operationId": spec.operation_id, "summary": spec.summary}
    parameters = [_path_parameter(name, *info) for name, info in spec.path.items()]
    if spec.query is not None:
        parameters += _query_parameters(spec.query)
    parameters += spec.more_query
    if parameters:
        out["parameters"] = parameters
    if spec.body is not None:
        out["requestBody"] = {
            "required": False,
            "content": {"application/json": {"schema": {
                "$ref": REF_TEMPLATE.format(model=spec.body.__name__)
            }}},
        }
    responses = {str(status): _content(*answer) for status, answer in spec.responses.items()}
    for status in sorted({*spec.errors, *COMMON_ERRORS}):
        responses[str(status)] = {"$ref": f"#/components/responses/{status}"}
    out["responses"] = responses
    return out


def _models(specs: t.Iterable[Operation]) -> tuple[type[BaseModel], ...]:
    found: dict[str, type[BaseModel]] = {"Error": schemas.Error}
    for spec in specs:
        contents = [content for content, _ in spec.responses.values()]
        for model in (*contents, spec.body):
            if isinstance(model, type) and issubclass(model, BaseModel):
                found[model.__name__] = model
    return tuple(sorted(found.values(), key=lambda model: model.__name__))


_ERROR_ANSWERS = {
    400: "A bad parameter; the message names it and says why.",
    401: "A token is configured and the request sent a wrong one, or sent none while no"
    " authorizer is registered.",
    403: "Refused: the authorizer said no, no access is configured, a read-only caller"
    " asked for a write, or a write came from another site (an Origin or Sec-Fetch-Site"
    " of another site, a form or text/plain body, or no Content-Type: application/json"
    " on a write the authorizer granted).",
    404: "No such job, batch or route.",
    409: "The job's status does not allow the action.",
    500: "An unexpected failure; the server log has the details.",
}


def build(
    routes: t.Iterable[tuple[str, t.Iterable[str], t.Callable[..., t.Any]]],
    *,
    server_url: str = "/",
) -> dict[str, t.Any]:
    """The document for ``routes``: (werkzeug rule text, methods, view function).

    Only views declared with :func:`operation` appear.
    """
    from . import __version__

    paths: dict[str, dict[str, t.Any]] = {}
    declared = []
    for rule, methods, view in routes:
        spec = OPERATIONS.get(view)
        if spec is None:
            continue
        declared.append(spec)
        template = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)
        item = paths.setdefault(template, {})
        for method in sorted(set(methods) - {"HEAD", "OPTIONS"}):
            item[method.lower()] = _operation(spec)
    error = _content(schemas.Error, "")
    responses: dict[str, t.Any] = {
        str(status): {**error, "description": text} for status, text in _ERROR_ANSWERS.items()
    }
    responses["401"]["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}}}
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "flask-durable-jobs admin API",
            "version": __version__,
            "description": "Inspect and act on durable jobs. Every answer is JSON;"
            ' errors are {"error": {"code", "message"}}. Access needs'
            " 'Authorization: Bearer <DURABLE_JOBS_ADMIN_TOKEN>' (or the read-only"
            " DURABLE_JOBS_ADMIN_READ_TOKEN, for GET), or a function registered with"
            ' @jobs.admin_authorizer that returns True (or "read") for the request.'
            " A write granted by the authorizer must send Content-Type: application/json;"
            " writes a page on another site could make a browser send are refused."
            " Paths under the prefix that match no route answer 404 (405 with an Allow"
            " header for a known path and another method), after the access check.",
        },
        "servers": [{"url": server_url}],
        "security": [{"bearerToken": []}],
        "paths": paths,
        "components": {
            "schemas": _components(_models(declared)),
            "responses": responses,
            "securitySchemes": {
                "bearerToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "DURABLE_JOBS_ADMIN_TOKEN (everything) or"
                    " DURABLE_JOBS_ADMIN_READ_TOKEN (GET only).",
                }
            },
        },
    }
