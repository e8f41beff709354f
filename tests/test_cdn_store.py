"""The CDN's placement in the store, on SQLite and PostgreSQL: shares of a segment on distinct
nodes and networks, more holders for popular content, quota refusals placed elsewhere, and a
node whose disk lies quarantined."""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict

from fogwheel.protocol import NodeJoin, SyncIn
from fogwheel.store import Store
from fogwheel.store.cdn import HOT_FETCHES

NOW = 1_000_000.0


def node(store: Store, name: str, host: str) -> str:
    info = NodeJoin(token="x" * 8, name=name, cores=1, memory_mb=512, disk_mb=1000)
    node_id, _ = store.join_node(info, NOW)
    store.sync(node_id, SyncIn(serve_url=f"http://{host}:8471"), NOW)
    return node_id


def publish(store: Store, segments: int = 3, k: int = 2, n: int = 4) -> tuple[str, list]:
    cid = "c" + "ab" * 12
    shares = []
    for seg in range(segments):
        for i in range(n):
            sha = hashlib.sha256(f"{seg}/{i}".encode()).hexdigest()
            shares.append((sha, seg, i, 100))
    manifest = {"content_id": cid, "name": "x", "size": 1, "k": k, "n": n}
    store.cdn_create("cust", manifest, "00" * 32, shares, NOW)
    return cid, shares


def holders(store: Store, cid: str, states=("assigned", "stored")) -> dict[str, list[str]]:
    out: dict[str, list[str]] = defaultdict(list)
    for r in store.cdn_shares_of(cid):
        if r["state"] in states:
            out[r["sha"]].append(r["node_id"])
    return out


def test_a_segments_shares_go_to_distinct_nodes_on_distinct_networks(store: Store) -> None:
    nets = {node(store, f"a{i}", f"10.1.0.{i + 1}"): "10.1.0" for i in range(3)}
    nets |= {node(store, f"b{i}", f"10.2.0.{i + 1}"): "10.2.0" for i in range(3)}
    cid, shares = publish(store, segments=4, k=1, n=2)
    held = holders(store, cid)
    by_seg = defaultdict(list)
    for sha, seg, _, _ in shares:
        assert len(held[sha]) == 1
        by_seg[seg].append(held[sha][0])
    for seg, owners in by_seg.items():
        assert len(set(owners)) == 2, seg
        assert {nets[o] for o in owners} == {"10.1.0", "10.2.0"}, seg  # one per network
    # spread: no node holds much more than its share
    counts = Counter(o for owners in by_seg.values() for o in owners)
    assert max(counts.values()) - min(counts.values()) <= 1


def test_popular_content_gets_a_second_holder_for_every_share(store: Store) -> None:
    for i in range(8):
        node(store, f"n{i}", f"127.0.0.{i + 1}")
    cid, shares = publish(store, segments=2, k=2, n=4)
    assert all(len(v) == 1 for v in holders(store, cid).values())
    for _ in range(HOT_FETCHES):
        store.cdn_record_fetch(
            "cust", cid, size=1, from_peers=1, from_origin=0, seconds=0.1, bad=[], now=NOW
        )
    held = holders(store, cid)
    assert all(len(held[sha]) == 2 and len(set(held[sha])) == 2 for sha, *_ in shares)


def test_a_share_refused_for_quota_goes_elsewhere_without_blame(store: Store) -> None:
    ids = [node(store, f"n{i}", f"127.0.0.{i + 1}") for i in range(5)]
    cid, shares = publish(store, segments=1, k=2, n=4)
    sha = shares[0][0]
    [first] = holders(store, cid)[sha]
    store.sync(first, SyncIn(refused=[sha]), NOW + 1)
    [second] = holders(store, cid)[sha]
    assert second != first and second in ids
    assert all(n["disputed"] == 0 for n in store.list_nodes(NOW + 1))


def test_a_node_whose_share_fails_its_check_is_quarantined_and_replaced(store: Store) -> None:
    for i in range(6):
        node(store, f"n{i}", f"127.0.0.{i + 1}")
    cid, shares = publish(store, segments=1, k=2, n=4)
    sha = shares[0][0]
    [liar] = holders(store, cid)[sha]
    store.sync(liar, SyncIn(stored=[s for s, *_ in shares]), NOW + 1)
    store.sync(liar, SyncIn(bad=[sha]), NOW + 2)
    assert liar in store.quarantined_nodes()
    held = holders(store, cid)
    assert liar not in held[sha] and len(held[sha]) == 1
    # a quarantined node is offered no shares
    plan = store.cdn_plan("cust", cid, NOW + 2)
    assert plan is not None
    assert all(h["node_id"] != liar for hs in plan["holders"].values() for h in hs)


def stored_everywhere(store: Store, cid: str) -> dict[str, list[str]]:
    """Every holder confirms its shares; the holders of each share."""
    held = holders(store, cid)
    for node_id in {n for hs in held.values() for n in hs}:
        store.sync(node_id, SyncIn(stored=[s for s, hs in held.items() if node_id in hs]), NOW + 1)
    return holders(store, cid, states=("stored",))


def test_a_customers_accusations_alone_quarantine_nobody(store: Store) -> None:
    ids = [node(store, f"n{i}", f"127.0.0.{i + 1}") for i in range(4)]
    cid, shares = publish(store, segments=2, k=2, n=4)
    for _ in range(HOT_FETCHES):  # popular: two holders a share
        store.cdn_record_fetch(
            "cust", cid, size=1, from_peers=1, from_origin=0, seconds=0.1, bad=[], now=NOW + 1
        )
    held = stored_everywhere(store, cid)
    everyone = [(n, sha) for sha, *_ in shares for n in ids]
    for _ in range(3):
        store.cdn_record_fetch(
            "cust", cid, size=1, from_peers=0, from_origin=0, seconds=0.1, bad=everyone, now=NOW + 2
        )
    assert store.quarantined_nodes() == []
    assert all(n["disputed"] == 0 for n in store.list_nodes(NOW + 2))
    assert holders(store, cid, states=("stored",)) == held  # nothing dropped or moved
    # the accuser's own plans put the accused last (ids[0] is cleared: it comes first)
    store.cdn_clear_doubt("cust", ids[0])
    plan = store.cdn_plan("cust", cid, NOW + 2)
    assert plan is not None
    lists = [[h["node_id"] for h in hs] for hs in plan["holders"].values()]
    shared = [hs for hs in lists if ids[0] in hs and len(hs) == 2]
    assert shared and all(hs[0] == ids[0] for hs in shared)


def test_receipts_pay_once_at_most_the_share_size_and_claims_pay_nothing(store: Store) -> None:
    ids = [node(store, f"n{i}", f"127.0.0.{i + 1}") for i in range(4)]
    cid, _ = publish(store, segments=1, k=2, n=4)
    held = stored_everywhere(store, cid)
    boaster = ids[0]
    store.sync(boaster, SyncIn(served={cid: 1 << 50}), NOW + 2)
    stats = store.cdn_stats("cust", NOW + 2)
    assert stats["served_by_node"] == {} and stats["claimed_by_node"] == {boaster: 1 << 50}
    mine = next(s for s, hs in held.items() if boaster in hs)
    other = next(s for s, hs in held.items() if boaster not in hs)
    receipts = [
        ("p1", boaster, mine),
        ("p1", boaster, mine),  # the same receipt twice in one report
        ("p1", boaster, other),  # a share the boaster does not hold
        ("p1", boaster, "f" * 64),  # not a share of this object
    ]
    for _ in range(2):  # and the whole report again
        store.cdn_record_fetch(
            "cust",
            cid,
            size=1,
            from_peers=100,
            from_origin=0,
            seconds=0.1,
            bad=[],
            now=NOW + 3,
            receipts=receipts,
        )
    assert store.cdn_stats("cust", NOW + 3)["served_by_node"] == {boaster: 100}
    # another plan's receipt for the same share pays again: the client fetched it again
    store.cdn_record_fetch(
        "cust",
        cid,
        size=1,
        from_peers=100,
        from_origin=0,
        seconds=0.1,
        bad=[],
        now=NOW + 4,
        receipts=[("p2", boaster, mine)],
    )
    assert store.cdn_stats("cust", NOW + 4)["served_by_node"] == {boaster: 200}


def test_a_quarantine_keeps_its_reason_and_a_pardon_lifts_it(store: Store) -> None:
    for i in range(4):
        node(store, f"n{i}", f"127.0.0.{i + 1}")
    cid, shares = publish(store, segments=1, k=2, n=4)
    held = stored_everywhere(store, cid)
    sha = shares[0][0]
    [liar] = held[sha]
    store.sync(liar, SyncIn(bad=[sha]), NOW + 2)
    [row] = [n for n in store.list_nodes(NOW + 2) if n["id"] == liar]
    assert row["state"] == "quarantined" and "own hash check" in row["quarantine_reason"]
    assert store.pardon_node(liar)
    [row] = [n for n in store.list_nodes(NOW + 2) if n["id"] == liar]
    assert row["state"] == "up" and row["quarantine_reason"] is None
    assert row["agreed"] == row["disputed"] == 0
    assert liar not in store.quarantined_nodes()
    assert not store.pardon_node("n-nobody")


def test_a_wrong_results_quarantine_says_why_and_a_pardon_puts_it_on_probation(
    store: Store,
) -> None:
    from tests.test_store import T0, job, join
    from tests.test_verify import lease_one, report

    honest1, liar, honest2 = (join(store, n, cores=1) for n in ("h1", "liar", "h2"))
    store.create_job("c1", job(1, replicas="adaptive"), T0)
    first = lease_one(store, liar, T0)
    store.sync(liar, SyncIn(results=[report(first, b"wrong")]), T0 + 1)
    for i, n in enumerate((honest1, honest2)):
        task = lease_one(store, n, T0 + 2 + 2 * i)
        store.sync(n, SyncIn(results=[report(task, b"right")]), T0 + 3 + 2 * i)
    [row] = [n for n in store.list_nodes(T0 + 5) if n["id"] == liar]
    assert row["state"] == "quarantined"
    assert f"its result for task {first['task_id']} disagreed" in row["quarantine_reason"]
    assert store.pardon_node(liar)
    [row] = [n for n in store.list_nodes(T0 + 5) if n["id"] == liar]
    assert row["state"] == "up" and row["quarantine_reason"] is None
    assert row["check_rate"] == 1.0  # on probation: every result checked again


def test_another_process_learns_a_chunk_server_announced_through_one(
    store: Store, monkeypatch
) -> None:
    """Two coordinator processes on one database: a node seen without a chunk server by B,
    which then announces one through A, is asked to fetch shares by B once B's cached answer
    lapses (SERVING_TTL_S), not never."""
    import fogwheel.store.cdn as cdn_store

    other = Store(store.url, lease_seconds=store.lease_seconds)
    other.engine = store.engine  # the same database (and, on PostgreSQL, the same schema)
    info = NodeJoin(token="x" * 8, name="late", cores=1, memory_mb=512, disk_mb=1000)
    node_id, _ = store.join_node(info, NOW)
    with other.read() as c:
        assert not other._serves(c, node_id)  # B caches: no chunk server
    store.sync(node_id, SyncIn(serve_url="http://203.0.113.9:8471"), NOW)  # through A
    with other.read() as c:
        assert not other._serves(c, node_id)  # within the bound, B may still say no ...
    monkeypatch.setattr(cdn_store, "SERVING_TTL_S", 0.0)
    with other.read() as c:
        assert other._serves(c, node_id)  # ... and past it, B reads it again
