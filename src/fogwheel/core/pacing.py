"""When a node should sync next: an idle fleet's syncs spread within the coordinator's budget.

An idle agent polls every half second (NodeConfig.poll_s): 1,000 idle agents are 2,000
syncs a second, ten times what one coordinator process served when issue 12 measured it,
and every one of them finds nothing to do. So the coordinator answers each sync with
`next_sync_s` (SyncOut), the longest the node may wait before its next sync when it has
nothing to report: the fleet's idle syncs then arrive at about `IDLE_SHARE` of the budget,
spread by a random jitter so that nodes that joined together do not come back together
(the thundering herd of synchronised timers: Floyd and Jacobson, "The Synchronization of
Periodic Routing Messages", 1994). While work waits the whole budget may go to syncs, so
that idle nodes come for it sooner.

Two bounds hold whatever the inputs: a node is never asked to come more often than the
agent's own idle interval (`POLL_S`), and never told to wait so long that it would look gone
(`max_wait_s`: two thirds of the gone horizon, leaving room for a failed sync and its retry).
Pure: the caller passes the fleet's figures and the random draw in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

POLL_S = 0.5  # the agent's own idle interval: no node is asked to come more often
IDLE_SHARE = 0.5  # idle heartbeats may use this share of the budget; the rest is for work
JITTER = 0.25  # each wait is drawn within ±25 % of the mean
GONE_SHARE = 2 / 3  # the longest wait, as a share of the horizon after which a node is gone
# Syncs a second that one coordinator process serves within a p99 of 100 ms on a 2-core
# machine (bench/fleet.py, docs/benchmarks.md "Fleet"); FOGWHEEL_SYNC_BUDGET overrides it.
DEFAULT_BUDGET = 300.0
# A sync that reports, renews or leases costs about five idle ones (bench/fleet.py: ~7 ms of
# the coordinator's CPU against ~1.4 ms): the idle fleet gets what such syncs leave over ...
BUSY_COST = 5.0
IDLE_FLOOR = 0.1  # ... but never less than this share of the budget


@dataclass(frozen=True, slots=True)
class Fleet:
    """What the coordinator knows when it answers a sync."""

    live: int  # live nodes (up, seen within the gone horizon)
    budget: float  # syncs a second the coordinator set serves within its latency target
    work_waiting: bool  # tasks are pending: idle nodes should come for them soon
    gone_after_s: float  # a node silent this long is taken for gone
    busy_per_s: float = 0.0  # syncs a second that reported, renewed or leased (SyncRate)


def max_wait_s(gone_after_s: float) -> float:
    """The longest wait ever asked: a node that waits it, then misses a sync, is still live."""
    return max(POLL_S, GONE_SHARE * gone_after_s)


def mean_wait_s(fleet: Fleet) -> float:
    """The mean wait that keeps the fleet's syncs within its share of the budget.

    `live` nodes each syncing every `w` seconds make `live / w` syncs a second; the share of
    the budget they may use (less what busy syncs cost) gives `w`. At least POLL_S, and
    low enough that the jittered wait stays within max_wait_s."""
    share = 1.0 if fleet.work_waiting else IDLE_SHARE
    busy = BUSY_COST * max(0.0, fleet.busy_per_s) if math.isfinite(fleet.busy_per_s) else 0.0
    rate = max(fleet.budget * share - busy, fleet.budget * IDLE_FLOOR)
    top = max_wait_s(fleet.gone_after_s)
    wait = math.inf  # no budget at all: as seldom as is safe
    if rate > 0:
        wait = max(0, fleet.live) / rate if math.isfinite(rate) else 0.0
    return min(max(wait, POLL_S), top / (1 + JITTER))


def next_sync_s(fleet: Fleet, draw: float) -> float:
    """Seconds until the node's next sync, for a uniform random `draw` in [0, 1)."""
    mean = mean_wait_s(fleet)
    draw = min(max(draw, 0.0), 1.0)
    wait = round(mean * (1 + JITTER * (2 * draw - 1)), 3)  # a millisecond is precise enough
    return min(max(wait, POLL_S), max_wait_s(fleet.gone_after_s))


class SyncRate:
    """Counts syncs in one-second buckets (`now` passed in): how many a second went by.

    The coordinator counts its busy syncs with it for `Fleet.busy_per_s`. Lossy under
    threads by design (a count off by one changes a wait by a fraction of a percent)."""

    def __init__(self) -> None:
        self._second = 0
        self._count = 0
        self._previous = 0

    def add(self, now: float) -> None:
        second = int(now)
        if second != self._second:
            self._previous = self._count if second == self._second + 1 else 0
            self._second, self._count = second, 0
        self._count += 1

    def per_s(self, now: float) -> float:
        """Syncs in the last whole second (or in this one, if more came already)."""
        second = int(now)
        if second == self._second:
            return float(max(self._previous, self._count))
        return float(self._count) if second == self._second + 1 else 0.0
