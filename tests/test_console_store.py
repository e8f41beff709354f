"""The console's queries on SQLite and PostgreSQL (store/console.py) and the flywheel's pure
decisions (core/flywheel.py): one sample a slot, a bounded window, progress by state."""

from __future__ import annotations

import math

import pytest

from fogwheel.core import flywheel
from fogwheel.protocol import SyncIn
from fogwheel.store import Store
from tests.test_store import T0, job, join, ok

PRICE = {"per_cpu_hour": 3600, "per_gb_served": 5}


def counts(**changes: int) -> flywheel.FleetCounts:
    base = dict(
        devices_online=2,
        devices_known=3,
        cores_online=8,
        disk_mb_online=4000,
        uplink_bps_online=0.0,
        tasks_running=3,
        slots_online=4,
        tasks_done=10,
        credits_to_owners=700,
        bytes_served=0,
        per_cpu_hour=3600,
        per_gb_served=5,
    )
    return flywheel.FleetCounts(**{**base, **changes})


@pytest.mark.parametrize(
    ("running", "slots", "share"),
    [(0, 0, 0.0), (3, 0, 0.0), (1, 4, 0.25), (4, 4, 1.0), (9, 4, 1.0), (-1, 4, 0.0)],
)
def test_utilisation_is_the_share_of_online_slots_held_and_never_above_one(
    running: int, slots: int, share: float
) -> None:
    assert flywheel.utilisation(running, slots) == share


def test_a_sample_belongs_to_the_slot_its_moment_falls_in() -> None:
    s = flywheel.sample(counts(), 125.0, 60.0)
    assert (s.slot, s.at, s.utilisation, s.devices_online) == (2, 125.0, 0.75, 2)
    assert flywheel.slot_of(119.999, 60.0) == 1 and flywheel.slot_of(120.0, 60.0) == 2


@pytest.mark.parametrize("period", [0.0, -5.0, 0.1, math.inf, math.nan])
def test_a_period_too_short_or_not_a_number_is_refused_with_what_to_give(period: float) -> None:
    with pytest.raises(ValueError, match="give at least"):
        flywheel.check_period(period)


def test_one_sample_a_slot_whoever_writes_it_first(store: Store) -> None:
    first = flywheel.sample(counts(devices_online=2), T0, 10.0)
    twin = flywheel.sample(counts(devices_online=99), T0 + 1, 10.0)  # same slot, later
    assert store.record_sample(first, keep_s=3600)
    assert not store.record_sample(twin, keep_s=3600)
    [row] = store.flywheel_history(0, 100)
    assert row["devices_online"] == 2


def test_samples_older_than_the_window_are_dropped(store: Store) -> None:
    for i in range(5):
        store.record_sample(flywheel.sample(counts(tasks_done=i), T0 + 10 * i, 10.0), keep_s=25)
    kept = store.flywheel_history(0, 100)
    assert [r["tasks_done"] for r in kept] == [2, 3, 4]  # 25 s back from the last


def test_history_answers_the_newest_limit_oldest_first_after_since(store: Store) -> None:
    for i in range(6):
        store.record_sample(flywheel.sample(counts(tasks_done=i), T0 + i, 1.0), keep_s=3600)
    assert [r["tasks_done"] for r in store.flywheel_history(0, 3)] == [3, 4, 5]
    assert [r["tasks_done"] for r in store.flywheel_history(T0 + 3.5, 100)] == [4, 5]


def test_counts_see_online_devices_their_cores_held_tasks_and_done_work(store: Store) -> None:
    a, b = join(store), join(store)
    job_id = store.create_job("c1", job(3), T0)
    leased = store.sync(a, SyncIn(want=2, slots_free=2), T0).tasks
    store.sync(a, SyncIn(results=[ok(leased[0]["task_id"], 1)]), T0 + 1)
    store.sync(b, SyncIn(want=0, slots_free=0), T0 + 1)
    got = store.flywheel_counts(T0 + 2, PRICE)
    assert got.devices_online == 2 and got.devices_known == 2
    assert got.tasks_running == 1 and got.tasks_done == 1
    assert got.cores_online == 4 and got.slots_online == 4 and got.per_cpu_hour == 3600
    assert store.flywheel_counts(T0 + 10_000, PRICE).devices_online == 0  # both gone
    progress = store.job_progress("c1", job_id, T0 + 2)
    assert progress is not None
    assert progress["states"] == {
        "pending": 1,
        "leased": 1,
        "verifying": 0,
        "done": 1,
        "failed": 0,
        "cancelled": 0,
    }
    assert sum(b["count"] for b in progress["throughput"]) == 1
    assert len(progress["throughput"]) == 30


def test_progress_of_another_customers_job_is_none(store: Store) -> None:
    job_id = store.create_job("c1", job(1), T0)
    assert store.job_progress("c2", job_id, T0) is None
    assert store.job_customer(job_id) == "c1" and store.job_customer(job_id + 1) is None


def test_fleet_extras_say_what_each_device_holds_now_and_earned(store: Store) -> None:
    a, b = join(store), join(store)
    job_id = store.create_job("c1", job(2), T0)
    held = len(store.sync(a, SyncIn(want=2, slots_free=2), T0).tasks)
    extras = store.fleet_extras([a, b, "nobody"])
    assert held and extras[a]["work"] == {str(job_id): held} and extras[b]["work"] == {}
    assert extras[a]["joined_at"] == T0 and extras["nobody"]["joined_at"] is None
    assert extras[a]["earned"] == 0
