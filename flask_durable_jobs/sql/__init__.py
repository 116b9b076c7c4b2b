"""The queue's SQL, one file per database: ``postgresql.sql`` and ``sqlite.sql``.

Each statement follows a ``-- name: <name>`` line and runs to the next one.
Binds are written ``:name`` (SQLAlchemy's ``text()`` style; SQLite's driver
takes them as they are). ``{NAME}`` placeholders stand for the statuses and
the partial indexes' conditions of :mod:`flask_durable_jobs.models`
(:data:`~flask_durable_jobs.models.SQL_NAMES`), which the store fills in when
it loads a file, so a status is spelled in one place. Statements named
``after_create.*`` and ``before_drop.*`` go with the job table's own
``CREATE``/``DROP`` (see :func:`flask_durable_jobs.models.define_table`).

Full-line ``--`` comments are for the reader and are left out of the
statements.
"""

from __future__ import annotations

import functools
import importlib.resources
import re
import types
import typing as t

#: The databases with a file here.
DIALECTS = ("postgresql", "sqlite")

_HEADER = re.compile(r"^-- name: *(\S+) *$", re.MULTILINE)


def parse(text: str) -> dict[str, str]:
    """The named statements of one file's text, comments left out."""
    parts = _HEADER.split(text)
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:
            raise ValueError(f"two SQL statements are named {name!r}")
        lines = [line for line in body.splitlines() if not line.lstrip().startswith("--")]
        queries[name] = "\n".join(lines).strip().rstrip(";")
    return queries


@functools.cache
def load(dialect: str) -> t.Mapping[str, str]:
    """The named statements for ``dialect``, placeholders not filled in."""
    if dialect not in DIALECTS:
        raise ValueError(f"no SQL file for {dialect!r}; known: {', '.join(DIALECTS)}")
    resource = importlib.resources.files(__name__).joinpath(f"{dialect}.sql")
    return types.MappingProxyType(parse(resource.read_text(encoding="utf-8")))
