"""The cyclic garbage collector's pauses: measured, and kept short (docs/scale.md, "Pauses").

CPython's collector stops every thread of the process while it walks the objects it tracks;
a full (generation 2) pass walks all of them. A coordinator holds a few hundred thousand
long-lived objects before it serves anything (modules, the app, its routes and models), and a
fleet adds more (the fleet's views, credential caches), so a full pass at 10,000 nodes is tens
of milliseconds during which no sync is answered: a tail-latency floor no query tuning removes.

Two things, both standard practice for long-lived CPython servers:

- `settle()` after start-up: one collection, then `gc.freeze()`, which moves everything alive
  into a generation the collector never walks again (what is loaded at start lives as long as
  the process), so later full passes walk only what the fleet made.
- `settle()` also spaces the passes out (`THRESHOLDS`): a young pass every 10,000 net
  allocations rather than 700 (each still about a millisecond), a middle one every 20 of
  those, and a full one only every 100 middle ones. A request's objects die young, by
  reference count, so what the collector finds to walk is what outlived a few requests; with
  CPython's defaults a busy 10,000-node coordinator ran a full pass every few seconds
  (bench/fleet.py, `gc_full_passes`), each long enough to show in the sync p99.
- `GcPauses`: every pass timed through `gc.callbacks`, by generation, as
  `fogwheel_gc_pause_seconds` in /metrics, so that the pauses are a figure, not a guess.
"""

from __future__ import annotations

import gc
import threading
import time
from typing import Any

from prometheus_client import CollectorRegistry, Histogram

# From a young pass (well under a millisecond) to a full one that would show in a sync's p99.
PAUSE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


class GcPauses:
    """Times each collection, start to stop, into a histogram labelled by generation."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.pauses = Histogram(
            "fogwheel_gc_pause_seconds",
            "Pauses of the cyclic garbage collector by generation (2: a full pass), during "
            "which no thread of this process runs (this process)",
            ["generation"],
            buckets=PAUSE_BUCKETS,
            registry=registry,
        )
        self._by_generation = [self.pauses.labels(str(g)) for g in range(3)]
        self._started = threading.local()
        self._installed = False

    def install(self) -> None:
        if not self._installed:
            gc.callbacks.append(self._callback)
            self._installed = True

    def uninstall(self) -> None:
        if self._installed:
            gc.callbacks.remove(self._callback)
            self._installed = False

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        # A collection runs in the thread whose allocation triggered it, start to stop.
        if phase == "start":
            self._started.at = time.perf_counter()
            return
        at = getattr(self._started, "at", None)
        if at is not None:
            generation = min(max(int(info.get("generation", 2)), 0), 2)
            self._by_generation[generation].observe(time.perf_counter() - at)
            self._started.at = None


# (young, middle, full) as gc.set_threshold takes them; CPython's defaults are (700, 10, 10).
THRESHOLDS = (10_000, 20, 100)


def settle() -> None:
    """Collect once and freeze what survives: start-up's objects are never walked again;
    then space the passes out (THRESHOLDS)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
