"""A device's up intervals, and how long it is expected to stay up: one definition for the
coordinator (store/fleet.py mirrors `after_sync` in SQL) and the simulator (sim/engine.py).

An up interval starts when a device joins, or syncs again after it left or went gone; it
ends when the device leaves (a leaving sync) or goes gone (no sync within the gone horizon:
the interval then ended at its last sync, and is closed when it comes back). Only completed
intervals count, as a sum and a count: the expected up time is their mean, which is what the
`deadline` placement policy weighs a task's length against (core/scheduler.py). The mean of
completed intervals is the plain estimator of a renewal process's interval length; for the
heavy-tailed up intervals of volunteer hosts (Javadi et al., IEEE TPDS 2011) it is biased
towards the long ones a host has finished, which errs on the side of giving it long tasks.
Pure functions: no clock, no database.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class UpHistory:
    """What is kept per device: the current interval's start, and the completed ones."""

    up_since: float | None = None  # when the current up interval began; None: not up
    total_s: float = 0.0  # seconds of completed up intervals
    count: int = 0  # completed up intervals


def expected_up_s(total_s: float, count: int) -> float | None:
    """Mean completed up interval, seconds; None before the first interval completed."""
    if count <= 0:
        return None
    return total_s / count


def after_sync(
    h: UpHistory, *, was_up: bool, last_seen: float, now: float, horizon: float, leaving: bool
) -> UpHistory:
    """The history after a sync (not an idle one: those never change it) at `now`.

    `was_up`: the row's state was up (not left); `last_seen`: its previous sync; `horizon`:
    `now` less the gone horizon, so `last_seen < horizon` means it had gone meanwhile, and
    its interval ended at `last_seen`. A leaving sync ends the interval now; any other sync
    of a device that is not up starts one now."""
    gone = last_seen < horizon
    total, count, since = h.total_s, h.count, h.up_since
    if was_up and since is not None and (leaving or gone):
        ended = last_seen if gone else now
        total += max(0.0, ended - since)
        count += 1
        since = None
    if leaving:
        since = None
    elif since is None or not was_up:
        since = now
    return UpHistory(since, total, count)
