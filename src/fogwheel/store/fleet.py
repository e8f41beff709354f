"""The fleet: nodes joining, their records, and the live view placement uses."""

from __future__ import annotations

import json
import secrets
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Connection, case, func, select
from sqlalchemy.dialects import postgresql, sqlite

from fogwheel.core import owners, scheduler, trust
from fogwheel.core import quota as inflight
from fogwheel.core.tasks import (
    TaskState,
)
from fogwheel.protocol import NodeJoin
from fogwheel.store.base import (
    NODE_GONE_AFTER_LEASES,
    StoreBase,
    hash_secret,
    new_secret,
)
from fogwheel.store.schema import (
    attempts,
    blob_holders,
    nodes,
    principals,
    task_blobs,
    tasks,
)


class FleetStore(StoreBase):
    # -- nodes ------------------------------------------------------------------------------

    def join_with_token(
        self, info: NodeJoin, now: float, *, network: str | None = None
    ) -> tuple[str, str] | owners.Refuse:
        """Join a device with the join token it presents: (node id, credential), or why the
        token refuses it (unknown, revoked, expired, used up, too fast; core/owners.py)."""
        with self.tx() as c:
            admitted = self._admit_join(c, info.token, now)  # type: ignore[attr-defined]
            if isinstance(admitted, owners.Refuse):
                return admitted
            token_id, owner_id = admitted
            return self._insert_node(c, info, now, owner_id, token_id, network)

    def join_node(
        self,
        info: NodeJoin,
        now: float,
        *,
        owner_id: str | None = None,
        token_id: str | None = None,
        network: str | None = None,
        quota: int = inflight.START,
    ) -> tuple[str, str]:
        """Add a device without checking any token (the join route checks it first)."""
        with self.tx() as c:
            return self._insert_node(c, info, now, owner_id, token_id, network, quota)

    def _insert_node(
        self,
        c: Connection,
        info: NodeJoin,
        now: float,
        owner_id: str | None,
        token_id: str | None,
        network: str | None,
        quota: int = inflight.START,
    ) -> tuple[str, str]:
        node_id = "n-" + secrets.token_hex(4)
        credential = new_secret("fwn")
        cores, memory_mb, disk_mb = owners.bounded_claim(info.cores, info.memory_mb, info.disk_mb)
        c.execute(
            nodes.insert().values(
                id=node_id,
                name=info.name,
                cores=cores,
                memory_mb=memory_mb,
                disk_mb=disk_mb,
                platform=info.platform,
                capabilities=json.dumps(sorted(set(info.capabilities))),
                joined_at=now,
                last_seen=now,
                state="up",
                slots_free=cores,
                done=0,
                lost=0,
                owner_id=owner_id,
                token_id=token_id,
                network=network,
                quota=quota,
                revoked=False,
            )
        )
        c.execute(
            principals.insert().values(
                secret_hash=hash_secret(credential),
                kind="node",
                id=node_id,
                name=info.name,
                created_at=now,
            )
        )
        return node_id, credential

    def list_nodes(self, now: float) -> list[dict[str, Any]]:
        with self.read() as c:
            held = dict(
                c.execute(
                    select(tasks.c.node_id, func.count())
                    .where(tasks.c.state == TaskState.LEASED)
                    .group_by(tasks.c.node_id)
                ).all()
            )
            rows = c.execute(select(nodes).order_by(nodes.c.joined_at)).mappings().all()
        out = []
        for r in rows:
            view = scheduler.NodeView(r["id"], r["cores"], r["memory_mb"], 0, r["done"], r["lost"])
            out.append(
                {
                    "id": r["id"],
                    "name": r["name"],
                    "state": self._node_state(r, now),
                    "cores": r["cores"],
                    "memory_mb": r["memory_mb"],
                    "disk_mb": r["disk_mb"],
                    "platform": r["platform"],
                    "capabilities": json.loads(r["capabilities"]),
                    "held": held.get(r["id"], 0),
                    "done": r["done"],
                    "lost": r["lost"],
                    "reliability": round(scheduler.reliability(view), 4),
                    "agreed": r["agreed"],
                    "disputed": r["disputed"],
                    "reputation": round(trust.reputation(_record(r)), 4),
                    "check_rate": round(trust.check_rate(_record(r)), 4),
                    "last_seen": r["last_seen"],
                    "owner_id": r["owner_id"] or owners.OPERATOR,
                    "quota": inflight.in_flight_limit(r["quota"], r["cores"]),
                    "quarantine_reason": r["quarantine_reason"],
                }
            )
        return out

    def _node_state(self, row: Any, now: float) -> str:
        if row["revoked"]:
            return "revoked"
        if row["quarantined"]:
            return "quarantined"
        if (
            row["state"] == "up"
            and now - row["last_seen"] > self.lease_seconds * NODE_GONE_AFTER_LEASES
        ):
            return "gone"
        return row["state"]

    def _fleet_views(self, c: Connection, now: float) -> list[scheduler.NodeView]:
        """Live nodes, cached for a second: placement needs the fleet's shape, not its pulse.

        With several coordinator processes a node quarantined or revoked through another one
        still weighs in this view for at most that second; it gets no work meanwhile, since
        a lease reads the node's own row fresh (store/leasing.py)."""
        at, views = self._fleet
        if now - at < 1.0:
            return views
        horizon = now - self.lease_seconds * NODE_GONE_AFTER_LEASES
        rows = c.execute(
            select(
                nodes.c.id,
                nodes.c.cores,
                nodes.c.memory_mb,
                nodes.c.slots_free,
                nodes.c.done,
                nodes.c.lost,
                nodes.c.quota,
            ).where(nodes.c.state == "up", nodes.c.last_seen >= horizon, ~nodes.c.quarantined)
        ).all()
        # A device weighs in fair shares with the slots its quota backs, not what it claims.
        views = [
            scheduler.NodeView(
                r.id,
                inflight.scheduling_slots(r.quota, r.cores),
                r.memory_mb,
                max(0, r.cores - r.slots_free),
                r.done,
                r.lost,
            )
            for r in rows
        ]
        self._fleet = (now, views)
        return views

    def _failure_fate(self, c: Connection, task_id: int, node_id: str) -> str:
        """What `node_id`'s crash or lost lease does to the task (core/owners.py)."""
        earlier = (
            c.execute(
                select(attempts.c.node_id).where(
                    attempts.c.task_id == task_id, attempts.c.outcome.in_(["lost", "failed"])
                )
            )
            .scalars()
            .all()
        )
        records = {
            r.id: r
            for r in c.execute(
                select(
                    nodes.c.id,
                    nodes.c.owner_id,
                    nodes.c.streak,
                    nodes.c.quarantined,
                ).where(nodes.c.id.in_({node_id, *earlier}))
            ).all()
        }

        def failure(n: str) -> owners.Failure:
            r = records.get(n)
            if r is None:
                return owners.Failure(owners.voter(n, None), proven=False)
            proven = r.streak >= trust.PROBATION and not r.quarantined
            return owners.Failure(owners.voter(n, r.owner_id), proven)

        return owners.failure_verdict(failure(node_id), [failure(n) for n in earlier])

    # -- what nodes hold in their blob caches -----------------------------------------------

    def hold_blobs(self, node_id: str, blobs: Sequence[tuple[str, int]]) -> None:
        """Note that `node_id` keeps these blobs (sha, size) in its cache: it fetched them."""
        with self.tx() as c:
            self._hold_blobs(c, node_id, blobs)

    def _hold_blobs(self, c: Connection, node_id: str, blobs: Sequence[tuple[str, int]]) -> None:
        rows = [{"sha": s, "node_id": node_id, "size": n} for s, n in dict(blobs).items()]
        if not rows:
            return
        insert = (sqlite.insert if self.is_sqlite else postgresql.insert)(blob_holders)
        c.execute(insert.on_conflict_do_nothing(index_elements=["sha", "node_id"]), rows)

    def _input_holders(self, c: Connection, task_ids: Iterable[int]) -> dict[int, dict[str, int]]:
        """For each task, the bytes of its input blobs that each node holds."""
        held: dict[int, dict[str, int]] = defaultdict(dict)
        ids = list(task_ids)
        if not ids:
            return held
        for tid, nid, size in c.execute(
            select(task_blobs.c.task_id, blob_holders.c.node_id, func.sum(blob_holders.c.size))
            .join(blob_holders, blob_holders.c.sha == task_blobs.c.sha)
            .where(task_blobs.c.task_id.in_(ids))
            .group_by(task_blobs.c.task_id, blob_holders.c.node_id)
        ).all():
            held[tid][nid] = int(size)
        return held


def devices(c: Connection, node_ids: Iterable[str]) -> dict[str, owners.Device]:
    """Owner and network of these nodes, as placement and verification compare them."""
    ids = list(set(node_ids))
    if not ids:
        return {}
    rows = c.execute(
        select(nodes.c.id, nodes.c.owner_id, nodes.c.network).where(nodes.c.id.in_(ids))
    ).all()
    return {r.id: owners.Device(r.id, r.owner_id, r.network) for r in rows}


def barred_groups(c: Connection, node_id: str, ran: dict[int, set[str]]) -> set[int]:
    """The task groups whose copies `node_id` may not take: a device of the same voter
    (owner), or on the same network, holds or ran one (core/owners.py)."""
    if not ran:
        return set()
    devs = devices(c, {node_id}.union(*ran.values()))
    me = devs.get(node_id, owners.Device(node_id))
    return {g for g, held in ran.items() if owners.barred(me, [devs[n] for n in held if n in devs])}


def quota_grown(n: int = 1) -> Any:
    """SQL for core/quota.grown(nodes.quota, n): doubled n times, up to inflight.MAX."""
    factor = 1 << min(max(0, n), 12)
    grown = nodes.c.quota * factor
    return case((grown >= inflight.MAX, inflight.MAX), (grown < 1, 1), else_=grown)


def quota_shrunk(n: int = 1) -> Any:
    """SQL for core/quota.shrunk(nodes.quota, n): halved n times, at least 1."""
    shrunk = nodes.c.quota // (1 << min(max(0, n), 12))
    return case((shrunk < 1, 1), else_=shrunk)


def _record(r: Any) -> trust.Record:
    return trust.Record(r["agreed"], r["disputed"], r["streak"], bool(r["quarantined"]))
