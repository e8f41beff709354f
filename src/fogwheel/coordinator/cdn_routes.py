"""Routes of the CDN: publish, fetch plan, fetch report, streamed content, stats.

POST /v1/cdn/objects                  register a published object (its shares uploaded)
GET  /v1/cdn/objects/{id}             the fetch plan: manifest, key, holders, a node token
POST /v1/cdn/objects/{id}/fetches     a client's figures for one fetch
GET  /v1/cdn/objects/{id}/content     the object itself, reassembled here (Range requests)
GET  /v1/cdn/stats                    offload, bytes served a node, repair bytes, p95
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Annotated, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import APIRouter, FastAPI, HTTPException, Path, Request
from fastapi.responses import StreamingResponse
from pydantic import Field, StringConstraints

from fogwheel.blobs import FileBlobStore
from fogwheel.cdn.codec import CodecError, Manifest
from fogwheel.coordinator.auth import Authenticator
from fogwheel.protocol import Model, Problem
from fogwheel.signing import sign_token
from fogwheel.store import Store

TOKEN_SECONDS = 300.0  # how long a fetch plan's node token is good for
ContentId = Annotated[str, Path(pattern=r"^c[0-9a-f]{24}$", description="a content id")]

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


class PublishOut(Model):
    content_id: str
    shares: int
    placed: int


class BadShareIn(Model):
    node_id: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    sha: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


class PeerIn(Model):
    node_id: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    bytes: int = Field(ge=0, le=1 << 50)
    seconds: float = Field(ge=0, le=1e7)


class FetchIn(Model):
    size: int = Field(ge=0, le=1 << 50)
    from_peers: int = Field(ge=0, le=1 << 50)
    from_origin: int = Field(ge=0, le=1 << 50)
    seconds: float = Field(ge=0, le=1e7)
    bad: list[BadShareIn] = Field(default_factory=list, max_length=10_000)
    peers: list[PeerIn] = Field(default_factory=list, max_length=10_000)


def build_cdn_routes(
    app: FastAPI | APIRouter,
    store: Store,
    auth: Authenticator,
    blobs: FileBlobStore,
    signing_key: Ed25519PrivateKey,
) -> None:
    v1 = APIRouter(prefix="/v1/cdn", responses=ERRORS, tags=["cdn"])

    @v1.post("/objects", status_code=201)
    def publish(request: Request, body: PublishIn) -> PublishOut:
        """Register an object whose shares the customer has uploaded to /v1/blobs; its shares
        are placed on nodes. 422 when the manifest is malformed or a share is missing."""
        who = auth.require(request, "customer")
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
        out = store.cdn_create(who.id, manifest.to_dict(), body.key, shares, time.time())
        return PublishOut(**out)

    @v1.get("/objects/{content_id}")
    def plan(request: Request, content_id: ContentId) -> dict[str, Any]:
        """The fetch plan: manifest, key, the live holders of every share (least loaded
        first) and a token the nodes' chunk servers accept for this content for 5 minutes."""
        who = auth.require(request, "customer")
        now = time.time()
        out = store.cdn_plan(who.id, content_id, now)
        if out is None:
            raise HTTPException(404, f"no object {content_id}")
        out["token"] = sign_token(
            signing_key, {"c": content_id, "exp": now + TOKEN_SECONDS, "sub": who.id}
        )
        out["token_expires"] = now + TOKEN_SECONDS
        return out

    @v1.post("/objects/{content_id}/fetches", status_code=204)
    def fetched(request: Request, content_id: ContentId, body: FetchIn) -> None:
        """A client's figures for one fetch; shares it found bad count against their node."""
        who = auth.require(request, "customer")
        ok = store.cdn_record_fetch(
            who.id,
            content_id,
            size=body.size,
            from_peers=body.from_peers,
            from_origin=body.from_origin,
            seconds=body.seconds,
            bad=[(b.node_id, b.sha) for b in body.bad],
            now=time.time(),
            peers=[(p.node_id, p.bytes, p.seconds) for p in body.peers],
        )
        if not ok:
            raise HTTPException(404, f"no object {content_id}")

    @v1.get(
        "/objects/{content_id}/content",
        response_class=StreamingResponse,
        responses={
            200: {"content": {"application/octet-stream": {}}},
            206: {"description": "Partial content"},
            416: {"model": Problem, "description": "Range not satisfiable"},
        },
    )
    def content(request: Request, content_id: ContentId) -> StreamingResponse:
        """The object's bytes, reassembled here from the nodes (the origin for what they
        cannot give): for plain HTTP clients such as curl. Honours one `Range: bytes=a-b`."""
        from fogwheel.cdn.fetch import Fetcher

        who = auth.require(request, "customer")
        now = time.time()
        plan = store.cdn_plan(who.id, content_id, now)
        if plan is None:
            raise HTTPException(404, f"no object {content_id}")
        manifest = Manifest.from_dict(plan["manifest"])
        size = manifest.size
        start, end = 0, size - 1
        status = 200
        headers = {"accept-ranges": "bytes"}
        rng = request.headers.get("range")
        if rng:
            m = re.fullmatch(r"bytes=(\d*)-(\d*)", rng.strip())
            if not m or (not m.group(1) and not m.group(2)):
                raise HTTPException(416, f"cannot serve the range {rng[:80]!r}")
            if m.group(1):
                start = int(m.group(1))
                end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
            else:  # the last N bytes
                start = max(0, size - int(m.group(2)))
            if start >= size or start > end:
                raise HTTPException(416, f"the range {rng[:80]!r} is outside {size} bytes")
            status = 206
            headers["content-range"] = f"bytes {start}-{end}/{size}"
        headers["content-length"] = str(end - start + 1 if size else 0)
        plan["token"] = sign_token(signing_key, {"c": content_id, "exp": now + TOKEN_SECONDS})

        def body() -> Iterator[bytes]:
            if size == 0:
                return
            seg_size = manifest.segment_size
            first, last = start // seg_size, end // seg_size
            with Fetcher(plan, blobs.get) as f:
                for i, data in enumerate(f.segments(first, last), first):
                    lo = max(start - i * seg_size, 0)
                    hi = min(end - i * seg_size + 1, len(data))
                    yield data[lo:hi]
                stats = f.stats
            store.cdn_record_fetch(
                who.id,
                content_id,
                size=end - start + 1,
                from_peers=stats.from_peers,
                from_origin=stats.from_origin,
                seconds=stats.seconds,
                bad=stats.bad,
                now=time.time(),
                peers=[(n, int(b), s) for n, (b, s) in stats.peers.items()],
            )

        return StreamingResponse(
            body(), status_code=status, headers=headers, media_type="application/octet-stream"
        )

    @v1.get("/stats")
    def stats(request: Request) -> dict[str, Any]:
        """Offload ratio, bytes served a node, repair bytes, fetch throughput and p95 time:
        of your objects (a customer key) or of all (the admin key)."""
        who = auth.require(request, "customer", "admin")
        return store.cdn_stats(who.id if who.kind == "customer" else None, time.time())

    app.include_router(v1)
