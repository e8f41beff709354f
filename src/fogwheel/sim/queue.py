"""The pending queue in the store's order (priority, then id), with the head read cheaply.

The store reads the first `max(want * 4, 64)` pending rows by `(priority, id)` through an
index; the simulator needs the same window a few million times a run. New tasks arrive with
rising ids, so they sit in one append-only array read from a moving head (leased ones leave
holes that the head skips); the few that come back (a lost lease, a check copy) wait in a small
sorted list beside it. Both are merged when the window is read.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable


class PendingQueue:
    def __init__(self) -> None:
        self._main: list[int] = []  # keys of new tasks, rising
        self._head = 0  # _main[:_head] are all gone
        self._in_main: set[int] = set()
        self._back: list[int] = []  # sorted keys of tasks queued again, and of check copies
        self.size = 0  # keys queued (= len(self), read without a call)
        self._wasted = 0  # holes read past since _main was last compacted
        self._holes = 0  # keys of _main past the head that are gone (_main[_head] never is)

    def __len__(self) -> int:
        return self.size

    def __bool__(self) -> bool:
        return self.size > 0

    def extend(self, keys: Iterable[int]) -> None:
        """Queue new tasks, each key above every key queued before in this way."""
        keys = list(keys)
        if self._main and keys and keys[0] <= self._main[-1]:
            raise ValueError("new keys must rise; use add() for others")
        self._main.extend(keys)
        self._in_main.update(keys)
        self.size += len(keys)

    def add(self, key: int) -> None:
        bisect.insort(self._back, key)
        self.size += 1

    def discard(self, key: int) -> None:
        if key in self._in_main:
            self._in_main.remove(key)
            self.size -= 1
            main = self._main
            if main[self._head] != key:
                self._holes += 1
                return
            self._head += 1
            while self._head < len(main) and main[self._head] not in self._in_main:
                self._head += 1
                self._holes -= 1
            return
        i = bisect.bisect_left(self._back, key)
        if i < len(self._back) and self._back[i] == key:
            del self._back[i]
            self.size -= 1

    def first(self, k: int) -> list[int]:
        """The `k` smallest keys, in order."""
        live, main = self._in_main, self._main
        if not self._holes:  # every key past the head is queued: no key to step over
            ahead = main[self._head : self._head + k]
        else:
            ahead = []
            at = self._head
            while len(ahead) < k and at < len(main):
                chunk = main[at : at + k - len(ahead)]
                at += len(chunk)
                ahead += [key for key in chunk if key in live]
            # Tasks leased out of id order (`deadline` takes later jobs first) leave holes
            # past the head that every read would step over again; once the holes read past
            # add up to the array's length, the array is rebuilt without them (the same keys,
            # the same order).
            self._wasted += at - self._head - len(ahead)
            if self._wasted > len(main) - self._head:
                self._main = [key for key in main[self._head :] if key in live]
                self._head = 0
                self._wasted = 0
                self._holes = 0
        back = self._back[:k]
        if not back:
            return ahead[:k]
        if not ahead or back[-1] < ahead[0]:
            return (back + ahead)[:k]
        return sorted(back + ahead)[:k]
