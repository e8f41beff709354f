"""Conditional requests (core/preconditions.py, RFC 9110 §13): 304, 412, If-Range, and the
order of §13.2.2 — pure calls, no server."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fogwheel.core.preconditions import (
    NotModified,
    PreconditionFailed,
    Proceed,
    Validators,
    entity_tags,
    evaluate,
    http_date,
    parse_http_date,
)

HAVE = Validators(etag="c0123456789abcdef01234567", last_modified=1_700_000_000)
NOW = 1_800_000_000
TAG = HAVE.etag_header
BEFORE, AT, AFTER = (http_date(HAVE.last_modified + d) for d in (-1, 0, 1))


def outcome(**headers: str):
    fields = {k.replace("_", "-"): v for k, v in headers.items()}
    return evaluate(fields, HAVE, NOW, has_range="range" in fields)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, Proceed(True)),
        ({"if_none_match": TAG}, NotModified),
        ({"if_none_match": f'"other", W/{TAG}'}, NotModified),  # weak comparison (§13.1.2)
        ({"if_none_match": "*"}, NotModified),
        ({"if_none_match": '"other"'}, Proceed(True)),
        ({"if_modified_since": AT}, NotModified),
        ({"if_modified_since": AFTER}, NotModified),
        ({"if_modified_since": BEFORE}, Proceed(True)),
        ({"if_modified_since": http_date(NOW + 10)}, Proceed(True)),  # future: invalid
        ({"if_modified_since": "yesterday"}, Proceed(True)),  # unparseable: ignored
        ({"if_match": TAG}, Proceed(True)),
        ({"if_match": "*"}, Proceed(True)),
        ({"if_match": '"other"'}, PreconditionFailed),
        ({"if_match": f"W/{TAG}"}, PreconditionFailed),  # If-Match compares strongly
        ({"if_unmodified_since": AT}, Proceed(True)),
        ({"if_unmodified_since": BEFORE}, PreconditionFailed),
        ({"range": "bytes=0-1", "if_range": TAG}, Proceed(True)),
        ({"range": "bytes=0-1", "if_range": AT}, Proceed(True)),
        ({"range": "bytes=0-1", "if_range": '"other"'}, Proceed(False)),
        ({"range": "bytes=0-1", "if_range": f"W/{TAG}"}, Proceed(False)),  # weak never matches
        ({"range": "bytes=0-1", "if_range": AFTER}, Proceed(False)),  # a date must be exact
        ({"range": "bytes=0-1", "if_range": "garbage"}, Proceed(False)),
        ({"if_range": '"other"'}, Proceed(True)),  # If-Range without Range means nothing
    ],
)
def test_each_condition_alone(headers: dict[str, str], expected) -> None:
    got = outcome(**headers)
    if isinstance(expected, type):
        assert isinstance(got, expected)
        assert got.reason  # every 304 and 412 says why
    else:
        assert got == expected


def test_if_match_is_decided_before_if_none_match_and_wins_with_a_412() -> None:
    assert isinstance(outcome(if_match='"other"', if_none_match=TAG), PreconditionFailed)


def test_if_match_present_makes_if_unmodified_since_irrelevant() -> None:
    assert outcome(if_match=TAG, if_unmodified_since=BEFORE) == Proceed(True)


def test_if_none_match_present_makes_if_modified_since_irrelevant() -> None:
    """§13.1.3: a recipient must ignore If-Modified-Since when If-None-Match is there."""
    assert outcome(if_none_match='"other"', if_modified_since=AFTER) == Proceed(True)


def test_a_304_is_decided_before_if_range() -> None:
    assert isinstance(outcome(if_none_match=TAG, range="bytes=0-1", if_range='"x"'), NotModified)


def test_header_names_are_case_insensitive() -> None:
    assert isinstance(evaluate({"If-None-Match": TAG}, HAVE, NOW, False), NotModified)


@pytest.mark.parametrize(
    ("field", "parsed"),
    [
        ('"a", W/"b" ,"c"', ([(False, "a"), (True, "b"), (False, "c")], False)),
        ("*", ([], True)),
        ("a, b", None),  # unquoted: malformed
        ("", None),
    ],
)
def test_entity_tag_lists(field: str, parsed) -> None:
    assert entity_tags(field) == parsed


@pytest.mark.parametrize(
    "text",
    ["Sun, 06 Nov 1994 08:49:37 GMT", "Sunday, 06-Nov-94 08:49:37 GMT", "Sun Nov  6 08:49:37 1994"],
)
def test_the_three_http_date_forms_read_the_same(text: str) -> None:
    """RFC 9110 §5.6.7: recipients must accept the obsolete forms too."""
    assert parse_http_date(text) == 784111777


@given(st.integers(0, 2**33))
def test_an_http_date_round_trips(seconds: int) -> None:
    assert parse_http_date(http_date(seconds)) == seconds


@given(st.text(max_size=80))
def test_no_field_value_makes_evaluate_raise(junk: str) -> None:
    for name in ("if-match", "if-none-match", "if-modified-since", "if-unmodified-since"):
        evaluate({name: junk, "if-range": junk}, HAVE, NOW, has_range=True)
