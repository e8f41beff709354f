"""core/pacing.py: how long a node waits before its next sync, for any fleet and any draw."""

from __future__ import annotations

import dataclasses
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fogwheel.core import pacing
from fogwheel.core.pacing import (
    Fleet,
    Pacer,
    SyncRate,
    max_wait_s,
    mean_wait_s,
    next_sync_s,
    pace_s,
    stretched,
)

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


# -- closed loop: the Pacer, busy nodes' pace, stretched horizons -------------

shares = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
waits = st.floats(min_value=0.0, max_value=1e4, allow_nan=False)


def test_the_pacer_stretches_waits_while_syncs_queue_and_relaxes_after() -> None:
    p = Pacer(target_s=0.1)
    for _ in range(30):  # queues of 2 s, 2 s waits: x4 (its bound) once per wait period
        p.observe(2.0, 1.0, 2.0)
    assert p.factor == pacing.MAX_FACTOR
    for _ in range(60):
        p.observe(0.01, 1.0, 2.0)  # no queue again: it shrinks back
    assert p.factor < pacing.MAX_FACTOR / 10


def test_the_pacer_corrects_once_per_wait_period_not_once_per_window() -> None:
    quick, slow = Pacer(0.1), Pacer(0.1)
    quick.observe(0.2, 1.0, 1.0)  # twice the target with a 1 s wait: x2 at once ...
    slow.observe(0.2, 1.0, 60.0)  # ... with a 60 s wait, a sixtieth of the move
    assert quick.factor == pytest.approx(2.0)
    assert slow.factor == pytest.approx(2.0 ** (1 / 60))
    slow.factor = 8.0
    slow.observe(0.05, 1.0, 60.0)  # half the target: down by a sixtieth of the move
    assert slow.factor == pytest.approx(8.0 * 0.5 ** (1 / 60))
    quick.observe(0.001, 1.0, 1.0)  # far under it: at most halved a window, never below 1
    assert quick.factor == 1.0


def test_a_burst_moves_the_pacer_once_and_then_little_more() -> None:
    # A fleet starting up: every device's first sync at once, for 15 s. The first window
    # stretches the 33 s open-loop wait x4; the next ones move by a 133rd of that each.
    p = Pacer(0.05)
    p.observe(5.0, 1.0, 0.5)
    assert p.factor == pytest.approx(4.0)
    for _ in range(14):
        p.observe(5.0, 1.0, 33.3 * p.factor)
    assert 4.0 < p.factor < 5.0


def test_a_quiet_window_does_not_relax_the_pacer() -> None:
    p = Pacer(0.05)
    p.factor = 8.0
    p.observe(0.0, 1.0, 10.0, samples=3)  # three syncs between a paced fleet's returns
    assert p.factor == 8.0
    p.observe(1.0, 1.0, 10.0, samples=3)  # but a queue, however few, still stretches it
    assert p.factor > 8.0


@given(
    st.lists(
        st.tuples(st.one_of(st.none(), st.floats(0.0, 1e3)), st.floats(0.0, 10.0), waits),
        max_size=50,
    )
)
def test_the_pacers_factor_stays_within_its_bounds_whatever_it_observes(
    windows: list[tuple[float | None, float, float]],
) -> None:
    p = Pacer()
    for latency, window, wait in windows:
        f = p.observe(latency, window, wait)
        assert 1.0 <= f <= pacing.MAX_FACTOR


def test_the_pacer_ignores_windows_it_cannot_read() -> None:
    p = Pacer()
    for latency, window in [(None, 1.0), (1.0, 0.0), (math.nan, 1.0), (1.0, math.inf), (-1, 1)]:
        assert p.observe(latency, window, 1.0) == 1.0


def test_the_high_percentile_is_the_nearest_rank() -> None:
    assert pacing.high_percentile([]) is None
    assert pacing.high_percentile([0.5]) == 0.5
    assert pacing.high_percentile([i / 1000 for i in range(1, 1001)]) == 0.99
    assert pacing.high_percentile([3.0, 1.0, 2.0], 0.5) == 2.0


@given(fleets, st.floats(min_value=0.0, max_value=1e4, allow_nan=False), draws)
def test_a_busy_node_keeps_its_own_pace_until_the_process_is_over_its_load(
    fleet: Fleet, factor: float, draw: float
) -> None:
    busy = pace_s(fleet, factor, draw)
    assert 0.0 <= busy <= max(pacing.MAX_WAIT_S, max_wait_s(fleet.gone_after_s))
    if factor <= 1.0:
        assert busy == 0.0
        assert stretched(fleet, factor, draw) == next_sync_s(fleet, draw)
    else:
        assert busy == 0.0 or busy >= pacing.MIN_PACE_S * (1 - pacing.JITTER) - 1e-3
        assert stretched(fleet, factor, draw) >= next_sync_s(fleet, draw) * (1 - 1e-9) - 1e-3


@given(fleets, st.floats(min_value=1.0, max_value=1e4, allow_nan=False), draws)
def test_a_paced_node_keeps_its_leases_and_stays_live_between_two_syncs(
    fleet: Fleet, factor: float, draw: float
) -> None:
    h = pacing.horizons(
        15.0,
        fleet.gone_after_s,
        pacing.paced_wait_s(fleet, factor),
        pacing.busy_wait_s(fleet, factor),
    )
    busy, idle = pace_s(fleet, factor, draw), stretched(fleet, factor, draw)
    assert busy * 3 <= h.lease_s + 1e-6  # a busy node renews at least three times a lease
    for told in (busy, idle):
        assert told < h.gone_after_s  # never silent long enough to look gone
    assert h.lease_s >= 15.0 and h.gone_after_s >= fleet.gone_after_s


def test_ten_thousand_devices_on_an_overloaded_process_come_back_far_less_often() -> None:
    fleet = Fleet(10_000, 300.0, True, GONE_S)
    assert pace_s(fleet, 1.0, 0.5) == 0.0
    assert pace_s(fleet, 4.0, 0.5) == pytest.approx(133.333, abs=1e-3)  # 10,000 / 300 x 4
    idle = pacing.paced_wait_s(fleet, 4.0)  # 10,000 in 300 / 4 syncs/s
    assert idle == pytest.approx(10_000 / 75)
    h = pacing.horizons(15.0, GONE_S, idle, pacing.busy_wait_s(fleet, 4.0))
    assert h.lease_s == pytest.approx(3.5 * 10_000 / 300 * 4 * 1.25)
    assert h.gone_after_s == pytest.approx(1.5 * 10_000 / 300 * 4 * 1.25)


def test_a_small_fleet_stretched_hard_still_reports_within_seconds() -> None:
    two = Fleet(2, 300.0, True, GONE_S)
    assert pace_s(two, 2.0, 0.5) == 0.0  # 13 ms: less than the agent's own report delay
    assert pace_s(two, 100.0, 0.5) == pytest.approx(0.667, abs=1e-3)  # the most: 2 / 300 x 100
    idle = pacing.paced_wait_s(Fleet(4, 300.0, False, GONE_S), 100.0)
    assert idle == pytest.approx(4 / 1.5)  # half of 3 syncs/s for four idle nodes
