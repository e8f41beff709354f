"""Verification in the store: only agreed results reach the customer; liars are quarantined."""

from __future__ import annotations

import base64

from fogwheel.protocol import SyncIn, TaskReport
from fogwheel.store import Store
from tests.test_store import T0, job, join, value


def report(task: dict, data: bytes) -> TaskReport:
    return TaskReport(task_id=task["task_id"], attempt=task["attempt"], ok=True, value=value(data))


def lease_one(store: Store, node: str, now: float) -> dict:
    [task] = store.sync(node, SyncIn(want=1, slots_free=1), now).tasks
    return task


def results(store: Store, job_id: int) -> list[dict]:
    return store.results_since("c1", job_id, 0)["results"]


def test_a_new_nodes_result_waits_for_a_matching_result_from_another_node(store: Store) -> None:
    a, b = join(store, "a", cores=1), join(store, "b", cores=1)
    job_id = store.create_job("c1", job(1, replicas="adaptive"), T0)
    first = lease_one(store, a, T0)
    store.sync(a, SyncIn(results=[report(first, b"42")]), T0 + 1)
    assert results(store, job_id) == []  # not yet agreed
    check = lease_one(store, b, T0 + 2)
    assert check["task_id"] != first["task_id"]  # a replica, on another node
    store.sync(b, SyncIn(results=[report(check, b"42")]), T0 + 3)
    [r] = results(store, job_id)
    assert r["state"] == "done" and base64.b64decode(r["value"]["data"]) == b"42"
    outcomes = [h["outcome"] for h in store.get_task("c1", first["task_id"])["history"]]
    assert outcomes == ["agreed", "agreed"]
    assert {n["agreed"] for n in store.list_nodes(T0 + 3)} == {1}


def test_a_replica_never_goes_to_the_node_that_ran_the_task(store: Store) -> None:
    a = join(store, "a", cores=4)
    store.create_job("c1", job(1, replicas="adaptive"), T0)
    first = lease_one(store, a, T0)
    store.sync(a, SyncIn(results=[report(first, b"1")]), T0 + 1)
    assert store.sync(a, SyncIn(want=4), T0 + 2).tasks == []


def test_a_disagreement_is_settled_by_a_third_node_and_the_liar_is_quarantined(
    store: Store,
) -> None:
    honest1, liar, honest2 = (join(store, n, cores=1) for n in ("h1", "liar", "h2"))
    job_id = store.create_job("c1", job(1, replicas="adaptive"), T0)
    first = lease_one(store, liar, T0)
    store.sync(liar, SyncIn(results=[report(first, b"wrong")]), T0 + 1)
    check = lease_one(store, honest1, T0 + 2)
    store.sync(honest1, SyncIn(results=[report(check, b"right")]), T0 + 3)
    assert results(store, job_id) == []  # one against one: no verdict
    tiebreak = lease_one(store, honest2, T0 + 4)
    store.sync(honest2, SyncIn(results=[report(tiebreak, b"right")]), T0 + 5)
    [r] = results(store, job_id)
    assert base64.b64decode(r["value"]["data"]) == b"right"
    nodes = {n["name"]: n for n in store.list_nodes(T0 + 5)}
    assert nodes["liar"]["state"] == "quarantined" and nodes["liar"]["disputed"] == 1
    assert nodes["h1"]["agreed"] == nodes["h2"]["agreed"] == 1
    assert store.quarantined_nodes() == [liar]


def catch_a_liar(store: Store) -> tuple[str, str, str]:
    """Three nodes; one returns a wrong result that two honest nodes contradict."""
    h1, liar, h2 = (join(store, n, cores=1) for n in ("h1", "liar", "h2"))
    store.create_job("c1", job(1, replicas="adaptive"), T0)
    for k, (node, data) in enumerate([(liar, b"wrong"), (h1, b"right"), (h2, b"right")]):
        task = lease_one(store, node, T0 + 2 * k)
        store.sync(node, SyncIn(results=[report(task, data)]), T0 + 2 * k + 1)
    return h1, liar, h2


def test_a_quarantined_node_gets_no_more_work(store: Store) -> None:
    h1, liar, _ = catch_a_liar(store)
    store.create_job("c1", job(3, replicas="adaptive"), T0 + 10)
    assert store.sync(liar, SyncIn(want=8), T0 + 11).tasks == []
    assert store.sync(h1, SyncIn(want=8), T0 + 11).tasks


def test_fixed_replication_runs_every_task_on_distinct_nodes(store: Store) -> None:
    nodes = [join(store, f"n{i}", cores=4) for i in range(3)]
    job_id = store.create_job("c1", job(2, replicas=3), T0)
    leased: dict[str, list[dict]] = {n: [] for n in nodes}
    for k in range(3):
        for n in nodes:
            leased[n] += store.sync(n, SyncIn(want=8), T0 + k * 0.1).tasks
    assert sum(len(ts) for ts in leased.values()) == 6
    for ts in leased.values():  # never two copies of one task on one node
        indexes = [store.get_task("c1", t["task_id"])["index"] for t in ts]
        assert len(indexes) == len(set(indexes))
    for n, ts in leased.items():
        store.sync(n, SyncIn(results=[report(t, b"same") for t in ts]), T0 + 1)
    assert [r["state"] for r in results(store, job_id)] == ["done", "done"]
    assert store.count_replica_runs() == {"runs": 6, "tasks": 2}


def test_all_results_different_fails_the_task_for_lack_of_agreement(store: Store) -> None:
    nodes = [join(store, f"n{i}", cores=1) for i in range(5)]
    job_id = store.create_job("c1", job(1, replicas="adaptive"), T0)
    for k, n in enumerate(nodes):
        ts = store.sync(n, SyncIn(want=1), T0 + k).tasks
        if not ts:
            break
        store.sync(n, SyncIn(results=[report(ts[0], f"answer {k}".encode())]), T0 + k + 0.5)
    [r] = results(store, job_id)
    assert r["state"] == "failed" and r["error"]["kind"] == "disputed"
    assert "different answers" in r["error"]["message"]
    assert store.quarantined_nodes() == []  # nobody can be shown wrong


def test_cancelling_a_job_cancels_its_replicas_too(store: Store) -> None:
    a, b = join(store, "a", cores=1), join(store, "b", cores=1)
    job_id = store.create_job("c1", job(1, replicas="adaptive"), T0)
    first = lease_one(store, a, T0)
    store.sync(a, SyncIn(results=[report(first, b"x")]), T0 + 1)
    store.cancel_job("c1", job_id, T0 + 2)
    assert store.sync(b, SyncIn(want=4), T0 + 3).tasks == []
    assert store.get_job("c1", job_id)["finished"] == 1


def test_with_a_tolerance_nearly_equal_floats_agree(store: Store) -> None:
    import pickle

    from fogwheel.protocol import ToleranceIn

    a, b = join(store, "a", cores=1), join(store, "b", cores=1)
    spec = job(1, replicas="adaptive")
    spec.tolerance = ToleranceIn(rel=1e-9)
    job_id = store.create_job("c1", spec, T0)
    first = lease_one(store, a, T0)
    store.sync(a, SyncIn(results=[report(first, pickle.dumps([0.1 + 0.2]))]), T0 + 1)
    check = lease_one(store, b, T0 + 2)
    store.sync(b, SyncIn(results=[report(check, pickle.dumps([0.3]))]), T0 + 3)
    [r] = results(store, job_id)
    assert r["state"] == "done"
    assert store.quarantined_nodes() == []


def test_a_result_from_a_node_already_quarantined_counts_for_nothing(store: Store) -> None:
    h1, h2 = join(store, "h1", cores=1), join(store, "h2", cores=1)
    liar = join(store, "liar", cores=2)
    job_id = store.create_job("c1", job(2, replicas="adaptive"), T0)
    t1, t2 = lease_one(store, liar, T0), lease_one(store, liar, T0 + 0.5)
    store.sync(liar, SyncIn(results=[report(t1, b"wrong")]), T0 + 1)
    for k, node in enumerate((h1, h2)):  # the check and the tie-break expose the liar
        task = lease_one(store, node, T0 + 2 + k)
        store.sync(node, SyncIn(results=[report(task, b"right")]), T0 + 2.5 + k)
    assert store.quarantined_nodes() == [liar]
    store.sync(liar, SyncIn(results=[report(t2, b"whatever")]), T0 + 5)
    assert [r["index"] for r in results(store, job_id)] == [0]  # t2 is not settled by it
    history = store.get_task("c1", t2["task_id"])["history"]
    assert [h["outcome"] for h in history] == ["disputed"]
    for k, node in enumerate((h1, h2)):
        task = lease_one(store, node, T0 + 6 + k)
        store.sync(node, SyncIn(results=[report(task, b"fine")]), T0 + 6.5 + k)
    assert [r["state"] for r in results(store, job_id)] == ["done", "done"]


def test_a_split_vote_with_no_node_left_to_break_it_fails_instead_of_waiting(
    store: Store,
) -> None:
    a, b = join(store, "a", cores=1), join(store, "b", cores=1)
    job_id = store.create_job("c1", job(1, replicas="adaptive"), T0)
    first = lease_one(store, a, T0)
    store.sync(a, SyncIn(results=[report(first, b"one")]), T0 + 1)
    check = lease_one(store, b, T0 + 2)
    store.sync(b, SyncIn(results=[report(check, b"two")]), T0 + 3)
    [r] = results(store, job_id)
    assert r["state"] == "failed" and "no other node is live" in r["error"]["message"]
    assert store.quarantined_nodes() == []
