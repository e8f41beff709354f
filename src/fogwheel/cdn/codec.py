"""The CDN's pure codec: segment, seal (AES-256-GCM), erasure-code (zfec k-of-n), name (SHA-256).

An object is cut into segments of `segment_size` bytes. Each segment is sealed with AES-256-GCM
under a fresh per-object key, then the ciphertext is split into k blocks and expanded to n shares
with zfec's Reed-Solomon code (systematic: shares 0..k-1 are the ciphertext blocks themselves),
so any k shares rebuild the segment and no share, nor any k-1 of them, holds readable plaintext.
Every share is named by its SHA-256, which the manifest records. This module does no network I/O;
`encode_file` reads one segment at a time from a local file and nothing else touches the disk.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import zfec  # type: ignore[import-untyped]
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from fogwheel.errors import FogwheelError, IntegrityError

SEGMENT_SIZE = 1 << 20
KEY_SIZE = 32
TAG_SIZE = 16
MAX_SHARES = 256  # zfec's limit on n

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_CONTENT_ID = re.compile(r"^c[0-9a-f]{24}$")
_SEGMENT_KEYS = frozenset({"index", "plain_len", "cipher_len", "share_size", "shares"})
_MANIFEST_KEYS = frozenset({"content_id", "name", "size", "segment_size", "k", "n", "segments"})


class CodecError(FogwheelError, ValueError):
    """A manifest, parameter or set of shares the codec cannot work with; the message says which."""


class BadShare(CodecError, IntegrityError):
    """A share whose bytes do not hash to the name the manifest gives it; drop it, fetch another."""

    def __init__(self, index: int, message: str) -> None:
        super().__init__(message)
        self.index = index


def _require_int(what: str, value: object, low: int, high: int | None = None) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise CodecError(f"{what} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in {low}..{high}"
        raise CodecError(f"{what} must be {bound}, got {value}")
    return value


def _check_k_n(k: object, n: object) -> None:
    if _require_int("k", k, 1, MAX_SHARES) > _require_int("n", n, 1, MAX_SHARES):
        raise CodecError(f"k must not exceed n (need 1 <= k <= n <= {MAX_SHARES}), got k={k} n={n}")


def _check_content_id(content_id: object) -> None:
    if not isinstance(content_id, str) or not _CONTENT_ID.match(content_id):
        raise CodecError(f"content_id must be 'c' and 24 lowercase hex digits, got {content_id!r}")


def _check_key(key: object) -> None:
    if not isinstance(key, bytes | bytearray) or len(key) != KEY_SIZE:
        raise CodecError(f"the key must be {KEY_SIZE} bytes (from new_key())")


def segment_count(size: int, segment_size: int) -> int:
    """Segments an object of `size` bytes has; an empty object still has one, empty, segment."""
    return max(1, -(-size // segment_size))


def share_size_for(cipher_len: int, k: int) -> int:
    """Bytes in each share of a segment whose ciphertext (with tag) is `cipher_len` bytes."""
    return -(-cipher_len // k)


@dataclass(frozen=True)
class Segment:
    """One sealed segment: its plaintext and ciphertext lengths and the names of its n shares."""

    index: int
    plain_len: int
    cipher_len: int
    share_size: int
    shares: tuple[str, ...]

    def __post_init__(self) -> None:
        _require_int("segment index", self.index, 0)
        where = f"segment {self.index}"
        _require_int(f"{where} plain_len", self.plain_len, 0)
        _require_int(f"{where} cipher_len", self.cipher_len, TAG_SIZE)
        _require_int(f"{where} share_size", self.share_size, 1)
        if self.cipher_len != self.plain_len + TAG_SIZE:
            raise CodecError(
                f"{where}: cipher_len {self.cipher_len} must be plain_len {self.plain_len}"
                f" + {TAG_SIZE} (the AES-GCM tag)"
            )
        if not isinstance(self.shares, tuple):
            raise CodecError(f"{where}: shares must be a tuple of SHA-256 hex names")
        for number, sha in enumerate(self.shares):
            if not isinstance(sha, str) or not _SHA256.match(sha):
                raise CodecError(
                    f"{where}: share {number} name must be 64 lowercase hex digits, got {sha!r}"
                )

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "plain_len": self.plain_len,
            "cipher_len": self.cipher_len,
            "share_size": self.share_size,
            "shares": list(self.shares),
        }

    @classmethod
    def from_dict(cls, d: object) -> Segment:
        if not isinstance(d, Mapping):
            raise CodecError(f"a segment must be an object, got {type(d).__name__}")
        _check_keys("segment", d, _SEGMENT_KEYS)
        shares = d["shares"]
        if not isinstance(shares, list | tuple):
            raise CodecError(f"segment shares must be a list, got {type(shares).__name__}")
        return cls(d["index"], d["plain_len"], d["cipher_len"], d["share_size"], tuple(shares))


@dataclass(frozen=True)
class Manifest:
    """Everything but the key needed to fetch, verify and decode an object's shares."""

    content_id: str
    name: str
    size: int
    segment_size: int
    k: int
    n: int
    segments: tuple[Segment, ...]

    def __post_init__(self) -> None:
        _check_content_id(self.content_id)
        if not isinstance(self.name, str):
            raise CodecError(f"name must be a string, got {type(self.name).__name__}")
        _require_int("size", self.size, 0)
        _require_int("segment_size", self.segment_size, 1)
        _check_k_n(self.k, self.n)
        if not isinstance(self.segments, tuple) or not all(
            isinstance(s, Segment) for s in self.segments
        ):
            raise CodecError("segments must be a tuple of Segment")
        expected = segment_count(self.size, self.segment_size)
        if len(self.segments) != expected:
            raise CodecError(
                f"{self.size} bytes in segments of {self.segment_size} make {expected}"
                f" segment(s), but the manifest lists {len(self.segments)}"
            )
        for position, segment in enumerate(self.segments):
            self._check_segment(position, segment)

    def _check_segment(self, position: int, segment: Segment) -> None:
        if segment.index != position:
            raise CodecError(f"segment at position {position} has index {segment.index}")
        last = position == len(self.segments) - 1
        plain_len = self.size - position * self.segment_size if last else self.segment_size
        if segment.plain_len != plain_len:
            raise CodecError(
                f"segment {position} must hold {plain_len} bytes, the manifest says"
                f" {segment.plain_len}"
            )
        if segment.share_size != share_size_for(segment.cipher_len, self.k):
            raise CodecError(
                f"segment {position}: share_size {segment.share_size} does not fit cipher_len"
                f" {segment.cipher_len} split {self.k} ways"
            )
        if len(segment.shares) != self.n:
            raise CodecError(
                f"segment {position} names {len(segment.shares)} shares, n is {self.n}"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "content_id": self.content_id,
            "name": self.name,
            "size": self.size,
            "segment_size": self.segment_size,
            "k": self.k,
            "n": self.n,
            "segments": [s.to_dict() for s in self.segments],
        }

    @classmethod
    def from_dict(cls, d: object) -> Manifest:
        """Parse and check a manifest from JSON-shaped data; CodecError says what is wrong."""
        if not isinstance(d, Mapping):
            raise CodecError(f"a manifest must be an object, got {type(d).__name__}")
        _check_keys("manifest", d, _MANIFEST_KEYS)
        segments = d["segments"]
        if not isinstance(segments, list | tuple):
            raise CodecError(f"manifest segments must be a list, got {type(segments).__name__}")
        return cls(
            content_id=d["content_id"],
            name=d["name"],
            size=d["size"],
            segment_size=d["segment_size"],
            k=d["k"],
            n=d["n"],
            segments=tuple(Segment.from_dict(s) for s in segments),
        )

    def segment_for(self, offset: int) -> int:
        """Index of the segment holding byte `offset` of the object."""
        _require_int("offset", offset, 0)
        if offset >= self.size:
            raise CodecError(f"offset {offset} is past the end of a {self.size}-byte object")
        return offset // self.segment_size


def _check_keys(what: str, d: Mapping[Any, Any], expected: frozenset[str]) -> None:
    missing = expected - d.keys()
    unknown = d.keys() - expected
    if missing:
        raise CodecError(f"{what} is missing {', '.join(sorted(missing))}")
    if unknown:
        raise CodecError(f"{what} has unknown field(s) {', '.join(sorted(map(str, unknown)))}")


def new_key() -> bytes:
    """A fresh AES-256 key; use one per object, never reuse it for another."""
    return secrets.token_bytes(KEY_SIZE)


def new_content_id() -> str:
    """A random object id: 'c' and 24 lowercase hex digits (96 bits)."""
    return "c" + secrets.token_hex(12)


def _nonce(index: int) -> bytes:
    """4 zero bytes and the segment index: unique per segment, as the key is unique per object."""
    return b"\0\0\0\0" + index.to_bytes(8, "big")


def _aad(content_id: str, index: int) -> bytes:
    """Binds each segment to its object and position, so shares cannot be swapped between them."""
    return f"{content_id}:{index}".encode()


def encode_segment(
    plain: bytes, key: bytes, content_id: str, index: int, k: int, n: int
) -> tuple[Segment, list[bytes]]:
    """Seal one segment and expand it into n shares, any k of which rebuild it."""
    _check_key(key)
    _check_content_id(content_id)
    _require_int("segment index", index, 0, (1 << 64) - 1)
    _check_k_n(k, n)
    cipher = AESGCM(bytes(key)).encrypt(_nonce(index), plain, _aad(content_id, index))
    share_size = share_size_for(len(cipher), k)
    padded = cipher + bytes(share_size * k - len(cipher))
    blocks = tuple(padded[i * share_size : (i + 1) * share_size] for i in range(k))
    shares = list(zfec.Encoder(k, n).encode(blocks))
    names = tuple(hashlib.sha256(share).hexdigest() for share in shares)
    segment = Segment(index, len(plain), len(cipher), share_size, names)
    return segment, shares


def encode_file(
    path: str | os.PathLike[str],
    key: bytes,
    content_id: str,
    name: str,
    k: int,
    n: int,
    segment_size: int = SEGMENT_SIZE,
) -> Iterator[tuple[Segment, list[bytes]]]:
    """Encode a file segment by segment; only one segment and its shares are held at a time.

    `name` is not part of the encoding; it is accepted so callers pass the same arguments here
    and to `build_manifest`.
    """
    del name
    _require_int("segment_size", segment_size, 1)
    with open(path, "rb") as f:
        index = 0
        while True:
            chunk = f.read(segment_size)
            if not chunk and index > 0:
                return
            yield encode_segment(chunk, key, content_id, index, k, n)
            if len(chunk) < segment_size:
                return
            index += 1


def build_manifest(
    content_id: str,
    name: str,
    size: int,
    segment_size: int,
    k: int,
    n: int,
    segments: Iterable[Segment],
) -> Manifest:
    """The manifest for an object encoded with these parameters; CodecError if inconsistent."""
    return Manifest(content_id, name, size, segment_size, k, n, tuple(segments))


def decode_segment(
    manifest: Manifest, index: int, shares: Mapping[int, bytes], key: bytes
) -> bytes:
    """The plaintext of segment `index` from any k of its shares (share number -> bytes).

    Every given share is checked against its name first (BadShare names the first bad one);
    the primary shares are preferred, as zfec then has nothing to compute.
    """
    _check_key(key)
    _require_int("segment index", index, 0, len(manifest.segments) - 1)
    segment = manifest.segments[index]
    for number in shares:
        _require_int("share number", number, 0, manifest.n - 1)
    for number in sorted(shares):
        if hashlib.sha256(shares[number]).hexdigest() != segment.shares[number]:
            raise BadShare(
                number,
                f"share {number} of segment {index} does not match its SHA-256"
                f" {segment.shares[number]}; discard it and fetch another share",
            )
    if len(shares) < manifest.k:
        raise CodecError(f"segment {index} needs {manifest.k} shares, only {len(shares)} given")
    numbers = tuple(sorted(shares)[: manifest.k])
    blocks = tuple(bytes(shares[number]) for number in numbers)
    primary = zfec.Decoder(manifest.k, manifest.n).decode(blocks, numbers)
    cipher = b"".join(primary)[: segment.cipher_len]
    try:
        return AESGCM(bytes(key)).decrypt(_nonce(index), cipher, _aad(manifest.content_id, index))
    except InvalidTag:
        raise CodecError(
            f"segment {index} does not decrypt: wrong key, or shares and manifest do not belong"
            " together"
        ) from None


def encode_throughput(mb: int = 64, k: int = 4, n: int = 8) -> float:
    """MiB/s of plaintext sealed, erasure-coded and hashed on one core (one thread).

    Encodes `mb` segments of 1 MiB of random data; the random data is made before timing.
    """
    _require_int("mb", mb, 1)
    key, content_id = new_key(), new_content_id()
    plain = os.urandom(SEGMENT_SIZE)
    start = time.perf_counter()
    for index in range(mb):
        encode_segment(plain, key, content_id, index, k, n)
    elapsed = time.perf_counter() - start
    return mb * SEGMENT_SIZE / (1 << 20) / elapsed
