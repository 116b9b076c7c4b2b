"""Secrets at rest: encrypted before they reach the database.

``enqueue(..., secrets={...})`` stores the values encrypted with Fernet
(``cryptography``), keyed by ``DURABLE_JOBS_SECRET_KEY``. A list of keys
rotates: the first encrypts, every key decrypts. The handler reads them with
:func:`job_secrets` while it runs; nothing else ever sees them, and they are
deleted from the row when the job ends.
"""

from __future__ import annotations

import contextlib
import json
import threading
import typing as t

from .errors import ConfigError, DurableJobsError

_current = threading.local()


class SecretsUnavailable(DurableJobsError):
    """A job's secrets could not be decrypted with the configured keys."""


def job_secrets() -> dict[str, t.Any]:
    """The secrets of the job the calling handler thread runs (empty if none)."""
    return dict(getattr(_current, "secrets", None) or {})


@contextlib.contextmanager
def current_secrets(secrets: dict[str, t.Any] | None) -> t.Iterator[None]:
    """Make ``secrets`` what :func:`job_secrets` returns on this thread while
    the block runs (the handler thread, around one job's handler)."""
    previous = getattr(_current, "secrets", None)
    _current.secrets = secrets
    try:
        yield
    finally:
        _current.secrets = previous


class Vault:
    def __init__(self, keys: t.Sequence[str]) -> None:
        try:
            from cryptography.fernet import Fernet, MultiFernet
        except ImportError:  # pragma: no cover - depends on the install
            raise ConfigError(
                "DURABLE_JOBS_SECRET_KEY needs the 'cryptography' package:"
                " pip install 'flask-durable-jobs[secrets]'"
            ) from None
        fernets = []
        for index, key in enumerate(keys):
            try:
                fernets.append(Fernet(key))
            except (ValueError, TypeError):
                raise ConfigError(
                    f"DURABLE_JOBS_SECRET_KEY[{index}] is not a Fernet key (32 url-safe"
                    " base64-encoded bytes; make one with Fernet.generate_key())"
                ) from None
        self._fernet = MultiFernet(fernets)

    def encrypt(self, secrets: dict[str, t.Any]) -> str:
        text = json.dumps(secrets, separators=(",", ":"), allow_nan=False)
        token: bytes = self._fernet.encrypt(text.encode())
        return token.decode("ascii")

    def decrypt(self, token: str) -> dict[str, t.Any]:
        from cryptography.fernet import InvalidToken

        try:
            data = self._fernet.decrypt(token.encode("ascii"))
        except (InvalidToken, ValueError):
            raise SecretsUnavailable(
                "the job's secrets could not be decrypted: the key that encrypted them"
                " is not in DURABLE_JOBS_SECRET_KEY (removed or rotated out?)"
            ) from None
        value = json.loads(data)
        return t.cast(dict[str, t.Any], value)


def make_vault(keys: t.Sequence[str]) -> Vault | None:
    return Vault(keys) if keys else None


def scrub(text: str, secrets: dict[str, t.Any] | None) -> str:
    """Replace every secret value that appears in ``text`` (an error message)."""
    if not secrets:
        return text
    needles = set()
    for value in secrets.values():
        for plain in _strings_in(value):
            if len(plain) >= 4:
                # as written, and as repr() or JSON would escape it
                needles.update({plain, repr(plain)[1:-1], json.dumps(plain)[1:-1]})
    for needle in sorted(needles, key=len, reverse=True):
        text = text.replace(needle, "********")
    return text


def _strings_in(value: t.Any) -> t.Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield str(value)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings_in(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _strings_in(item)
