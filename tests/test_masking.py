"""Masking secret-looking keys: no database needed."""

from __future__ import annotations

import copy
import typing as t

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flask_durable_jobs.masking import MASK, SECRET_KEY_PARTS, is_secret_key, mask


@pytest.mark.parametrize(
    "key",
    [
        "password",
        "PASSWORD",
        "db_password",
        "passwordHash",
        "token",
        "accessToken",
        "refresh-token",
        "tokens_used",  # a plain substring match, on purpose
        "secret",
        "ClientSecret",
        "api_key",
        "API_KEY",
        "apiKey",
        "x-api-key",
        "stripe_api_key_live",
        "authorization",
        "Proxy-Authorization",
    ],
)
def test_secret_keys(key: str) -> None:
    assert is_secret_key(key)


@pytest.mark.parametrize(
    "key", ["to", "user", "pass", "key", "api", "auth", "author", "idempotency_key", ""]
)
def test_ordinary_keys(key: str) -> None:
    assert not is_secret_key(key)


def test_every_documented_part_masks() -> None:
    for part in SECRET_KEY_PARTS:
        assert is_secret_key(part) and is_secret_key(part.upper()) and is_secret_key(f"x_{part}_y")


def test_mask_at_any_depth_without_changing_the_input() -> None:
    value = {
        "user": "ann",
        "password": {"nested": "whole value goes"},
        "list": [1, {"token": None}, [{"Secret": 3, "ok": [{"api_key": [1, 2]}]}]],
        "tuple": ({"authorization": "Bearer x"},),
    }
    original = copy.deepcopy(value)
    assert mask(value) == {
        "user": "ann",
        "password": MASK,
        "list": [1, {"token": MASK}, [{"Secret": MASK, "ok": [{"api_key": MASK}]}]],
        "tuple": [{"authorization": MASK}],
    }
    assert value == original


@pytest.mark.parametrize("value", [None, 1, 1.5, True, "password", ["token"]])
def test_scalars_and_secret_looking_values_pass_through(value: t.Any) -> None:
    # Only keys decide: a value that merely looks secret is not masked.
    assert mask(value) == value


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.text(max_size=12) | st.sampled_from(["password", "x_TOKEN", "apiKey", "note"]),
            children,
            max_size=4,
        )
    ),
    max_leaves=30,
)


def _walk(original: t.Any, masked: t.Any) -> None:
    """Every secret key's value is the mask; everything else is unchanged."""
    if isinstance(original, dict):
        assert isinstance(masked, dict) and masked.keys() == original.keys()
        for key, item in original.items():
            if is_secret_key(key):
                assert masked[key] == MASK
            else:
                _walk(item, masked[key])
    elif isinstance(original, list):
        assert isinstance(masked, list) and len(masked) == len(original)
        for index, item in enumerate(original):
            _walk(item, masked[index])
    else:
        assert masked == original


@given(json_values)
def test_mask_property(value: t.Any) -> None:
    original = copy.deepcopy(value)
    masked = mask(value)
    assert value == original
    _walk(value, masked)
