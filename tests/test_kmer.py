"""Canonical k-mer counting: the 2-bit codec, the readers, and agreement with Jellyfish 2."""

from __future__ import annotations

import io
import os
import random
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fogwheel.workloads import kmer
from fogwheel.workloads.kmer import (
    KmerCounts,
    canonical,
    count_file,
    count_kmers,
    decode,
    encode,
    merge_counts,
    read_sequences,
    reverse_complement_code,
    write_counts,
)

kmers = st.text(alphabet="ACGT", min_size=1, max_size=31)
COMPLEMENT = str.maketrans("ACGT", "TGCA")


def reverse_complement(s: str) -> str:
    return s[::-1].translate(COMPLEMENT)


def naive_counts(sequences: list[bytes], k: int) -> dict[str, int]:
    """The specification: every window of ACGT only, under the smaller of it and its revcomp."""
    counts: Counter[str] = Counter()
    for sequence in sequences:
        text = sequence.decode().upper()
        for i in range(len(text) - k + 1):
            window = text[i : i + k]
            if set(window) <= set("ACGT"):
                counts[min(window, reverse_complement(window))] += 1
    return dict(counts)


def as_strings(counts: KmerCounts) -> dict[str, int]:
    return {decode(code, counts.k): n for code, n in counts.as_dict().items()}


def random_genome(seed: int, records: int = 4, length: int = 50_000) -> str:
    """FASTA text: `records` records of `length` bases, wrapped at 60-80, N runs, lowercase."""
    rng = random.Random(seed)
    out = []
    for r in range(records):
        bases = rng.choices("ACGT", k=length)
        for _ in range(3):
            start, run = rng.randrange(length - 100), rng.randrange(1, 50)
            bases[start : start + run] = ["N"] * run
        soft = rng.randrange(length - 500)  # a soft-masked (lowercase) stretch counts as usual
        bases[soft : soft + 400] = [b.lower() for b in bases[soft : soft + 400]]
        sequence = "".join(bases)
        width = rng.randrange(60, 81)
        out.append(f">chr{r} random record {r}\n")
        out.extend(sequence[i : i + width] + "\n" for i in range(0, length, width))
    return "".join(out)


# -- the codec -------------------------------------------------------------------------------


@given(kmers)
def test_decode_inverts_encode(s: str) -> None:
    assert decode(encode(s), len(s)) == s


@given(kmers)
def test_reverse_complement_is_an_involution_and_matches_the_string(s: str) -> None:
    k, code = len(s), encode(s)
    assert reverse_complement_code(reverse_complement_code(code, k), k) == code
    assert decode(reverse_complement_code(code, k), k) == reverse_complement(s)


@given(kmers)
def test_canonical_is_the_same_for_both_strands_and_is_the_smaller_string(s: str) -> None:
    k, code = len(s), encode(s)
    assert canonical(code, k) == canonical(reverse_complement_code(code, k), k)
    assert decode(canonical(code, k), k) == min(s, reverse_complement(s))


def test_code_order_is_string_order() -> None:
    assert encode("A" * 31) == 0
    assert encode("T" * 31) == (1 << 62) - 1
    assert encode("ACGT") < encode("ACTA") < encode("AGAA")


@pytest.mark.parametrize("bad", ["", "A" * 32, "ACNT"])
def test_encode_refuses_what_does_not_fit(bad: str) -> None:
    with pytest.raises(ValueError):
        encode(bad)


# -- counting --------------------------------------------------------------------------------


@given(
    st.lists(st.text(alphabet="ACGTNacgt", max_size=120), min_size=1, max_size=4),
    st.integers(min_value=1, max_value=31),
)
def test_counts_match_the_naive_specification(texts: list[str], k: int) -> None:
    sequences = [t.upper().encode() for t in texts]
    assert as_strings(count_kmers(sequences, k)) == naive_counts(sequences, k)


def test_counting_is_the_same_across_chunk_boundaries(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(7)
    sequence = "".join(rng.choices("ACGTN", weights=[10, 10, 10, 10, 1], k=5_000)).encode()
    whole = count_kmers([sequence], 21)
    monkeypatch.setattr(kmer, "CHUNK_BASES", 97)
    chunked = count_kmers([sequence], 21)
    assert chunked.as_dict() == whole.as_dict()
    assert as_strings(whole) == naive_counts([sequence], 21)


def test_merging_the_halves_equals_counting_the_whole() -> None:
    sequences = list(read_sequences(random_genome(seed=3, records=6, length=5_000).encode()))
    first = count_kmers(sequences[:3], 21)
    second = count_kmers(sequences[3:], 21)
    merged = merge_counts([first, second])
    whole = count_kmers(sequences, 21)
    assert merged.codes.tolist() == whole.codes.tolist()
    assert merged.counts.tolist() == whole.counts.tolist()


def test_merging_different_k_is_refused() -> None:
    with pytest.raises(ValueError, match="different k"):
        merge_counts([count_kmers([b"ACGTACGT"], 3), count_kmers([b"ACGTACGT"], 4)])


# -- reading ---------------------------------------------------------------------------------


def test_fasta_records_are_joined_across_wrapped_lines_and_uppercased() -> None:
    fasta = b">a first\nACGT\nacgt\n\n>b\nNNac\n>empty\n>c\r\nGG\r\n"
    assert list(read_sequences(fasta)) == [b"ACGTACGT", b"NNAC", b"", b"GG"]


def test_fastq_records_give_their_sequences_even_when_quality_starts_with_at() -> None:
    fastq = b"@r1\nACGTAC\n+\n@IIIII\n@r2 x\nggGNCC\n+r2 x\n!!!!!!\n"
    assert list(read_sequences(fastq)) == [b"ACGTAC", b"GGGNCC"]
    counts = count_kmers(read_sequences(fastq), 3)
    assert as_strings(counts) == {"ACG": 2, "GTA": 2, "CCC": 1}


def test_something_else_is_refused_with_the_reason() -> None:
    with pytest.raises(ValueError, match="not FASTA or FASTQ"):
        list(read_sequences(b"ACGT\n"))


def test_write_counts_writes_sorted_tab_separated_lines() -> None:
    out = io.StringIO()
    write_counts(count_kmers([b"TTTTACG"], 3), out)
    assert out.getvalue() == "AAA\t2\nACG\t1\nGTA\t1\nTAA\t1\n"


# -- agreement with Jellyfish 2 --------------------------------------------------------------


def jellyfish_or_skip() -> str:
    """The jellyfish binary; its absence skips locally but fails in CI or when required."""
    path = shutil.which("jellyfish")
    if path:
        return path
    why = "jellyfish is not installed (apt-get install jellyfish)"
    if os.environ.get("FOGWHEEL_REQUIRE_JELLYFISH") or os.environ.get("CI") == "true":
        pytest.fail(why)
    pytest.skip(why)


def jellyfish_dump(jellyfish: str, path: Path, k: int) -> str:
    table = path.with_suffix(f".{k}.jf")
    subprocess.run(
        [jellyfish, "count", "-C", "-m", str(k), "-s", "10M", "-o", str(table), str(path)],
        check=True,
    )
    dump = subprocess.run(
        [jellyfish, "dump", "-c", "-t", str(table)], check=True, capture_output=True, text=True
    ).stdout
    return "".join(sorted(dump.splitlines(keepends=True)))


@pytest.fixture(scope="module")
def genome(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("kmer") / "genome.fa"
    path.write_text(random_genome(seed=2024))  # 200 kbp over 4 records
    return path


@pytest.mark.parametrize("k", [5, 21, 31])
def test_counts_equal_jellyfish_dump(genome: Path, k: int) -> None:
    jellyfish = jellyfish_or_skip()
    out = io.StringIO()
    write_counts(count_file(genome, k), out)
    assert out.getvalue() == jellyfish_dump(jellyfish, genome, k)


def test_fastq_counts_equal_jellyfish_dump(tmp_path: Path) -> None:
    jellyfish = jellyfish_or_skip()
    rng = random.Random(11)
    reads = ["".join(rng.choices("ACGTN", weights=[8, 8, 8, 8, 1], k=150)) for _ in range(500)]
    path = tmp_path / "reads.fq"
    path.write_text("".join(f"@read{i}\n{r}\n+\n{'I' * len(r)}\n" for i, r in enumerate(reads)))
    out = io.StringIO()
    write_counts(count_file(path, 21), out)
    assert out.getvalue() == jellyfish_dump(jellyfish, path, 21)
