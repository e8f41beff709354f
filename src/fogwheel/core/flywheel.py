"""The flywheel's figures at one moment, and when to take the next: the console's history.

The flywheel (DESIGN.md) is devices → capacity → price → customers → payouts → devices. To
watch it turn the coordinator samples the fog's figures every `period_s` seconds into a table
(store/console.py) and keeps a bounded window of them. This module decides what a sample holds,
which time slot it belongs to, and which samples fall out of the window; it reads no clock and
no database: the coordinator passes `now` and the counts it read.

A sample's slot is `floor(now / period_s)`, the table's key: several coordinator processes on
one database each try to write the slot, and the first insert wins (the others' conflict is
no error), so the history has one row a slot whoever sampled it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

DEFAULT_PERIOD_S = 60.0  # a sample a minute: a day is 1,440 rows
MIN_PERIOD_S = 0.5  # tests sample fast; nothing sensible samples faster
DEFAULT_KEEP_S = 14 * 86400.0  # two weeks of history …
MAX_ROWS = 50_000  # … and never more rows than this, whatever the period


@dataclass(frozen=True, slots=True)
class FleetCounts:
    """What the store counted at one moment: the inputs of a sample."""

    devices_online: int  # up, not revoked or quarantined, seen within the gone horizon
    devices_known: int  # every device that ever joined and is not revoked
    cores_online: int
    disk_mb_online: int
    uplink_bps_online: float  # measured uplinks of online devices (0 where none was measured)
    tasks_running: int  # leased task rows (replicas included: each occupies a device)
    slots_online: int  # the online devices' scheduling slots: cores, capped by quota
    tasks_done: int  # task rows finished done, ever (a counter)
    credits_to_owners: int  # micro-credits in node accounts, ever (a counter)
    bytes_served: int  # CDN bytes receipted, ever (a counter)
    per_cpu_hour: int  # the price now, micro-credits
    per_gb_served: int


@dataclass(frozen=True, slots=True)
class Sample:
    """One row of the history: the counts, the slot, and the utilisation they imply."""

    slot: int
    at: float
    devices_online: int
    devices_known: int
    cores_online: int
    disk_mb_online: int
    uplink_bps_online: float
    tasks_running: int
    slots_online: int
    utilisation: float  # tasks_running / slots_online, 0 with no slot online, at most 1
    tasks_done: int
    credits_to_owners: int
    bytes_served: int
    per_cpu_hour: int
    per_gb_served: int

    def row(self) -> dict[str, float | int]:
        """The sample as the table's columns."""
        return asdict(self)


def slot_of(now: float, period_s: float) -> int:
    """The time slot `now` falls in: samples are keyed by it, one a slot."""
    return math.floor(now / period_s)


def utilisation(running: int, slots: int) -> float:
    """Share of the online devices' task slots that hold a task; 0 when no slot is online.

    Clamped to 1: a device that went offline while holding leases still counts its tasks as
    running until they expire, while its slots no longer count."""
    if slots <= 0:
        return 0.0
    return min(1.0, max(0, running) / slots)


def sample(counts: FleetCounts, now: float, period_s: float) -> Sample:
    """The sample of `counts` taken at `now`."""
    return Sample(
        slot=slot_of(now, period_s),
        at=now,
        utilisation=round(utilisation(counts.tasks_running, counts.slots_online), 4),
        **asdict(counts),
    )


def oldest_kept(now: float, keep_s: float) -> float:
    """Samples taken before this moment fall out of the window."""
    return now - keep_s


def check_period(period_s: float) -> float:
    """`period_s` if it is a usable sampling period, else ValueError with what to give."""
    if not math.isfinite(period_s) or period_s < MIN_PERIOD_S:
        raise ValueError(
            f"a sampling period of {period_s!r} s: give at least {MIN_PERIOD_S} s "
            f"(the default is {DEFAULT_PERIOD_S:g} s)"
        )
    return period_s
