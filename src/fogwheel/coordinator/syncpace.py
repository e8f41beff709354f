"""The coordinator's side of sync pacing: measures its own load, tells each node when to come.

The decisions are core/pacing.py's; this shell holds the window's queueing delays (how long
each sync waited for a worker thread) behind one lock (syncs are served by a thread pool),
reads the clock, feeds the Pacer once a second, and stretches the store's lease period and
gone horizon with the waits it asks (so a paced node neither loses its leases nor looks gone).
`budget` is one process's: the fleet is paced by it times the coordinator processes alive on
the database (`Store.processes_live`), since the nodes' syncs are spread over all of them.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass

from fogwheel.core import pacing
from fogwheel.store import Store

OBSERVE_EVERY_S = 1.0  # how often the Pacer is fed a window of queueing delays
SAMPLES_MAX = 4096  # latencies kept a window; past it, every other one is dropped


@dataclass(frozen=True, slots=True)
class Pace:
    """What a sync's answer says about timing (SyncOut's fields of the same names)."""

    next_sync_s: float
    pace_s: float
    lease_seconds: float


class SyncPace:
    """One per process: `queued(s)` for every sync, `answer(...)` for its timing fields."""

    def __init__(
        self, store: Store, budget: float, target_s: float = pacing.TARGET_LATENCY_S
    ) -> None:
        self.store = store
        self.budget = budget
        self.lease_s = store.lease_seconds  # the configured floors, before any stretch
        self.gone_after_s = store.gone_after_s
        self.closed_loop = target_s > 0  # 0: waits follow the budget alone
        self.pacer = pacing.Pacer(target_s)
        self.busy = pacing.SyncRate()  # syncs that reported, renewed or leased
        self._lock = threading.Lock()
        self._observed_at = time.monotonic()
        self._latencies: list[float] = []
        self._counted = 0  # syncs this window (the kept latencies may be a sample of them)
        self._wait_s = pacing.POLL_S  # the mean wait last asked

    def queued(self, seconds: float) -> None:
        """How long one sync waited, from its arrival to a worker thread taking it."""
        with self._lock:
            if len(self._latencies) >= SAMPLES_MAX:
                del self._latencies[::2]  # the window's shape is kept, its size bounded
            self._latencies.append(seconds)
            self._counted += 1

    @property
    def factor(self) -> float:
        return self.pacer.factor

    def answer(self, work_waiting: bool, was_busy: bool) -> Pace:
        """The timing for one sync's answer; `was_busy`: it reported, renewed or leased."""
        now = time.time()
        mono = time.monotonic()
        if was_busy:
            self.busy.add(now)
        fleet = pacing.Fleet(
            self.store.live_count(now),
            self.budget * self.store.processes_live,  # the set's: each process serves its own
            work_waiting,
            self.gone_after_s,
            self.busy.per_s(now),
        )
        with self._lock:
            if mono - self._observed_at >= OBSERVE_EVERY_S and self.closed_loop:
                p99 = pacing.high_percentile(self._latencies)
                window = mono - self._observed_at
                self.pacer.observe(p99, window, self._wait_s, self._counted)
                self._counted = 0
                self._observed_at, self._latencies = mono, []
            factor = self.pacer.factor
            idle_s = pacing.paced_wait_s(fleet, factor)
            busy_s = pacing.busy_wait_s(fleet, factor) if factor > 1 else 0.0
            # The Pacer's step: how long a changed wait takes to reach the nodes that load us.
            self._wait_s = max(busy_s, idle_s) if fleet.busy_per_s > 0 else idle_s
        stretch = pacing.horizons(self.lease_s, self.gone_after_s, idle_s, busy_s)
        # Plain float attributes: a reader on another thread sees the old value or the new.
        self.store.lease_seconds = stretch.lease_s
        self.store.gone_after_s = stretch.gone_after_s
        return Pace(
            next_sync_s=pacing.stretched(fleet, factor, random.random()),
            pace_s=pacing.pace_s(fleet, factor, random.random()),
            lease_seconds=stretch.lease_s,
        )
