"""core/uptime.py: a device's up intervals and its expected up time (pure)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fogwheel.core import scheduler
from fogwheel.core.uptime import UpHistory, after_sync, expected_up_s

H = 30.0  # the gone horizon in these tests


def sync(h: UpHistory, last_seen: float, now: float, *, was_up: bool = True, leaving=False):
    return after_sync(
        h, was_up=was_up, last_seen=last_seen, now=now, horizon=now - H, leaving=leaving
    )


def test_no_completed_interval_means_unknown() -> None:
    assert expected_up_s(0.0, 0) is None
    assert expected_up_s(123.0, 0) is None


@pytest.mark.parametrize(
    ("total", "count", "mean"), [(30.0, 1, 30.0), (40.0, 2, 20.0), (7200.0, 3, 2400.0)]
)
def test_the_expected_up_time_is_the_mean_completed_interval(total, count, mean) -> None:
    assert expected_up_s(total, count) == mean


def test_a_leaving_sync_closes_the_interval_at_that_sync() -> None:
    h = sync(UpHistory(up_since=100.0), last_seen=120.0, now=130.0, leaving=True)
    assert h == UpHistory(None, 30.0, 1)


def test_a_device_back_after_going_gone_closes_its_interval_at_its_last_sync() -> None:
    # seen last at 150 (up since 100), silent past the horizon, back at 500: 50 s up, up again
    h = sync(UpHistory(up_since=100.0), last_seen=150.0, now=500.0)
    assert h == UpHistory(500.0, 50.0, 1)


def test_a_sync_within_the_horizon_changes_nothing() -> None:
    h = UpHistory(up_since=100.0, total_s=40.0, count=2)
    assert sync(h, last_seen=110.0, now=120.0) == h


def test_a_device_that_left_starts_a_new_interval_when_it_syncs_again() -> None:
    left = UpHistory(None, 30.0, 1)
    assert sync(left, last_seen=130.0, now=200.0, was_up=False) == UpHistory(200.0, 30.0, 1)
    # ... and leaving again while not up closes nothing
    assert sync(left, last_seen=130.0, now=140.0, was_up=False, leaving=True) == left


def test_a_row_without_a_start_starts_counting_now() -> None:
    # a node row from before the columns existed: up, no up_since
    assert sync(UpHistory(), last_seen=90.0, now=100.0) == UpHistory(100.0, 0.0, 0)
    assert sync(UpHistory(), last_seen=90.0, now=100.0, leaving=True) == UpHistory()


def test_a_clock_step_back_never_counts_negative_time() -> None:
    h = sync(UpHistory(up_since=200.0), last_seen=150.0, now=190.0, leaving=True)
    assert h.total_s == 0.0 and h.count == 1


steps = st.lists(
    st.tuples(st.floats(0.0, 100.0), st.booleans()), min_size=1, max_size=40
)  # (seconds since the last sync, leaving)


@given(steps)
def test_completed_intervals_add_up_to_the_time_up_between_start_and_end(seq) -> None:
    """Whatever the sequence, the total is the sum of closed intervals, each no longer than
    the time since it began, and the mean is between the shortest and the longest."""
    now, last, up = 0.0, 0.0, True
    h = UpHistory(up_since=0.0)
    closed: list[float] = []
    for gap, leaving in seq:
        now = last + gap
        before = h
        h = sync(h, last_seen=last, now=now, was_up=up, leaving=leaving)
        if h.count > before.count:
            assert before.up_since is not None
            closed.append(h.total_s - before.total_s)
            assert 0.0 <= closed[-1] <= now - before.up_since + 1e-9
        up, last = not leaving, now
    assert h.count == len(closed)
    assert h.total_s == pytest.approx(sum(closed))
    mean = expected_up_s(h.total_s, h.count)
    if closed:
        assert mean is not None and min(closed) - 1e-9 <= mean <= max(closed) + 1e-9
    else:
        assert mean is None


def test_deadline_placement_gives_a_node_expected_up_briefly_the_tasks_that_fit_first() -> None:
    """The estimate feeds core/scheduler.py's `deadline` policy: a 100 s task on a node
    expected up for 20 s goes after a 1 s task, though its deadline is nearer."""
    short_lived = scheduler.NodeView("n", 1, 1024, expected_up_s=expected_up_s(40.0, 2))
    cands = [
        scheduler.Candidate(1, "c", est_s=100.0, deadline=1_000.0),
        scheduler.Candidate(2, "c", est_s=1.0, deadline=5_000.0),
    ]
    cluster = scheduler.ClusterView(pending=2, total_slots=1)
    deadline = scheduler.Placement(scheduler.Policy.DEADLINE)
    [first] = scheduler.plan_lease(short_lived, 1, cands, cluster, deadline)
    assert first.task_id == 2
    steady = scheduler.NodeView("m", 1, 1024, expected_up_s=expected_up_s(7200.0, 2))
    [first] = scheduler.plan_lease(steady, 1, cands, cluster, deadline)
    assert first.task_id == 1
