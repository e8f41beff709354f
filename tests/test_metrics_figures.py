"""The fleet-wide figures /metrics reads (store/figures.py) and the store's committed events
(store/events.py), on SQLite and PostgreSQL: the same answers as a full count, and an
event counted only when its transaction commits."""

from __future__ import annotations

import random
import time

import pytest
from sqlalchemy import func, select

from fogwheel.protocol import NodeJoin
from fogwheel.store import Store
from fogwheel.store import events as store_events
from fogwheel.store.figures import LedgerSums, fleet_figures
from fogwheel.store.schema import cdn_traffic, ledger, nodes


def _post(store: Store, rng: random.Random, n: int) -> None:
    """`n` balanced transactions on customer, node and platform accounts (some reversed)."""
    with store.tx() as c:
        first = c.execute(select(func.count()).select_from(ledger)).scalar() or 0
        rows = []
        for i in range(first, first + n):
            gross = rng.randrange(1, 1000) * (-1 if rng.random() < 0.1 else 1)  # corrections
            fee = gross // 10
            rows += [
                {"txn": f"t{i}", "account": "customer:c-1", "amount": -gross},
                {"txn": f"t{i}", "account": f"node:n-{i % 7}", "amount": gross - fee},
                {"txn": f"t{i}", "account": "platform:fees", "amount": fee},
            ]
        if rows:
            c.execute(ledger.insert(), [{**r, "memo": "", "created_at": 0.0} for r in rows])


def _full(store: Store) -> dict[tuple[str, str], int]:
    out = {(k, s): 0 for k in ("customer", "node", "platform") for s in ("debit", "credit")}
    with store.read() as c:
        for account, amount in c.execute(select(ledger.c.account, ledger.c.amount)).all():
            kind = account.split(":")[0]
            out[(kind, "debit" if amount < 0 else "credit")] += abs(amount)
    return out


@pytest.mark.parametrize("settle_s", [0.0, 30.0])
def test_the_ledger_sums_read_incrementally_equal_a_full_sum(store: Store, settle_s: float) -> None:
    rng = random.Random(7)
    books = LedgerSums(settle_s)
    clock = 0.0
    for step in range(6):
        _post(store, rng, rng.randrange(1, 40))
        clock += 20.0  # a reading every 20 s of a monotonic clock
        figures = fleet_figures(store, time.time(), books, clock)
        assert figures.ledger == _full(store), f"step {step}"
    if settle_s == 0.0:
        assert books.settled_id > 0  # the rows once read are not read again
    assert figures.ledger[("customer", "credit")] > 0  # corrections landed on the other side


def test_devices_by_state_match_what_fogwheel_nodes_shows(store: Store) -> None:
    now = time.time()
    ids = []
    for i in range(6):
        info = NodeJoin(token="x" * 8, name=f"d{i}", cores=i + 1, memory_mb=512, disk_mb=1000)
        ids.append(store.join_node(info, now)[0])
    with store.tx() as c:
        c.execute(nodes.update().where(nodes.c.id == ids[0]).values(quarantined=True, disputed=3))
        c.execute(nodes.update().where(nodes.c.id == ids[1]).values(revoked=True))
        c.execute(nodes.update().where(nodes.c.id == ids[2]).values(last_seen=now - 3600))
        c.execute(nodes.update().where(nodes.c.id == ids[3]).values(state="draining"))
    figures = fleet_figures(store, now, LedgerSums(0.0), 0.0)
    shown: dict[str, int] = {}
    for n in store.list_nodes(now):
        shown[n["state"]] = shown.get(n["state"], 0) + 1
    assert {s: n for s, n in figures.nodes.items() if n} == shown
    assert figures.nodes == {"up": 2, "draining": 1, "gone": 1, "quarantined": 1, "revoked": 1}
    assert figures.cores["up"] == 5 + 6 and figures.quarantined == 1 and figures.disputed == 3


def test_an_event_counts_once_its_transaction_commits_and_never_on_a_rollback(
    store: Store,
) -> None:
    with store.tx() as c:
        store_events.note(c, store_events.QUARANTINES)
        assert store.tally.get(store_events.QUARANTINES) == 0  # not before the commit
    assert store.tally.get(store_events.QUARANTINES) == 1
    with pytest.raises(RuntimeError), store.tx() as c:
        store_events.note(c, store_events.QUARANTINES, 5)
        raise RuntimeError("rolled back")
    assert store.tally.get(store_events.QUARANTINES) == 1
    with store.tx() as c:  # the pooled connection carries no note of the rolled-back one
        pass
    assert store.tally.get(store_events.QUARANTINES) == 1


def test_cdn_traffic_is_summed_by_kind_and_source(store: Store) -> None:
    rows = [
        {"kind": "fetch", "bytes": 1000, "from_peers": 900, "from_origin": 300},
        {"kind": "fetch", "bytes": 500, "from_peers": 300, "from_origin": 0},
        {"kind": "served", "bytes": 700, "node_id": "n-1"},
        {"kind": "repair", "bytes": 4096},
        {"kind": "claimed", "bytes": 10**9, "node_id": "n-1"},  # a node's own word: not paid
    ]
    with store.tx() as c:
        c.execute(
            cdn_traffic.insert(),
            [{"from_peers": 0, "from_origin": 0, "seconds": 0.1, "at": 0.0, **r} for r in rows],
        )
    f = fleet_figures(store, time.time(), LedgerSums(0.0), 0.0)
    assert (f.cdn_bytes["fetch"], f.cdn_bytes["served"], f.cdn_bytes["repair"]) == (1500, 700, 4096)
    assert (f.cdn_from_peers, f.cdn_from_origin) == (1200, 300)  # offload 0.8
