"""Placement: which pending tasks a node that asks for work receives, and why.

Pull, never push: a node asks for up to `want` tasks and the scheduler decides how many it gets
and which. Every assignment carries a one-line reason that the console and the API show
("n3: reliability 0.96 (49/50), 2 of 4 slots free, fair share 3 of 12 pending").
"""

from __future__ import annotations

import math
from collections import defaultdict, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

MAX_HELD_PER_SLOT = 64  # a node may queue this many tiny tasks per slot to hide round trips
PROBATION_RELIABILITY = 0.5  # below this, a node gets one task at a time while others are free


@dataclass(frozen=True, slots=True)
class NodeView:
    id: str
    slots: int  # cores offered
    memory_mb: int
    held: int = 0  # tasks it holds now
    done: int = 0  # attempts it finished (a result, or the task's own exception)
    lost: int = 0  # attempts it lost (lease expired, crashed worker)
    capabilities: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class ClusterView:
    """The fleet as the scheduler sees it at one moment."""

    pending: int  # tasks waiting in the queue
    total_slots: int  # slots of all live nodes, this one included
    better_free_slots: int = 0  # free slots on live nodes more reliable than the asking one
    live: frozenset[str] = frozenset()  # ids of the live nodes, the asking one included


@dataclass(frozen=True, slots=True)
class Candidate:
    task_id: int
    customer_id: str
    memory_mb: int = 0
    needs: frozenset[str] = frozenset()
    failed_on: frozenset[str] = field(default_factory=frozenset)  # nodes that lost it before
    group: int | None = None  # the task this one checks, when it is a replica
    exclude: frozenset[str] = frozenset()  # nodes that ran its group: replicas need others


@dataclass(frozen=True, slots=True)
class Assignment:
    task_id: int
    reason: str


def reliability(node: NodeView) -> float:
    """Laplace-smoothed share of finished attempts: a new node starts at 0.5, not at 0 or 1."""
    return (node.done + 1) / (node.done + node.lost + 2)


def grant_size(node: NodeView, want: int, cluster: ClusterView) -> tuple[int, str]:
    """How many tasks `node` may lease now, and the clause that explains the number."""
    room = node.slots * MAX_HELD_PER_SLOT - node.held
    grant = min(want, room, cluster.pending)
    why = f"{max(0, node.slots - node.held)} of {node.slots} slots free"
    if cluster.total_slots > 0 and cluster.pending > 0:
        share = math.ceil(cluster.pending * node.slots / cluster.total_slots)
        if share < grant:
            grant = share
            why += f", fair share {share} of {cluster.pending} pending"
    rel = reliability(node)
    if rel < PROBATION_RELIABILITY and cluster.better_free_slots >= cluster.pending and grant > 1:
        grant = 1
        why += f", on probation while better nodes have {cluster.better_free_slots} free slots"
    return max(0, grant), why


def plan_lease(
    node: NodeView, want: int, candidates: Sequence[Candidate], cluster: ClusterView
) -> list[Assignment]:
    """Choose tasks for `node` from `candidates` (queue order), round-robin across customers."""
    grant, why = grant_size(node, want, cluster)
    if grant <= 0:
        return []
    rel = reliability(node)
    head = f"{node.id}: reliability {rel:.2f} ({node.done}/{node.done + node.lost}), {why}"
    chosen: list[Assignment] = []
    groups: set[int] = set()
    for cand in _round_robin(c for c in candidates if _fits(node, c, cluster)):
        group = cand.group if cand.group is not None else cand.task_id
        if group in groups:
            continue  # two copies of one task never go to the same node
        groups.add(group)
        note = ""
        if cand.group is not None:
            note = f"; checks task {cand.group} on a node that has not run it"
        if cand.failed_on:
            note += f"; retry after loss on {', '.join(sorted(cand.failed_on))}"
        chosen.append(Assignment(cand.task_id, head + note))
        if len(chosen) == grant:
            break
    return chosen


def _fits(node: NodeView, cand: Candidate, cluster: ClusterView) -> bool:
    if cand.memory_mb > node.memory_mb or not cand.needs <= node.capabilities:
        return False
    if node.id in cand.exclude:
        return False
    # Do not hand a task back to a node that lost it, unless every live node has lost it.
    return (
        node.id not in cand.failed_on
        or cluster.total_slots <= node.slots
        or (bool(cluster.live) and cluster.live <= cand.failed_on)
    )


def _round_robin(cands: Iterable[Candidate]) -> Iterable[Candidate]:
    queues: dict[str, deque[Candidate]] = defaultdict(deque)
    for c in cands:
        queues[c.customer_id].append(c)
    while queues:
        for customer in list(queues):
            q = queues[customer]
            yield q.popleft()
            if not q:
                del queues[customer]
