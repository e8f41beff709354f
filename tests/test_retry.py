"""retry.py: one back-off policy, announced, that never retries an unknown host."""

from __future__ import annotations

import socket

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fogwheel import retry


def test_delays_double_from_the_first_up_to_the_cap() -> None:
    b = retry.Backoff(attempts=8, first_s=0.25, max_s=2.0)
    assert [b.delay(n) for n in range(1, 7)] == [0.25, 0.5, 1.0, 2.0, 2.0, 2.0]


def test_a_first_contact_gives_up_after_its_attempts_and_says_which_try_it_is() -> None:
    tries = retry.Attempts(retry.Backoff(attempts=8), budget_s=None, start=0.0)
    lines = []
    while tries.failed(now=0.0):
        lines.append(tries.announce("http://127.0.0.1:1", "connection refused"))
    assert tries.tried == 8 and len(lines) == 7
    assert lines[2] == "retrying http://127.0.0.1:1 (connection refused), 3 of 8"


def test_a_time_budget_retries_until_it_is_spent() -> None:
    tries = retry.Attempts(retry.Backoff(), budget_s=120.0, start=100.0)
    assert tries.limit > 8
    assert tries.failed(now=150.0)
    assert not tries.failed(now=220.0)


@given(st.floats(0, 600), st.integers(1, 20))
def test_the_attempts_within_a_budget_fit_in_it(budget: float, attempts: int) -> None:
    b = retry.Backoff(attempts=attempts)
    n = b.attempts_within(budget)
    assert n >= attempts
    if n > attempts:
        assert sum(b.delay(k) for k in range(1, n)) <= budget + 1e-9


def test_an_unknown_host_is_not_worth_retrying() -> None:
    with pytest.raises(httpx.ConnectError) as caught:
        httpx.get("http://no-such-host.invalid:8470/", timeout=5)
    assert retry.why_retry(caught.value) is None
    assert retry.is_unknown_host(caught.value)


def test_a_refused_connection_is_worth_retrying() -> None:
    with pytest.raises(httpx.ConnectError) as caught:
        httpx.get("http://127.0.0.1:1/", timeout=5)
    assert retry.why_retry(caught.value) == "connection refused"


@pytest.mark.parametrize(
    ("exc", "words"),
    [
        (socket.gaierror(socket.EAI_AGAIN, "try again"), "name lookup failed"),
        (ConnectionResetError(), "connection reset"),
        (httpx.ReadTimeout("slow"), "timed out"),
        (httpx.RemoteProtocolError("closed"), "connection dropped"),
    ],
)
def test_errors_that_may_heal_say_what_happened(exc: BaseException, words: str) -> None:
    assert retry.why_retry(exc) == words
