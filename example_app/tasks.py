"""The example's job handlers, one per feature worth seeing.

Handlers run inside an app context on the scheduler's threads, so they use
``db.session`` and ``current_app`` as a view does. Delivery is at-least-once:
each handler checks what an earlier attempt already did before acting again.
"""

from __future__ import annotations

import re
import time
import typing as t

from flask import current_app

from flask_durable_jobs import Discard, DurableJobs

from . import services
from .models import User, db

jobs = DurableJobs()

PHONE = re.compile(r"\+[1-9][0-9]{6,14}")


def _user(payload: dict[str, t.Any]) -> User:
    user = db.session.get(User, payload["user_id"])
    if user is None:
        # Retrying can't bring a deleted user back.
        raise Discard(f"user {payload['user_id']} no longer exists")
    return user


@jobs.handler("send_welcome_email", max_attempts=5, timeout=30)
def send_welcome_email(payload: dict[str, t.Any]) -> dict[str, t.Any]:
    """Succeeds on the first attempt."""
    user = _user(payload)
    if user.welcome_message_id is None:
        user.welcome_message_id = services.send_email(
            user.email, "Welcome!", idempotency_key=f"welcome:{user.id}"
        )
        db.session.commit()
    current_app.logger.info("welcome email for user %s: %s", user.id, user.welcome_message_id)
    return {"message_id": user.welcome_message_id}


# A flaky dependency: the CRM fails twice, the job recovers through retries.
# backoff=lambda n: 1 retries one second after each failure so it's visible;
# the default policy waits 30 s, 2 min, 8 min, ...
@jobs.handler("sync_to_crm", max_attempts=5, timeout=30, backoff=lambda attempt: 1)
def sync_to_crm(payload: dict[str, t.Any]) -> dict[str, t.Any]:
    user = _user(payload)
    if user.crm_contact_id is None:
        user.crm_contact_id = services.upsert_crm_contact(user)  # raises twice
        db.session.commit()
    return {"contact_id": user.crm_contact_id}


@jobs.handler("send_sms", max_attempts=3, timeout=30)
def send_sms(payload: dict[str, t.Any]) -> dict[str, t.Any]:
    """Gives up at once with Discard when the phone number can't work."""
    user = _user(payload)
    if not user.phone or not PHONE.fullmatch(user.phone):
        raise Discard(f"{user.phone!r} is not a phone number in E.164 form (+15551234567)")
    if user.sms_message_id is None:
        user.sms_message_id = services.send_sms(
            user.phone, "Thanks for signing up", idempotency_key=f"sms:{user.id}"
        )
        db.session.commit()
    return {"message_id": user.sms_message_id}


@jobs.handler("build_report", queue="reports", max_attempts=2)
def build_report(payload: dict[str, t.Any]) -> dict[str, t.Any]:
    """Runs longer than its lease (DURABLE_JOBS_LEASE_SECONDS, 60 s by default).

    Nothing special is needed: the library renews the lease while the
    handler runs, so the orphan sweep leaves it alone.
    """
    seconds = float(payload.get("seconds", 90))
    started = time.monotonic()
    time.sleep(seconds)  # stands in for real work
    return {"users": db.session.query(User).count(), "took": round(time.monotonic() - started, 1)}
