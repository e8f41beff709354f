"""Byte ranges of resumable transfers (core/byteranges.py): what is accepted, what each refusal
answers."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fogwheel.core.byteranges import (
    RangeError,
    UploadPart,
    check_part,
    parse_content_range,
    parse_range,
)


@given(st.integers(0, 2**40), st.integers(0, 2**40), st.integers(1, 2**40))
def test_a_content_range_within_its_total_round_trips(a: int, b: int, extra: int) -> None:
    first, last = min(a, b), max(a, b)
    total = last + extra
    part = parse_content_range(f"bytes {first}-{last}/{total}")
    assert part == UploadPart(first, last, total)
    assert part.length == last - first + 1
    assert part.completes == (last + 1 == total)


@pytest.mark.parametrize(
    "header",
    [
        "bytes 5-1/10",  # backwards
        "bytes 0-10/10",  # past the end
        "bytes 0-9/*",  # total unknown: not accepted
        "bytes */10",
        "bytes 0-1,3-4/10",  # several ranges
        "items 0-9/10",
        "bytes -1-9/10",
        "",
    ],
)
def test_a_malformed_or_impossible_content_range_is_a_400(header: str) -> None:
    with pytest.raises(RangeError) as caught:
        parse_content_range(header)
    assert caught.value.status == 400


def test_a_part_must_start_where_the_received_bytes_end() -> None:
    part = parse_content_range("bytes 100-199/1000")
    check_part(part, received=100, max_total=1000)
    with pytest.raises(RangeError) as caught:
        check_part(part, received=50, max_total=1000)
    assert caught.value.status == 409 and "send from byte 50" in str(caught.value)


def test_a_blob_over_the_limit_is_a_413_whatever_the_offset() -> None:
    with pytest.raises(RangeError) as caught:
        check_part(parse_content_range("bytes 0-0/1001"), received=7, max_total=1000)
    assert caught.value.status == 413 and "--max-blob-mb" in str(caught.value)


@given(st.integers(1, 2**40), st.data())
def test_a_range_inside_the_blob_is_served_clipped_to_its_end(size: int, data) -> None:
    first = data.draw(st.integers(0, size - 1))
    last = data.draw(st.integers(first, size + 100) | st.none())
    header = f"bytes={first}-" + ("" if last is None else str(last))
    span = parse_range(header, size)
    assert span.first == first
    assert span.last == (size - 1 if last is None else min(last, size - 1))
    assert span.content_range(size) == f"bytes {span.first}-{span.last}/{size}"


def test_a_range_past_the_end_is_416_and_a_malformed_one_400() -> None:
    with pytest.raises(RangeError) as caught:
        parse_range("bytes=10-", 10)
    assert caught.value.status == 416
    for header in ("bytes=-5", "bytes=0-1,4-5", "lines=0-", "bytes=5-2"):
        with pytest.raises(RangeError) as caught:
            parse_range(header, 10)
        assert caught.value.status in (400, 416)


# -- the CDN's Range (RFC 9110 §14): several ranges, suffixes, what is ignored ----------------

from fogwheel.core.byteranges import (  # noqa: E402
    MAX_RANGES,
    PartialBody,
    ReadRange,
    Unsatisfiable,
    WholeBody,
    coalesce,
    multipart_length,
    multipart_part_head,
    multipart_tail,
    select_ranges,
)


@pytest.mark.parametrize(
    ("header", "spans"),
    [
        ("bytes=0-99", [(0, 99)]),
        ("bytes=100-", [(100, 999)]),
        ("bytes=-10", [(990, 999)]),
        ("bytes=-5000", [(0, 999)]),  # a suffix longer than the body is all of it
        ("bytes=990-5000", [(990, 999)]),  # clipped to the end
        ("BYTES=0-0", [(0, 0)]),  # the unit is case-insensitive
        ("bytes=0-9, 20-29", [(0, 9), (20, 29)]),
        ("bytes=20-29,0-9", [(20, 29), (0, 9)]),  # the client's order is kept
        ("bytes=0-9,5-19", [(0, 19)]),  # overlapping: coalesced
        ("bytes=0-9,10-19", [(0, 19)]),  # adjacent: coalesced
        ("bytes=50-59,0-9,5-19", [(0, 19), (50, 59)]),  # coalesced ones come sorted
        ("bytes=0-9,,20-29", [(0, 9), (20, 29)]),  # an empty list element
        ("bytes=0-9,2000-3000", [(0, 9)]),  # the unsatisfiable one is dropped
    ],
)
def test_a_satisfiable_range_set_is_served_as_these_spans(header: str, spans: list) -> None:
    answer = select_ranges(header, 1000)
    assert answer == PartialBody(tuple(ReadRange(a, b) for a, b in spans))


@pytest.mark.parametrize(
    "header",
    [
        "bytes=5-2",  # last before first makes the header invalid
        "bytes=-",
        "bytes=a-b",
        "bytes=0-9,9-5",  # one invalid spec invalidates the set
        "items=0-9",
        "bytes 0-9",
        "bytes=",
        "bytes=0-1;2-3",
        "bytes=" + ",".join(f"{i}-{i}" for i in range(MAX_RANGES + 1)),  # too many
        "bytes=0-" + "9" * 2000,  # too long to parse
    ],
)
def test_an_unparseable_or_abusive_range_is_ignored_and_the_body_served_whole(
    header: str,
) -> None:
    assert isinstance(select_ranges(header, 1000), WholeBody)


@pytest.mark.parametrize("header", ["bytes=1000-", "bytes=5000-6000", "bytes=-0", "bytes=1000-,-0"])
def test_a_range_set_with_nothing_inside_the_body_is_416(header: str) -> None:
    answer = select_ranges(header, 1000)
    assert isinstance(answer, Unsatisfiable) and answer.size == 1000


def test_an_empty_body_is_served_whole_whatever_the_range() -> None:
    for header in ("bytes=0-", "bytes=-5", "bytes=3-4"):
        assert isinstance(select_ranges(header, 0), WholeBody)


span_sets = st.lists(st.tuples(st.integers(0, 3000), st.integers(0, 3000)), min_size=1, max_size=8)


@given(st.integers(1, 2000), span_sets, st.integers(0, 3))
def test_every_byte_served_was_asked_for_and_no_byte_twice(size: int, pairs, suffixes: int) -> None:
    specs = [f"{min(a, b)}-{max(a, b)}" for a, b in pairs] + [f"-{n + 1}" for n in range(suffixes)]
    answer = select_ranges("bytes=" + ",".join(specs), size)
    asked: set[int] = set()
    for a, b in pairs:
        asked |= set(range(min(a, b), min(max(a, b), size - 1) + 1))
    if suffixes:
        asked |= set(range(max(0, size - suffixes), size))
    if not asked:
        assert isinstance(answer, Unsatisfiable)
        return
    assert isinstance(answer, PartialBody)
    served = [i for s in answer.spans for i in range(s.first, s.last + 1)]
    assert len(served) == len(set(served))  # disjoint: at most the body's size in all
    assert set(served) == asked
    assert all(0 <= s.first <= s.last < size for s in answer.spans)


@given(st.lists(st.tuples(st.integers(0, 500), st.integers(0, 50)), min_size=1, max_size=10))
def test_coalescing_keeps_the_bytes_and_leaves_no_two_spans_touching(pairs) -> None:
    spans = [ReadRange(a, a + n) for a, n in pairs]
    merged = coalesce(spans)
    covered = {i for s in spans for i in range(s.first, s.last + 1)}
    assert {i for s in merged for i in range(s.first, s.last + 1)} == covered
    ordered = sorted(merged, key=lambda s: s.first)
    assert all(x.last + 1 < y.first for x, y in itertools.pairwise(ordered))


def test_the_multipart_length_is_the_bytes_the_parts_make() -> None:
    body = bytes(range(256)) * 4
    spans = [ReadRange(0, 9), ReadRange(500, 1023)]
    parts = b"".join(
        multipart_part_head("B0UND", "video/mp4", s, len(body)) + body[s.first : s.last + 1]
        for s in spans
    )
    whole = parts + multipart_tail("B0UND")
    assert multipart_length("B0UND", "video/mp4", spans, len(body)) == len(whole)
    assert whole.startswith(b"\r\n--B0UND\r\ncontent-type: video/mp4\r\n")
    assert b"content-range: bytes 500-1023/1024\r\n\r\n" in whole
    assert whole.endswith(b"\r\n--B0UND--\r\n")
