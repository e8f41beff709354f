"""The books in the database: post balanced transactions, read balances and history.

Append-only by construction: this module has no method that updates or deletes an entry, and
the table's triggers (store/schema.py) refuse UPDATE and DELETE from anyone else. A wrong entry
is undone by posting its reversal (`reverse`), so the history always explains every balance.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import BigInteger, Connection, and_, bindparam, case, cast, func, select
from sqlalchemy.dialects import postgresql, sqlite

from fogwheel.core import costs
from fogwheel.core.ledger import (
    DEFAULT_PRICE,
    MICRO,
    PRICE_PER_GB_SERVED,
    Entry,
    Price,
    charge_for_task,
    check_transaction,
    correction,
    customer_account,
    node_account,
)
from fogwheel.protocol import JobIn
from fogwheel.store import parts
from fogwheel.store.base import StoreBase
from fogwheel.store.schema import credit_limits, jobs, ledger, nodes, tasks

DEFAULT_CREDIT_LIMIT = 1_000 * MICRO  # how far below zero a customer may go: 1,000 credits
_CHARGED = "fogwheel.charged_tasks"  # Connection.info key: tasks charged in this transaction


def task_txn(task_id: int) -> str:
    """The id of the transaction that pays for a task's verified work."""
    return f"task-{task_id}"


# Statements a busy sync runs, built once (store/base.py, `_COUNT_FINISHED`).
_PAID = select(ledger.c.txn).where(ledger.c.txn.in_(bindparam("txns", expanding=True)))
_POST = ledger.insert()
_CAPPED = select(jobs.c.id, jobs.c.max_cost).where(
    jobs.c.id.in_(
        select(tasks.c.job_id).where(tasks.c.id.in_(bindparam("ids", expanding=True))).distinct()
    ),
    jobs.c.max_cost.is_not(None),
    ~jobs.c.cancelled,
)


class LedgerStore(StoreBase):
    price: Price = DEFAULT_PRICE  # what a CPU-second costs (core/ledger.py)
    price_per_gb: int = PRICE_PER_GB_SERVED  # micro-credits a GB a node serves (the CDN)
    default_credit_limit: int = DEFAULT_CREDIT_LIMIT  # micro-credits, for a customer without one
    ownership: parts.Ownership  # an owner's devices (store/accounts.py)
    job_stops: parts.JobStops  # a job over its max cost (store/jobs.py)

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
            self._note_charged(c, [task_id])
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
        paid = set(c.execute(_PAID, {"txns": list(txns)}).scalars())
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
            c.execute(_POST, rows)
            self._note_charged(c, {tid for tid, _, _ in items})
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

    # -- costs: the price, a job's charges, caps ----------------------------------------------

    def price_sheet(self) -> dict[str, Any]:
        """The current prices: a CPU-second, a GB served, the platform's fee, the least a run
        costs; in micro-credits and in credits."""
        p = self.price
        return {
            "per_cpu_second": p.per_cpu_second,
            "per_cpu_hour": p.per_cpu_second * 3600,
            "per_gb_served": self.price_per_gb,
            "fee_bps": p.fee_bps,
            "min_charge": p.min_charge,
            "credits": {
                "per_cpu_second": p.per_cpu_second / MICRO,
                "per_cpu_hour": p.per_cpu_second * 3600 / MICRO,
                "per_gb_served": self.price_per_gb / MICRO,
            },
            "micro": MICRO,
        }

    def credit_limit(self, customer_id: str) -> int:
        """How far below zero this customer's balance may go (micro-credits)."""
        with self.read() as c:
            own = c.execute(
                select(credit_limits.c.credit_limit).where(
                    credit_limits.c.customer_id == customer_id
                )
            ).scalar()
        return self.default_credit_limit if own is None else int(own)

    def set_credit_limit(self, customer_id: str, limit: int, now: float) -> None:
        """The operator sets how far below zero a customer's balance may go (micro-credits)."""
        if limit < 0:
            raise ValueError("a credit limit is 0 or more credits")
        insert = (sqlite.insert if self.is_sqlite else postgresql.insert)(credit_limits)
        row = {"credit_limit": limit, "set_at": now}
        with self.tx() as c:
            c.execute(
                insert.values(customer_id=customer_id, **row).on_conflict_do_update(
                    index_elements=["customer_id"], set_=row
                )
            )

    def job_refusal(self, customer_id: str, job: JobIn) -> tuple[int, str] | None:
        """Why a job may not start, as (HTTP status, sentence), or None: 402 when the customer's
        balance is past its credit limit, 422 when the job's limits let it cost more than its
        `max_cost` (core/costs.py)."""
        balance = self.balance(customer_account(customer_id))
        past = costs.over_credit_limit(balance, self.credit_limit(customer_id))
        if past:
            return 402, past
        if job.max_cost is None:
            return None
        est = costs.estimate(
            len(job.tasks),
            job.replicas,
            cpu_s=job.limits.cpu_s,
            wall_s=job.limits.wall_s,
            price=self.price,
        )
        over = costs.over_max_cost(est, costs.to_micro(job.max_cost), self.price)
        return None if over is None else (422, over)

    def job_costs(self, c: Connection, job_ids: Iterable[int]) -> dict[int, dict[str, int]]:
        """For each job: `cost` (micro-credits charged so far, reversals netted), `checks`
        (paid runs beyond the first of a task: the replicas that checked a result) and
        `checks_cost` (what those runs cost), from the books.

        Summed by the database, one row per job: a job's books hold a row per charge and per
        payment of every task, and a customer who lists 100 jobs of 500 tasks each would
        otherwise pull 100,000 rows through Python on every listing (bench/fleet.py's
        submitter, listing twice a second, spent 15 % of the coordinator's CPU on it)."""
        ids = list(job_ids)
        out = {j: {"cost": 0, "checks": 0, "checks_cost": 0} for j in ids}
        if not ids:
            return out
        customer_side = ledger.c.account.startswith("customer:", autoescape=True)
        node_paid = and_(ledger.c.account.startswith("node:", autoescape=True), ledger.c.amount > 0)
        per_txn = (  # a transaction is one charged run: the customer's side and the nodes paid
            select(
                tasks.c.job_id,
                # as integers on every engine (PostgreSQL's SUM of a bigint is a numeric)
                cast(func.sum(case((customer_side, -ledger.c.amount), else_=0)), BigInteger).label(
                    "paid"
                ),
                cast(func.sum(case((node_paid, 1), else_=0)), BigInteger).label("runs"),
            )
            .join(tasks, tasks.c.id == ledger.c.task_id)
            .where(tasks.c.job_id.in_(ids))
            .group_by(tasks.c.job_id, ledger.c.txn)
            .subquery()
        )
        checked = and_(per_txn.c.paid > 0, per_txn.c.runs > 1)
        rows = c.execute(
            select(
                per_txn.c.job_id,
                func.sum(per_txn.c.paid),
                func.sum(case((checked, per_txn.c.runs - 1), else_=0)),
                # paid * (n - 1) // n per transaction, as the books keep integers
                func.sum(
                    case(
                        (checked, (per_txn.c.paid * (per_txn.c.runs - 1)) // per_txn.c.runs),
                        else_=0,
                    )
                ),
            ).group_by(per_txn.c.job_id)
        ).all()
        for job_id, cost, checks, checks_cost in rows:
            out[job_id] = {
                "cost": int(cost or 0),
                "checks": int(checks or 0),
                "checks_cost": int(checks_cost or 0),
            }
        return out

    def _note_charged(self, c: Connection, task_ids: Iterable[int]) -> None:
        """Remember, for this transaction, the tasks just charged (see `_stop_over_max_cost`)."""
        noted: set[int] = c.info.setdefault(_CHARGED, set())
        noted |= set(task_ids)

    def _stop_over_max_cost(self, c: Connection, now: float) -> list[int]:
        """Cancel the jobs whose charges reached their `max_cost` in this transaction, with
        the reason "max cost reached": nothing more of theirs is leased, their open tasks are
        cancelled (a late result of one is dropped, neither charged nor paid). Returns them.

        Called where results are charged (a node's sync, lease expiry), after the charging:
        what a job is charged is at most its max_cost plus the results that were charged in
        the transaction that crossed it (one node's batch of in-flight tasks)."""
        charged = c.info.pop(_CHARGED, None)
        if not charged:
            return []
        capped = c.execute(_CAPPED, {"ids": list(charged)}).all()
        if not capped:
            return []
        figures = self.job_costs(c, [j for j, _ in capped])
        stopped = []
        for job_id, max_cost in capped:
            reason = costs.max_cost_reached(figures[job_id]["cost"], int(max_cost))
            if reason is None:
                continue
            self.job_stops._stop_job(c, job_id, reason, now)
            stopped.append(job_id)
        return stopped

    # -- statements: what an owner's (or a device's) accounts earned, day by day -----------

    def statement(self, accounts: Sequence[str]) -> dict[str, Any]:
        """The entries of these node accounts summed per UTC day and source (a job, a CDN
        object, an adjustment), newest day first; with the total earned, the payouts so far
        (none: paying out is not built yet) and the balance. The lines sum to the total."""
        lines: dict[tuple[str, str], dict[str, Any]] = {}
        if accounts:
            with self.read() as c:
                rows = c.execute(
                    select(
                        ledger.c.amount,
                        ledger.c.memo,
                        ledger.c.txn,
                        ledger.c.created_at,
                        tasks.c.job_id,
                    )
                    .outerjoin(tasks, tasks.c.id == ledger.c.task_id)
                    .where(ledger.c.account.in_(list(accounts)))
                ).all()
            for amount, memo, txn, at, job_id in rows:
                day = time.strftime("%Y-%m-%d", time.gmtime(at))
                if job_id is not None:
                    source = f"job {job_id}"
                elif txn.startswith("cdn-"):
                    source = (memo.split(":", 1)[0] or "cdn").strip()
                else:
                    source = (memo.split(":", 1)[0] or txn)[:100]
                line = lines.setdefault(
                    (day, source),
                    {"day": day, "source": source, "job_id": job_id, "earned": 0, "entries": 0},
                )
                line["earned"] += int(amount)
                line["entries"] += 1
        ordered = sorted(lines.values(), key=lambda x: (x["day"], x["source"]), reverse=True)
        total = sum(x["earned"] for x in ordered)
        return {"lines": ordered, "earned": total, "payouts": [], "paid_out": 0, "balance": total}

    def node_statement(self, node_id: str) -> dict[str, Any]:
        return self.statement([node_account(node_id)])

    def owner_statement(self, owner_id: str) -> dict[str, Any]:
        """Every device of the owner (revoked ones included: their earnings stay theirs)."""
        owned = self.ownership._owned_by(owner_id)
        with self.read() as c:
            ids = list(c.execute(select(nodes.c.id).where(owned)).scalars())
        return {"owner_id": owner_id, **self.statement([node_account(i) for i in ids])}
