"""The store's behaviour, run identically on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import hashlib
import threading

from fogwheel.protocol import JobIn, Limits, NodeJoin, SyncIn, TaskIn, TaskReport, Value
from fogwheel.store import Store

T0 = 1_000_000.0


def value(data: bytes) -> Value:
    return Value(
        sha=hashlib.sha256(data).hexdigest(), size=len(data), data=base64.b64encode(data).decode()
    )


FN = Value(sha="a" * 64, size=10)


def job(n: int, max_attempts: int = 3, token: str | None = None, replicas: int | str = 1) -> JobIn:
    """A job; unchecked (replicas=1) unless a test is about verification."""
    return JobIn(
        name="t",
        kind="python",
        fn=FN,
        tasks=[TaskIn(args=value(str(i).encode())) for i in range(n)],
        limits=Limits(),
        max_attempts=max_attempts,
        client_token=token,
        replicas=replicas,
    )


def join(store: Store, name: str = "n", cores: int = 2, quota: int = 4096) -> str:
    """A device with an in-flight quota of `quota` (a new one has core/quota.START)."""
    info = NodeJoin(token="x" * 8, name=name, cores=cores, memory_mb=512, disk_mb=1000)
    node_id, _ = store.join_node(info, T0, quota=quota)
    return node_id


def ok(task_id: int, attempt: int, data: bytes = b"r") -> TaskReport:
    return TaskReport(task_id=task_id, attempt=attempt, ok=True, value=value(data))


def test_a_job_runs_to_done_and_results_come_back_in_finish_order(store: Store) -> None:
    node = join(store)
    job_id = store.create_job("c1", job(3), T0)
    leased = store.sync(node, SyncIn(want=10, slots_free=2), T0).tasks
    assert sorted(t["args"]["data"] for t in leased) == sorted(
        base64.b64encode(str(i).encode()).decode() for i in range(3)
    )
    first, *rest = leased
    out = store.sync(node, SyncIn(results=[ok(first["task_id"], 1, b"A")]), T0 + 1)
    assert out.acked == [first["task_id"]]
    page = store.results_since("c1", job_id, 0)
    assert [r["task_id"] for r in page["results"]] == [first["task_id"]]
    assert page["cursor"] == 1 and page["finished"] == 1
    store.sync(node, SyncIn(results=[ok(t["task_id"], 1) for t in rest]), T0 + 2)
    page2 = store.results_since("c1", job_id, page["cursor"])
    assert [r["seq"] for r in page2["results"]] == [2, 3]
    assert store.get_job("c1", job_id)["state"] == "done"


def test_every_lease_records_why_it_went_to_that_node(store: Store) -> None:
    node = join(store, "alpha")
    job_id = store.create_job("c1", job(1), T0)
    store.sync(node, SyncIn(want=1, slots_free=2), T0)
    [task] = store.list_tasks("c1", job_id, None, 10, 0)
    [attempt] = task["history"]
    assert attempt["node_id"] == node
    assert attempt["reason"].startswith(f"{node}: reliability 0.50")
    assert "slots free" in attempt["reason"]


def test_an_expired_lease_goes_back_to_the_queue_and_to_another_node(store: Store) -> None:
    a, b = join(store, "a"), join(store, "b")
    store.create_job("c1", job(1), T0)
    [t] = store.sync(a, SyncIn(want=1), T0).tasks
    assert store.expire_leases(T0 + 5) == []  # not yet
    assert store.expire_leases(T0 + 11) == [t["task_id"]]
    [again] = store.sync(b, SyncIn(want=1), T0 + 12).tasks
    assert again["task_id"] == t["task_id"] and again["attempt"] == 2
    assert "retry after loss on" in store.get_task("c1", t["task_id"])["history"][1]["reason"]


def test_a_late_result_counts_once_and_the_second_copy_is_superseded(store: Store) -> None:
    a, b = join(store, "a"), join(store, "b")
    job_id = store.create_job("c1", job(1), T0)
    [t] = store.sync(a, SyncIn(want=1), T0).tasks
    store.expire_leases(T0 + 11)
    store.sync(b, SyncIn(want=1), T0 + 12)
    late = store.sync(a, SyncIn(results=[ok(t["task_id"], 1, b"from a")]), T0 + 13)
    assert late.acked == [t["task_id"]]
    dup = store.sync(b, SyncIn(results=[ok(t["task_id"], 2, b"from b")]), T0 + 14)
    assert dup.acked == [t["task_id"]]  # acknowledged so b forgets it, but not kept
    results = store.results_since("c1", job_id, 0)["results"]
    assert len(results) == 1
    assert base64.b64decode(results[0]["value"]["data"]) == b"from a"
    outcomes = [h["outcome"] for h in store.get_task("c1", t["task_id"])["history"]]
    assert outcomes == ["accepted", "superseded"]


def prove(store: Store, node_id: str) -> None:
    """Give a device the record of one past probation (core/trust.py)."""
    from sqlalchemy import update

    from fogwheel.core.trust import PROBATION
    from fogwheel.store.schema import nodes

    with store.tx() as c:
        c.execute(
            update(nodes).where(nodes.c.id == node_id).values(agreed=PROBATION, streak=PROBATION)
        )


def test_a_task_lost_max_attempts_times_fails_with_the_reason(store: Store) -> None:
    # Losses count against max_attempts once per proven device's owner (core/owners.py);
    # a new device's loss gives the task another attempt (tests/test_owners_store.py).
    a, b = join(store, "a"), join(store, "b")
    prove(store, a)
    prove(store, b)
    job_id = store.create_job("c1", job(1, max_attempts=2), T0)
    now = T0
    for node in (a, b):
        assert store.sync(node, SyncIn(want=1), now).tasks
        now += 11
        store.expire_leases(now)
    [r] = store.results_since("c1", job_id, 0)["results"]
    assert r["state"] == "failed"
    assert "gave up after 2 attempts" in r["error"]["message"]
    assert store.get_job("c1", job_id)["failed"] == 1


def test_the_tasks_own_exception_fails_it_at_once_and_keeps_the_traceback(store: Store) -> None:
    node = join(store)
    job_id = store.create_job("c1", job(1), T0)
    [t] = store.sync(node, SyncIn(want=1), T0).tasks
    report = TaskReport(
        task_id=t["task_id"],
        attempt=1,
        ok=False,
        error={"kind": "exception", "type": "ZeroDivisionError", "traceback": "Traceback…"},
    )
    store.sync(node, SyncIn(results=[report]), T0 + 1)
    [r] = store.results_since("c1", job_id, 0)["results"]
    assert r["state"] == "failed" and r["error"]["type"] == "ZeroDivisionError"
    assert r["error"]["traceback"] == "Traceback…"
    assert store.list_nodes(T0 + 1)[0]["done"] == 1  # the node did its job well


def test_a_crashed_attempt_is_retried_and_counts_against_the_node(store: Store) -> None:
    node = join(store)
    store.create_job("c1", job(1), T0)
    [t] = store.sync(node, SyncIn(want=1), T0).tasks
    crash = TaskReport(task_id=t["task_id"], attempt=1, ok=False, error={"kind": "crash"})
    store.sync(node, SyncIn(results=[crash]), T0 + 1)
    assert store.get_task("c1", t["task_id"])["state"] == "pending"
    assert store.list_nodes(T0 + 1)[0]["lost"] == 1


def test_a_handed_back_task_does_not_use_up_an_attempt(store: Store) -> None:
    node = join(store)
    store.create_job("c1", job(1, max_attempts=1), T0)
    [t] = store.sync(node, SyncIn(want=1), T0).tasks
    store.sync(node, SyncIn(release=[t["task_id"]]), T0 + 1)
    task = store.get_task("c1", t["task_id"])
    assert (task["state"], task["attempts"]) == ("pending", 0)
    [again] = store.sync(node, SyncIn(want=1), T0 + 2).tasks
    assert again["attempt"] == 1


def test_renewal_extends_held_leases_and_names_the_ones_lost(store: Store) -> None:
    a, b = join(store, "a"), join(store, "b")
    store.create_job("c1", job(1), T0)
    [t] = store.sync(a, SyncIn(want=1), T0).tasks
    store.sync(a, SyncIn(renew=[t["task_id"]]), T0 + 8)
    assert store.expire_leases(T0 + 11) == []
    assert store.sync(b, SyncIn(renew=[t["task_id"]]), T0 + 12).lost == [t["task_id"]]


def test_a_result_for_a_task_the_node_never_held_is_rejected(store: Store) -> None:
    a, b = join(store, "a"), join(store, "b")
    store.create_job("c1", job(1), T0)
    [t] = store.sync(a, SyncIn(want=1), T0).tasks
    out = store.sync(b, SyncIn(results=[ok(t["task_id"], 1)]), T0 + 1)
    assert out.acked == [] and out.rejected[0]["task_id"] == t["task_id"]
    assert store.get_task("c1", t["task_id"])["state"] == "leased"


def test_one_customer_never_sees_another_customers_jobs_tasks_or_results(store: Store) -> None:
    job_id = store.create_job("alice", job(1), T0)
    [task] = store.list_tasks("alice", job_id, None, 1, 0)
    assert store.get_job("bob", job_id) is None
    assert store.results_since("bob", job_id, 0) is None
    assert store.list_tasks("bob", job_id, None, 10, 0) is None
    assert store.get_task("bob", task["id"]) is None
    assert store.cancel_job("bob", job_id, T0) is None
    assert store.list_jobs("bob") == []
    store.own_blob("alice", "b" * 64, 3)
    assert store.owned_blobs("bob", {"b" * 64}) == set()
    assert store.owned_blobs("alice", {"b" * 64}) == {"b" * 64}


def test_a_retried_submission_with_the_same_token_returns_the_first_job(store: Store) -> None:
    first = store.create_job("c1", job(2, token="abc"), T0)
    again = store.create_job("c1", job(2, token="abc"), T0 + 1)
    other_customer = store.create_job("c2", job(2, token="abc"), T0 + 1)
    assert again == first and other_customer != first
    assert len(store.list_jobs("c1")) == 1


def test_after_a_restart_held_tasks_get_a_fresh_lease(store: Store) -> None:
    node = join(store)
    store.create_job("c1", job(1), T0)
    store.sync(node, SyncIn(want=1), T0)
    assert store.extend_leases(T0 + 100) == 1  # the coordinator was down for 100 s
    assert store.expire_leases(T0 + 105) == []


def test_cancelling_a_job_finishes_its_open_tasks_as_cancelled(store: Store) -> None:
    node = join(store)
    job_id = store.create_job("c1", job(3), T0)
    store.sync(node, SyncIn(want=1), T0)
    out = store.cancel_job("c1", job_id, T0 + 1)
    assert out["state"] == "cancelled" and out["finished"] == 3
    states = {r["state"] for r in store.results_since("c1", job_id, 0)["results"]}
    assert states == {"cancelled"}
    assert store.sync(node, SyncIn(want=5), T0 + 2).tasks == []


def test_python_jobs_let_holders_read_their_function_blob_and_nobody_else(store: Store) -> None:
    a, b = join(store, "a"), join(store, "b")
    store.create_job("c1", job(1), T0)
    store.sync(a, SyncIn(want=1), T0)
    assert store.node_may_read(a, FN.sha)
    assert not store.node_may_read(b, FN.sha)


def test_concurrent_leasing_never_hands_one_task_to_two_nodes(store: Store) -> None:
    nodes = [join(store, f"n{i}", cores=64) for i in range(4)]
    store.create_job("c1", job(400), T0)
    got: dict[str, list[int]] = {n: [] for n in nodes}

    def lease(node: str) -> None:
        for k in range(20):
            tasks = store.sync(node, SyncIn(want=16), T0 + k * 0.01).tasks
            got[node].extend(t["task_id"] for t in tasks)

    threads = [threading.Thread(target=lease, args=(n,)) for n in nodes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    all_ids = [i for ids in got.values() for i in ids]
    assert len(all_ids) == len(set(all_ids))
    assert len(all_ids) == 400


def test_a_live_reliable_node_takes_the_longer_jobs_tasks_first_under_reliability_placement(
    store: Store,
) -> None:
    from fogwheel.core import scheduler

    store.placement = scheduler.Placement(scheduler.Policy.RELIABILITY)
    w = join(store, "w", cores=8)
    warmup = store.create_job("c1", job(10), T0)  # w finishes ten: reliability 11/12
    done = store.sync(w, SyncIn(want=10, slots_free=8), T0).tasks
    store.sync(w, SyncIn(results=[ok(t["task_id"], t["attempt"]) for t in done]), T0 + 0.5)
    assert {t["job_id"] for t in done} == {warmup}
    # The short job first: in queue order (what placement fell back to without est_s) its
    # tasks would go first.
    short, long_ = store.create_job("c1", job(12), T0 + 1), store.create_job("c1", job(12), T0 + 1)
    # One attempt of each finishes (the long job's in 10 s, the short's in 1 s: their typical
    # runs, est_s); the rest w hands back, so both jobs have tasks pending again.
    first = store.sync(w, SyncIn(want=24, slots_free=8), T0 + 1).tasks
    one_long = next(t for t in first if t["job_id"] == long_)
    one_short = next(t for t in first if t["job_id"] == short)
    back = [t["task_id"] for t in first if t not in (one_long, one_short)]
    store.sync(w, SyncIn(results=[ok(one_short["task_id"], one_short["attempt"])]), T0 + 2)
    store.sync(
        w,
        SyncIn(results=[ok(one_long["task_id"], one_long["attempt"])], release=back),
        T0 + 11,
    )
    # w is reliable: the longer job's tasks come first, though the shorter's are as old.
    got = store.sync(w, SyncIn(want=2, slots_free=8), T0 + 12).tasks
    assert len(got) == 2 and {t["job_id"] for t in got} == {long_}, got
    # A new device (reliability 0.5) takes the shortest first.
    n = join(store, "new", cores=1, quota=4096)
    [new] = store.sync(n, SyncIn(want=1, slots_free=1), T0 + 12).tasks
    assert new["job_id"] == short
