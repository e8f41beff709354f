"""Token buckets per node (core/ratelimit.py): the burst, then the rate, and a bounded map."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fogwheel.core import ratelimit
from fogwheel.core.ratelimit import Bucket, Buckets, Limit, take

LIMIT = Limit(rate=10.0, burst=5.0)


def test_a_new_caller_gets_its_burst_at_once_then_waits_for_the_rate() -> None:
    b: Bucket | None = None
    for _ in range(5):
        b, wait = take(b, LIMIT, 100.0)
        assert wait == 0.0
    b, wait = take(b, LIMIT, 100.0)
    assert wait == pytest.approx(0.1)  # one token every 1/rate s
    b, wait = take(b, LIMIT, 100.11)  # (100.1 - 100.0 is a hair under 0.1 in floats)
    assert wait == 0.0


def test_a_refused_call_spends_nothing() -> None:
    b: Bucket | None = None
    for _ in range(5):
        b, _ = take(b, LIMIT, 0.0)
    for _ in range(100):  # hammering while refused does not push the next token further out
        b, wait = take(b, LIMIT, 0.05)
        assert wait == pytest.approx(0.05)
    _, wait = take(b, LIMIT, 0.1)
    assert wait == 0.0


def test_a_clock_that_goes_back_refills_nothing() -> None:
    b = Bucket(tokens=0.0, at=50.0)
    _, wait = take(b, LIMIT, 10.0)
    assert wait == pytest.approx(0.1)


def test_rate_zero_admits_everything() -> None:
    buckets = Buckets(Limit(rate=0.0, burst=1.0))
    assert all(buckets.take(b"k", 1.0) == 0.0 for _ in range(1000))
    assert len(buckets) == 0  # nothing is kept when off


@pytest.mark.parametrize("rate,burst", [(-1.0, 5.0), (float("nan"), 5.0), (1.0, 0.5)])
def test_nonsense_limits_are_refused(rate: float, burst: float) -> None:
    with pytest.raises(ValueError):
        Limit(rate, burst)


def test_the_map_forgets_the_least_recently_used_caller_first() -> None:
    buckets = Buckets(Limit(rate=1.0, burst=1.0), capacity=2)
    assert buckets.take(b"a", 0.0) == 0.0
    assert buckets.take(b"b", 0.0) == 0.0
    assert buckets.take(b"a", 0.0) > 0  # a is now the most recent
    assert buckets.take(b"c", 0.0) == 0.0  # b is forgotten
    assert len(buckets) == 2
    assert buckets.take(b"a", 0.0) > 0  # a was kept, empty


def test_retry_after_is_whole_seconds_and_at_least_one() -> None:
    assert ratelimit.retry_after(0.01) == "1"
    assert ratelimit.retry_after(1.0) == "1"
    assert ratelimit.retry_after(1.2) == "2"


@given(
    rate=st.floats(0.1, 1000.0),
    burst=st.floats(1.0, 1000.0),
    gaps=st.lists(st.floats(0.0, 2.0), min_size=1, max_size=200),
)
def test_admitted_calls_never_exceed_burst_plus_rate_times_elapsed(
    rate: float, burst: float, gaps: list[float]
) -> None:
    limit = Limit(rate, burst)
    b: Bucket | None = None
    now, admitted = 0.0, 0
    for gap in gaps:
        now += gap
        b, wait = take(b, limit, now)
        admitted += wait == 0.0
        assert wait >= 0.0
        assert 0.0 <= b.tokens <= burst
    assert admitted <= burst + rate * now + 1e-6
