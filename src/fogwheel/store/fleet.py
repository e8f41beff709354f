"""The fleet: nodes joining, their records, and the live view placement uses."""

from __future__ import annotations

import json
import secrets
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Connection, func, select
from sqlalchemy.dialects import postgresql, sqlite

from fogwheel.core import scheduler, trust
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
    blob_holders,
    nodes,
    principals,
    task_blobs,
    tasks,
)


class FleetStore(StoreBase):
    # -- nodes ------------------------------------------------------------------------------

    def join_node(self, info: NodeJoin, now: float) -> tuple[str, str]:
        node_id = "n-" + secrets.token_hex(4)
        credential = new_secret("fwn")
        with self.tx() as c:
            c.execute(
                nodes.insert().values(
                    id=node_id,
                    name=info.name,
                    cores=info.cores,
                    memory_mb=info.memory_mb,
                    disk_mb=info.disk_mb,
                    platform=info.platform,
                    capabilities=json.dumps(sorted(set(info.capabilities))),
                    joined_at=now,
                    last_seen=now,
                    state="up",
                    slots_free=info.cores,
                    done=0,
                    lost=0,
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
                    "quarantine_reason": r["quarantine_reason"],
                }
            )
        return out

    def _node_state(self, row: Any, now: float) -> str:
        if row["quarantined"]:
            return "quarantined"
        if (
            row["state"] == "up"
            and now - row["last_seen"] > self.lease_seconds * NODE_GONE_AFTER_LEASES
        ):
            return "gone"
        return row["state"]

    def _fleet_views(self, c: Connection, now: float) -> list[scheduler.NodeView]:
        """Live nodes, cached for a second: placement needs the fleet's shape, not its pulse."""
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
            ).where(nodes.c.state == "up", nodes.c.last_seen >= horizon, ~nodes.c.quarantined)
        ).all()
        views = [
            scheduler.NodeView(r.id, r.cores, r.memory_mb, r.cores - r.slots_free, r.done, r.lost)
            for r in rows
        ]
        self._fleet = (now, views)
        return views

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


def _record(r: Any) -> trust.Record:
    return trust.Record(r["agreed"], r["disputed"], r["streak"], bool(r["quarantined"]))
