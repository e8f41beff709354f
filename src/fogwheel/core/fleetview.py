"""The live fleet summarised once, so that placing work on one node costs no pass over the fleet.

Placement asks, for every lease, the fleet's total slots, its live and free node ids, and the
free slots of the nodes more reliable than the asking one (core/scheduler.py: `ClusterView`).
Computed from 10,000 `NodeView`s on every lease that was about 11.6 ms of CPU (issue 12,
docs/benchmarks.md "Fleet"). The store refreshes its view of the fleet once a second anyway:
`FleetSummary.of` does the O(n log n) work then (reliabilities sorted, free slots summed from
the most reliable down), and `cluster_for` answers each lease in O(log n) plus a set copy only
when the asking node's own membership changed.

The answer equals the brute-force one exactly: the asking node's cached view is replaced by
its fresh one, as if the fleet were rebuilt with it (tests/test_core_fleetview.py).
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

from fogwheel.core.scheduler import ClusterView, NodeView, reliability


def _free_slots(v: NodeView) -> int:
    return max(0, v.slots - v.held)


@dataclass(frozen=True, slots=True)
class FleetSummary:
    """The aggregates of one snapshot of the live fleet that placement reads."""

    total_slots: int
    live: frozenset[str]
    free: frozenset[str]
    by_id: dict[str, NodeView]
    rels: tuple[float, ...]  # every node's reliability, ascending
    free_above: tuple[int, ...]  # free_above[i]: free slots of the nodes at rels[i:]

    @classmethod
    def of(cls, views: Sequence[NodeView]) -> FleetSummary:
        """Summarise `views` (distinct ids: the store's live nodes)."""
        ranked = sorted(((reliability(v), _free_slots(v)) for v in views), key=lambda p: p[0])
        free_above = [0] * (len(ranked) + 1)
        for i in range(len(ranked) - 1, -1, -1):
            free_above[i] = free_above[i + 1] + ranked[i][1]
        return cls(
            total_slots=sum(v.slots for v in views),
            live=frozenset(v.id for v in views),
            free=frozenset(v.id for v in views if v.held < v.slots),
            by_id={v.id: v for v in views},
            rels=tuple(r for r, _ in ranked),
            free_above=tuple(free_above),
        )

    def better_free_slots(self, rel: float) -> int:
        """Free slots of the nodes whose reliability is strictly above `rel`."""
        return self.free_above[bisect.bisect_right(self.rels, rel)]

    def cluster_for(self, view: NodeView, pending: int) -> ClusterView:
        """The ClusterView of this fleet with `view` in place of the node's cached entry."""
        rel = reliability(view)
        old = self.by_id.get(view.id)
        total = self.total_slots + view.slots
        better = self.better_free_slots(rel)
        if old is not None:
            total -= old.slots
            if reliability(old) > rel:
                better -= _free_slots(old)
        # The fresh view's own reliability is not above itself: it adds no better free slots.
        live = self.live if old is not None else self.live | {view.id}
        is_free = view.held < view.slots
        if is_free == (view.id in self.free):
            free = self.free
        elif is_free:
            free = self.free | {view.id}
        else:
            free = self.free - {view.id}
        return ClusterView(
            pending=pending, total_slots=total, better_free_slots=better, live=live, free=free
        )
