"""The example's business model: users who sign up."""

from __future__ import annotations

import datetime as dt
import typing as t

from flask_sqlalchemy import SQLAlchemy

db = SQLAlchemy()


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _iso(value: dt.datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:  # SQLite stores no offset; we store UTC
        value = value.replace(tzinfo=dt.timezone.utc)
    return value.isoformat()


class User(db.Model):
    __tablename__ = "users"

    id = db.Column(db.Integer, primary_key=True)
    email = db.Column(db.String(255), unique=True, nullable=False)
    name = db.Column(db.String(200), nullable=False, default="")
    phone = db.Column(db.String(40), nullable=True)
    created_at = db.Column(db.DateTime(timezone=True), nullable=False, default=_utcnow)
    # Filled in by the jobs in tasks.py.
    welcome_message_id = db.Column(db.String(64), nullable=True)
    crm_contact_id = db.Column(db.String(64), nullable=True)
    crm_calls = db.Column(db.Integer, nullable=False, default=0)
    sms_message_id = db.Column(db.String(64), nullable=True)

    def to_dict(self) -> dict[str, t.Any]:
        return {
            "id": self.id,
            "email": self.email,
            "name": self.name,
            "phone": self.phone,
            "created_at": _iso(self.created_at),
            "welcome_message_id": self.welcome_message_id,
            "crm_contact_id": self.crm_contact_id,
            "crm_calls": self.crm_calls,
            "sms_message_id": self.sms_message_id,
        }
