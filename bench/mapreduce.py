"""MapReduce word count: fogwheel against a Dask bag, and backup tasks against a straggler.

Part one counts the words of a generated text (200 MB by default: a Zipf-like vocabulary,
capitals, punctuation, a few non-ASCII words, lines of varying length) on a fog of a
coordinator and 2 local node agents with one slot each, and in the same run with a Dask bag
(`read_text(...).str.split().flatten().frequencies()`) on a distributed `LocalCluster` of 2
single-threaded worker processes. fogwheel is timed from the start of `mapreduce.run` until
its output files are written (cutting and uploading the splits included); Dask from building
the bag until the frequencies are back in the client. Both results must be equal, and a
warm-up on a small file must match `collections.Counter(data.split())`: a wrong result fails
the benchmark. The client's default verification ("adaptive": new nodes' results are checked
on another node) is measured, and a second fogwheel client with `replicas=1` (a fog of one's
own devices: nothing checked) on the same fog gives a second figure. The runs alternate and
the medians are reported.

Part two is the straggler: a fog of 3 single-slot nodes, one of them 5x slower
(`FOGWHEEL_FAULT=slow:5`), counts 80 MB cut into 8 MB splits (a map task of about half a
second, two and a half on the slow node: long enough to be worth a backup, which the
coordinator considers after max(2 s, 1.5x the job's median)), alternately with and without
backup copies of straggling tasks; the medians and the saving are reported.

    python bench/mapreduce.py                         # 200 MB, 80 MB straggler input, 3 runs
    python bench/mapreduce.py --mb 10 --straggler-mb 16 --runs 1

The generated texts are cached in --data-dir (deterministic: the same seed and size give the
same bytes). Progress goes to stderr; the last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from fogwheel.client import Client
from fogwheel.localfog import LocalFog
from fogwheel.mapreduce import Result, WordCount, run

MB = 1024 * 1024
WARMUP_MB = 4  # the small file that is also checked against a plain Counter
DEFAULT_DATA_DIR = Path(tempfile.gettempdir()) / "fogwheel-bench-data"


class BenchmarkFailed(Exception):
    """A result was wrong or missing: the figures would be meaningless."""


def progress(message: str) -> None:
    """Status for the person watching; stderr, so that stdout ends with the JSON line."""
    print(message, file=sys.stderr, flush=True)


# -- the input --------------------------------------------------------------------------------

# English letter frequencies (per cent), a..z.
_LETTER_FREQ = np.array(
    [8.2, 1.5, 2.8, 4.3, 12.7, 2.2, 2.0, 6.1, 7.0, 0.15, 0.77, 4.0, 2.4,
     6.7, 7.5, 1.9, 0.095, 6.0, 6.3, 9.1, 2.8, 0.98, 2.4, 0.15, 2.0, 0.074],
)  # fmt: skip
_ACCENTED = ["é", "è", "ü", "ö", "ä", "ß", "ñ", "ç", "ø", "å"]


def make_vocabulary(rng: np.random.Generator, size: int) -> list[bytes]:
    """`size` words, most frequent first: short ones at the top of the ranking (as in real text),
    some capitalised, some with punctuation attached, a few with a non-ASCII letter, and one
    empty word (it makes double spaces and blank lines)."""
    letters = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz", dtype=np.uint8)
    p = _LETTER_FREQ / _LETTER_FREQ.sum()
    lengths = np.clip(rng.poisson(6.5, size), 1, 18)
    lengths = lengths[np.argsort(lengths + rng.normal(0.0, 3.0, size))]  # frequent: shorter
    chars = letters[rng.choice(26, size=int(lengths.sum()), p=p)]
    words: list[bytes] = []
    pos = 0
    for n in lengths.tolist():
        words.append(chars[pos : pos + n].tobytes())
        pos += n
    roll = rng.random(size)
    extra = rng.integers(0, len(_ACCENTED), size)
    for i, w in enumerate(words):
        r = roll[i]
        if r < 0.08:
            w = w.capitalize()
        elif r < 0.12:
            w += b","
        elif r < 0.15:
            w += b"."
        elif r < 0.16:
            w = b'"' + w
        elif r < 0.175:
            cut = len(w) // 2
            w = w[:cut] + _ACCENTED[extra[i]].encode() + w[cut:]
        elif r < 0.18:
            w = w.upper()
        words[i] = w
    words.insert(40, b"")  # an empty word, fairly common
    return words


def generate_text(path: Path, mb: float, seed: int, vocabulary: int = 200_000) -> None:
    """Write about `mb` MB of Zipf-Mandelbrot distributed words in lines of a log-normal number
    of words (median about 9, some much longer), with a few tabs among the spaces."""
    rng = np.random.default_rng(seed)
    words = make_vocabulary(rng, vocabulary)
    flat = np.frombuffer(b"".join(w + b" " for w in words), dtype=np.uint8)
    wlen = np.array([len(w) + 1 for w in words], dtype=np.int64)  # with its separator
    woff = np.concatenate(([0], np.cumsum(wlen)[:-1]))
    ranks = np.arange(1, len(words) + 1, dtype=np.float64)
    prob = 1.0 / (ranks + 2.7) ** 1.05
    cdf = np.cumsum(prob / prob.sum())
    target = int(mb * MB)
    written = 0
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        while written < target:
            n = 2_000_000
            idx = np.minimum(np.searchsorted(cdf, rng.random(n)), len(words) - 1)
            lens = wlen[idx]
            ends = np.cumsum(lens)
            starts = ends - lens
            total = int(ends[-1])
            src = np.repeat(woff[idx] - starts, lens) + np.arange(total, dtype=np.int64)
            out = flat[src]
            seps = ends - 1
            out[seps[rng.random(n) < 0.003]] = ord("\t")
            per_line = np.maximum(1, rng.lognormal(2.2, 0.8, n // 4).astype(np.int64))
            line_ends = np.cumsum(per_line) - 1
            line_ends = line_ends[line_ends < n]
            out[seps[line_ends]] = ord("\n")
            out[-1] = ord("\n")
            data = out.tobytes()
            if written + len(data) > target:  # stop at the first line end past the target
                cut = data.find(b"\n", target - written)
                data = data[: cut + 1] if cut >= 0 else data
            f.write(data)
            written += len(data)
    tmp.replace(path)


def text_file(data_dir: Path, mb: float, seed: int) -> Path:
    """The cached text of `mb` MB for `seed`, generated on first use."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / f"words-{mb:g}mb-seed{seed}.txt"
    if not path.exists():
        t0 = time.perf_counter()
        progress(f"generating {path} ({mb:g} MB)")
        generate_text(path, mb, seed)
        progress(f"  generated in {time.perf_counter() - t0:.1f} s")
    return path


# -- the two systems under test ---------------------------------------------------------------


def read_counts(paths: list[Path]) -> dict[bytes, int]:
    """The `word<TAB>count` lines of fogwheel's part files, as a dict."""
    counts: dict[bytes, int] = {}
    for path in paths:
        for line in path.read_bytes().splitlines():
            word, _, n = line.rpartition(b"\t")
            if word in counts:
                raise BenchmarkFailed(f"fogwheel: word {word!r} appears in two output lines")
            counts[word] = int(n)
    return counts


def fogwheel_run(
    client: Client, path: Path, work: Path, split_mb: float, backups: bool = True
) -> tuple[float, dict[bytes, int], Result]:
    """Seconds from the start of `mapreduce.run` until the output files are written."""
    out = work / "out"
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    try:
        result = run(client, WordCount(), [path], out, split_mb=split_mb, backups=backups)
    except Exception as e:
        raise BenchmarkFailed(f"fogwheel: the job failed: {e!r}") from e
    elapsed = time.perf_counter() - t0
    counts = read_counts(result.paths)
    shutil.rmtree(out, ignore_errors=True)
    return elapsed, counts, result


def dask_run(dask_client: Any, path: Path, blocksize: int) -> tuple[float, dict[bytes, int]]:
    """Seconds from building the bag until the frequencies are in this process."""
    import dask.bag as db

    t0 = time.perf_counter()
    bag = db.read_text(str(path), blocksize=blocksize).str.split().flatten().frequencies()
    try:
        pairs = dask_client.compute(bag).result()
    except Exception as e:
        raise BenchmarkFailed(f"dask: the computation failed: {e!r}") from e
    elapsed = time.perf_counter() - t0
    counts = {w.encode(): n for w, n in pairs}
    if len(counts) != len(pairs):
        raise BenchmarkFailed("dask: a word appears twice in the frequencies")
    return elapsed, counts


def compare(name_a: str, a: dict[bytes, int], name_b: str, b: dict[bytes, int]) -> None:
    """Equal word counts, or the benchmark fails with the first few differences."""
    if a == b:
        return
    keys = sorted(set(a) | set(b), key=lambda w: -(a.get(w, 0) + b.get(w, 0)))
    diffs = [(w, a.get(w), b.get(w)) for w in keys if a.get(w) != b.get(w)]
    shown = ", ".join(f"{w!r}: {x} vs {y}" for w, x, y in diffs[:5])
    raise BenchmarkFailed(
        f"{name_a} and {name_b} disagree on {len(diffs)} of {len(keys)} words "
        f"({sum(a.values()):,} vs {sum(b.values()):,} words in all); first: {shown}"
    )


# -- the benchmark ----------------------------------------------------------------------------


@contextlib.contextmanager
def clusters(n_nodes: int) -> Iterator[tuple[LocalFog, Client, Client, Any]]:
    """The fog with two SDK clients (adaptive checking, and replicas=1), and Dask's client."""
    from dask.distributed import Client as DaskClient
    from dask.distributed import LocalCluster

    with contextlib.ExitStack() as stack:
        progress(f"starting fogwheel: a coordinator and {n_nodes} node agents, 1 slot each")
        fog = stack.enter_context(LocalFog(nodes=n_nodes, cores_per_node=1))
        checked = stack.enter_context(Client(fog.url, fog.api_key))
        unchecked = stack.enter_context(Client(fog.url, fog.api_key, replicas=1))
        progress(f"starting dask: LocalCluster of {n_nodes} single-threaded worker processes")
        cluster = stack.enter_context(
            LocalCluster(
                n_workers=n_nodes, threads_per_worker=1, processes=True, dashboard_address=None
            )
        )
        dask_client = stack.enter_context(DaskClient(cluster))
        yield fog, checked, unchecked, dask_client


def throughput(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Part one: fogwheel (checked and unchecked) against Dask on the same file, alternating."""
    small = text_file(args.data_dir, WARMUP_MB, args.seed)
    big = text_file(args.data_dir, args.mb, args.seed)
    mb = big.stat().st_size / MB
    blocksize = int(args.split_mb * MB)
    expected = Counter(small.read_bytes().split())
    with clusters(2) as (_fog, checked, unchecked, dask_client):
        systems: dict[str, Callable[[Path], tuple[float, dict[bytes, int]]]] = {
            "fogwheel": lambda p: fogwheel_run(checked, p, work, args.split_mb)[:2],
            "dask": lambda p: dask_run(dask_client, p, blocksize),
        }
        if not args.no_unchecked:
            systems["fogwheel-unchecked"] = lambda p: fogwheel_run(
                unchecked, p, work, args.split_mb
            )[:2]
        # Warm-up, and the check against a plain Counter on a small file.
        for name, system in systems.items():
            seconds, counts = system(small)
            compare(name, counts, "Counter", dict(expected))
            progress(f"warm-up {name}: {WARMUP_MB} MB in {seconds:.2f} s, equals Counter")
        times: dict[str, list[float]] = {name: [] for name in systems}
        order = list(systems)
        reference: dict[bytes, int] | None = None
        reference_name = ""
        for r in range(args.runs):
            for name in order:
                seconds, counts = systems[name](big)
                if reference is None:
                    reference, reference_name = counts, f"{name} run 1"
                else:
                    compare(reference_name, reference, name, counts)
                times[name].append(seconds)
                progress(
                    f"run {r + 1}/{args.runs} {name}: {mb:.0f} MB in {seconds:.2f} s "
                    f"= {mb / seconds:.1f} MB/s ({len(counts):,} distinct words)"
                )
                del counts
            order = order[1:] + order[:1]  # rotate who goes first
    fog_s = statistics.median(times["fogwheel"])
    dask_s = statistics.median(times["dask"])
    unchecked_s = (
        statistics.median(times["fogwheel-unchecked"]) if "fogwheel-unchecked" in times else None
    )
    return {
        "fogwheel_s": round(fog_s, 2),
        "dask_s": round(dask_s, 2),
        "ratio": round(fog_s / dask_s, 3),
        "mb": round(mb, 1),
        "fogwheel_mb_s": round(mb / fog_s, 1),
        "dask_mb_s": round(mb / dask_s, 1),
        "fogwheel_unchecked_s": None if unchecked_s is None else round(unchecked_s, 2),
        "fogwheel_runs": [round(x, 2) for x in times["fogwheel"]],
        "dask_runs": [round(x, 2) for x in times["dask"]],
        "fogwheel_unchecked_runs": [round(x, 2) for x in times.get("fogwheel-unchecked", [])],
    }


def straggler(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Part two: 3 nodes, one 5x slower; the same job with and without backup tasks."""
    path = text_file(args.data_dir, args.straggler_mb, args.seed)
    expected: dict[bytes, int] | None = None
    progress("starting fogwheel: a coordinator and 3 node agents, one of them slow:5")
    with LocalFog(nodes=2, cores_per_node=1) as fog:
        fog.add_node(env={"FOGWHEEL_FAULT": "slow:5"})
        fog.wait_for_nodes(3)
        # replicas=1: only the backup copies are measured, not verification's checks.
        with Client(fog.url, fog.api_key, replicas=1) as client:
            modes = {"backups": True, "no-backups": False}
            times: dict[str, list[float]] = {m: [] for m in modes}
            order = list(modes)
            for r in range(args.runs):
                for mode in order:
                    seconds, counts, result = fogwheel_run(
                        client, path, work, args.straggler_split_mb, backups=modes[mode]
                    )
                    if expected is None:
                        expected = counts
                    else:
                        compare("the first straggler run", expected, mode, counts)
                    times[mode].append(seconds)
                    phases = ", ".join(f"{k} {v:.2f}" for k, v in result.seconds.items())
                    progress(
                        f"straggler run {r + 1}/{args.runs} {mode}: {seconds:.2f} s "
                        f"({result.splits} splits; {phases})"
                    )
                order.reverse()
    with_s = statistics.median(times["backups"])
    without_s = statistics.median(times["no-backups"])
    return {
        "straggler_backups_s": round(with_s, 2),
        "straggler_no_backups_s": round(without_s, 2),
        "backup_saving": round(1.0 - with_s / without_s, 3),
        "straggler_mb": args.straggler_mb,
        "straggler_backups_runs": [round(x, 2) for x in times["backups"]],
        "straggler_no_backups_runs": [round(x, 2) for x in times["no-backups"]],
    }


def print_table(figures: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Word count of {figures['mb']:g} MB, median of {figures['runs']} runs")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("fogwheel (adaptive checking) s", f"{figures['fogwheel_s']:.2f}")
    if figures["fogwheel_unchecked_s"] is not None:
        table.add_row("fogwheel (replicas=1) s", f"{figures['fogwheel_unchecked_s']:.2f}")
    table.add_row("dask bag s", f"{figures['dask_s']:.2f}")
    table.add_row("ratio fogwheel/dask (goal <= 1)", f"{figures['ratio']:.3f}")
    table.add_row("MB/s fogwheel / dask", f"{figures['fogwheel_mb_s']} / {figures['dask_mb_s']}")
    if "straggler_backups_s" in figures:
        table.add_row("straggler, backups s", f"{figures['straggler_backups_s']:.2f}")
        table.add_row("straggler, no backups s", f"{figures['straggler_no_backups_s']:.2f}")
        table.add_row("backup saving", f"{figures['backup_saving']:.1%}")
    Console(stderr=True).print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=200, help="text size in MB (200)")
    parser.add_argument("--runs", type=int, default=3, help="runs of each system (3)")
    parser.add_argument("--split-mb", type=float, default=16, help="split/block size (16)")
    parser.add_argument("--straggler-mb", type=float, default=80, help="straggler input (80)")
    parser.add_argument("--straggler-split-mb", type=float, default=8, help="its splits (8)")
    parser.add_argument("--no-straggler", action="store_true", help="skip part two")
    parser.add_argument("--no-unchecked", action="store_true", help="skip the replicas=1 runs")
    parser.add_argument("--seed", type=int, default=1, help="of the generated text (1)")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="text cache")
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    args = parser.parse_args(argv)
    logging.getLogger("distributed").setLevel(logging.WARNING)
    work = Path(tempfile.mkdtemp(prefix="fogwheel-bench-mr-"))
    try:
        figures = throughput(args, work)
        if args.no_straggler:
            figures.update(
                straggler_backups_s=None, straggler_no_backups_s=None, backup_saving=None
            )
        else:
            figures.update(straggler(args, work))
        figures["runs"] = args.runs
    except BenchmarkFailed as e:
        progress(f"BENCHMARK FAILED: {e}")
        return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
    keys = [
        "fogwheel_s", "dask_s", "ratio", "mb", "fogwheel_mb_s", "dask_mb_s",
        "fogwheel_unchecked_s", "straggler_backups_s", "straggler_no_backups_s",
        "backup_saving", "runs",
    ]  # fmt: skip
    figures = {**{k: figures[k] for k in keys}, **figures}
    if not args.json:
        print_table(figures)
    print(json.dumps(figures), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
