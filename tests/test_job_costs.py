"""A job's cost, checks and checks' cost, summed by the database (store/ledger.py job_costs),
against the same figures computed row by row in Python from the books, on both engines."""

from __future__ import annotations

import random
from collections import defaultdict

from sqlalchemy import insert, select

from fogwheel.store import Store
from fogwheel.store.schema import ledger, tasks
from tests.test_store import T0, job


def by_hand(store: Store, job_ids: list[int]) -> dict[int, dict[str, int]]:
    """The definition: per transaction, the customer's side is what was paid, the nodes paid
    a positive amount are its runs; runs beyond the first checked the result, and cost their
    share of the payment, floored."""
    with store.read() as c:
        rows = c.execute(
            select(tasks.c.job_id, ledger.c.txn, ledger.c.account, ledger.c.amount)
            .join(tasks, tasks.c.id == ledger.c.task_id)
            .where(tasks.c.job_id.in_(job_ids))
        ).all()
    paid: dict[tuple[int, str], int] = defaultdict(int)
    runs: dict[tuple[int, str], int] = defaultdict(int)
    for job_id, txn, account, amount in rows:
        if account.startswith("customer:"):
            paid[(job_id, txn)] -= amount
        elif account.startswith("node:") and amount > 0:
            runs[(job_id, txn)] += 1
    out = {j: {"cost": 0, "checks": 0, "checks_cost": 0} for j in job_ids}
    for (job_id, txn), p in paid.items():
        out[job_id]["cost"] += p
        n = runs.get((job_id, txn), 0)
        if p > 0 and n > 1:
            out[job_id]["checks"] += n - 1
            out[job_id]["checks_cost"] += p * (n - 1) // n
    return out


def test_job_costs_equal_the_books_row_by_row(store: Store) -> None:
    rng = random.Random(12)
    job_ids = [store.create_job("c1", job(6), T0) for _ in range(4)]
    with store.read() as c:
        task_ids = {
            j: [t for (t,) in c.execute(select(tasks.c.id).where(tasks.c.job_id == j))]
            for j in job_ids
        }
    rows = []
    for n, j in enumerate(job_ids[:3]):  # the last job has no books: all zeros
        for t in task_ids[j]:
            for k in range(rng.randint(0, 3)):  # charges, some checked, some reversed
                txn = f"t{n}-{t}-{k}"
                price = rng.randint(1, 10_000)
                nodes = rng.randint(0, 4)
                rows.append({"txn": txn, "account": "customer:c1", "amount": -price})
                share, left = divmod(price, max(nodes, 1))
                for i in range(nodes):
                    rows.append({"txn": txn, "account": f"node:n{i}", "amount": share})
                rows.append({"txn": txn, "account": "fog:fees", "amount": left})
                if rng.random() < 0.2:  # a reversal: its own transaction, paid back
                    back = f"{txn}-rev"
                    rows.append({"txn": back, "account": "customer:c1", "amount": price})
                    rows.append({"txn": back, "account": "fog:fees", "amount": -price})
        # an unrelated payout row with no task: never counted
    for r in rows:
        r["task_id"] = int(r["txn"].split("-")[1])
        r["memo"] = ""
        r["created_at"] = T0
    rows.append(
        {
            "txn": "payout-1",
            "account": "node:n0",
            "amount": -5,
            "task_id": None,
            "memo": "",
            "created_at": T0,
        }
    )
    with store.tx() as c:
        c.execute(insert(ledger), rows)
    with store.read() as c:
        got = store.job_costs(c, job_ids)
    want = by_hand(store, job_ids)
    assert got == want
    assert want[job_ids[3]] == {"cost": 0, "checks": 0, "checks_cost": 0}
    assert sum(v["checks"] for v in want.values()) > 0  # the draw made checked runs
    assert all(isinstance(x, int) for v in got.values() for x in v.values())
