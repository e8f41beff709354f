"""Roll-outs in the store: where each stands, the outcomes of each version, every decision.

A roll-out (core/rollout.py) moves an app (`kind` app, `subject` its id) or the node agent
(`kind` agent, `subject` "agent") from `old_version` to `new_version` in steps. The duty
`evaluate` (one coordinator at a time, store.duty) counts each active roll-out's outcomes since
its step began, asks core/rollout.decide, and writes the decision: a promotion, a roll-back or
the end is a `rollout_steps` row with its counts and its sentence; a hold only refreshes the
roll-out's `reason`.

Outcomes. An attempt ran one version: an app's attempts carry the version their lease bound
(attempts.app_version, store/apps.py); an agent's are those of the nodes whose sync said that
agent version, ended after the node started running it (nodes.agent_since). An attempt counts
as a success when its task was settled done, and as a failure when the task was settled
failed or the attempt was lost (a crash, a vanished node: both versions see those alike, and a
crashing agent loses its leases). A task that fails on an app version under canary is queued
again with one more attempt (core/intake.py `Batch.canary`, counted here as lost): the job
finishes on the old version while the new one is judged.

Canary devices that change agent version. A node that took an offer says so before it stops
to re-execute (`switch_accepted`, a `rollout_switches` row); its first sync on the new version
marks the row `up` (`note_agent_version`), the installed version coming back after the new one
never synced says `back` (`switch_back`), and the duty marks `late` a device silent for longer
than the bound since then (core/rollout.switch_overdue). Those that did not come up are failed
outcomes of the new version (core/rollout.Devices): an agent that cannot start reports nothing.

Which version a device gets: `wanted` (core/rollout.py in_canary, plus the floor of
ceil(share * live devices) so that a small fleet's step reaches someone); for an app,
`app_version_for` answers store/apps.py's `version_for` hook at lease time, and a roll-out
that is done makes its version the app's current one.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, and_, case, func, insert, or_, select, update

from fogwheel.core import rollout
from fogwheel.core.rollout import Arm, Decision, Devices, RolloutPolicy, RolloutState
from fogwheel.errors import IllegalTransition
from fogwheel.store.base import StoreBase
from fogwheel.store.schema import (
    agent_versions,
    apps,
    attempts,
    nodes,
    rollout_steps,
    rollout_switches,
    rollouts,
    tasks,
)

AGENT = "agent"  # the subject of every agent roll-out
FINISHED = ("accepted", "agreed", "reported")  # attempt outcomes: it ran to the end
STEPS_SHOWN = 50  # a roll-out's last decisions that the console lists


class RolloutRefused(ValueError):
    """A roll-out cannot start or change: the sentence says why and what to do."""


@dataclass(frozen=True, slots=True)
class Rollout:
    """A roll-out row as the store's callers see it."""

    id: str
    kind: str
    subject: str
    customer_id: str | None
    old_version: str | None
    new_version: str
    policy: RolloutPolicy
    step: int
    share: float
    state: RolloutState
    reason: str
    created_at: float
    step_started_at: float
    updated_at: float

    def serves_new(
        self, device: str, floor: frozenset[str] = frozenset(), kept: frozenset[str] = frozenset()
    ) -> bool:
        """Whether `device` runs the new version now; `floor` (floor_of: the devices a step
        covers whatever their hash) lets a step reach at least its share rounded up, `kept`
        (kept_of: core/rollout.canary_baseline) leaves a step under 100 % a baseline device."""
        if self.state is RolloutState.ACTIVE and device in kept:
            return False
        if self.state is RolloutState.ACTIVE and device in floor:
            return True
        return rollout.serves_new(self.state, self.share, rollout.canary_point(self.id, device))

    def wanted(
        self, device: str, floor: frozenset[str] = frozenset(), kept: frozenset[str] = frozenset()
    ) -> str | None:
        """The version `device` should run now (None: the old one is unnamed, the base)."""
        return self.new_version if self.serves_new(device, floor, kept) else self.old_version


_floors: dict[tuple[str, float, float], frozenset[str]] = {}


def floor_of(ro: Rollout, live: Sequence[str], live_at: float) -> frozenset[str]:
    """core/rollout.canary_floor of the live fleet read at `live_at`, worked out once per
    roll-out, share and fleet snapshot (it hashes every live device: not once per sync)."""
    if ro.state is not RolloutState.ACTIVE or not live:
        return frozenset()
    key = (ro.id, ro.share, live_at)
    got = _floors.get(key)
    if got is None:
        if len(_floors) > 64:
            _floors.clear()
        got = _floors[key] = rollout.canary_floor(ro.id, live, ro.share)
    return got


_kept: dict[tuple[str, float, float], frozenset[str]] = {}


def kept_of(ro: Rollout, live: Sequence[str], live_at: float) -> frozenset[str]:
    """core/rollout.canary_baseline of the live fleet read at `live_at`, cached as floor_of."""
    if ro.state is not RolloutState.ACTIVE or not live:
        return frozenset()
    key = (ro.id, ro.share, live_at)
    got = _kept.get(key)
    if got is None:
        if len(_kept) > 64:
            _kept.clear()
        got = _kept[key] = rollout.canary_baseline(ro.id, live, ro.share)
    return got


def policy_json(policy: RolloutPolicy) -> str:
    return json.dumps(
        {
            "steps": list(policy.steps),
            "margin": policy.margin,
            "alpha": policy.alpha,
            "min_outcomes": policy.min_outcomes,
        }
    )


def _policy(text: str) -> RolloutPolicy:
    raw = json.loads(text)
    return RolloutPolicy(tuple(raw["steps"]), raw["margin"], raw["alpha"], int(raw["min_outcomes"]))


def _row(r: Any) -> Rollout:
    return Rollout(
        r.id,
        r.kind,
        r.subject,
        r.customer_id,
        r.old_version,
        r.new_version,
        _policy(r.policy),
        r.step,
        r.share,
        RolloutState(r.state),
        r.reason,
        r.created_at,
        r.step_started_at,
        r.updated_at,
    )


def start(
    store: StoreBase,
    *,
    kind: str,
    subject: str,
    old_version: str | None,
    new_version: str,
    policy: RolloutPolicy,
    now: float,
    customer_id: str | None = None,
) -> Rollout:
    """Begin a roll-out at its first step; RolloutRefused while another of the subject runs."""
    if kind not in ("app", AGENT):
        raise RolloutRefused(f"kind {kind!r}: a roll-out is of an app or of the agent")
    if old_version == new_version:
        raise RolloutRefused(f"version {new_version} is the one running already: nothing to roll")
    rid = "ro_" + secrets.token_hex(6)
    share = policy.steps[0]
    reason = (
        f"started: {share:.0%} of devices run {_short(new_version)} "
        f"(the rest {_short(old_version) if old_version else 'their installed version'})"
    )
    with store.tx() as c:
        busy = c.execute(
            select(rollouts.c.id).where(
                rollouts.c.kind == kind,
                rollouts.c.subject == subject,
                rollouts.c.state == RolloutState.ACTIVE.value,
            )
        ).first()
        if busy is not None:
            raise RolloutRefused(
                f"roll-out {busy.id} of {subject} is still active: wait for it to finish or "
                f"cancel it (POST /v1/rollouts/{busy.id}/cancel)"
            )
        c.execute(
            insert(rollouts).values(
                id=rid,
                kind=kind,
                subject=subject,
                customer_id=customer_id,
                old_version=old_version,
                new_version=new_version,
                policy=policy_json(policy),
                step=0,
                share=share,
                state=RolloutState.ACTIVE.value,
                reason=reason,
                created_at=now,
                step_started_at=now,
                updated_at=now,
            )
        )
        _record(c, rid, "start", 0, share, Arm(0, 0), Arm(0, 0), reason, now)
    got = get(store, rid)
    assert got is not None
    return got


def _short(version: str) -> str:
    """A version for a sentence: an app version's 64-hex id cut to 12 digits."""
    return version[:12] if len(version) == 64 else version


def _record(
    c: Connection,
    rid: str,
    action: str,
    step: int,
    share: float,
    old: Arm,
    new: Arm,
    reason: str,
    now: float,
) -> None:
    c.execute(
        insert(rollout_steps).values(
            rollout_id=rid,
            at=now,
            action=action,
            step=step,
            share=share,
            old_ok=old.ok,
            old_failed=old.failed,
            new_ok=new.ok,
            new_failed=new.failed,
            reason=reason,
        )
    )


def get(store: StoreBase, rid: str) -> Rollout | None:
    with store.read() as c:
        r = c.execute(select(rollouts).where(rollouts.c.id == rid)).first()
    return _row(r) if r is not None else None


def listing(
    store: StoreBase, *, customer_id: str | None = None, kind: str | None = None, limit: int = 100
) -> list[Rollout]:
    """Roll-outs newest first; a customer's own only when `customer_id` is given."""
    q = select(rollouts).order_by(rollouts.c.created_at.desc()).limit(limit)
    if customer_id is not None:
        q = q.where(rollouts.c.customer_id == customer_id)
    if kind is not None:
        q = q.where(rollouts.c.kind == kind)
    with store.read() as c:
        return [_row(r) for r in c.execute(q).all()]


def latest(store: StoreBase, kind: str, subject: str) -> Rollout | None:
    """The subject's newest roll-out, in whatever state."""
    q = (
        select(rollouts)
        .where(rollouts.c.kind == kind, rollouts.c.subject == subject)
        .order_by(rollouts.c.created_at.desc(), rollouts.c.id.desc())
        .limit(1)
    )
    with store.read() as c:
        r = c.execute(q).first()
    return _row(r) if r is not None else None


def steps_of(store: StoreBase, rids: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    """Each roll-out's recorded decisions, oldest first (the last STEPS_SHOWN)."""
    out: dict[str, list[dict[str, Any]]] = {rid: [] for rid in rids}
    if not rids:
        return out
    q = (
        select(rollout_steps)
        .where(rollout_steps.c.rollout_id.in_(list(rids)))
        .order_by(rollout_steps.c.id)
    )
    with store.read() as c:
        for r in c.execute(q).all():
            out[r.rollout_id].append(
                {
                    "at": r.at,
                    "action": r.action,
                    "step": r.step,
                    "share": r.share,
                    "old": {"ok": r.old_ok, "failed": r.old_failed},
                    "new": {"ok": r.new_ok, "failed": r.new_failed},
                    "reason": r.reason,
                }
            )
    return {rid: rows[-STEPS_SHOWN:] for rid, rows in out.items()}


# -- outcomes -----------------------------------------------------------------------------


def _tally(c: Connection, q: Any) -> dict[str | None, Arm]:
    out: dict[str | None, Arm] = {}
    for version, ok, failed in c.execute(q).all():
        out[version] = Arm(int(ok or 0), int(failed or 0))
    return out


def outcomes(c: Connection, ro: Rollout, since: float) -> tuple[Arm, Arm]:
    """(old, new): the outcomes of attempts of each version that ended at `since` or later."""
    done = tasks.c.state == "done"
    bad = tasks.c.state == "failed"
    finished = attempts.c.outcome.in_(FINISHED)
    if ro.kind == AGENT:
        version = nodes.c.agent_version
        q = (
            select(
                version,
                func.sum(case((and_(finished, done), 1), else_=0)),
                func.sum(
                    case((or_(attempts.c.outcome == "lost", and_(finished, bad)), 1), else_=0)
                ),
            )
            .select_from(attempts.join(nodes, nodes.c.id == attempts.c.node_id))
            .join(tasks, tasks.c.id == attempts.c.task_id)
            .where(
                attempts.c.ended_at >= since,
                attempts.c.ended_at >= func.coalesce(nodes.c.agent_since, 0.0),
                version.in_([v for v in (ro.old_version, ro.new_version) if v is not None]),
            )
            .group_by(version)
        )
    else:
        version = attempts.c.app_version
        q = (
            select(
                version,
                func.sum(case((and_(finished, done), 1), else_=0)),
                func.sum(
                    case((or_(attempts.c.outcome == "lost", and_(finished, bad)), 1), else_=0)
                ),
            )
            .select_from(attempts.join(tasks, tasks.c.id == attempts.c.task_id))
            .where(
                attempts.c.ended_at >= since,
                version.in_([v for v in (ro.old_version, ro.new_version) if v is not None]),
            )
            .group_by(version)
        )
    got = _tally(c, q)
    empty = Arm(0, 0)
    return got.get(ro.old_version, empty), got.get(ro.new_version, empty)


# -- the duty -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Applied:
    """A decision the duty wrote (holds included), for the log and the caller."""

    rollout: Rollout
    decision: Decision
    old: Arm
    new: Arm  # its task outcomes; `devices` adds those that did not come up on it
    devices: Devices | None = None


def evaluate(store: StoreBase, now: float, come_up_s: float | None = None) -> list[Applied]:
    """Decide every active roll-out once and write the decisions; [] when another coordinator
    holds the duty this round. `come_up_s` bounds how long a canary device may stay silent
    after it said it would re-execute into a new agent (default: the store's gone horizon)."""
    out: list[Applied] = []
    bound_s = store.gone_after_s if come_up_s is None else come_up_s
    with store.duty("rollouts") as c:
        if c is None:
            return out
        rows = c.execute(
            select(rollouts).where(rollouts.c.state == RolloutState.ACTIVE.value)
        ).all()
        for r in rows:
            ro = _row(r)
            old, new = outcomes(c, ro, ro.step_started_at)
            devices = (
                switched(c, ro, ro.step_started_at, now, bound_s) if ro.kind == AGENT else None
            )
            decision = rollout.decide(ro.policy, ro.step, old, new, devices)
            _apply(c, ro, decision, old, rollout.with_devices(new, devices or Devices()), now)
            out.append(Applied(ro, decision, old, new, devices))
    return out


def switched(c: Connection, ro: Rollout, since: float, now: float, bound_s: float) -> Devices:
    """The canary devices of agent roll-out `ro` whose switch to its new version was settled
    at `since` or later, or is still open: those silent past `bound_s` are marked late first."""
    open_ = c.execute(
        select(rollout_switches.c.id, rollout_switches.c.accepted_at, nodes.c.last_seen)
        .join(nodes, nodes.c.id == rollout_switches.c.node_id)
        .where(rollout_switches.c.rollout_id == ro.id, rollout_switches.c.outcome.is_(None))
    ).all()
    overdue = [
        r.id for r in open_ if rollout.switch_overdue(r.accepted_at, r.last_seen, now, bound_s)
    ]
    if overdue:
        c.execute(
            update(rollout_switches)
            .where(rollout_switches.c.id.in_(overdue), rollout_switches.c.outcome.is_(None))
            .values(outcome=rollout.next_switch(None, "late"), resolved_at=now)
        )
    q = (
        select(func.coalesce(rollout_switches.c.outcome, "starting"), func.count())
        .where(
            rollout_switches.c.rollout_id == ro.id,
            or_(rollout_switches.c.outcome.is_(None), rollout_switches.c.resolved_at >= since),
        )
        .group_by(rollout_switches.c.outcome)
    )
    counts: dict[str, int] = {str(k): int(n) for k, n in c.execute(q).all()}
    return Devices(
        ro.new_version,
        up=int(counts.get("up", 0)),
        back=int(counts.get("back", 0)),
        late=int(counts.get("late", 0)),
        starting=int(counts.get("starting", 0)),
        bound_s=bound_s,
    )


MAX_SWITCHES = 20  # a device's switches counted per roll-out (one a retry: 10 min apart)


def switch_accepted(
    store: StoreBase, node_id: str, version: str, now: float, *, failed: bool = False
) -> str:
    """A canary device took the offer of `version` and will re-execute into it once its tasks
    are done (or, `failed`, it found that it cannot start it: a switch settled `back` at
    once); the roll-out's id. RolloutRefused when no active roll-out offers it that."""
    ro = latest(store, AGENT, AGENT)
    if ro is None or ro.state is not RolloutState.ACTIVE or ro.new_version != version:
        raise RolloutRefused(f"no active agent roll-out offers version {version[:64]!r}")
    live = live_nodes(store, now)
    floor = rollout.canary_floor(ro.id, live, ro.share)
    kept = rollout.canary_baseline(ro.id, live, ro.share)
    if ro.wanted(node_id, floor, kept) != version:
        raise RolloutRefused(f"this device is not in the canary of {ro.id} at {ro.share:.0%}")
    mine = and_(rollout_switches.c.rollout_id == ro.id, rollout_switches.c.node_id == node_id)
    with store.tx() as c:
        on_way = c.execute(
            select(rollout_switches.c.id).where(mine, rollout_switches.c.outcome.is_(None))
        ).first()
        if on_way is not None and not failed:
            return ro.id  # said already: it is on its way
        if c.execute(select(func.count()).where(mine)).scalar_one() >= MAX_SWITCHES:
            raise RolloutRefused(f"this device switched {MAX_SWITCHES} times in {ro.id} already")
        if on_way is not None:  # it said it was on its way: that is how it went
            c.execute(
                update(rollout_switches)
                .where(rollout_switches.c.id == on_way.id, rollout_switches.c.outcome.is_(None))
                .values(outcome=rollout.next_switch(None, "back"), resolved_at=now)
            )
            return ro.id
        c.execute(
            insert(rollout_switches).values(
                rollout_id=ro.id,
                node_id=node_id,
                version=version,
                accepted_at=now,
                outcome="back" if failed else None,
                resolved_at=now if failed else None,
            )
        )
    return ro.id


def switch_back(store: StoreBase, node_id: str, version: str, now: float) -> str:
    """The device came back on its installed version: `version`, which it re-executed into,
    never synced. The roll-out's id; RolloutRefused when it had said no such switch."""
    with store.tx() as c:
        r = c.execute(
            select(rollout_switches.c.id, rollout_switches.c.rollout_id)
            .where(
                rollout_switches.c.node_id == node_id,
                rollout_switches.c.version == version,
                rollout_switches.c.outcome.is_(None),
            )
            .order_by(rollout_switches.c.id.desc())
            .limit(1)
        ).first()
        if r is None:
            raise RolloutRefused(
                f"this device has no open switch to {version[:64]!r} (it was judged already, "
                "or it never said it would re-execute into it)"
            )
        c.execute(
            update(rollout_switches)
            .where(rollout_switches.c.id == r.id, rollout_switches.c.outcome.is_(None))
            .values(outcome=rollout.next_switch(None, "back"), resolved_at=now)
        )
    return str(r.rollout_id)


def _apply(c: Connection, ro: Rollout, d: Decision, old: Arm, new: Arm, now: float) -> None:
    state = rollout.next_state(ro.state, d.action)
    values: dict[str, Any] = {"reason": d.reason, "updated_at": now, "state": state.value}
    if d.action != "hold":
        values.update(step=d.step, share=d.share)
        if d.action == "promote":
            values["step_started_at"] = now
        if d.action == "done" and ro.kind == "app":  # everyone runs it: it is the current one
            c.execute(update(apps).where(apps.c.id == ro.subject).values(current=ro.new_version))
        _record(c, ro.id, d.action, d.step, d.share, old, new, d.reason, now)
    elif d.reason == ro.reason:
        return
    c.execute(update(rollouts).where(rollouts.c.id == ro.id).values(**values))


def cancel(store: StoreBase, rid: str, who: str, now: float) -> Rollout:
    """Stop an active roll-out: every device goes back to the old version."""
    ro = get(store, rid)
    if ro is None:
        raise KeyError(rid)
    try:
        state = rollout.next_state(ro.state, "cancel")
    except IllegalTransition as e:
        raise RolloutRefused(f"{e}: it is over already") from None
    back = _short(ro.old_version) if ro.old_version else "its installed version"
    reason = f"cancelled by {who} at {ro.share:.0%}: every device goes back to {back}"
    with store.tx() as c:
        changed = c.execute(
            update(rollouts)
            .where(rollouts.c.id == rid, rollouts.c.state == RolloutState.ACTIVE.value)
            .values(state=state.value, reason=reason, updated_at=now)
        ).rowcount
        if changed:
            _record(c, rid, "cancel", ro.step, 0.0, Arm(0, 0), Arm(0, 0), reason, now)
    got = get(store, rid)
    assert got is not None
    return got


# -- agent versions -----------------------------------------------------------------------


def add_agent_version(
    store: StoreBase, version: str, sha: str, size: int, signature: str, now: float
) -> None:
    """Record a published agent wheel; RolloutRefused when the version names another wheel."""
    with store.tx() as c:
        had = c.execute(
            select(agent_versions.c.sha).where(agent_versions.c.version == version)
        ).first()
        if had is not None:
            if had.sha != sha:
                raise RolloutRefused(
                    f"agent version {version} was published with another wheel "
                    f"({had.sha[:12]}…): give the new wheel a new version"
                )
            return
        c.execute(
            insert(agent_versions).values(
                version=version, sha=sha, size=size, signature=signature, created_at=now
            )
        )


def agent_version(store: StoreBase, version: str) -> dict[str, Any] | None:
    with store.read() as c:
        r = c.execute(select(agent_versions).where(agent_versions.c.version == version)).first()
    if r is None:
        return None
    return {"version": r.version, "sha": r.sha, "size": r.size, "signature": r.signature}


def agent_versions_list(store: StoreBase) -> list[dict[str, Any]]:
    with store.read() as c:
        rows = c.execute(select(agent_versions).order_by(agent_versions.c.created_at)).all()
    return [
        {"version": r.version, "sha": r.sha, "size": r.size, "created_at": r.created_at}
        for r in rows
    ]


def note_agent_version(store: StoreBase, node_id: str, version: str, now: float) -> None:
    """A node said it runs `version`: remember it, and since when (only when it changed)."""
    with store.tx() as c:
        c.execute(
            update(nodes)
            .where(
                nodes.c.id == node_id,
                or_(nodes.c.agent_version.is_(None), nodes.c.agent_version != version),
            )
            .values(agent_version=version, agent_since=now)
        )
        c.execute(  # a canary device that re-executed into it came up on it
            update(rollout_switches)
            .where(
                rollout_switches.c.node_id == node_id,
                rollout_switches.c.version == version,
                rollout_switches.c.outcome.is_(None),
            )
            .values(outcome=rollout.next_switch(None, "up"), resolved_at=now)
        )


def version_spread(store: StoreBase, now: float) -> dict[str, int]:
    """How many devices seen within the store's gone horizon run each agent version."""
    horizon = now - store.gone_after_s
    q = (
        select(func.coalesce(nodes.c.agent_version, "unknown"), func.count())
        .where(nodes.c.last_seen >= horizon, nodes.c.revoked.is_(False))
        .group_by(nodes.c.agent_version)
    )
    with store.read() as c:
        return {v: int(n) for v, n in c.execute(q).all()}


def live_nodes(store: StoreBase, now: float) -> list[str]:
    """The devices heard from within the gone horizon (a canary step's fleet); one that left
    a moment ago to re-execute still counts, so the floor does not move to another."""
    q = select(nodes.c.id).where(
        nodes.c.revoked.is_(False), nodes.c.last_seen >= now - store.gone_after_s
    )
    with store.read() as c:
        return list(c.execute(q).scalars())


def most_common_agent(store: StoreBase, now: float) -> str | None:
    """The agent version most live devices run (the old side of a new agent roll-out)."""
    spread = {v: n for v, n in version_spread(store, now).items() if v != "unknown"}
    return max(spread, key=lambda v: (spread[v], v)) if spread else None


# -- app canaries: the lease-time hook and the intake's question ------------------------------

LIVE_CACHE_S = 5.0
_live_cache: dict[int, tuple[float, list[str]]] = {}  # per engine: (monotonic time, node ids)


def _live_cached(c: Connection, gone_after_s: float) -> tuple[float, list[str]]:
    """(when read, the live devices), read at most every LIVE_CACHE_S per process (the one
    clock read in the store: a lease-time hook has no `now`; a stale fleet only shifts the
    floor)."""
    key = id(c.engine)
    at, ids = _live_cache.get(key, (-1e18, []))
    t = time.monotonic()
    if t - at > LIVE_CACHE_S:
        horizon = time.time() - gone_after_s
        ids = list(
            c.execute(
                select(nodes.c.id).where(nodes.c.revoked.is_(False), nodes.c.last_seen >= horizon)
            ).scalars()
        )
        at = t
        _live_cache[key] = (t, ids)
    return at, ids


def app_version_for(c: Connection, app_id: str, node_id: str) -> str | None:
    """The version an active roll-out of the app gives `node_id` (None: no roll-out runs, the
    app's current version applies)."""
    r = c.execute(
        select(rollouts).where(
            rollouts.c.kind == "app",
            rollouts.c.subject == app_id,
            rollouts.c.state == RolloutState.ACTIVE.value,
        )
    ).first()
    if r is None:
        return None
    ro = _row(r)
    at, live = _live_cached(c, APP_GONE_AFTER_S)
    return ro.wanted(node_id, floor_of(ro, live, at), kept_of(ro, live, at))


APP_GONE_AFTER_S = 120.0  # the live horizon of an app step's fleet (store.gone_after_s's default)


RETRY_AFTER_ROLLBACK_S = 600.0  # failures on a rolled-back version stay its own this long


def _judged(now: float) -> Any:
    """Roll-outs whose new version's failures are its own: active ones, and those rolled
    back or cancelled lately (tasks that ran it then report after the decision)."""
    return or_(
        rollouts.c.state == RolloutState.ACTIVE.value,
        and_(
            rollouts.c.state.in_([RolloutState.ROLLED_BACK.value, RolloutState.CANCELLED.value]),
            rollouts.c.updated_at >= now - RETRY_AFTER_ROLLBACK_S,
        ),
    )


def canary_tasks(
    c: Connection, node_id: str, task_ids: Sequence[int], now: float
) -> frozenset[int]:
    """Of `task_ids` (failures this node reports), those that failed on a version under
    canary (or rolled back from it a moment ago): all of them when the node runs the new
    agent of such an agent roll-out, else those whose open attempt here ran the new version
    of such an app roll-out."""
    if not task_ids:
        return frozenset()
    on_new_agent = c.execute(
        select(rollouts.c.id)
        .join(nodes, nodes.c.agent_version == rollouts.c.new_version)
        .where(nodes.c.id == node_id, rollouts.c.kind == AGENT, _judged(now))
        .limit(1)
    ).first()
    if on_new_agent is not None:
        return frozenset(task_ids)
    q = (
        select(attempts.c.task_id)
        .join(
            rollouts,
            and_(
                rollouts.c.new_version == attempts.c.app_version,
                rollouts.c.kind == "app",
                _judged(now),
            ),
        )
        .where(
            attempts.c.node_id == node_id,
            attempts.c.task_id.in_(list(task_ids)),
            attempts.c.outcome.is_(None),
        )
    )
    return frozenset(c.execute(q).scalars())
