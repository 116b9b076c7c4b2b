"""The HTML dashboard: static pages over the admin JSON API, at ``{prefix}/dashboard/``.

Choices a user can rely on (docs/dashboard.rst repeats them):

* The pages hold no job data: they are the same files for everyone, and every
  number on them comes from the admin API, fetched by the browser under the
  API's own access check (tokens, roles, the authorizer). A token typed into
  the login form stays in the tab's ``sessionStorage`` and travels only as
  ``Authorization: Bearer``; with an authorizer the host app's login is used.
* Closed until configured: with no token and no authorizer the dashboard
  answers a 403 page saying how to enable it, like the API.
* Every answer carries a Content-Security-Policy that allows only this
  origin's own scripts and styles (no inline script), no framing, plus
  ``X-Content-Type-Options: nosniff`` and ``Referrer-Policy: same-origin``.
  The scripts show job data as text (``textContent``), never as HTML.
* Nothing is loaded from another origin and there is no build step: plain
  ES modules and CSS shipped in the package (``static/``).
"""

from __future__ import annotations

import html
import importlib.resources
import typing as t

from flask import Blueprint, Flask, current_app, redirect, request, send_from_directory

from ..extension import get_state

if t.TYPE_CHECKING:
    from flask import Response
    from werkzeug.wrappers import Response as BaseResponse

    from ..config import Settings

BLUEPRINT_NAME = "durable_jobs_dashboard"

#: Sent with every dashboard answer.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
        " connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none';"
        " form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}

_FILES = importlib.resources.files(__name__)
STATIC_DIR = str(_FILES.joinpath("static"))

blueprint = Blueprint(BLUEPRINT_NAME, __name__)


def register(app: Flask, settings: Settings) -> None:
    """Mount the dashboard at ``{prefix}/dashboard`` unless ``DURABLE_JOBS_DASHBOARD`` is off."""
    if settings.dashboard:
        app.register_blueprint(blueprint, url_prefix=settings.url_prefix + "/dashboard")


def _enabled() -> bool:
    state = get_state()
    settings = state.settings
    return (
        settings.admin_token is not None
        or settings.admin_read_token is not None
        or state.ext.authorizer is not None
    )


@blueprint.after_request
def _security_headers(response: Response) -> Response:
    response.headers.update(SECURITY_HEADERS)
    response.headers.setdefault("Cache-Control", "no-cache")
    return response


@blueprint.get("")
def to_index() -> BaseResponse:
    # The pages load their files relative to ".../dashboard/".
    return redirect(request.script_root + request.path + "/", code=308)


@blueprint.get("/")
def index() -> Response:
    if not _enabled():
        page = _FILES.joinpath("closed.html").read_text(encoding="utf-8")
        return current_app.response_class(page, status=403, mimetype="text/html")
    api = request.script_root + get_state().settings.url_prefix
    page = _FILES.joinpath("index.html").read_text(encoding="utf-8")
    page = page.replace("{{API}}", html.escape(api, quote=True))
    response = current_app.response_class(page, mimetype="text/html")
    response.headers["Cache-Control"] = "no-store"
    return response


@blueprint.get("/static/<path:filename>")
def asset(filename: str) -> Response:
    return send_from_directory(STATIC_DIR, filename, max_age=0)
