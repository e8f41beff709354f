"""MapReduce: splitting and partitioning (pure), then whole jobs on real local fogs — wordcount
against a plain local count, k-mers against Jellyfish itself, a user's own job from examples/,
and each with a node killed mid-job."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fogwheel.client import Client
from fogwheel.localfog import LocalFog
from fogwheel.mapreduce import Grep, JobFailed, MapReduce, WordCount, line_splits, partition_of, run
from fogwheel.workloads.kmer import KmerJob, decode_part, encode_part, range_bounds
from tests.test_kmer import jellyfish_dump, jellyfish_or_skip, random_genome

ROOT = Path(__file__).resolve().parents[1]
WORDS = [f"w{i}" for i in range(3000)] + ["the", "of", "and", "a"] * 200 + ["naïve", "日本"]


def write_text(path: Path, lines: int, seed: int = 7) -> Path:
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(lines):
            f.write(" ".join(rng.choices(WORDS, k=rng.randint(0, 14))) + "\n")
    return path


def read_counts(paths: list[Path]) -> dict[bytes, int]:
    got: dict[bytes, int] = {}
    for p in paths:
        for line in p.read_bytes().splitlines():
            key, _, n = line.rpartition(b"\t")
            assert key not in got, f"{key!r} in two partitions"
            got[key] = int(n)
    return got


def kill_a_busy_node(fog: LocalFog, client: Client, killed: list[int]) -> None:
    """SIGKILL a node that holds a task, once; wait up to 10 s for one to hold something."""
    deadline = time.monotonic() + 10
    while not killed and time.monotonic() < deadline:
        for n in client.nodes():
            i = int(n["name"].split("-")[1])
            proc = fog.nodes[i]
            if n["held"] > 0 and proc is not None and proc.poll() is None:
                fog.kill_node(i, signal.SIGKILL)
                killed.append(i)
                return
        time.sleep(0.05)


# -- pure parts ---------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.text(alphabet="ab \t", max_size=30), max_size=40),
    st.integers(min_value=1, max_value=64),
    st.booleans(),
)
def test_line_splits_keep_every_line_whole_and_in_order(
    tmp_path_factory: pytest.TempPathFactory, lines: list[str], size: int, trailing: bool
) -> None:
    text = "\n".join(lines) + ("\n" if trailing and lines else "")
    path = tmp_path_factory.mktemp("s") / "in.txt"
    path.write_text(text)
    pieces = list(line_splits([path], size))
    joined = b"".join(pieces)
    expected = text.encode()
    if expected and not expected.endswith(b"\n"):
        expected += b"\n"
    assert joined == expected
    assert all(p.endswith(b"\n") for p in pieces)


def test_partitions_are_stable_across_processes() -> None:
    keys = ["the", b"of", 17, -3, ("a", 1), 2.5, "日本"]
    here = [partition_of(k, 7) for k in keys]
    code = (
        f"from fogwheel.mapreduce import partition_of;print([partition_of(k, 7) for k in {keys!r}])"
    )
    there = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert json.loads(there) == here
    assert all(0 <= p < 7 for p in here)


def test_wordcount_map_and_reduce_without_a_fog_equal_a_counter(tmp_path: Path) -> None:
    text = write_text(tmp_path / "t.txt", 2000)
    job = WordCount()
    maps = [job.map_split(piece, 3) for piece in line_splits([text], 5000)]
    outs = []
    for r in range(3):
        parts = []
        for m, payloads in enumerate(maps):
            p = tmp_path / f"in-{m}-{r}"
            p.write_bytes(payloads[r])
            parts.append(p)
        out = tmp_path / f"out-{r}"
        out.write_bytes(job.reduce_parts(parts))
        outs.append(out)
    assert read_counts(outs) == dict(Counter(text.read_bytes().split()))


def test_a_reduce_never_unpickles_code_from_a_map_output(tmp_path: Path) -> None:
    import pickle

    evil = tmp_path / "in-0"
    evil.write_bytes(pickle.dumps({b"x": 1, b"y": print}))
    with pytest.raises(Exception, match="plain data"):
        WordCount().reduce_parts([evil])


def test_grep_refuses_a_broken_pattern() -> None:
    with pytest.raises(ValueError, match="not a regular expression"):
        Grep("a(b")


def test_kmer_partitions_round_trip_and_cover_the_code_space() -> None:
    bounds = range_bounds(21, 8)
    assert len(bounds) == 7 and all(bounds[1:] > bounds[:-1]) and int(bounds[-1]) < 4**21
    job = KmerJob(5)
    parts = job.map_split(b"ACGTTGCAAGGTCCA\nGGGGGCCCCCAAATTT\n", 4)
    assert len(parts) == 4
    decoded = [decode_part(p, 5) for p in parts]
    codes = [int(c) for d in decoded for c in d.codes]
    assert codes == sorted(codes) and len(codes) == len(set(codes))
    assert encode_part(decoded[0]) == parts[0]
    with pytest.raises(ValueError, match="cannot hold"):
        decode_part(parts[0] + b"x", 5)


# -- on a fog -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fog() -> LocalFog:
    with LocalFog(2) as fog:
        yield fog


def test_wordcount_on_the_fog_equals_a_plain_count(fog: LocalFog, tmp_path: Path) -> None:
    text = write_text(tmp_path / "t.txt", 60_000)  # about 3 MB
    phases: dict[str, tuple[int, int]] = {}
    with Client(fog.url, fog.api_key) as client:
        result = run(
            client,
            WordCount(),
            [text],
            tmp_path / "out",
            split_mb=0.25,
            partitions=3,
            progress=lambda phase, done, total: phases.__setitem__(phase, (done, total)),
        )
        reduce_tasks = client.tasks(result.reduce_job, limit=10)
    assert read_counts(result.paths) == dict(Counter(text.read_bytes().split()))
    assert [p.name for p in result.paths] == ["part-00000", "part-00001", "part-00002"]
    assert (tmp_path / "out" / "_SUCCESS").exists()
    assert result.splits >= 8 and phases["map"] == (result.splits, result.splits)
    assert phases["reduce"] == (3, 3) and phases["split"][0] == phases["split"][1]
    # every part file is sorted by key
    for p in result.paths:
        keys = [line.split(b"\t")[0] for line in p.read_bytes().splitlines()]
        assert keys == sorted(keys)
    assert all(t["state"] == "done" for t in reduce_tasks)


def test_a_users_own_job_from_examples_runs_by_value(fog: LocalFog, tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        from mapreduce_wordlengths import job  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(ROOT / "examples"))
    text = tmp_path / "t.txt"
    text.write_text("Apple avocado BANANA\nbread, butter; cherry!\n\n" * 500)
    with Client(fog.url, fog.api_key) as client:
        result = run(client, job, [text], tmp_path / "out", split_mb=0.005, partitions=2)
    got = {}
    for p in result.paths:
        for line in p.read_text().splitlines():
            key, _, value = line.partition("\t")
            got[key] = json.loads(value)
    assert got == {"a": [1000, 6000, 6.0], "b": [1500, 8500, 5.667], "c": [500, 3000, 6.0]}


def test_a_failing_mapper_fails_the_job_with_its_error(fog: LocalFog, tmp_path: Path) -> None:
    def mapper(line: str) -> list[tuple[str, int]]:
        raise RuntimeError(f"cannot map {line!r}")

    text = tmp_path / "t.txt"
    text.write_text("one line\n")
    with (
        Client(fog.url, fog.api_key) as client,
        pytest.raises(JobFailed, match=r"map task 0.*cannot map 'one line'"),
    ):
        run(client, MapReduce(mapper, lambda k, vs: vs), [text], tmp_path / "out")


def test_a_node_killed_mid_wordcount_loses_nothing(tmp_path: Path) -> None:
    text = write_text(tmp_path / "t.txt", 60_000, seed=11)
    killed: list[int] = []
    with (
        LocalFog(3, lease_seconds=2.0, workdir=tmp_path / "fog") as fog,
        Client(fog.url, fog.api_key) as client,
    ):

        def progress(phase: str, done: int, total: int) -> None:
            if phase == "map" and done == 2 and not killed:
                kill_a_busy_node(fog, client, killed)

        result = run(client, WordCount(), [text], tmp_path / "out", split_mb=0.1, progress=progress)
        history = client.tasks(result.map_job, limit=100)
    assert killed, "no node held a map task when the second one finished"
    assert read_counts(result.paths) == dict(Counter(text.read_bytes().split()))
    assert all(t["state"] == "done" for t in history)


def test_kmer_counts_on_the_fog_equal_jellyfish_even_with_a_node_killed(tmp_path: Path) -> None:
    jellyfish = jellyfish_or_skip()
    genome = tmp_path / "genome.fa"
    genome.write_text(random_genome(5, records=6, length=60_000))
    k = 21
    killed: list[int] = []
    with (
        LocalFog(3, lease_seconds=2.0, workdir=tmp_path / "fog") as fog,
        Client(fog.url, fog.api_key) as client,
    ):

        def progress(phase: str, done: int, total: int) -> None:
            if phase == "map" and done == 1 and not killed:
                threading.Thread(target=kill_a_busy_node, args=(fog, client, killed)).start()

        result = run(
            client,
            KmerJob(k),
            [genome],
            tmp_path / "counts.tsv",
            split_mb=0.02,
            partitions=4,
            progress=progress,
        )
    assert result.paths == [tmp_path / "counts.tsv"]
    assert result.splits > 10
    assert (tmp_path / "counts.tsv").read_text() == jellyfish_dump(jellyfish, genome, k)


def test_the_cli_runs_wordcount_grep_kmer_and_a_users_job_on_a_local_fog(tmp_path: Path) -> None:
    text = write_text(tmp_path / "t.txt", 5000)
    genome = tmp_path / "g.fa"
    genome.write_text(random_genome(3, records=2, length=5000))

    def fogwheel(*args: str) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(
            [sys.executable, "-m", "fogwheel", *args, "--local", "2"],
            capture_output=True,
            text=True,
            timeout=180,
            cwd=tmp_path,
        )
        assert res.returncode == 0, res.stderr
        return res

    res = fogwheel("mapreduce", "wordcount", str(text), "--out", "wc")
    assert "wrote wc/ (" in res.stdout and "top 10" in res.stdout
    assert read_counts(sorted((tmp_path / "wc").glob("part-*"))) == dict(
        Counter(text.read_bytes().split())
    )
    res = fogwheel("mapreduce", "grep", "w1[0-9]{3}", str(text), "--out", "g")
    expected = Counter(w for w in text.read_text().split() if len(w) == 5 and w[:2] == "w1")
    assert {
        k.decode(): v for k, v in read_counts(sorted((tmp_path / "g").glob("part-*"))).items()
    } == (dict(expected))
    res = fogwheel("kmer", str(genome), "-k", "11", "--out", "counts.tsv")
    assert "wrote counts.tsv" in res.stdout
    assert (tmp_path / "counts.tsv").stat().st_size > 0
    job = f"{ROOT / 'examples' / 'mapreduce_wordlengths.py'}:job"
    res = fogwheel("mapreduce", "run", job, str(text), "--out", "lengths", "--json")
    figures = json.loads(res.stdout.strip().splitlines()[-1])
    assert figures["partitions"] >= 2 and figures["input_bytes"] == text.stat().st_size


def test_the_cli_says_what_is_wrong_with_a_bad_job_reference(tmp_path: Path) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "fogwheel", "mapreduce", "run", "nofile.py:job",
         str(ROOT / "README.md"), "--local", "1"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert res.returncode != 0
    assert "no such file: nofile.py" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.parametrize("k", [3, 11, 21, 31])
@pytest.mark.parametrize("split", [20, 100, 777, 100_000])
def test_kmer_splits_count_every_window_once_and_stay_near_their_size(
    tmp_path: Path, k: int, split: int
) -> None:
    from fogwheel.workloads.kmer import count_kmers, read_sequences, sequence_splits

    genome = tmp_path / "g.fa"
    genome.write_text(random_genome(k * split, records=3, length=3000))
    pieces = list(sequence_splits([genome], k, split))
    assert all(len(p) - p.count(b"\n") <= max(split, 4 * k) + k for p in pieces)
    windows = [line for p in pieces for line in p.split(b"\n")]
    assert count_kmers(windows, k).as_dict() == count_kmers(read_sequences(genome), k).as_dict()
