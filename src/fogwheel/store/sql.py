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
from fogwheel.store.console import ConsoleStore
from fogwheel.store.fleet import FleetStore
from fogwheel.store.jobs import JobsStore
from fogwheel.store.leasing import LeasingStore
from fogwheel.store.ledger import LedgerStore
from fogwheel.store.waits import WaitsStore


class Store(
    AccountsStore,
    FleetStore,
    JobsStore,
    LeasingStore,
    LedgerStore,
    CdnStore,
    WaitsStore,
    ConsoleStore,
):
    """All coordinator state. Methods take `now`; none reads the clock itself."""

    def __init__(
        self,
        url: str,
        *,
        lease_seconds: float = 15.0,
        schema: str | None = None,
        gone_after_s: float | None = None,
    ) -> None:
        """Open the store and hand each part the collaborators it declares (store/parts.py).

        Every part is this one object, so each collaborator is `self`: the hand-over is where
        mypy checks that Store provides each Protocol a part calls through."""
        super().__init__(url, lease_seconds=lease_seconds, schema=schema, gone_after_s=gone_after_s)
        self.admission = self
        self.ownership = self
        self.job_rows = self
        self.job_blobs = self
        self.job_stops = self
        self.finisher = self
        self.task_waits = self
        self.costs = self
        self.credits = self
        self.fleet = self
        self.chunk_servers = self
        self.share_sync = self

    # A sync that lost a race on PostgreSQL (deadlock, serialization) is run again whole: its
    # transaction left nothing behind (store/base.py: retry_conflicts).
    sync = retry_conflicts(LeasingStore.sync)


__all__ = ["Principal", "Store", "SyncResult", "hash_secret", "new_secret"]
