"""Idle syncs cost little (issue 12): no write of their own, yet node-gone detection holds.

Store-level on SQLite and PostgreSQL with the `now` the tests pass in (a 10 s lease: a node
silent for 30 s is gone), then once with real processes and a 1 s lease.
"""

from __future__ import annotations

import os
import signal
import time

import httpx

from fogwheel.core import pacing
from fogwheel.localfog import LocalFog
from fogwheel.protocol import SyncIn
from fogwheel.store import Store
from fogwheel.store.fleet import HEARTBEAT_FLUSH_S
from tests.test_store import T0, join
from tests.test_store import job as make_job

IDLE = SyncIn(want=2, slots_free=2)  # what an idle two-core node sends


def states(store: Store, now: float) -> dict[str, str]:
    return {n["id"]: n["state"] for n in store.list_nodes(now)}


def seen(store: Store, node_id: str) -> float:
    return next(n["last_seen"] for n in store.list_nodes(T0) if n["id"] == node_id)


def test_idle_heartbeats_are_written_in_batches_never_later_than_the_sync(store: Store) -> None:
    a = join(store, "a")
    store.sync(a, IDLE, T0 + 5)  # the first batch is written at once
    assert seen(store, a) == T0 + 5
    store.sync(a, IDLE, T0 + 5.5)
    store.sync(a, IDLE, T0 + 5.9)
    assert seen(store, a) == T0 + 5  # held for the next batch
    store.sync(a, IDLE, T0 + 5 + HEARTBEAT_FLUSH_S + 0.1)
    assert seen(store, a) == T0 + 5.5  # the batch's earliest sync, not its latest


def test_a_silent_node_still_goes_gone_while_an_idle_one_stays_up(store: Store) -> None:
    a, b = join(store, "a"), join(store, "b")
    longest = pacing.max_wait_s(store.lease_seconds * 3)  # 20 s with a 10 s lease
    t = T0
    while t < T0 + 100:
        store.sync(a, IDLE, t)
        assert states(store, t + longest)[a] == "up", "an idle node that syncs is never gone"
        t += longest
    final = states(store, t)
    assert final[b] == "gone"
    assert final[a] == "up"


def test_a_node_that_reads_as_gone_is_up_again_at_its_next_sync(store: Store) -> None:
    a = join(store, "a")
    store.sync(a, IDLE, T0 + 1)
    assert states(store, T0 + 40)[a] == "gone"
    store.sync(a, IDLE, T0 + 40)
    assert states(store, T0 + 40)[a] == "up"  # written at once, not in the next batch


def test_an_idle_sync_that_changes_the_free_slots_is_written_at_once(store: Store) -> None:
    a = join(store, "a")
    store.sync(a, IDLE, T0 + 1)
    store.sync(a, SyncIn(want=0, slots_free=0), T0 + 1.2)
    [node] = [n for n in store.list_nodes(T0 + 1.2) if n["id"] == a]
    assert node["last_seen"] == T0 + 1.2


def test_an_idle_node_gets_work_at_the_first_sync_after_a_submission(store: Store) -> None:
    a = join(store, "a")
    for k in range(3):
        assert store.sync(a, IDLE, T0 + k).tasks == []
    store.create_job("c1", make_job(3), T0 + 3)
    assert len(store.sync(a, IDLE, T0 + 3).tasks) == 2


def test_a_node_that_leaves_is_gone_at_once(store: Store) -> None:
    a = join(store, "a")
    store.sync(a, IDLE, T0 + 1)
    store.sync(a, SyncIn(want=0, slots_free=2), T0 + 1.1, leaving=True)
    assert states(store, T0 + 1.2)[a] == "gone"
    store.sync(a, IDLE, T0 + 2)  # it came back: a state change, written at once
    assert states(store, T0 + 2)[a] == "up"


def test_with_real_processes_a_killed_agent_goes_gone_and_a_live_idle_one_does_not() -> None:
    with LocalFog(nodes=2, lease_seconds=1.0) as fog:
        # What a sync answers: a wait within the pacing bounds (3 s horizon: at most 2 s).
        info = httpx.post(
            f"{fog.url}/v1/nodes/join",
            json={
                "token": fog.join_string,
                "name": "probe",
                "cores": 1,
                "memory_mb": 64,
                "disk_mb": 0,
            },
            timeout=10,
        ).json()
        r = httpx.post(
            f"{fog.url}/v1/nodes/me/sync",
            json={"want": 1, "slots_free": 1},
            headers={"authorization": f"Bearer {info['credential']}"},
            timeout=10,
        )
        assert r.status_code == 200
        assert pacing.POLL_S <= r.json()["next_sync_s"] <= pacing.max_wait_s(3.0)
        victim = fog.nodes[0]
        assert victim is not None
        os.killpg(victim.pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while True:
            nodes = httpx.get(f"{fog.url}/v1/nodes", headers=fog.headers, timeout=10).json()
            by_name = {n["name"]: n["state"] for n in nodes["nodes"]}
            if by_name["local-0"] == "gone":
                break
            assert time.monotonic() < deadline, f"the killed agent never went gone: {by_name}"
            time.sleep(0.25)
        # The live agent keeps syncing while idle: never gone over several horizons.
        until = time.monotonic() + 7
        while time.monotonic() < until:
            nodes = httpx.get(f"{fog.url}/v1/nodes", headers=fog.headers, timeout=10).json()
            by_name = {n["name"]: n["state"] for n in nodes["nodes"]}
            assert by_name["local-1"] == "up", by_name
            time.sleep(0.25)


def test_a_live_coordinator_reloads_the_fleet_off_the_sync_path_and_a_stale_view_stays_short(
    store: Store,
) -> None:
    store.fleet_in_background = True  # as coordinator/server.py sets it
    a = join(store, "a")
    store.sync(a, IDLE, T0)
    with store.read() as c:
        assert [v.id for v in store._fleet_views(c, T0)] == [a]  # the first load is inline
    b = join(store, "b")
    store.sync(b, IDLE, T0 + 1.5)
    with store.read() as c:
        stale = store._fleet_views(c, T0 + 1.5)  # answered at once from the snapshot ...
    assert [v.id for v in stale] == [a]
    deadline = time.monotonic() + 10
    while True:  # ... while a thread of its own reloads it
        with store.read() as c:
            ids = {v.id for v in store._fleet_views(c, T0 + 1.6)}
        if ids == {a, b} or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert ids == {a, b}
    with store.read() as c:  # a snapshot older than FLEET_STALE_MAX_S is reloaded inline
        assert {v.id for v in store._fleet_views(c, T0 + 60)} == set()  # both gone by then
