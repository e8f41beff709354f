"""store/waits.py: why a job's tasks wait, from the store's own rows, on SQLite and PostgreSQL."""

from __future__ import annotations

from fogwheel.protocol import JobIn, Limits, SyncIn, TaskIn
from fogwheel.store import Store
from tests.test_store import T0, job, join, ok


def test_a_job_on_a_fog_without_nodes_waits_for_a_live_node(store: Store) -> None:
    job_id = store.create_job("c1", job(2), T0)
    got = store.job_waiting("c1", job_id, T0)
    assert got is not None and got["reason"] == "no-live-nodes" and got["tasks"] == 2
    assert store.job_waiting("someone-else", job_id, T0) is None  # not theirs: nothing said


def test_a_first_result_on_a_fog_of_one_node_waits_for_a_second_node(store: Store) -> None:
    node = join(store, cores=1)
    job_id = store.create_job("c1", job(1, replicas="adaptive"), T0)
    [lease] = store.sync(node, SyncIn(want=1, slots_free=1), T0).tasks
    store.sync(node, SyncIn(results=[ok(lease["task_id"], 1)]), T0 + 1)  # a new node: checked
    got = store.job_waiting("c1", job_id, T0 + 2)
    assert got == {
        "reason": "checking-needs-another-owner-or-node",
        "sentence": "1 live node; adaptive checking needs 2 — add a node or pass --replicas 1",
        "stuck": True,
        "tasks": 1,
    }
    [task] = store.list_tasks("c1", job_id, None, 10, 0, now=T0 + 2) or []
    assert task["state"] == "verifying"
    assert task["waiting_for"]["reason"] == "checking-needs-another-owner-or-node"
    join(store, "second", cores=1)  # a second device may check it: only queued now
    assert store.job_waiting("c1", job_id, T0 + 3)["reason"] == "queued"  # type: ignore[index]


def test_fixed_replicas_on_too_few_nodes_name_the_option(store: Store) -> None:
    join(store, cores=4)
    job_id = store.create_job("c1", job(1, replicas=3), T0)
    got = store.job_waiting("c1", job_id, T0)
    assert got is not None and got["reason"] == "checking-needs-another-owner-or-node"
    assert got["sentence"] == "1 live node; --replicas 3 needs 3 — add a node or pass --replicas 1"


def test_a_task_that_needs_povray_waits_for_a_node_that_has_it(store: Store) -> None:
    join(store)
    needs = JobIn(
        name="render",
        kind="command",
        tasks=[TaskIn(command=["povray", "x.pov"], needs=["povray"])],
        limits=Limits(),
        replicas=1,
    )
    job_id = store.create_job("c1", needs, T0)
    got = store.job_waiting("c1", job_id, T0)
    assert got is not None and got["reason"] == "no-node-has-capability"
    assert "povray" in got["sentence"]


def test_tasks_behind_a_busy_node_wait_for_a_slot(store: Store) -> None:
    node = join(store, cores=1)
    job_id = store.create_job("c1", job(2), T0)
    assert len(store.sync(node, SyncIn(want=1, slots_free=1), T0).tasks) == 1
    got = store.job_waiting("c1", job_id, T0)
    assert got is not None and got["reason"] == "all-nodes-busy" and got["tasks"] == 1
    assert not got["stuck"]


def test_a_node_silent_for_too_long_is_not_live(store: Store) -> None:
    join(store)
    job_id = store.create_job("c1", job(1), T0)
    got = store.job_waiting("c1", job_id, T0 + 3600)
    assert got is not None and got["reason"] == "no-live-nodes"
