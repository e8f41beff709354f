"""core/pacing.py: how long a node waits before its next sync, for any fleet and any draw."""

from __future__ import annotations

import dataclasses
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fogwheel.core import pacing
from fogwheel.core.pacing import Fleet, SyncRate, max_wait_s, mean_wait_s, next_sync_s

GONE_S = 45.0  # three 15 s leases, the coordinator's default

fleets = st.builds(
    Fleet,
    live=st.integers(min_value=0, max_value=10_000_000),
    budget=st.floats(min_value=0.0, max_value=1e7, allow_nan=False),
    work_waiting=st.booleans(),
    gone_after_s=st.floats(min_value=0.5, max_value=1e5, allow_nan=False),
    busy_per_s=st.floats(min_value=0.0, max_value=1e6, allow_nan=False),
)
draws = st.floats(min_value=0.0, max_value=1.0, exclude_max=True)


@given(fleets, draws)
def test_a_wait_is_never_shorter_than_the_agents_own_poll_nor_long_enough_to_look_gone(
    fleet: Fleet, draw: float
) -> None:
    wait = next_sync_s(fleet, draw)
    assert math.isfinite(wait)
    assert pacing.POLL_S <= wait <= max_wait_s(fleet.gone_after_s)
    if fleet.gone_after_s * pacing.GONE_SHARE >= pacing.POLL_S:
        assert wait < fleet.gone_after_s  # a node that waits it is still live


@given(fleets, draws)
def test_the_idle_fleets_syncs_stay_within_their_share_of_the_budget_unless_the_wait_is_capped(
    fleet: Fleet, draw: float
) -> None:
    mean = mean_wait_s(fleet)
    share = 1.0 if fleet.work_waiting else pacing.IDLE_SHARE
    capped = mean >= max_wait_s(fleet.gone_after_s) / (1 + pacing.JITTER) * (1 - 1e-9)
    floored = mean <= pacing.POLL_S * (1 + 1e-9)
    left = fleet.budget * share - pacing.BUSY_COST * fleet.busy_per_s
    allowed = max(left, fleet.budget * pacing.IDLE_FLOOR)
    if fleet.budget > 0 and not (capped or floored):
        assert fleet.live / mean <= allowed * (1 + 1e-9)


@given(fleets, st.floats(min_value=0.0, max_value=1e4, allow_nan=False))
def test_busy_syncs_never_make_idle_nodes_come_more_often(fleet: Fleet, more: float) -> None:
    busier = dataclasses.replace(fleet, busy_per_s=fleet.busy_per_s + more)
    assert mean_wait_s(busier) >= mean_wait_s(fleet)


@given(fleets, st.integers(min_value=1, max_value=1_000_000))
def test_a_bigger_fleet_never_syncs_more_often(fleet: Fleet, more: int) -> None:
    bigger = dataclasses.replace(fleet, live=fleet.live + more)
    assert mean_wait_s(bigger) >= mean_wait_s(fleet)


@given(fleets)
def test_work_waiting_never_makes_a_node_wait_longer(fleet: Fleet) -> None:
    busy = dataclasses.replace(fleet, work_waiting=True)
    idle = dataclasses.replace(fleet, work_waiting=False)
    assert mean_wait_s(busy) <= mean_wait_s(idle)


@given(fleets, draws, draws)
def test_the_wait_grows_with_the_draw_and_is_the_same_for_the_same_draw(
    fleet: Fleet, a: float, b: float
) -> None:
    lo, hi = sorted((a, b))
    assert next_sync_s(fleet, lo) <= next_sync_s(fleet, hi)
    assert next_sync_s(fleet, a) == next_sync_s(fleet, a)


def test_ten_thousand_idle_devices_are_spread_over_the_longest_safe_wait() -> None:
    fleet = Fleet(10_000, 300.0, False, GONE_S)
    waits = [next_sync_s(fleet, i / 1000) for i in range(1000)]
    assert max(waits) <= 30.0  # two thirds of 45 s
    assert min(waits) >= 0.6 * max(waits)  # jittered: not all at once
    assert len(set(waits)) > 500


@pytest.mark.parametrize(
    ("live", "work", "mean"),
    [
        (10, False, 0.5),  # a small fleet keeps the agent's own interval
        (600, False, 4.0),  # 600 nodes in half of 300 syncs/s
        (600, True, 2.0),  # with work waiting, the whole budget
        (100_000, True, 24.0),  # capped: 30 s at most after the jitter
    ],
)
def test_mean_waits_for_a_few_fleets(live: int, work: bool, mean: float) -> None:
    assert mean_wait_s(Fleet(live, 300.0, work, GONE_S)) == pytest.approx(mean)


def test_no_budget_means_the_longest_safe_wait_not_a_division_by_zero() -> None:
    assert next_sync_s(Fleet(100, 0.0, False, GONE_S), 0.5) == pytest.approx(24.0)
    assert next_sync_s(Fleet(0, 300.0, False, GONE_S), 0.5) == pacing.POLL_S


def test_a_busy_fleet_leaves_the_idle_nodes_what_its_syncs_do_not_cost() -> None:
    # 600 nodes, 300 syncs/s of budget with work waiting: 40 busy syncs a second cost 200.
    assert mean_wait_s(Fleet(600, 300.0, True, GONE_S, busy_per_s=40)) == pytest.approx(6.0)
    # never less than a tenth of the budget: 600 / 30
    assert mean_wait_s(Fleet(600, 300.0, True, GONE_S, busy_per_s=1e4)) == pytest.approx(20.0)


def test_sync_rate_counts_the_last_whole_second() -> None:
    rate = SyncRate()
    for k in range(30):
        rate.add(100.0 + k / 30)  # 30 in second 100
    assert rate.per_s(100.9) == 30
    rate.add(101.2)
    assert rate.per_s(101.5) == 30  # second 101 has 1 so far: the last whole one counts
    assert rate.per_s(102.1) == 1
    assert rate.per_s(110.0) == 0
