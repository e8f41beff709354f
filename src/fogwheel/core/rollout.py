"""Roll-outs in small steps: who gets the new version, and when to promote or roll back.

A roll-out moves a fleet from an old version (of an app, or of the node agent) to a new one in
steps of the fleet's share, 10 → 50 → 100 % by default, as Kubernetes' rolling updates and
Argo Rollouts' canary steps do. After each step the outcomes of the tasks run on the new
version are compared with those run on the old one, and `decide` answers one of:

- **rollback** when the new version's failure rate exceeds the old one's by more than
  `margin`, with confidence `1 - alpha` (one-sided) — a statistical test, so one unlucky
  failure never rolls anything back;
- **promote** (to the next step) once `min_outcomes` outcomes on the new version show no such
  excess;
- **done** when that happens at the last step (100 %);
- **hold** while there is too little evidence either way.

The test. Kayenta (Spinnaker's canary judge) compares each metric's canary and baseline
samples with a Mann-Whitney U test; Argo Rollouts' analysis compares a metric with a fixed
threshold. A task's outcome is a Bernoulli trial (it failed or it did not), so here the rank
test reduces to comparing two proportions, and the question is one-sided and shifted by a
margin: is p_new - p_old > margin? The answer used is the lower confidence bound of
p_new - p_old by Newcombe's hybrid score method (Newcombe 1998, "Interval estimation for the
difference between independent proportions", method 10), built from the two Wilson score
intervals:

    L = (p_new - p_old) - sqrt((p_new - lo_new)^2 + (hi_old - p_old)^2)

with lo/hi the one-sided Wilson bounds at z = z_(1-alpha). We roll back when L > margin.
Why this and not the textbook z-test (Wald): Wald's interval collapses to a point when a
version fails every task or none (p = 0 or 1 — exactly the cases a roll-out sees most), and its
coverage is poor at the small counts a 10 % canary has; Wilson-based intervals keep near-nominal
coverage there (Brown, Cai & DasGupta 2001), need no exact-test enumeration, and are a few lines
of arithmetic with `statistics.NormalDist`. An old version with no outcomes yet has the whole
[0, 1] as its interval, so nothing is rolled back against a baseline that has not been seen.
On top of the bound, a roll-back needs at least two failures on the new version: one failure is
never enough, whatever the baseline.

Promotion is deliberately less demanding than proof of non-inferiority (which would need
hundreds of outcomes per step at a 5 % margin): after `min_outcomes` outcomes at this step, the
new version is promoted if its observed excess is within the margin; if the observed excess is
over the margin but not yet significant, the step holds and gathers more outcomes.

Who is in the canary: `in_canary` hashes (roll-out, device) to a point in [0, 1) and a device is
in when its point is below the share, so the same devices stay in as the share grows and a
device never flaps between versions while a step lasts.

A new node agent that cannot start runs no task and reports nothing, so outcomes alone would
hold its roll-out forever. A canary device that said it would re-execute into the new agent
and then came back on the old one, or stayed silent past a bound, is therefore one more failed
outcome of the new version (`Devices`, `with_devices`, `switch_overdue`).

Everything here is pure; the store counts the outcomes and applies the decisions.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from statistics import NormalDist
from typing import Literal

from fogwheel.errors import IllegalTransition

Action = Literal["hold", "promote", "rollback", "done"]


@dataclass(frozen=True, slots=True)
class RolloutPolicy:
    """The steps (shares of the fleet, ending at 1.0) and the test's margin, alpha and sample."""

    steps: tuple[float, ...] = (0.10, 0.50, 1.00)
    margin: float = 0.05  # excess failure rate tolerated on the new version
    alpha: float = 0.01  # one-sided: a roll-back is wrong at most this often at the margin
    min_outcomes: int = 20  # outcomes on the new version at a step before it is promoted

    def __post_init__(self) -> None:
        if not self.steps:
            raise ValueError("a roll-out needs at least one step (a share of the fleet)")
        if any(not 0.0 < s <= 1.0 for s in self.steps):
            raise ValueError(f"each step is a share in (0, 1], got {list(self.steps)}")
        if any(b <= a for a, b in zip(self.steps, self.steps[1:], strict=False)):
            raise ValueError(f"steps must grow, got {list(self.steps)}")
        if self.steps[-1] != 1.0:
            raise ValueError(f"the last step must be 1.0 (everyone), got {self.steps[-1]}")
        if not 0.0 <= self.margin < 1.0:
            raise ValueError(f"margin is a difference of rates in [0, 1), got {self.margin}")
        if not 0.0 < self.alpha < 0.5:
            raise ValueError(f"alpha must be in (0, 0.5), got {self.alpha}")
        if self.min_outcomes < 1:
            raise ValueError(f"min_outcomes must be at least 1, got {self.min_outcomes}")


@dataclass(frozen=True, slots=True)
class Arm:
    """Outcomes of the tasks run on one version: how many succeeded and how many failed."""

    ok: int
    failed: int

    def __post_init__(self) -> None:
        if self.ok < 0 or self.failed < 0:
            raise ValueError(f"counts cannot be negative: ok={self.ok} failed={self.failed}")

    @property
    def total(self) -> int:
        return self.ok + self.failed

    @property
    def failure_rate(self) -> float:
        return self.failed / self.total if self.total else 0.0


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do now: `step` and `share` are where the roll-out stands after the action."""

    action: Action
    step: int
    share: float
    reason: str


def wilson(failed: int, total: int, z: float) -> tuple[float, float]:
    """The Wilson score interval for a failure rate; [0, 1] when there is no outcome yet."""
    if total == 0:
        return 0.0, 1.0
    p = failed / total
    z2 = z * z
    centre = p + z2 / (2 * total)
    spread = z * math.sqrt(p * (1 - p) / total + z2 / (4 * total * total))
    denom = 1 + z2 / total
    return max(0.0, (centre - spread) / denom), min(1.0, (centre + spread) / denom)


def excess_lower_bound(old: Arm, new: Arm, alpha: float) -> float:
    """The one-sided (1 - alpha) lower bound of p_new - p_old (Newcombe's hybrid score)."""
    z = NormalDist().inv_cdf(1 - alpha)
    p_new, p_old = new.failure_rate, old.failure_rate
    lo_new, _ = wilson(new.failed, new.total, z)
    _, hi_old = wilson(old.failed, old.total, z)
    if new.total == 0:
        p_new = lo_new = 0.0
    return (p_new - p_old) - math.sqrt((p_new - lo_new) ** 2 + (hi_old - p_old) ** 2)


def _rates(old: Arm, new: Arm) -> str:
    return (
        f"new {new.failed}/{new.total} failed ({new.failure_rate:.0%}), "
        f"old {old.failed}/{old.total} ({old.failure_rate:.0%})"
    )


# -- canary devices that change agent version ------------------------------------------------

SwitchOutcome = Literal["up", "back", "late"]

SWITCH_MOVES: dict[tuple[SwitchOutcome | None, SwitchOutcome], SwitchOutcome] = {
    (None, "up"): "up",  # its first sync on the new version
    (None, "back"): "back",  # it came back on the old one (node/selfupdate.py's `trying`)
    (None, "late"): "late",  # silent past the bound since it said it would re-execute
}


def next_switch(outcome: SwitchOutcome | None, move: SwitchOutcome) -> SwitchOutcome:
    """A switch's outcome after `move`; one that has an outcome keeps it (counted once)."""
    try:
        return SWITCH_MOVES[(outcome, move)]
    except KeyError:
        raise IllegalTransition(f"a switch that is {outcome} cannot become {move}") from None


def switch_overdue(accepted_at: float, last_seen: float, now: float, bound_s: float) -> bool:
    """Whether a device that said at `accepted_at` it would re-execute into the new version,
    last heard from at `last_seen` (still on the old one, finishing its tasks) and not since on
    the new one, is that version's failure at `now`: silent for more than `bound_s`."""
    return now - max(accepted_at, last_seen) > bound_s


@dataclass(frozen=True, slots=True)
class Devices:
    """A step's canary devices that re-executed into the new agent `version`: how many came up
    on it, came back on the old one, stayed silent past `bound_s`, or are still starting. One
    that did not come up (back or late) is a failed outcome of the new version: an agent that
    cannot start runs no task, so it would otherwise hold its roll-out forever."""

    version: str = ""
    up: int = 0
    back: int = 0
    late: int = 0
    starting: int = 0
    bound_s: float = 0.0

    def __post_init__(self) -> None:
        if min(self.up, self.back, self.late, self.starting) < 0:
            raise ValueError(f"device counts cannot be negative: {self}")

    @property
    def failed(self) -> int:
        return self.back + self.late

    def sentence(self) -> str:
        """'3 of 4 canary devices did not come back on 0.2.0 within 90 s (2 back on the old
        version)'; '' when every device came up."""
        if not self.failed:
            return ""
        judged = self.up + self.failed
        parts = [f"{self.back} back on the old version"] if self.back else []
        if self.starting:
            parts.append(f"{self.starting} still starting")
        extra = f" ({', '.join(parts)})" if parts else ""
        return (
            f"{self.failed} of {judged} canary device{'s' if judged != 1 else ''} did not come "
            f"back on {self.version} within {self.bound_s:.0f} s{extra}"
        )


def with_devices(new: Arm, devices: Devices) -> Arm:
    """The new version's outcomes with each canary device that did not come up on it failed."""
    return Arm(new.ok, new.failed + devices.failed)


def decide(
    policy: RolloutPolicy, step: int, old: Arm, new: Arm, devices: Devices | None = None
) -> Decision:
    """Hold, promote, roll back or finish the roll-out standing at `step` (an index of steps).

    `old` and `new` are the outcomes the caller counts for this step (the store counts those
    since the step began, so each step earns its own promotion); `devices`, for an agent,
    the canary devices that re-executed this step: each that did not come up on the new
    version is one more failed outcome of it (`with_devices`), and the sentence says so."""
    if not 0 <= step < len(policy.steps):
        raise ValueError(f"step {step} is not one of the policy's {len(policy.steps)} steps")
    devices = devices or Devices()
    new = with_devices(new, devices)
    said = devices.sentence()
    why = f"{said}; " if said else ""
    share = policy.steps[step]
    bound = excess_lower_bound(old, new, policy.alpha)
    confidence = f"{1 - policy.alpha:.0%}"
    if new.failed >= 2 and bound > policy.margin:
        return Decision(
            "rollback",
            step,
            0.0,
            f"rolled back at {share:.0%}: {why}{_rates(old, new)}; the new version fails more "
            f"often by at least {bound:.1%} with {confidence} confidence, over the "
            f"{policy.margin:.0%} margin",
        )
    if new.total < policy.min_outcomes:
        return Decision(
            "hold",
            step,
            share,
            f"holding at {share:.0%}: {why}{new.total} of {policy.min_outcomes} outcomes on "
            f"the new version so far ({_rates(old, new)})",
        )
    excess = new.failure_rate - old.failure_rate
    if excess > policy.margin:
        return Decision(
            "hold",
            step,
            share,
            f"holding at {share:.0%}: {why}{_rates(old, new)}; the excess {excess:.1%} is over "
            f"the {policy.margin:.0%} margin but not yet shown with {confidence} confidence "
            f"(lower bound {bound:.1%}), gathering more outcomes",
        )
    if step == len(policy.steps) - 1:
        return Decision(
            "done",
            step,
            share,
            f"done at {share:.0%}: {why}{_rates(old, new)}, within the {policy.margin:.0%} margin",
        )
    nxt = policy.steps[step + 1]
    return Decision(
        "promote",
        step + 1,
        nxt,
        f"promoted {share:.0%} → {nxt:.0%}: {why}{_rates(old, new)}, within the "
        f"{policy.margin:.0%} margin after {new.total} outcomes",
    )


def canary_point(rollout_id: str, subject: str) -> float:
    """Where `subject` (a device) falls in [0, 1) for this roll-out: a stable SHA-256 hash."""
    digest = hashlib.sha256(f"{rollout_id}\x00{subject}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def in_canary(rollout_id: str, subject: str, share: float) -> bool:
    """Whether `subject` runs the new version at `share`; monotone: in at 10 % stays in at 50 %."""
    return canary_point(rollout_id, subject) < share


def canary_floor(rollout_id: str, devices: Iterable[str], share: float) -> frozenset[str]:
    """The ceil(share * n) devices with the lowest points: the least a step covers.

    On a small fleet the hash alone may put no device below 10 % (Kubernetes and Argo round
    a canary's replicas up for the same reason); with the floor a step always reaches at
    least its share, rounded up. For a fixed fleet the floor grows with the share, so it
    keeps `in_canary`'s promise: in at 10 %, still in at 50 %."""
    ranked = sorted(set(devices), key=lambda d: (canary_point(rollout_id, d), d))
    return frozenset(ranked[: math.ceil(share * len(ranked) - 1e-9)])


def canary_baseline(rollout_id: str, devices: Iterable[str], share: float) -> frozenset[str]:
    """The live device a step under 100 % keeps on the old version whatever its hash: the one
    with the highest point (none when fewer than two devices, or at 100 %).

    On a small fleet the hash alone may put every device below the share (all four of four
    at 25 %, once in 256 roll-outs): no baseline outcome would ever come, the judge would hold
    forever ("nothing is rolled back against a baseline never seen") and the canary's failed
    tasks, each queued again, would never find the old version. Ranked like the floor, it stays
    out at every step below 100 %: `in_canary`'s promise holds."""
    ranked = sorted(set(devices), key=lambda d: (canary_point(rollout_id, d), d))
    return frozenset(ranked[-1:]) if share < 1.0 and len(ranked) >= 2 else frozenset()


def parse_share(text: str) -> float:
    """'10%', '10' or '0.1' as a share in (0, 1]; a sentence saying what is wrong otherwise."""
    raw = text.strip()
    try:
        value = float(raw.removesuffix("%"))
    except ValueError:
        raise ValueError(f"{text!r} is not a share: write it as a percentage such as 10%") from None
    if raw.endswith("%") or value > 1.0:
        value /= 100
    if not 0.0 < value <= 1.0 or math.isnan(value):
        raise ValueError(f"{text!r} is not a share between 0 % (excluded) and 100 %")
    return value


def policy_for_canary(share: float, base: RolloutPolicy | None = None) -> RolloutPolicy:
    """The base policy with steps from `share`: 10 % gives 10 → 50 → 100 %, 60 % gives 60 → 100."""
    base = base or RolloutPolicy()
    steps = (share, *(s for s in (0.5, 1.0) if s > share)) if share < 1.0 else (1.0,)
    return RolloutPolicy(steps, base.margin, base.alpha, base.min_outcomes)


# -- a roll-out's lifecycle -------------------------------------------------------------------


class RolloutState(StrEnum):
    ACTIVE = "active"  # some share of the fleet runs the new version
    DONE = "done"  # everyone runs the new version
    ROLLED_BACK = "rolled_back"  # everyone is back on the old version
    CANCELLED = "cancelled"  # an operator stopped it: everyone back on the old version


TERMINAL = frozenset({RolloutState.DONE, RolloutState.ROLLED_BACK, RolloutState.CANCELLED})

Move = Literal["hold", "promote", "rollback", "done", "cancel"]

TRANSITIONS: dict[tuple[RolloutState, Move], RolloutState] = {
    (RolloutState.ACTIVE, "hold"): RolloutState.ACTIVE,
    (RolloutState.ACTIVE, "promote"): RolloutState.ACTIVE,
    (RolloutState.ACTIVE, "rollback"): RolloutState.ROLLED_BACK,
    (RolloutState.ACTIVE, "done"): RolloutState.DONE,
    (RolloutState.ACTIVE, "cancel"): RolloutState.CANCELLED,
}


def next_state(state: RolloutState, move: Move) -> RolloutState:
    """The roll-out's state after `move`; a finished roll-out moves no more."""
    try:
        return TRANSITIONS[(state, move)]
    except KeyError:
        raise IllegalTransition(f"a roll-out that is {state.value} cannot {move}") from None


def serves_new(state: RolloutState, share: float, point: float) -> bool:
    """Whether a device at `point` (canary_point) gets the new version in this state."""
    if state is RolloutState.ACTIVE:
        return point < share
    return state is RolloutState.DONE
