"""The pending queue in the store's order (priority, then id), with the head read cheaply.

The store reads the first `max(want * 4, 64)` pending rows by `(priority, id)` through an
index; the simulator needs the same window a few million times a run. New tasks arrive with
rising ids, so they sit in one append-only array; the few that come back (a lost lease, a
check copy) wait in a small sorted list beside it. The array's head is moved, as it is read,
into a short sorted list of the first keys still queued (`_front`): a read of the window is a
slice of it, and a task leased out of it (`random` takes any of the window, `deadline` later
jobs first) is cut out of it, so that no read steps over the holes leased tasks leave.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable

TRIM = 1 << 14  # the array's consumed head is cut off once it is this long and half of it


class PendingQueue:
    def __init__(self) -> None:
        self._main: list[int] = []  # keys of new tasks, rising
        self._head = 0  # _main[:_head] were moved to _front or are gone
        self._in_main: set[int] = set()  # keys of new tasks still queued
        self._front: list[int] = []  # those taken off _main's head, sorted; below _main[_head:]
        self._back: list[int] = []  # sorted keys of tasks queued again, and of check copies
        self.size = 0  # keys queued (= len(self), read without a call)

    def __len__(self) -> int:
        return self.size

    def __bool__(self) -> bool:
        return self.size > 0

    def extend(self, keys: Iterable[int]) -> None:
        """Queue new tasks, each key above every key queued before in this way."""
        keys = list(keys)
        main = self._main
        if keys and (
            (main and keys[0] <= main[-1]) or (self._front and keys[0] <= self._front[-1])
        ):
            raise ValueError("new keys must rise; use add() for others")
        main.extend(keys)
        self._in_main.update(keys)
        self.size += len(keys)

    def add(self, key: int) -> None:
        bisect.insort(self._back, key)
        self.size += 1

    def discard(self, key: int) -> None:
        live = self._in_main
        if key in live:
            live.remove(key)
            self.size -= 1
            front = self._front
            if front and key <= front[-1]:
                del front[bisect.bisect_left(front, key)]
            # else it is in _main past the head: a hole, stepped over once when moved
            return
        back = self._back
        i = bisect.bisect_left(back, key)
        if i < len(back) and back[i] == key:
            del back[i]
            self.size -= 1

    def first(self, k: int) -> list[int]:
        """The `k` smallest keys, in order."""
        front = self._front
        if len(front) < k:
            live, main = self._in_main, self._main
            at, end = self._head, len(main)
            while len(front) < k and at < end:
                chunk = main[at : at + k - len(front)]
                at += len(chunk)
                front += [key for key in chunk if key in live]
            if at >= TRIM and at + at > end:
                del main[:at]
                at = 0
            self._head = at
        ahead = front[:k]
        back = self._back
        if not back:
            return ahead
        back = back[:k]
        if not ahead or back[-1] < ahead[0]:
            return (back + ahead)[:k]
        return sorted(back + ahead)[:k]
