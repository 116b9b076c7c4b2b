"""Masking secret-looking keys: no database needed."""

from __future__ import annotations

import copy
import json
import typing as t

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flask_durable_jobs.masking import (
    MASK,
    MAX_DEPTH,
    PREVIEW_CHARS,
    SECRET_KEY_PARTS,
    TOO_DEEP,
    is_secret_key,
    mask,
    mask_url,
    preview,
)


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


# -- depth -------------------------------------------------------------------------


def nested(levels: int, leaf: t.Any) -> t.Any:
    """``levels`` containers around ``leaf``, alternating dicts and lists."""
    value = leaf
    for level in range(levels):
        value = {"secret": "s", "down": value} if level % 2 else [value]
    return value


def depth_of(value: t.Any) -> tuple[int, t.Any]:
    """How many containers wrap the innermost value, and that value."""
    levels = 0
    while isinstance(value, (dict, list)):
        if isinstance(value, dict):
            assert value["secret"] == MASK
            value = value["down"]
        else:
            [value] = value
        levels += 1
    return levels, value


def test_mask_keeps_max_depth_levels_below_the_value() -> None:
    levels, leaf = depth_of(mask(nested(MAX_DEPTH + 1, "leaf")))
    assert (levels, leaf) == (MAX_DEPTH + 1, "leaf")


@pytest.mark.parametrize("extra", [1, 2, 500, 50_000])
def test_mask_cuts_what_is_deeper_without_recursing(extra: int) -> None:
    """Far past the interpreter's recursion limit, too: no RecursionError."""
    levels, leaf = depth_of(mask(nested(MAX_DEPTH + 1 + extra, "leaf")))
    assert (levels, leaf) == (MAX_DEPTH + 1, TOO_DEEP)


def test_mask_keeps_order_of_lists_and_keys() -> None:
    value = {"b": [1, [2, 3], {"x": 4, "api_key": 5}, 6], "a": [[], {}]}
    masked = mask(value)
    assert masked == {"b": [1, [2, 3], {"x": 4, "api_key": MASK}, 6], "a": [[], {}]}
    assert list(masked) == ["b", "a"] and list(masked["b"][2]) == ["x", "api_key"]


# -- callback URLs -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://hooks.example.com/done", "https://hooks.example.com/done"),
        ("http://user:pw@host/x", "http://********@host/x"),
        ("http://user@host:8080/x", "http://********@host:8080/x"),
        ("http://a@b:c@host/x?y=1", "http://********@host/x?y=1"),
        ("https://h/x?token=abc&n=1&Api-Key=k", "https://h/x?token=********&n=1&Api-Key=********"),
        ("https://h/x?access%5Ftoken=abc", "https://h/x?access%5Ftoken=********"),
        ("https://h/x?password", "https://h/x?password"),  # no value to hide
        ("https://h/x#token=abc", "https://h/x#token=abc"),
        ("http://[::1", MASK),  # not a URL: nothing of it is shown
    ],
)
def test_mask_url(url: str, shown: str) -> None:
    assert mask_url(url) == shown


# -- previews ------------------------------------------------------------------------


def test_small_values_are_their_own_preview() -> None:
    for value in (None, 3, "text", {"a": [1, 2]}, "x" * (PREVIEW_CHARS - 2)):
        assert preview(value) == (value, False)


def test_a_large_value_previews_as_the_start_of_its_json() -> None:
    value = {"rows": list(range(2000))}
    text = json.dumps(value, separators=(",", ":"))
    shown, cut = preview(value)
    assert cut is True
    assert shown == text[:PREVIEW_CHARS] + f"... [{len(text):,} characters in all]"
