"""Placement as a specification: how reliable a node looks, how many tasks it may lease, which
ones it receives, and the reason it is given."""

from __future__ import annotations

import dataclasses
import math
import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fogwheel.core import scheduler
from fogwheel.core.scheduler import (
    BACKUP_FACTOR,
    BACKUP_MIN_S,
    FAIR,
    LOCALITY_WAIT_S,
    MAX_HELD_PER_SLOT,
    PROBATION_RELIABILITY,
    STICKY_WAIT_S,
    Assignment,
    Candidate,
    ClusterView,
    NodeView,
    Placement,
    Policy,
    Straggler,
    backup_after,
    grant_size,
    locality_order,
    pending_bound,
    plan_backups,
    plan_lease,
    reliability,
)

NODE_IDS = ("n1", "n2", "n3")
CAPABILITIES = ("gpu", "avx2", "arm64")


def node(
    id: str = "n1",
    slots: int = 4,
    memory_mb: int = 4096,
    held: int = 0,
    done: int = 0,
    lost: int = 0,
    capabilities: frozenset[str] = frozenset(),
) -> NodeView:
    return NodeView(id, slots, memory_mb, held, done, lost, capabilities)


def queue(*customers: tuple[str, int]) -> list[Candidate]:
    """Candidates in queue order, numbered from 1: queue(("a", 2), ("b", 1)) is a1, a2, b3."""
    out: list[Candidate] = []
    for customer, count in customers:
        out += [Candidate(len(out) + i + 1, customer) for i in range(count)]
    return out


def ids(plan: list[Assignment]) -> list[int]:
    return [a.task_id for a in plan]


# -- reliability --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("done", "lost", "expected"),
    [
        (0, 0, 0.5),  # a new node is neither trusted nor distrusted
        (1, 0, 2 / 3),
        (0, 1, 1 / 3),
        (3, 1, 4 / 6),
        (49, 1, 50 / 52),
        (0, 8, 0.1),
        (98, 0, 0.99),
    ],
)
def test_reliability_is_the_laplace_smoothed_share_of_finished_attempts(
    done: int, lost: int, expected: float
) -> None:
    assert reliability(node(done=done, lost=lost)) == pytest.approx(expected)


@given(done=st.integers(0, 10**6), lost=st.integers(0, 10**6))
def test_reliability_stays_strictly_between_zero_and_one(done: int, lost: int) -> None:
    assert 0 < reliability(node(done=done, lost=lost)) < 1


def test_reliability_rises_with_each_result_and_falls_with_each_loss() -> None:
    base = node(done=5, lost=5)
    assert reliability(node(done=6, lost=5)) > reliability(base) > reliability(node(done=5, lost=6))


# -- grant_size ---------------------------------------------------------------------------

GRANTS = [
    # (node, want, cluster, grant, clause fragments that must appear)
    pytest.param(node(slots=4), 2, ClusterView(100, 4), 2, ["4 of 4 slots free"], id="want"),
    pytest.param(
        node(slots=1, held=MAX_HELD_PER_SLOT - 3),
        10,
        ClusterView(100, 1),
        3,
        ["0 of 1 slots free"],
        id="room",
    ),
    pytest.param(
        node(slots=4, held=1), 10, ClusterView(3, 4), 3, ["3 of 4 slots free"], id="queue"
    ),
    pytest.param(
        node(slots=4, held=2),
        10,
        ClusterView(12, 16),
        3,
        ["2 of 4 slots free", "fair share 3 of 12 pending"],
        id="fair-share",
    ),
    pytest.param(
        node(slots=1), 5, ClusterView(4, 3), 2, ["fair share 2 of 4 pending"], id="share-rounds-up"
    ),
    pytest.param(
        node(slots=4, done=1, lost=5),
        4,
        ClusterView(pending=5, total_slots=4, better_free_slots=10),
        1,
        ["on probation while better nodes have 10 free slots"],
        id="probation",
    ),
    pytest.param(
        node(slots=4, done=0, lost=5),
        12,
        ClusterView(pending=20, total_slots=8, better_free_slots=20),
        1,
        ["fair share 10 of 20 pending", "on probation while better nodes have 20 free slots"],
        id="share-then-probation",
    ),
    pytest.param(node(), 5, ClusterView(0, 4), 0, ["4 of 4 slots free"], id="empty-queue"),
    pytest.param(node(), 0, ClusterView(10, 4), 0, [], id="wants-none"),
    pytest.param(node(slots=0), 5, ClusterView(10, 4), 0, ["0 of 0 slots free"], id="no-slots"),
    pytest.param(
        node(slots=1, held=MAX_HELD_PER_SLOT + 5),
        5,
        ClusterView(10, 1),
        0,
        ["0 of 1 slots free"],
        id="over-full",
    ),
]


@pytest.mark.parametrize(("view", "want", "cluster", "grant", "fragments"), GRANTS)
def test_grant_is_the_tightest_limit_and_the_clause_names_it(
    view: NodeView, want: int, cluster: ClusterView, grant: int, fragments: list[str]
) -> None:
    got, why = grant_size(view, want, cluster)
    assert got == grant
    for fragment in fragments:
        assert fragment in why


@pytest.mark.parametrize(("view", "want", "cluster", "grant", "fragments"), GRANTS)
def test_the_clause_names_fair_share_and_probation_only_when_they_bind(
    view: NodeView, want: int, cluster: ClusterView, grant: int, fragments: list[str]
) -> None:
    _, why = grant_size(view, want, cluster)
    assert ("fair share" in why) == any("fair share" in f for f in fragments)
    assert ("probation" in why) == any("probation" in f for f in fragments)


@pytest.mark.parametrize(
    ("done", "lost", "better_free", "pending", "grant"),
    [
        (0, 0, 100, 10, 4),  # a new node (0.5) is not on probation
        (1, 1, 100, 10, 4),  # nor is one at exactly PROBATION_RELIABILITY
        (0, 1, 10, 10, 1),  # better nodes can take the whole queue: one at a time
        (0, 1, 9, 10, 4),  # they cannot: the doubtful node is needed
        (0, 1, 100, 1, 1),  # one pending task: one task, probation or not
    ],
)
def test_probation_applies_below_the_threshold_while_better_nodes_can_take_the_queue(
    done: int, lost: int, better_free: int, pending: int, grant: int
) -> None:
    view = node(slots=4, done=done, lost=lost)
    cluster = ClusterView(pending=pending, total_slots=4, better_free_slots=better_free)
    got, why = grant_size(view, 4, cluster)
    assert got == grant
    on_probation = reliability(view) < PROBATION_RELIABILITY and better_free >= pending
    assert ("probation" in why) == (on_probation and pending > 1)


@st.composite
def asks(draw: st.DrawFn) -> tuple[NodeView, int, ClusterView]:
    """A node asking for work, what it wants, and a fleet that includes it."""
    view = node(
        id=draw(st.sampled_from(NODE_IDS)),
        slots=draw(st.integers(0, 8)),
        memory_mb=draw(st.sampled_from([0, 512, 2048, 8192])),
        held=draw(st.integers(0, 9 * MAX_HELD_PER_SLOT)),
        done=draw(st.integers(0, 30)),
        lost=draw(st.integers(0, 30)),
        capabilities=draw(st.frozensets(st.sampled_from(CAPABILITIES))),
    )
    want = draw(st.integers(-1, 20))
    others = draw(st.sampled_from([0, 0, 1, 4, 32]))  # 0: this node is the whole fleet
    cluster = ClusterView(
        pending=draw(st.integers(0, 60)),
        total_slots=view.slots + others,
        better_free_slots=draw(st.integers(0, others)),
    )
    return view, want, cluster


@settings(max_examples=300, deadline=None)
@given(ask=asks())
def test_grant_never_exceeds_any_limit(ask: tuple[NodeView, int, ClusterView]) -> None:
    view, want, cluster = ask
    grant, why = grant_size(view, want, cluster)
    assert 0 <= grant <= max(0, want)
    assert grant <= max(0, view.slots * MAX_HELD_PER_SLOT - view.held)
    assert grant <= cluster.pending
    if cluster.total_slots > 0 and cluster.pending > 0:
        assert grant <= math.ceil(cluster.pending * view.slots / cluster.total_slots)
    if reliability(view) < PROBATION_RELIABILITY and cluster.better_free_slots >= cluster.pending:
        assert grant <= 1
    assert why.startswith(f"{max(0, view.slots - view.held)} of {view.slots} slots free")


@settings(max_examples=400, deadline=None)
@given(ask=asks(), beyond=st.integers(0, 10**7), smaller=st.integers(0, 64))
def test_a_queue_longer_than_the_bound_is_granted_as_the_bound_is(
    ask: tuple[NodeView, int, ClusterView], beyond: int, smaller: int
) -> None:
    """The store counts the queue only up to `pending_bound` (store/leasing.py): any longer
    queue must get the same grant and the same reason, in a fleet of up to the bound's
    slots (the store passes the fleet's slots plus the asking node's, at least the
    cluster's own)."""
    view, want, cluster = ask
    bound = pending_bound(want, cluster.total_slots + smaller)
    capped = dataclasses.replace(cluster, pending=bound)
    longer = dataclasses.replace(cluster, pending=bound + beyond)
    grant, why = grant_size(view, want, longer)
    assert grant_size(view, want, capped) == (grant, why)
    shorter = dataclasses.replace(cluster, pending=min(cluster.pending, bound))
    assert grant_size(view, want, shorter) == grant_size(view, want, cluster)


# -- plan_lease ---------------------------------------------------------------------------


def test_plan_never_hands_out_more_than_the_grant() -> None:
    view, cluster = node(slots=2), ClusterView(pending=40, total_slots=8)
    grant, _ = grant_size(view, 20, cluster)
    plan = plan_lease(view, 20, queue(("a", 20), ("b", 20)), cluster)
    assert grant == 10
    assert len(plan) == grant


def test_plan_is_empty_when_nothing_may_be_granted() -> None:
    full = node(slots=1, held=MAX_HELD_PER_SLOT)
    assert plan_lease(full, 5, queue(("a", 5)), ClusterView(5, 1)) == []


@pytest.mark.parametrize(("task_memory", "offered"), [(4095, True), (4096, True), (4097, False)])
def test_a_task_needing_more_memory_than_the_node_has_is_skipped(
    task_memory: int, offered: bool
) -> None:
    view = node(memory_mb=4096)
    plan = plan_lease(view, 5, [Candidate(1, "a", memory_mb=task_memory)], ClusterView(1, 4))
    assert (ids(plan) == [1]) is offered


@pytest.mark.parametrize(
    ("needs", "capabilities", "offered"),
    [
        (frozenset(), frozenset(), True),
        (frozenset(), frozenset({"gpu"}), True),
        (frozenset({"gpu"}), frozenset({"gpu", "avx2"}), True),
        (frozenset({"gpu", "avx2"}), frozenset({"gpu", "avx2"}), True),
        (frozenset({"gpu"}), frozenset(), False),
        (frozenset({"gpu", "avx2"}), frozenset({"gpu"}), False),
    ],
)
def test_a_task_is_offered_only_to_a_node_with_every_capability_it_needs(
    needs: frozenset[str], capabilities: frozenset[str], offered: bool
) -> None:
    view = node(capabilities=capabilities)
    plan = plan_lease(view, 5, [Candidate(1, "a", needs=needs)], ClusterView(1, 4))
    assert (ids(plan) == [1]) is offered


@pytest.mark.parametrize(
    ("total_slots", "offered"), [(4, True), (12, False)], ids=["whole-fleet", "one-of-many"]
)
def test_a_task_lost_on_this_node_goes_elsewhere_unless_this_node_is_the_whole_fleet(
    total_slots: int, offered: bool
) -> None:
    # given a task this 4-slot node lost before, in a fleet of `total_slots`
    lost_here = Candidate(1, "a", failed_on=frozenset({"n1"}))
    # when the node asks for work, then it gets the task back only if no one else could run it
    plan = plan_lease(node(id="n1", slots=4), 5, [lost_here], ClusterView(1, total_slots))
    assert (ids(plan) == [1]) is offered


def test_a_task_lost_on_every_live_node_is_still_offered_to_one_of_them() -> None:
    # given a fleet of exactly n1 and n2, and a task that each of them lost once (2 of 3 used)
    n1, n2 = node(id="n1", slots=4), node(id="n2", slots=4)
    cluster = ClusterView(pending=1, total_slots=n1.slots + n2.slots, live=frozenset({"n1", "n2"}))
    lost_everywhere = Candidate(1, "a", failed_on=frozenset({"n1", "n2"}))
    # when a node of the fleet asks for work
    offered = plan_lease(n1, 1, [lost_everywhere], cluster)
    # then it gets the task: no other node exists that could run it
    assert ids(offered) == [1]


def test_a_task_lost_elsewhere_is_offered_with_a_note_naming_those_nodes() -> None:
    cand = Candidate(1, "a", failed_on=frozenset({"n3", "n2"}))
    (assignment,) = plan_lease(node(id="n1"), 1, [cand], ClusterView(1, 12))
    assert assignment.reason.endswith("; retry after loss on n2, n3")


def test_a_small_customer_is_not_starved_behind_a_large_one() -> None:
    # given customer a queued 10 tasks before customer b queued 2
    candidates = queue(("a", 10), ("b", 2))
    # when a node is granted 4
    plan = plan_lease(node(slots=4), 4, candidates, ClusterView(12, 4))
    # then it takes turns: both of b's tasks are among them
    assert ids(plan) == [1, 11, 2, 12]


def test_round_robin_keeps_queue_order_within_each_customer() -> None:
    candidates = queue(("a", 2), ("b", 1), ("a", 2), ("c", 3))
    plan = plan_lease(node(slots=8), 8, candidates, ClusterView(8, 8))
    assert ids(plan) == [1, 3, 6, 2, 7, 4, 8, 5]


def test_the_reason_states_node_reliability_and_limits() -> None:
    view = node(id="n3", slots=4, held=2, done=49, lost=1)
    (assignment, *_) = plan_lease(view, 10, queue(("a", 12)), ClusterView(12, 16))
    assert assignment.reason == (
        "n3: reliability 0.96 (49/50), 2 of 4 slots free, fair share 3 of 12 pending"
    )


def test_every_reason_starts_with_the_node_and_its_reliability() -> None:
    rng = random.Random(20240611)
    candidates = [
        Candidate(
            i, rng.choice("abc"), failed_on=frozenset(rng.sample(NODE_IDS, rng.randint(0, 2)))
        )
        for i in range(30)
    ]
    view = node(id="n2", slots=8, done=7, lost=2)
    plan = plan_lease(view, 30, candidates, ClusterView(30, 8))
    assert plan
    for assignment in plan:
        assert assignment.reason.startswith("n2: ")
        assert "reliability 0.73 (7/9)" in assignment.reason


@st.composite
def placements(
    draw: st.DrawFn,
) -> tuple[NodeView, int, list[Candidate], ClusterView]:
    view, want, cluster = draw(asks())
    candidates = draw(
        st.lists(
            st.builds(
                Candidate,
                task_id=st.integers(1, 10_000),
                customer_id=st.sampled_from("abc"),
                memory_mb=st.sampled_from([0, 256, 2048, 4096, 8192]),
                needs=st.frozensets(st.sampled_from(CAPABILITIES), max_size=2),
                failed_on=st.frozensets(st.sampled_from(NODE_IDS)),
            ),
            max_size=40,
            unique_by=lambda c: c.task_id,
        )
    )
    # the candidates are a window on the queue, so the queue is at least that long
    pending = max(cluster.pending, len(candidates))
    cluster = ClusterView(pending, cluster.total_slots, cluster.better_free_slots)
    return view, want, candidates, cluster


def fits(view: NodeView, cand: Candidate, cluster: ClusterView) -> bool:
    alone = cluster.total_slots <= view.slots
    return (
        cand.memory_mb <= view.memory_mb
        and cand.needs <= view.capabilities
        and (view.id not in cand.failed_on or alone)
    )


@settings(max_examples=300, deadline=None)
@given(placement=placements())
def test_a_plan_is_a_fitting_duplicate_free_subset_within_the_grant(
    placement: tuple[NodeView, int, list[Candidate], ClusterView],
) -> None:
    view, want, candidates, cluster = placement
    plan = plan_lease(view, want, candidates, cluster)
    by_id = {c.task_id: c for c in candidates}
    chosen = ids(plan)
    grant, _ = grant_size(view, want, cluster)
    assert set(chosen) <= set(by_id)
    assert len(chosen) == len(set(chosen))
    assert len(chosen) <= max(0, want)
    assert all(fits(view, by_id[t], cluster) for t in chosen)
    # it takes as many as it may: the grant, or every fitting task if there are fewer
    fitting = [c for c in candidates if fits(view, c, cluster)]
    assert len(chosen) == min(grant, len(fitting))
    for a in plan:
        assert a.reason.startswith(f"{view.id}: ")
        assert "reliability" in a.reason


@settings(max_examples=300, deadline=None)
@given(placement=placements())
def test_a_plan_takes_turns_across_customers_in_queue_order(
    placement: tuple[NodeView, int, list[Candidate], ClusterView],
) -> None:
    view, want, candidates, cluster = placement
    chosen = set(ids(plan_lease(view, want, candidates, cluster)))
    fitting = [c for c in candidates if fits(view, c, cluster)]
    per_customer = Counter(c.customer_id for c in fitting if c.task_id in chosen)
    for customer in {c.customer_id for c in fitting}:
        own = [c.task_id for c in fitting if c.customer_id == customer]
        taken = per_customer[customer]
        # each customer's share is the head of its own queue
        assert set(own[:taken]) == chosen & set(own)
        # and a customer with tasks left over is at most one turn behind any other
        if taken < len(own):
            assert all(n <= taken + 1 for n in per_customer.values())


# -- locality -----------------------------------------------------------------------------

MB = 1_000_000


def test_a_node_takes_the_tasks_whose_input_it_holds_first_most_bytes_first() -> None:
    candidates = [
        Candidate(1, "a"),
        Candidate(2, "a", local_bytes=1 * MB),
        Candidate(3, "a", local_bytes=5 * MB),
    ]
    plan = plan_lease(node(slots=4), 3, candidates, ClusterView(3, 4))
    assert ids(plan) == [3, 2, 1]


def test_tasks_held_by_another_node_come_after_those_held_by_nobody() -> None:
    candidates = [
        Candidate(1, "a", elsewhere_bytes=8 * MB),
        Candidate(2, "a"),
        Candidate(3, "a", elsewhere_bytes=1),
        Candidate(4, "a"),
    ]
    assert [c.task_id for c in locality_order(candidates)] == [2, 4, 1, 3]
    # it only orders: with room enough, the node still takes the others' tasks too
    plan = plan_lease(node(slots=4), 4, candidates, ClusterView(4, 4))
    assert ids(plan) == [2, 4, 1, 3]


def test_local_bytes_win_over_bytes_held_elsewhere_too() -> None:
    mixed = Candidate(1, "a", local_bytes=1, elsewhere_bytes=9 * MB)
    plan = plan_lease(node(slots=4), 1, [Candidate(2, "a"), mixed], ClusterView(2, 4))
    assert ids(plan) == [1]


def test_a_replica_is_not_put_back_because_the_nodes_that_ran_its_task_hold_its_input() -> None:
    check = Candidate(1, "a", group=9, exclude=frozenset({"n2"}), elsewhere_bytes=5 * MB)
    assert [c.task_id for c in locality_order([check, Candidate(2, "a")])] == [1, 2]


def test_locality_orders_within_each_customer_and_keeps_the_turns() -> None:
    # given customer a first in the queue, and b's second task held here
    candidates = [
        Candidate(1, "a"),
        Candidate(2, "a", elsewhere_bytes=MB),
        Candidate(3, "b"),
        Candidate(4, "b", local_bytes=MB),
        Candidate(5, "a", local_bytes=MB),
    ]
    plan = plan_lease(node(slots=8), 5, candidates, ClusterView(5, 8))
    # a still goes first; each customer's own local task leads its queue
    assert ids(plan) == [5, 4, 1, 3, 2]


@pytest.mark.parametrize(
    ("local_bytes", "note"),
    [
        (12_300_000, "; 12.3 MB of its input already here"),
        (2_500_000_000, "; 2.5 GB of its input already here"),
        (4_096, "; 4.1 KB of its input already here"),
        (512, "; 512 B of its input already here"),
        (0, None),
    ],
)
def test_the_reason_says_how_much_of_the_input_is_already_on_the_node(
    local_bytes: int, note: str | None
) -> None:
    (a,) = plan_lease(node(), 1, [Candidate(1, "a", local_bytes=local_bytes)], ClusterView(1, 4))
    if note is None:
        assert "already here" not in a.reason
    else:
        assert a.reason.endswith(note)


def candidates_with_locality() -> st.SearchStrategy[list[Candidate]]:
    return st.lists(
        st.builds(
            Candidate,
            task_id=st.integers(1, 10_000),
            customer_id=st.sampled_from("abc"),
            group=st.none() | st.integers(10_001, 10_010),
            local_bytes=st.sampled_from([0, 0, 1, MB, 7 * MB]),
            elsewhere_bytes=st.sampled_from([0, 0, 1, MB, 7 * MB]),
        ),
        max_size=40,
        unique_by=lambda c: c.task_id,
    )


@settings(max_examples=300, deadline=None)
@given(candidates=candidates_with_locality())
def test_locality_order_never_drops_or_duplicates_a_candidate(
    candidates: list[Candidate],
) -> None:
    ordered = locality_order(candidates)
    assert Counter(ordered) == Counter(candidates)
    # local ones lead, most bytes first; tasks held only elsewhere come last
    local = [c.local_bytes for c in ordered if c.local_bytes > 0]
    assert local == sorted(local, reverse=True)
    assert [c for c in ordered if c.local_bytes > 0] == ordered[: len(local)]
    rest = ordered[len(local) :]
    elsewhere = [c.elsewhere_bytes > 0 and c.group is None for c in rest]
    assert elsewhere == sorted(elsewhere)


@settings(max_examples=300, deadline=None)
@given(candidates=candidates_with_locality(), want=st.integers(0, 50), slots=st.integers(1, 8))
def test_a_plan_with_locality_is_a_duplicate_free_subset_within_the_grant(
    candidates: list[Candidate], want: int, slots: int
) -> None:
    view = node(slots=slots)
    cluster = ClusterView(max(1, len(candidates)), slots)
    plan = plan_lease(view, want, candidates, cluster)
    chosen = ids(plan)
    grant, _ = grant_size(view, want, cluster)
    assert len(chosen) == len(set(chosen)) and set(chosen) <= {c.task_id for c in candidates}
    groups = [c.group or c.task_id for c in candidates if c.task_id in set(chosen)]
    assert len(groups) == len(set(groups))  # never two copies of one task
    distinct = len({c.group or c.task_id for c in candidates})
    assert len(chosen) == min(grant, distinct)


# -- backup tasks -------------------------------------------------------------------------


def straggler(task_id: int = 7, running_s: float = 30.0, median: float | None = 2.0, **kw):
    return Straggler(task_id, kw.pop("holder", "n2"), running_s, median, **kw)


@pytest.mark.parametrize(
    ("median", "after"),
    [(0.01, BACKUP_MIN_S), (1.0, BACKUP_MIN_S), (10.0, 10.0 * BACKUP_FACTOR)],
)
def test_a_task_is_backed_up_only_well_past_its_jobs_median(median: float, after: float) -> None:
    assert backup_after(median) == after
    assert plan_backups(node(), 1, [straggler(running_s=after, median=median)]) == []
    assert plan_backups(node(), 1, [straggler(running_s=after + 0.1, median=median)])


def test_a_job_with_no_finished_attempt_gets_no_backups() -> None:
    assert plan_backups(node(), 4, [straggler(running_s=1e6, median=None)]) == []


def test_the_longest_running_stragglers_are_backed_up_first_up_to_the_free_slots() -> None:
    stragglers = [straggler(1, 10.0), straggler(2, 50.0), straggler(3, 30.0)]
    assert ids(plan_backups(node(), 2, stragglers)) == [2, 3]
    assert plan_backups(node(), 0, stragglers) == []


@pytest.mark.parametrize(
    "kw",
    [
        {"holder": "n1"},  # its own task
        {"exclude": frozenset({"n1"})},  # it already ran a copy
        {"memory_mb": 8192},  # too big for it
        {"needs": frozenset({"gpu"})},  # needs what it lacks
    ],
)
def test_a_node_backs_up_only_tasks_it_may_run(kw: dict) -> None:
    assert plan_backups(node(id="n1", memory_mb=4096), 1, [straggler(**kw)]) == []


def test_the_backup_reason_names_the_task_its_holder_and_the_medians() -> None:
    view = node(id="n3", slots=4, held=3, done=9, lost=1)
    (a,) = plan_backups(view, 1, [straggler(17, 12.34, 2.06, holder="n1")])
    assert a.reason == (
        "n3: reliability 0.83 (9/10), 1 of 4 slots free; "
        "backup copy of task 17, running 12.3 s on n1 (job median 2.1 s)"
    )


# -- delay scheduling ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("holder_free", "waited_s", "local", "taken"),
    [
        (True, 0.5, 0, False),  # its holder can run it now: leave it there a while
        (True, LOCALITY_WAIT_S + 0.1, 0, True),  # waited long enough: anyone may run it
        (False, 0.5, 0, True),  # its holder is busy: no point waiting
        (True, 0.5, 10_000, True),  # this node holds as much: it is local here
    ],
)
def test_a_task_waits_briefly_for_a_free_node_that_holds_its_input(
    holder_free: bool, waited_s: float, local: int, taken: bool
) -> None:
    cand = Candidate(
        1,
        "a",
        local_bytes=local,
        elsewhere_bytes=10_000,
        waited_s=waited_s,
        holder_free=holder_free,
    )
    cluster = ClusterView(pending=1, total_slots=8, live=frozenset({"n1", "n2"}))
    assert ids(plan_lease(node("n1"), 1, [cand], cluster)) == ([1] if taken else [])


@pytest.mark.parametrize(("waited_s", "taken"), [(5.0, False), (STICKY_WAIT_S + 0.1, True)])
def test_a_task_with_kept_state_elsewhere_waits_longer_even_for_a_busy_holder(
    waited_s: float, taken: bool
) -> None:
    cand = Candidate(1, "a", elsewhere_bytes=10, waited_s=waited_s, sticky=True, keeper="n2")
    cluster = ClusterView(pending=1, total_slots=8, live=frozenset({"n1", "n2"}))
    assert ids(plan_lease(node("n1"), 1, [cand], cluster)) == ([1] if taken else [])


def test_the_node_that_keeps_a_tasks_state_may_take_it_at_once() -> None:
    cand = Candidate(1, "a", waited_s=0.0, sticky=True, keeper="n1")
    cluster = ClusterView(pending=1, total_slots=8, live=frozenset({"n1", "n2"}))
    assert ids(plan_lease(node("n1"), 1, [cand], cluster)) == [1]


# -- placement policies ---------------------------------------------------------------------

POLICIES = [Placement(p, seed=3) for p in Policy]
ROOMY = ClusterView(pending=100, total_slots=100)


def sized(*est: float | None, customer: str = "a") -> list[Candidate]:
    return [Candidate(i + 1, customer, est_s=e) for i, e in enumerate(est)]


def test_fair_placement_is_the_default_and_what_plan_lease_did_before() -> None:
    cands = queue(("a", 3), ("b", 3))
    assert Placement() == FAIR and FAIR.policy is Policy.FAIR
    assert ids(plan_lease(node(), 4, cands, ROOMY)) == [1, 4, 2, 5]
    assert plan_lease(node(), 4, cands, ROOMY) == plan_lease(node(), 4, cands, ROOMY, FAIR)


def test_random_placement_is_a_function_of_its_seed_the_node_and_the_tasks() -> None:
    cands = queue(("a", 40))

    def pick(seed: int, at: str = "n1") -> list[int]:
        return ids(plan_lease(node(at), 4, cands, ROOMY, Placement(Policy.RANDOM, seed)))

    assert pick(1) == pick(1)
    assert pick(1) != pick(2)
    assert pick(1, at="n2") != pick(1)  # each node draws its own
    assert pick(1) != [1, 2, 3, 4]


def test_random_placement_is_roughly_uniform_over_the_window() -> None:
    cands = queue(("a", 10))
    first = Counter(
        plan_lease(node(f"n{i}"), 1, cands, ROOMY, Placement(Policy.RANDOM, 0))[0].task_id
        for i in range(2_000)
    )
    assert set(first) == set(range(1, 11))
    assert max(first.values()) < 2 * min(first.values())


@pytest.mark.parametrize(
    ("done", "lost", "expected"),
    [(50, 0, [2, 4]), (0, 5, [3, 1])],  # reliable: longest first; flaky: shortest first
)
def test_reliability_placement_gives_long_tasks_to_reliable_nodes(
    done: int, lost: int, expected: list[int]
) -> None:
    cands = sized(60.0, 3600.0, 5.0, 900.0)
    plan = plan_lease(node(done=done, lost=lost), 2, cands, ROOMY, Placement(Policy.RELIABILITY))
    assert ids(plan) == expected
    assert "reliability placement" in plan[0].reason


def test_reliability_placement_keeps_customers_taking_turns() -> None:
    cands = [*sized(1.0, 2.0, customer="a"), Candidate(3, "b", est_s=100.0)]
    cands.append(Candidate(4, "b", est_s=50.0))
    plan = plan_lease(node(done=50), 4, cands, ROOMY, Placement(Policy.RELIABILITY))
    assert ids(plan) == [2, 3, 1, 4]


def test_deadline_placement_takes_the_least_slack_first_and_no_deadline_last() -> None:
    cands = [
        Candidate(1, "a", deadline=None),
        Candidate(2, "b", deadline=1_000.0, est_s=100.0),  # slack 900
        Candidate(3, "a", deadline=800.0, est_s=10.0),  # slack 790
        Candidate(4, "c", deadline=2_000.0, est_s=1_500.0),  # slack 500
    ]
    plan = plan_lease(node(), 4, cands, ROOMY, Placement(Policy.DEADLINE))
    assert ids(plan) == [4, 3, 2, 1]


def test_deadline_placement_puts_tasks_longer_than_the_nodes_expected_uptime_last() -> None:
    cands = [
        Candidate(1, "a", deadline=100.0, est_s=3_600.0),
        Candidate(2, "a", deadline=5_000.0, est_s=60.0),
    ]
    short_lived = NodeView("n1", 4, 4096, expected_up_s=600.0)
    assert ids(plan_lease(short_lived, 1, cands, ROOMY, Placement(Policy.DEADLINE))) == [2]
    assert ids(plan_lease(node(), 1, cands, ROOMY, Placement(Policy.DEADLINE))) == [1]


@settings(max_examples=150, deadline=None)
@given(
    policy=st.sampled_from(POLICIES),
    want=st.integers(0, 12),
    done=st.integers(0, 30),
    lost=st.integers(0, 30),
    spec=st.lists(
        st.tuples(
            st.sampled_from("abc"),
            st.one_of(st.none(), st.floats(1, 10_000)),
            st.one_of(st.none(), st.floats(0, 10_000)),
            st.one_of(st.none(), st.integers(1, 3)),
            st.frozensets(st.sampled_from(NODE_IDS), max_size=2),
        ),
        max_size=30,
    ),
)
def test_every_policy_keeps_the_same_bounds_and_rules(
    policy: Placement,
    want: int,
    done: int,
    lost: int,
    spec: list[tuple[str, float | None, float | None, int | None, frozenset[str]]],
) -> None:
    cands = [
        Candidate(i + 10, c, est_s=e, deadline=dl, group=g, exclude=ex)
        for i, (c, e, dl, g, ex) in enumerate(spec)
    ]
    n = node(done=done, lost=lost)
    cluster = ClusterView(pending=len(cands), total_slots=8, better_free_slots=4)
    plan = plan_lease(n, want, cands, cluster, policy)
    fair = plan_lease(n, want, cands, cluster)
    grant, _ = grant_size(n, want, cluster)
    chosen = ids(plan)
    by_id = {c.task_id: c for c in cands}
    assert len(chosen) == len(set(chosen)) <= max(0, grant)
    assert all(n.id not in by_id[t].exclude for t in chosen)
    groups = [by_id[t].group or t for t in chosen]
    assert len(groups) == len(set(groups))  # never two copies of one task to one node
    assert len(chosen) == len(fair)  # a policy changes which tasks, never how many


@given(st.integers(0, 10_000), st.integers(0, 10_000))
def test_a_reasons_track_record_is_the_nodes_reliability_to_two_places(
    done: int, lost: int
) -> None:
    # Given a node's finished and lost attempts, Then the kept clause reads as formatted afresh
    node = NodeView("n", slots=1, memory_mb=1, done=done, lost=lost)
    expected = f"reliability {reliability(node):.2f} ({done}/{done + lost})"
    assert scheduler._track_record(done, lost) == expected
    assert scheduler._track_record(done, lost) == expected  # and so does the kept one
