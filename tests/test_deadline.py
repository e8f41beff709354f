"""The live coordinator's `deadline` placement: jobs' deadlines and nodes' up intervals
filled from the store (SQLite and PostgreSQL), and a real fog run with `--placement deadline`."""

from __future__ import annotations

import base64
import hashlib
import os
import random
import re
import subprocess
import sys
import time

import httpx
import pytest
from sqlalchemy import select

from fogwheel.core import scheduler
from fogwheel.core.uptime import UpHistory, after_sync, expected_up_s
from fogwheel.protocol import JobIn, Limits, NodeJoin, SyncIn, TaskIn, TaskReport, Value
from fogwheel.store import Store
from fogwheel.store.schema import nodes

T0 = 1_000_000.0
FN = Value(sha="a" * 64, size=10)
DEADLINE = scheduler.Placement(scheduler.Policy.DEADLINE)


def job(n: int, deadline: float | None = None) -> JobIn:
    return JobIn(
        name="t",
        kind="python",
        fn=FN,
        tasks=[TaskIn(args=Value(sha=f"{i:064x}", size=1, data="YQ==")) for i in range(n)],
        limits=Limits(),
        replicas=1,
        deadline=deadline,
    )


def join(store: Store, name: str, now: float, cores: int = 1) -> str:
    info = NodeJoin(token="x" * 8, name=name, cores=cores, memory_mb=512, disk_mb=1000)
    node_id, _ = store.join_node(info, now, quota=4096)
    return node_id


def history(store: Store, node_id: str) -> UpHistory:
    with store.read() as c:
        r = c.execute(
            select(nodes.c.up_since, nodes.c.up_total_s, nodes.c.up_count).where(
                nodes.c.id == node_id
            )
        ).one()
    return UpHistory(r.up_since, r.up_total_s, r.up_count)


def ok(t: dict) -> TaskReport:
    r = Value(sha=hashlib.sha256(b"r").hexdigest(), size=1, data=base64.b64encode(b"r").decode())
    return TaskReport(task_id=t["task_id"], attempt=t["attempt"], ok=True, value=r)


def test_a_job_with_a_near_deadline_is_leased_before_one_with_a_far_deadline_or_none(
    store: Store,
) -> None:
    store.placement = DEADLINE
    n = join(store, "n", T0)
    none = store.create_job("c1", job(2), T0)  # first in queue order
    far = store.create_job("c2", job(2, deadline=T0 + 90_000), T0)
    near = store.create_job("c3", job(2, deadline=T0 + 3_600), T0)
    got = store.sync(n, SyncIn(want=6, slots_free=1), T0 + 1).tasks
    assert [t["job_id"] for t in got] == [near, near, far, far, none, none]
    assert store.get_job("c3", near)["deadline"] == T0 + 3_600
    assert store.get_job("c1", none)["deadline"] is None


def test_under_fair_placement_the_same_jobs_go_in_turns_of_customers(store: Store) -> None:
    """The control: the order above is the policy's, not the queue's."""
    n = join(store, "n", T0)
    none = store.create_job("c1", job(1), T0)
    store.create_job("c2", job(1, deadline=T0 + 90_000), T0)
    near = store.create_job("c3", job(1, deadline=T0 + 3_600), T0)
    got = store.sync(n, SyncIn(want=3, slots_free=1), T0 + 1).tasks
    assert got[0]["job_id"] == none and got[-1]["job_id"] == near


def test_a_node_with_a_short_up_history_gets_the_short_task(store: Store) -> None:
    store.placement = DEADLINE
    # The long job has the nearer deadline and comes first in the queue: a node with no
    # reason to avoid it takes it first.
    long_ = store.create_job("c1", job(3, deadline=T0 + 50_000), T0)
    short = store.create_job("c2", job(3, deadline=T0 + 100_000), T0)
    # Each job's typical attempt (Candidate.est_s): one long task ran 20 s, one short 1 s.
    w = join(store, "w", T0, cores=8)
    first = store.sync(w, SyncIn(want=6, slots_free=8), T0).tasks
    a_long = next(t for t in first if t["job_id"] == long_)
    a_short = next(t for t in first if t["job_id"] == short)
    back = [t["task_id"] for t in first if t not in (a_long, a_short)]
    acked = store.sync(w, SyncIn(results=[ok(a_short)], release=back, slots_free=7), T0 + 1).acked
    acked += store.sync(w, SyncIn(results=[ok(a_long)], slots_free=8), T0 + 20).acked
    assert acked == [a_short["task_id"], a_long["task_id"]]
    # Two devices with up histories (within the store's 30 s gone horizon): f stays up 10 s
    # at a time, g 28 s.
    f, g = join(store, "f", T0 + 100), join(store, "g", T0 + 100)
    store.sync(f, SyncIn(slots_free=1), T0 + 110, leaving=True)
    store.sync(g, SyncIn(slots_free=1), T0 + 128, leaving=True)
    assert history(store, f) == UpHistory(None, 10.0, 1)
    assert history(store, g) == UpHistory(None, 28.0, 1)
    [to_g] = store.sync(g, SyncIn(want=1, slots_free=1), T0 + 130).tasks
    [to_f] = store.sync(f, SyncIn(want=1, slots_free=1), T0 + 130).tasks
    assert to_g["job_id"] == long_  # least slack: its 20 s fit g's 28 s
    assert to_f["job_id"] == short  # 20 s would likely be lost on f: the 1 s task first
    [task] = [t for t in store.list_tasks("c2", short, None, 10, 0) if t["id"] == to_f["task_id"]]
    assert task["history"][-1]["node_id"] == f


def test_the_stored_up_history_follows_core_uptime_through_leaves_and_gone_spells(
    store: Store,
) -> None:
    """A seeded sequence of syncs (some leaving, some after a silence past the gone horizon):
    the row's columns are, after each, what core/uptime.after_sync computes."""
    rng = random.Random(12)
    now = T0
    node = join(store, "n", now)
    model, last, up = UpHistory(up_since=now), now, True
    horizon_s = store.gone_after_s
    for step in range(40):
        now = last + rng.choice([1.0, 5.0, horizon_s + 7.0, 3 * horizon_s])
        leaving = rng.random() < 0.3
        # slots_free changes every sync: never an idle one (those write no history)
        store.sync(node, SyncIn(slots_free=step % 2), now, leaving=leaving)
        model = after_sync(
            model, was_up=up, last_seen=last, now=now, horizon=now - horizon_s, leaving=leaving
        )
        got = history(store, node)
        assert got.count == model.count, step
        assert got.total_s == pytest.approx(model.total_s), step
        assert got.up_since == model.up_since, step
        last, up = now, not leaving
    assert model.count >= 5  # the sequence did close intervals both ways


def test_an_idle_sync_writes_no_up_history(store: Store) -> None:
    node = join(store, "n", T0)
    store.sync(node, SyncIn(slots_free=1), T0 + 1)
    before = history(store, node)
    for i in range(5):  # nothing to report, nothing pending: heartbeats only
        store.sync(node, SyncIn(slots_free=1), T0 + 2 + i)
    assert history(store, node) == before == UpHistory(T0, 0.0, 0)


def test_the_lease_view_carries_the_mean_up_interval(store: Store) -> None:
    """Two intervals, 30 s (left) and 10 s (gone): the node's view says 20 s."""
    store.placement = DEADLINE
    n = join(store, "n", T0)
    store.sync(n, SyncIn(slots_free=0), T0 + 30, leaving=True)
    store.sync(n, SyncIn(slots_free=1), T0 + 40)
    store.sync(n, SyncIn(slots_free=0), T0 + 50)
    back = T0 + 50 + store.gone_after_s + 1
    store.sync(n, SyncIn(slots_free=1), back)  # silent past the horizon: closed at T0 + 50
    h = history(store, n)
    assert (h.total_s, h.count, h.up_since) == (40.0, 2, back)
    assert expected_up_s(h.total_s, h.count) == 20.0


# -- a real fog -------------------------------------------------------------------------------


def fogwheel(*args: str, fog) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FOGWHEEL_COORDINATOR": fog.url, "FOGWHEEL_API_KEY": fog.api_key}
    return subprocess.run(
        [sys.executable, "-m", "fogwheel", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def test_a_real_fog_with_deadline_placement_runs_a_job_submitted_with_a_deadline(
    tmp_path,
) -> None:
    from fogwheel.localfog import LocalFog

    with LocalFog(
        1, workdir=tmp_path, coordinator_args=["--placement", "deadline"], lease_seconds=5.0
    ) as fog:
        before = time.time()
        res = fogwheel("run", "--deadline", "2h", "--replicas", "1", "--", "echo", "due", fog=fog)
        assert res.returncode == 0, res.stderr[-2000:]
        assert res.stdout == "due\n"
        with httpx.Client(
            base_url=fog.url, headers={"authorization": f"Bearer {fog.api_key}"}
        ) as h:
            [j] = h.get("/v1/jobs").json()["jobs"]
            j_id = j["id"]
            assert j["state"] == "done"
            assert before + 7200 <= j["deadline"] <= time.time() + 7200
            # A deadline passed, or years ahead, is refused with a sentence.
            for due, word in ((time.time() - 60, "past"), (time.time() + 5 * 366 * 86400, "far")):
                body = {"kind": "command", "tasks": [{"command": ["true"]}], "deadline": due}
                r = h.post("/v1/jobs", json=body)
                assert r.status_code == 422, r.text
                assert word in r.text and "Unix time" in r.text
        # The SDK: a client's deadline (seconds from each submission) goes on every job.
        from fogwheel.client import Client

        with Client(fog.url, fog.api_key, replicas=1, deadline=600.0) as client:
            sent = time.time()
            assert client.run(["true"]).result().returncode == 0
            [mine] = [j for j in client.jobs(10) if j["id"] != j_id]
            assert sent + 600 <= mine["deadline"] <= time.time() + 600
        # Shown from now: under 2 h left, more than 1 h 50 m on any machine this runs on.
        one = fogwheel("jobs", str(j_id), fog=fog)
        assert one.returncode == 0, one.stderr[-2000:]
        assert re.search(r"deadline 20\d\d-\d\d-\d\d [\d:]+ \(in 1h 5\dm\)", one.stdout), one.stdout
        listed = fogwheel("jobs", fog=fog)
        assert listed.returncode == 0, listed.stderr[-2000:]
        assert "deadline" in listed.stdout and re.search(r"in 1h 5\dm", listed.stdout)
        assert re.search(r"in [5-9]m|in 10m", listed.stdout)  # the SDK's job: 600 s
        bad = fogwheel("run", "--deadline", "soon", "--", "true", fog=fog)
        assert bad.returncode != 0 and "not a duration" in bad.stderr


def test_an_older_database_gains_the_columns_and_its_rows_start_counting(store: Store) -> None:
    """store/migrate.py adds nodes.up_* and jobs.deadline; a node from before starts its
    first interval at its next sync, and an old job is placed as one without a deadline."""
    from sqlalchemy import text

    from fogwheel.store.migrate import add_missing_columns
    from fogwheel.store.schema import metadata

    store.placement = DEADLINE
    n = join(store, "old", T0)
    old_job = store.create_job("c1", job(1), T0)
    with store.engine.begin() as c:
        for col in ("up_since", "up_total_s", "up_count"):
            c.execute(text(f"ALTER TABLE nodes DROP COLUMN {col}"))
        c.execute(text("ALTER TABLE jobs DROP COLUMN deadline"))
    assert sorted(add_missing_columns(store.engine, metadata)) == [
        "jobs.deadline",
        "nodes.up_count",
        "nodes.up_since",
        "nodes.up_total_s",
    ]
    assert history(store, n) == UpHistory(None, 0.0, 0)
    new_job = store.create_job("c2", job(1, deadline=T0 + 60), T0 + 1)
    got = store.sync(n, SyncIn(want=2, slots_free=1), T0 + 2).tasks
    assert [t["job_id"] for t in got] == [new_job, old_job]
    assert history(store, n) == UpHistory(T0 + 2, 0.0, 0)
