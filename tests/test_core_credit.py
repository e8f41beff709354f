"""core/credit.py: what a task's replicas are paid comes from the quorum, within caps."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fogwheel import protocol
from fogwheel.core.credit import (
    MAX_CPU_S,
    UNCHECKED_SLACK,
    Claim,
    capped,
    claim_cap,
    finite,
    granted_cpu,
    well_formed,
)

anything = st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(10**30), 10**30)
sane = st.floats(min_value=0, max_value=1e6, allow_nan=False)
claims = st.builds(
    Claim,
    node=st.sampled_from(["a", "b", "c", "d", "e"]),
    cpu_s=anything,
    wall_s=anything,
    cores=st.integers(-5, 5000),
)


def test_the_wire_and_the_credit_rule_share_one_bound() -> None:
    assert protocol.MAX_CPU_S == MAX_CPU_S


def test_a_liar_among_two_agreeing_replicas_is_paid_the_honest_claim() -> None:
    honest = Claim("h", 0.002, wall_s=0.5, cores=4)
    liar = Claim("l", 1e6, wall_s=0.5, cores=4)
    assert granted_cpu([honest, liar]) == 0.002


def test_a_lone_claim_is_held_to_wall_time_x_cores_and_to_the_cpu_limit() -> None:
    assert granted_cpu([Claim("l", 1e6, wall_s=0.25, cores=2)]) == 0.5
    assert granted_cpu([Claim("l", 1e6, wall_s=100.0, cores=2)], cpu_limit=3.0) == 3.0


def test_a_lone_claim_is_held_to_the_typical_checked_run_and_a_checked_one_is_not() -> None:
    lone = Claim("l", 1e6, wall_s=10.0, cores=1)
    assert granted_cpu([lone], typical=0.004) == pytest.approx(0.004 * UNCHECKED_SLACK)
    both = [Claim("a", 0.9, wall_s=10.0, cores=1), Claim("b", 1.0, wall_s=10.0, cores=1)]
    assert granted_cpu(both, typical=0.004) == 0.9  # checked work is paid what it took


def test_numbers_that_are_no_numbers_are_paid_nothing_and_have_no_say() -> None:
    honest = Claim("h", 0.25, wall_s=10.0, cores=1)
    for bad in (math.nan, -1.0, -math.inf, math.inf):
        assert granted_cpu([Claim("x", bad, wall_s=10.0, cores=1)]) == 0.0
        if not bad > 0:  # a wall time that is no time caps at nothing
            assert granted_cpu([Claim("x", 1.0, wall_s=bad, cores=1)]) == 0.0
        assert granted_cpu([honest, Claim("x", bad, wall_s=10.0, cores=1)]) == 0.25
    assert granted_cpu([Claim("x", 1e300, wall_s=math.inf, cores=10**9)]) == MAX_CPU_S
    assert granted_cpu([]) == 0.0


@given(st.lists(claims, min_size=1, max_size=6), st.none() | anything, st.none() | anything)
def test_the_granted_credit_is_under_every_cap(cs, cpu_limit, typical) -> None:
    g = granted_cpu(cs, cpu_limit=cpu_limit, typical=typical)
    assert 0.0 <= g <= MAX_CPU_S and math.isfinite(g)
    for c in cs:
        assert g <= claim_cap(c, cpu_limit)  # every replica is paid g: under each one's cap
        if well_formed(c.cpu_s):
            assert g <= capped(c, cpu_limit) <= finite(c.cpu_s)
    if cpu_limit is not None:
        assert g <= finite(cpu_limit)
    if len(cs) == 1 and typical is not None:
        assert g <= finite(typical) * UNCHECKED_SLACK


honest_claims = st.builds(
    Claim, node=st.just("h"), cpu_s=sane, wall_s=anything, cores=st.integers(-5, 5000)
)


@given(st.lists(honest_claims, min_size=1, max_size=5), claims, st.none() | sane)
def test_one_more_claim_a_liars_included_never_raises_it(honest, liar, cpu_limit) -> None:
    before = granted_cpu(honest, cpu_limit=cpu_limit)
    after = granted_cpu([*honest, liar], cpu_limit=cpu_limit)
    assert after <= before
    assert after <= min(capped(c, cpu_limit) for c in honest)
