"""Token buckets per caller: how often one node may sync before it is told to wait.

A sync costs the coordinator a worker thread and, with work, a write transaction; a node that
syncs in a loop (a bug, or an attacker holding a credential) would otherwise stretch every
other node's wait, because the pacing (core/pacing.py) answers load by slowing the whole fleet.
A bucket per credential refuses the excess alone, with 429 and a Retry-After (RFC 6585 §4),
before its body is read, so that one node's flood costs the fleet next to nothing.

The buckets are pure: each call passes `now`. `Buckets` keeps at most `capacity` of them and
forgets the least recently used first, so that a flood of made-up credentials cannot grow it;
a forgotten bucket comes back full, which only ever errs towards admitting.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

DEFAULT_RATE = 30.0  # syncs a second, sustained: a busy agent reports at most every 50 ms
DEFAULT_BURST = 60.0  # ... and this many at once (a restart, a burst of short tasks)
DEFAULT_CAPACITY = 200_000  # buckets kept: every device of a large fleet, and then some


@dataclass(frozen=True, slots=True)
class Bucket:
    """What a caller has left: `tokens` at time `at`."""

    tokens: float
    at: float


@dataclass(frozen=True, slots=True)
class Limit:
    """`rate` tokens a second, at most `burst` held; a rate of 0 admits everything."""

    rate: float = DEFAULT_RATE
    burst: float = DEFAULT_BURST

    def __post_init__(self) -> None:
        if not (math.isfinite(self.rate) and self.rate >= 0):
            raise ValueError(f"a rate is a finite number ≥ 0, not {self.rate!r}")
        if not (math.isfinite(self.burst) and self.burst >= 1):
            raise ValueError(f"a burst is a finite number ≥ 1, not {self.burst!r}")

    @property
    def off(self) -> bool:
        return self.rate == 0


def refill(bucket: Bucket | None, limit: Limit, now: float) -> float:
    """The tokens `bucket` holds at `now`: a new caller starts full; a clock that went back
    refills nothing."""
    if bucket is None:
        return limit.burst
    return min(limit.burst, bucket.tokens + max(0.0, now - bucket.at) * limit.rate)


def take(bucket: Bucket | None, limit: Limit, now: float) -> tuple[Bucket, float]:
    """Spend one token: the bucket after, and 0 when admitted, else the seconds until a token
    is there (the bucket is then unchanged but for its refill)."""
    have = refill(bucket, limit, now)
    if limit.off or have >= 1.0:
        return Bucket(have - 1.0 if not limit.off else have, now), 0.0
    return Bucket(have, now), (1.0 - have) / limit.rate


def retry_after(wait_s: float) -> str:
    """A Retry-After value: whole seconds (RFC 9110 §10.2.3), at least 1."""
    return str(max(1, math.ceil(wait_s)))


class Buckets:
    """A bounded map of buckets by caller key, least recently used forgotten first."""

    def __init__(self, limit: Limit, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError("a bucket map holds at least one bucket")
        self.limit = limit
        self.capacity = capacity
        self._buckets: OrderedDict[bytes, Bucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: bytes, now: float) -> float:
        """0 when `key` may go on now, else how many seconds it should wait."""
        if self.limit.off:
            return 0.0
        bucket, wait = take(self._buckets.get(key), self.limit, now)
        self._buckets[key] = bucket
        self._buckets.move_to_end(key)
        while len(self._buckets) > self.capacity:
            self._buckets.popitem(last=False)
        return wait
