"""Stand-ins for the outside services a real app would call.

Each returns an id the way a real provider does, and takes an idempotency key
so a job that runs twice (delivery is at-least-once) doesn't act twice.
"""

from __future__ import annotations

import hashlib

from .models import User, db


def _message_id(kind: str, idempotency_key: str) -> str:
    return f"{kind}-" + hashlib.sha256(idempotency_key.encode()).hexdigest()[:16]


def send_email(to: str, subject: str, *, idempotency_key: str) -> str:
    """Pretend to send an email; return the provider's message id."""
    return _message_id("email", idempotency_key)


def send_sms(to: str, text: str, *, idempotency_key: str) -> str:
    """Pretend to send a text message; return the provider's message id."""
    return _message_id("sms", idempotency_key)


class CRMUnavailable(ConnectionError):
    """The CRM did not answer."""


def upsert_crm_contact(user: User) -> str:
    """Pretend to create a CRM contact; the first two calls per user fail.

    The call count lives on the user row (committed before failing) so the
    demo behaves the same whichever process runs each attempt.
    """
    user.crm_calls = (user.crm_calls or 0) + 1
    db.session.commit()
    if user.crm_calls <= 2:
        raise CRMUnavailable(f"CRM timed out (call {user.crm_calls} for user {user.id})")
    return f"crm-{user.id}"
