"""The CDN in the store: objects, their shares, who holds which share, traffic, repair.

A published object is a manifest (cdn/codec.py) whose segments are encrypted and erasure-coded
k-of-n; the customer uploads every share to the coordinator's blob store (the origin) and the
store assigns each share to a node. Nodes learn of their assignments in their sync round trip,
fetch the share from the origin, and confirm it (`stored`); they report shares that failed
their own hash check (`bad`) and the bytes they served (`served`: advisory, kept as a metric,
never paid). Bytes are paid against receipts: a fetching client signs one for every share it
received and verified (cdn/receipts.py) and hands them in with its fetch report; a node is paid
a share's size once a plan. A customer's "bad share" report is an accusation, not evidence: it
only lowers the node in that customer's own plans until the coordinator has checked the share
itself (cdn/audit.py), and only bytes the coordinator saw, or the node's own report, quarantine
a node — with the reason kept on it. The repair pass re-assigns shares whose holders are gone or
bad, preferring nodes that hold no other share of the same segment, and counts the bytes as
repair traffic. The AES key stays in the coordinator: only the publisher's fetch plan carries it.
"""

from __future__ import annotations

import json
import random
import secrets
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Connection, delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite

from fogwheel.core import ledger as books
from fogwheel.core import spread as spreads
from fogwheel.core.reach import holder_rank, reach_of
from fogwheel.store.schema import (
    cdn_holders,
    cdn_objects,
    cdn_receipts,
    cdn_shares,
    cdn_traffic,
    nodes,
    principals,
)
from fogwheel.store.verify import VerifyStore

HOT_FETCHES = 20  # an object fetched this often gets a second holder for every share
PLACE_BATCH = 64  # shares a node is told to fetch in one round trip
LOAD_WINDOW_S = 60.0  # recent bytes served that rank a node as loaded
DOUBT_S = 3600.0  # how long a customer's accusation ranks the node last in its own plans
DOUBTS_PER_CUSTOMER = 256  # accused nodes remembered for one customer (the newest)
DOUBTING_CUSTOMERS = 1000  # customers whose accusations are remembered (the latest)

_rng = random.Random()
SERVING_TTL_S = 10.0  # how long a process trusts what it read of a node's chunk server


class CdnStore(VerifyStore):
    # self.credits (declared on VerifyStore) charges for bytes served (store/ledger.py)
    _serving: dict[str, tuple[bool, float]]  # node -> (runs a chunk server, when asked)
    _doubts: dict[str, dict[str, float]]  # customer -> node -> accused until (see cdn_doubt)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._serving = {}
        self._doubts = {}
        self._doubts_lock = threading.Lock()

    # -- publishing ---------------------------------------------------------------------------

    def cdn_create(
        self,
        customer_id: str,
        manifest: dict[str, Any],
        key_hex: str,
        shares: Sequence[tuple[str, int, int, int]],  # (sha, segment, idx, size)
        now: float,
        content_type: str | None = None,
    ) -> dict[str, Any]:
        """Record an object and place its shares on live nodes; returns its summary."""
        with self.tx() as c:
            c.execute(
                cdn_objects.insert().values(
                    id=manifest["content_id"],
                    customer_id=customer_id,
                    name=manifest["name"],
                    size=manifest["size"],
                    k=manifest["k"],
                    n=manifest["n"],
                    key=key_hex,
                    manifest=json.dumps(manifest),
                    created_at=now,
                    fetches=0,
                    content_type=content_type,
                )
            )
            c.execute(
                cdn_shares.insert(),
                [
                    {
                        "sha": sha,
                        "content_id": manifest["content_id"],
                        "segment": seg,
                        "idx": idx,
                        "size": size,
                    }
                    for sha, seg, idx, size in shares
                ],
            )
            placed = self._place(c, now, [manifest["content_id"]], repair=False)
            devices = len(self._cdn_live(c, now))
        return {
            "content_id": manifest["content_id"],
            "shares": len(shares),
            "placed": placed,
            "devices": devices,
            "warning": spreads.too_few_devices(devices, manifest["k"], manifest["n"]),
        }

    def cdn_exists(self, content_id: str) -> bool:
        with self.read() as c:
            return (
                c.execute(select(cdn_objects.c.id).where(cdn_objects.c.id == content_id)).first()
                is not None
            )

    def cdn_object(self, content_id: str) -> dict[str, Any] | None:
        """What the content route serves an object by: owner, name, size, publish time, media
        type (no key, no manifest) and whether its owner still holds a key (`owner_active`:
        a revoked customer's signed URLs stop); None when there is no such object."""
        cols = cdn_objects.c
        keyed = (
            select(principals.c.id)
            .where(principals.c.kind == "customer", principals.c.id == cols.customer_id)
            .exists()
        )
        with self.read() as c:
            row = (
                c.execute(
                    select(
                        cols.customer_id,
                        cols.name,
                        cols.size,
                        cols.created_at,
                        cols.content_type,
                        keyed.label("owner_active"),
                    ).where(cols.id == content_id)
                )
                .mappings()
                .first()
            )
        return dict(row) if row is not None else None

    # -- placement ----------------------------------------------------------------------------

    def _cdn_live(self, c: Connection, now: float) -> dict[str, dict[str, Any]]:
        horizon = now - self.gone_after_s
        rows = c.execute(
            select(nodes.c.id, nodes.c.disk_mb, nodes.c.serve_url, nodes.c.uplink_bps).where(
                nodes.c.state == "up",
                nodes.c.last_seen >= horizon,
                ~nodes.c.quarantined,
                nodes.c.serve_url.is_not(None),
            )
        ).all()
        return {
            r.id: {
                "disk_mb": r.disk_mb,
                "url": r.serve_url,
                "uplink": r.uplink_bps or 0.0,
                "network": _network(r.serve_url),
            }
            for r in rows
        }

    def _place(
        self, c: Connection, now: float, content_ids: Iterable[str] | None, *, repair: bool
    ) -> int:
        """Give every share of these objects (all objects: None) the holders it lacks on live
        nodes: one, or two for a hot object; a node takes at most one share of a segment while
        others are free of it. On a fog with fewer live devices than n the rest of a segment's
        shares still go to devices that hold some already (peers can serve them; `cdn_stats`
        reports such segments degraded), and a repair pass moves them to devices that come
        along later (`_spread_out`). Returns the number of assignments made."""
        live = self._cdn_live(c, now)
        if not live:
            return 0
        q = select(
            cdn_shares.c.sha,
            cdn_shares.c.content_id,
            cdn_shares.c.segment,
            cdn_shares.c.idx,
            cdn_shares.c.size,
            cdn_objects.c.fetches,
        ).join(cdn_objects, cdn_objects.c.id == cdn_shares.c.content_id)
        ids = list(content_ids) if content_ids is not None else None
        if ids is not None:
            q = q.where(cdn_shares.c.content_id.in_(ids))
        shares = c.execute(
            q.order_by(cdn_shares.c.content_id, cdn_shares.c.segment, cdn_shares.c.idx)
        ).all()
        if not shares:
            return 0
        holders: dict[str, set[str]] = defaultdict(set)
        stored: set[tuple[str, str]] = set()  # (sha, node) confirmed
        bad: dict[str, set[str]] = defaultdict(set)
        hq = select(cdn_holders.c.sha, cdn_holders.c.node_id, cdn_holders.c.state)
        if ids is not None:
            hq = hq.join(cdn_shares, cdn_shares.c.sha == cdn_holders.c.sha).where(
                cdn_shares.c.content_id.in_(ids)
            )
        for sha, node_id, state in c.execute(hq).all():
            if state in ("assigned", "stored"):
                holders[sha].add(node_id)
                if state == "stored":
                    stored.add((sha, node_id))
            else:
                bad[sha].add(node_id)
        # how many shares each node holds, for spreading
        load: dict[str, int] = defaultdict(int)
        for node_id, n in c.execute(
            select(cdn_holders.c.node_id, func.count())
            .where(cdn_holders.c.state.in_(["assigned", "stored"]))
            .group_by(cdn_holders.c.node_id)
        ).all():
            load[node_id] = n
        by_segment: dict[tuple[str, int], set[str]] = defaultdict(set)
        # how many of a segment's shares each live node holds: a node takes a second share of
        # a segment only when every node has one, a third only when every node has two, …
        per_segment: dict[tuple[str, int], dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for s in shares:
            on_live = holders[s.sha] & live.keys()
            by_segment[(s.content_id, s.segment)] |= on_live
            for n in on_live:
                per_segment[(s.content_id, s.segment)][n] += 1
        fastest = max((v["uplink"] for v in live.values()), default=0.0) or 1.0
        new_rows = []
        for s in shares:
            want = 2 if s.fetches >= HOT_FETCHES else 1
            have = holders[s.sha] & live.keys()
            need = want - len(have)
            if need <= 0:
                continue
            seg_nodes = by_segment[(s.content_id, s.segment)]
            seg_count = per_segment[(s.content_id, s.segment)]
            seg_networks = {live[n]["network"] for n in seg_nodes if n in live}
            candidates = [n for n in live if n not in holders[s.sha] and n not in bad[s.sha]]
            # nodes without a share of this segment first, then those on another network;
            # then the least loaded for their disk, with a bonus for a measured fast uplink
            _rng.shuffle(candidates)
            candidates.sort(
                key=lambda n: (
                    seg_count[n],
                    live[n]["network"] in seg_networks,
                    load[n] / max(1, live[n]["disk_mb"]) / (1.0 + live[n]["uplink"] / fastest),
                )
            )
            for n in candidates[:need]:
                new_rows.append(
                    {
                        "sha": s.sha,
                        "node_id": n,
                        "state": "assigned",
                        "assigned_at": now,
                        "repair": repair,
                    }
                )
                holders[s.sha].add(n)
                seg_nodes.add(n)
                seg_count[n] += 1
                load[n] += 1
        if repair:
            new_rows += self._spread_out(c, now, shares, live, holders, stored, bad, load)
        if new_rows:
            # a node that once held this share (and dropped it) may take it again
            for r in new_rows:
                c.execute(
                    delete(cdn_holders).where(
                        cdn_holders.c.sha == r["sha"], cdn_holders.c.node_id == r["node_id"]
                    )
                )
            c.execute(cdn_holders.insert(), new_rows)
        return len(new_rows)

    def _spread_out(
        self,
        c: Connection,
        now: float,
        shares: Sequence[Any],
        live: dict[str, dict[str, Any]],
        holders: dict[str, set[str]],
        stored: set[tuple[str, str]],
        bad: dict[str, set[str]],
        load: dict[str, int],
    ) -> list[dict[str, Any]]:
        """Restore distinctness, one repair pass at a time: while a live device holds two or
        more shares of a segment more than another live device, one of its shares is copied
        to the emptier one; once such a copy is stored, the holder the share no longer needs
        (the most crowded) is dropped, never below the holders the share wants. Returns the
        new assignments (the caller inserts them)."""
        by_seg: dict[tuple[str, int], list[Any]] = defaultdict(list)
        for s in shares:
            by_seg[(s.content_id, s.segment)].append(s)
        new_rows: list[dict[str, Any]] = []
        drops: list[tuple[str, str]] = []
        for group in by_seg.values():
            on = {s.sha: holders[s.sha] & live.keys() for s in group}
            count: dict[str, int] = dict.fromkeys(live, 0)
            for devs in on.values():
                for n in devs:
                    count[n] += 1
            want = {s.sha: 2 if s.fetches >= HOT_FETCHES else 1 for s in group}
            moving = set()
            # a share with more holders than it wants: drop the most crowded once another is
            # stored; until then it is in motion, counted where it is going
            for sha, devs in on.items():
                while len(devs) > want[sha]:
                    crowded = max(devs, key=lambda n: (count[n], n))
                    if not any((sha, n) in stored for n in devs - {crowded}):
                        moving.add(sha)
                        count[crowded] -= 1  # as good as gone
                        break
                    drops.append((sha, crowded))
                    devs.discard(crowded)
                    holders[sha].discard(crowded)
                    count[crowded] -= 1
            # then copy shares from the fullest device to the emptiest while that helps
            while True:
                full = max(count, key=lambda n: (count[n], n))
                empty = min(
                    count, key=lambda n: (count[n], load[n] / max(1, live[n]["disk_mb"]), n)
                )
                if count[full] - count[empty] < 2:
                    break
                sha = next(
                    (
                        s.sha
                        for s in group
                        if s.sha not in moving
                        and full in on[s.sha]
                        and empty not in holders[s.sha]
                        and empty not in bad[s.sha]
                    ),
                    None,
                )
                if sha is None:
                    break
                moving.add(sha)
                holders[sha].add(empty)
                count[full] -= 1
                count[empty] += 1
                load[empty] += 1
                new_rows.append(
                    {
                        "sha": sha,
                        "node_id": empty,
                        "state": "assigned",
                        "assigned_at": now,
                        "repair": True,
                    }
                )
        for sha, node_id in drops:
            c.execute(
                update(cdn_holders)
                .where(cdn_holders.c.sha == sha, cdn_holders.c.node_id == node_id)
                .values(state="dropped")
            )
        return new_rows

    def cdn_repair(self, now: float) -> int:
        """Re-place shares whose holders are gone, bad or missing; returns assignments made.
        One coordinator at a time repairs (`duty`); the others place nothing this round."""
        with self.duty("cdn repair") as c:
            return 0 if c is None else self._place(c, now, None, repair=True)

    # -- the node's side, in its sync ---------------------------------------------------------

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
    ) -> tuple[list[dict[str, Any]], list[str]]:
        """Apply a node's CDN report; answer the shares it should fetch and those to drop."""
        if serve_url is not None:
            c.execute(update(nodes).where(nodes.c.id == node_id).values(serve_url=serve_url))
            self._serving[node_id] = (True, time.monotonic())
        elif not (stored or bad or served or refused) and not self._serves(c, node_id):
            return [], []  # a node without a chunk server: nothing to tell it, no query
        if stored:
            rows = c.execute(
                select(
                    cdn_holders.c.sha,
                    cdn_holders.c.repair,
                    cdn_shares.c.size,
                    cdn_shares.c.content_id,
                )
                .join(cdn_shares, cdn_shares.c.sha == cdn_holders.c.sha)
                .where(
                    cdn_holders.c.node_id == node_id,
                    cdn_holders.c.sha.in_(list(stored)),
                    cdn_holders.c.state == "assigned",
                )
            ).all()
            if rows:
                c.execute(
                    update(cdn_holders)
                    .where(
                        cdn_holders.c.node_id == node_id,
                        cdn_holders.c.sha.in_([r.sha for r in rows]),
                    )
                    .values(state="stored")
                )
                repaired = [r for r in rows if r.repair]
                if repaired:
                    c.execute(
                        cdn_traffic.insert(),
                        [
                            {
                                "kind": "repair",
                                "content_id": r.content_id,
                                "node_id": node_id,
                                "bytes": r.size,
                                "from_peers": 0,
                                "from_origin": r.size,
                                "seconds": 0.0,
                                "at": now,
                            }
                            for r in repaired
                        ],
                    )
        if bad:
            self._cdn_bad(
                c,
                node_id,
                bad,
                now,
                reason=f"it reported {len(bad)} CDN share(s) failing its own hash check "
                f"(share {bad[0][:12]}…): a disk that loses or changes bytes",
            )
        if refused:  # over its quota: no blame, the shares go elsewhere
            c.execute(
                update(cdn_holders)
                .where(cdn_holders.c.node_id == node_id, cdn_holders.c.sha.in_(list(refused)))
                .values(state="refused")
            )
            self._place(c, now, None, repair=True)
        if served:
            self._cdn_claimed(c, node_id, served, now)
        # what it should fetch now, and what it should delete
        todo = c.execute(
            select(cdn_holders.c.sha, cdn_shares.c.size, cdn_shares.c.content_id)
            .join(cdn_shares, cdn_shares.c.sha == cdn_holders.c.sha)
            .where(cdn_holders.c.node_id == node_id, cdn_holders.c.state == "assigned")
            .limit(PLACE_BATCH)
        ).all()
        drops = list(
            c.execute(
                select(cdn_holders.c.sha).where(
                    cdn_holders.c.node_id == node_id, cdn_holders.c.state == "dropped"
                )
            ).scalars()
        )
        if drops:
            c.execute(
                delete(cdn_holders).where(
                    cdn_holders.c.node_id == node_id, cdn_holders.c.state == "dropped"
                )
            )
        return [{"sha": r.sha, "size": r.size, "content_id": r.content_id} for r in todo], drops

    def _serves(self, c: Connection, node_id: str) -> bool:
        """Whether the node runs a chunk server, cached for SERVING_TTL_S: with several
        coordinator processes the node may announce (or lose) its server through another one,
        and this process must learn it within that bound, not never."""
        known = self._serving.get(node_id)
        now = time.monotonic()
        if known is None or not 0 <= now - known[1] < SERVING_TTL_S:
            url = c.execute(select(nodes.c.serve_url).where(nodes.c.id == node_id)).scalar()
            known = self._serving[node_id] = (url is not None, now)
        return known[0]

    def _cdn_bad(
        self, c: Connection, node_id: str, shas: Sequence[str], now: float, *, reason: str
    ) -> None:
        """Shares proven bad on `node_id` (by its own report, or by bytes the coordinator itself
        saw): never served from there again, placed elsewhere, and held against the node's
        reputation (one is enough to quarantine it, for `reason`: a device whose disk lies is
        discarded). Never called on a customer's word alone."""
        hit = c.execute(
            update(cdn_holders)
            .where(cdn_holders.c.node_id == node_id, cdn_holders.c.sha.in_(list(shas)))
            .values(state="bad")
            .returning(cdn_holders.c.sha)
        ).all()
        if not hit:
            return
        was_quarantined = self._trust_record(c, node_id).quarantined
        after = self._record_verdict(c, node_id, agreed=False, reason=reason)
        if after.quarantined and not was_quarantined:
            # its other shares are no longer counted on: drop them and place them elsewhere
            c.execute(
                update(cdn_holders)
                .where(cdn_holders.c.node_id == node_id, cdn_holders.c.state != "bad")
                .values(state="dropped")
            )
        self._place(c, now, None, repair=True)

    def _cdn_claimed(self, c: Connection, node_id: str, served: dict[str, int], now: float) -> None:
        """A node's own count of bytes it served: advisory, kept as a metric, paid never (the
        receipts its clients signed are what pays, see `cdn_record_fetch`)."""
        known = set(
            c.execute(select(cdn_objects.c.id).where(cdn_objects.c.id.in_(list(served)))).scalars()
        )
        rows = [
            {
                "kind": "claimed",
                "content_id": content_id,
                "node_id": node_id,
                "bytes": n,
                "from_peers": 0,
                "from_origin": 0,
                "seconds": 0.0,
                "at": now,
            }
            for content_id, n in served.items()
            if content_id in known and n > 0
        ]
        if rows:
            c.execute(cdn_traffic.insert(), rows)

    def _pay_receipts(
        self,
        c: Connection,
        customer_id: str,
        content_id: str,
        receipts: Sequence[tuple[str, str, str]],
        now: float,
    ) -> int:
        """Pay the nodes for receipted shares `(plan, node_id, sha)` (their signatures checked
        by the caller): a share of this object, held by that node, at most its size, each
        receipt once a plan. Returns the bytes paid for."""
        if not receipts:
            return 0
        sizes = dict(
            c.execute(
                select(cdn_shares.c.sha, cdn_shares.c.size).where(
                    cdn_shares.c.content_id == content_id,
                    cdn_shares.c.sha.in_(list({sha for _, _, sha in receipts})),
                )
            ).all()
        )
        held = set(
            c.execute(
                select(cdn_holders.c.sha, cdn_holders.c.node_id).where(
                    cdn_holders.c.sha.in_(list(sizes))
                )
            ).all()
        )
        insert = (sqlite.insert if self.is_sqlite else postgresql.insert)(cdn_receipts)
        paid: dict[str, int] = defaultdict(int)
        for plan, node_id, sha in dict.fromkeys(receipts):
            if sha not in sizes or (sha, node_id) not in held:
                continue  # not a share of this object on that node: nothing to pay
            row = {"plan": plan, "sha": sha, "node_id": node_id, "bytes": sizes[sha], "at": now}
            new = c.execute(
                insert.values(**row)
                .on_conflict_do_nothing(index_elements=["plan", "sha"])
                .returning(cdn_receipts.c.sha)
            ).first()
            if new is not None:
                paid[node_id] += sizes[sha]
        if not paid:
            return 0
        c.execute(
            cdn_traffic.insert(),
            [
                {
                    "kind": "served",
                    "content_id": content_id,
                    "node_id": node_id,
                    "bytes": n,
                    "from_peers": n,
                    "from_origin": 0,
                    "seconds": 0.0,
                    "at": now,
                }
                for node_id, n in paid.items()
            ],
        )
        entries = books.charge_for_bytes(
            f"cdn-{content_id}-{secrets.token_hex(6)}",  # one a fetch report
            customer_id,
            sorted(paid.items()),
            memo=f"cdn {content_id}",
        )
        if entries:
            self.credits.post(c, entries, now)
        return sum(paid.values())

    # -- accusations and evidence --------------------------------------------------------------

    def cdn_doubt(self, customer_id: str, node_id: str, now: float) -> None:
        """A customer accused `node_id` of bad bytes: it comes last in that customer's plans
        for a while. Nobody else's plans change; the coordinator's own check decides the rest.
        Kept in memory, bounded: a ranking aid, not a record."""
        with self._doubts_lock:
            mine = self._doubts.pop(customer_id, {})  # re-inserted: the latest customer last
            mine.pop(node_id, None)
            mine[node_id] = now + DOUBT_S  # the newest node last
            while len(mine) > DOUBTS_PER_CUSTOMER:
                del mine[next(iter(mine))]
            self._doubts[customer_id] = mine
            while len(self._doubts) > DOUBTING_CUSTOMERS:
                del self._doubts[next(iter(self._doubts))]

    def cdn_clear_doubt(self, customer_id: str, node_id: str) -> None:
        """The coordinator checked the node's share and found it good."""
        with self._doubts_lock:
            self._doubts.get(customer_id, {}).pop(node_id, None)

    def _doubted(self, customer_id: str, now: float) -> set[str]:
        with self._doubts_lock:
            return {n for n, until in self._doubts.get(customer_id, {}).items() if until > now}

    def cdn_audit_target(self, node_id: str, sha: str) -> dict[str, Any] | None:
        """Where to check share `sha` on `node_id` (url, size, content id); None when that
        node does not hold it as stored, serves nothing, or is quarantined already."""
        with self.read() as c:
            r = c.execute(
                select(nodes.c.serve_url, cdn_shares.c.size, cdn_shares.c.content_id)
                .select_from(cdn_holders)
                .join(cdn_shares, cdn_shares.c.sha == cdn_holders.c.sha)
                .join(nodes, nodes.c.id == cdn_holders.c.node_id)
                .where(
                    cdn_holders.c.sha == sha,
                    cdn_holders.c.node_id == node_id,
                    cdn_holders.c.state == "stored",
                    ~nodes.c.quarantined,
                    nodes.c.serve_url.is_not(None),
                )
            ).first()
        if r is None:
            return None
        return {"url": r.serve_url, "size": r.size, "content_id": r.content_id}

    def cdn_share_failed(self, node_id: str, sha: str, reason: str, now: float) -> None:
        """The coordinator itself received wrong bytes for `sha` from `node_id`: evidence."""
        with self.tx() as c:
            self._cdn_bad(c, node_id, [sha], now, reason=reason)

    # -- where a node serves from ----------------------------------------------------------------

    def node_secret_hash(self, node_id: str) -> str | None:
        """The SHA-256 of the node's credential (what a serve-address probe proves)."""
        with self.read() as c:
            return c.execute(
                select(principals.c.secret_hash).where(
                    principals.c.kind == "node", principals.c.id == node_id
                )
            ).scalar()

    def cdn_note_reach(self, node_id: str, reach: str, at: float) -> None:
        """Keep what the probes of a node's chunk server found (cdn/nat.py) and when."""
        with self.tx() as c:
            c.execute(update(nodes).where(nodes.c.id == node_id).values(reach=reach, reach_at=at))

    def cdn_forget_serve_url(self, node_id: str) -> None:
        """The node's announced chunk server failed the address check: it serves nothing, is
        placed nothing and appears in no plan until it announces one that passes."""
        with self.tx() as c:
            c.execute(update(nodes).where(nodes.c.id == node_id).values(serve_url=None))
        self._serving[node_id] = (False, time.monotonic())

    # -- fetching -----------------------------------------------------------------------------

    def cdn_plan(self, customer_id: str, content_id: str, now: float) -> dict[str, Any] | None:
        """The manifest, the key and, for every share, its live holders, least loaded first
        (those this customer accused lately last). None when the object is not the customer's
        (or does not exist)."""
        with self.read() as c:
            obj = (
                c.execute(
                    select(cdn_objects).where(
                        cdn_objects.c.id == content_id, cdn_objects.c.customer_id == customer_id
                    )
                )
                .mappings()
                .first()
            )
            if obj is None:
                return None
            live = self._cdn_live(c, now)
            # recent load: the larger of what clients receipted (paid, but reported only when
            # a fetch ends) and what the node says it sent (advisory, but current); a node
            # that claims too much only ranks itself last, one that claims too little is still
            # counted at its receipts
            recent: dict[str, int] = defaultdict(int)
            for node_id, _, n in c.execute(
                select(cdn_traffic.c.node_id, cdn_traffic.c.kind, func.sum(cdn_traffic.c.bytes))
                .where(
                    cdn_traffic.c.kind.in_(["served", "claimed"]),
                    cdn_traffic.c.at >= now - LOAD_WINDOW_S,
                )
                .group_by(cdn_traffic.c.node_id, cdn_traffic.c.kind)
            ).all():
                recent[node_id] = max(recent[node_id], int(n or 0))
            holders: dict[str, list[dict[str, str]]] = defaultdict(list)
            for sha, node_id in c.execute(
                select(cdn_holders.c.sha, cdn_holders.c.node_id)
                .join(cdn_shares, cdn_shares.c.sha == cdn_holders.c.sha)
                .where(cdn_shares.c.content_id == content_id, cdn_holders.c.state == "stored")
            ).all():
                if node_id in live:
                    holders[sha].append({"node_id": node_id, "url": live[node_id]["url"]})
        doubted = self._doubted(customer_id, now)
        for hs in holders.values():
            _rng.shuffle(hs)
            # least loaded first (recent MB served), then the fastest measured uplink
            hs.sort(
                key=lambda h: (
                    h["node_id"] in doubted,
                    holder_rank(reach_of(h["url"])),  # direct before the rendezvous
                    recent.get(h["node_id"], 0) // (8 << 20),
                    -live[h["node_id"]]["uplink"],
                )
            )
        return {
            "manifest": json.loads(obj["manifest"]),
            "key": obj["key"],
            "holders": dict(holders),
        }

    def cdn_record_fetch(
        self,
        customer_id: str,
        content_id: str,
        *,
        size: int,
        from_peers: int,
        from_origin: int,
        seconds: float,
        bad: Sequence[tuple[str, str]],
        now: float,
        peers: Sequence[tuple[str, int, float]] = (),
        receipts: Sequence[tuple[str, str, str]] = (),
    ) -> bool:
        """Keep a fetch's figures and pay its receipts `(plan, node_id, sha)` (see
        `_pay_receipts`). Shares the client calls bad `(node_id, sha)` are accusations: they
        rank the node last in this customer's plans and nothing more (the caller queues a check
        by the coordinator). Each peer's measured rate `(node_id, bytes, seconds)` updates its
        uplink estimate."""
        with self.tx() as c:
            owner = c.execute(
                select(cdn_objects.c.customer_id).where(cdn_objects.c.id == content_id)
            ).scalar()
            if owner != customer_id:
                return False
            c.execute(
                update(cdn_objects)
                .where(cdn_objects.c.id == content_id)
                .values(fetches=cdn_objects.c.fetches + 1)
            )
            c.execute(
                cdn_traffic.insert().values(
                    kind="fetch",
                    content_id=content_id,
                    node_id=None,
                    bytes=size,
                    from_peers=from_peers,
                    from_origin=from_origin,
                    seconds=seconds,
                    at=now,
                )
            )
            for node_id, nbytes, secs in peers:
                if nbytes >= 64 * 1024 and secs > 0:
                    rate = nbytes * 8 / secs
                    old = c.execute(
                        select(nodes.c.uplink_bps).where(nodes.c.id == node_id)
                    ).scalar()
                    new = rate if old is None else 0.7 * old + 0.3 * rate
                    c.execute(update(nodes).where(nodes.c.id == node_id).values(uplink_bps=new))
            self._pay_receipts(c, customer_id, content_id, receipts, now)
            fetches = c.execute(
                select(cdn_objects.c.fetches).where(cdn_objects.c.id == content_id)
            ).scalar_one()
            if fetches == HOT_FETCHES:
                self._place(c, now, [content_id], repair=False)  # demand: more holders
        for node_id in {n for n, _ in bad}:
            self.cdn_doubt(customer_id, node_id, now)
        return True

    def cdn_shares_of(self, content_id: str) -> list[dict[str, Any]]:
        """Every share of an object with its holders and their states (tests, the console)."""
        with self.read() as c:
            rows = c.execute(
                select(
                    cdn_shares.c.sha,
                    cdn_shares.c.segment,
                    cdn_shares.c.idx,
                    cdn_holders.c.node_id,
                    cdn_holders.c.state,
                )
                .outerjoin(cdn_holders, cdn_holders.c.sha == cdn_shares.c.sha)
                .where(cdn_shares.c.content_id == content_id)
                .order_by(cdn_shares.c.segment, cdn_shares.c.idx)
            ).all()
        return [dict(r._mapping) for r in rows]

    def cdn_node_may_read(self, node_id: str, sha: str) -> bool:
        with self.read() as c:
            return (
                c.execute(
                    select(cdn_holders.c.sha).where(
                        cdn_holders.c.sha == sha,
                        cdn_holders.c.node_id == node_id,
                        cdn_holders.c.state == "assigned",
                    )
                ).first()
                is not None
            )

    # -- metrics ------------------------------------------------------------------------------

    def cdn_stats(self, customer_id: str | None, now: float) -> dict[str, Any]:
        """Offload, bytes served a node, repair bytes, fetch throughput and p95 time, and how
        the segments are spread over live devices (`segments`, and per object `by_object`:
        full / degraded / at risk / below k, the fewest distinct devices of any segment): for
        one customer's objects, or for all (the operator)."""
        with self.read() as c:
            objs = select(cdn_objects.c.id)
            if customer_id is not None:
                objs = objs.where(cdn_objects.c.customer_id == customer_id)
            ids = list(c.execute(objs).scalars())
            traffic = c.execute(
                select(
                    cdn_traffic.c.kind,
                    cdn_traffic.c.node_id,
                    cdn_traffic.c.bytes,
                    cdn_traffic.c.from_peers,
                    cdn_traffic.c.from_origin,
                    cdn_traffic.c.seconds,
                ).where(cdn_traffic.c.content_id.in_(ids))
            ).all()
            live = self._cdn_live(c, now)
            segments, by_object = self._segment_health(c, ids, live)
        fetches = [t for t in traffic if t.kind == "fetch"]
        delivered = sum(t.bytes for t in fetches)
        peers = sum(t.from_peers for t in fetches)
        moved = peers + sum(t.from_origin for t in fetches)  # share bytes, padding included
        times = sorted(t.seconds for t in fetches)
        served: dict[str, int] = defaultdict(int)  # receipted: what the nodes are paid for
        claimed: dict[str, int] = defaultdict(int)  # the nodes' own counts: advisory
        for t in traffic:
            if t.kind == "served" and t.node_id:
                served[t.node_id] += t.bytes
            elif t.kind == "claimed" and t.node_id:
                claimed[t.node_id] += t.bytes
        secs = sum(t.seconds for t in fetches)
        return {
            "objects": len(ids),
            "fetches": len(fetches),
            "bytes_delivered": delivered,
            "bytes_from_peers": peers,
            "bytes_from_origin": sum(t.from_origin for t in fetches),
            "offload": peers / moved if moved else None,
            "served_by_node": dict(served),
            "claimed_by_node": dict(claimed),
            "repair_bytes": sum(t.bytes for t in traffic if t.kind == "repair"),
            "fetch_mb_s": delivered / 1e6 / secs if secs else None,
            "fetch_p95_s": times[min(len(times) - 1, int(0.95 * len(times)))] if times else None,
            "segments": segments,
            "by_object": by_object,
            "live_devices": len(live),
        }

    def _segment_health(
        self, c: Connection, ids: list[str], live: dict[str, Any]
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """How the segments' shares are spread over live devices (core/spread.py): counts of
        segments full, degraded, at risk and below k, the fewest distinct devices any segment
        has; and the same per object."""
        rows = c.execute(
            select(
                cdn_shares.c.content_id,
                cdn_shares.c.segment,
                cdn_shares.c.sha,
                cdn_holders.c.node_id,
                cdn_holders.c.state,
                cdn_objects.c.k,
                cdn_objects.c.n,
                cdn_objects.c.name,
            )
            .join(cdn_objects, cdn_objects.c.id == cdn_shares.c.content_id)
            .outerjoin(cdn_holders, cdn_holders.c.sha == cdn_shares.c.sha)
            .where(cdn_shares.c.content_id.in_(ids))
        ).all()
        on: dict[tuple[str, int], dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
        meta: dict[str, tuple[int, int, str]] = {}
        for r in rows:
            meta[r.content_id] = (r.k, r.n, r.name)
            held = on[(r.content_id, r.segment)]
            held.setdefault(r.sha, set())  # every share counts, held or not
            if r.state == "stored" and r.node_id in live:
                held[r.sha].add(r.node_id)
        per_obj: dict[str, list[spreads.Spread]] = defaultdict(list)
        for (cid, _), held in on.items():
            k, n, _ = meta[cid]
            per_obj[cid].append(spreads.spread(held, k, n))
        objects = []
        for cid, segs in sorted(per_obj.items()):
            k, n, name = meta[cid]
            counts = {state: sum(1 for s in segs if s.state == state) for state in spreads.STATES}
            objects.append(
                {
                    "content_id": cid,
                    "name": name,
                    "k": k,
                    "n": n,
                    "segments": len(segs),
                    **counts,
                    "min_devices": min(s.devices for s in segs),
                    "min_shares_after_one_loss": min(s.after_one_loss for s in segs),
                    "state": spreads.worst([s.state for s in segs]),
                }
            )
        everything = [s for segs in per_obj.values() for s in segs]
        totals = {state: sum(1 for s in everything if s.state == state) for state in spreads.STATES}
        return (
            {
                "total": len(everything),
                **totals,
                "min_devices": min((s.devices for s in everything), default=None),
            },
            objects,
        )


def _network(url: str | None) -> str:
    """A node's network, as far as its address tells: the /24 of an IPv4 address, else the
    host name; shares of a segment are spread across networks where there are several."""
    from urllib.parse import urlsplit

    host = urlsplit(url or "").hostname or ""
    parts = host.split(".")
    if len(parts) == 4 and all(p.isdigit() for p in parts):
        return ".".join(parts[:3])
    return host
