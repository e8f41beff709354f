"""core/fleetview.py: the summary's ClusterView is the one a pass over the fleet builds."""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import given, settings
from hypothesis import strategies as st

from fogwheel.core.fleetview import FleetSummary
from fogwheel.core.scheduler import ClusterView, NodeView, reliability

IDS = [f"n{i}" for i in range(12)]  # few ids, so that the asking node is often in the fleet


def brute_cluster(fleet: Sequence[NodeView], view: NodeView, pending: int) -> ClusterView:
    """What store/leasing.py's `_lease_pending` built on every lease before the summary."""
    nodes = [v for v in fleet if v.id != view.id] + [view]
    rel = reliability(view)
    return ClusterView(
        pending=pending,
        total_slots=sum(v.slots for v in nodes),
        better_free_slots=sum(max(0, v.slots - v.held) for v in nodes if reliability(v) > rel),
        live=frozenset(v.id for v in nodes),
        free=frozenset(v.id for v in nodes if v.held < v.slots),
    )


def node_view(node_id: str) -> st.SearchStrategy[NodeView]:
    # Small done/lost counts make equal reliabilities (ties at the bisect) common.
    return st.builds(
        NodeView,
        st.just(node_id),
        slots=st.integers(min_value=0, max_value=8),
        memory_mb=st.just(512),
        held=st.integers(min_value=0, max_value=12),  # more than its slots: cores it reported
        done=st.integers(min_value=0, max_value=6),
        lost=st.integers(min_value=0, max_value=6),
    )


fleets = st.lists(st.sampled_from(IDS), unique=True, max_size=len(IDS)).flatmap(
    lambda ids: st.tuples(*(node_view(i) for i in ids)).map(list)
)
asking = st.sampled_from([*IDS, "newcomer"]).flatmap(node_view)


@settings(max_examples=300)
@given(fleets, asking, st.integers(min_value=0, max_value=1000))
def test_the_summarys_cluster_view_equals_the_one_built_from_the_whole_fleet(
    fleet: list[NodeView], view: NodeView, pending: int
) -> None:
    assert FleetSummary.of(fleet).cluster_for(view, pending) == brute_cluster(fleet, view, pending)


@given(fleets, asking)
def test_many_leases_read_one_summary_without_changing_it(
    fleet: list[NodeView], view: NodeView
) -> None:
    summary = FleetSummary.of(fleet)
    before = (summary.total_slots, summary.live, summary.free, summary.free_above)
    summary.cluster_for(view, 5)
    assert (summary.total_slots, summary.live, summary.free, summary.free_above) == before
    assert summary.cluster_for(view, 5) == brute_cluster(fleet, view, 5)


def test_the_live_and_free_sets_are_reused_when_the_asking_node_keeps_its_membership() -> None:
    fleet = [NodeView("a", 4, 512, held=1), NodeView("b", 2, 512, held=2)]
    summary = FleetSummary.of(fleet)
    cluster = summary.cluster_for(NodeView("a", 4, 512, held=3, done=9), 1)
    assert cluster.live is summary.live and cluster.free is summary.free
    assert cluster.free == {"a"} and cluster.total_slots == 6


def test_better_free_slots_count_only_nodes_strictly_more_reliable() -> None:
    fleet = [
        NodeView("new", 4, 512, held=0),  # reliability 0.5
        NodeView("good", 4, 512, held=1, done=8),  # 0.9
        NodeView("bad", 4, 512, held=0, lost=8),  # 0.1
    ]
    summary = FleetSummary.of(fleet)
    assert summary.better_free_slots(0.5) == 3
    assert summary.better_free_slots(0.1) == 7
    assert summary.better_free_slots(0.9) == 0
    assert summary.cluster_for(NodeView("x", 2, 512), 10).better_free_slots == 3
