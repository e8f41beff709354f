"""Byte ranges of resumable blob transfers: the `Content-Range` of an upload's part and the
`Range` of a download, parsed and checked without touching a socket or a file.

RFC 9110 §14.4 (`Content-Range: bytes first-last/complete-length`) and §14.1.2 (`Range:
bytes=first-` or `bytes=first-last`). fogwheel accepts only the forms it sends: one range, a
known complete length, and (for an upload) a part that starts exactly where the bytes already
received end, so a blob is always a single contiguous prefix on the coordinator's disk.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_CONTENT_RANGE = re.compile(r"^bytes (\d{1,19})-(\d{1,19})/(\d{1,19})$")
_RANGE = re.compile(r"^bytes=(\d{1,19})-(\d{0,19})$")


class RangeError(ValueError):
    """A range header that is malformed, or that does not fit the transfer; `status` is the
    HTTP answer it deserves (400 malformed, 409 wrong offset, 413 too big, 416 unsatisfiable)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class UploadPart:
    """Bytes `first` to `last` (inclusive) of a blob of `total` bytes."""

    first: int
    last: int
    total: int

    @property
    def length(self) -> int:
        return self.last - self.first + 1

    @property
    def completes(self) -> bool:
        return self.last + 1 == self.total


def parse_content_range(header: str) -> UploadPart:
    """`bytes 0-1048575/209715200` as an UploadPart; RangeError(400) when malformed."""
    m = _CONTENT_RANGE.match(header.strip())
    if not m:
        raise RangeError(
            400,
            f"Content-Range {header[:80]!r} is not of the form 'bytes FIRST-LAST/TOTAL' "
            "(one range, the total length known)",
        )
    first, last, total = (int(g) for g in m.groups())
    if first > last or last >= total:
        raise RangeError(
            400, f"Content-Range {header[:80]!r}: bytes {first}-{last} do not lie within {total}"
        )
    return UploadPart(first, last, total)


def check_part(part: UploadPart, received: int, max_total: int) -> None:
    """A part may be appended to `received` bytes already held: it must start there and the
    blob must fit `max_total`. RangeError 413 or 409 otherwise."""
    if part.total > max_total:
        raise RangeError(
            413,
            f"a blob of {part.total} bytes is over the coordinator's blob limit of "
            f"{max_total} bytes (coordinator --max-blob-mb)",
        )
    if part.first != received:
        raise RangeError(
            409,
            f"this part starts at byte {part.first} but the coordinator holds {received} bytes "
            f"of the blob: send from byte {received} (GET /v1/blobs/<sha>/upload tells)",
        )


@dataclass(frozen=True)
class ReadRange:
    """Bytes `first` to `last` (inclusive) of a blob: what a download asked for."""

    first: int
    last: int

    @property
    def length(self) -> int:
        return self.last - self.first + 1

    def content_range(self, size: int) -> str:
        return f"bytes {self.first}-{self.last}/{size}"


def parse_range(header: str, size: int) -> ReadRange:
    """`bytes=N-` or `bytes=N-M` of a blob of `size` bytes (M clipped to its end);
    RangeError(416) when it starts past the end, RangeError(400) when it is malformed."""
    m = _RANGE.match(header.strip())
    if not m:
        raise RangeError(
            400, f"Range {header[:80]!r} is not of the form 'bytes=FIRST-' or 'bytes=FIRST-LAST'"
        )
    first = int(m.group(1))
    last = int(m.group(2)) if m.group(2) else size - 1
    if first >= size or last < first:
        raise RangeError(416, f"Range {header[:80]!r} lies outside the blob's {size} bytes")
    return ReadRange(first, min(last, size - 1))
