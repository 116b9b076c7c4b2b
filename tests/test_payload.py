"""Payloads and results: decoding them, and the limits checked at enqueue."""

from __future__ import annotations

import json
import re
import typing as t

import pytest
from flask import Flask
from hypothesis import assume, given
from hypothesis import strategies as st

from flask_durable_jobs import DurableJobs, payload

json_values = st.recursive(
    st.none() | st.booleans() | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@given(json_values)
def test_loads_reads_what_json_wrote(value: t.Any) -> None:
    """Compact text (as stored by the library) and PostgreSQL's ``jsonb``
    spacing decode to the value, as ``json.loads`` decodes them."""
    for text in (json.dumps(value, separators=(",", ":")), json.dumps(value)):
        assert payload.loads(text) == json.loads(text) == value


@pytest.mark.parametrize("text", [' {"a": 1}', '{"a": 1} ', "\n[1, 2]\n"])
def test_loads_accepts_whitespace_around_the_value(text: str) -> None:
    assert payload.loads(text) == json.loads(text)


@pytest.mark.parametrize("text", ["", "{", '{"a": 1} x', "1 2", "nul"])
def test_loads_refuses_what_json_refuses(text: str) -> None:
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)
    with pytest.raises(json.JSONDecodeError):
        payload.loads(text)


# -- limits at enqueue (both databases) --------------------------------------------


def _nested(depth: int) -> dict[str, t.Any]:
    """A payload nested ``depth`` levels deep (the payload itself is level 1)."""
    value: dict[str, t.Any] = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def _stored(jobs: DurableJobs) -> int:
    return jobs.list_jobs()[1]


def test_nesting_up_to_the_limit_is_stored_and_runs(app: Flask, jobs: DurableJobs) -> None:
    jobs.handler("echo")(lambda p: p)
    job = jobs.enqueue("echo", _nested(payload.MAX_DEPTH))
    assert jobs.drain()["succeeded"] == 1
    assert jobs.get(job.id).result == _nested(payload.MAX_DEPTH)


@pytest.mark.parametrize("depth", [payload.MAX_DEPTH + 1, 10_000])
def test_nesting_past_the_limit_is_refused_naming_the_path(
    app: Flask, jobs: DurableJobs, depth: int
) -> None:
    jobs.handler("echo")(lambda p: p)
    path = "payload" + "['a']" * payload.MAX_DEPTH
    with pytest.raises(ValueError, match=re.escape(path) + " is nested 101 levels deep"):
        jobs.enqueue("echo", _nested(depth))
    with pytest.raises(ValueError, match=r"payloads\[1\]: payload\['a'\]"):
        jobs.enqueue_many("echo", [{}, _nested(depth)])
    with pytest.raises(ValueError, match=r"jobs\[0\]: payload\['a'\]"):
        jobs.enqueue_batch([("echo", _nested(depth))])
    assert _stored(jobs) == 0


def test_lists_count_as_levels(app: Flask, jobs: DurableJobs) -> None:
    jobs.handler("echo")(lambda p: p)
    value: t.Any = []
    for _ in range(payload.MAX_DEPTH - 2):
        value = [value]
    jobs.enqueue("echo", {"x": value})  # the object and 99 lists: 100 levels
    with pytest.raises(ValueError, match=r"payload\['x'\](\[0\]){99} is nested 101"):
        jobs.enqueue("echo", {"x": [value]})
    assert _stored(jobs) == 1


def test_a_result_nested_too_deep_ends_the_job_dead(app: Flask, jobs: DurableJobs) -> None:
    jobs.handler("deep")(lambda p: _nested(5000))
    job = jobs.enqueue("deep", {})
    assert jobs.drain()["dead"] == 1
    got = jobs.get(job.id)
    assert got.status == "dead"
    assert f"may nest at most {payload.MAX_DEPTH}" in (got.last_error or "")


@pytest.mark.config(DURABLE_JOBS_MAX_PAYLOAD_BYTES=1000)
def test_payload_size_limit_from_config(app: Flask, jobs: DurableJobs) -> None:
    jobs.handler("big")(lambda p: None)
    fits = {"s": "x" * (1000 - len('{"s":""}'))}
    assert payload.size(fits) == 1000
    jobs.enqueue("big", fits)
    jobs.enqueue_many("big", [fits])
    over = {"s": "é" * 500}  # 2 bytes each in UTF-8
    assert payload.size(over) == 1008
    message = r"payload is 1008 bytes of JSON, over the limit of 1000 \(DURABLE_JOBS_MAX_PAYLOAD"
    with pytest.raises(ValueError, match=message):
        jobs.enqueue("big", over)
    with pytest.raises(ValueError, match=r"payloads\[1\]: " + message):
        jobs.enqueue_many("big", [fits, over])
    with pytest.raises(ValueError, match=message):
        jobs.enqueue_batch([("big", fits)], on_complete="big", on_complete_payload=over)
    assert _stored(jobs) == 2


def test_default_size_limit_is_one_mib(app: Flask, jobs: DurableJobs) -> None:
    jobs.handler("big")(lambda p: None)
    room = payload.DEFAULT_MAX_BYTES - len('{"s":""}')
    assert payload.DEFAULT_MAX_BYTES == 1024 * 1024
    jobs.enqueue("big", {"s": "x" * room})
    with pytest.raises(ValueError, match="over the limit of 1048576"):
        jobs.enqueue("big", {"s": "x" * (room + 1)})
    assert _stored(jobs) == 1


@given(json_values)
def test_the_cheap_bound_is_never_below_the_size(value: t.Any) -> None:
    """check_payload measures only when the bound says the payload may be
    over the limit: the bound must never be under the real size."""
    try:
        bound = payload.walk(value)
    except TypeError:  # a NUL character: refused before any size is measured
        assume(False)
        raise
    assert bound >= payload.size(value)


@given(st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), max_size=50))
def test_the_bound_holds_for_any_text(text: str) -> None:
    value = {text: [text, "\x01" + text]}
    assert payload.walk(value) >= payload.size(value)
