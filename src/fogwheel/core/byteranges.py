"""Byte ranges, parsed and checked without touching a socket or a file: the `Content-Range`
of an upload's part, the `Range` of a blob download, and the full RFC 9110 §14 `Range` of the
CDN's content route (several ranges, suffixes, multipart/byteranges).

RFC 9110 §14.4 (`Content-Range: bytes first-last/complete-length`) and §14.1.2 (`Range:
bytes=first-` or `bytes=first-last`). For blobs fogwheel accepts only the forms it sends: one
range, a known complete length, and (for an upload) a part that starts exactly where the bytes
already received end, so a blob is always a single contiguous prefix on the coordinator's disk.
For the CDN, `select_ranges` answers what a web origin must (§14.2): an unparseable header is
ignored (200), a set with no satisfiable range is a 416, overlapping or adjacent ranges are
coalesced, and more than `MAX_RANGES` of them is answered whole — so a header of a thousand
one-byte ranges costs no more than one full response (the attack of CVE-2011-3192).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
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


MAX_RANGES = 16  # ranges one response may carry; more is answered 200 whole (RFC 9110 §14.2)
MAX_RANGE_HEADER = 1024  # characters of a Range header worth parsing; a longer one is ignored
_RANGE_SPEC = re.compile(r"^(\d{0,19})[ \t]*-[ \t]*(\d{0,19})$")


@dataclass(frozen=True)
class WholeBody:
    """Serve the whole representation, 200: `reason` says why a Range was not honoured."""

    reason: str


@dataclass(frozen=True)
class PartialBody:
    """Serve these ranges, 206: one as a plain body, several as multipart/byteranges."""

    spans: tuple[ReadRange, ...]


@dataclass(frozen=True)
class Unsatisfiable:
    """416 with `Content-Range: bytes */size`: no range of the set lies within the body."""

    size: int
    reason: str


RangeAnswer = WholeBody | PartialBody | Unsatisfiable


def select_ranges(header: str, size: int, max_ranges: int = MAX_RANGES) -> RangeAnswer:
    """What a `Range` header asks of a body of `size` bytes, per RFC 9110 §14.1.1 and §14.2.

    The unit is `bytes` (case-insensitive); each range-spec is `first-last`, `first-` or a
    suffix `-length`. An invalid spec (last before first, no digits) makes the whole header
    invalid: ignored, so the client gets 200. Specs past the end are dropped; when none is
    left the answer is 416. Overlapping or adjacent ranges are coalesced (sorted); more than
    `max_ranges` ranges are answered whole. A body of no bytes is answered whole too.
    """
    text = header.strip()
    if len(text) > MAX_RANGE_HEADER:
        return WholeBody(f"a Range header over {MAX_RANGE_HEADER} characters is ignored")
    unit, eq, range_set = text.partition("=")
    if not eq or unit.strip().lower() != "bytes":
        return WholeBody("only bytes ranges are served")
    specs = [p.strip() for p in range_set.split(",")]
    specs = [p for p in specs if p]  # empty list elements are allowed (RFC 9110 §5.6.1)
    if not specs:
        return WholeBody("the Range header names no range")
    if len(specs) > max_ranges:
        return WholeBody(f"more than {max_ranges} ranges are answered whole")
    wanted: list[ReadRange] = []
    for spec in specs:
        m = _RANGE_SPEC.match(spec)
        if not m or not (m.group(1) or m.group(2)):
            return WholeBody(f"range {spec[:40]!r} is not first-last, first- or -suffix")
        first_text, last_text = m.group(1), m.group(2)
        if first_text:
            first = int(first_text)
            if last_text and int(last_text) < first:
                return WholeBody(f"range {spec[:40]!r} ends before it starts")
            last = int(last_text) if last_text else size - 1
            if first < size:
                wanted.append(ReadRange(first, min(last, size - 1)))
        else:
            suffix = int(last_text)
            if suffix > 0 and size > 0:
                wanted.append(ReadRange(max(0, size - suffix), size - 1))
    if size == 0:
        return WholeBody("an empty body has no ranges to serve")
    if not wanted:
        return Unsatisfiable(size, f"every range of {text[:80]!r} lies outside the {size} bytes")
    return PartialBody(coalesce(wanted))


def coalesce(spans: Sequence[ReadRange]) -> tuple[ReadRange, ...]:
    """`spans` as given when no two overlap or touch, else merged into sorted disjoint ranges
    (RFC 9110 §14.2 lets a server coalesce; it keeps a client's order otherwise)."""
    ordered = sorted(spans, key=lambda r: (r.first, r.last))
    merged: list[ReadRange] = []
    for span in ordered:
        if merged and span.first <= merged[-1].last + 1:
            top = merged[-1]
            merged[-1] = ReadRange(top.first, max(top.last, span.last))
        else:
            merged.append(span)
    return tuple(spans) if len(merged) == len(spans) else tuple(merged)


def multipart_part_head(boundary: str, content_type: str, span: ReadRange, size: int) -> bytes:
    """The delimiter and headers before one part of a multipart/byteranges body (RFC 9110
    §14.6): CRLF, `--boundary`, Content-Type, Content-Range, a blank line."""
    return (
        f"\r\n--{boundary}\r\ncontent-type: {content_type}\r\n"
        f"content-range: {span.content_range(size)}\r\n\r\n"
    ).encode("latin-1")


def multipart_tail(boundary: str) -> bytes:
    """The close delimiter that ends a multipart/byteranges body."""
    return f"\r\n--{boundary}--\r\n".encode("latin-1")


def multipart_length(
    boundary: str, content_type: str, spans: Sequence[ReadRange], size: int
) -> int:
    """The exact Content-Length of the multipart/byteranges body of `spans`."""
    heads = sum(len(multipart_part_head(boundary, content_type, s, size)) for s in spans)
    return heads + sum(s.length for s in spans) + len(multipart_tail(boundary))
