"""core/owners.py and core/quota.py: joins, votes, placement, crashes and quotas, purely."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fogwheel.core import owners, quota
from fogwheel.core.owners import (
    COUNT,
    GIVE_UP,
    REFUND,
    Admit,
    Device,
    Failure,
    Refuse,
    Token,
    admit,
    barred,
    failure_verdict,
    network_of,
)

T0 = 1_000_000.0


def token(**kw: object) -> Token:
    base = {
        "owner": "o-1",
        "max_devices": 5,
        "rate_per_hour": 3600.0,
        "bucket": 5.0,
        "bucket_at": T0,
    }
    return Token(**{**base, **kw})  # type: ignore[arg-type]


def test_a_token_admits_devices_up_to_its_cap_then_refuses_with_403() -> None:
    tok = token(max_devices=3, rate_per_hour=1e6, bucket=1e5)
    for _ in range(3):
        decision = admit(tok, T0)
        assert isinstance(decision, Admit)
        tok = decision.token
    refused = admit(tok, T0)
    assert isinstance(refused, Refuse) and refused.status == 403
    assert "3 devices" in refused.reason and "--max-devices" in refused.reason


def test_a_token_refuses_joins_faster_than_its_rate_with_429_and_when_to_retry() -> None:
    tok = token(max_devices=1000, rate_per_hour=60.0, bucket=owners.burst(60.0))
    admitted = 0
    while isinstance(d := admit(tok, T0), Admit):
        tok, admitted = d.token, admitted + 1
    assert admitted == owners.burst(60.0) == 6
    assert isinstance(d, Refuse) and d.status == 429 and d.retry_after_s == pytest.approx(60.0)
    assert isinstance(admit(tok, T0 + 61.0), Admit)  # one more a minute later


@pytest.mark.parametrize(
    ("kw", "words"),
    [({"revoked": True}, "revoked"), ({"expires_at": T0}, "expired")],
)
def test_a_revoked_or_expired_token_refuses_with_401(kw: dict, words: str) -> None:
    d = admit(token(**kw), T0)
    assert isinstance(d, Refuse) and d.status == 401 and words in d.reason


@given(st.floats(0.1, 1e6), st.floats(0, 1e6), st.floats(0, 1e7))
def test_the_bucket_never_holds_more_than_its_burst(rate: float, have: float, later: float) -> None:
    tok = token(rate_per_hour=rate, bucket=min(have, owners.burst(rate)))
    assert 0 <= owners.bucket_now(tok, T0 + later) <= owners.burst(rate)


def test_claims_are_capped_at_what_a_device_can_have() -> None:
    assert owners.bounded_claim(1024, 1 << 24, 16 << 20) == (64, 1 << 20, 16 << 20)
    assert owners.bounded_claim(4, 512, 8000) == (4, 512, 8000)


@pytest.mark.parametrize(
    ("host", "net"),
    [
        ("81.2.69.7", "81.2.69.0/24"),
        ("203.0.113.7", None),  # documentation range: not a real network
        ("8.8.4.4", "8.8.4.0/24"),
        ("2001:4860::8888", "2001:4860::/48"),
        ("::ffff:8.8.8.8", "8.8.8.0/24"),
        ("127.0.0.1", None),
        ("10.1.2.3", None),
        ("192.168.0.5", None),
        ("::1", None),
        ("testclient", None),
        (None, None),
    ],
)
def test_the_network_is_the_24_of_a_public_address_and_unknown_otherwise(host, net) -> None:
    assert network_of(host) == net


def test_devices_of_one_owner_are_one_voter_but_the_operators_each_vote_alone() -> None:
    assert owners.voter("n1", "o-a") == owners.voter("n2", "o-a")
    assert owners.voter("n1", "o-a") != owners.voter("n1", "o-b")
    assert owners.voter("n1", owners.OPERATOR) != owners.voter("n2", owners.OPERATOR)
    assert owners.voter("n1", None) != owners.voter("n2", None)


def test_a_copy_is_barred_from_the_same_owner_and_the_same_known_network() -> None:
    ran = [Device("n1", "o-a", "203.0.113.0/24")]
    assert barred(Device("n1", "o-a"), ran)  # the same device
    assert barred(Device("n2", "o-a"), ran)  # the same owner
    assert barred(Device("n3", "o-b", "203.0.113.0/24"), ran)  # the same network
    assert not barred(Device("n4", "o-b", "198.51.100.0/24"), ran)
    assert not barred(Device("n5", "o-b", None), ran)
    # the operator's devices, on an unknown network (a local fog), may check each other
    local = [Device("n1", owners.OPERATOR, None)]
    assert not barred(Device("n2", owners.OPERATOR, None), local)


def test_a_new_devices_crash_gives_the_task_another_attempt() -> None:
    assert failure_verdict(Failure("node:n1", proven=False), []) == REFUND


def test_a_proven_devices_crash_counts_once_per_owner() -> None:
    first = Failure("owner:o-a", proven=True)
    assert failure_verdict(first, []) == COUNT
    assert failure_verdict(Failure("owner:o-a", proven=True), [first]) == REFUND
    assert failure_verdict(Failure("owner:o-b", proven=True), [first]) == COUNT


@given(st.lists(st.booleans(), max_size=40))
def test_a_task_that_fails_everywhere_gives_up_after_poison_failures(proven: list[bool]) -> None:
    earlier = [Failure(f"node:n{i}", p) for i, p in enumerate(proven)]
    verdict = failure_verdict(Failure("node:x", proven=False), earlier)
    assert (verdict == GIVE_UP) == (len(earlier) + 1 >= owners.POISON_FAILURES)


@given(st.lists(st.text(max_size=3), max_size=30))
def test_sybils_of_one_owner_never_count_more_than_once(names: list[str]) -> None:
    """However many devices of one owner crash a task, at most one failure counts."""
    earlier: list[Failure] = []
    counted = 0
    for _ in names:
        f = Failure("owner:mallory", proven=True)
        v = failure_verdict(f, earlier)
        counted += v == COUNT
        earlier.append(f)
    assert counted <= 1


# -- quota ------------------------------------------------------------------------------------


def test_a_new_device_starts_small_and_doubles_with_each_validated_result() -> None:
    q = quota.START
    assert quota.in_flight_limit(q, cores=64) == 2
    for expected in (4, 8, 16):
        q = quota.grown(q)
        assert q == expected
    assert quota.shrunk(q) == 8 and quota.shrunk(1) == 1


@given(st.integers(1, quota.MAX), st.integers(0, 50), st.integers(0, 50), st.integers(1, 64))
def test_the_quota_stays_within_bounds(q: int, good: int, bad: int, cores: int) -> None:
    after = quota.shrunk(quota.grown(q, good), bad)
    assert 1 <= after <= quota.MAX
    assert 1 <= quota.in_flight_limit(after, cores) <= cores * quota.HELD_PER_SLOT
    assert 1 <= quota.scheduling_slots(after, cores) <= cores
    assert quota.room(after, cores, held=10_000) == 0


def test_a_claim_of_many_cores_weighs_only_what_the_quota_backs() -> None:
    assert quota.scheduling_slots(quota.START, cores=64) == 2
    assert quota.scheduling_slots(quota.MAX, cores=64) == 64
