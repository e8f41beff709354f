"""Events the store counts as they happen, published only when their transaction commits.

A store method notes an event on its connection (`note(c, "quarantines")`) at the line where
it happens, inside its transaction; `StoreBase.tx` hands the transaction's notes to the store's
`Tally` after the commit and drops them on a rollback, so a transaction tried again after a
lost race (`retry_conflicts`) counts its events once, and a failed one not at all. The tally
belongs to one process: /metrics shows it as that process's counters (docs/metrics.md).
"""

from __future__ import annotations

import threading
from collections import Counter

from sqlalchemy import Connection

NOTES = "fogwheel.events"  # Connection.info: this transaction's events, until it ends

# The events noted, and where (docs/metrics.md names their families).
LEASES_EXPIRED = "leases_expired"  # store/leasing.py expire_leases: a lease ran out
DISAGREEMENTS = "disagreements"  # store/verify.py _vote: a result disagreed with the verdict
QUARANTINES = "quarantines"  # store/verify.py _quarantine: a device caught lying
EVENTS = (LEASES_EXPIRED, DISAGREEMENTS, QUARANTINES)


def note(c: Connection, event: str, n: int = 1) -> None:
    """Count `n` of `event` in the transaction `c` (published if it commits)."""
    if n:
        notes: Counter[str] = c.info.setdefault(NOTES, Counter())
        notes[event] += n


class Tally:
    """The committed events of this process, by name (read from any thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def add(self, notes: Counter[str] | None) -> None:
        if notes:
            with self._lock:
                self._counts.update(notes)

    def get(self, event: str) -> int:
        with self._lock:
            return self._counts[event]
