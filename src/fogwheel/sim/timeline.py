"""The simulator's timed events, taken in (time, order pushed) order: a calendar of buckets.

One binary heap over every pending event (an up or down per device, a finish per running
task: a few hundred thousand at 100,000 devices) spends its time on cache misses, one per
level and comparison. A calendar queue (Brown, *Calendar queues: a fast O(1) priority queue
implementation for the simulation event set problem*, CACM 31(10), 1988) keeps events in
buckets of `width` seconds: a push into a later bucket is an append, and only the current
bucket, a few dozen events, is a heap. Events never go back in time (each is pushed at or
after the one being handled), so the order taken is exactly the one heap's.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from typing import Any

# (at, seq, kind, device, task, generation); the device is whatever the caller names it by
# (the engine's Host): ties are broken by seq, so it is never compared.
Event = tuple[float, int, int, Any, int, int]


class Timeline:
    def __init__(self, width: float = 1.0) -> None:
        self._width = width
        self._later: dict[int, list[Event]] = {}  # bucket -> its events, unordered
        self._current: list[Event] = []  # a heap: the events of bucket `_bucket` (or before)
        self._bucket = 0
        self._seq = 0  # ties in time go in the order pushed
        self._n = 0

    def __len__(self) -> int:
        return self._n

    def __bool__(self) -> bool:
        return self._n > 0

    def push(self, at: float, kind: int, d: Any = -1, t: int = 0, g: int = 0) -> None:
        self._seq += 1
        self._n += 1
        entry = (at, self._seq, kind, d, t, g)
        bucket = int(at // self._width)
        if bucket <= self._bucket:
            heapq.heappush(self._current, entry)
            return
        later = self._later.get(bucket)
        if later is None:
            self._later[bucket] = [entry]
        else:
            later.append(entry)

    def __iter__(self) -> Iterator[Event]:
        """Take the events in order, as `pop` would, while new ones are pushed, until none is
        left (a loop over this costs less per event than a call to `pop` each time)."""
        later, heappop = self._later, heapq.heappop
        current = self._current
        while self._n:
            if not current:
                bucket = self._bucket + 1
                while bucket not in later:
                    bucket += 1
                self._bucket = bucket
                current = self._current = later.pop(bucket)
                heapq.heapify(current)
            self._n -= 1
            yield heappop(current)

    def pop(self) -> Event:
        """The earliest event (the first pushed, of those at the same time); there must be one."""
        if not self._current:
            if not self._n:
                raise IndexError("pop from an empty timeline")
            bucket, later = self._bucket + 1, self._later
            while bucket not in later:
                bucket += 1
            self._bucket = bucket
            self._current = later.pop(bucket)
            heapq.heapify(self._current)
        self._n -= 1
        return heapq.heappop(self._current)
