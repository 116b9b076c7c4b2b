"""The runner as a user sees it: registration it refuses, what it logs and
signals when a job goes dead. Database tests run on SQLite and PostgreSQL."""

from __future__ import annotations

import functools
import typing as t

import pytest

from flask_durable_jobs import DurableJobs


async def _coroutine_handler(payload: dict[str, t.Any]) -> None: ...


async def _async_generator_handler(payload: dict[str, t.Any]) -> t.AsyncIterator[None]:
    yield None


class _AsyncCallable:
    async def __call__(self, payload: dict[str, t.Any]) -> None: ...


@pytest.mark.parametrize(
    "func",
    [
        _coroutine_handler,
        _async_generator_handler,
        _AsyncCallable(),
        functools.partial(_coroutine_handler),
    ],
    ids=["async def", "async generator", "async __call__", "partial of async def"],
)
def test_async_handlers_are_refused_at_registration(func: t.Any) -> None:
    jobs = DurableJobs()
    with pytest.raises(TypeError, match=r"'notify' is an async function.*define it with def"):
        jobs.handler("notify")(func)
    if hasattr(func, "__qualname__"):
        with pytest.raises(TypeError, match="is an async function"):
            jobs.handler(func)  # bare, named after the function
    jobs.handler("notify")(lambda payload: None)  # the name stays free for a plain one
