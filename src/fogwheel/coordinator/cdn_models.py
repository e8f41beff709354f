"""Answer models of the CDN routes (coordinator/cdn_routes.py): the fetch plan, the stats and a
pardon, typed so that the OpenAPI document says their shape (generated clients, schemathesis).

The shapes are those `store/cdn.py` (`cdn_plan`, `cdn_stats`) and `cdn/audit.py` (`figures`)
build; `tests/test_openapi.py` validates real answers of a coordinator against them.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from fogwheel.protocol import Model


class Holder(Model):
    """A live node that stores a share, and where its chunk server listens."""

    node_id: str
    url: str


class PlanReceipts(Model):
    """What the client signs its receipts with: the node is paid only against them."""

    plan: str
    key: str


class CdnPlan(Model):
    """The fetch plan: manifest, key, the live holders of every share (least loaded first)
    and a token the nodes' chunk servers accept for this content until `token_expires`."""

    manifest: dict[str, Any] = Field(description="the object's manifest (cdn/codec.py)")
    key: str = Field(description="the object's AES-256 key, hex")
    holders: dict[str, list[Holder]] = Field(description="share SHA-256 -> its live holders")
    token: str
    token_expires: float
    receipts: PlanReceipts


class SegmentTotals(Model):
    """How the segments' shares sit on distinct live devices (core/spread.py)."""

    total: int
    full: int
    degraded: int
    at_risk: int
    below_k: int
    min_devices: int | None


class ObjectSpread(Model):
    """One object's segments by state, and the fewest devices any of them is on."""

    content_id: str
    name: str
    k: int
    n: int
    segments: int
    full: int
    degraded: int
    at_risk: int
    below_k: int
    min_devices: int
    min_shares_after_one_loss: int
    state: str


class CdnStats(Model):
    """Offload, bytes served a node, repair bytes, fetch throughput and p95 time, and the
    segments' spread: of a customer's objects, or of all (the admin key, with `audits`)."""

    objects: int
    fetches: int
    bytes_delivered: int
    bytes_from_peers: int
    bytes_from_origin: int
    offload: float | None
    served_by_node: dict[str, int] = Field(description="receipted bytes: what nodes are paid")
    claimed_by_node: dict[str, int] = Field(description="the nodes' own counts: advisory")
    repair_bytes: int
    fetch_mb_s: float | None
    fetch_p95_s: float | None
    segments: SegmentTotals
    by_object: list[ObjectSpread]
    live_devices: int
    audits: dict[str, int] | None = Field(
        default=None, description="the coordinator's share checks (admin only)"
    )
    rendezvous: dict[str, int] | None = Field(
        default=None,
        description="punches met and missed, shares and bytes relayed (admin only, cdn/relay.py)",
    )


class Pardoned(Model):
    node_id: str
    state: str
    pardoned: bool
