"""The books in the database: post balanced transactions, read balances and history.

Append-only by construction: this module has no method that updates or deletes an entry, and
the table's triggers (store/schema.py) refuse UPDATE and DELETE from anyone else. A wrong entry
is undone by posting its reversal (`reverse`), so the history always explains every balance.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, func, select

from fogwheel.core.ledger import (
    DEFAULT_PRICE,
    Entry,
    Price,
    charge_for_task,
    check_transaction,
    correction,
)
from fogwheel.store.base import StoreBase
from fogwheel.store.schema import ledger


def task_txn(task_id: int) -> str:
    """The id of the transaction that pays for a task's verified work."""
    return f"task-{task_id}"


class LedgerStore(StoreBase):
    # -- writing: inside the caller's transaction --------------------------------------------

    def post(
        self, c: Connection, entries: Sequence[Entry], now: float, task_id: int | None = None
    ) -> None:
        """Append one balanced transaction in the transaction `c`; refuse anything else.

        Raises ValueError when the entries are unbalanced, span several transaction ids, name
        an account twice, or reuse a transaction id already in the books.
        """
        check_transaction(entries)
        txn = entries[0].txn
        if c.execute(select(ledger.c.id).where(ledger.c.txn == txn).limit(1)).first():
            raise ValueError(f"transaction {txn} is already in the books: post a correction")
        c.execute(
            ledger.insert(),
            [
                {
                    "txn": e.txn,
                    "account": e.account,
                    "amount": e.amount,
                    "memo": e.memo,
                    "task_id": task_id,
                    "created_at": now,
                }
                for e in entries
            ],
        )

    def credit_verified_work(
        self,
        c: Connection,
        *,
        task_id: int,
        customer_id: str,
        runs: Sequence[tuple[str, float]],
        now: float,
        price: Price = DEFAULT_PRICE,
    ) -> list[Entry]:
        """Charge the customer for a task's verified runs `(node_id, cpu_s)` and pay the nodes.

        Call it in the transaction that marks the task verified, so that the work and its
        payment commit together. Idempotent per task: a task already paid for is left alone and
        the answer is []; otherwise the answer is the entries posted (transaction `task-<id>`).
        """
        txn = task_txn(task_id)
        if c.execute(select(ledger.c.id).where(ledger.c.txn == txn).limit(1)).first():
            return []
        entries = charge_for_task(txn, customer_id, runs, price=price, memo=f"task {task_id}")
        if entries:
            self.post(c, entries, now, task_id)
        return entries

    def credit_verified_batch(
        self,
        c: Connection,
        items: Sequence[tuple[int, str, Sequence[tuple[str, float]]]],
        now: float,
        price: Price = DEFAULT_PRICE,
    ) -> int:
        """`credit_verified_work` for many tasks `(task_id, customer_id, runs)` at once: one
        look-up for the tasks already paid and one insert for all the entries. Returns the
        number of entries posted."""
        txns = {task_txn(tid): (tid, customer, runs) for tid, customer, runs in items}
        paid = set(c.execute(select(ledger.c.txn).where(ledger.c.txn.in_(txns))).scalars())
        rows = []
        for txn, (tid, customer, runs) in txns.items():
            if txn in paid:
                continue
            entries = charge_for_task(txn, customer, runs, price=price, memo=f"task {tid}")
            if not entries:
                continue
            check_transaction(entries)
            rows += [
                {
                    "txn": e.txn,
                    "account": e.account,
                    "amount": e.amount,
                    "memo": e.memo,
                    "task_id": tid,
                    "created_at": now,
                }
                for e in entries
            ]
        if rows:
            c.execute(ledger.insert(), rows)
        return len(rows)

    # -- writing: a transaction of its own ---------------------------------------------------

    def record(self, entries: Sequence[Entry], now: float, task_id: int | None = None) -> None:
        """`post` in a transaction of its own: for corrections and the operator's adjustments."""
        with self.tx() as c:
            self.post(c, entries, now, task_id)

    def reverse(self, txn: str, reason: str, now: float, new_txn: str | None = None) -> list[Entry]:
        """Post the correction that undoes transaction `txn`; raises KeyError when there is none."""
        with self.tx() as c:
            rows = c.execute(
                select(
                    ledger.c.txn, ledger.c.account, ledger.c.amount, ledger.c.memo, ledger.c.task_id
                )
                .where(ledger.c.txn == txn)
                .order_by(ledger.c.id)
            ).all()
            if not rows:
                raise KeyError(f"no transaction {txn} in the books")
            entries = correction(
                [Entry(r.txn, r.account, int(r.amount), r.memo) for r in rows], reason, new_txn
            )
            self.post(c, entries, now, rows[0].task_id)
        return entries

    # -- reading ----------------------------------------------------------------------------

    def balance(self, account: str) -> int:
        """The sum of the account's entries, in micro-credits (0 for an account never used)."""
        with self.read() as c:
            total = c.execute(
                select(func.coalesce(func.sum(ledger.c.amount), 0)).where(
                    ledger.c.account == account
                )
            ).scalar_one()
        return int(total)

    def history(
        self, account: str, limit: int = 50, before_id: int | None = None
    ) -> list[dict[str, Any]]:
        """The account's entries, newest first; pass the last id as `before_id` for older ones."""
        q = select(
            ledger.c.id,
            ledger.c.txn,
            ledger.c.amount,
            ledger.c.memo,
            ledger.c.task_id,
            ledger.c.created_at,
        ).where(ledger.c.account == account)
        if before_id is not None:
            q = q.where(ledger.c.id < before_id)
        with self.read() as c:
            rows = c.execute(q.order_by(ledger.c.id.desc()).limit(limit)).mappings().all()
        return [{**r, "amount": int(r["amount"])} for r in rows]

    def entries(self, txn: str) -> list[Entry]:
        """The entries of one transaction, in the order they were posted."""
        with self.read() as c:
            rows = c.execute(
                select(ledger.c.txn, ledger.c.account, ledger.c.amount, ledger.c.memo)
                .where(ledger.c.txn == txn)
                .order_by(ledger.c.id)
            ).all()
        return [Entry(r.txn, r.account, int(r.amount), r.memo) for r in rows]

    def totals(self) -> dict[str, int]:
        """Every account's balance."""
        with self.read() as c:
            rows = c.execute(
                select(ledger.c.account, func.sum(ledger.c.amount))
                .group_by(ledger.c.account)
                .order_by(ledger.c.account)
            ).all()
        return {account: int(total) for account, total in rows}

    def check(self) -> tuple[int, int]:
        """(the sum of all entries, how many there are): the sum is 0 in healthy books."""
        with self.read() as c:
            total, n = c.execute(
                select(func.coalesce(func.sum(ledger.c.amount), 0), func.count()).select_from(
                    ledger
                )
            ).one()
        return int(total), int(n)
