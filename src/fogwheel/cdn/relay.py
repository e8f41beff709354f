"""The coordinator as rendezvous and relay for devices no fetcher can connect to.

Issue #16 item 1 (b, c). A device whose probes failed (core/reach.py: `nat://` serve URL)
keeps one long poll open to the coordinator (`GET /v1/nodes/me/calls`, like a circuit relay v2
reservation: an outbound connection its NAT lets answers come back on) and is told through it:

- `punch`: a fetcher wants to connect. The fetcher posted `/v1/cdn/punch` from the local port
  it will dial from, so the coordinator saw its public address and port; the device posts
  `/v1/nodes/me/punch/{id}` from the port it will dial from, and both answers go out at once,
  each naming the other's observed address: both connect at the same moment (TCP simultaneous
  open, DCUtR's "sync"). Neither side is told an address the other did not connect from, so
  nobody can aim a device's connections at a third host.
- `relay`: the fetcher asks `/v1/cdn/relay` for one share; the device uploads it to
  `/v1/nodes/me/relay/{id}`; the coordinator reads at most the share's size, checks its hash
  (wrong bytes are the coordinator's own evidence: the device is quarantined, as in
  cdn/audit.py) and answers the fetcher with it.

Every call is bounded (core/reach.py `Bounds`): in flight per device, per customer and in all,
relayed bytes per device and per customer a minute, and every wait by a timeout, so a hostile
device or customer cannot make the coordinator hold unbounded memory, sockets or bandwidth.
State lives in this process's memory: with several coordinators, a device's long poll and the
fetcher's call must reach the same one (a limit, docs/cdn.md).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from fastapi import APIRouter, FastAPI, HTTPException, Path, Query, Request, Response
from pydantic import Field, StringConstraints
from starlette.concurrency import run_in_threadpool

from fogwheel.coordinator.auth import Authenticator
from fogwheel.coordinator.identity import caller
from fogwheel.core import reach
from fogwheel.protocol import Model
from fogwheel.store import Principal, Store

log = logging.getLogger("fogwheel.cdn")

POLL_MAX_S = 25.0  # a device's long poll is answered within this, calls or not
CALLS_PER_ANSWER = 16
QUEUED_PER_NODE = 32
TAKE_S = 3.0  # a call no live long poll of the device takes within this fails at once
PUNCH_WAIT_S = 8.0  # the fetcher waits this long for the device to come to the rendezvous
RELAY_WAIT_S = 30.0  # ... and this long for a relayed share
SessionId = Annotated[str, Path(pattern=r"^[0-9a-f]{32}$")]


class PunchIn(Model):
    content_id: Annotated[str, StringConstraints(pattern=r"^c[0-9a-f]{24}$")]
    node_id: Annotated[str, StringConstraints(min_length=1, max_length=64)]


class RelayIn(PunchIn):
    sha: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


class Endpoint(Model):
    host: str = Field(description="an IP address, as the coordinator saw the connection")
    port: int = Field(ge=1, le=65535)


class Call(Model):
    kind: Literal["punch", "relay"]
    id: str = Field(description="the session: answer it at /v1/nodes/me/{kind}/{id}")
    peer: Endpoint | None = Field(default=None, description="punch: the fetcher's address")
    sha: str | None = Field(default=None, description="relay: the share to upload")
    size: int | None = None
    content_id: str | None = None


class CallsOut(Model):
    calls: list[Call]


class Met(Model):
    id: str | None = Field(default=None, description="the rendezvous (to the fetcher)")
    peer: Endpoint = Field(description="the other side's observed address: connect to it now")


SHARE_BYTES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "the share's bytes, checked against its hash",
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}


@dataclass
class Session:
    id: str
    kind: reach.Path
    node_id: str
    customer_id: str
    content_id: str
    created: float
    sha: str = ""
    size: int = 0
    fetcher: tuple[str, int] | None = None  # observed address of the fetcher's dialling port
    done: asyncio.Future[Any] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    taken: bool = False  # the device has been told


class Rendezvous:
    """Calls waiting for devices, sessions in flight, and the bounds' bookkeeping; used from
    the event loop only (every route here is async), so it needs no lock."""

    def __init__(self, bounds: reach.Bounds | None = None) -> None:
        self.bounds = bounds or reach.Bounds()
        self.sessions: dict[str, Session] = {}
        self.queued: dict[str, collections.deque[Session]] = {}
        self.wake: dict[str, asyncio.Event] = {}
        self.relayed: dict[str, collections.deque[tuple[float, int]]] = {}  # who -> (t, bytes)
        self.counts: collections.Counter[str] = collections.Counter()

    def _relayed(self, who: str, now: float) -> int:
        seen = self.relayed.setdefault(who, collections.deque())
        while seen and seen[0][0] < now - 60.0:
            seen.popleft()
        if not seen:
            del self.relayed[who]
            return 0
        return sum(n for _, n in seen)

    def load(self, node_id: str, customer_id: str, now: float) -> reach.Load:
        live = list(self.sessions.values())
        return reach.Load(
            node_calls=sum(s.node_id == node_id for s in live),
            customer_calls=sum(s.customer_id == customer_id for s in live),
            total_calls=len(live),
            node_relayed=self._relayed("n:" + node_id, now),
            customer_relayed=self._relayed("c:" + customer_id, now),
            relay_in_flight=sum(s.size for s in live if s.kind == "relay"),
        )

    def open(self, s: Session) -> None:
        queue = self.queued.setdefault(s.node_id, collections.deque())
        if len(queue) >= QUEUED_PER_NODE:
            raise HTTPException(503, "that device has too many calls waiting: try another")
        self.sessions[s.id] = s
        queue.append(s)
        self.wake.setdefault(s.node_id, asyncio.Event()).set()
        self.counts[f"{s.kind}_asked"] += 1

    def close(self, s: Session) -> None:
        self.sessions.pop(s.id, None)
        queue = self.queued.get(s.node_id)
        if queue is not None and s in queue:
            queue.remove(s)
        if not s.done.done():
            s.done.cancel()

    def note_relayed(self, s: Session, nbytes: int, now: float) -> None:
        for who in ("n:" + s.node_id, "c:" + s.customer_id):
            self.relayed.setdefault(who, collections.deque()).append((now, nbytes))
        self.counts["relay_bytes"] += nbytes

    async def poll(self, node_id: str, wait: float, request: Request) -> list[Call]:
        event = self.wake.setdefault(node_id, asyncio.Event())
        queue = self.queued.setdefault(node_id, collections.deque())
        if not queue:
            event.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), timeout=wait)
        if await request.is_disconnected():
            return []  # a device that died while it waited takes no call: they fail at once
        calls = []
        while queue and len(calls) < CALLS_PER_ANSWER:
            s = queue.popleft()
            s.taken = True
            if s.kind == "relay":
                call = Call(kind="relay", id=s.id, sha=s.sha, size=s.size, content_id=s.content_id)
            else:
                assert s.fetcher is not None
                call = Call(
                    kind="punch", id=s.id, peer=Endpoint(host=s.fetcher[0], port=s.fetcher[1])
                )
            calls.append(call)
        if not queue:
            self.queued.pop(node_id, None)
            self.wake.pop(node_id, None)
        return calls


def build_rendezvous_routes(
    app: FastAPI | APIRouter, store: Store, auth: Authenticator
) -> Rendezvous:
    """The rendezvous and relay routes; returns the Rendezvous (its `counts` are figures)."""
    rz = Rendezvous()
    node = caller(auth, "node")
    customer = caller(auth, "customer")
    router = APIRouter(prefix="/v1", tags=["cdn"])

    async def target(who: Principal, body: PunchIn, sha: str | None) -> dict[str, Any]:
        """The share (or any share, for a punch) of the customer's object that the device
        holds and serves through the rendezvous; 404/409 with a sentence else."""
        obj = await run_in_threadpool(store.cdn_object, body.content_id)
        if obj is None or obj.get("customer_id") != who.id:
            raise HTTPException(404, f"no object {body.content_id}")
        if sha is None:
            return {"size": 0}
        found = await run_in_threadpool(store.cdn_audit_target, body.node_id, sha)
        if found is None or found["content_id"] != body.content_id:
            raise HTTPException(404, f"node {body.node_id} holds no share {sha[:12]}… of it")
        if reach.reach_of(found["url"]) != "rendezvous":
            raise HTTPException(409, f"node {body.node_id} is reached directly: ask it")
        return found

    async def taken(s: Session, total_s: float) -> Any:
        """What the device answers `s` with: it must take the call within TAKE_S (a device
        that is not on its long poll is gone) and answer within `total_s`."""
        t0 = time.monotonic()
        while not s.taken:
            if time.monotonic() - t0 > TAKE_S:
                raise TimeoutError
            await asyncio.sleep(0.02)
        left = max(0.1, total_s - (time.monotonic() - t0))
        return await asyncio.wait_for(asyncio.shield(s.done), left)

    def admit(kind: reach.Path, who: Principal, node_id: str, size: int = 0) -> None:
        why = reach.refusal(kind, rz.load(node_id, who.id, time.monotonic()), rz.bounds, size)
        if why is not None:
            rz.counts["refused"] += 1
            raise HTTPException(429, why, headers={"Retry-After": "1"})

    @router.get("/nodes/me/calls", tags=["nodes"])
    async def calls(
        request: Request,
        wait: Annotated[float, Query(ge=0, le=POLL_MAX_S)] = 20.0,
        who: Principal = node,
    ) -> CallsOut:
        """A device behind NAT waits here (at most `wait` seconds) for fetchers that want to
        punch through to it, or shares it should relay through the coordinator."""
        return CallsOut(calls=await rz.poll(who.id, wait, request))

    @router.post("/cdn/punch")
    async def punch(request: Request, body: PunchIn, who: Principal = customer) -> Met:
        """Meet a device behind NAT: sent from the local port the fetcher will dial from.
        Answers the device's observed address once it has come (then both connect at once);
        504 when it does not come within 8 s."""
        await target(who, body, None)
        if request.client is None:
            raise HTTPException(400, "the coordinator cannot tell where this request comes from")
        admit("punch", who, body.node_id)
        fetcher = (request.client.host, request.client.port)
        s = Session(
            secrets.token_hex(16), "punch", body.node_id, who.id, body.content_id,
            time.monotonic(), fetcher=fetcher,
        )  # fmt: skip
        rz.open(s)
        try:
            peer = await taken(s, PUNCH_WAIT_S)
        except (TimeoutError, asyncio.CancelledError):
            rz.counts["punch_missed"] += 1
            raise HTTPException(504, "the device did not come to the rendezvous: relay") from None
        finally:
            rz.close(s)
        rz.counts["punch_met"] += 1
        return Met(id=s.id, peer=Endpoint(host=peer[0], port=peer[1]))

    @router.post("/nodes/me/punch/{session_id}", tags=["nodes"])
    async def punched(session_id: SessionId, request: Request, who: Principal = node) -> Met:
        """The device comes to the rendezvous, from the local port it will dial from; answers
        the fetcher's observed address (the fetcher is told the device's at the same moment)."""
        s = rz.sessions.get(session_id)
        if s is None or s.kind != "punch" or s.node_id != who.id or s.done.done():
            raise HTTPException(404, "no such rendezvous waiting for this device (it expired?)")
        if request.client is None:
            raise HTTPException(400, "the coordinator cannot tell where this request comes from")
        s.done.set_result((request.client.host, request.client.port))
        assert s.fetcher is not None
        return Met(peer=Endpoint(host=s.fetcher[0], port=s.fetcher[1]))

    @router.post("/cdn/relay", response_class=Response, responses=SHARE_BYTES)
    async def relay(body: RelayIn, who: Principal = customer) -> Response:
        """One share of a device no connection reaches, carried by the coordinator: the
        device uploads it, the coordinator checks its hash and answers it. 504 when the device
        does not send it within 30 s; 429 over the bounds (core/reach.py)."""
        found = await target(who, body, body.sha)
        admit("relay", who, body.node_id, found["size"])
        s = Session(secrets.token_hex(16), "relay", body.node_id, who.id, body.content_id,
                    time.monotonic(), sha=body.sha, size=found["size"])  # fmt: skip
        rz.open(s)
        try:
            data = await taken(s, RELAY_WAIT_S)
        except (TimeoutError, asyncio.CancelledError):
            rz.counts["relay_missed"] += 1
            raise HTTPException(504, "the device did not relay the share: take another") from None
        except ValueError as e:
            raise HTTPException(502, str(e)) from None
        finally:
            rz.close(s)
        rz.counts["relay_done"] += 1
        return Response(data, media_type="application/octet-stream")

    @router.post("/nodes/me/relay/{session_id}", status_code=204, tags=["nodes"])
    async def relayed(session_id: SessionId, request: Request, who: Principal = node) -> None:
        """The device's upload of a share a fetcher asked through the relay: read to at most
        its size and checked against its hash before it is passed on."""
        s = rz.sessions.get(session_id)
        if s is None or s.kind != "relay" or s.node_id != who.id or s.done.done():
            raise HTTPException(404, "no such relay waiting for this device (it expired?)")
        h = hashlib.sha256()
        parts: list[bytes] = []
        got = 0
        stream = request.stream().__aiter__()
        while True:  # a device that trickles or stalls is cut off when the fetcher's wait ends
            left = s.created + RELAY_WAIT_S - time.monotonic()
            try:
                if left <= 0 or s.done.done():
                    raise TimeoutError
                chunk = await asyncio.wait_for(stream.__anext__(), left)
            except StopAsyncIteration:
                break
            except TimeoutError:
                raise HTTPException(
                    408, "too late: the fetcher's wait for this share ran out"
                ) from None
            got += len(chunk)
            if got > s.size:
                if not s.done.done():
                    s.done.set_exception(ValueError(f"node {who.id} relayed too many bytes"))
                raise HTTPException(413, f"share {s.sha[:12]}… is {s.size} bytes")
            h.update(chunk)
            parts.append(chunk)
        if h.hexdigest() != s.sha:
            reason = (f"the coordinator's own check of CDN share {s.sha[:12]}… it relayed: "
                      "the node sent the wrong bytes")  # fmt: skip
            log.warning("node %s quarantined: %s", who.id, reason)
            await run_in_threadpool(store.cdn_share_failed, who.id, s.sha, reason, time.time())
            if not s.done.done():
                s.done.set_exception(ValueError(f"node {who.id} relayed wrong bytes"))
            raise HTTPException(422, "those bytes are not the share asked for")
        if s.done.done():
            raise HTTPException(408, "too late: the fetcher's wait for this share ran out")
        rz.note_relayed(s, got, time.monotonic())
        s.done.set_result(b"".join(parts))

    app.include_router(router)
    return rz
