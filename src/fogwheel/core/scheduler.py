"""Placement: which pending tasks a node that asks for work receives, and why.

Pull, never push: a node asks for up to `want` tasks and the scheduler decides how many it gets
and which. Every assignment carries a one-line reason that the console and the API show
("n3: reliability 0.96 (49/50), 2 of 4 slots free, fair share 3 of 12 pending").

Two ideas from MapReduce (Dean & Ghemawat, OSDI 2004): a task goes preferably to a node that
already holds its input (§3.4, locality), and near the end of a job an idle node runs a backup
copy of the slowest running task, the first result winning (§3.6, backup tasks).

Which pending tasks a node takes is a placement policy (`Placement`): the default, `fair`,
serves customers round robin in queue order (locality first); `random`, `reliability` and
`deadline` are the alternatives that `fogwheel sim` compares with it, and that
`fogwheel coordinator --placement` runs live. Every policy keeps the same bounds
(`grant_size`: slots, fair share, probation) and the same rules of who may take what (`_fits`).
"""

from __future__ import annotations

import functools
import hashlib
import math
import operator
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from fogwheel.core.frozen import fast_init

MAX_HELD_PER_SLOT = 64  # a node may queue this many tiny tasks per slot to hide round trips
PROBATION_RELIABILITY = 0.5  # below this, a node gets one task at a time while others are free
BACKUP_MIN_S = 2.0  # a task is never backed up before it has run this long
LOCALITY_WAIT_S = 3.0  # a task whose input another live node holds waits this long for it
STICKY_WAIT_S = 30.0  # ... and a task whose kept state a live node holds, this long, busy or not
BACKUP_FACTOR = 1.5  # ... nor before it has run this many times its job's median attempt
RELIABLE = 0.8  # under `reliability`, a node at least this reliable takes the longest tasks first


class Policy(StrEnum):
    """How a node's share of the pending queue is chosen (the bounds are the same for all).

    - `fair`: today's behaviour and the default: customers take turns, each customer's queue
      in queue order with locality first; unreliable nodes are on probation (`grant_size`).
    - `random`: a uniformly random choice among the tasks the node may take; the draws come
      from `Placement.seed`, never from a global generator.
    - `reliability`: reliable nodes take the longest tasks first and flaky ones the shortest,
      so that the work a lost lease throws away is small; customers still take turns.
    - `deadline`: least slack first (the task's deadline less its estimated length), across
      customers; a task longer than the node is expected to stay up goes after those that fit.
    """

    FAIR = "fair"
    RANDOM = "random"
    RELIABILITY = "reliability"
    DEADLINE = "deadline"


@dataclass(frozen=True, slots=True)
class Placement:
    """A placement policy with its seed: a value, so that the coordinator and the simulator
    given the same one decide the same."""

    policy: Policy = Policy.FAIR
    seed: int = 0


FAIR = Placement()


@fast_init
@dataclass(frozen=True, slots=True)
class NodeView:
    id: str
    slots: int  # cores offered
    memory_mb: int
    held: int = 0  # tasks it holds now
    done: int = 0  # attempts it finished (a result, or the task's own exception)
    lost: int = 0  # attempts it lost (lease expired, crashed worker)
    capabilities: frozenset[str] = frozenset()
    expected_up_s: float | None = None  # how much longer it is likely to stay up; None: unknown


@fast_init
@dataclass(frozen=True, slots=True)
class ClusterView:
    """The fleet as the scheduler sees it at one moment."""

    pending: int  # tasks waiting in the queue
    total_slots: int  # slots of all live nodes, this one included
    better_free_slots: int = 0  # free slots on live nodes more reliable than the asking one
    live: frozenset[str] = frozenset()  # ids of the live nodes, the asking one included
    free: frozenset[str] = frozenset()  # ids of the live nodes with a free slot


@fast_init
@dataclass(frozen=True, slots=True)
class Candidate:
    task_id: int
    customer_id: str
    memory_mb: int = 0
    needs: frozenset[str] = frozenset()
    failed_on: frozenset[str] = field(default_factory=frozenset)  # nodes that lost it before
    group: int | None = None  # the task this one checks, when it is a replica
    exclude: frozenset[str] = frozenset()  # nodes that ran its group: replicas need others
    local_bytes: int = 0  # bytes of its input blobs the asking node holds already
    elsewhere_bytes: int = 0  # bytes of its input held by the best other live node
    waited_s: float = math.inf  # how long it has been waiting to run
    holder_free: bool = False  # a live node holding more of its input has a free slot now
    sticky: bool = False  # it reads state kept on a node (TaskIn.keep_in): worth a longer wait
    keeper: str | None = None  # the live node that keeps that state, if any
    est_s: float | None = None  # its expected run time (its job's typical attempt); None: unknown
    deadline: float | None = None  # when its job wants it done; None: no deadline
    image_here: bool = False  # its program image is unpacked on the asking node (fetched there)
    env_bytes_here: int = 0  # its Python environment is built here: that many of local_bytes


@fast_init
@dataclass(frozen=True, slots=True)
class Straggler:
    """A running task of a job in its last wave (nothing of the job is pending any more)."""

    task_id: int
    holder: str  # the node running it
    running_s: float  # since its current attempt was leased
    job_median_s: float | None  # median wall time of the job's finished attempts; None: none yet
    memory_mb: int = 0
    needs: frozenset[str] = frozenset()
    exclude: frozenset[str] = frozenset()  # nodes that already hold or ran a copy of it


@fast_init
@dataclass(frozen=True, slots=True)
class Assignment:
    task_id: int
    reason: str


def reliability(node: NodeView) -> float:
    """Laplace-smoothed share of finished attempts: a new node starts at 0.5, not at 0 or 1."""
    return (node.done + 1) / (node.done + node.lost + 2)


@functools.lru_cache(maxsize=4_096)
def _track_record(done: int, lost: int) -> str:
    """A reason's "reliability 0.96 (49/50)" (`reliability`'s value, to two places): the same
    few pairs come up lease after lease, and formatting the float took a third of a µs each."""
    return f"reliability {(done + 1) / (done + lost + 2):.2f} ({done}/{done + lost})"


def pending_bound(want: int, total_slots: int) -> int:
    """The most pending tasks that `grant_size` can tell apart for a node asking for `want`
    in a fleet of at most `total_slots` slots: from this many on, its grant and its reason
    are the same however long the queue (the fair share is at least `want`, the queue
    longer than any free slots). So the store counts the queue only up to here, and a
    million queued tasks cost a lease what this many do."""
    return max(0, want) * max(1, total_slots) + 1


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
    node: NodeView,
    want: int,
    candidates: Sequence[Candidate],
    cluster: ClusterView,
    placement: Placement = FAIR,
) -> list[Assignment]:
    """Choose tasks for `node` from `candidates` (queue order) by the placement policy."""
    grant, why = grant_size(node, want, cluster)
    if grant <= 0:
        return []
    head = f"{node.id}: {_track_record(node.done, node.lost)}, {why}"
    if placement.policy is not Policy.FAIR:
        head += f"; {placement.policy.value} placement"
    chosen: list[Assignment] = []
    groups: set[int] = set()
    fitting = _fitting(node, candidates, cluster)
    # Every policy orders one candidate as itself: the common case skips the ordering.
    for cand in fitting if len(fitting) <= 1 else _ordered(node, fitting, placement):
        group = cand.group if cand.group is not None else cand.task_id
        if group in groups:
            continue  # two copies of one task never go to the same node
        groups.add(group)
        note = ""
        if cand.group is not None:
            note = f"; checks task {cand.group} on a node that has not run it"
        if cand.failed_on:
            note += f"; retry after loss on {', '.join(sorted(cand.failed_on))}"
        if cand.image_here:
            note += "; its image is already unpacked here"
        if cand.env_bytes_here > 0:
            note += "; its Python environment is already built here"
        if cand.local_bytes > cand.env_bytes_here:
            note += f"; {_size(cand.local_bytes - cand.env_bytes_here)} of its input already here"
        chosen.append(Assignment(cand.task_id, head + note))
        if len(chosen) == grant:
            break
    return chosen


def _ordered(node: NodeView, cands: list[Candidate], placement: Placement) -> Iterable[Candidate]:
    """The fitting candidates in the order the policy takes them."""
    policy = placement.policy
    if policy is Policy.FAIR:
        return _round_robin(cands)
    if policy is Policy.RANDOM:
        keyed = hashlib.blake2b(f"{placement.seed}:{node.id}:".encode(), digest_size=8)
        return sorted(cands, key=lambda c: _draw(keyed, c.task_id))
    if policy is Policy.RELIABILITY:
        sign = -1.0 if reliability(node) >= RELIABLE else 1.0
        return _round_robin(cands, key=lambda c: sign * (c.est_s or 0.0))
    up = node.expected_up_s
    return sorted(
        cands,
        key=lambda c: (
            up is not None and c.est_s is not None and c.est_s > up,  # would likely be lost
            math.inf if c.deadline is None else c.deadline - (c.est_s or 0.0),  # slack
        ),
    )


def _draw(keyed: hashlib.blake2b, task_id: int) -> bytes:
    """A uniform pseudo-random key for (seed, node, task): the same on every process.

    `keyed` has hashed "seed:node:" already; a copy extended by the task id digests what
    hashing the whole string would, for a third less than starting afresh per candidate."""
    h = keyed.copy()
    h.update(str(task_id).encode())
    return h.digest()


def backup_after(job_median_s: float) -> float:
    """Seconds a task must have run before it is backed up: well past its job's typical run."""
    return max(BACKUP_MIN_S, BACKUP_FACTOR * job_median_s)


def plan_backups(node: NodeView, free: int, stragglers: Sequence[Straggler]) -> list[Assignment]:
    """Backup copies for `node` to run, longest-running straggler first, at most `free`.

    MapReduce's backup tasks (Dean & Ghemawat 2004, §3.6): when a job is nearly done, an idle
    node runs a second copy of a task that runs much longer than the job's others; whichever
    copy finishes first settles the task. A job with no finished attempt yet has no measure of
    "slow", so none of its tasks is backed up."""
    if free <= 0:
        return []
    head = f"{node.id}: {_track_record(node.done, node.lost)}"
    chosen: list[Assignment] = []
    for s in sorted(stragglers, key=lambda s: (-s.running_s, s.task_id)):
        if s.job_median_s is None or s.running_s <= backup_after(s.job_median_s):
            continue
        if s.holder == node.id or node.id in s.exclude:
            continue
        if s.memory_mb > node.memory_mb or not s.needs <= node.capabilities:
            continue
        chosen.append(
            Assignment(
                s.task_id,
                f"{head}, {max(0, node.slots - node.held)} of {node.slots} slots free; "
                f"backup copy of task {s.task_id}, "
                f"running {s.running_s:.1f} s on {s.holder} (job median {s.job_median_s:.1f} s)",
            )
        )
        if len(chosen) == free:
            break
    return chosen


def locality_order(cands: Iterable[Candidate]) -> list[Candidate]:
    """One customer's queue as placement takes it: tasks whose input this node holds (most
    bytes first), then those whose input no other live node holds, then those whose input
    another live node holds; queue order within each part.

    MapReduce's locality (Dean & Ghemawat 2004, §3.4): moving a task is cheaper than moving
    its input, so a node takes its own inputs' tasks first and leaves others' to their holders.
    It only orders: a task held elsewhere still runs here when nothing better is queued. A
    replica is never put back for being held elsewhere: the nodes that hold its input are the
    ones that ran its group, which may not run it."""
    cands = list(cands)
    if not any(map(_LOCAL, cands)) and not any(map(_ELSEWHERE, cands)):
        return cands  # nothing is held anywhere: queue order
    return sorted(cands, key=_locality_rank)


_LOCAL = operator.attrgetter("local_bytes")
_ELSEWHERE = operator.attrgetter("elsewhere_bytes")


def _locality_rank(cand: Candidate) -> tuple[int, int]:
    if cand.local_bytes > 0:
        return (0, -cand.local_bytes)
    if cand.elsewhere_bytes > 0 and cand.group is None:
        return (2, 0)
    return (1, 0)


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _fitting(
    node: NodeView, candidates: Sequence[Candidate], cluster: ClusterView
) -> list[Candidate]:
    """The candidates `node` may take (`_fits`), with the common case decided inline: the
    simulator asks this a million times a run, so the cheap tests come first."""
    nid, memory, capabilities = node.id, node.memory_mb, node.capabilities
    out = []
    for c in candidates:
        if c.memory_mb > memory or nid in c.exclude or (c.needs and not c.needs <= capabilities):
            continue
        if (c.holder_free or c.sticky or c.failed_on) and not _fits(node, c, cluster):
            continue
        out.append(c)
    return out


def _fits(node: NodeView, cand: Candidate, cluster: ClusterView) -> bool:
    if cand.memory_mb > node.memory_mb or not cand.needs <= node.capabilities:
        return False
    if node.id in cand.exclude:
        return False
    # Delay scheduling (Zaharia et al., EuroSys 2010): a task whose input another live node
    # holds, and that node has a free slot to run it, is left for that node for a few seconds
    # before anyone else may take it.
    if (
        cand.holder_free
        and cand.elsewhere_bytes > cand.local_bytes
        and cand.group is None
        and cand.waited_s < LOCALITY_WAIT_S
    ):
        return False
    # A task that continues state kept on another live node (an optimizer's, say) waits for
    # that node longer, even while it is busy: elsewhere it would have to start afresh.
    if (
        cand.sticky
        and cand.keeper is not None
        and cand.keeper != node.id
        and cand.group is None
        and cand.waited_s < STICKY_WAIT_S
    ):
        return False
    # Do not hand a task back to a node that lost it, unless every live node has lost it.
    return (
        node.id not in cand.failed_on
        or cluster.total_slots <= node.slots
        or (bool(cluster.live) and cluster.live <= cand.failed_on)
    )


def _round_robin(
    cands: Sequence[Candidate], key: Callable[[Candidate], float] | None = None
) -> Iterable[Candidate]:
    """Customers take turns, in the order they first appear; each one's queue by locality
    (then stably by `key`, when the policy gives one)."""
    by_customer: dict[str, list[Candidate]] = {}
    for c in cands:
        q = by_customer.get(c.customer_id)
        if q is None:
            by_customer[c.customer_id] = [c]
        else:
            q.append(c)
    queues = list(by_customer.values())
    if any(map(_LOCAL, cands)) or any(map(_ELSEWHERE, cands)):  # else queue order is locality's
        queues = [locality_order(q) for q in queues]
    if key is not None:
        queues = [sorted(q, key=key) for q in queues]
    if len(queues) <= 1:
        return queues[0] if queues else []
    # Turn i takes the i-th of each customer's queue that still has one, in their order.
    longest = max(map(len, queues))
    return [q[i] for i in range(longest) for q in queues if i < len(q)]
