"""Routes over the books: a customer's usage, a node's earnings, the operator's totals.

Each caller sees one account only, chosen by its credential and never by a parameter: a customer
key reads `customer:<id>`, a node credential reads `node:<id>`, the admin key reads every
account's balance and the grand total, which is 0 in healthy double-entry books.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Query, Request

from fogwheel.coordinator.auth import Authenticator
from fogwheel.core.ledger import customer_account, format_credits, node_account
from fogwheel.protocol import Model, Problem
from fogwheel.store import Store

BIGINT_MAX = 2**63 - 1  # entry ids live in a BIGINT column

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "Missing or unknown credentials"},
    403: {"model": Problem, "description": "Credentials of the wrong kind"},
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


def build_ledger_routes(app: FastAPI | APIRouter, store: Store, auth: Authenticator) -> None:
    """Add GET /v1/usage, /v1/nodes/me/earnings and /v1/ledger to `app`."""
    v1 = APIRouter(prefix="/v1", responses=ERRORS, tags=["ledger"])

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
    def usage(request: Request, limit: Limit = 50, before: Before = None) -> AccountOut:
        """What this customer has been charged: balance (negative) and newest entries."""
        who = auth.require(request, "customer")
        return account_out(customer_account(who.id), limit, before)

    @v1.get("/nodes/me/earnings")
    def earnings(request: Request, limit: Limit = 50, before: Before = None) -> AccountOut:
        """What this node has earned: balance and newest entries."""
        who = auth.require(request, "node")
        return account_out(node_account(who.id), limit, before)

    @v1.get("/ledger")
    def totals(request: Request) -> LedgerTotalsOut:
        """The operator's check of the books: every balance, their sum (0) and the entry count."""
        auth.require(request, "admin")
        accounts = store.totals()
        _, n = store.check()
        total = sum(accounts.values())
        return LedgerTotalsOut(accounts=accounts, total=total, entries=n, balanced=total == 0)

    app.include_router(v1)
