"""The coordinator's refusals in the CLI's words: the key and the flag, the field and its form."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fogwheel.core.explain import explain_refusal, kinds_named

CASES = {
    "wrong admin key": (
        401,
        "unknown or revoked key: this endpoint takes the admin key",
        ["--admin-key / FOGWHEEL_ADMIN_KEY", "revoked"],
        ["--api-key"],
    ),
    "wrong api key": (
        401,
        "unknown or revoked key: this endpoint takes a customer API key",
        ["--api-key / FOGWHEEL_API_KEY"],
        ["--admin-key"],
    ),
    "admin or owner": (
        401,
        "unknown or revoked key: this endpoint takes the admin key or an owner key",
        ["--admin-key / FOGWHEEL_ADMIN_KEY", "--owner-key / FOGWHEEL_OWNER_KEY"],
        ["--api-key"],
    ),
    "node credential": (
        401,
        "unknown or revoked key: this endpoint takes a node credential",
        ["node.json", "--data-dir"],
        ["--api-key"],
    ),
    "no key sent": (
        401,
        "missing credentials: send the header 'Authorization: Bearer <key>'; this endpoint "
        "takes a customer API key",
        ["no key was sent", "--api-key"],
        [],
    ),
    "customer key where admin is wanted": (
        403,
        "this endpoint is for admin keys, not for a customer key",
        ["the admin key (--admin-key / FOGWHEEL_ADMIN_KEY)", "given is a customer API key"],
        [],
    ),
    "a route the API does not have": (
        404,
        "Not Found",
        ["the coordinator URL is the base", "without /v1", "--coordinator"],
        [],
    ),
    "content id of the wrong form": (
        422,
        "path.content_id: String should match pattern '^c[0-9a-f]{24}$'",
        ["the content id is not in the right form", "'c' and 24 hex digits"],
        ["pattern", "^c", "String should"],
    ),
    "name too long": (
        422,
        "query.name: String should have at most 200 characters",
        ["the name is too long: at most 200 characters"],
        ["String should"],
    ),
    "missing field": (
        422,
        "body.owner_id: Field required",
        ["the owner id is missing"],
        ["Field required"],
    ),
    "unknown field, number rule": (
        422,
        "query.wait_s: Input should be less than or equal to 30",
        ["the field wait_s should be at most 30"],
        ["Input should"],
    ),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_a_refusal_names_what_fixes_it(case: str) -> None:
    status, message, present, absent = CASES[case]
    sentence = explain_refusal(status, message)
    for words in present:
        assert words in sentence, sentence
    for words in absent:
        assert words not in sentence, sentence


@pytest.mark.parametrize(
    "status, message",
    [
        (404, "no job 12"),
        (409, "a customer named 'acme' exists already (c-1234abcd): pick another name"),
        (422, "fn: a python job needs the pickled function"),
        (422, "blob 0123 is not uploaded: PUT it to /v1/blobs/<sha> first"),
        (403, "this join token admits no more devices"),
    ],
)
def test_the_coordinators_own_sentences_pass_through(status: int, message: str) -> None:
    assert explain_refusal(status, message) == message


@given(st.integers(100, 599), st.text(max_size=300))
def test_any_refusal_gives_a_sentence(status: int, message: str) -> None:
    assert isinstance(explain_refusal(status, message), str)


def test_kinds_are_found_by_their_words() -> None:
    assert kinds_named("the admin key or an owner key") == ["admin", "owner"]
    assert kinds_named("a customer API key or a node credential") == ["customer", "node"]
