"""The CDN as a web origin: `/v1/cdn/objects/{id}/content` for curl, wget, aria2c and browsers.

GET/HEAD  /v1/cdn/objects/{id}/content   the object's bytes (RFC 9110), bearer key or signed URL
OPTIONS   /v1/cdn/objects/{id}/content   Allow, and CORS preflights (core/cors.py)
POST      /v1/cdn/objects/{id}/urls      a signed, expiring URL of it (cdn/signed_urls.py)

What a static-file origin such as nginx does, over bytes reassembled here from the nodes: a
strong ETag (the content id: an object never changes once published), Last-Modified (its
publish time), conditionals in the order of RFC 9110 §13.2.2 (core/preconditions.py), ranges of
§14 with multipart/byteranges (core/byteranges.py), the media type recorded at publish. Served
`private`: a shared cache must not keep a customer's plaintext (RFC 9111 §5.2.2.7), and a
signed URL's max-age ends with the URL. `Content-Security-Policy: sandbox` and `nosniff` keep a
published HTML page from running script on the coordinator's origin.
"""

from __future__ import annotations

import mimetypes
import secrets
import time
from collections.abc import Iterator
from typing import Annotated, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import APIRouter, HTTPException, Path, Query, Request, Security
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials
from pydantic import Field

from fogwheel.blobs import FileBlobStore
from fogwheel.cdn import receipts as receipt
from fogwheel.cdn import signed_urls
from fogwheel.cdn.codec import Manifest
from fogwheel.coordinator.auth import Authenticator
from fogwheel.coordinator.identity import PUBLIC, SCHEMES, caller
from fogwheel.core import byteranges, cors
from fogwheel.core.byteranges import PartialBody, ReadRange, Unsatisfiable
from fogwheel.core.preconditions import NotModified, PreconditionFailed, Validators, evaluate
from fogwheel.protocol import Model, Problem
from fogwheel.signing import sign_token
from fogwheel.store import Principal, Store

TOKEN_SECONDS = 300.0  # how long the node token of a streaming fetch is good for
YEAR = 365 * 24 * 3600  # the max-age of immutable content (RFC 8246)
ALLOW = "GET, HEAD, OPTIONS"
_TOKEN = r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}"
# type/subtype with parameters (RFC 9110 §8.3.1): no CR, LF or other control, so never a header
MEDIA_TYPE = rf'^{_TOKEN}/{_TOKEN}(\s*;\s*{_TOKEN}=({_TOKEN}|"[^"\\\x00-\x1f\x7f]*"))*$'
ContentId = Annotated[str, Path(pattern=r"^c[0-9a-f]{24}$", description="a content id")]
Expires = Annotated[
    str | None, Query(max_length=20, description="a signed URL's expiry (unix seconds)")
]
Signature = Annotated[
    str | None,
    Query(max_length=80, description="a signed URL's HMAC (POST …/urls makes one)"),
]
# The content takes a customer key or a signed URL, which needs no header: its `security` is
# the key, or the empty requirement (OpenAPI 3.1 §4.8.30: no credential), merged onto the
# `customerKey` the parameter below declares.
CustomerKey = Annotated[HTTPAuthorizationCredentials | None, Security(SCHEMES["customer"])]
KEY_OR_SIGNED_URL: dict[str, Any] = {"security": [{}]}


class SignUrlIn(Model):
    expires_in: int = Field(
        default=3600,
        ge=1,
        le=signed_urls.MAX_SECONDS,
        description="seconds the URL works for (at most 7 days)",
    )


class SignedUrlOut(Model):
    path: str = Field(description="the URL's path and query: append it to the coordinator URL")
    expires: int = Field(description="when it stops working, unix seconds")


def media_type(recorded: str | None, name: str) -> str:
    """The recorded type, else one guessed from the name (objects published before types were
    recorded), else application/octet-stream."""
    return recorded or mimetypes.guess_type(name)[0] or "application/octet-stream"


def build_content_routes(
    v1: APIRouter,
    store: Store,
    auth: Authenticator,
    blobs: FileBlobStore,
    signing_key: Ed25519PrivateKey,
) -> None:
    """Add the content routes to the /v1/cdn router."""
    url_key = signed_urls.url_secret(signing_key)
    customer = caller(auth, "customer")
    receipt_key = receipt.receipt_secret(signing_key)

    def origins(request: Request) -> tuple[str, ...]:
        config = getattr(request.app.state, "config", None)
        return tuple(getattr(config, "cors_origins", ()) or ())

    def signed(request: Request) -> bool:
        q = request.query_params
        return "signature" in q or "expires" in q

    def cors_of(request: Request) -> dict[str, str]:
        return cors.response_headers(
            request.headers.get("origin"), origins(request), signed(request)
        )

    def refuse(request: Request, status: int, message: str, **extra: str) -> HTTPException:
        return HTTPException(status, message, headers={**cors_of(request), **extra})

    def the_object(
        request: Request, content_id: str, expires: str | None, signature: str | None, now: float
    ) -> tuple[dict[str, Any], bool]:
        """The object this request may read, and whether it came by signed URL; 401/403/404
        otherwise (with the CORS headers, so a page can read the sentence)."""
        if signed(request):
            obj = store.cdn_object(content_id)
            if obj is None:
                raise refuse(request, 404, f"no object {content_id}")
            why = signed_urls.refusal(
                url_key, content_id, obj["customer_id"], expires, signature, now
            )
            if why is None and not obj["owner_active"]:
                why = "the publisher of this object no longer has a key: its signed URLs ended"
            if why is not None:
                raise refuse(request, 403, why)
            return obj, True
        try:
            who = auth.require(request, "customer")
        except HTTPException as e:
            raise HTTPException(
                e.status_code, e.detail, {**(e.headers or {}), **cors_of(request)}
            ) from None
        obj = store.cdn_object(content_id)
        if obj is None or obj["customer_id"] != who.id:
            raise refuse(request, 404, f"no object {content_id}")
        return obj, False

    @v1.post("/objects/{content_id}/urls", status_code=201)
    def sign_url(content_id: ContentId, body: SignUrlIn, who: Principal = customer) -> SignedUrlOut:
        """A URL of your object that needs no header, good for `expires_in` seconds (at most 7
        days): for `<video src>`, players, curl and wget. It grants that one object only."""
        obj = store.cdn_object(content_id)
        if obj is None or obj["customer_id"] != who.id:
            raise HTTPException(404, f"no object {content_id}")
        expires = int(time.time()) + body.expires_in
        query = signed_urls.sign_query(url_key, content_id, expires, who.id)
        return SignedUrlOut(path=f"/v1/cdn/objects/{content_id}/content?{query}", expires=expires)

    responses: dict[int | str, dict[str, Any]] = {
        200: {"content": {"application/octet-stream": {}}, "description": "The whole object"},
        206: {"description": "One range, or several as multipart/byteranges"},
        304: {"description": "Not modified (If-None-Match, If-Modified-Since)"},
        412: {"model": Problem, "description": "If-Match or If-Unmodified-Since failed"},
        416: {"model": Problem, "description": "No range lies within the object"},
    }

    @v1.get(
        "/objects/{content_id}/content",
        response_class=StreamingResponse,
        responses=responses,
        openapi_extra=KEY_OR_SIGNED_URL,
    )
    def content(
        request: Request,
        content_id: ContentId,
        expires: Expires = None,
        signature: Signature = None,
        _key: CustomerKey = None,
    ) -> Response:
        """The object's bytes, reassembled here from the nodes (the origin for what they cannot
        give). A bearer key, or a signed URL (`POST …/urls`) with no header. RFC 9110: ETag,
        Last-Modified, conditionals (304, 412), Range and If-Range (206, multipart/byteranges
        for several ranges, 416; an unparseable Range is ignored)."""
        return answer(request, content_id, expires, signature, head=False)

    @v1.head(
        "/objects/{content_id}/content",
        response_class=Response,
        responses=responses,
        openapi_extra=KEY_OR_SIGNED_URL,
    )
    def content_head(
        request: Request,
        content_id: ContentId,
        expires: Expires = None,
        signature: Signature = None,
        _key: CustomerKey = None,
    ) -> Response:
        """The headers GET would send, no body (`wget --spider`, `aria2c --dry-run`)."""
        return answer(request, content_id, expires, signature, head=True)

    @v1.options(
        "/objects/{content_id}/content",
        status_code=204,
        response_class=Response,
        openapi_extra=PUBLIC,
    )
    def content_options(request: Request, content_id: ContentId) -> Response:
        """`Allow`, and the answer to a browser's CORS preflight: any page for a signed URL,
        the `coordinator --cors-origin` origins for a bearer key."""
        method = request.headers.get("access-control-request-method")
        if method is None:
            return Response(status_code=204, headers={"allow": ALLOW})
        origin = request.headers.get("origin")
        headers = cors.preflight_headers(origin, method, origins(request), signed(request))
        if headers is None:
            raise HTTPException(
                403,
                f"a page from {(origin or 'no origin')[:100]} may not {method[:10]} this content "
                "with a key: use a signed URL (fogwheel cdn url ID), or start the coordinator "
                "with --cors-origin ORIGIN",
                headers={"allow": ALLOW, "vary": "Origin"},
            )
        return Response(status_code=204, headers={"allow": ALLOW, **headers})

    def answer(
        request: Request, content_id: str, expires: str | None, signature: str | None, head: bool
    ) -> Response:
        now = time.time()
        obj, by_url = the_object(request, content_id, expires, signature, now)
        size = int(obj["size"])
        have = Validators(etag=content_id, last_modified=int(obj["created_at"]))
        kind = media_type(obj["content_type"], obj["name"])
        max_age = min(YEAR, int(expires or 0) - int(now)) if by_url else YEAR
        headers = {
            "etag": have.etag_header,
            "last-modified": have.last_modified_header,
            "cache-control": f"private, max-age={max_age}, immutable",
            "accept-ranges": "bytes",
            "x-content-type-options": "nosniff",
            "content-security-policy": "sandbox",
            **cors_of(request),
        }
        asked = request.headers.get("range")
        outcome = evaluate(request.headers, have, int(now), has_range=asked is not None)
        if isinstance(outcome, NotModified):
            return Response(status_code=304, headers=headers)
        if isinstance(outcome, PreconditionFailed):
            return JSONResponse({"error": outcome.reason}, status_code=412, headers=headers)
        choice = byteranges.select_ranges(asked, size) if asked and outcome.honour_range else None
        if isinstance(choice, Unsatisfiable):
            headers["content-range"] = f"bytes */{size}"
            return JSONResponse(
                {"error": f"{choice.reason}: ask for bytes 0-{max(size - 1, 0)}"},
                status_code=416,
                headers=headers,
            )
        spans = choice.spans if isinstance(choice, PartialBody) else (ReadRange(0, size - 1),)
        status = 206 if isinstance(choice, PartialBody) else 200
        boundary, part_type = None, kind
        if len(spans) > 1:
            boundary = secrets.token_hex(16)
            headers["content-length"] = str(
                byteranges.multipart_length(boundary, kind, spans, size)
            )
            kind = f"multipart/byteranges; boundary={boundary}"
        else:
            headers["content-length"] = str(spans[0].length if size else 0)
            if status == 206:
                headers["content-range"] = spans[0].content_range(size)
        if head:
            return Response(status_code=status, headers=headers, media_type=kind)
        plan = store.cdn_plan(obj["customer_id"], content_id, now)
        if plan is None:  # deleted between the two reads
            raise refuse(request, 404, f"no object {content_id}")
        plan["token"] = sign_token(signing_key, {"c": content_id, "exp": now + TOKEN_SECONDS})
        plan_id, key = receipt.new_plan(receipt_key, obj["customer_id"], content_id, now)
        plan["receipts"] = {"plan": plan_id, "key": key}
        body = _body(
            store, blobs, plan, obj["customer_id"], content_id, spans, size, boundary, part_type
        )
        return StreamingResponse(body, status_code=status, headers=headers, media_type=kind)


def _body(
    store: Store,
    blobs: FileBlobStore,
    plan: dict[str, Any],
    customer_id: str,
    content_id: str,
    spans: tuple[ReadRange, ...],
    size: int,
    boundary: str | None,
    part_type: str,
) -> Iterator[bytes]:
    """The bytes of `spans`, fetched from the nodes segment by segment (a segment two spans
    share is fetched once), as multipart parts when there is a boundary; the fetch's figures,
    and any bad share it met, recorded once it ends."""
    from fogwheel.cdn.fetch import Fetcher

    if size == 0:
        return
    manifest = Manifest.from_dict(plan["manifest"])
    seg_size = manifest.segment_size
    kept: tuple[int, bytes] | None = None  # the last segment decoded

    def cut(span: ReadRange, i: int, data: bytes) -> bytes:
        return data[
            max(span.first - i * seg_size, 0) : min(span.last - i * seg_size + 1, len(data))
        ]

    with Fetcher(plan, blobs.get) as f:
        for span in spans:
            if boundary is not None:
                yield byteranges.multipart_part_head(boundary, part_type, span, size)
            first, last = span.first // seg_size, span.last // seg_size
            if kept is not None and kept[0] == first:
                yield cut(span, first, kept[1])
                first += 1
            if first <= last:
                for i, data in enumerate(f.segments(first, last), first):
                    kept = (i, data)
                    yield cut(span, i, data)
        if boundary is not None:
            yield byteranges.multipart_tail(boundary)
        stats = f.stats
    done = time.time()
    # bad bytes seen here are the coordinator's own evidence, not an accusation
    for node_id, sha in dict.fromkeys(stats.bad):
        why = stats.bad_why.get((node_id, sha), "sent wrong bytes")
        store.cdn_share_failed(
            node_id, sha, f"the coordinator's streaming fetch of {content_id}: {why}", done
        )
    store.cdn_record_fetch(
        customer_id,
        content_id,
        size=sum(s.length for s in spans),
        from_peers=stats.from_peers,
        from_origin=stats.from_origin,
        seconds=stats.seconds,
        bad=[],
        now=done,
        peers=[(n, int(b), s) for n, (b, s) in stats.peers.items()],
        receipts=[(stats.plan, r["node_id"], r["sha"]) for r in stats.receipts],
    )
