"""Routes over the books: the price, a customer's usage, a node's earnings and an owner's
statement, the operator's totals and credit limits.

Each caller sees one account only, chosen by its credential and never by a parameter: a customer
key reads `customer:<id>`, a node credential reads `node:<id>`, an owner key its devices' node
accounts, the admin key reads every account's balance and the grand total, which is 0 in
healthy double-entry books.

GET  /v1/price                              the current price (any credential, or none)
GET  /v1/usage                              a customer's balance, credit limit and entries
GET  /v1/nodes/me/earnings, /me/statement   a device's balance; its entries per day and job
GET  /v1/owners/me/statement                an owner's devices' entries per day and job
GET  /v1/owners/{id}/statement              the same, for the operator
PUT  /v1/customers/{id}/credit-limit        the operator sets how far below 0 a balance may go
GET  /v1/ledger                             the operator's check of the books
"""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, HTTPException, Path, Query

from fogwheel.coordinator.auth import Authenticator
from fogwheel.coordinator.identity import PUBLIC, caller
from fogwheel.core.costs import to_micro
from fogwheel.core.ledger import customer_account, format_credits, node_account
from fogwheel.protocol import Model, Problem
from fogwheel.store import Principal, Store

BIGINT_MAX = 2**63 - 1  # entry ids live in a BIGINT column

ERRORS: dict[int | str, dict[str, Any]] = {
    422: {"model": Problem, "description": "Parameters of the wrong shape"},
}


class LedgerEntryOut(Model):
    """One entry of an account: `amount` micro-credits (negative: charged, positive: earned)."""

    id: int
    txn: str
    amount: int
    memo: str
    task_id: int | None
    created_at: float


class AccountOut(Model):
    """An account's balance and its newest entries; pass `next_before` as `before` for more."""

    account: str
    balance: int  # micro-credits: the sum of all the account's entries
    balance_text: str  # the same in credits, e.g. "-0.012000 credits"
    history: list[LedgerEntryOut]
    next_before: int | None
    credit_limit: int | None = None  # a customer's: how far below 0 its balance may go


class PriceOut(Model):
    """The current price: integers in micro-credits, `credits` the same in credits."""

    per_cpu_second: int
    per_cpu_hour: int
    per_gb_served: int
    fee_bps: int  # the platform's share of every charge, basis points
    min_charge: int  # the least a verified run costs
    credits: dict[str, float]
    micro: int  # micro-credits a credit
    checks: str  # who pays for checks


class StatementLine(Model):
    """What the accounts earned on one UTC day from one source (a job, a CDN object)."""

    day: str
    source: str
    job_id: int | None
    earned: int
    entries: int


class StatementOut(Model):
    """Earnings per day and source, newest first; `earned` is the lines' sum."""

    owner_id: str | None = None
    node_id: str | None = None
    lines: list[StatementLine]
    earned: int
    earned_text: str
    payouts: list[dict[str, Any]]  # none yet: paying out is not built
    paid_out: int
    balance: int


class CreditLimitOut(Model):
    customer_id: str
    credit_limit: int
    credit_limit_text: str


class LedgerTotalsOut(Model):
    """Every account's balance in micro-credits; `total` is their sum and must be 0."""

    accounts: dict[str, int]
    total: int
    entries: int
    balanced: bool


Limit = Annotated[int, Query(ge=1, le=1000, description="entries of history to return")]
Before = Annotated[
    int | None, Query(ge=1, le=BIGINT_MAX, description="only entries older than this id")
]


CHECKS = (
    "the customer pays every run that agreed on a task's result: with adaptive replication a "
    "new or doubtful node's result is checked on a second node (about 1.06 runs a task on the "
    "measured benchmark); --replicas 1 pays one run a task and checks nothing"
)
IdPath = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]


def build_ledger_routes(app: FastAPI | APIRouter, store: Store, auth: Authenticator) -> None:
    """Add the price, usage, earnings, statements, credit limits and /v1/ledger to `app`."""
    v1 = APIRouter(prefix="/v1", responses=ERRORS, tags=["ledger"])
    customer, node, owner = caller(auth, "customer"), caller(auth, "node"), caller(auth, "owner")
    admin = caller(auth, "admin")

    @v1.get("/price", openapi_extra=PUBLIC)
    def price() -> PriceOut:
        """The current price of a CPU-second and of a GB served, the platform's fee, and who
        pays for checks: what a job will be charged at, before it runs."""
        return PriceOut(**store.price_sheet(), checks=CHECKS)

    def account_out(account: str, limit: int, before: int | None) -> AccountOut:
        rows = store.history(account, limit, before)
        balance = store.balance(account)
        return AccountOut(
            account=account,
            balance=balance,
            balance_text=format_credits(balance),
            history=[LedgerEntryOut(**r) for r in rows],
            next_before=rows[-1]["id"] if len(rows) == limit else None,
        )

    @v1.get("/usage")
    def usage(limit: Limit = 50, before: Before = None, who: Principal = customer) -> AccountOut:
        """What this customer has been charged: balance (negative), credit limit (new jobs are
        refused with 402 once the balance is that far below 0) and newest entries."""
        out = account_out(customer_account(who.id), limit, before)
        out.credit_limit = store.credit_limit(who.id)
        return out

    @v1.get("/nodes/me/earnings")
    def earnings(limit: Limit = 50, before: Before = None, who: Principal = node) -> AccountOut:
        """What this node has earned: balance and newest entries."""
        return account_out(node_account(who.id), limit, before)

    def statement_out(data: dict[str, Any]) -> StatementOut:
        return StatementOut(**data, earned_text=format_credits(data["earned"]))

    @v1.get("/nodes/me/statement")
    def node_statement(who: Principal = node) -> StatementOut:
        """What this device earned, per UTC day and job (or CDN object), and payouts so far."""
        return statement_out({"node_id": who.id, **store.node_statement(who.id)})

    @v1.get("/owners/me/statement")
    def my_statement(who: Principal = owner) -> StatementOut:
        """What your devices earned, per UTC day and job (or CDN object), and payouts so far;
        the lines sum to your earnings (`fogwheel earnings --owner`)."""
        return statement_out(store.owner_statement(who.id))

    @v1.get(
        "/owners/{owner_id}/statement",
        dependencies=[admin],
        responses={404: {"model": Problem, "description": "No such owner"}},
    )
    def owner_statement(owner_id: IdPath) -> StatementOut:
        """Operator: one owner's statement. 404 when there is no such owner."""
        if store.get_owner(owner_id) is None and owner_id != "operator":
            raise HTTPException(404, f"no owner {owner_id}: `fogwheel owners list` lists them")
        return statement_out(store.owner_statement(owner_id))

    @v1.put("/customers/{customer_id}/credit-limit", dependencies=[admin])
    def set_credit_limit(
        customer_id: IdPath,
        credits: Annotated[float, Query(ge=0, le=1e12, allow_inf_nan=False)],
    ) -> CreditLimitOut:
        """Operator: how far below zero this customer's balance may go before new jobs are
        refused (402)."""
        limit = to_micro(credits)
        store.set_credit_limit(customer_id, limit, time.time())
        return CreditLimitOut(
            customer_id=customer_id, credit_limit=limit, credit_limit_text=format_credits(limit)
        )

    @v1.get("/ledger", dependencies=[admin])
    def totals() -> LedgerTotalsOut:
        """The operator's check of the books: every balance, their sum (0) and the entry count."""
        accounts = store.totals()
        _, n = store.check()
        total = sum(accounts.values())
        return LedgerTotalsOut(accounts=accounts, total=total, entries=n, balanced=total == 0)

    app.include_router(v1)
