"""In-flight quota: how much work a device may hold, earned by validated results.

BOINC's per-host daily quota: a new host gets little, a host whose results validate gets more,
and errors cut it back. fogwheel counts tasks in flight rather than per day: a new device may
hold `START` tasks; each validated result doubles that, each crash or lost lease halves it;
never below 1 and never above `MAX`, nor above what its (bounded) claimed cores can use. A
Sybil that claims 64 cores and never returns a good result holds 1 or 2 tasks, and its claim
weighs nothing in fair shares until its results do. Pure functions; the store mirrors
`grown`/`shrunk` in SQL (store/fleet.py).
"""

from __future__ import annotations

START = 2  # tasks a new device may hold
MAX = 4096  # the quota never grows past this
HELD_PER_SLOT = 64  # = core/scheduler.MAX_HELD_PER_SLOT: tiny tasks queued per slot


def grown(quota: int, validated: int = 1) -> int:
    """The quota after `validated` results were validated (doubled each time, up to MAX)."""
    if validated == 1 and quota >= 1:  # the common case, without four builtin calls
        quota <<= 1
        return quota if quota < MAX else MAX
    return min(MAX, max(1, quota) << min(max(0, validated), 13))


def shrunk(quota: int, errors: int = 1) -> int:
    """The quota after `errors` crashes or lost leases (halved each time, at least 1)."""
    return max(1, quota >> min(max(0, errors), 13))


def in_flight_limit(quota: int, cores: int) -> int:
    """Tasks the device may hold at once: its quota, bounded by what its cores can queue."""
    bound = (cores if cores > 1 else 1) * HELD_PER_SLOT  # max(1, min(quota, max(1, cores) * 64))
    limit = quota if quota < bound else bound
    return limit if limit > 1 else 1


def scheduling_slots(quota: int, cores: int) -> int:
    """The slots a device counts for in fair shares: its cores, but no more than its quota
    (claims weigh only once results back them)."""
    return max(1, min(cores, quota))


def room(quota: int, cores: int, held: int) -> int:
    """How many more tasks the device may lease now."""
    left = in_flight_limit(quota, cores) - held
    return left if left > 0 else 0
