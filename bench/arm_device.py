"""The 512 MB ARM box, proven: a real node agent on an emulated arm64 device (issue 16 item 4).

The device is an arm64 Debian root made with `debootstrap --arch=arm64` (bookworm, minbase,
with python3), whose binaries the host runs through Debian's qemu-user-static: binfmt_misc
hands every aarch64 ELF to `qemu-aarch64` (registered with the F flag, so it works inside the
chroot). fogwheel's dependencies go in as aarch64 wheels (`pip download --platform
manylinux2014_aarch64 --only-binary=:all:`, the host's versions; zfec has no aarch64 wheel
and the node never imports it) and this checkout's `src/fogwheel` is copied in. The root is
built once and cached in --cache-dir (default ~/.cache/fogwheel-arm64); the source is copied
afresh every run.

The node agent runs in that root (`chroot`, its own mount namespace with /proc, /sys and /dev)
inside a memory cgroup of --memory-mb (512: cgroup v2 `memory.max` and `memory.swap.max` 0, or
v1 `memory.limit_in_bytes`), joined to a coordinator on the host over loopback, with --cores
slots (1). It runs, one after the other:

- the demo's job: `fogwheel.demo.count_primes` over --demo-tasks ranges of --span numbers,
  checked against a sieve; tasks/s is compared with the same job on an x86 node of one slot on
  the host (the host's Python, no emulation), run right after;
- a k-mer split: `KmerJob(k)` through `mapreduce.run` over a generated genome of --kmer-mbp
  million bases (bench/kmer.py's generator), byte-compared with a local `count_file`;
- a DiLoCo round: the real `Trainer` (a tiny model, one worker, one round) submits its round
  to the fog; each of its tasks asks for 1536 MB (importing torch maps ~600 MB), so placement
  must refuse it on the 512 MB device and say why; the coordinator's sentence is reported.

Measured: the agent's resident set (the qemu process that runs it: the emulator's own memory
and translated code are in it) when idle after joining and at its peak; each workload's peak
of the device's cgroup (`memory.peak`, or v1 `memory.max_usage_in_bytes`, reset before each
workload: the agent, its workers and their page cache together, what the kernel holds against
the 512 MB); OOM kills in the device's cgroup and every group below it (`memory.events`, v1
`memory.oom_control`); tasks/s against the x86 node.

Needs root (debootstrap, chroot, mounts, cgroups) and `apt-get install debootstrap
qemu-user-static`. The first run takes 10-20 minutes (debootstrap through emulation); later
runs a few minutes.

    python bench/arm_device.py                      # builds or reuses the root, then runs
    python bench/arm_device.py --demo-tasks 40 --kmer-mbp 0.2 --no-x86

Progress goes to stderr; the last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fogwheel.client import Client, Wait
from fogwheel.core.waiting import NO_MEMORY
from fogwheel.localfog import LocalFog

MB = 1 << 20
HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src" / "fogwheel"
SUITE = "bookworm"  # its python3 is 3.11, fogwheel's oldest: the wheels are cp311
DEBOOTSTRAP_INCLUDE = "python3,ca-certificates,procps"
BINFMT_CONF = Path("/usr/lib/binfmt.d/qemu-aarch64.conf")
BINFMT_DIR = Path("/proc/sys/fs/binfmt_misc")
PLATFORMS = ("manylinux2014_aarch64", "manylinux_2_17_aarch64", "manylinux_2_28_aarch64")
NO_AARCH64_WHEEL = {"zfec"}  # the CDN's erasure coding: the client's, never the node's
NODE_DIR = "/var/lib/fogwheel"

console = Console(stderr=True)


class BenchmarkFailed(Exception):
    """A step could not be done, or a result was wrong: the figures would mean nothing."""


# -- building the device ------------------------------------------------------------------------


def _run(cmd: list[str], what: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        raise BenchmarkFailed(f"{what} failed ({' '.join(cmd[:4])}…): {r.stderr[-1500:]}")
    return r


def check_host() -> None:
    if os.geteuid() != 0:
        raise BenchmarkFailed("run as root: debootstrap, chroot, mounts and cgroups need it")
    missing = [t for t in ("debootstrap", "unshare", "chroot") if shutil.which(t) is None]
    if missing or not BINFMT_CONF.exists():
        raise BenchmarkFailed(
            f"missing {', '.join(missing) or BINFMT_CONF}: apt-get install debootstrap "
            "qemu-user-static"
        )


def register_binfmt() -> str:
    """qemu-aarch64 in binfmt_misc (mounted and registered here if it is not); what it says."""
    entry = BINFMT_DIR / "qemu-aarch64"
    if not (BINFMT_DIR / "register").exists():
        _run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT_DIR)], "mounting binfmt_misc")
    if not entry.exists():
        line = next(ln for ln in BINFMT_CONF.read_text().splitlines() if ln.startswith(":"))
        try:
            (BINFMT_DIR / "register").write_text(line)
        except OSError as e:
            raise BenchmarkFailed(
                f"cannot register qemu-aarch64 with binfmt_misc ({e}): this machine does not "
                "let root add binary formats, and the root's programs cannot run without it"
            ) from None
    text = entry.read_text()
    if "enabled" not in text.splitlines()[0]:
        raise BenchmarkFailed(f"{entry} is disabled: echo 1 > {entry}")
    flags = re.search(r"^flags: (\w*)", text, re.M)
    return f"binfmt_misc qemu-aarch64 (flags {flags.group(1) if flags else '?'})"


def debian_mirror() -> str:
    """The Debian mirror apt uses here (deb822 or one-line sources), for debootstrap."""
    for path in sorted(Path("/etc/apt").glob("sources.list*")) + sorted(
        Path("/etc/apt/sources.list.d").glob("*.sources")
    ):
        if not path.is_file():
            continue
        text = path.read_text()
        m = re.search(r"^URIs:\s*(\S+/debian)/?\s*$", text, re.M) or re.search(
            r"^deb\s+(?:\[[^]]*\]\s+)?(\S+/debian)/?\s", text, re.M
        )
        if m:
            return m.group(1)
    return "http://deb.debian.org/debian"


def debootstrap(cache: Path, progress: Progress) -> Path:
    """The arm64 root, made once: `root.partial` becomes `root` only when debootstrap ends well."""
    root = cache / "root"
    if (root / "usr/bin/python3").exists():
        return root
    partial = cache / "root.partial"
    shutil.rmtree(partial, ignore_errors=True)
    mirror = debian_mirror()
    task = progress.add_task(f"debootstrap --arch=arm64 {SUITE} from {mirror}", total=None)
    log_path = cache / "debootstrap.log"
    cmd = ["nice", "-n", "10", "debootstrap", "--arch=arm64", "--variant=minbase"]
    cmd += [f"--include={DEBOOTSTRAP_INCLUDE}", SUITE, str(partial), mirror]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            if line.startswith("I: "):
                progress.update(task, description=f"debootstrap: {line[3:].strip()[:60]}")
    if proc.wait() != 0:
        raise BenchmarkFailed(f"debootstrap failed (exit {proc.returncode}): see {log_path}")
    partial.rename(root)
    progress.update(task, description="debootstrap: arm64 root made", total=1, completed=1)
    return root


def node_requirements() -> list[str]:
    """fogwheel's own dependencies, pinned to the versions installed on this host."""
    reqs = []
    for spec in importlib.metadata.requires("fogwheel") or []:
        if "extra ==" in spec:
            continue
        name = re.split(r"[\s<>=!~;\[]", spec, maxsplit=1)[0]
        if name.lower() in NO_AARCH64_WHEEL:
            continue
        reqs.append(f"{name}=={importlib.metadata.version(name)}")
    return sorted(reqs)


def root_python(root: Path) -> str:
    r = _run(
        ["chroot", str(root), "python3", "-c", "import sys; print('%d%d' % sys.version_info[:2])"],
        "running the root's python3 (through qemu)",
    )
    return r.stdout.strip()


def install_wheels(cache: Path, root: Path, progress: Progress) -> list[str]:
    """aarch64 wheels of the node's dependencies into the root's /opt/fogwheel/site (once per
    set of pins), and a .pth that puts it and the source on the root's python3's path."""
    reqs = node_requirements()
    pyver = root_python(root)
    stamp = root / "opt/fogwheel/site/.requirements"
    want = "\n".join([pyver, *reqs])
    pth = root / f"usr/local/lib/python{pyver[0]}.{pyver[1:]}/dist-packages/fogwheel.pth"
    pth.parent.mkdir(parents=True, exist_ok=True)
    pth.write_text("/opt/fogwheel/site\n/opt/fogwheel/src\n")
    if stamp.exists() and stamp.read_text() == want:
        return reqs
    task = progress.add_task(f"aarch64 wheels for cp{pyver}: {len(reqs)} packages", total=2)
    common = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    tags = [f"--platform={p}" for p in PLATFORMS]
    tags += [f"--python-version={pyver}", "--implementation=cp", f"--abi=cp{pyver}"]
    tags += ["--only-binary=:all:"]
    wheels = cache / "wheels"
    _run([*common, "download", "-d", str(wheels), *tags, *reqs], "pip download (aarch64)")
    progress.update(task, advance=1)
    site = root / "opt/fogwheel/site"
    shutil.rmtree(site, ignore_errors=True)
    _run(
        [
            *common,
            "install",
            "--no-index",
            "--find-links",
            str(wheels),
            "--target",
            str(site),
            *tags,
            *reqs,
        ],
        "pip install --target (aarch64)",
    )
    stamp.write_text(want)
    progress.update(task, advance=1)
    return reqs


def copy_source(root: Path) -> None:
    dest = root / "opt/fogwheel/src/fogwheel"
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(SRC, dest, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.rmtree(root / NODE_DIR.lstrip("/"), ignore_errors=True)  # a fresh node each run


TORCH_SITE = "/opt/torch-site"  # in the root: torch for aarch64, when --torch-site put it there


def install_torch(root: Path, site: Path | None) -> str | None:
    """Put a prepared aarch64 torch (`pip install --target SITE --platform
    manylinux_2_28_aarch64 --only-binary=:all: torch filelock typing-extensions sympy mpmath
    networkx jinja2 markupsafe fsspec`) in the root, importable by every python3 there;
    without `site`, take any torch out. Returns its version, or None."""
    pth = root / "usr/local/lib/python3.11/dist-packages/torch-site.pth"
    dest = root / TORCH_SITE.lstrip("/")
    if site is None:
        pth.unlink(missing_ok=True)
        return None
    if not (site / "torch" / "version.py").exists():
        raise BenchmarkFailed(f"no torch in {site}: pip install --target it first (see --help)")
    if (
        not dest.exists()
        or (site / "torch/version.py").read_bytes() != (dest / "torch/version.py").read_bytes()
    ):
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(site, dest, symlinks=True)
    pth.write_text(TORCH_SITE + "\n")
    version = re.search(r"__version__ = '([^']+)'", (dest / "torch/version.py").read_text())
    return version.group(1) if version else "?"


# -- the device's cgroup -------------------------------------------------------------------------


class DeviceGroup:
    """A memory cgroup of `limit_mb` for the device: v2 where memory is on the unified tree,
    else the v1 memory hierarchy. Peaks reset per workload; OOM kills summed over subgroups
    (v1 counts each group's own; the agent's slot groups come and go, so they are polled)."""

    def __init__(self, limit_mb: int) -> None:
        own = Path("/proc/self/cgroup").read_text()
        v1 = re.search(r"^\d+:(?:[\w,]*,)?memory(?:,[\w,]*)?:(\S+)$", own, re.M)
        v2 = re.search(r"^0::(\S+)$", own, re.M)
        name = f"fogwheel-arm64-{os.getpid()}"
        unified = Path("/sys/fs/cgroup")
        if v1 is None and v2 is not None and (unified / "cgroup.controllers").exists():
            self.version = 2
            parent = unified / v2.group(1).lstrip("/")
            if "memory" not in (parent / "cgroup.subtree_control").read_text().split():
                (parent / "cgroup.subtree_control").write_text("+memory")
            self.path = parent / name
            self.path.mkdir()
            (self.path / "memory.max").write_text(str(limit_mb * MB))
            with contextlib.suppress(OSError):
                (self.path / "memory.swap.max").write_text("0")
        elif v1 is not None:
            self.version = 1
            self.path = Path("/sys/fs/cgroup/memory") / v1.group(1).lstrip("/") / name
            self.path.mkdir()
            (self.path / "memory.limit_in_bytes").write_text(str(limit_mb * MB))
            with contextlib.suppress(OSError):  # absent without swap accounting
                (self.path / "memory.memsw.limit_in_bytes").write_text(str(limit_mb * MB))
        else:
            raise BenchmarkFailed("no memory cgroup here (neither v2 nor v1): cannot bound it")
        self.limit_mb = limit_mb
        self._oom_seen: dict[str, int] = {}
        self._peak_fd: int | None = None
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll, daemon=True)
        self._poller.start()

    def describe(self) -> str:
        what = "memory.max" if self.version == 2 else "memory.limit_in_bytes"
        return f"cgroup v{self.version} {self.path} ({what} = {self.limit_mb} MB)"

    def join_script(self) -> str:
        return f'echo $$ > "{self.path}/cgroup.procs"'

    def reset_peak(self) -> None:
        if self.version == 1:
            (self.path / "memory.max_usage_in_bytes").write_text("0")
            return
        if self._peak_fd is not None:
            os.close(self._peak_fd)
        self._peak_fd = os.open(self.path / "memory.peak", os.O_RDWR)
        with contextlib.suppress(OSError):  # Linux >= 6.12: a write resets this fd's peak
            os.write(self._peak_fd, b"reset\n")

    def peak_mb(self) -> float:
        if self.version == 1:
            return int((self.path / "memory.max_usage_in_bytes").read_text()) / MB
        assert self._peak_fd is not None
        return int(os.pread(self._peak_fd, 64, 0)) / MB

    def _kills(self, group: Path) -> int:
        name = "memory.events" if self.version == 2 else "memory.oom_control"
        with contextlib.suppress(OSError):
            m = re.search(r"^oom_kill (\d+)", (group / name).read_text(), re.M)
            return int(m.group(1)) if m else 0
        return 0

    def _sample(self) -> None:
        groups = [self.path] if self.version == 2 else [self.path, *self.path.rglob("*/")]
        for g in groups:  # v2's memory.events is hierarchical: the device's group says all
            if g.is_dir():
                key = str(g)
                self._oom_seen[key] = max(self._oom_seen.get(key, 0), self._kills(g))

    def _poll(self) -> None:
        while not self._stop.wait(0.2):
            self._sample()

    def oom_kills(self) -> int:
        self._sample()
        return sum(self._oom_seen.values())

    def remove(self) -> None:
        self._stop.set()
        self._poller.join()
        if self._peak_fd is not None:
            os.close(self._peak_fd)
        for _ in range(100):
            try:
                for g in sorted(self.path.rglob("*/"), key=lambda p: -len(p.parts)):
                    g.rmdir()
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.1)
        console.print(f"[yellow]warning:[/] could not remove {self.path}")


# -- the device's node agent ---------------------------------------------------------------------


@contextlib.contextmanager
def arm_node(
    root: Path, fog: LocalFog, group: DeviceGroup, cores: int, offer_mb: int | None = None
) -> Iterator[psutil.Process]:
    """The node agent in the root, inside the device's cgroup, joined to `fog`."""
    cmd = ["python3", "-m", "fogwheel", "node", "--coordinator", fog.url, "--cores", str(cores)]
    cmd += ["--memory", str(offer_mb)] if offer_mb else []
    cmd += ["--data-dir", NODE_DIR, "--name", "arm64-512mb", "--no-serve", "--unsafe-no-sandbox"]
    script = " && ".join(
        [
            group.join_script(),  # first: everything below starts inside the group
            f'mount -t proc proc "{root}/proc"',
            f'mount --rbind /sys "{root}/sys"',
            f'mount --rbind /dev "{root}/dev"',
            f'exec chroot "{root}" env HOME=/root PYTHONUNBUFFERED=1 "$@"',
        ]
    )
    log_path = fog.dir / "arm-node.log"
    env = {**os.environ, "FOGWHEEL_JOIN_TOKEN": fog.join_string}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", *cmd],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
    fog.nodes.append(proc)
    try:
        fog.wait_for_nodes(1, timeout=300)
        yield psutil.Process(proc.pid)  # unshare, sh and chroot exec in place: the agent's pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


class RssWatch:
    """The agent's resident set, sampled every 0.2 s in a thread: the largest seen."""

    def __init__(self, proc: psutil.Process) -> None:
        self.proc = proc
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(0.2):
            with contextlib.suppress(psutil.Error):
                self.peak = max(self.peak, self.proc.memory_info().rss)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        with contextlib.suppress(OSError, ValueError):  # the kernel's own high-water mark
            status = Path(f"/proc/{self.proc.pid}/status").read_text()
            self.peak = max(self.peak, int(re.search(r"VmHWM:\s+(\d+)", status)[1]) * 1024)  # type: ignore[index]
        return self.peak / MB


# -- the workloads -------------------------------------------------------------------------------


def demo_job(client: Client, tasks: int, span: int) -> float:
    """The demo's job (count primes below tasks x span, one task a range): tasks/s."""
    from fogwheel.demo import count_primes, sieve_count

    calls = [((i * span, (i + 1) * span), {}) for i in range(tasks)]
    t0 = time.perf_counter()
    total = sum(f.result(timeout=1800) for f in client.submit_many(count_primes, calls))
    elapsed = time.perf_counter() - t0
    if total != sieve_count(tasks * span):
        raise BenchmarkFailed(
            f"the demo's count is {total}, the sieve says {sieve_count(tasks * span)}"
        )
    return tasks / elapsed


def count_primes_s(python: list[str], lo: int = 1_000_000, n: int = 20_000) -> float:
    """Seconds one interpreter takes for one demo task's work (count_primes over `n` numbers
    from `lo`), best of three: the CPU alone, without the fog's round trips."""
    code = (
        "import time\nfrom fogwheel.demo import count_primes\nbest = 1e9\n"
        f"for _ in range(3):\n    t = time.perf_counter(); count_primes({lo}, {lo + n})\n"
        "    best = min(best, time.perf_counter() - t)\nprint(best)"
    )
    return float(_run([*python, "-c", code], "timing count_primes").stdout.strip())


def kmer_split(client: Client, work: Path, mbp: float, k: int) -> dict[str, Any]:
    """KmerJob over a generated genome through mapreduce.run; exact against count_file."""
    from fogwheel.mapreduce import JobFailed, run
    from fogwheel.workloads.kmer import KmerJob, count_file, write_counts

    spec = importlib.util.spec_from_file_location("bench_kmer", HERE / "kmer.py")
    assert spec is not None and spec.loader is not None
    kmer_bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(kmer_bench)
    fasta = kmer_bench.genome_file(work / "genome", mbp, seed=7)
    out = work / "kmer.tsv"
    t0 = time.perf_counter()
    try:
        run(client, KmerJob(k), [fasta], out, partitions=2, split_mb=max(0.25, mbp / 2))
    except JobFailed as e:  # a task killed for memory, say: a figure, not a crash
        return {"seconds": round(time.perf_counter() - t0, 1), "exact": False, "failed": str(e)}
    seconds = time.perf_counter() - t0
    expected = work / "kmer-local.tsv"
    with open(expected, "wb") as f:
        write_counts(count_file(fasta, k), f)
    if out.read_bytes() != expected.read_bytes():
        raise BenchmarkFailed(f"the k-mer counts differ from count_file's ({out}, {expected})")
    return {"seconds": round(seconds, 1), "bytes": out.stat().st_size, "exact": True}


def diloco_round(fog: LocalFog, work: Path, wait_s: float) -> dict[str, Any]:
    """One DiLoCo round of the real Trainer: placed on the device, or refused with a reason."""
    from fogwheel.workloads import diloco, transformer

    model = transformer.ModelConfig(context=32, d_model=32, n_layers=1, n_heads=2, d_ff=64)
    cfg = diloco.TrainConfig(
        model=model.to_dict(), workers=1, rounds=1, inner_steps=2, batch=2,
        audit_rate=0.0, gauntlet_windows=0, val_windows=4, round_timeout=wait_s,
    )  # fmt: skip
    said: list[Wait] = []
    told = threading.Event()

    def on_wait(job_id: int, wait: Wait | None) -> None:
        if wait is not None:
            said.append(wait)
            if wait.stuck:
                told.set()  # the fog as it is will never run it

    with Client(fog.url, fog.api_key, replicas=1, on_wait=on_wait) as client:
        trainer = diloco.Trainer.start(client, cfg, work / "diloco")
        outcome: dict[str, Any] = {}

        def one_round() -> None:
            try:
                outcome["record"] = trainer.round()
            except Exception as e:  # cancelled below: every worker of the round failed
                outcome["error"] = f"{type(e).__name__}: {e}"

        t = threading.Thread(target=one_round, daemon=True)
        t0 = time.perf_counter()
        t.start()
        deadline = time.monotonic() + wait_s
        refused = False
        while t.is_alive() and not refused and time.monotonic() < deadline:
            refused = told.wait(0.5)
        if refused:
            client.cancel(said[-1].job_id)  # the round's job: its workers fail, the round ends
        t.join(timeout=120)
    if refused:
        w = said[-1]
        return {"placed": False, "for_memory": w.reason == NO_MEMORY, "reason": w.reason,
                "sentence": w.sentence, "tasks": w.tasks}  # fmt: skip
    return {"placed": "record" in outcome, "error": outcome.get("error"),
            "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip


# -- the run -------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--cache-dir",
        type=Path,
        default=Path.home() / ".cache/fogwheel-arm64",
        help="where the arm64 root and its wheels are kept (default %(default)s)",
    )
    ap.add_argument(
        "--memory-mb", type=int, default=512, help="the device's memory cgroup, MB (%(default)s)"
    )
    ap.add_argument(
        "--cores", type=int, default=1, help="slots the device's node offers (%(default)s)"
    )
    ap.add_argument(
        "--demo-tasks", type=int, default=100, help="tasks of the demo's job (%(default)s)"
    )
    ap.add_argument(
        "--span", type=int, default=4000, help="numbers per demo task (%(default)s, the demo's)"
    )
    ap.add_argument(
        "--kmer-mbp", type=float, default=1.0, help="genome size, million bases (%(default)s)"
    )
    ap.add_argument("--k", type=int, default=21, help="k-mer length (default %(default)s)")
    ap.add_argument(
        "--diloco-wait",
        type=float,
        default=60.0,
        help="seconds to wait for the DiLoCo round to be placed or refused (%(default)s)",
    )
    ap.add_argument("--no-x86", action="store_true", help="skip the x86 reference node")
    ap.add_argument(
        "--torch-site",
        type=Path,
        help="a directory with torch for aarch64 and its pure deps (pip install --target DIR "
        "--platform manylinux_2_28_aarch64 --only-binary=:all: --python-version 3.11 "
        "torch==2.9.1 filelock typing-extensions sympy mpmath networkx jinja2 markupsafe "
        "fsspec): put in the root, so the device can run a DiLoCo round's worker",
    )
    ap.add_argument(
        "--offer-mb",
        type=int,
        help="the node's --memory: what it offers placement (default: its cgroup's limit). "
        "Above the device, placement takes tasks that declare more, and the node's own "
        "resident-memory gate still holds them to the device",
    )
    ap.add_argument(
        "--node-log", type=Path, help="keep the device's node log in this file (its memory waits)"
    )
    ap.add_argument("--rebuild", action="store_true", help="make the arm64 root afresh")
    args = ap.parse_args()  # fmt: skip

    try:
        figures = bench(args)
    except BenchmarkFailed as e:
        console.print(f"[bold red]failed:[/] {e}")
        sys.exit(1)
    print(json.dumps(figures))


def bench(args: argparse.Namespace) -> dict[str, Any]:
    check_host()
    cache: Path = args.cache_dir
    cache.mkdir(parents=True, exist_ok=True)
    if args.rebuild:
        shutil.rmtree(cache / "root", ignore_errors=True)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())  # fmt: skip
    with Progress(*columns, console=console) as progress:
        emulation = register_binfmt()
        root = debootstrap(cache, progress)
        reqs = install_wheels(cache, root, progress)
        copy_source(root)
        torch_version = install_torch(root, args.torch_site)
        qemu = _run(["/usr/bin/qemu-aarch64-static", "--version"], "qemu --version").stdout
        group = DeviceGroup(args.memory_mb)
        work = Path(tempfile.mkdtemp(prefix="fogwheel-arm-"))
        figures: dict[str, Any] = {"device": f"arm64 {SUITE}, {args.memory_mb} MB cgroup"}
        try:
            with LocalFog(0, workdir=work / "fog", sandbox=False) as fog:
                steps = progress.add_task("the 512 MB arm64 device", total=4)
                progress.update(steps, description="starting the node agent (aarch64, qemu)")
                t0 = time.perf_counter()
                with arm_node(root, fog, group, args.cores, args.offer_mb) as agent:
                    join_s = time.perf_counter() - t0
                    node = httpx.get(f"{fog.url}/v1/nodes", headers=fog.headers).json()["nodes"][0]
                    time.sleep(3.0)  # settled: its first syncs are done
                    idle_rss = agent.memory_info().rss / MB
                    watch = RssWatch(agent)
                    peaks: dict[str, float | None] = {}
                    progress.update(steps, advance=1, description="the demo's job on arm64")
                    with Client(fog.url, fog.api_key, replicas=1) as client:
                        group.reset_peak()
                        arm_tps = demo_job(client, args.demo_tasks, args.span)
                        peaks["demo"] = round(group.peak_mb(), 1)
                        progress.update(steps, advance=1, description="a k-mer split on arm64")
                        group.reset_peak()
                        kmer = kmer_split(client, work, args.kmer_mbp, args.k)
                        peaks["kmer"] = round(group.peak_mb(), 1)
                    progress.update(steps, advance=1, description="a DiLoCo round")
                    group.reset_peak()
                    diloco = diloco_round(fog, work, args.diloco_wait)
                    peaks["diloco"] = round(group.peak_mb(), 1) if diloco["placed"] else None
                    agent_peak = watch.stop()
                    progress.update(steps, advance=1, description="the arm64 device: done")
            oom = group.oom_kills()
            # slots that held a task back until the running ones left room (core/memfit.py)
            node_log = (work / "fog" / "arm-node.log").read_text(errors="replace")
            if args.node_log is not None:
                args.node_log.write_text(node_log)
            memory_waits = node_log.count("waits for memory")
            # workers kept warm between tasks that exited to make room (memfit.plan_start)
            worker_exits = node_log.count("exits to make room")
        finally:
            group.remove()
        x86_tps = x86_rss = None
        if not args.no_x86:
            task = progress.add_task("the demo's job on an x86 node of one core", total=None)
            with (
                LocalFog(
                    1,
                    cores_per_node=1,
                    workdir=work / "x86",
                    sandbox=False,
                    node_args=["--unsafe-no-sandbox"],
                ) as fog,  # as the arm64 node
                Client(fog.url, fog.api_key, replicas=1) as client,
            ):
                assert fog.nodes[0] is not None
                time.sleep(3.0)  # settled, as the arm64 agent was
                x86_rss = psutil.Process(fog.nodes[0].pid).memory_info().rss / MB
                x86_tps = demo_job(client, args.demo_tasks, args.span)
            progress.update(task, total=1, completed=1)
        task = progress.add_task("count_primes alone: aarch64 (qemu) and x86 python", total=2)
        cpu_arm = count_primes_s(["chroot", str(root), "python3"])
        progress.update(task, advance=1)
        cpu_x86 = count_primes_s([sys.executable])
        progress.update(task, advance=1)
    shutil.rmtree(work, ignore_errors=True)
    figures.update(
        emulation=f"{qemu.splitlines()[0]} via {emulation}",
        sandbox="none (qemu-user cannot emulate bubblewrap's namespace clone: --unsafe-no-sandbox)",
        wheels=len(reqs),
        join_s=round(join_s, 1),
        advertised_memory_mb=node["memory_mb"],
        node_platform=node.get("platform"),
        agent_rss_mb=round(idle_rss, 1),
        agent_peak_rss_mb=round(agent_peak, 1),
        peak_rss_mb=peaks,
        oom_kills=oom,
        memory_waits=memory_waits,
        worker_exits=worker_exits,
        cores=args.cores,
        torch=torch_version,
        demo={"tasks": args.demo_tasks, "span": args.span, "arm64_tasks_per_s": round(arm_tps, 2),
              "x86_tasks_per_s": None if x86_tps is None else round(x86_tps, 2)},
        kmer={"mbp": args.kmer_mbp, "k": args.k, **kmer},
        diloco=diloco,
        x86_agent_rss_mb=None if x86_rss is None else round(x86_rss, 1),
        count_primes_s={"arm64": round(cpu_arm, 3), "x86": round(cpu_x86, 3)},
        cpu_speed_vs_x86=round(cpu_x86 / cpu_arm, 3),
        tasks_per_s_vs_x86=None if x86_tps is None else round(arm_tps / x86_tps, 3),
    )  # fmt: skip
    table = Table(title=f"emulated arm64 device, {args.memory_mb} MB")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_row("advertised memory", f"{node['memory_mb']} MB")
    table.add_row("agent RSS idle / peak", f"{idle_rss:.1f} / {agent_peak:.1f} MB")
    for name, mb in peaks.items():
        table.add_row(f"device peak: {name}", "refused" if mb is None else f"{mb} MB")
    table.add_row("k-mer split", "exact" if kmer["exact"] else f"FAILED: {kmer['failed'][-60:]}")
    table.add_row("OOM kills", str(oom))
    table.add_row("tasks held back for memory", str(memory_waits))
    table.add_row("kept workers that exited for room", str(worker_exits))
    table.add_row("demo tasks/s arm64", f"{arm_tps:.2f}")
    if x86_tps is not None:
        table.add_row("demo tasks/s x86 (1 core)", f"{x86_tps:.2f}")
        table.add_row("x86 agent RSS idle", f"{x86_rss:.1f} MB")
    table.add_row("count_primes CPU arm64 / x86", f"{cpu_arm:.3f} / {cpu_x86:.3f} s")
    console.print(table)
    if diloco.get("sentence"):
        console.print(f"DiLoCo round refused: {diloco['sentence']}")
    elif not diloco["placed"]:
        console.print(f"DiLoCo round failed: {diloco.get('error')}")
    return figures


if __name__ == "__main__":
    main()
