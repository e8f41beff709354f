"""Routes of the CDN: publish, fetch plan, fetch report, streamed content, stats.

POST /v1/cdn/objects                  register a published object (its shares uploaded)
GET  /v1/cdn/objects/{id}             the fetch plan: manifest, key, holders, a node token
POST /v1/cdn/objects/{id}/fetches     a client's figures, receipts and accusations for a fetch
GET  /v1/cdn/objects/{id}/content     the object itself, a web origin (cdn_content.py)
POST /v1/cdn/objects/{id}/urls        a signed, expiring URL of it (cdn_content.py)
GET  /v1/cdn/stats                    offload, bytes served a node, repair bytes, p95
POST /v1/nodes/{id}/pardon            the operator lifts a node's quarantine

Nodes are paid only against receipts the fetching client signed (cdn/receipts.py); a client's
"bad share" is checked by the coordinator itself before it costs the node anything
(cdn/audit.py); a node's announced chunk server is screened before anyone is sent to it
(`screen_serve_url`, called from the node's sync).
"""

from __future__ import annotations

import logging
import time
from typing import Annotated, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import APIRouter, FastAPI, HTTPException, Path, Request
from pydantic import Field, StringConstraints

from fogwheel.blobs import FileBlobStore
from fogwheel.cdn import receipts as receipt
from fogwheel.cdn.audit import ServeScreen, ShareAuditor
from fogwheel.cdn.codec import CodecError, Manifest
from fogwheel.cdn.nat import screen_reach
from fogwheel.cdn.relay import build_rendezvous_routes
from fogwheel.coordinator.auth import Authenticator
from fogwheel.coordinator.cdn_content import MEDIA_TYPE, build_content_routes, media_type
from fogwheel.coordinator.cdn_models import CdnPlan, CdnStats, Pardoned
from fogwheel.coordinator.identity import caller
from fogwheel.protocol import Model, Problem, SyncIn
from fogwheel.signing import sign_token
from fogwheel.store import Principal, Store

log = logging.getLogger("fogwheel.cdn")

TOKEN_SECONDS = 300.0  # how long a fetch plan's node token is good for
ContentId = Annotated[str, Path(pattern=r"^c[0-9a-f]{24}$", description="a content id")]
NodeId = Annotated[str, Path(min_length=1, max_length=64, description="a node's id")]

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "Missing or unknown credentials"},
    403: {"model": Problem, "description": "Credentials of the wrong kind"},
    404: {"model": Problem, "description": "No such object of yours"},
    422: {"model": Problem, "description": "A body of the wrong shape"},
}


class PublishIn(Model):
    manifest: dict[str, Any] = Field(description="the object's manifest (cdn/codec.py)")
    key: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")] = Field(
        description="the object's AES-256 key, hex: kept here, never sent to storing nodes"
    )
    content_type: Annotated[str, StringConstraints(max_length=200, pattern=MEDIA_TYPE)] | None = (
        Field(
            default=None,
            description="the media type to serve it as (RFC 9110 §8.3), e.g. video/mp4; "
            "default: guessed from the manifest's name",
        )
    )


class PublishOut(Model):
    content_id: str
    shares: int
    placed: int
    devices: int = Field(description="live devices that serve shares, when it was placed")
    warning: str | None = Field(
        default=None,
        description="set when the fog has fewer live devices than n: what that spread risks",
    )


class BadShareIn(Model):
    node_id: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    sha: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


class PeerIn(Model):
    node_id: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    bytes: int = Field(ge=0, le=1 << 50)
    seconds: float = Field(ge=0, le=1e7)


class ReceiptIn(Model):
    node_id: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    sha: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
    mac: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")]


class PathIn(Model):
    shares: int = Field(ge=0, le=1 << 40)
    bytes: int = Field(ge=0, le=1 << 50)


class FetchIn(Model):
    size: int = Field(ge=0, le=1 << 50)
    from_peers: int = Field(ge=0, le=1 << 50)
    from_origin: int = Field(ge=0, le=1 << 50)
    seconds: float = Field(ge=0, le=1e7)
    bad: list[BadShareIn] = Field(
        default_factory=list,
        max_length=10_000,
        description="shares a node sent wrong: checked by the coordinator before any penalty",
    )
    peers: list[PeerIn] = Field(default_factory=list, max_length=10_000)
    plan: Annotated[str, StringConstraints(max_length=40)] = Field(
        default="", description="the plan id the receipts were signed under"
    )
    receipts: list[ReceiptIn] = Field(
        default_factory=list,
        max_length=100_000,
        description="one a share received from a node and verified: what pays the nodes",
    )
    paths: dict[Annotated[str, StringConstraints(pattern=r"^(direct|punch|relay)$")], PathIn] = (
        Field(default_factory=dict, description="shares and bytes by path (core/reach.py)")
    )


def screen_serve_url(request: Request, node_id: str, req: SyncIn) -> SyncIn:
    """The sync with its `serve_url` kept only when it passes the address check and the
    probe (cdn/audit.py); a refused address also unsets the one on record."""
    if req.serve_url is None:
        return req
    screen: ServeScreen = request.app.state.cdn_screen
    config = getattr(request.app.state, "config", None)
    screen.allow_private = bool(getattr(config, "allow_private_serve", False))
    peer = request.client.host if request.client else None
    probed, refusal = screen_reach(screen, node_id, req.serve_url, peer)  # cdn/nat.py
    if probed is not None:
        request.app.state.cdn_store.cdn_note_reach(node_id, probed.reach, probed.at)
        return req.model_copy(update={"serve_url": probed.url})
    log.warning("node %s: serve address %s refused: %s", node_id, req.serve_url, refusal)
    request.app.state.cdn_store.cdn_forget_serve_url(node_id)
    return req.model_copy(update={"serve_url": None})


def build_cdn_routes(
    app: FastAPI | APIRouter,
    store: Store,
    auth: Authenticator,
    blobs: FileBlobStore,
    signing_key: Ed25519PrivateKey,
) -> None:
    v1 = APIRouter(prefix="/v1/cdn", responses=ERRORS, tags=["cdn"])
    auditor = ShareAuditor(store, signing_key)
    rendezvous = build_rendezvous_routes(app, store, auth)  # devices behind NAT (cdn/relay.py)
    secret = receipt.receipt_secret(signing_key)
    customer = caller(auth, "customer")
    customer_or_admin = caller(auth, "customer", "admin")
    admin = caller(auth, "admin")
    app_state = getattr(app, "state", None)
    if app_state is not None:
        app_state.cdn_screen = ServeScreen(store.node_secret_hash, allow_private=False)
        app_state.cdn_store = store
        app_state.cdn_auditor = auditor

    def with_receipts(plan: dict[str, Any], customer_id: str, content_id: str, now: float) -> None:
        plan_id, key = receipt.new_plan(secret, customer_id, content_id, now)
        plan["receipts"] = {"plan": plan_id, "key": key}

    def paid_receipts(
        customer_id: str, content_id: str, plan_id: str, items: list[ReceiptIn], now: float
    ) -> list[tuple[str, str, str]]:
        """The receipts whose signature this customer's plan makes; the rest are dropped."""
        return [
            (plan_id, r.node_id, r.sha)
            for r in items
            if receipt.valid(secret, plan_id, customer_id, content_id, r.node_id, r.sha, r.mac, now)
        ]

    @v1.post("/objects", status_code=201)
    def publish(body: PublishIn, who: Principal = customer) -> PublishOut:
        """Register an object whose shares the customer has uploaded to /v1/blobs; its shares
        are placed on nodes, at most one of a segment a device while any device is free of it.
        `warning` says so when the fog has fewer live devices than n. 422 when the manifest is
        malformed or a share is missing."""
        try:
            manifest = Manifest.from_dict(body.manifest)
        except CodecError as e:
            raise HTTPException(422, f"manifest: {e}") from None
        if store.cdn_exists(manifest.content_id):
            raise HTTPException(409, f"content id {manifest.content_id} is already published")
        shares = [
            (sha, seg.index, i, seg.share_size)
            for seg in manifest.segments
            for i, sha in enumerate(seg.shares)
        ]
        shas = {s for s, _, _, _ in shares}
        if len(shas) != len(shares):
            raise HTTPException(422, "manifest: two shares with the same bytes")
        missing = shas - store.owned_blobs(who.id, shas)
        if missing:
            raise HTTPException(
                422, f"share {sorted(missing)[0]} is not uploaded: PUT it to /v1/blobs first"
            )
        kind = body.content_type or media_type(None, manifest.name)
        out = store.cdn_create(who.id, manifest.to_dict(), body.key, shares, time.time(), kind)
        return PublishOut(**out)

    @v1.get("/objects/{content_id}")
    def plan(content_id: ContentId, who: Principal = customer) -> CdnPlan:
        """The fetch plan: manifest, key, the live holders of every share (least loaded
        first) and a token the nodes' chunk servers accept for this content for 5 minutes."""
        now = time.time()
        out = store.cdn_plan(who.id, content_id, now)
        if out is None:
            raise HTTPException(404, f"no object {content_id}")
        out["token"] = sign_token(
            signing_key, {"c": content_id, "exp": now + TOKEN_SECONDS, "sub": who.id}
        )
        out["token_expires"] = now + TOKEN_SECONDS
        with_receipts(out, who.id, content_id, now)
        return CdnPlan.model_validate(out)

    @v1.post("/objects/{content_id}/fetches", status_code=204)
    def fetched(content_id: ContentId, body: FetchIn, who: Principal = customer) -> None:
        """A client's figures for one fetch. Its receipts pay the nodes (each once, at most
        the share's size); shares it calls bad are checked by the coordinator before they cost
        a node anything, and meanwhile rank the node last in this customer's plans."""
        now = time.time()
        bad = [(b.node_id, b.sha) for b in body.bad]
        ok = store.cdn_record_fetch(
            who.id,
            content_id,
            size=body.size,
            from_peers=body.from_peers,
            from_origin=body.from_origin,
            seconds=body.seconds,
            bad=bad,
            now=now,
            peers=[(p.node_id, p.bytes, p.seconds) for p in body.peers],
            receipts=paid_receipts(who.id, content_id, body.plan, body.receipts, now),
        )
        if not ok:
            raise HTTPException(404, f"no object {content_id}")
        if bad:
            auditor.accuse(who.id, bad)

    build_content_routes(v1, store, auth, blobs, signing_key)  # GET/HEAD/OPTIONS …/content

    @v1.get("/stats")
    def stats(who: Principal = customer_or_admin) -> CdnStats:
        """Offload ratio, bytes served a node, repair bytes, fetch throughput and p95 time:
        of your objects (a customer key) or of all (the admin key)."""
        out = store.cdn_stats(who.id if who.kind == "customer" else None, time.time())
        if who.kind == "admin":
            out["audits"] = auditor.figures()
            out["rendezvous"] = dict(rendezvous.counts)
        return CdnStats.model_validate(out)

    app.include_router(v1)

    operator = APIRouter(prefix="/v1/nodes", responses=ERRORS, tags=["nodes"])

    @operator.post("/{node_id}/pardon")
    def pardon(node_id: NodeId, _: Principal = admin) -> Pardoned:
        """Lift a node's quarantine (admin): it is up again, on probation (every result
        checked), its reason cleared. 404 when there is no such node."""
        if not store.pardon_node(node_id):
            raise HTTPException(404, f"no node {node_id}")
        log.info("node %s pardoned by the operator", node_id)
        return Pardoned(node_id=node_id, state="up", pardoned=True)

    app.include_router(operator)
