"""Canonical k-mer counting (k ≤ 31) with 2-bit packed codes, matching `jellyfish count -C`.

The pure, single-process core that a MapReduce job calls once per split: read FASTA/FASTQ,
count every k-mer together with its reverse complement under the smaller of the two codes,
merge the counts of several splits, and write them as `kmer<TAB>count` lines sorted by k-mer.

A k-mer is packed 2 bits a base (A=0, C=1, G=2, T=3, first base in the high bits), so the
numeric order of codes is the lexicographic order of the strings and the canonical form, the
smaller code, is also the string that Jellyfish 2 prints (Marçais & Kingsford, Bioinformatics
27(6), 2011). Windows that contain any base other than A, C, G or T are skipped, as Jellyfish
does. The per-sequence work is vectorised with numpy: forward codes for all windows are built by
doubling (O(n log k)), reverse complements by a bit-reversal of each uint64.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO, TextIO

import numpy as np
import numpy.typing as npt

MAX_K = 31
CHUNK_BASES = 1 << 22  # windows per vectorised step; bounds temporaries to ~100 MiB

_INVALID = 4
_BASE_CODE = np.full(256, _INVALID, dtype=np.uint8)
for _code, _base in enumerate(b"ACGT"):
    _BASE_CODE[_base] = _code
    _BASE_CODE[ord(chr(_base).lower())] = _code
_LETTERS = np.frombuffer(b"ACGT", dtype=np.uint8)

# Masks to reverse the order of the 2-bit groups in a 64-bit word, widest swap last.
_SWAPS = (
    (2, 0x3333333333333333),
    (4, 0x0F0F0F0F0F0F0F0F),
    (8, 0x00FF00FF00FF00FF),
    (16, 0x0000FFFF0000FFFF),
    (32, 0x00000000FFFFFFFF),
)
_U64 = (1 << 64) - 1

Codes = npt.NDArray[np.uint64]


def _check_k(k: int) -> None:
    if not 1 <= k <= MAX_K:
        raise ValueError(f"k must be between 1 and {MAX_K} (a k-mer fits in 64 bits), got {k}")


# -- reading ---------------------------------------------------------------------------------


def read_sequences(source: str | os.PathLike[str] | bytes) -> Iterator[bytes]:
    """Yield each record's sequence, uppercased, from FASTA (wrapped, multi-record) or FASTQ.

    `source` is a path or the file's bytes; the format is told by the first character
    (`>` FASTA, `@` FASTQ, four lines a record).
    """
    if isinstance(source, bytes):
        yield from _read_stream(io.BytesIO(source))
        return
    with open(source, "rb") as stream:
        yield from _read_stream(stream)


def _read_stream(stream: BinaryIO) -> Iterator[bytes]:
    lines = (line.strip() for line in stream)
    lines = (line for line in lines if line)
    first = next(lines, None)
    if first is None:
        return
    if first.startswith(b">"):
        yield from _read_fasta(lines)
    elif first.startswith(b"@"):
        yield from _read_fastq(lines)
    else:
        raise ValueError(
            f"not FASTA or FASTQ: the first line starts with {first[:1]!r}, expected '>' or '@'"
        )


def _read_fasta(lines: Iterator[bytes]) -> Iterator[bytes]:
    """Lines after the first header: sequence lines joined until the next header."""
    parts: list[bytes] = []
    for line in lines:
        if line.startswith(b">"):
            yield b"".join(parts).upper()
            parts = []
        else:
            parts.append(line)
    yield b"".join(parts).upper()


def _read_fastq(lines: Iterator[bytes]) -> Iterator[bytes]:
    """Lines after the first header: sequence, `+`, quality, then the next `@` header."""
    while True:
        sequence = next(lines, None)
        if sequence is None:
            raise ValueError("FASTQ record ends after its header line; expected a sequence")
        plus = next(lines, b"")
        if not plus.startswith(b"+"):
            raise ValueError(f"FASTQ record has {plus[:20]!r} where the '+' line belongs")
        next(lines, None)  # quality
        yield sequence.upper()
        header = next(lines, None)
        if header is None:
            return
        if not header.startswith(b"@"):
            raise ValueError(f"FASTQ record starts with {header[:20]!r}, expected '@'")


# -- the scalar codec ------------------------------------------------------------------------


def encode(kmer: str) -> int:
    """The 2-bit code of `kmer` (A=0, C=1, G=2, T=3; the first base in the highest bits)."""
    _check_k(len(kmer))
    code = 0
    for base in kmer.upper():
        value = "ACGT".find(base)
        if value < 0:
            raise ValueError(f"k-mer {kmer!r} has {base!r}; only A, C, G and T can be encoded")
        code = (code << 2) | value
    return code


def decode(code: int, k: int) -> str:
    """The k-mer string of a 2-bit `code`."""
    _check_k(k)
    return "".join("ACGT"[(code >> (2 * (k - 1 - i))) & 3] for i in range(k))


def reverse_complement_code(code: int, k: int) -> int:
    """The code of the reverse complement of the k-mer with `code`."""
    _check_k(k)
    x = ~code & _U64  # complement: 3 - b flips both bits
    for shift, mask in _SWAPS:
        x = ((x >> shift) & mask) | ((x & mask) << shift)
    return x >> (64 - 2 * k)


def canonical(code: int, k: int) -> int:
    """The smaller of a k-mer's code and its reverse complement's, as `jellyfish count -C`."""
    return min(code, reverse_complement_code(code, k))


# -- vectorised counting ---------------------------------------------------------------------


@dataclass(frozen=True)
class KmerCounts:
    """Counts of canonical k-mers: `codes` strictly ascending, `counts[i]` for `codes[i]`."""

    k: int
    codes: Codes
    counts: npt.NDArray[np.int64]

    def __len__(self) -> int:
        return len(self.codes)

    def as_dict(self) -> dict[int, int]:
        return dict(zip(self.codes.tolist(), self.counts.tolist(), strict=True))

    def total(self) -> int:
        return int(self.counts.sum())


def _empty(k: int) -> KmerCounts:
    return KmerCounts(k, np.empty(0, np.uint64), np.empty(0, np.int64))


def _forward_codes(bases: npt.NDArray[np.uint8], k: int) -> Codes:
    """Codes of all len(bases)-k+1 windows, by combining codes of doubling lengths."""
    windows = len(bases) - k + 1
    power = bases.astype(np.uint64)  # codes of windows of length `span`, for every start
    span = 1
    result: Codes | None = None
    result_span = 0
    remaining = k
    while True:
        if remaining & 1:
            if result is None:
                result, result_span = power, span
            else:
                n = len(bases) - (result_span + span) + 1
                result = (result[:n] << np.uint64(2 * span)) | power[result_span : result_span + n]
                result_span += span
        remaining >>= 1
        if not remaining:
            break
        n = len(bases) - 2 * span + 1
        power = (power[:n] << np.uint64(2 * span)) | power[span : span + n]
        span *= 2
    assert result is not None and result_span == k
    return result[:windows]


def _reverse_complement_codes(codes: Codes, k: int) -> Codes:
    x = ~codes
    for shift, mask in _SWAPS:
        s, m = np.uint64(shift), np.uint64(mask)
        x = ((x >> s) & m) | ((x & m) << s)
    return x >> np.uint64(64 - 2 * k)


def _canonical_codes(bases: npt.NDArray[np.uint8], k: int) -> Codes:
    """Canonical codes of the windows of `bases` (codes 0..3, 4 invalid) with no invalid base."""
    if len(bases) < k:
        return np.empty(0, np.uint64)
    invalid = bases == _INVALID
    clean = np.where(invalid, np.uint8(0), bases)
    forward = _forward_codes(clean, k)
    codes = np.minimum(forward, _reverse_complement_codes(forward, k))
    if invalid.any():
        seen = np.concatenate(([0], np.cumsum(invalid, dtype=np.int64)))
        codes = codes[seen[k:] == seen[: len(seen) - k]]
    return codes


def _tally(codes: Codes, k: int) -> KmerCounts:
    unique, counts = np.unique(codes, return_counts=True)
    return KmerCounts(k, unique, counts.astype(np.int64))


def count_kmers(sequences: Iterable[bytes], k: int) -> KmerCounts:
    """Count the canonical k-mers of `sequences`; k-mers with a base other than ACGT are skipped."""
    _check_k(k)
    parts: list[KmerCounts] = []
    pending: list[Codes] = []
    pending_size = 0
    for sequence in sequences:
        bases = _BASE_CODE[np.frombuffer(sequence, dtype=np.uint8)]
        step = CHUNK_BASES
        for start in range(0, max(len(bases) - k + 1, 0), step):
            codes = _canonical_codes(bases[start : start + step + k - 1], k)
            pending.append(codes)
            pending_size += len(codes)
            if pending_size >= CHUNK_BASES:
                parts.append(_tally(np.concatenate(pending), k))
                pending, pending_size = [], 0
    if pending:
        parts.append(_tally(np.concatenate(pending), k))
    return merge_counts(parts, k)


def merge_counts(parts: Iterable[KmerCounts], k: int | None = None) -> KmerCounts:
    """Sum the counts of several parts (of the same k), as the reduce step of a split job."""
    parts = list(parts)
    ks = {part.k for part in parts} | ({k} if k is not None else set())
    if len(ks) > 1:
        raise ValueError(f"cannot merge counts of different k: {sorted(ks)}")
    if not ks:
        raise ValueError("merge_counts needs k when there are no parts")
    (k,) = ks
    if len(parts) == 1:
        return parts[0]
    if not parts:
        return _empty(k)
    codes = np.concatenate([part.codes for part in parts])
    counts = np.concatenate([part.counts for part in parts])
    order = np.argsort(codes, kind="stable")
    codes, counts = codes[order], counts[order]
    if len(codes) == 0:
        return _empty(k)
    starts = np.flatnonzero(np.concatenate(([True], codes[1:] != codes[:-1])))
    return KmerCounts(k, codes[starts], np.add.reduceat(counts, starts))


def write_counts(counts: KmerCounts, out: TextIO, batch: int = 1 << 16) -> None:
    """Write `kmer<TAB>count` lines sorted by k-mer, the form of `jellyfish dump -c -t | sort`."""
    k = counts.k
    shifts = np.arange(2 * (k - 1), -1, -2, dtype=np.uint64)
    for start in range(0, len(counts.codes), batch):
        codes = counts.codes[start : start + batch]
        letters = _LETTERS[(codes[:, None] >> shifts) & np.uint64(3)]
        kmers = letters.view(f"S{k}").ravel().tolist()
        numbers = counts.counts[start : start + batch].tolist()
        out.write(
            "".join(f"{kmer.decode()}\t{n}\n" for kmer, n in zip(kmers, numbers, strict=True))
        )


def count_file(path: str | os.PathLike[str], k: int) -> KmerCounts:
    """Count the canonical k-mers of a FASTA or FASTQ file."""
    return count_kmers(read_sequences(path), k)
