"""The store's side of honest books: claims are clamped where they are written, credit comes
from the quorum, and a node names as output only blobs it uploaded (defence in depth behind
the wire's bounds)."""

from __future__ import annotations

import math

from fogwheel.core.credit import UNCHECKED_SLACK
from fogwheel.core.ledger import DEFAULT_PRICE, customer_account, node_account
from fogwheel.protocol import SyncIn, TaskReport, Value
from fogwheel.store import Store
from tests.test_store import T0, job, join, value


def lease_one(store: Store, node: str, now: float) -> dict:
    [task] = store.sync(node, SyncIn(want=1, slots_free=1), now).tasks
    return task


def claim(task: dict, cpu_s: float, data: bytes = b"42", **kw) -> TaskReport:
    """A report as a node could send it past the wire's checks (model_construct validates
    nothing): the store must cope on its own."""
    return TaskReport.model_construct(
        task_id=task["task_id"],
        attempt=task["attempt"],
        ok=True,
        value=value(data),
        outputs=kw.get("outputs", {}),
        error=None,
        cpu_s=cpu_s,
        wall_s=kw.get("wall_s", 0.0),
        kept=None,
    )


def test_claims_past_any_column_are_clamped_and_the_honest_replica_is_paid(store: Store) -> None:
    for bad in (1e17, 1e308, math.inf, math.nan, -5.0):
        liar, honest = join(store, f"liar{bad}", cores=1), join(store, f"honest{bad}", cores=1)
        store.create_job("c1", job(1, replicas=2), T0)
        t_liar = lease_one(store, liar, T0)
        t_honest = lease_one(store, honest, T0)
        store.sync(liar, SyncIn(results=[claim(t_liar, bad, wall_s=bad)]), T0 + 2)
        out = store.sync(honest, SyncIn(results=[claim(t_honest, 0.25)]), T0 + 3)
        assert out.acked == [t_honest["task_id"]]
        liar_paid = store.balance(node_account(liar))
        assert liar_paid <= DEFAULT_PRICE.owner_share(DEFAULT_PRICE.for_cpu(0.25)), bad
        assert store.balance(node_account(honest)) > 0
    assert store.check()[0] == 0  # the books balance


def test_every_agreeing_replica_is_paid_the_least_claim_not_its_own(store: Store) -> None:
    a, b = join(store, "a", cores=4), join(store, "b", cores=4)
    store.create_job("c1", job(1, replicas=2), T0)
    ta, tb = lease_one(store, a, T0), lease_one(store, b, T0)
    store.sync(a, SyncIn(results=[claim(ta, 1e6)]), T0 + 10)  # wall cap: 10 s x 4 cores
    store.sync(b, SyncIn(results=[claim(tb, 2.0)]), T0 + 10)
    run = DEFAULT_PRICE.for_cpu(2.0)
    assert store.balance(customer_account("c1")) == -2 * run
    assert store.balance(node_account(a)) == store.balance(node_account(b))


def test_a_lone_unchecked_claim_is_held_to_the_typical_checked_run(store: Store) -> None:
    a, b = join(store, "a", cores=4), join(store, "b", cores=4)
    store.create_job("c1", job(1, replicas=2), T0)  # checked: the function's typical run
    ta, tb = lease_one(store, a, T0), lease_one(store, b, T0)
    store.sync(a, SyncIn(results=[claim(ta, 0.5)]), T0 + 5)
    store.sync(b, SyncIn(results=[claim(tb, 0.6)]), T0 + 5)
    before = store.balance(customer_account("c1"))
    store.create_job("c1", job(1, replicas=1), T0 + 6)  # the same function, unchecked
    lone = lease_one(store, a, T0 + 6)
    store.sync(a, SyncIn(results=[claim(lone, 1e6)]), T0 + 100)  # wall cap: 94 s x 4
    typical = 0.5  # the checked run's granted credit: the least of 0.5 and 0.6
    assert before - store.balance(customer_account("c1")) == DEFAULT_PRICE.for_cpu(
        typical * UNCHECKED_SLACK
    )


def test_an_output_the_node_did_not_upload_is_refused_alone(store: Store) -> None:
    node = join(store, "n")
    store.create_job("c1", job(2), T0)
    t1, t2 = store.sync(node, SyncIn(want=2, slots_free=2), T0).tasks
    foreign = Value(sha="b" * 64, size=100)  # someone else's blob, named by its SHA-256
    bad = TaskReport(task_id=t1["task_id"], attempt=t1["attempt"], ok=True, value=foreign)
    good = TaskReport(task_id=t2["task_id"], attempt=t2["attempt"], ok=True, value=value(b"1"))
    out = store.sync(node, SyncIn(results=[bad, good]), T0 + 1)
    assert out.acked == [t2["task_id"]]
    assert [r["task_id"] for r in out.rejected] == [t1["task_id"]]
    assert "not uploaded by this node" in out.rejected[0]["reason"]
    assert store.owned_blobs("c1", {"b" * 64}) == set()
    store.note_upload(node, "b" * 64, T0 + 2)  # once it uploads the bytes itself ...
    out = store.sync(node, SyncIn(results=[bad]), T0 + 3)
    assert out.acked == [t1["task_id"]]
    assert store.owned_blobs("c1", {"b" * 64}) == {"b" * 64}  # ... the accepted output is c1's
    assert store.owned_blobs("c2", {"b" * 64}) == set()


def test_an_attempt_number_past_any_column_is_refused_alone(store: Store) -> None:
    node = join(store, "n")
    store.create_job("c1", job(2), T0)
    t1, t2 = store.sync(node, SyncIn(want=2, slots_free=2), T0).tasks
    bad = claim({**t1, "attempt": 2**40}, 0.1)
    out = store.sync(node, SyncIn(results=[bad, claim(t2, 0.1)]), T0 + 1)
    assert out.acked == [t2["task_id"]]
    assert [r["task_id"] for r in out.rejected] == [t1["task_id"]]
