"""Render the admin API's OpenAPI document as reStructuredText.

``.. openapi-routes::`` builds a throwaway app with the extension, asks its
admin blueprint for ``{prefix}/openapi.json`` (the document users get), and
writes one entry per operation, then the component schemas. When the package
can't be imported, it reads ``flask_durable_jobs/openapi.json`` if there is
one, and otherwise renders the directive's own content, so the page still
builds.
"""

from __future__ import annotations

import json
import re
import sys
import typing as t
from pathlib import Path

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "flask_durable_jobs"
METHODS = ("get", "post", "put", "patch", "delete")
DEFAULT_PREFIX = "/admin/jobs"
TOKEN = "docs-build"

logger = logging.getLogger(__name__)


def served_spec(prefix: str) -> dict[str, t.Any]:
    """The document the admin blueprint serves, from a throwaway app."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from flask import Flask
    from flask_sqlalchemy import SQLAlchemy

    from flask_durable_jobs import DurableJobs

    app = Flask("openapi_docs")
    app.config.update(
        SQLALCHEMY_DATABASE_URI="sqlite://",
        DURABLE_JOBS_SCHEDULER=False,
        DURABLE_JOBS_ADMIN_TOKEN=TOKEN,
        DURABLE_JOBS_URL_PREFIX=prefix,
    )
    db = SQLAlchemy()
    db.init_app(app)
    DurableJobs(app, db=db)
    response = app.test_client().get(
        f"{prefix}/openapi.json", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    if response.status_code != 200:
        raise RuntimeError(f"{prefix}/openapi.json answered {response.status_code}")
    document: dict[str, t.Any] = response.get_json()
    return document


def load_spec(prefix: str = DEFAULT_PREFIX) -> tuple[dict[str, t.Any] | None, str]:
    """The OpenAPI document and where it came from, or ``(None, reason)``."""
    try:
        return served_spec(prefix), f"GET {prefix}/openapi.json"
    except Exception as exc:  # the package may not import yet
        reason = f"the admin blueprint's document is unavailable ({exc!r})"
    path = PACKAGE / "openapi.json"
    if path.exists():
        return json.loads(path.read_text(encoding="utf-8")), str(path.relative_to(ROOT))
    return None, reason


_CODE = re.compile(r"`([^`]+)`")
_SPECIAL = re.compile(r"([\\*_|`<>\[\]])")


def inline(text: str) -> str:
    """Markdown-ish inline text to safe reST: `code` kept, the rest escaped."""
    parts = _CODE.split(text)
    out = []
    for i, part in enumerate(parts):
        out.append(f"``{part}``" if i % 2 else _SPECIAL.sub(r"\\\1", part))
    return "".join(out)


def block(text: str | None, indent: str) -> list[str]:
    if not text:
        return []
    lines = [indent + inline(line) if line.strip() else "" for line in text.strip().splitlines()]
    return [*lines, ""]


def resolve(spec: dict[str, t.Any], item: dict[str, t.Any]) -> dict[str, t.Any]:
    ref = item.get("$ref")
    if not isinstance(ref, str) or not ref.startswith("#/"):
        return item
    node: t.Any = spec
    for key in ref[2:].split("/"):
        node = node.get(key, {}) if isinstance(node, dict) else {}
    return resolve(spec, node) if isinstance(node, dict) else {}


def type_name(spec: dict[str, t.Any], schema: dict[str, t.Any] | None) -> str:
    if not schema:
        return ""
    ref = schema.get("$ref")
    if isinstance(ref, str):
        return ref.rsplit("/", 1)[-1]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = " or ".join(str(k) for k in kind)
    if kind == "array":
        return f"array of {type_name(spec, schema.get('items')) or 'values'}"
    if "enum" in schema:
        return " | ".join(json.dumps(v) for v in schema["enum"])
    for combo in ("oneOf", "anyOf"):
        if combo in schema:
            return " or ".join(type_name(spec, s) or "value" for s in schema[combo])
    bounds = [schema.get("minimum"), schema.get("maximum")]
    if kind in ("integer", "number") and bounds != [None, None]:
        low = "" if bounds[0] is None else f"{bounds[0]:,}"
        high = "" if bounds[1] is None else f"{bounds[1]:,}"
        return f"{kind}, {low}..{high}"
    if kind is None:
        return "object" if "properties" in schema else "any JSON value"
    if "format" in schema:
        return f"{kind}, {schema['format']}"
    return str(kind)


def render(spec: dict[str, t.Any], source: str) -> list[str]:
    lines: list[str] = []
    servers = spec.get("servers") or []
    base = (servers[0].get("url") or "") if servers and isinstance(servers[0], dict) else ""
    info = spec.get("info", {})
    lines += [
        f"*Generated from the OpenAPI {inline(str(spec.get('openapi', '')))} document "
        f"served at* ``{source.removeprefix('GET ')}`` *({inline(str(info.get('title', '')))}, "
        f"version {inline(str(info.get('version', '')))}).*",
        "",
    ]
    for path, item in spec.get("paths", {}).items():
        full = path if not base or path.startswith(base) else base.rstrip("/") + path
        shared = item.get("parameters", [])
        for method in METHODS:
            op = item.get(method)
            if not isinstance(op, dict):
                continue
            lines += [f".. rubric:: ``{method.upper()} {full}``", ""]
            lines += block(op.get("summary"), "")
            lines += block(op.get("description"), "")
            params = [resolve(spec, p) for p in [*shared, *op.get("parameters", [])]]
            if params:
                lines += ["Parameters:", ""]
                for p in params:
                    bits = [p.get("in", ""), type_name(spec, p.get("schema"))]
                    if p.get("required"):
                        bits.append("required")
                    desc = inline(p.get("description", "")).replace("\n", " ")
                    head = f"- ``{p.get('name')}`` ({inline(', '.join(b for b in bits if b))})"
                    lines.append(f"{head}: {desc}" if desc else head)
                lines.append("")
            body = resolve(spec, op.get("requestBody", {}))
            if body:
                lines += ["Request body:", ""]
                for mime, media in body.get("content", {}).items():
                    schema = resolve(spec, media.get("schema") or {})
                    lines.append(f"- ``{mime}``: {inline(type_name(spec, media.get('schema')))}")
                    for prop, sub in schema.get("properties", {}).items():
                        lines += ["", f"  - ``{prop}`` ({inline(type_name(spec, sub))})"]
                lines.append("")
            responses = op.get("responses", {})
            if responses:
                lines += ["Responses:", ""]
                for code, response in responses.items():
                    response = resolve(spec, response)
                    desc = inline(response.get("description", "")).replace("\n", " ")
                    schemas = [
                        type_name(spec, media.get("schema"))
                        for media in response.get("content", {}).values()
                    ]
                    named = ", ".join(s for s in schemas if s)
                    shape = f" ({inline(named)})" if named else ""
                    lines.append(f"- ``{code}``{shape}: {desc}" if desc else f"- ``{code}``{shape}")
                lines.append("")
    schemas = spec.get("components", {}).get("schemas", {})
    if schemas:
        lines += [".. rubric:: Schemas", ""]
        for name, schema in schemas.items():
            schema = resolve(spec, schema)
            lines += [f"``{name}``", ""]
            lines += block(schema.get("description"), "   ")
            required = set(schema.get("required", []))
            for prop, sub in schema.get("properties", {}).items():
                sub = sub if isinstance(sub, dict) else {}
                kind = type_name(spec, sub)
                types = sub.get("type")
                nullable = sub.get("nullable") or (isinstance(types, list) and "null" in types)
                if nullable and "null" not in kind:
                    kind += ", nullable"
                req = ", required" if prop in required else ""
                desc = inline(sub.get("description", "")).replace("\n", " ")
                head = f"   - ``{prop}`` ({inline(kind)}{req})"
                lines.append(f"{head}: {desc}" if desc else head)
            lines.append("")
    return lines


class OpenAPIRoutes(SphinxDirective):
    has_content = True
    option_spec = {"prefix": lambda arg: arg.strip()}

    def run(self) -> list[nodes.Node]:
        # Rebuild the page when the code that serves the document changes.
        for name in ("openapi.py", "schemas.py", "admin.py", "openapi.json"):
            if (PACKAGE / name).exists():
                self.env.note_dependency(str(PACKAGE / name))
        spec, source = load_spec(self.options.get("prefix", DEFAULT_PREFIX))
        container = nodes.container()
        if spec is None:
            logger.info("openapi-routes: %s; using the page's own text", source)
            self.state.nested_parse(self.content, self.content_offset, container)
        else:
            text = StringList(render(spec, source), source=source)
            self.state.nested_parse(text, 0, container)
        return container.children


def setup(app: Sphinx) -> dict[str, t.Any]:
    app.add_directive("openapi-routes", OpenAPIRoutes)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
