"""Byte ranges of resumable transfers (core/byteranges.py): what is accepted, what each refusal
answers."""

from __future__ import annotations

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
