"""The CDN codec: segments sealed with AES-256-GCM, spread as k-of-n zfec shares named by hash."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import random
import re
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fogwheel.cdn.codec import (
    SEGMENT_SIZE,
    BadShare,
    CodecError,
    Manifest,
    build_manifest,
    decode_segment,
    encode_file,
    encode_segment,
    encode_throughput,
    new_content_id,
    new_key,
)
from fogwheel.errors import IntegrityError

SMALL = 1000  # a segment size that keeps multi-segment objects cheap


def encode(
    tmp_path: Path, data: bytes, k: int, n: int, segment_size: int = SMALL
) -> tuple[Manifest, list[list[bytes]], bytes]:
    """Encode `data` through a real file; the manifest, every segment's shares, and the key."""
    path = tmp_path / "object.bin"
    path.write_bytes(data)
    key, cid = new_key(), new_content_id()
    segments, shares = [], []
    for segment, segment_shares in encode_file(path, key, cid, "object.bin", k, n, segment_size):
        segments.append(segment)
        shares.append(segment_shares)
    manifest = build_manifest(cid, "object.bin", len(data), segment_size, k, n, segments)
    return manifest, shares, key


def decode(
    manifest: Manifest, shares: list[list[bytes]], key: bytes, pick: Callable[[int], list[int]]
) -> bytes:
    """Rebuild the object, using for each segment only the share numbers `pick(index)` gives."""
    return b"".join(
        decode_segment(manifest, i, {j: shares[i][j] for j in pick(i)}, key)
        for i in range(len(manifest.segments))
    )


@pytest.mark.parametrize(("k", "n"), [(1, 1), (1, 3), (2, 4), (3, 5)])
@pytest.mark.parametrize("size", [0, 1, SMALL, SMALL + 1, 3 * SMALL + 7])
def test_every_k_subset_of_shares_rebuilds_the_object(tmp_path: Path, k: int, n: int, size: int):
    data = random.Random(size * 1000 + k * 10 + n).randbytes(size)
    manifest, shares, key = encode(tmp_path, data, k, n)
    for subset in itertools.combinations(range(n), k):
        assert decode(manifest, shares, key, lambda _i, s=subset: list(s)) == data


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    data=st.binary(max_size=4 * 300),
    segment_size=st.integers(1, 300),
    k=st.integers(1, 10),
    extra=st.integers(0, 10),
    seed=st.integers(0, 2**32),
)
def test_random_objects_round_trip_through_random_share_subsets(
    tmp_path: Path, data: bytes, segment_size: int, k: int, extra: int, seed: int
):
    n = k + extra
    manifest, shares, key = encode(tmp_path, data, k, n, segment_size)
    rng = random.Random(seed)
    pick = lambda _i: rng.sample(range(n), rng.randint(k, n))  # noqa: E731
    assert decode(manifest, shares, key, pick) == data


@pytest.mark.parametrize("size", [SEGMENT_SIZE, SEGMENT_SIZE + 1])
def test_full_size_segments_round_trip_from_parity_shares_only(tmp_path: Path, size: int):
    data = random.Random(size).randbytes(size)
    manifest, shares, key = encode(tmp_path, data, 4, 8, SEGMENT_SIZE)
    assert len(manifest.segments) == -(-size // SEGMENT_SIZE)
    assert decode(manifest, shares, key, lambda _i: [4, 5, 6, 7]) == data


@pytest.mark.parametrize(("k", "n"), [(2, 5), (3, 7), (4, 8)])
def test_losing_any_n_minus_k_shares_still_decodes(tmp_path: Path, k: int, n: int):
    data = random.Random(7).randbytes(2 * SMALL + 3)
    manifest, shares, key = encode(tmp_path, data, k, n)
    for lost in itertools.combinations(range(n), n - k):
        kept = [j for j in range(n) if j not in lost]
        assert decode(manifest, shares, key, lambda _i, kept=kept: kept) == data


def test_a_flipped_bit_in_a_share_raises_bad_share_naming_it(tmp_path: Path):
    manifest, shares, key = encode(tmp_path, b"x" * 2500, 3, 6)
    given = {j: shares[1][j] for j in range(6)}
    flipped = bytearray(given[4])
    flipped[17] ^= 0x08
    given[4] = bytes(flipped)
    with pytest.raises(BadShare, match="share 4 of segment 1") as caught:
        decode_segment(manifest, 1, given, key)
    assert caught.value.index == 4
    assert isinstance(caught.value, IntegrityError)


def test_a_share_of_another_segment_is_a_bad_share(tmp_path: Path):
    manifest, shares, key = encode(tmp_path, b"y" * 2500, 2, 3)
    with pytest.raises(BadShare) as caught:
        decode_segment(manifest, 0, {0: shares[0][0], 1: shares[1][1]}, key)
    assert caught.value.index == 1


def test_tampered_ciphertext_with_a_matching_manifest_fails_authentication(tmp_path: Path):
    manifest, shares, key = encode(tmp_path, b"pay 10 to alice" * 10, 2, 4)
    tampered = bytearray(shares[0][0])
    tampered[3] ^= 0x01
    names = list(manifest.segments[0].shares)
    names[0] = hashlib.sha256(tampered).hexdigest()
    forged = dataclasses.replace(
        manifest, segments=(dataclasses.replace(manifest.segments[0], shares=tuple(names)),)
    )
    with pytest.raises(CodecError, match="segment 0 does not decrypt") as caught:
        decode_segment(forged, 0, {0: bytes(tampered), 1: shares[0][1]}, key)
    assert not isinstance(caught.value, BadShare)


def test_segments_cannot_be_reordered_even_with_a_consistent_manifest(tmp_path: Path):
    manifest, shares, key = encode(tmp_path, b"z" * 2000, 2, 3)
    swapped = dataclasses.replace(
        manifest,
        segments=(
            dataclasses.replace(manifest.segments[1], index=0),
            dataclasses.replace(manifest.segments[0], index=1),
        ),
    )
    with pytest.raises(CodecError, match="segment 0 does not decrypt"):
        decode_segment(swapped, 0, dict(enumerate(shares[1])), key)


def test_the_wrong_key_fails_to_decrypt(tmp_path: Path):
    manifest, shares, _key = encode(tmp_path, b"secret", 2, 3)
    with pytest.raises(CodecError, match="does not decrypt"):
        decode_segment(manifest, 0, dict(enumerate(shares[0])), new_key())


def test_too_few_shares_is_an_error_that_says_how_many_are_needed(tmp_path: Path):
    manifest, shares, key = encode(tmp_path, b"abc", 3, 5)
    with pytest.raises(CodecError, match="needs 3 shares, only 2 given"):
        decode_segment(manifest, 0, {0: shares[0][0], 4: shares[0][4]}, key)


@pytest.mark.parametrize("number", [-1, 5, "0", 2.5])
def test_a_share_number_outside_0_to_n_is_rejected(tmp_path: Path, number: Any):
    manifest, shares, key = encode(tmp_path, b"abc", 3, 5)
    given = {0: shares[0][0], 1: shares[0][1], 2: shares[0][2], number: b"\0"}
    with pytest.raises(CodecError, match="share number"):
        decode_segment(manifest, 0, given, key)


@pytest.mark.parametrize(("k", "n"), [(1, 2), (3, 5), (4, 8)])
def test_no_share_contains_any_16_byte_window_of_the_plaintext(tmp_path: Path, k: int, n: int):
    text = "".join(f"line {i:05d}: the quick brown fox jumps\n" for i in range(600)).encode()
    windows = {text[i : i + 16] for i in range(len(text) - 15)}
    _manifest, shares, _key = encode(tmp_path, text, k, n, 4096)
    for share in itertools.chain.from_iterable(shares):
        assert not any(share[i : i + 16] in windows for i in range(len(share) - 15))


def test_primary_shares_are_the_aes_gcm_ciphertext_with_the_documented_nonce_and_aad():
    key, cid = new_key(), new_content_id()
    segment, shares = encode_segment(b"hello, fog", key, cid, 7, 3, 5)
    assert [hashlib.sha256(s).hexdigest() for s in shares] == list(segment.shares)
    assert {len(s) for s in shares} == {segment.share_size} == {-(-26 // 3)}
    cipher = b"".join(shares[:3])[: segment.cipher_len]
    nonce = bytes(4) + (7).to_bytes(8, "big")
    assert AESGCM(key).decrypt(nonce, cipher, f"{cid}:7".encode()) == b"hello, fog"


def test_an_empty_file_has_one_empty_segment(tmp_path: Path):
    manifest, shares, key = encode(tmp_path, b"", 2, 4)
    assert [(s.plain_len, s.cipher_len) for s in manifest.segments] == [(0, 16)]
    assert decode(manifest, shares, key, lambda _i: [2, 3]) == b""


def test_encode_file_holds_one_segment_at_a_time(tmp_path: Path):
    segment_size, count = 1 << 16, 32
    path = tmp_path / "big.bin"
    path.write_bytes(random.Random(3).randbytes(segment_size * count))
    tracemalloc.start()
    try:
        stream = encode_file(path, new_key(), new_content_id(), "big.bin", 2, 4, segment_size)
        indices = [segment.index for segment, _shares in stream]
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert indices == list(range(count))
    assert peak < 8 * segment_size  # all shares at once would be 2 * count * segment_size


@pytest.mark.parametrize(
    ("k", "n"), [(0, 1), (3, 2), (1, 257), (True, 2)], ids=["k0", "k>n", "n>256", "bool"]
)
def test_encode_segment_rejects_impossible_k_and_n(k: Any, n: int):
    with pytest.raises(CodecError, match=r"\bk\b|\bn\b"):
        encode_segment(b"x", new_key(), new_content_id(), 0, k, n)


def test_encode_segment_rejects_a_short_key():
    with pytest.raises(CodecError, match="32 bytes"):
        encode_segment(b"x", b"k" * 16, new_content_id(), 0, 1, 2)


def test_new_content_ids_and_keys_are_random_and_well_formed():
    ids = {new_content_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(re.fullmatch(r"c[0-9a-f]{24}", i) for i in ids)
    assert len(new_key()) == 32
    assert new_key() != new_key()


def test_a_manifest_round_trips_through_json(tmp_path: Path):
    manifest, _shares, _key = encode(tmp_path, bytes(2345), 3, 6)
    assert Manifest.from_dict(json.loads(json.dumps(manifest.to_dict()))) == manifest


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """A mutation that sets one field, `a.b.c` walking into dicts and lists."""

    def mutate(d: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target: Any = d
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target[part]
        if isinstance(target, list):
            target[int(last)] = value
        else:
            target[last] = value

    return mutate


def _drop(path: str) -> Callable[[dict[str, Any]], None]:
    def mutate(d: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target: Any = d
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target[part]
        del target[int(last) if isinstance(target, list) else last]

    return mutate


BAD_MANIFESTS: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "negative size": (_set("size", -1), "size must be >= 0"),
    "size as a string": (_set("size", "2500"), "size must be an integer"),
    "size says fewer segments": (_set("size", 1000), "make 1 segment"),
    "size says more segments": (_set("size", 3001), "make 4 segment"),
    "zero segment size": (_set("segment_size", 0), "segment_size must be >= 1"),
    "k > n": (_set("k", 4), "k must not exceed n"),
    "k zero": (_set("k", 0), "k must be in 1..256"),
    "n above 256": (_set("n", 300), "n must be in 1..256"),
    "k as a bool": (_set("k", True), "k must be an integer"),
    "bad content id": (_set("content_id", "x123"), "content_id"),
    "name not a string": (_set("name", 5), "name must be a string"),
    "non-hex sha": (_set("segments.0.shares.1", "g" * 64), "share 1 name"),
    "upper-case sha": (_set("segments.0.shares.1", "A" * 64), "share 1 name"),
    "short sha": (_set("segments.0.shares.1", "a" * 63), "share 1 name"),
    "too few shares": (_drop("segments.2.shares.0"), "segment 2 names 2 shares, n is 3"),
    "a segment missing": (_drop("segments.1"), "lists 2"),
    "segments out of order": (_set("segments.1.index", 2), "position 1 has index 2"),
    "plain_len wrong": (_set("segments.0.plain_len", 999), "cipher_len 1016 must be"),
    "cipher_len wrong": (_set("segments.2.cipher_len", 600), "cipher_len 600 must be"),
    "share_size wrong": (_set("segments.2.share_size", 300), "share_size 300 does not fit"),
    "negative share size": (_set("segments.2.share_size", -3), "share_size must be >= 1"),
    "shares not a list": (_set("segments.0.shares", "abc"), "shares must be a list"),
    "segments not a list": (_set("segments", {}), "segments must be a list"),
    "missing field": (_drop("k"), "missing k"),
    "unknown field": (_set("key", "00"), "unknown field"),
}


@pytest.mark.parametrize("case", BAD_MANIFESTS, ids=list(BAD_MANIFESTS))
def test_from_dict_rejects_a_malformed_manifest_saying_why(tmp_path: Path, case: str):
    manifest, _shares, _key = encode(tmp_path, bytes(2500), 2, 3)
    d = json.loads(json.dumps(manifest.to_dict()))
    mutate, message = BAD_MANIFESTS[case]
    mutate(d)
    with pytest.raises(CodecError, match=re.escape(message)):
        Manifest.from_dict(d)


@pytest.mark.parametrize("d", [None, [], "manifest"])
def test_from_dict_rejects_what_is_not_an_object(d: Any):
    with pytest.raises(CodecError, match="must be an object"):
        Manifest.from_dict(d)


@pytest.mark.parametrize(("offset", "index"), [(0, 0), (9, 0), (10, 1), (19, 1), (24, 2)])
def test_segment_for_finds_the_segment_holding_an_offset(offset: int, index: int):
    manifest = _manifest_of(size=25, segment_size=10)
    assert manifest.segment_for(offset) == index


@pytest.mark.parametrize("offset", [-1, 25, 100])
def test_segment_for_rejects_offsets_outside_the_object(offset: int):
    with pytest.raises(CodecError, match="offset"):
        _manifest_of(size=25, segment_size=10).segment_for(offset)


def _manifest_of(size: int, segment_size: int) -> Manifest:
    key, cid = new_key(), new_content_id()
    data = bytes(size)
    segments = [
        encode_segment(data[i : i + segment_size], key, cid, i // segment_size, 1, 2)[0]
        for i in range(0, max(size, 1), segment_size)
    ]
    return build_manifest(cid, "o", size, segment_size, 1, 2, segments)


def test_encode_throughput_reports_a_positive_rate():
    assert encode_throughput(mb=1) > 0
