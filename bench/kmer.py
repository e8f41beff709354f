"""k-mer counting: fogwheel's `KmerJob` on a local fog against Jellyfish 2 with 2 threads.

Counts the canonical k-mers (k = 21 by default) of a generated genome (50 Mbp by default:
several chromosomes, interspersed repeat families in both orientations, tandem repeats,
segmental duplications, runs of N, 60-column FASTA lines) in the same run with
- fogwheel: `mapreduce.run(client, KmerJob(k), [genome.fa], out, split_mb=8)` on a coordinator
  and 2 local node agents with one slot each (8 MB splits: a 16 MB one, the library's default,
  exceeds KmerJob's 1024 MB memory limit in its map task), timed from the start of `run`
  until the sorted `kmer<TAB>count` file is written (cutting and uploading the splits
  included), and
- Jellyfish: `jellyfish count -C -m K -s SIZE -t 2` then `jellyfish dump -c -t`, timed
  together; the `LC_ALL=C sort` that puts its dump in fogwheel's order is timed separately.
The two output files must be byte-identical, or the benchmark fails. Runs alternate; medians
are reported, with where fogwheel's time goes (its phases: split upload, map, reduce, output
download) and the peak resident memory of the largest process of each: for Jellyfish from
`wait4`'s rusage, for fogwheel by polling the coordinator, the node agents and their worker
processes, and this client process, every 0.1 s.

    python bench/kmer.py                    # 50 Mbp, k = 21, 3 runs
    python bench/kmer.py --mbp 2 --runs 1

The genome is cached in --data-dir (deterministic: the same seed and size give the same
bytes). Progress goes to stderr; the last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from fogwheel.client import Client
from fogwheel.localfog import LocalFog
from fogwheel.mapreduce import run
from fogwheel.workloads.kmer import KmerJob

MB = 1024 * 1024
DEFAULT_DATA_DIR = Path(tempfile.gettempdir()) / "fogwheel-bench-data"
JELLYFISH = shutil.which("jellyfish") or "/usr/bin/jellyfish"


class BenchmarkFailed(Exception):
    """An output differed or a tool failed: the figures would be meaningless."""


def progress(message: str) -> None:
    """Status for the person watching; stderr, so that stdout ends with the JSON line."""
    print(message, file=sys.stderr, flush=True)


# -- the genome -------------------------------------------------------------------------------

_ACGT = np.frombuffer(b"ACGT", dtype=np.uint8)
_COMPLEMENT = np.arange(256, dtype=np.uint8)
for _a, _b in zip(b"ACGT", b"TGCA", strict=True):
    _COMPLEMENT[_a] = _b


def _random_bases(rng: np.random.Generator, n: int) -> np.ndarray:
    return _ACGT[rng.choice(4, size=n, p=[0.295, 0.205, 0.205, 0.295])]  # 41 % GC


def _mutated(rng: np.random.Generator, seq: np.ndarray, rate: float) -> np.ndarray:
    copy = seq.copy()
    hit = rng.random(len(copy)) < rate
    copy[hit] = _random_bases(rng, int(hit.sum()))
    return copy


def make_genome(rng: np.random.Generator, total: int) -> list[tuple[str, np.ndarray]]:
    """Chromosomes of decreasing length, about 25 % interspersed repeats (a few dozen families,
    copies 0.5-15 % diverged, either strand), microsatellites, a couple of segmental
    duplications each, and runs of N at the ends and in a centromere-like gap."""
    shares = np.array([0.2, 0.17, 0.15, 0.13, 0.11, 0.09, 0.08, 0.07])
    lengths = np.maximum((shares / shares.sum() * total).astype(np.int64), 20_000)
    families = [_random_bases(rng, int(n)) for n in rng.integers(300, 6_000, 40)]
    family_p = 1.0 / np.arange(1, len(families) + 1)  # some families far commoner
    family_p /= family_p.sum()
    chromosomes = []
    for c, n in enumerate(lengths.tolist(), 1):
        seq = _random_bases(rng, n)
        # Interspersed repeats: overwrite random places with diverged copies.
        covered = 0
        while covered < 0.25 * n:
            fam = families[rng.choice(len(families), p=family_p)]
            piece = _mutated(rng, fam, rng.uniform(0.005, 0.15))
            if rng.random() < 0.5:
                piece = _COMPLEMENT[piece[::-1]]
            start = int(rng.integers(0, n - len(piece)))
            seq[start : start + len(piece)] = piece
            covered += len(piece)
        # Microsatellites: (CA)n, (GATA)n and the like.
        for _ in range(max(1, n // 500_000)):
            unit = _random_bases(rng, int(rng.integers(1, 7)))
            run_ = np.tile(unit, int(rng.integers(50, 800)))
            start = int(rng.integers(0, n - len(run_)))
            seq[start : start + len(run_)] = run_
        # Segmental duplications: an exact copy of a 5-30 kbp stretch elsewhere.
        for _ in range(2):
            size = int(min(rng.integers(5_000, 30_000), n // 4))
            src, dst = (int(x) for x in rng.integers(0, n - size, 2))
            seq[dst : dst + size] = seq[src : src + size].copy()
        # Gaps: N runs at both ends, one in the middle, and a few short ones.
        seq[: int(rng.integers(1_000, 10_000))] = ord("N")
        seq[n - int(rng.integers(1_000, 10_000)) :] = ord("N")
        mid = n // 2 + int(rng.integers(-n // 10, n // 10))
        seq[mid : mid + int(rng.integers(5_000, 50_000))] = ord("N")
        for _ in range(3):
            at = int(rng.integers(0, n - 100))
            seq[at : at + int(rng.integers(1, 100))] = ord("N")
        chromosomes.append((f"chr{c}", seq))
    return chromosomes


def write_fasta(path: Path, chromosomes: list[tuple[str, np.ndarray]], width: int = 60) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        for name, seq in chromosomes:
            f.write(f">{name} synthetic, {len(seq):,} bp\n".encode())
            full = len(seq) // width * width
            rows = seq[:full].reshape(-1, width)
            f.write(np.hstack([rows, np.full((len(rows), 1), ord("\n"), np.uint8)]).tobytes())
            if full < len(seq):
                f.write(seq[full:].tobytes() + b"\n")
    tmp.replace(path)


def genome_file(data_dir: Path, mbp: float, seed: int) -> Path:
    """The cached genome of `mbp` million bases for `seed`, generated on first use."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / f"genome-{mbp:g}mbp-seed{seed}.fa"
    if not path.exists():
        t0 = time.perf_counter()
        progress(f"generating {path} ({mbp:g} Mbp)")
        write_fasta(path, make_genome(np.random.default_rng(seed), int(mbp * 1_000_000)))
        progress(f"  generated in {time.perf_counter() - t0:.1f} s")
    return path


# -- memory -----------------------------------------------------------------------------------


class PeakRss:
    """Polls the process trees of `roots` (pid -> role) every `interval` s in a thread and
    keeps each process's largest resident set; `peak()` is the largest of them, with its role."""

    def __init__(self, roots: dict[int, str], interval: float = 0.1) -> None:
        self.roots = roots
        self.interval = interval
        self.peaks: dict[int, tuple[str, int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        for pid, role in self.roots.items():
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                root = psutil.Process(pid)
                procs = [(root, role)]
                if role != "client":  # the fog's processes are the client's children too
                    procs += [(p, f"{role}'s worker") for p in root.children(recursive=True)]
                for proc, name in procs:
                    with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                        rss = proc.memory_info().rss
                        if rss > self.peaks.get(proc.pid, ("", 0))[1]:
                            self.peaks[proc.pid] = (name, rss)

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)
        self._sample()

    def peak(self) -> tuple[str, float]:
        if not self.peaks:
            return "none", 0.0
        role, rss = max(self.peaks.values(), key=lambda x: x[1])
        return role, rss / MB


def fog_roots(fog: LocalFog) -> dict[int, str]:
    roots = {os.getpid(): "client"}
    if fog.coordinator is not None:
        roots[fog.coordinator.pid] = "coordinator"
    for i, proc in enumerate(fog.nodes):
        if proc is not None:
            roots[proc.pid] = f"node agent {i}"
    return roots


# -- the two systems under test ---------------------------------------------------------------


def run_measured(cmd: list[str], stdout: Path | None = None) -> tuple[float, float]:
    """Run `cmd` (its stdout to a file); (seconds, its peak RSS in MB from wait4's rusage)."""
    out = open(stdout, "wb") if stdout else subprocess.DEVNULL  # noqa: SIM115
    try:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    finally:
        if stdout:
            out.close()  # type: ignore[union-attr]
    if proc.returncode != 0:
        raise BenchmarkFailed(f"{' '.join(cmd)} exited with {proc.returncode}: {err[-2000:]}")
    return elapsed, usage.ru_maxrss / 1024  # ru_maxrss is in KiB on Linux


def jellyfish_run(
    fasta: Path, k: int, work: Path, hash_size: int
) -> tuple[float, float, float, Path]:
    """(count+dump seconds, sort seconds, peak RSS MB of count or dump, the sorted dump)."""
    jf, dump, sorted_dump = work / "x.jf", work / "dump.tsv", work / "jellyfish.tsv"
    for p in (jf, dump, sorted_dump):
        p.unlink(missing_ok=True)
    count_cmd = [JELLYFISH, "count", "-C", "-m", str(k), "-s", str(hash_size), "-t", "2"]
    count_s, count_rss = run_measured([*count_cmd, "-o", str(jf), str(fasta)])
    dump_s, dump_rss = run_measured([JELLYFISH, "dump", "-c", "-t", str(jf)], stdout=dump)
    jf.unlink()
    t0 = time.perf_counter()
    subprocess.run(
        ["sort", "--parallel=2", "-T", str(work), "-o", str(sorted_dump), str(dump)],
        env={**os.environ, "LC_ALL": "C"},
        check=True,
    )
    sort_s = time.perf_counter() - t0
    dump.unlink()
    return count_s + dump_s, sort_s, max(count_rss, dump_rss), sorted_dump


def fogwheel_run(
    fog: LocalFog, client: Client, fasta: Path, k: int, work: Path, split_mb: float
) -> tuple[float, dict[str, float], str, float, Path]:
    """(seconds, seconds per phase, role and MB of the largest process, the output file)."""
    out = work / "fogwheel.tsv"
    out.unlink(missing_ok=True)
    with PeakRss(fog_roots(fog)) as rss:
        t0 = time.perf_counter()
        try:
            result = run(client, KmerJob(k), [fasta], out, split_mb=split_mb)
        except Exception as e:
            raise BenchmarkFailed(f"fogwheel: the job failed: {e!r}") from e
        elapsed = time.perf_counter() - t0
    role, peak = rss.peak()
    progress(
        f"  fogwheel: {result.splits} splits, {result.partitions} partitions, "
        f"{result.output_bytes / MB:.0f} MB out"
    )
    return elapsed, dict(result.seconds), role, peak, out


def identical(a: Path, b: Path, chunk: int = 16 * MB) -> tuple[bool, str]:
    """Whether two files hold the same bytes; if not, where they first differ."""
    size_a, size_b = a.stat().st_size, b.stat().st_size
    with open(a, "rb") as fa, open(b, "rb") as fb:
        offset = 0
        while True:
            x, y = fa.read(chunk), fb.read(chunk)
            if x != y:
                i = next((j for j in range(min(len(x), len(y))) if x[j] != y[j]), None)
                i = min(len(x), len(y)) if i is None else i
                at = offset + i
                line_a = x[max(0, i - 40) : i + 40]
                line_b = y[max(0, i - 40) : i + 40]
                return False, (
                    f"sizes {size_a:,} and {size_b:,}; first difference at byte {at:,}: "
                    f"{line_a!r} vs {line_b!r}"
                )
            if not x:
                return True, ""
            offset += len(x)


# -- the benchmark ----------------------------------------------------------------------------


def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    fasta = genome_file(args.data_dir, args.mbp, args.seed)
    small = genome_file(args.data_dir, min(args.mbp, 1.0), args.seed + 1)
    bases = int(args.mbp * 1_000_000)
    hash_size = 1 << max(20, (2 * bases - 1).bit_length())  # room for every k-mer, no resizing
    replicas: str | int = int(args.replicas) if args.replicas.isdigit() else args.replicas
    progress("starting fogwheel: a coordinator and 2 node agents, 1 slot each")
    with (
        LocalFog(nodes=2, cores_per_node=1) as fog,
        Client(fog.url, fog.api_key, replicas=replicas) as client,
    ):
        # Warm-up on a small genome, checked like the real runs.
        warm_fog = fogwheel_run(fog, client, small, args.k, work, args.split_mb)
        warm_jf = jellyfish_run(small, args.k, work, 1 << 22)
        same, where = identical(warm_fog[4], warm_jf[3])
        if not same:
            raise BenchmarkFailed(f"warm-up outputs differ: {where}")
        progress(f"warm-up: fogwheel {warm_fog[0]:.2f} s, jellyfish {warm_jf[0]:.2f} s, identical")
        fog_s: list[float] = []
        jf_s: list[float] = []
        sort_s: list[float] = []
        phases: list[dict[str, float]] = []
        fog_rss: list[tuple[float, str]] = []
        jf_rss: list[float] = []
        order = ["fogwheel", "jellyfish"]
        for r in range(args.runs):
            fog_out = jf_out = None
            for system in order:
                if system == "fogwheel":
                    seconds, phase, role, peak, fog_out = fogwheel_run(
                        fog, client, fasta, args.k, work, args.split_mb
                    )
                    fog_s.append(seconds)
                    phases.append(phase)
                    fog_rss.append((peak, role))
                    shown = ", ".join(f"{p} {s:.2f}" for p, s in phase.items())
                    progress(
                        f"run {r + 1}/{args.runs} fogwheel: {seconds:.2f} s ({shown}); "
                        f"largest process {role} {peak:.0f} MB"
                    )
                else:
                    seconds, sorting, peak, jf_out = jellyfish_run(fasta, args.k, work, hash_size)
                    jf_s.append(seconds)
                    sort_s.append(sorting)
                    jf_rss.append(peak)
                    progress(
                        f"run {r + 1}/{args.runs} jellyfish: {seconds:.2f} s count+dump, "
                        f"sort {sorting:.2f} s; peak {peak:.0f} MB"
                    )
            assert fog_out is not None and jf_out is not None
            same, where = identical(fog_out, jf_out)
            if not same:
                raise BenchmarkFailed(f"run {r + 1}: the outputs differ: {where}")
            progress(f"run {r + 1}/{args.runs}: outputs identical ({fog_out.stat().st_size:,} B)")
            fog_out.unlink()
            jf_out.unlink()
            order.reverse()
    fog_med = statistics.median(fog_s)
    jf_med = statistics.median(jf_s)
    peak_rss, peak_role = max(fog_rss)
    return {
        "fogwheel_s": round(fog_med, 2),
        "jellyfish_s": round(jf_med, 2),
        "ratio": round(fog_med / jf_med, 3),
        "mbp": args.mbp,
        "k": args.k,
        "identical": True,
        "phases": {p: round(statistics.median(ph[p] for ph in phases), 2) for p in phases[0]},
        "fogwheel_peak_rss_mb": round(peak_rss, 1),
        "jellyfish_peak_rss_mb": round(max(jf_rss), 1),
        "sort_s": round(statistics.median(sort_s), 2),
        "runs": args.runs,
        "fogwheel_peak_rss_process": peak_role,
        "replicas": replicas,
        "fogwheel_runs": [round(x, 2) for x in fog_s],
        "jellyfish_runs": [round(x, 2) for x in jf_s],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mbp", type=float, default=50, help="genome size, million bases (50)")
    parser.add_argument("--k", type=int, default=21, help="k-mer length (21)")
    parser.add_argument("--runs", type=int, default=3, help="runs of each system (3)")
    # Not the library's 16 MB: a 16 Mbp split of this genome needs ~1.15 GB in its map task,
    # past KmerJob.memory_mb (1024), and fails with "memory limit of 1024 MB exceeded".
    parser.add_argument("--split-mb", type=float, default=8, help="fogwheel split size (8)")
    parser.add_argument(
        "--replicas", default="adaptive", help="the fogwheel client's checking (adaptive)"
    )
    parser.add_argument("--seed", type=int, default=1, help="of the generated genome (1)")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="genome cache")
    args = parser.parse_args(argv)
    if not Path(JELLYFISH).exists():
        progress(f"BENCHMARK FAILED: no jellyfish at {JELLYFISH}")
        return 1
    work = Path(tempfile.mkdtemp(prefix="fogwheel-bench-kmer-"))
    try:
        figures = measure(args, work)
    except (BenchmarkFailed, subprocess.CalledProcessError) as e:
        progress(f"BENCHMARK FAILED: {e}")
        return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
    progress(
        f"k={figures['k']}, {figures['mbp']:g} Mbp: fogwheel {figures['fogwheel_s']} s, "
        f"jellyfish {figures['jellyfish_s']} s (+ sort {figures['sort_s']} s), "
        f"ratio {figures['ratio']}; phases {figures['phases']}; peak RSS fogwheel "
        f"{figures['fogwheel_peak_rss_mb']} MB ({figures['fogwheel_peak_rss_process']}), "
        f"jellyfish {figures['jellyfish_peak_rss_mb']} MB"
    )
    print(json.dumps(figures), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
