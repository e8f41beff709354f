"""Owners in the store, on SQLite and PostgreSQL: tokens, revocation, quotas, placement by
owner and network, crash counting, and owners' earnings (core/owners.py, core/quota.py)."""

from __future__ import annotations

from fogwheel.core import owners, quota
from fogwheel.core.ledger import Entry
from fogwheel.protocol import NodeJoin, SyncIn, TaskReport
from fogwheel.store import Store
from tests.test_store import T0, job, ok, prove


def info(token: str = "x" * 8, name: str = "d", cores: int = 1, **kw: int) -> NodeJoin:
    return NodeJoin(token=token, name=name, cores=cores, memory_mb=512, disk_mb=1000, **kw)


def device(
    store: Store, owner: str | None, name: str, network: str | None = None, quota: int = 2
) -> str:
    node_id, _ = store.join_node(
        info(name=name, cores=4), T0, owner_id=owner, network=network, quota=quota
    )
    return node_id


def test_a_token_admits_its_cap_of_devices_and_then_refuses(store: Store) -> None:
    store.ensure_operator(T0)
    owner, _ = store.create_owner("mallory", T0)
    _, secret = store.create_token(owner, T0, max_devices=5, rate_per_hour=1e6)
    answers = [store.join_with_token(info(secret), T0) for _ in range(50)]
    joined = [a for a in answers if isinstance(a, tuple)]
    refused = [a for a in answers if isinstance(a, owners.Refuse)]
    assert len(joined) == 5 and len(refused) == 45
    assert {r.status for r in refused} == {403}
    assert [t["joined"] for t in store.list_tokens(owner)] == [5]
    assert {d["id"] for d in store.owner_devices(owner)} == {n for n, _ in joined}


def test_a_token_refuses_joins_faster_than_its_rate(store: Store) -> None:
    _, secret = store.create_token("o-x", T0, max_devices=1000, rate_per_hour=60.0)
    answers = [store.join_with_token(info(secret), T0) for _ in range(20)]
    assert sum(isinstance(a, tuple) for a in answers) == owners.burst(60.0)
    assert {a.status for a in answers if isinstance(a, owners.Refuse)} == {429}
    assert isinstance(store.join_with_token(info(secret), T0 + 60.0), tuple)


def test_a_claimed_1024_cores_and_16_tb_are_capped(store: Store) -> None:
    _, secret = store.create_token("o-x", T0)
    big = NodeJoin(token=secret, name="liar", cores=1024, memory_mb=1 << 24, disk_mb=16 << 20)
    node_id, _ = store.join_with_token(big, T0)  # type: ignore[misc]
    [n] = [n for n in store.list_nodes(T0) if n["id"] == node_id]
    assert n["cores"] == owners.CLAIM_MAX_CORES and n["memory_mb"] == owners.CLAIM_MAX_MEMORY_MB
    assert n["quota"] == quota.START


def test_revoked_and_expired_tokens_and_unknown_ones_refuse_with_401(store: Store) -> None:
    tid, secret = store.create_token("o-x", T0)
    _, brief = store.create_token("o-x", T0, expires_at=T0 + 60)
    assert isinstance(store.join_with_token(info(brief), T0 + 30), tuple)
    assert store.revoke_token(tid)
    for secret_, at in ((secret, T0), (brief, T0 + 61), ("fwj_nobody" + "x" * 20, T0)):
        refused = store.join_with_token(info(secret_), at)
        assert isinstance(refused, owners.Refuse) and refused.status == 401


def test_a_new_flag_token_replaces_the_old_one(store: Store) -> None:
    store.set_flag_token("fwj_old" + "o" * 20, T0)
    store.set_flag_token("fwj_new" + "n" * 20, T0 + 1)
    old = store.join_with_token(info("fwj_old" + "o" * 20), T0 + 2)
    assert isinstance(old, owners.Refuse) and old.status == 401
    node_id, _ = store.join_with_token(info("fwj_new" + "n" * 20), T0 + 2)  # type: ignore[misc]
    assert store.owner_devices(owners.OPERATOR)[0]["id"] == node_id
    # the same flag token again is harmless; a created token survives a new flag token
    _, created = store.create_token(owners.OPERATOR, T0)
    store.set_flag_token("fwj_new" + "n" * 20, T0 + 3)
    store.set_flag_token("fwj_newer" + "n" * 20, T0 + 4)
    assert isinstance(store.join_with_token(info(created), T0 + 5), tuple)


def test_a_revoked_device_loses_its_credential_and_its_leases_but_keeps_its_earnings(
    store: Store,
) -> None:
    owner, _ = store.create_owner("alice", T0)
    node_id, credential = store.join_node(info(cores=2), T0, owner_id=owner, quota=64)
    store.create_job("c1", job(2), T0)
    held = store.sync(node_id, SyncIn(want=2), T0).tasks
    assert len(held) == 2
    with store.tx() as c:
        store.post(c, [Entry("t-1", f"node:{node_id}", 7), Entry("t-1", "customer:c1", -7)], T0)
    assert store.revoke_node(node_id)
    assert store.authenticate(credential) is None
    assert sorted(store.expire_leases(T0 + 1)) == sorted(t["task_id"] for t in held)
    assert store.sync(node_id, SyncIn(want=2), T0 + 2).tasks == []
    assert store.owner_earnings(owner)["total"] == 7
    assert store.list_nodes(T0 + 2)[0]["state"] == "revoked"
    assert not store.revoke_node("n-nobody")


def test_an_owner_can_revoke_only_its_own_devices_and_tokens(store: Store) -> None:
    alice, _ = store.create_owner("alice", T0)
    bob, _ = store.create_owner("bob", T0)
    bobs = device(store, bob, "b1")
    tid, _ = store.create_token(bob, T0)
    assert not store.revoke_node(bobs, owner_id=alice)
    assert not store.revoke_token(tid, owner_id=alice)
    assert store.revoke_token(tid, owner_id=bob)


def test_a_revoked_customer_key_no_longer_authenticates(store: Store) -> None:
    cid, key = store.create_customer("acme", T0)
    assert store.authenticate(key) is not None
    assert store.revoke_customer(cid)
    assert store.authenticate(key) is None
    assert not store.revoke_customer(cid)


def test_a_new_device_holds_its_quota_and_earns_more_with_validated_results(store: Store) -> None:
    node_id, _ = store.join_node(info(cores=64), T0)
    store.create_job("c1", job(200), T0)
    first = store.sync(node_id, SyncIn(want=100), T0).tasks
    assert len(first) == quota.START
    store.sync(node_id, SyncIn(results=[ok(t["task_id"], 1) for t in first]), T0 + 1)
    after = store.sync(node_id, SyncIn(want=100), T0 + 1).tasks  # unchecked: replicas=1
    assert len(after) == quota.grown(quota.START, 2)


def test_crashes_halve_the_quota(store: Store) -> None:
    node_id, _ = store.join_node(info(cores=64), T0, quota=16)
    store.create_job("c1", job(50), T0)
    held = store.sync(node_id, SyncIn(want=100), T0).tasks
    crash = [
        TaskReport(task_id=t["task_id"], attempt=1, ok=False, error={"kind": "crash"})
        for t in held[:2]
    ]
    store.sync(node_id, SyncIn(results=crash), T0 + 1)
    [n] = store.list_nodes(T0 + 1)
    assert n["quota"] == 4


def test_a_copy_of_a_task_never_goes_to_another_device_of_the_same_owner(store: Store) -> None:
    mallory, _ = store.create_owner("mallory", T0)
    m1, m2 = device(store, mallory, "m1"), device(store, mallory, "m2")
    honest = device(store, None, "h")
    store.create_job("c1", job(1, replicas=2), T0)
    assert len(store.sync(m1, SyncIn(want=4), T0).tasks) == 1
    assert store.sync(m2, SyncIn(want=4), T0).tasks == []  # the second copy is not for m2
    assert len(store.sync(honest, SyncIn(want=4), T0).tasks) == 1


def test_a_copy_never_goes_to_the_same_network_even_of_another_owner(store: Store) -> None:
    a, _ = store.create_owner("a", T0)
    b, _ = store.create_owner("b", T0)
    c_, _ = store.create_owner("c", T0)
    na = device(store, a, "a", network="81.2.69.0/24")
    nb = device(store, b, "b", network="81.2.69.0/24")
    nc = device(store, c_, "c", network="8.8.8.0/24")
    store.create_job("c1", job(1, replicas=2), T0)
    assert len(store.sync(na, SyncIn(want=4), T0).tasks) == 1
    assert store.sync(nb, SyncIn(want=4), T0).tasks == []
    assert len(store.sync(nc, SyncIn(want=4), T0).tasks) == 1


def test_the_network_is_refreshed_from_the_address_a_device_syncs_from(store: Store) -> None:
    node_id = device(store, None, "roamer", network="81.2.69.0/24")
    store.sync(node_id, SyncIn(), T0, client_host="8.8.8.8")
    assert store.owner_devices(owners.OPERATOR)[0]["network"] == "8.8.8.0/24"


def test_sybil_crashes_do_not_use_up_another_customers_attempts(store: Store) -> None:
    sybils = [device(store, None, f"s{i}") for i in range(3)]
    honest = device(store, None, "h")
    prove(store, honest)
    job_id = store.create_job("c1", job(1, max_attempts=1), T0)
    for k, s in enumerate(sybils):
        [t] = store.sync(s, SyncIn(want=1), T0 + k).tasks
        crash = TaskReport(
            task_id=t["task_id"], attempt=t["attempt"], ok=False, error={"kind": "crash"}
        )
        store.sync(s, SyncIn(results=[crash]), T0 + k)
    [t] = store.sync(honest, SyncIn(want=1), T0 + 5).tasks
    store.sync(honest, SyncIn(results=[ok(t["task_id"], t["attempt"], b"42")]), T0 + 6)
    [r] = store.results_since("c1", job_id, 0)["results"]
    assert r["state"] == "done"


def test_a_task_that_crashes_every_device_fails_after_the_poison_bound(store: Store) -> None:
    node_id = device(store, None, "lonely")
    job_id = store.create_job("c1", job(1), T0)
    for k in range(owners.POISON_FAILURES):
        [t] = store.sync(node_id, SyncIn(want=1), T0 + k).tasks
        crash = TaskReport(
            task_id=t["task_id"], attempt=t["attempt"], ok=False, error={"kind": "crash"}
        )
        store.sync(node_id, SyncIn(results=[crash]), T0 + k)
    [r] = store.results_since("c1", job_id, 0)["results"]
    assert r["state"] == "failed"
    assert f"gave up after {owners.POISON_FAILURES} failures" in r["error"]["message"]


def test_an_owner_sees_the_sum_of_its_devices_earnings(store: Store) -> None:
    alice, _ = store.create_owner("alice", T0)
    a1, a2 = device(store, alice, "a1"), device(store, alice, "a2")
    other = device(store, None, "op")
    with store.tx() as c:
        for i, (n, amount) in enumerate(((a1, 5), (a2, 6), (other, 100))):
            store.post(
                c, [Entry(f"t{i}", f"node:{n}", amount), Entry(f"t{i}", "customer:c1", -amount)], T0
            )
    earned = store.owner_earnings(alice)
    assert earned["total"] == 11 and {d["node_id"] for d in earned["devices"]} == {a1, a2}
    by_owner = {o["id"]: o for o in store.list_owners()}
    assert by_owner[alice]["earned"] == 11 and by_owner[alice]["devices"] == 2


def test_a_backup_copy_never_goes_to_another_device_of_the_stragglers_owner(store: Store) -> None:
    from tests.test_backups import job as backup_job
    from tests.test_backups import report

    mallory, _ = store.create_owner("mallory", T0)
    slow_dev, twin = device(store, mallory, "m1", quota=64), device(store, mallory, "m2", quota=64)
    honest = device(store, None, "h", quota=64)
    store.create_job("c1", backup_job(4), T0)
    [slow] = store.sync(slow_dev, SyncIn(want=1, slots_free=1), T0).tasks
    quick: list[dict] = []
    while len(quick) < 3:  # fair shares hand them out one at a time
        quick += store.sync(honest, SyncIn(want=3, slots_free=4), T0).tasks
    store.sync(honest, SyncIn(results=[report(t, b"quick") for t in quick]), T0 + 1)
    assert store.sync(twin, SyncIn(want=4, slots_free=4), T0 + 5).tasks == []
    [backup] = store.sync(honest, SyncIn(want=4, slots_free=4), T0 + 5).tasks
    assert backup["args"] == slow["args"]


def test_two_devices_of_one_owner_agreeing_on_a_wrong_answer_count_as_one_vote(
    store: Store,
) -> None:
    # x1 loses its copy (so x2 may take it), then reports it late anyway: two of mallory's
    # devices have results for the task, both wrong, against one honest device.
    mallory, _ = store.create_owner("mallory", T0)
    x1, x2 = device(store, mallory, "x1"), device(store, mallory, "x2")
    honest = device(store, None, "h")
    job_id = store.create_job("c1", job(1, replicas=2), T0)
    [a] = store.sync(x1, SyncIn(want=1), T0).tasks
    store.expire_leases(T0 + 11)
    [b] = store.sync(x2, SyncIn(want=1), T0 + 12).tasks
    [c] = store.sync(honest, SyncIn(want=1), T0 + 12).tasks
    store.sync(x1, SyncIn(results=[ok(a["task_id"], a["attempt"], b"wrong")]), T0 + 13)
    store.sync(x2, SyncIn(results=[ok(b["task_id"], b["attempt"], b"wrong")]), T0 + 13)
    store.sync(honest, SyncIn(results=[ok(c["task_id"], c["attempt"], b"right")]), T0 + 13)
    results = store.results_since("c1", job_id, 0)["results"]
    # a tie with nobody left to break it: a clear failure, never mallory's answer
    assert [r["state"] for r in results] == ["failed"]
    assert "disagree" in results[0]["error"]["message"]
    history = store.get_task("c1", results[0]["task_id"])["history"]
    outcome = {h["node_id"]: h["outcome"] for h in history}
    assert outcome == {x1: "unsettled", x2: "superseded", honest: "unsettled"}


def test_a_device_caught_lying_puts_its_owners_other_devices_back_on_probation(
    store: Store,
) -> None:
    from fogwheel.core import trust

    mallory, _ = store.create_owner("mallory", T0)
    liar, sibling = device(store, mallory, "liar"), device(store, mallory, "sibling")
    bystander = device(store, None, "op")
    for n in (liar, sibling, bystander):
        prove(store, n)
    with store.tx() as c:
        store._record_verdict(c, liar, agreed=False, reason="test: a wrong result")
        records = {n: store._trust_record(c, n) for n in (liar, sibling, bystander)}
    assert records[liar].quarantined
    assert records[sibling].streak == 0 and not records[sibling].quarantined
    assert records[bystander].streak == trust.PROBATION  # another owner's: untouched
