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

That open-loop wait counts syncs, but syncs differ in cost, and a fleet whose nodes all hold
work syncs as often as their tasks finish: 10,000 busy devices offer more syncs than one
process serves, and its queue, so its latency, grows without bound. So the wait is also
closed-loop (`Pacer`): each process measures how long its syncs queue, from arrival until a
worker thread takes them, and stretches every wait, busy nodes' too (`pace_s`), while their
99th percentile is over `TARGET_LATENCY_S`. Queueing, not CPU: what saturates first may be
the CPU or the database's write lock, and a queue forms in front of either. Queueing, not the
whole latency: a sync slowed by other work on a shared machine, with no queue in front of it,
is not this process's load, and stretching the fleet's waits would not make it faster. The
correction is spread over one wait period, because a changed wait reaches the fleet only as
its nodes come back: a faster one would overshoot and oscillate (the delayed-feedback loop of
TCP congestion control, Jacobson, "Congestion Avoidance and Control", 1988, whose cure is the
same: act once per round trip). Leases and the gone horizon stretch with the wait
(`horizons`), so that a paced node neither loses its leases nor looks gone; `MAX_WAIT_S`
bounds them all.
Pure: the caller passes the fleet's figures, its measurements and the random draw in.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

POLL_S = 0.5  # the agent's own idle interval: no node is asked to come more often
IDLE_SHARE = 0.5  # idle heartbeats may use this share of the budget; the rest is for work
JITTER = 0.25  # each wait is drawn within ±25 % of the mean
GONE_SHARE = 2 / 3  # the longest wait, as a share of the horizon after which a node is gone
# Syncs a second that one coordinator process serves within a p99 of 100 ms on a 2-core
# machine (bench/fleet.py, docs/benchmarks.md "Fleet"); FOGWHEEL_SYNC_BUDGET overrides it.
# `Fleet.budget` is the set's: this times the processes alive (coordinator/syncpace.py).
DEFAULT_BUDGET = 300.0
# A sync that reports, renews or leases costs about five idle ones (bench/fleet.py: ~7 ms of
# the coordinator's CPU against ~1.4 ms): the idle fleet gets what such syncs leave over ...
BUSY_COST = 5.0
IDLE_FLOOR = 0.1  # ... but never less than this share of the budget
TARGET_LATENCY_S = 0.05  # a process whose syncs queue longer (p99) stretches waits (Pacer)
MAX_FACTOR = 100.0  # the most a wait is ever stretched past the open-loop one
MIN_SAMPLES = 20  # syncs a window needs before an empty queue relaxes the Pacer
MAX_WAIT_S = 600.0  # the longest wait ever asked, however loaded the coordinator
LEASE_WAITS = 3.5  # a paced node's lease lasts this many of its longest waits ...
GONE_WAITS = 1.5  # ... and it is taken for gone after this many
MIN_PACE_S = 0.05  # a shorter pace than the agent's own report delay is no pace at all


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
    wait = _jittered(mean_wait_s(fleet), draw)
    return min(max(wait, POLL_S), max_wait_s(fleet.gone_after_s))


def _bounded(factor: float) -> float:
    return min(max(factor, 1.0), MAX_FACTOR) if math.isfinite(factor) else MAX_FACTOR


def paced_wait_s(fleet: Fleet, factor: float) -> float:
    """The mean wait between an idle node's syncs: the open-loop wait (`mean_wait_s`) for a
    budget `factor` times smaller, and up to MAX_WAIT_S (after the jitter) rather than the
    gone horizon (which stretches with it: `horizons`); never shorter than the open-loop
    wait. A small fleet stays quick: 4 nodes under the largest stretch wait seconds."""
    base = mean_wait_s(fleet)
    if not factor > 1.0:
        return base
    slower = dataclasses.replace(
        fleet,
        budget=fleet.budget / _bounded(factor),
        gone_after_s=max(fleet.gone_after_s, MAX_WAIT_S / GONE_SHARE),
    )
    return max(base, min(mean_wait_s(slower), MAX_WAIT_S / (1 + JITTER)))


def busy_wait_s(fleet: Fleet, factor: float) -> float:
    """The mean wait between a busy node's syncs: the whole fleet within the budget made
    `factor` times smaller (`live * factor / budget`), up to MAX_WAIT_S after the jitter.

    No POLL_S floor: a small fleet under a large stretch still reports within a second."""
    cap = MAX_WAIT_S / (1 + JITTER)
    if not (fleet.budget > 0 and math.isfinite(fleet.budget)):
        return cap
    return min(max(0, fleet.live) / fleet.budget * _bounded(factor), cap)


def stretched(fleet: Fleet, factor: float, draw: float) -> float:
    """Seconds until an idle node's next sync: `next_sync_s`, stretched under load."""
    if factor <= 1.0:
        return next_sync_s(fleet, draw)
    return max(_jittered(paced_wait_s(fleet, factor), draw), POLL_S)


def pace_s(fleet: Fleet, factor: float, draw: float) -> float:
    """The least wait between a busy node's syncs; 0 (at its own pace: each result within
    the agent's report delay) while this process is not over its load, or while the pace
    would be shorter than that delay anyway.

    A busy node waits it before it reports unless a lease would expire; it asks for enough
    work to last it (core/nodestate.py)."""
    wait = busy_wait_s(fleet, factor)
    if factor <= 1.0 or wait < MIN_PACE_S:
        return 0.0
    return _jittered(wait, draw)


def _jittered(mean: float, draw: float) -> float:
    """`mean` within ±JITTER, by the uniform `draw`; a millisecond is precise enough."""
    draw = min(max(draw, 0.0), 1.0) if math.isfinite(draw) else 0.5
    return round(mean * (1 + JITTER * (2 * draw - 1)), 3)


@dataclass(frozen=True, slots=True)
class Horizons:
    """How long leases last and when a silent node is gone, given the waits being asked."""

    lease_s: float
    gone_after_s: float


def horizons(lease_s: float, gone_after_s: float, idle_s: float, busy_s: float) -> Horizons:
    """The configured lease and gone horizon, or longer, so that a busy node that waits the
    longest jittered `busy_s` still renews its leases three times a lease, and any node that
    waits its longest wait (and then misses one sync) is still live. With no stretch (waits
    under the configured bounds) they are unchanged."""

    def longest(wait: float) -> float:
        return max(wait, 0.0) * (1 + JITTER) if math.isfinite(wait) else 0.0

    return Horizons(
        lease_s=max(lease_s, LEASE_WAITS * longest(busy_s)),
        gone_after_s=max(gone_after_s, GONE_WAITS * max(longest(idle_s), longest(busy_s))),
    )


class Pacer:
    """How much to stretch every wait so that syncs queue at this process within `target_s`.

    `observe` is called about once a second with the window's queueing delay (its 99th
    percentile, arrival to a worker thread) and the mean wait the fleet is being asked; the
    factor moves by (delay / target), bounded to [1/2, 4], to the power (window / wait):
    the whole correction once per wait period, the time a new wait needs to reach every
    node, in both directions. A first overload (at the open-loop wait, a short one) moves it
    at once; a burst that passes (every device's first sync, when a fleet starts) moves it
    little more, since the longer wait it set slows the step. Never below 1 (the open-loop
    wait is the least) nor above MAX_FACTOR. A window without syncs changes nothing, and
    one with fewer than MIN_SAMPLES does not relax it: between the returns of a paced fleet
    an empty queue is no news."""

    def __init__(self, target_s: float = TARGET_LATENCY_S) -> None:
        ok = math.isfinite(target_s)
        self.target_s = min(max(target_s, 0.001), 60.0) if ok else TARGET_LATENCY_S
        self.factor = 1.0

    def observe(
        self, latency_s: float | None, window_s: float, wait_s: float, samples: int = MIN_SAMPLES
    ) -> float:
        if latency_s is None or not math.isfinite(latency_s) or latency_s < 0:
            return self.factor
        if not (window_s > 0 and math.isfinite(window_s)):
            return self.factor
        ratio = min(max(latency_s / self.target_s, 0.5), 4.0)
        if ratio < 1 and samples < MIN_SAMPLES:
            return self.factor  # a quiet window says nothing of what more syncs would cost
        wait = max(wait_s, window_s) if math.isfinite(wait_s) else MAX_WAIT_S
        step = min(1.0, window_s / wait)
        factor = self.factor * ratio**step
        self.factor = min(max(factor, 1.0), MAX_FACTOR)
        return self.factor


def high_percentile(samples: list[float], q: float = 0.99) -> float | None:
    """The `q` quantile of `samples` (nearest rank), or None when there are none."""
    if not samples:
        return None
    ordered = sorted(samples)
    rank = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))
    return ordered[rank]


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
