"""The fleet-wide figures /metrics reads at scrape time: a few grouped queries, nothing per row.

Every figure here comes from the database, so every coordinator process on one PostgreSQL
reports the same values (docs/metrics.md says which figures are per process instead). Each is
one aggregate over one table: the node states and their disputes from `nodes` (one row per
device: 10,000 rows are a few milliseconds), tasks by state from `tasks` (the count of all rows
by state reads the state index alone; copies are the few rows with `replica_of` set, found by
its index), the ledger's sums by kind of account and side (incrementally: `LedgerSums`), and CDN
traffic by kind. The caller
caches the answer for a few seconds (coordinator/metrics.py), so scrapers never multiply it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, case, func, select

from fogwheel.store.base import StoreBase
from fogwheel.store.schema import cdn_traffic, ledger, nodes, tasks

NODE_STATES = ("up", "draining", "gone", "quarantined", "revoked")
TASK_STATES = ("pending", "leased", "done", "failed", "cancelled")


@dataclass(frozen=True)
class FleetFigures:
    """What the database says now, summed over the whole fleet."""

    tasks: dict[str, int] = field(default_factory=dict)  # customers' tasks (replica_of NULL)
    copies: dict[str, int] = field(default_factory=dict)  # replicas and backups of them
    nodes: dict[str, int] = field(default_factory=dict)  # devices by state (NODE_STATES)
    cores: dict[str, int] = field(default_factory=dict)  # their cores, by the same states
    quarantined: int = 0  # devices quarantined now, revoked ones included
    disputed: int = 0  # results that disagreed with the agreed one, over all devices
    agreed: int = 0  # results that agreed (or went unchecked on a trusted device)
    # micro-credits, by (account kind, side): ("customer", "debit") is what customers were
    # charged, ("node", "credit") what devices (their owners) were paid
    ledger: dict[tuple[str, str], int] = field(default_factory=dict)
    # bytes, by cdn_traffic kind: served (receipted by clients), repair, fetch (delivered)
    cdn_bytes: dict[str, int] = field(default_factory=dict)
    cdn_from_peers: int = 0  # share bytes fetching clients got from devices ...
    cdn_from_origin: int = 0  # ... and from the coordinator


def fleet_figures(store: StoreBase, now: float, books: LedgerSums, at: float) -> FleetFigures:
    """Read every fleet-wide figure in one read transaction; `books` keeps the ledger's
    sums between reads, `at` is a monotonic clock reading for it."""
    with store.read() as c:
        tasks_by_state, copies = _tasks(c)
        node_counts, cores, quarantined, disputed, agreed = _nodes(c, now - store.gone_after_s)
        ledger_sums = books.read(c, at)
        cdn_bytes, peers, origin = _cdn(c)
    return FleetFigures(
        tasks={s: tasks_by_state.get(s, 0) - copies.get(s, 0) for s in _states(tasks_by_state)},
        copies={s: copies.get(s, 0) for s in _states(tasks_by_state)},
        nodes=node_counts,
        cores=cores,
        quarantined=quarantined,
        disputed=disputed,
        agreed=agreed,
        ledger=ledger_sums,
        cdn_bytes=cdn_bytes,
        cdn_from_peers=peers,
        cdn_from_origin=origin,
    )


def _states(found: dict[str, int]) -> list[str]:
    """The usual task states first (so a series exists at 0), then any other the rows hold."""
    return [*TASK_STATES, *sorted(set(found) - set(TASK_STATES))]


def _tasks(c: Connection) -> tuple[dict[str, int], dict[str, int]]:
    every: dict[Any, Any] = dict(
        c.execute(select(tasks.c.state, func.count()).group_by(tasks.c.state)).all()
    )
    copies: dict[Any, Any] = dict(
        c.execute(
            select(tasks.c.state, func.count())
            .where(tasks.c.replica_of.is_not(None))
            .group_by(tasks.c.state)
        ).all()
    )
    return {str(k): int(v) for k, v in every.items()}, {str(k): int(v) for k, v in copies.items()}


def _nodes(c: Connection, horizon: float) -> tuple[dict[str, int], dict[str, int], int, int, int]:
    """Devices and cores by the state `fogwheel nodes` shows (store/fleet.py `_node_state`:
    revoked, then quarantined, then up-but-silent is gone, else the row's state)."""
    state = case(
        (nodes.c.revoked, "revoked"),
        (nodes.c.quarantined, "quarantined"),
        ((nodes.c.state == "up") & (nodes.c.last_seen < horizon), "gone"),
        else_=nodes.c.state,
    )
    rows = c.execute(
        select(
            state,
            func.count(),
            func.coalesce(func.sum(nodes.c.cores), 0),
            func.coalesce(func.sum(case((nodes.c.quarantined, 1), else_=0)), 0),
            func.coalesce(func.sum(nodes.c.disputed), 0),
            func.coalesce(func.sum(nodes.c.agreed), 0),
        ).group_by(state)
    ).all()
    counts = dict.fromkeys(NODE_STATES, 0)
    cores = dict.fromkeys(NODE_STATES, 0)
    quarantined = disputed = agreed = 0
    for s, n, k, q, d, a in rows:
        counts[str(s)] = counts.get(str(s), 0) + int(n)
        cores[str(s)] = cores.get(str(s), 0) + int(k)
        quarantined += int(q)
        disputed += int(d)
        agreed += int(a)
    return counts, cores, quarantined, disputed, agreed


class LedgerSums:
    """The ledger's sums by (account kind, side), read incrementally: the ledger is
    append-only (store/schema.py triggers), so a row once counted never changes.

    Rows up to `settled_id` are summed once into `settled`; each read sums only the rows
    after it (a range of the primary key) and then moves `settled_id` up to the highest id
    seen at least `settle_s` ago. On SQLite a row's id is given inside the one writer's
    transaction, so ids commit in order and `settle_s` is 0; on PostgreSQL ids come from a
    sequence and a transaction may commit after one that took a higher id, so an id is
    settled only once no transaction that took a lower one can still be open: after
    `PG_SETTLE_S` (the store's transactions take milliseconds). Until then a coordinator's
    first reads sum the whole ledger (at most one read per scrape period)."""

    PG_SETTLE_S = 60.0

    def __init__(self, settle_s: float) -> None:
        self.settle_s = settle_s
        self.settled_id = 0
        self.settled = _zero_books()
        self._seen: deque[tuple[float, int]] = deque()  # (when, highest id then)

    def read(self, c: Connection, at: float) -> dict[tuple[str, str], int]:
        """The sums now; `at` is a monotonic clock reading (the caller's)."""
        top = int(c.execute(select(func.max(ledger.c.id))).scalar() or 0)
        self._seen.append((at, top))
        target = self.settled_id
        while self._seen and at - self._seen[0][0] >= self.settle_s:
            target = max(target, self._seen.popleft()[1])
        if target > self.settled_id:
            for key, n in _ledger(c, self.settled_id, target).items():
                self.settled[key] += n
            self.settled_id = target
        live = _ledger(c, self.settled_id, None)
        return {key: n + live[key] for key, n in self.settled.items()}


def _zero_books() -> dict[tuple[str, str], int]:
    return {(k, s): 0 for k in ("customer", "node", "platform") for s in ("debit", "credit")}


def _ledger(c: Connection, after: int, upto: int | None) -> dict[tuple[str, str], int]:
    kind = case(
        (ledger.c.account.like("customer:%"), "customer"),
        (ledger.c.account.like("node:%"), "node"),
        else_="platform",
    )
    side = case((ledger.c.amount < 0, "debit"), else_="credit")
    q = select(kind, side, func.sum(ledger.c.amount)).where(ledger.c.id > after)
    if upto is not None:
        q = q.where(ledger.c.id <= upto)
    out = _zero_books()
    for k, s, total in c.execute(q.group_by(kind, side)).all():
        out[(str(k), str(s))] = abs(int(total or 0))
    return out


def _cdn(c: Connection) -> tuple[dict[str, int], int, int]:
    rows = c.execute(
        select(
            cdn_traffic.c.kind,
            func.coalesce(func.sum(cdn_traffic.c.bytes), 0),
            func.coalesce(func.sum(cdn_traffic.c.from_peers), 0),
            func.coalesce(func.sum(cdn_traffic.c.from_origin), 0),
        ).group_by(cdn_traffic.c.kind)
    ).all()
    by_kind = dict.fromkeys(("served", "repair", "fetch"), 0)
    peers = origin = 0
    for kind, total, from_peers, from_origin in rows:
        by_kind[str(kind)] = int(total)
        if kind == "fetch":
            peers, origin = int(from_peers), int(from_origin)
    return by_kind, peers, origin
