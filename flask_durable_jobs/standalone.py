"""An enqueue that commits on its own, on a connection kept for the app context.

``enqueue(commit=True)`` with nothing pending in the caller's session inserts
its job in a short transaction of its own (:func:`insert`), on the engine the
store names for that (:meth:`Store.standalone_engine
<flask_durable_jobs.store.Store.standalone_engine>`). The connection is taken
from that engine's pool on the first such enqueue of an app context and given
back when the context ends (:func:`release`, registered by ``init_app`` with
``teardown_appcontext``), so a script, a CLI command or a job that enqueues
many jobs one by one takes it out of the pool once, while a request still
returns it before the next request begins. Between two enqueues it holds no
transaction: nothing is locked and no snapshot is pinned.
"""

from __future__ import annotations

import typing as t

from flask import g

from . import faults

if t.TYPE_CHECKING:
    import sqlalchemy as sa

    from .extension import State
    from .models import Job

#: Where the kept connection waits in ``flask.g`` (one per app context), with
#: the pool it came from.
G_KEY = "durable_jobs_standalone_connection"


def insert(state: State, values: dict[str, t.Any], text: str = "") -> tuple[Job, bool]:
    """Insert one job (see :meth:`Store.insert <flask_durable_jobs.store.Store.insert>`)
    and commit it: durable when this returns. Returns (job, created)."""
    kept: tuple[sa.Connection, sa.pool.Pool] | None = g.get(G_KEY)
    if kept is not None and (
        kept[0].engine.pool is not kept[1] or faults.closed_while_held(kept[0])
    ):  # the engine was disposed, or the server closed the connection (a restart)
        release()
        kept = None
    if kept is None:
        engine = state.store.standalone_engine(state.app_engine)
        kept = (engine.connect(), engine.pool)
        setattr(g, G_KEY, kept)
    conn = kept[0]
    try:
        found = state.store.insert(conn, values, text)
        conn.commit()
    except BaseException:
        # rolled back and returned to the pool (dropped from it if the
        # connection broke); the next enqueue takes a fresh one
        release()
        raise
    return found


def release(_exc: BaseException | None = None) -> None:
    """Give the app context's kept connection back to its pool (teardown).

    If its engine was disposed meanwhile, the connection is closed instead:
    the old pool would keep it open until the garbage collector found it."""
    kept: tuple[sa.Connection, sa.pool.Pool] | None = g.pop(G_KEY, None)
    if kept is None:
        return
    conn, pool = kept
    if conn.engine.pool is not pool or faults.closed_while_held(conn):
        conn.invalidate()
    conn.close()
