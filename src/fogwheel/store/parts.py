"""What each part of the store needs from the others, as small Protocols.

`Store` (store/sql.py) is put together from parts, one module each. A part never reaches
another through `self` directly: it declares the collaborators it needs as attributes typed by
these Protocols, and `Store.__init__` hands each one over, so mypy checks every call across
parts against a signature and checks, at the hand-over, that `Store` provides each Protocol.
A part's imports say which modules it builds on; this graph says which parts it calls::

    part (module)          calls                      through
    ---------------------  -------------------------  ------------------------------------
    FleetStore (fleet)     AccountsStore (accounts)   Admission: _admit_join
                           CdnStore (cdn)             ChunkServers: _serves
    JobsStore (jobs)       LeasingStore (leasing)     Finisher: _finish
                           WaitsStore (waits)         TaskWaits: _waits
                           LedgerStore (ledger)       Costs: job_costs
    LedgerStore (ledger)   AccountsStore (accounts)   Ownership: _owned_by
                           JobsStore (jobs)           JobStops: _stop_job
    VerifyStore (verify)   JobsStore (jobs)           JobRows: _job_row
                           LeasingStore (leasing)     Finisher: _finish
                           LedgerStore (ledger)       Credits: credit_verified_batch, _work
    CdnStore (cdn)         LedgerStore (ledger)       Credits: post
    LeasingStore (leasing) FleetStore (fleet)         Fleet: _idle_sync, _failure_fate, ...
                           JobsStore (jobs)           JobRows, JobBlobs: _own_blobs, ...
                           LedgerStore (ledger)       Costs: _stop_over_max_cost
                           CdnStore (cdn)             ShareSync: _cdn_sync
    AccountsStore, WaitsStore                         none

VerifyStore is the base of LeasingStore and CdnStore (it owns replicas and verdicts, which
both build on). The cycles (jobs <-> leasing, jobs <-> ledger, verify <-> leasing) are calls
inside one transaction, never imports: each module imports only this one to name the other.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import Connection

if TYPE_CHECKING:
    from fogwheel.core import fleetview, owners, waiting
    from fogwheel.core.ledger import Entry, Price
    from fogwheel.core.tasks import Task, TaskState
    from fogwheel.protocol import TaskReport


class Admission(Protocol):
    """Who lets a device in with a join token (store/accounts.py)."""

    def _admit_join(
        self, c: Connection, secret: str, now: float
    ) -> tuple[str, str] | owners.Refuse: ...


class Ownership(Protocol):
    """Which nodes an owner has (store/accounts.py)."""

    def _owned_by(self, owner_id: str) -> Any: ...


class JobRows(Protocol):
    """A job's immutable row, cached (store/jobs.py)."""

    def _job_row(self, c: Connection, job_id: int) -> dict[str, Any]: ...


class JobBlobs(Protocol):
    """Who owns and who uploaded which blob (store/jobs.py)."""

    def _own_blobs(
        self,
        c: Connection,
        customer_id: str,
        blobs: Sequence[tuple[str, int]],
        now: float | None = None,
    ) -> None: ...

    def _uploaded_by(self, c: Connection, node_id: str, shas: set[str]) -> set[str]: ...


class JobStops(Protocol):
    """Stopping a whole job, for a reason the customer reads (store/jobs.py)."""

    def _stop_job(self, c: Connection, job_id: int, reason: str, now: float) -> None: ...


class Finisher(Protocol):
    """Moving tasks to a terminal state, guarded by the state expected (store/leasing.py)."""

    def _finish(
        self,
        c: Connection,
        finished: Sequence[tuple[int, int, Task, TaskReport | None]],
        now: float,
        *,
        error_json: str | None = None,
        own_outputs: bool = True,
        expected: dict[int, TaskState] | None = None,
    ) -> set[int]: ...


class TaskWaits(Protocol):
    """Why pending tasks wait (store/waits.py, core/waiting.py)."""

    def _waits(
        self, c: Connection, head_ids: Sequence[int], now: float
    ) -> dict[int, waiting.Waiting | None]: ...


class Costs(Protocol):
    """What jobs cost so far, and stopping those over their limit (store/ledger.py)."""

    def job_costs(self, c: Connection, job_ids: Iterable[int]) -> dict[int, dict[str, int]]: ...

    def _stop_over_max_cost(self, c: Connection, now: float) -> list[int]: ...


class Credits(Protocol):
    """Paying nodes and charging customers in the verdict's transaction (store/ledger.py)."""

    def post(
        self, c: Connection, entries: Sequence[Entry], now: float, task_id: int | None = None
    ) -> None: ...

    def credit_verified_work(
        self,
        c: Connection,
        *,
        task_id: int,
        customer_id: str,
        runs: Sequence[tuple[str, float]],
        now: float,
        price: Price = ...,
    ) -> list[Entry]: ...

    def credit_verified_batch(
        self,
        c: Connection,
        items: Sequence[tuple[int, str, Sequence[tuple[str, float]]]],
        now: float,
        price: Price = ...,
    ) -> int: ...


class Fleet(Protocol):
    """Nodes' heartbeats, the live view placement reads, and the blobs nodes hold
    (store/fleet.py)."""

    def _idle_sync(
        self, node_id: str, want: int, slots_free: int, now: float, network: str | bool | None
    ) -> bool: ...

    def _fleet_summary(self, c: Connection, now: float) -> fleetview.FleetSummary: ...

    def _last_wave(self, c: Connection, now: float) -> frozenset[int]: ...

    def _forget_last_wave(self) -> None: ...

    def _failure_fate(self, c: Connection, task_id: int, node_id: str) -> str: ...

    def _hold_blobs(
        self, c: Connection, node_id: str, blobs: Sequence[tuple[str, int]]
    ) -> None: ...

    def _input_holders(
        self, c: Connection, task_ids: Iterable[int]
    ) -> dict[int, dict[str, int]]: ...


class ChunkServers(Protocol):
    """Whether the CDN has shares for a node to fetch (store/cdn.py)."""

    def _serves(self, c: Connection, node_id: str) -> bool: ...


class ShareSync(Protocol):
    """The CDN's half of a node's sync: shares stored, bad, refused, served (store/cdn.py)."""

    def _cdn_sync(
        self,
        c: Connection,
        node_id: str,
        *,
        serve_url: str | None,
        stored: Sequence[str],
        bad: Sequence[str],
        served: dict[str, int],
        now: float,
        refused: Sequence[str] = (),
    ) -> tuple[list[dict[str, Any]], list[str]]: ...
