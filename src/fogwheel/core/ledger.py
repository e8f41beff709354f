"""The books: prices and double-entry transactions for verified work, as pure functions.

Double-entry bookkeeping (Pacioli, *Summa de arithmetica*, 1494): every transaction is a set of
entries on accounts whose amounts sum to exactly zero, so value moves and is never created or
lost. A customer's account goes negative by what it is charged; the owners of the nodes that did
the work and the platform's fee account go positive by as much. Entries are never changed: a
mistake is undone by a new, reversing transaction (`correction`), as an accountant's ledger does.

Amounts are integers in micro-credits (1 credit = 1,000,000), so the books have no rounding
drift; the fee is in basis points (1/100 of a percent). Nothing here reads a clock, a file or a
database: `store/ledger.py` writes these entries and the coordinator serves them.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

MICRO = 1_000_000  # micro-credits per credit
BPS = 10_000  # basis points per whole
PRICE_PER_CPU_SECOND = 1_000  # micro-credits: 0.001 credits per CPU-second, 3.6 per CPU-hour
PLATFORM_FEE_BPS = 1_000  # 10 % of every charge goes to the platform
MIN_CHARGE = 1  # micro-credits: the least a verified run costs, even at 0 measured CPU-seconds

PLATFORM_FEES = "platform:fees"
ACCOUNT_KINDS = ("customer", "node", "platform")


@dataclass(frozen=True, slots=True)
class Price:
    """What a CPU-second costs the customer and which share of it the platform keeps."""

    per_cpu_second: int = PRICE_PER_CPU_SECOND  # micro-credits
    fee_bps: int = PLATFORM_FEE_BPS  # basis points of each charge
    min_charge: int = MIN_CHARGE  # micro-credits per run

    def __post_init__(self) -> None:
        if self.per_cpu_second < 0 or self.min_charge < 0:
            raise ValueError("a price cannot be negative")
        if not 0 <= self.fee_bps <= BPS:
            raise ValueError(f"the platform fee must be 0..{BPS} basis points")

    def for_cpu(self, cpu_s: float) -> int:
        """Micro-credits for `cpu_s` CPU-seconds: rounded up, and at least `min_charge`."""
        if not math.isfinite(cpu_s) or cpu_s < 0:
            raise ValueError(f"CPU-seconds must be a finite number >= 0, not {cpu_s!r}")
        cpu_us = round(cpu_s * MICRO)  # whole CPU-microseconds: the rest is integer arithmetic
        return max(self.min_charge, -(-cpu_us * self.per_cpu_second // MICRO))

    def owner_share(self, gross: int) -> int:
        """What the node's owner keeps of `gross`: rounded down, the platform gets the rest."""
        return gross * (BPS - self.fee_bps) // BPS


DEFAULT_PRICE = Price()


@dataclass(frozen=True, slots=True)
class Entry:
    """One line of the books: `amount` micro-credits onto `account` as part of `txn`."""

    txn: str
    account: str
    amount: int
    memo: str = ""


def customer_account(customer_id: str) -> str:
    return _account("customer", customer_id)


def node_account(node_id: str) -> str:
    return _account("node", node_id)


def _account(kind: str, id_: str) -> str:
    if not id_ or ":" in id_:
        raise ValueError(f"an account id is non-empty and has no ':', not {id_!r}")
    return f"{kind}:{id_}"


def charge_for_task(
    txn: str,
    customer_id: str,
    runs: Sequence[tuple[str, float]],
    *,
    price: Price = DEFAULT_PRICE,
    memo: str = "",
) -> list[Entry]:
    """The balanced transaction for verified runs `(node_id, cpu_s)` that the customer pays for.

    Each run costs `price.for_cpu(cpu_s)`; its node earns `price.owner_share` of that; the
    customer is debited the sum and the platform's fee account takes what is left, remainders
    of rounding included, so the entries sum to exactly zero. A node with several runs gets one
    entry; entries of zero are left out (a transaction of no runs has no entries). Every memo
    reads `<memo>: <n> verified runs, <cpu> CPU-s`.
    """
    gross = 0
    earned: dict[str, int] = {}  # insertion order: nodes in the order of their first run
    for node_id, cpu_s in runs:
        cost = price.for_cpu(cpu_s)
        gross += cost
        account = node_account(node_id)
        earned[account] = earned.get(account, 0) + price.owner_share(cost)
    cpu_total = sum(cpu for _, cpu in runs)
    summary = f"{len(runs)} verified run{'s' * (len(runs) != 1)}, {cpu_total:.3f} CPU-s"
    what = f"{memo}: {summary}" if memo else summary
    lines = [(customer_account(customer_id), -gross), *earned.items()]
    lines.append((PLATFORM_FEES, gross - sum(earned.values())))
    return [Entry(txn, account, amount, what) for account, amount in lines if amount]


PRICE_PER_GB_SERVED = 20_000  # micro-credits: 0.02 credits per GB a node serves for a customer


def charge_for_bytes(
    txn: str,
    customer_id: str,
    served: Sequence[tuple[str, int]],
    *,
    price_per_gb: int = PRICE_PER_GB_SERVED,
    fee_bps: int = PLATFORM_FEE_BPS,
    memo: str = "",
) -> list[Entry]:
    """The balanced transaction for CDN bytes `(node_id, bytes)` served for the customer.

    Each node's bytes cost `bytes * price_per_gb / 1e9` micro-credits, rounded down (at least 1
    for any byte); the node earns that less the platform's fee; the customer pays the sum."""
    gross = 0
    earned: dict[str, int] = {}
    for node_id, n in served:
        if n <= 0:
            continue
        cost = max(1, n * price_per_gb // 1_000_000_000)
        gross += cost
        account = node_account(node_id)
        earned[account] = earned.get(account, 0) + cost - cost * fee_bps // BPS
    total = sum(n for _, n in served if n > 0)
    what = f"{memo}: {total:,} bytes served" if memo else f"{total:,} bytes served"
    lines = [(customer_account(customer_id), -gross), *earned.items()]
    lines.append((PLATFORM_FEES, gross - sum(earned.values())))
    return [Entry(txn, account, amount, what) for account, amount in lines if amount]


def correction(original: Sequence[Entry], reason: str, txn: str | None = None) -> list[Entry]:
    """The transaction that reverses `original` (one transaction): same accounts, negated.

    Entries are never edited; a wrong charge stays in the books beside its reversal, and the
    right charge, if any, is posted after them as a transaction of its own.
    """
    txns = {e.txn for e in original}
    if len(txns) != 1:
        raise ValueError(f"a correction reverses one transaction, not {len(txns)}")
    (orig,) = txns
    new_txn = txn or f"{orig}/reversal"
    return [Entry(new_txn, e.account, -e.amount, f"reverses {orig}: {reason}") for e in original]


def balances(entries: Iterable[Entry]) -> dict[str, int]:
    """Each account's balance: the sum of its entries."""
    out: dict[str, int] = defaultdict(int)
    for e in entries:
        out[e.account] += e.amount
    return dict(out)


def is_balanced(entries: Iterable[Entry]) -> bool:
    """Whether every transaction among `entries` sums to zero (and so do all of them)."""
    per_txn: dict[str, int] = defaultdict(int)
    for e in entries:
        per_txn[e.txn] += e.amount
    return not any(per_txn.values())


def check_transaction(entries: Sequence[Entry]) -> None:
    """Refuse what may not be posted as one transaction; the message says what is wrong."""
    if not entries:
        raise ValueError("a transaction needs at least one entry")
    txns = {e.txn for e in entries}
    if len(txns) != 1:
        raise ValueError(f"entries of one transaction share one txn id, not {sorted(txns)}")
    accounts = [e.account for e in entries]
    if len(set(accounts)) != len(accounts):
        raise ValueError("a transaction has at most one entry per account: add them up first")
    for e in entries:
        if e.account.split(":", 1)[0] not in ACCOUNT_KINDS or ":" not in e.account:
            raise ValueError(f"{e.account!r} is not an account: customer:ID, node:ID or platform:…")
        if not isinstance(e.amount, int) or isinstance(e.amount, bool):
            raise ValueError(f"amounts are whole micro-credits, not {e.amount!r}")
    total = sum(e.amount for e in entries)
    if total:
        raise ValueError(f"transaction {entries[0].txn} is unbalanced: its entries sum to {total}")


def format_credits(micro: int) -> str:
    """`12345678` → `12.345678 credits`: exact, no float in between."""
    sign = "-" if micro < 0 else ""
    whole, frac = divmod(abs(micro), MICRO)
    return f"{sign}{whole}.{frac:06d} credits"
