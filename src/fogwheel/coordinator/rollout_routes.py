"""Roll-out routes, the agent offers in sync answers, and the duty that judges roll-outs.

    GET  /v1/rollouts                    roll-outs with their recorded steps (operator: all;
                                         customer: those of its apps)
    GET  /v1/rollouts/{id}               one of them
    POST /v1/rollouts/{id}/cancel        stop it: every device back on the old version
    POST /v1/apps/{name}/rollouts        roll a published version of your app out (customer)
    POST /v1/agent/releases              publish a node agent wheel (body) and roll it out
    GET  /v1/agent/releases              published agent versions and the fleet's spread
    GET  /v1/nodes/me/agent/{version}    a node fetches a published wheel
    POST /v1/nodes/me/agent/switch       a canary node says it will re-execute into a version
                                         (`accepted`), or came back without it (`back`)

A published wheel is read (bounded) before it is kept: it must be a zip holding the `fogwheel`
package and a dist-info whose METADATA says the version it is published as. The coordinator
signs (version, SHA-256, size) with the key every node pinned (agent_release.py).
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import time
import zipfile
from typing import Annotated, Any, Literal

from fastapi import APIRouter, FastAPI, HTTPException, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import Field
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from fogwheel import agent_release
from fogwheel.blobs import BlobStore
from fogwheel.coordinator.auth import Authenticator
from fogwheel.coordinator.identity import caller
from fogwheel.core import rollout
from fogwheel.protocol import AgentOffer, AgentVersion, Model, Problem
from fogwheel.store import Principal, Store
from fogwheel.store import apps as app_rows
from fogwheel.store import rollouts as rows
from fogwheel.store.schema import apps as app_table

log = logging.getLogger("fogwheel.coordinator")

ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": Problem, "description": "No such roll-out or agent version"},
    409: {"model": Problem, "description": "Another roll-out of it is active, or it is over"},
    422: {"model": Problem, "description": "The wheel, version or share is not valid"},
}
DEFAULT_PERIOD_S = 5.0  # FOGWHEEL_ROLLOUT_S: how often the duty judges active roll-outs
OFFER_CACHE_S = 1.0  # a sync reads the agent roll-out at most this often per process
LIVE_CACHE_S = 5.0  # ... and the live devices (a step's fleet) this often
MAX_METADATA = 256 * 1024
DEFAULT_POLICY = rollout.RolloutPolicy()


class Outcomes(Model):
    ok: int
    failed: int


class RolloutStep(Model):
    at: float
    action: str = Field(description="start | promote | rollback | done | cancel")
    step: int
    share: float
    old: Outcomes
    new: Outcomes
    reason: str


class RolloutOut(Model):
    id: str
    kind: str = Field(description="app | agent")
    subject: str = Field(description="the app's id, or 'agent'")
    old_version: str | None
    new_version: str
    steps: list[float] = Field(description="the shares of the policy, ending at 1.0")
    margin: float
    alpha: float
    min_outcomes: int
    step: int
    share: float
    state: str = Field(description="active | done | rolled_back | cancelled")
    reason: str = Field(description="the last decision, in a sentence with its counts")
    created_at: float
    updated_at: float
    history: list[RolloutStep] = Field(description="every promotion, roll-back and the start")


class RolloutList(Model):
    rollouts: list[RolloutOut]


class AppRolloutIn(Model):
    """Roll version `version` (a label, an id or a unique prefix) of an app out from `canary`."""

    version: str = Field(min_length=1, max_length=64)
    canary: str = Field(default="10%", max_length=16, description="the first step's share")
    margin: float = Field(default=0.05, ge=0, lt=1)
    alpha: float = Field(default=0.01, gt=0, lt=0.5)
    min_outcomes: int = Field(default=20, ge=1, le=1_000_000)


class AgentSwitchIn(Model):
    """A canary node on its way to `version`: `accepted` (checked and unpacked; it re-executes
    once its tasks are done), `back` (it re-executed into it, which never synced, and its
    installed version started again) or `failed` (unpacked, it could not start it here)."""

    version: AgentVersion
    event: Literal["accepted", "back", "failed"]


class AgentRelease(Model):
    version: str
    sha: str
    size: int
    created_at: float


class AgentReleases(Model):
    releases: list[AgentRelease]
    spread: dict[str, int] = Field(description="live devices per agent version")
    rollout: RolloutOut | None = Field(description="the newest agent roll-out")


def rollout_out(ro: rows.Rollout, history: list[dict[str, Any]]) -> RolloutOut:
    return RolloutOut(
        id=ro.id,
        kind=ro.kind,
        subject=ro.subject,
        old_version=ro.old_version,
        new_version=ro.new_version,
        steps=list(ro.policy.steps),
        margin=ro.policy.margin,
        alpha=ro.policy.alpha,
        min_outcomes=ro.policy.min_outcomes,
        step=ro.step,
        share=ro.share,
        state=ro.state.value,
        reason=ro.reason,
        created_at=ro.created_at,
        updated_at=ro.updated_at,
        history=[RolloutStep(**h) for h in history],
    )


def wheel_version(data: bytes) -> str:
    """The version a fogwheel wheel's METADATA says; ValueError with what is wrong."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise ValueError(
            "the body is not a wheel (a zip file): build one with `pip wheel .`"
        ) from None
    with zf:
        names = zf.namelist()
        if "fogwheel/__init__.py" not in names:
            raise ValueError("the wheel holds no fogwheel package: it is not a node agent")
        meta = [n for n in names if n.count("/") == 1 and n.endswith(".dist-info/METADATA")]
        if len(meta) != 1 or not meta[0].startswith("fogwheel-"):
            raise ValueError("the wheel has no single fogwheel-*.dist-info/METADATA")
        info = zf.getinfo(meta[0])
        if info.file_size > MAX_METADATA:
            raise ValueError("the wheel's METADATA is over 256 KiB")
        text = zf.read(meta[0]).decode("utf-8", "replace")
    for line in text.splitlines():
        if line.startswith("Version:"):
            return line.split(":", 1)[1].strip()
    raise ValueError("the wheel's METADATA names no Version")


class AgentOffers:
    """What each syncing node is told about agent versions: the version it runs is noted
    (a write only when it changed), and a node that should run another gets an offer."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._told: dict[str, str] = {}  # node id -> version noted by this process
        self._latest: tuple[float, rows.Rollout | None] = (-1e18, None)
        self._releases: dict[str, dict[str, Any] | None] = {}
        self._live: tuple[float, list[str]] = (-1e18, [])

    def forget(self) -> None:
        """Read the roll-out afresh on the next sync (after a change made here)."""
        self._latest = (-1e18, None)
        self._releases.clear()

    def offer(self, node_id: str, running: str | None, now: float) -> AgentOffer | None:
        if running is not None and self._told.get(node_id) != running:
            rows.note_agent_version(self.store, node_id, running, now)
            self._told[node_id] = running
        at, ro = self._latest
        if now - at > OFFER_CACHE_S:
            ro = rows.latest(self.store, rows.AGENT, rows.AGENT)
            self._latest = (now, ro)
        if ro is None or running is None:
            return None
        if now - self._live[0] > LIVE_CACHE_S:
            self._live = (now, rows.live_nodes(self.store, now))
        live, at = self._live[1], self._live[0]
        wanted = ro.wanted(node_id, rows.floor_of(ro, live, at), rows.kept_of(ro, live, at))
        if wanted is None or wanted == running:
            return None
        if wanted not in self._releases:
            self._releases[wanted] = rows.agent_version(self.store, wanted)
        rel = self._releases[wanted]
        if rel is None:  # the old side is the version nodes were installed with
            return AgentOffer(version=wanted, rollout=ro.id)
        return AgentOffer(
            version=wanted,
            sha=rel["sha"],
            size=rel["size"],
            signature=rel["signature"],
            rollout=ro.id,
        )


def build_rollout_routes(
    app: FastAPI, store: Store, auth: Authenticator, blobs: BlobStore, signing_key: Any
) -> AgentOffers:
    """Add the roll-out routes to `app`; returns the AgentOffers the sync route asks."""
    v1 = APIRouter(prefix="/v1", responses=ERRORS, tags=["rollouts"])
    admin = caller(auth, "admin")
    admin_or_customer = caller(auth, "admin", "customer")
    node = caller(auth, "node")
    offers = AgentOffers(store)

    def visible(rid: str, who: Principal) -> rows.Rollout:
        ro = rows.get(store, rid)
        if ro is None or (who.kind == "customer" and ro.customer_id != who.id):
            raise HTTPException(404, f"no roll-out {rid[:40]!r} of yours")
        return ro

    def out(ros: list[rows.Rollout]) -> list[RolloutOut]:
        history = rows.steps_of(store, [r.id for r in ros])
        return [rollout_out(r, history[r.id]) for r in ros]

    @v1.get("/rollouts")
    def list_rollouts(
        kind: Annotated[str | None, Query(pattern="^(app|agent)$")] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 100,
        who: Principal = admin_or_customer,
    ) -> RolloutList:
        """Roll-outs newest first, each with its recorded steps and reasons."""
        mine = who.id if who.kind == "customer" else None
        return RolloutList(
            rollouts=out(rows.listing(store, customer_id=mine, kind=kind, limit=limit))
        )

    @v1.get("/rollouts/{rid}")
    def get_rollout(rid: str, who: Principal = admin_or_customer) -> RolloutOut:
        """One roll-out with its recorded steps."""
        return out([visible(rid, who)])[0]

    @v1.post("/rollouts/{rid}/cancel")
    def cancel_rollout(rid: str, who: Principal = admin_or_customer) -> RolloutOut:
        """Stop an active roll-out: every device goes back to the old version."""
        visible(rid, who)
        try:
            ro = rows.cancel(
                store, rid, "the operator" if who.kind == "admin" else who.id, time.time()
            )
        except rows.RolloutRefused as e:
            raise HTTPException(409, str(e)) from None
        offers.forget()
        return out([ro])[0]

    customer = caller(auth, "customer")

    @v1.post("/apps/{name}/rollouts", status_code=201)
    def roll_app(name: str, body: AppRolloutIn, who: Principal = customer) -> RolloutOut:
        """Roll a published version of your app out in steps from `canary` of the devices,
        against the current version; promoted or rolled back by the outcomes of its tasks."""
        try:
            share = rollout.parse_share(body.canary)
            base = rollout.RolloutPolicy(
                margin=body.margin, alpha=body.alpha, min_outcomes=body.min_outcomes
            )
            policy = rollout.policy_for_canary(share, base)
        except ValueError as e:
            raise HTTPException(422, str(e)) from None
        with store.read() as c:
            app_id = app_rows.app_id_of(c, who.id, name)
            if app_id is None:
                raise HTTPException(404, f"you have no app {name[:64]!r}")
            vid = app_rows.resolve_version(c, app_id, body.version)
            current = c.execute(
                select(app_table.c.current).where(app_table.c.id == app_id)
            ).scalar()
        if vid is None:
            raise HTTPException(404, f"app {name} has no version {body.version[:64]!r}")
        if current is None:
            raise HTTPException(
                409, f"app {name} has no current version to compare with: make one current"
            )
        try:
            ro = rows.start(
                store,
                kind="app",
                subject=app_id,
                old_version=current,
                new_version=vid,
                policy=policy,
                now=time.time(),
                customer_id=who.id,
            )
        except rows.RolloutRefused as e:
            raise HTTPException(409, str(e)) from None
        log.info("app %s (%s): %s", name, app_id, ro.reason)
        return out([ro])[0]

    @v1.post(
        "/agent/releases",
        status_code=201,
        dependencies=[admin],
        openapi_extra={
            "requestBody": {
                "content": {
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
                },
                "required": True,
            }
        },
    )
    async def publish_agent(
        request: Request,
        version: Annotated[str, Query(max_length=64)],
        canary: Annotated[str, Query(max_length=16)] = "10%",
        margin: Annotated[float, Query(ge=0, lt=1)] = DEFAULT_POLICY.margin,
        alpha: Annotated[float, Query(gt=0, lt=0.5)] = DEFAULT_POLICY.alpha,
        min_outcomes: Annotated[int, Query(ge=1, le=1_000_000)] = DEFAULT_POLICY.min_outcomes,
    ) -> RolloutOut:
        """Publish a node agent wheel (the body) as `version` and roll it out from `canary`
        of the devices (10 → 50 → 100 % by default), judged by the tasks they run."""
        try:
            share = rollout.parse_share(canary)
            base = rollout.RolloutPolicy(margin=margin, alpha=alpha, min_outcomes=min_outcomes)
            policy = rollout.policy_for_canary(share, base)
            agent_release.statement(version, "0" * 64, 1)  # the version's form
        except ValueError as e:
            raise HTTPException(422, str(e)) from None
        data = await request.body()
        if not data:
            raise HTTPException(422, "the body is empty: send the wheel's bytes")
        return await run_in_threadpool(_publish, data, version, policy)

    def _publish(data: bytes, version: str, policy: rollout.RolloutPolicy) -> RolloutOut:
        try:
            said = wheel_version(data)
        except ValueError as e:
            raise HTTPException(422, str(e)) from None
        if said != version:
            raise HTTPException(
                422,
                f"the wheel says version {said[:64]!r}, not {version!r}: publish it as that",
            )
        now = time.time()
        sha = blobs.put(data)
        signature = agent_release.sign_release(signing_key, version, sha, len(data))
        old = rows.most_common_agent(store, now)
        try:
            rows.add_agent_version(store, version, sha, len(data), signature, now)
            ro = rows.start(
                store,
                kind=rows.AGENT,
                subject=rows.AGENT,
                old_version=old,
                new_version=version,
                policy=policy,
                now=now,
            )
        except rows.RolloutRefused as e:
            raise HTTPException(409, str(e)) from None
        offers.forget()
        log.info("agent %s published (%s, %d bytes): %s", version, sha[:12], len(data), ro.reason)
        return out([ro])[0]

    @v1.get("/agent/releases", dependencies=[admin])
    def list_agent_releases() -> AgentReleases:
        """Published agent versions, how many live devices run each version, the roll-out."""
        ro = rows.latest(store, rows.AGENT, rows.AGENT)
        return AgentReleases(
            releases=[AgentRelease(**r) for r in rows.agent_versions_list(store)],
            spread=rows.version_spread(store, time.time()),
            rollout=out([ro])[0] if ro is not None else None,
        )

    @v1.get(
        "/nodes/me/agent/{version}",
        tags=["nodes"],
        dependencies=[node],
        response_class=StreamingResponse,
        responses={200: {"content": {"application/octet-stream": {}}}},
    )
    def fetch_agent(version: str) -> StreamingResponse:
        """A published agent wheel's bytes (the node checks its hash and signature)."""
        rel = rows.agent_version(store, version)
        if rel is None:
            raise HTTPException(404, f"no published agent version {version[:64]!r}")
        f = blobs.open_verified(rel["sha"])
        return StreamingResponse(
            blobs.chunks(f),
            media_type="application/octet-stream",
            headers={"Content-Length": str(rel["size"])},
        )

    @v1.post("/nodes/me/agent/switch", tags=["nodes"], status_code=204)
    def agent_switch(body: AgentSwitchIn, who: Principal = node) -> Response:
        """A canary node says it will re-execute into the roll-out's new agent version, that it
        came back on its installed one without it, or could not start it: a device that does
        not come up on the new version is one of its failures (docs/rollouts.md)."""
        now = time.time()
        try:
            if body.event == "back":
                rid = rows.switch_back(store, who.id, body.version, now)
            else:
                failed = body.event == "failed"
                rid = rows.switch_accepted(store, who.id, body.version, now, failed=failed)
        except rows.RolloutRefused as e:
            raise HTTPException(409, str(e)) from None
        log.info("roll-out %s: node %s %s %s", rid, who.id, body.event, body.version)
        return Response(status_code=204)

    app.include_router(v1)
    app.state.agent_offers = offers
    return offers


def rollout_period_s() -> float:
    return float(os.environ.get("FOGWHEEL_ROLLOUT_S", DEFAULT_PERIOD_S))


def come_up_s() -> float | None:
    """FOGWHEEL_ROLLOUT_COME_UP_S: how long a canary device may stay silent after it said it
    would re-execute into a new agent before it counts as that version's failure; None (unset):
    the gone horizon (--gone-after), the silence after which the coordinator counts any device
    gone."""
    raw = os.environ.get("FOGWHEEL_ROLLOUT_COME_UP_S")
    return float(raw) if raw else None


async def judge_forever(store: Store, period_s: float, offers: AgentOffers | None = None) -> None:
    """Judge every active roll-out each `period_s`, for as long as the coordinator runs."""
    bound_s = come_up_s()
    while True:
        await asyncio.sleep(period_s)
        try:
            applied = await run_in_threadpool(rows.evaluate, store, time.time(), bound_s)
        except Exception:
            log.exception("roll-out judgement failed; the next one is in %.0f s", period_s)
            continue
        for a in applied:
            if a.decision.action != "hold":
                log.info("roll-out %s (%s): %s", a.rollout.id, a.rollout.subject, a.decision.reason)
                if offers is not None:
                    offers.forget()
