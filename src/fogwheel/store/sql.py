"""The store: every state change of a task is a core transition, committed in one transaction.

SQLite (one file, embedded) by default; PostgreSQL for several coordinator processes, where
leasing takes rows with `SELECT … FOR UPDATE SKIP LOCKED` so that two coordinators never hand
out the same task. A result is acknowledged to a node only after its transaction commits.
Each part lives in its own module; `Store` puts them together.
"""

from __future__ import annotations

from fogwheel.store.accounts import AccountsStore
from fogwheel.store.base import Principal, SyncResult, hash_secret, new_secret, retry_conflicts
from fogwheel.store.cdn import CdnStore
from fogwheel.store.fleet import FleetStore
from fogwheel.store.jobs import JobsStore
from fogwheel.store.leasing import LeasingStore
from fogwheel.store.ledger import LedgerStore
from fogwheel.store.waits import WaitsStore


class Store(AccountsStore, FleetStore, JobsStore, LeasingStore, LedgerStore, CdnStore, WaitsStore):
    """All coordinator state. Methods take `now`; none reads the clock itself."""

    # A sync that lost a race on PostgreSQL (deadlock, serialization) is run again whole: its
    # transaction left nothing behind (store/base.py: retry_conflicts).
    sync = retry_conflicts(LeasingStore.sync)


__all__ = ["Principal", "Store", "SyncResult", "hash_secret", "new_secret"]
