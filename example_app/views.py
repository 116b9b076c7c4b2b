"""Routes that enqueue jobs inside the request's own transaction."""

from __future__ import annotations

import typing as t

from flask import Blueprint, abort, current_app, request
from sqlalchemy.exc import IntegrityError

from .models import User, db
from .tasks import jobs

bp = Blueprint("example", __name__)


@bp.get("/")
def index() -> dict[str, t.Any]:
    prefix = current_app.config.get("DURABLE_JOBS_URL_PREFIX", "/admin/jobs")
    return {
        "routes": {
            "POST /signup": 'JSON {"email", "name", "phone"}: creates a user, enqueues its jobs',
            "GET /users/<id>": "a user, with what its jobs did",
            "POST /reports": 'JSON {"seconds"}: a long job (runs past its lease)',
        },
        "admin_api": f"{prefix}/stats (Authorization: Bearer $ADMIN_TOKEN)",
    }


@bp.post("/signup")
def signup() -> tuple[dict[str, t.Any], int]:
    data = request.get_json(silent=True) or {}
    email = data.get("email")
    if not isinstance(email, str) or "@" not in email:
        return {"error": "a JSON body with an email is required"}, 400
    user = User(email=email, name=str(data.get("name", "")), phone=data.get("phone") or None)
    db.session.add(user)
    try:
        db.session.flush()  # assigns user.id; nothing is committed yet
        # commit=False: the jobs join this transaction. They become visible
        # to the workers together with the user, or not at all.
        queued = {
            "send_welcome_email": jobs.enqueue(
                "send_welcome_email",
                {"user_id": user.id},
                idempotency_key=f"welcome-email:{user.id}",
                commit=False,
            ),
            "sync_to_crm": jobs.enqueue("sync_to_crm", {"user_id": user.id}, commit=False),
        }
        if user.phone:
            queued["send_sms"] = jobs.enqueue("send_sms", {"user_id": user.id}, commit=False)
        db.session.commit()
    except IntegrityError:
        db.session.rollback()  # the user and its jobs are discarded together
        return {"error": f"{email} is already signed up"}, 409
    return {"user": user.to_dict(), "jobs": {name: job.id for name, job in queued.items()}}, 201


@bp.get("/users/<int:user_id>")
def get_user(user_id: int) -> dict[str, t.Any]:
    user = db.session.get(User, user_id)
    if user is None:
        abort(404)
    return user.to_dict()


@bp.post("/reports")
def start_report() -> tuple[dict[str, t.Any], int]:
    data = request.get_json(silent=True) or {}
    seconds = data.get("seconds", 90)
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds < 0:
        return {"error": "seconds must be a number >= 0"}, 400
    job = jobs.enqueue("build_report", {"seconds": seconds})  # commits at once
    return {"job": job.id, "status": job.status}, 202
