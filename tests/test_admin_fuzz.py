"""Random requests under the admin prefix: never a 5xx, always a JSON answer.

Paths mix the real route words with ids of every shape and arbitrary text;
methods, query strings, bodies and Authorization headers are random too. The
example counts are kept small so this runs in seconds on each backend.
"""

from __future__ import annotations

import typing as t
import urllib.parse

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flask_durable_jobs import DurableJobs
from flask_durable_jobs.masking import MASK

PREFIX = "/admin/jobs"
TOKEN = "fuzz-token"

segments = st.one_of(
    st.sampled_from(["stats", "process", "openapi.json", "retry", "cancel", "", "..", "."]),
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.integers(min_value=1, max_value=6).map(str),  # ids that exist
    st.text(max_size=12).map(lambda text: urllib.parse.quote(text, safe="")),
    st.text(alphabet="0123456789/%.-+_ ", max_size=12),
)
paths = st.one_of(
    # The real routes, so that many examples get past routing to the views.
    st.sampled_from(
        ["", "/", "/stats", "/process", "/openapi.json", "/1", "/2/retry", "/3/cancel"]
    ).map(lambda rest: PREFIX + rest),
    st.lists(segments, max_size=4).map(lambda parts: "/".join([PREFIX, *parts])),
)
methods = st.one_of(
    st.sampled_from(["GET", "POST", "DELETE", "PUT", "PATCH", "HEAD", "OPTIONS"]),
    st.from_regex(r"[A-Z]{3,10}", fullmatch=True),
)
query_values = st.one_of(
    st.sampled_from(["pending", "dead", "t.ok", "default", "0", "1", "200", "201", "-1", ""]),
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.text(max_size=20),
)
queries = st.dictionaries(
    st.sampled_from(["status", "job_type", "queue", "page", "per_page", "limit", "x"]),
    query_values,
    max_size=4,
)
# Header values as a WSGI server would pass them: latin-1 text, no line breaks.
header_text = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
    max_size=40,
)
authorizations = st.one_of(
    st.just(f"Bearer {TOKEN}"),
    st.just(f"Bearer {TOKEN}"),
    st.none(),
    st.just("Bearer wrong"),
    header_text.map(lambda text: f"Bearer {text}"),
    header_text,
)
bodies = st.one_of(
    st.none(),
    st.binary(max_size=40),
    st.fixed_dictionaries({"limit": query_values | st.integers() | st.none() | st.booleans()}),
    st.recursive(st.none() | st.integers() | st.text(max_size=5), st.lists, max_leaves=5),
)


@pytest.fixture
def seeded(app: t.Any, jobs: DurableJobs) -> DurableJobs:
    """A few jobs in several statuses for the random ids to land on."""
    jobs.handler("t.ok")(lambda payload: payload)
    jobs.admin_authorizer(lambda: False)
    for n in range(4):
        jobs.enqueue("t.ok", {"n": n, "password": "p"})
    jobs.process_due(limit=2)
    jobs.cancel(3)
    return jobs


@pytest.mark.config(DURABLE_JOBS_ADMIN_TOKEN=TOKEN)
@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    path=paths,
    method=methods,
    query=queries,
    authorization=authorizations,
    content_type=st.sampled_from([None, "application/json", "text/plain"]),
    body=bodies,
)
def test_random_requests_get_json_answers(
    client: t.Any,
    seeded: DurableJobs,
    path: str,
    method: str,
    query: dict[str, str],
    authorization: str | None,
    content_type: str | None,
    body: t.Any,
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    kwargs: dict[str, t.Any] = {"query_string": query, "headers": headers}
    if isinstance(body, bytes):
        kwargs["data"] = body
        if content_type is not None:
            kwargs["content_type"] = content_type
    elif body is not None:
        kwargs["json"] = body
    response = client.open(path, method=method, **kwargs)
    assert response.status_code < 500, response.get_data(as_text=True)
    if response.status_code == 204 or method == "HEAD":
        assert response.data == b""
        return
    assert response.is_json, (response.status_code, response.get_data(as_text=True)[:200])
    data = response.get_json()
    if response.status_code >= 400:
        assert set(data) == {"error"} and set(data["error"]) == {"code", "message"}
    assert_masked(data)


def assert_masked(value: t.Any) -> None:
    """The seeded jobs' passwords never show."""
    if isinstance(value, dict):
        for key, item in value.items():
            assert key != "password" or item == MASK
            assert_masked(item)
    elif isinstance(value, list):
        for item in value:
            assert_masked(item)
