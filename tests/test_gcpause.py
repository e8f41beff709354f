"""The collector's pauses are timed by generation, and settle() freezes and spaces them."""

from __future__ import annotations

import gc

from prometheus_client import CollectorRegistry

from fogwheel.coordinator.gcpause import THRESHOLDS, GcPauses, settle


def count(registry: CollectorRegistry, generation: str) -> float:
    value = registry.get_sample_value("fogwheel_gc_pause_seconds_count", {"generation": generation})
    return value or 0.0


def test_every_pass_is_timed_by_its_generation() -> None:
    registry = CollectorRegistry()
    pauses = GcPauses(registry)
    gc.collect()
    assert count(registry, "2") == 0  # not installed: nothing timed
    pauses.install()
    pauses.install()  # once only
    try:
        gc.collect()
        gc.collect(0)
    finally:
        pauses.uninstall()
    assert count(registry, "2") == 1
    assert count(registry, "0") >= 1
    total = registry.get_sample_value("fogwheel_gc_pause_seconds_sum", {"generation": "2"})
    assert total is not None and 0 < total < 10
    gc.collect()
    assert count(registry, "2") == 1  # uninstalled: no longer timed


def test_settle_freezes_start_up_and_spaces_the_passes() -> None:
    before = gc.get_threshold()
    try:
        kept = [[i] for i in range(1000)]  # lists: objects the collector tracks
        settle()
        assert gc.get_freeze_count() >= len(kept)
        assert gc.get_threshold() == THRESHOLDS
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
