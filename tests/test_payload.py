"""Decoding stored payloads and results (no database)."""

from __future__ import annotations

import json
import typing as t

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flask_durable_jobs import payload

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
