"""Why a task waits: the one sentence a customer needs when nothing moves.

A fog that cannot make progress must say so (issue 11): a task that no live node can run, a
result that waits for a second device to check it while the fog has one, a job queued behind
busy nodes. `waiting_for` decides, from frozen views of the fleet and of one task, whether the
task waits and why; `summary` folds a job's answers into the one that matters most.

A check copy follows placement's rules (core/owners.py): it goes to a device that has not run
the task, of another voter (owner) and on another network, so two devices of one owner (not
the operator) can never check each other. Everything here is pure.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from fogwheel.core import envlock, owners
from fogwheel.core.images import ARCH_PREFIX

NO_LIVE_NODES = "no-live-nodes"
QUARANTINED = "quarantined"  # nodes are up, but every one is quarantined
NO_CAPABILITY = "no-node-has-capability"  # e.g. needs povray
NO_MEMORY = "no-node-has-memory"
NO_ENV_PLATFORM = "no-node-fits-environment"  # no live node's Python installs its wheels
CHECKING = "checking-needs-another-owner-or-node"
ALL_BUSY = "all-nodes-busy"
QUEUED = "queued"  # a node with a free slot takes it at its next poll: not a problem

# Most telling first: the reasons that need someone to act, then those that pass by themselves.
PRIORITY = (
    NO_LIVE_NODES,
    QUARANTINED,
    NO_CAPABILITY,
    NO_MEMORY,
    NO_ENV_PLATFORM,
    CHECKING,
    ALL_BUSY,
    QUEUED,
)
START_NODE = "start one with `fogwheel node --coordinator URL --token JOIN_TOKEN`"


@dataclass(frozen=True, slots=True)
class LiveNode:
    """A node that polls for work now, as far as placement is concerned."""

    device: owners.Device
    free_slots: int = 1
    memory_mb: int = 1 << 20
    capabilities: frozenset[str] = frozenset()
    env_platform: str = ""  # what its Python installs wheels for (core/envlock.py)


@dataclass(frozen=True, slots=True)
class Fleet:
    live: tuple[LiveNode, ...] = ()
    quarantined: int = 0  # nodes that poll but get no work: caught returning a wrong result


@dataclass(frozen=True, slots=True)
class TaskView:
    """A task (the head of its replica group) and its copies, as the store sees them."""

    state: str  # pending | leased | verifying | done | failed | cancelled
    needs: frozenset[str] = frozenset()
    memory_mb: int = 0
    copies_pending: int = 0  # copies (checks, fixed replicas) waiting for a node
    copies_running: int = 0  # copies leased to a node now
    ran_on: tuple[owners.Device, ...] = ()  # devices that hold or ran a copy of it
    devices_needed: int = 2  # distinct voters whose results must agree
    adaptive: bool = True  # checked because its node is new or doubtful (not --replicas N)
    env: envlock.Lock | None = None  # the Python environment its job runs in


@dataclass(frozen=True, slots=True)
class Waiting:
    """Why a task waits: `reason` is a stable code, `sentence` says what to do; `stuck` when
    the fog as it is will never run it (someone must add a node or change the job)."""

    reason: str
    sentence: str
    stuck: bool


@dataclass(frozen=True, slots=True)
class JobWaiting:
    """A job's most telling wait, and how many of its waiting tasks wait for that reason."""

    reason: str
    sentence: str
    stuck: bool
    tasks: int


def waiting_for(task: TaskView, fleet: Fleet) -> Waiting | None:
    """Why `task` waits on `fleet`, or None when it does not (it runs, or it is finished)."""
    if task.state in ("done", "failed", "cancelled"):
        return None
    placing_head = task.state == "pending"
    if not placing_head and task.copies_pending == 0:
        return None  # it runs, or its check runs
    if not fleet.live:
        if fleet.quarantined:
            return Waiting(
                QUARANTINED,
                f"no live nodes: {_count(fleet.quarantined, 'node')} quarantined "
                f"(see `fogwheel nodes`); {START_NODE}",
                True,
            )
        return Waiting(NO_LIVE_NODES, f"no live nodes: {START_NODE}", True)
    able = [n for n in fleet.live if task.needs <= n.capabilities]
    if not able and (arch := _other_architecture(task.needs, fleet.live)):
        return Waiting(NO_CAPABILITY, arch, True)
    if not able:
        missing = sorted(task.needs - frozenset().union(*(n.capabilities for n in fleet.live)))
        what = ", ".join(missing) or ", ".join(sorted(task.needs))
        return Waiting(
            NO_CAPABILITY,
            f"no live node has {what} (needs {what}): start a node on a device that has it "
            f"installed ({_count(len(fleet.live), 'live node')} without it)",
            True,
        )
    able = [n for n in able if n.memory_mb >= task.memory_mb]
    if not able:
        most = max(n.memory_mb for n in fleet.live if task.needs <= n.capabilities)
        return Waiting(
            NO_MEMORY,
            f"it needs {task.memory_mb} MB and the largest live node offers {most} MB: "
            "lower --memory or add a bigger node",
            True,
        )
    if task.env is not None:
        env = task.env
        reasons = [envlock.fit_reason(env, n.env_platform) for n in able]
        if all(r is not None for r in reasons):
            return Waiting(
                NO_ENV_PLATFORM,
                f"no live node can install its Python environment ({_count(len(able), 'node')} "
                f"checked); for example: {reasons[0]}",
                True,
            )
        able = [n for n, r in zip(able, reasons, strict=True) if r is None]
    if placing_head:
        copies = 1 + task.copies_pending  # the task and its fixed replicas, none run yet
        if copies > 1 and _independent(able) < copies:
            return _checking(task, fleet, able, copies)
        return _slots(able)
    eligible = [n for n in able if not owners.barred(n.device, task.ran_on)]
    if not eligible:
        return _checking(task, fleet, able, task.devices_needed)
    return _slots(eligible)


def _other_architecture(needs: frozenset[str], live: Sequence[LiveNode]) -> str | None:
    """The sentence for a task whose image is built for an architecture no live node has."""
    prefix = ARCH_PREFIX
    wanted = sorted(n[len(prefix) :] for n in needs if n.startswith(prefix))
    have = Counter(c[len(prefix) :] for n in live for c in n.capabilities if c.startswith(prefix))
    if not wanted or wanted[0] in have:
        return None
    nodes = ", ".join(f"{k} ({v})" for k, v in sorted(have.items())) or "none that says"
    return (
        f"its image is built for {wanted[0]} and no live node is {wanted[0]} (live nodes by "
        f"architecture: {nodes}): push the image built for theirs (`fogwheel images push "
        f"--arch`), or start a node on a {wanted[0]} device"
    )


def summary(waits: Iterable[Waiting | None]) -> JobWaiting | None:
    """The job's most telling wait (PRIORITY order), with the count of tasks it holds back."""
    counted = Counter(w for w in waits if w is not None)
    if not counted:
        return None
    by_reason: dict[str, list[tuple[Waiting, int]]] = {}
    for w, n in counted.items():
        by_reason.setdefault(w.reason, []).append((w, n))
    reason = min(by_reason, key=lambda r: PRIORITY.index(r) if r in PRIORITY else len(PRIORITY))
    group = by_reason[reason]
    first, _ = max(group, key=lambda wn: wn[1])
    return JobWaiting(reason, first.sentence, first.stuck, sum(n for _, n in group))


def _slots(nodes: Sequence[LiveNode]) -> Waiting:
    if any(n.free_slots > 0 for n in nodes):
        return Waiting(QUEUED, "queued: a node with a free slot takes it at its next poll", False)
    return Waiting(
        ALL_BUSY,
        f"{_all(len(nodes))} that can run it {'is' if len(nodes) == 1 else 'are'} busy: "
        "it runs when a slot frees up (add nodes to go faster)",
        False,
    )


def _checking(task: TaskView, fleet: Fleet, able: Sequence[LiveNode], need: int) -> Waiting:
    """A check (or a fixed replica) that no live node may take: say what would unblock it."""
    what = "adaptive checking" if task.adaptive else f"--replicas {need}"
    fix = "add a node or pass --replicas 1"
    ran = {d.node for d in task.ran_on}
    others = [n for n in able if n.device.node not in ran]
    if len(able) < need and not (others and task.ran_on):
        return Waiting(
            CHECKING, f"{_count(len(fleet.live), 'live node')}; {what} needs {need} — {fix}", True
        )
    # Enough devices, but they share an owner or a network with the one(s) that ran it.
    voters = {n.device.voter for n in able} | {d.voter for d in task.ran_on}
    if len(voters) < need:
        whose = sorted({n.device.owner or owners.OPERATOR for n in able})
        return Waiting(
            CHECKING,
            f"{_count(len(fleet.live), 'live node')}, all of owner {', '.join(whose)}: {what} "
            f"needs devices of {need} different owners (devices of one owner never check "
            "each other) — add a device of another owner or pass --replicas 1",
            True,
        )
    return Waiting(
        CHECKING,
        f"{_count(len(fleet.live), 'live node')} on too few networks: {what} needs {need} "
        "devices on different networks (devices on one network never check each other) — "
        f"{fix}",
        True,
    )


def _independent(nodes: Sequence[LiveNode]) -> int:
    """How many of `nodes` could each hold a copy of one task (greedy, in the given order)."""
    picked: list[owners.Device] = []
    for n in nodes:
        if not owners.barred(n.device, picked):
            picked.append(n.device)
    return len(picked)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _all(n: int) -> str:
    return "the one live node" if n == 1 else f"all {n} live nodes"
