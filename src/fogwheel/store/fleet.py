"""The fleet: nodes joining, their records, and the live view placement uses."""

from __future__ import annotations

import json
import logging
import secrets
import threading
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Connection, Float, bindparam, case, func, select, true, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError

from fogwheel.core import fleetview, owners, scheduler, trust
from fogwheel.core import quota as inflight
from fogwheel.core.tasks import (
    TaskState,
)
from fogwheel.protocol import NodeJoin
from fogwheel.store import parts
from fogwheel.store.base import (
    StoreBase,
    hash_secret,
    new_secret,
)
from fogwheel.store.schema import (
    attempts,
    blob_holders,
    coordinator_processes,
    jobs,
    nodes,
    principals,
    task_blobs,
    tasks,
)

log = logging.getLogger("fogwheel.store")

HEARTBEAT_FLUSH_S = 1.0  # idle syncs' last_seen are written in one statement this often
PROCESS_SEEN_S = 2.0  # a coordinator process stamps its row this often ...
PROCESS_GONE_S = 10.0  # ... and is counted among the live ones while its stamp is this recent
PROCESS_FORGET_S = 3600.0  # rows of processes gone this long are deleted
WORK_CACHE_S = 1.0  # how long "which jobs are in their last wave" and the live count are kept

# An idle sync reads these and nothing else (built once: a statement per request costs more
# Python than the query costs SQL).
_PULSE = select(
    nodes.c.state,
    nodes.c.slots_free,
    nodes.c.network,
    nodes.c.last_seen,
    nodes.c.quarantined,
    nodes.c.revoked,
).where(nodes.c.id == bindparam("node_id"))
_ANY_PENDING = select(tasks.c.id).where(tasks.c.state == TaskState.PENDING).limit(1)
_WAITING = tasks.alias("waiting")
# Jobs whose stragglers may get backups: backups on, not cancelled, open, nothing pending.
_LAST_WAVE = select(jobs.c.id).where(
    jobs.c.backups,
    ~jobs.c.cancelled,
    jobs.c.finished < jobs.c.total,
    ~select(_WAITING.c.id)
    .where(_WAITING.c.state == TaskState.PENDING, _WAITING.c.job_id == jobs.c.id)
    .exists(),
)


class Heartbeats:
    """The last_seen of idle syncs, kept in memory and written in one statement a second.

    An idle fleet would otherwise write one row per sync (issue 12: a write transaction per
    heartbeat is what an idle SQLite coordinator spends its time waiting for). Each batch is
    written with the earliest time it holds, so a stored last_seen is never later than the
    node's real last sync: a node is never kept alive by the batching, only seen up to
    HEARTBEAT_FLUSH_S late."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._due: dict[str, float] = {}
        self._since = float("-inf")
        self._flushed_at = float("-inf")

    def note(self, node_id: str, now: float) -> None:
        with self._lock:
            if not self._due:
                self._since = now
            self._due.setdefault(node_id, now)

    def take(self, now: float) -> tuple[float, list[str]] | None:
        """The batch to write now, as (its earliest time, node ids); None when not due."""
        with self._lock:
            if not self._due or 0 <= now - self._flushed_at < HEARTBEAT_FLUSH_S:
                return None
            batch = (min(self._since, now), sorted(self._due))
            self._due = {}
            self._flushed_at = now
            return batch


FLEET_STALE_MAX_S = 5.0  # an older snapshot of the fleet (or none) is reloaded inline
FLEET_PERIOD_MAX_S = 4.0  # the longest a snapshot is reused (below FLEET_STALE_MAX_S)


def fleet_period(live: int) -> float:
    """How long a snapshot of `live` nodes is reused: a second, and another for every 5,000
    nodes, at most FLEET_PERIOD_MAX_S (3 s at 10,000: reloading costs a few per cent of a
    core rather than a quarter)."""
    return min(FLEET_PERIOD_MAX_S, 1.0 + live / 5000)


class FleetStore(StoreBase):
    admission: parts.Admission  # join tokens (store/accounts.py)
    chunk_servers: parts.ChunkServers  # shares waiting for a node (store/cdn.py)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._heartbeats = Heartbeats()  # idle syncs' last_seen, written in batches
        # What this process last read, reused for a while (each reader says how long):
        self._fleet_summary_of: tuple[list[scheduler.NodeView], fleetview.FleetSummary] | None = (
            None
        )
        self._last_wave_at: tuple[float, frozenset[int]] | None = None
        # A live coordinator reloads the fleet's views on a thread of their own, so that no
        # sync waits for a pass over 10,000 rows inside its write transaction (the
        # coordinator sets this; a store driven by tests and the simulator reloads inline).
        self.fleet_in_background = False
        self._fleet_loading = threading.Lock()
        self._live_at: tuple[float, int] | None = None
        self._fleet_rows: dict[str, tuple[tuple[Any, ...], scheduler.NodeView]] = {}
        self._fleet_period = 1.0  # how long a snapshot of the fleet is reused (seconds)
        self._pending_at: tuple[float, bool] | None = None
        # coordinator processes sharing the database, as `process_seen` last counted them
        self.processes_live = 1

    # -- nodes ------------------------------------------------------------------------------

    def join_with_token(
        self, info: NodeJoin, now: float, *, network: str | None = None
    ) -> tuple[str, str] | owners.Refuse:
        """Join a device with the join token it presents: (node id, credential), or why the
        token refuses it (unknown, revoked, expired, used up, too fast; core/owners.py)."""
        with self.tx() as c:
            admitted = self.admission._admit_join(c, info.token, now)
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
                up_since=now,  # its first up interval (core/uptime.py)
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
            held: dict[str, int] = dict(
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
        if row["state"] == "up" and now - row["last_seen"] > self.gone_after_s:
            return "gone"
        state: str = row["state"]
        return state

    def _fleet_views(self, c: Connection, now: float) -> list[scheduler.NodeView]:
        """Live nodes, cached for a second: placement needs the fleet's shape, not its pulse.

        For longer when the fleet is large (`fleet_period`): a reload's cost grows with the
        fleet (80-260 ms at 10,000 nodes on a shared 2-core machine), and so does the time
        over which a fleet's shape changes by a given share.

        With several coordinator processes a node quarantined or revoked through another one
        still weighs in this view for at most that long; it gets no work meanwhile, since
        a lease reads the node's own row fresh (store/leasing.py)."""
        at, views = self._fleet
        if now - at < self._fleet_period:
            return views
        fresh_enough = 0 <= now - at < FLEET_STALE_MAX_S
        if self.fleet_in_background and fresh_enough:
            if self._fleet_loading.acquire(blocking=False):
                threading.Thread(
                    target=self._reload_fleet, args=(now,), name="fogwheel-fleet", daemon=True
                ).start()
            return views  # at most a second or two old, as the docstring allows
        return self._load_fleet(c, now)

    def _reload_fleet(self, now: float) -> None:
        """The background reload (`fleet_in_background`): one at a time, on its own read."""
        try:
            with self.read() as c:
                self._load_fleet(c, now)
        except Exception:  # the next sync starts another; a stale view serves meanwhile
            log.exception("reloading the fleet's views failed")
        finally:
            self._fleet_loading.release()

    def _load_fleet(self, c: Connection, now: float) -> list[scheduler.NodeView]:
        horizon = now - self.gone_after_s
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
        # A node whose row is as it was keeps its view (most of a fleet, between reloads):
        # a tuple compared costs a tenth of a view built.
        before = self._fleet_rows
        kept: dict[str, tuple[tuple[Any, ...], scheduler.NodeView]] = {}
        views = []
        for r in rows:
            t = tuple(r)
            old = before.get(r.id)
            if old is not None and old[0] == t:
                t, view = old  # the kept tuple too: nothing new survives for the collector
            else:
                view = scheduler.NodeView(
                    r.id,
                    inflight.scheduling_slots(r.quota, r.cores),
                    r.memory_mb,
                    max(0, r.cores - r.slots_free),
                    r.done,
                    r.lost,
                )
            kept[r.id] = (t, view)
            views.append(view)
        self._fleet_rows = kept
        self._fleet = (now, views)
        self._fleet_period = fleet_period(len(views))
        return views

    def _fleet_summary(self, c: Connection, now: float) -> fleetview.FleetSummary:
        """`_fleet_views` summarised for placement, computed once per snapshot of it: a lease
        then costs no pass over the fleet (core/fleetview.py)."""
        views = self._fleet_views(c, now)
        cached = self._fleet_summary_of
        if cached is not None and cached[0] is views:
            return cached[1]
        summary = fleetview.FleetSummary.of(views)
        self._fleet_summary_of = (views, summary)
        return summary

    # -- idle syncs: answered without a write transaction --------------------------------

    def _idle_sync(
        self, node_id: str, want: int, slots_free: int, now: float, network: str | bool | None
    ) -> bool:
        """Answer a sync that reports nothing, when it would change nothing but last_seen.

        True when the node is up with the same free slots and network (`network` False: not
        known), runs no chunk server, and no work waits that it could be leased (nothing
        pending, no job in its last wave with backups on); its last_seen then goes into the
        next batched write (`Heartbeats`) instead of a write transaction of its own. A node
        that reads as gone is written at once, as every other change is."""
        horizon = now - self.gone_after_s
        with self.read() as c:
            row = c.execute(_PULSE, {"node_id": node_id}).first()
            if row is None or row.state != "up" or row.slots_free != slots_free:
                return False
            if row.last_seen < horizon or (network is not False and row.network != network):
                return False
            if self.chunk_servers._serves(c, node_id):
                return False  # the CDN may have shares for it to fetch
            if want and not (row.quarantined or row.revoked) and self._work_waiting(c, now):
                return False
        self._heartbeats.note(node_id, now)
        self._flush_heartbeats(now)
        return True

    def _work_waiting(self, c: Connection, now: float) -> bool:
        """Whether a node that asks for work might get some: a pending task, or a job in its
        last wave (whose stragglers may get backups)."""
        if c.execute(_ANY_PENDING).first() is not None:
            return True
        return bool(self._last_wave(c, now))

    def _last_wave(self, c: Connection, now: float) -> frozenset[int]:
        """Jobs whose stragglers may be backed up, cached for WORK_CACHE_S.

        A job enters its last wave when its last pending task is leased: `_forget_last_wave`
        drops the cache when this process leases, so only another process's leasing is
        seen up to WORK_CACHE_S late (and a straggler needs BACKUP_MIN_S anyway)."""
        cached = self._last_wave_at
        if cached is not None and 0 <= now - cached[0] < WORK_CACHE_S:
            return cached[1]
        ids = frozenset(c.execute(_LAST_WAVE).scalars())
        self._last_wave_at = (now, ids)
        return ids

    def _forget_last_wave(self) -> None:
        self._last_wave_at = None

    def _flush_heartbeats(self, now: float) -> None:
        """Write the batched last_seen when due, in one statement per 500 nodes.

        On PostgreSQL rows another transaction holds are skipped (SKIP LOCKED: a heartbeat
        never waits on, or deadlocks with, a sync) and noted again for the next batch."""
        batch = self._heartbeats.take(now)
        if batch is None:
            return
        seen, ids = batch
        skipped: list[str] = []
        try:
            with self.tx() as c:
                for i in range(0, len(ids), 500):
                    part = ids[i : i + 500]
                    if self.is_sqlite:
                        c.execute(
                            update(nodes)
                            .where(nodes.c.id.in_(part), nodes.c.last_seen < seen)
                            .values(last_seen=seen)
                        )
                        continue
                    free = select(nodes.c.id).where(nodes.c.id.in_(part))
                    done = set(
                        c.execute(
                            update(nodes)
                            .where(
                                nodes.c.id.in_(
                                    free.with_for_update(skip_locked=True).scalar_subquery()
                                )
                            )
                            .values(last_seen=func.greatest(nodes.c.last_seen, seen))
                            .returning(nodes.c.id)
                        ).scalars()
                    )
                    skipped += [n for n in part if n not in done]
        except DBAPIError:
            log.warning("heartbeats of %d idle nodes not written; next batch", len(ids))
            skipped = ids
        for n in skipped:
            self._heartbeats.note(n, seen)

    def live_count(self, now: float) -> int:
        """Live nodes (up, seen within the gone horizon, not quarantined), cached for
        WORK_CACHE_S: the size of the fleet that sync pacing spreads (core/pacing.py)."""
        cached = self._live_at
        if cached is not None and 0 <= now - cached[0] < WORK_CACHE_S:
            return cached[1]
        horizon = now - self.gone_after_s
        with self.read() as c:
            n = c.execute(
                select(func.count())
                .select_from(nodes)
                .where(nodes.c.state == "up", nodes.c.last_seen >= horizon, ~nodes.c.quarantined)
            ).scalar_one()
            pending = c.execute(_ANY_PENDING).first() is not None
        self._pending_at = (now, pending)  # before _live_at: a reader that sees one sees both
        self._live_at = (now, int(n))
        return int(n)

    def process_seen(self, process_id: str, now: float) -> int:
        """Stamp this coordinator process as live and return how many are (itself included):
        the processes that stamped within PROCESS_GONE_S. Sync pacing multiplies its per-process
        budget by it (coordinator/syncpace.py), so that three processes on one database pace
        the fleet as three times one, not each as if it served the whole fleet alone. A
        process killed without a word drops out of the count PROCESS_GONE_S later."""
        with self.tx() as c:
            if not c.execute(
                update(coordinator_processes)
                .where(coordinator_processes.c.id == process_id)
                .values(seen_at=now)
            ).rowcount:
                c.execute(coordinator_processes.insert().values(id=process_id, seen_at=now))
            c.execute(
                coordinator_processes.delete().where(
                    coordinator_processes.c.seen_at < now - PROCESS_FORGET_S
                )
            )
            n = c.execute(
                select(func.count())
                .select_from(coordinator_processes)
                .where(coordinator_processes.c.seen_at >= now - PROCESS_GONE_S)
            ).scalar_one()
        self.processes_live = max(1, int(n))
        return self.processes_live

    def work_pending(self, now: float) -> bool:
        """Whether tasks are pending, as last seen by `live_count` (for pacing only)."""
        self.live_count(now)
        seen = self._pending_at
        return seen is not None and seen[1]

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


def _up_interval(leaving: bool) -> dict[str, Any]:
    """The up-interval columns of a (non-idle) sync's node update: core/uptime.after_sync in
    SQL, on the row's previous values (an UPDATE's SET reads the row as it was). Built once
    per kind (`UP_INTERVAL`): building the CASEs per sync cost ~0.25 ms of Python; its
    parameters are `up_params`."""
    n = nodes.c
    now, horizon = bindparam("up_now", type_=Float), bindparam("up_horizon", type_=Float)
    gone = n.last_seen < horizon
    closes = (n.state == "up") & n.up_since.is_not(None) & (true() if leaving else gone)
    ended = case((gone, n.last_seen), else_=now) if leaving else n.last_seen
    took = case((ended > n.up_since, ended - n.up_since), else_=0.0)
    restart = closes | n.up_since.is_(None) | (n.state != "up")
    return {
        "up_total_s": case((closes, n.up_total_s + took), else_=n.up_total_s),
        "up_count": case((closes, n.up_count + 1), else_=n.up_count),
        "up_since": None if leaving else case((restart, now), else_=n.up_since),
    }


UP_INTERVAL = {leaving: _up_interval(leaving) for leaving in (False, True)}  # by `leaving`


def up_params(now: float, horizon: float) -> dict[str, float]:
    """`UP_INTERVAL`'s parameters: the sync's time and the gone horizon (now less gone_after_s)."""
    return {"up_now": now, "up_horizon": horizon}


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
