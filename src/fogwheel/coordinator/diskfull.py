"""Tell a full disk apart from a bug: such a failure is answered 507, not 500.

A write can fail for want of space in three places: the blob store (ENOSPC or EDQUOT from the
file system), SQLite ("database or disk is full", SQLITE_FULL) and PostgreSQL (SQLSTATE 53100
disk_full, 53200 out_of_memory is not counted). The error may arrive wrapped (SQLAlchemy's
`orig`, an exception's cause or context), so the whole chain is searched.
"""

from __future__ import annotations

from fogwheel.blobs.store import DISK_FULL_ERRNOS
from fogwheel.errors import StorageFull

DISK_FULL_MESSAGE = (
    "the coordinator's disk is full: nothing was stored; try again after the operator frees space"
)
_SQLITE_FULL = ("database or disk is full", "disk i/o error: no space")
_PG_DISK_FULL = "53100"


def is_disk_full(exc: BaseException) -> bool:
    """True when `exc`, or anything it wraps, says a disk or a database ran out of space."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, StorageFull):
            return True
        if isinstance(e, OSError) and e.errno in DISK_FULL_ERRNOS:
            return True
        if getattr(e, "sqlstate", None) == _PG_DISK_FULL:
            return True
        text = str(e).lower()
        if any(marker in text for marker in _SQLITE_FULL):
            return True
        orig = getattr(e, "orig", None)
        todo += [e.__cause__, e.__context__, orig if isinstance(orig, BaseException) else None]
    return False
