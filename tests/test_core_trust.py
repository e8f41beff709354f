"""core/trust.py: reputation, spot-check rates and quorum verdicts, as pure functions."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fogwheel.core.trust import (
    MAX_REPLICAS,
    MIN_CHECK_RATE,
    PROBATION,
    Accept,
    NeedMore,
    Record,
    Reject,
    check_rate,
    quorum_for,
    record_after,
    reputation,
    verdict,
)

NONE: frozenset[str] = frozenset()


@pytest.mark.parametrize("streak", [0, 1, PROBATION - 1])
def test_a_node_on_probation_has_every_result_checked(streak: int) -> None:
    rec = Record(agreed=streak, streak=streak)
    assert check_rate(rec) == 1.0
    assert quorum_for(rec, draw=0.999) == 2


def test_a_proven_nodes_check_rate_falls_with_its_streak_but_never_to_zero() -> None:
    rates = [check_rate(Record(agreed=s, streak=s)) for s in (PROBATION, 20, 100, 10**6)]
    assert rates == sorted(rates, reverse=True)
    assert rates[0] == 1.0 and rates[1] == pytest.approx(0.5)
    assert rates[-1] == MIN_CHECK_RATE > 0


def test_the_draw_decides_whether_a_proven_nodes_result_is_checked() -> None:
    rec = Record(agreed=100, streak=100)  # check rate 0.1
    assert quorum_for(rec, draw=0.05) == 2
    assert quorum_for(rec, draw=0.5) == 1


def test_one_dispute_quarantines_and_resets_the_streak() -> None:
    after = record_after(Record(agreed=500, streak=500), agreed=False)
    assert after == Record(agreed=500, disputed=1, streak=0, quarantined=True)
    assert check_rate(after) == 1.0
    assert reputation(after) < reputation(Record(agreed=500, streak=500))


def test_reputation_of_a_new_node_is_a_coin_toss_and_grows_with_agreement() -> None:
    assert reputation(Record()) == 0.5
    assert reputation(Record(agreed=98, streak=98)) == pytest.approx(0.99)


def test_one_result_with_quorum_one_is_accepted_unchecked() -> None:
    v = verdict([("a", "d1")], quorum=1, outstanding=0, involved=frozenset({"a"}))
    assert isinstance(v, Accept) and v.agreeing == ("a",) and "unchecked" in v.reason


def test_one_result_with_quorum_two_asks_another_node() -> None:
    v = verdict([("a", "d1")], quorum=2, outstanding=0, involved=frozenset({"a"}))
    assert v == NeedMore(1, frozenset({"a"}), "checking a's result on another node")


def test_a_running_replica_is_waited_for_not_duplicated() -> None:
    v = verdict([("a", "d1")], quorum=2, outstanding=1, involved=frozenset({"a", "b"}))
    assert isinstance(v, NeedMore) and v.replicas == 0


def test_two_matching_results_are_agreed() -> None:
    v = verdict([("a", "d1"), ("b", "d1")], quorum=2, outstanding=0, involved=NONE)
    assert isinstance(v, Accept) and v.agreeing == ("a", "b") and v.disputing == ()


def test_a_split_vote_asks_a_third_node_and_the_majority_exposes_the_liar() -> None:
    split = verdict([("a", "d1"), ("b", "d2")], quorum=2, outstanding=0, involved=NONE)
    assert isinstance(split, NeedMore) and split.replicas == 1
    decided = verdict(
        [("a", "d1"), ("b", "d2"), ("c", "d1")], quorum=2, outstanding=0, involved=NONE
    )
    assert isinstance(decided, Accept)
    assert decided.digest == "d1" and decided.disputing == ("b",)


def test_no_agreement_within_the_replica_limit_rejects_the_task() -> None:
    votes = [(f"n{i}", f"d{i}") for i in range(MAX_REPLICAS)]
    v = verdict(votes, quorum=2, outstanding=0, involved=NONE)
    assert isinstance(v, Reject) and "different answers" in v.reason


nodes = st.sampled_from([f"n{i}" for i in range(8)])
digests = st.sampled_from(["d1", "d2", "d3"])


@settings(max_examples=300, deadline=None)
@given(
    votes=st.dictionaries(nodes, digests, max_size=MAX_REPLICAS),
    quorum=st.integers(1, 3),
    outstanding=st.integers(0, 3),
)
def test_a_verdict_never_accepts_without_a_strict_plurality_of_quorum_size(
    votes: dict[str, str], quorum: int, outstanding: int
) -> None:
    pairs = sorted(votes.items())
    v = verdict(pairs, quorum, outstanding, frozenset(votes))
    counts = {d: list(votes.values()).count(d) for d in set(votes.values())}
    if isinstance(v, Accept):
        assert counts[v.digest] >= quorum
        assert all(n < counts[v.digest] for d, n in counts.items() if d != v.digest)
        assert set(v.agreeing) | set(v.disputing) == set(votes)
    elif isinstance(v, NeedMore):
        assert v.replicas >= 0
        assert v.replicas == 0 or len(pairs) + outstanding + v.replicas <= MAX_REPLICAS
    else:
        assert len(pairs) + outstanding >= MAX_REPLICAS and outstanding == 0
