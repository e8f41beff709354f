"""Fleet load: thousands of simulated devices against real coordinator processes.

Each simulated device speaks the real node protocol over HTTP: it joins with a join token
(`POST /v1/nodes/join`), then syncs (`POST /v1/nodes/me/sync`) with its results, renewals and
how many tasks it wants, and waits as the coordinator tells it (`SyncOut.next_sync_s`; the
agent's idle interval, 0.5 s, when a coordinator says nothing). A lease is "run" by waiting a
short random delay and reporting ok, so only the coordinator's side of the round trip is
measured. Meanwhile an SDK-like submitter keeps no-op `command` jobs queued through the real
API (`POST /v1/jobs` with a customer key). The coordinators are real processes started here:
one on SQLite, one on PostgreSQL, three on one PostgreSQL database (devices spread over the
three URLs); every run gets a fresh database.

    python bench/fleet.py                           # 10,000 devices, the three setups
    python bench/fleet.py --quick                   # 300 devices, a few seconds each
    python bench/fleet.py --devices 2000 --setups sqlite --seconds 30

The devices share a bounded pool of keep-alive connections per coordinator URL (`--conns`,
256) instead of holding one socket each: the figures are the coordinator's, and 10,000
sockets would only measure the kernel's and the generator's bookkeeping. The file-descriptor
limit is raised anyway. Progress goes to stderr; the last line of stdout is one JSON object:
`devices`, `syncs_per_s`, `p50_ms`, `p99_ms`, `errors`, `tasks_per_s` (the one-process
SQLite setup's figures) and `pg3_vs_pg1` (three PostgreSQL processes' tasks/s over one's),
with each setup's figures under `setups`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import resource
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil

from fogwheel.core import nodestate

PG_URL = os.environ.get("FOGWHEEL_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
TASK_S = (0.05, 0.25)  # how long a simulated device "runs" a no-op task
SYNC_TIMEOUT_S = 30.0  # a sync that takes longer counts as an error
KEEP_ALIVE_S = 4.0  # an idle connection is not reused after this (the server's limit is 5 s)


def progress(message: str) -> None:
    """Status for the person watching; stderr, so that stdout ends with the JSON line."""
    print(message, file=sys.stderr, flush=True)


# -- a small HTTP/1.1 client over a bounded pool of keep-alive connections -------------------


class HttpError(Exception):
    """The connection failed or the answer was not HTTP."""


class Pool:
    """At most `size` keep-alive connections to one coordinator, shared by every device.

    Hand-written on asyncio streams because httpx costs the generator more CPU per request
    than the coordinator spends on an idle sync, and both share this machine's two cores."""

    def __init__(self, url: str, size: int) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self._slots = asyncio.Semaphore(size)
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []

    async def request(
        self,
        method: str,
        path: str,
        token: str | None = None,
        body: Any = None,
        text: bool = False,
    ) -> tuple[int, Any]:
        """(status, decoded JSON body or None; the body as text with `text`)."""
        data = b"" if body is None else json.dumps(body, separators=(",", ":")).encode()
        head = [f"{method} {path} HTTP/1.1", f"host: {self.host}:{self.port}"]
        if token:
            head.append(f"authorization: Bearer {token}")
        if body is not None:
            head.append("content-type: application/json")
        head.append(f"content-length: {len(data)}")
        raw = ("\r\n".join(head) + "\r\n\r\n").encode() + data
        async with self._slots:
            for attempt in range(2):
                conn = self._idle_conn() if attempt == 0 else None
                reused = conn is not None
                if conn is None:
                    conn = await self._connect()
                try:
                    status, payload, keep = await self._exchange(conn, raw)
                except (OSError, asyncio.IncompleteReadError, HttpError, ValueError) as e:
                    conn[1].close()
                    if reused:  # a keep-alive connection the server closed: once, afresh
                        continue
                    raise HttpError(f"{type(e).__name__}: {e}") from None
                if keep:
                    self._idle.append((*conn, time.monotonic()))
                else:
                    conn[1].close()
                if text:
                    return status, payload.decode("utf-8", "replace")
                return status, (json.loads(payload) if payload else None)
        raise AssertionError("unreachable")

    def _idle_conn(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """The most recently used idle connection, unless the server may have closed it
        (uvicorn closes keep-alive connections idle for 5 s: those are dropped here)."""
        while self._idle:
            reader, writer, used = self._idle.pop()
            if time.monotonic() - used < KEEP_ALIVE_S:
                return reader, writer
            writer.close()
        return None

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            return await asyncio.open_connection(self.host, self.port)
        except OSError as e:
            raise HttpError(f"connect: {e}") from None

    async def _exchange(
        self, conn: tuple[asyncio.StreamReader, asyncio.StreamWriter], raw: bytes
    ) -> tuple[int, bytes, bool]:
        reader, writer = conn
        writer.write(raw)
        await writer.drain()
        line = await reader.readline()
        if not line.startswith(b"HTTP/1."):
            raise HttpError(f"not an HTTP answer: {line[:40]!r}")
        status = int(line.split()[1])
        length = None
        chunked = False
        keep = True
        while True:
            h = await reader.readline()
            if h in (b"\r\n", b"\n", b""):
                break
            name, _, value = h.decode("latin-1").partition(":")
            name = name.strip().lower()
            value = value.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "transfer-encoding" and "chunked" in value:
                chunked = True
            elif name == "connection" and value == "close":
                keep = False
        if chunked:
            parts = []
            while True:
                size = int((await reader.readline()).split(b";")[0], 16)
                if size == 0:
                    await reader.readline()
                    break
                parts.append(await reader.readexactly(size))
                await reader.readline()
            return status, b"".join(parts), keep
        if length is None:
            return status, await reader.read(), False
        return status, await reader.readexactly(length), keep

    def close(self) -> None:
        for _, w, _ in self._idle:
            w.close()
        self._idle.clear()


# -- the simulated device -----------------------------------------------------------------


@dataclass
class Stats:
    """What the devices saw; only syncs that end inside the measured window count."""

    window: tuple[float, float] = (0.0, float("inf"))
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)
    tasks_done: int = 0
    leased: int = 0
    lost: int = 0
    next_sync: list[float] = field(default_factory=list)
    pace: list[float] = field(default_factory=list)  # pace_s told to busy devices

    def inside(self, t: float) -> bool:
        return self.window[0] <= t < self.window[1]

    def error(self, kind: str, t: float) -> None:
        if self.inside(t):
            self.errors += 1
            self.error_kinds[kind] = self.error_kinds.get(kind, 0) + 1


class Device:
    """One simulated node: the agent's own state machine (core/nodestate.py) over HTTP.

    The machine decides what each sync carries and when it goes out (results batched for
    50 ms, renewals every third of the lease, an idle node after `next_sync_s` or its 0.5 s
    poll); this shell only carries out its instructions. A `Run` is a no-op task that ends
    after a short random delay with an ok report. Signatures are not checked (every lease is
    passed in as signed): the figures are the coordinator's, and checking costs the
    generator, not it."""

    def __init__(self, pool: Pool, name: str, rng: random.Random) -> None:
        self.pool = pool
        self.name = name
        self.rng = rng
        self.credential = ""
        self.state = nodestate.NodeState(nodestate.Settings(slots=1))

    async def join(self, token: str) -> None:
        body = {"token": token, "name": self.name, "cores": 1, "memory_mb": 512, "disk_mb": 8000}
        status, out = await self.pool.request("POST", "/v1/nodes/join", body=body)
        if status != 201:
            raise RuntimeError(f"join answered {status}: {out}")
        self.credential = out["credential"]
        settings = nodestate.Settings(slots=1, lease_seconds=float(out["lease_seconds"]))
        self.state = nodestate.NodeState(settings)

    async def run(self, start_at: float, stats: Stats, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        await _sleep(stop, start_at - loop.time())
        running: dict[int, tuple[float, dict[str, Any]]] = {}  # task id -> (ends at, report)
        events: list[nodestate.Event] = []
        while not stop.is_set():
            now = loop.time()
            for tid, (at, report) in list(running.items()):
                if at <= now:
                    del running[tid]
                    events.append(nodestate.TaskFinished(tid, now, report))
            wake = math.inf
            instructions = self.state.handle(*events, nodestate.Tick(now))
            events = []
            for ins in instructions:
                if isinstance(ins, nodestate.Run):
                    took = self.rng.uniform(*TASK_S)
                    lease = ins.lease
                    report = {
                        "task_id": lease["task_id"],
                        "attempt": lease["attempt"],
                        "ok": True,
                        "wall_s": round(took, 3),
                    }
                    running[lease["task_id"]] = (now + took, report)
                elif isinstance(ins, nodestate.Kill):
                    running.pop(ins.task_id, None)
                    events.append(nodestate.TaskFinished(ins.task_id, now, None))
                elif isinstance(ins, nodestate.Sync):
                    events.append(await self._sync(ins, stats))
                elif isinstance(ins, nodestate.SleepUntil):
                    wake = ins.t
                elif isinstance(ins, nodestate.Exit):
                    if ins.fatal:
                        stats.error("exit", loop.time())
                    return
            if events:
                continue
            wake = min([wake, *(at for at, _ in running.values())])
            await _sleep(stop, min(wake, now + 60.0) - loop.time())

    async def _sync(self, ins: nodestate.Sync, stats: Stats) -> nodestate.Event:
        loop = asyncio.get_running_loop()
        path = "/v1/nodes/me/sync?leaving=true" if ins.leaving else "/v1/nodes/me/sync"
        t0 = loop.time()
        try:
            status, out = await asyncio.wait_for(
                self.pool.request("POST", path, self.credential, ins.body), SYNC_TIMEOUT_S
            )
        except (TimeoutError, HttpError) as e:
            stats.error(type(e).__name__, loop.time())
            return nodestate.SyncFailed(loop.time(), f"{type(e).__name__}: {e}")
        t1 = loop.time()
        if status != 200:
            stats.error(f"http {status}", t1)
            return nodestate.SyncFailed(t1, f"http {status}", status)
        if stats.inside(t1):
            stats.latencies.append(t1 - t0)
            stats.tasks_done += len(out["acked"])
            stats.leased += len(out["tasks"])
            stats.lost += len(out["lost"])
            if out.get("next_sync_s") is not None and not out["tasks"] and not ins.body["renew"]:
                stats.next_sync.append(out["next_sync_s"])
            if out["tasks"] or ins.body["renew"]:
                stats.pace.append(float(out.get("pace_s") or 0.0))
        signed = [True] * len(out["tasks"])
        return nodestate.SyncAnswered.from_json(out, signed, t1, wall=time.time())


async def _sleep(stop: asyncio.Event, seconds: float) -> None:
    """Sleep, or return early when the run stops."""
    if seconds > 0 and not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)


# -- the customer: keeps no-op work queued -------------------------------------------------


async def submitter(
    pool: Pool,
    api_key: str,
    queued: int,
    batch: int,
    stop: asyncio.Event,
    log: list[str],
    submitted: list[int],
) -> None:
    """Submit `command` jobs of `batch` no-op tasks whenever fewer than `queued` are open;
    `submitted[0]` counts the tasks submitted."""
    jobs: dict[int, int] = {}  # job id -> tasks not finished
    while not stop.is_set():
        try:
            if jobs:
                status, out = await asyncio.wait_for(
                    pool.request("GET", "/v1/jobs?limit=100", api_key), SYNC_TIMEOUT_S
                )
                if status == 200:
                    for j in out["jobs"]:
                        if j["id"] in jobs:
                            jobs[j["id"]] = j["total"] - j["finished"]
                            if j["state"] != "running":
                                jobs.pop(j["id"])
            while sum(jobs.values()) < queued and not stop.is_set():
                body = {
                    "name": "fleet-noop",
                    "kind": "command",
                    "tasks": [{"command": ["true"]} for _ in range(batch)],
                    "replicas": 1,
                    "limits": {"wall_s": 60},
                }
                status, out = await asyncio.wait_for(
                    pool.request("POST", "/v1/jobs", api_key, body), SYNC_TIMEOUT_S
                )
                if status not in (200, 201):
                    log.append(f"submit answered {status}: {str(out)[:200]}")
                    break
                jobs[out["id"]] = batch
                submitted[0] += batch
        except (HttpError, TimeoutError) as e:
            log.append(f"submitter: {e}")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.5)


# -- the coordinators ----------------------------------------------------------------------


@contextlib.contextmanager
def scratch_database(base: str) -> Iterator[str]:
    """A fresh PostgreSQL database for one run, dropped afterwards."""
    import psycopg

    name = "fwfleet_" + secrets.token_hex(6)
    raw = base.replace("+psycopg", "")
    with psycopg.connect(raw, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    try:
        yield base.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(raw, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE {name} WITH (FORCE)")


class Coordinators:
    """`n` coordinator processes on one database and one data dir, on free loopback ports."""

    def __init__(self, workdir: Path, n: int, db: str | None, env: dict[str, str]) -> None:
        self.dir = workdir
        self.n = n
        self.db = db
        self.env = env
        self.procs: list[subprocess.Popen[bytes]] = []
        self.urls: list[str] = []

    def start(self) -> None:
        for i in range(self.n):  # one at a time: the first creates the schema and the key
            ready = self.dir / f"ready-{i}.json"
            cmd = [
                sys.executable,
                "-m",
                "fogwheel",
                "coordinator",
                "--data-dir",
                str(self.dir / "coordinator"),
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--lease-seconds",
                "15",
                "--ready-file",
                str(ready),
                "--quiet",
            ]
            env = {**os.environ, **self.env, "PYTHONUNBUFFERED": "1"}
            if self.db:
                env["FOGWHEEL_DB"] = self.db
            with open(self.dir / f"coordinator-{i}.log", "ab") as log:
                proc = subprocess.Popen(
                    cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
                )
            self.procs.append(proc)
            deadline = time.monotonic() + 60
            while not ready.exists():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"coordinator {i} did not start: {self.log(i)[-2000:]}")
                time.sleep(0.05)
            url = json.loads(ready.read_text())["url"]
            while True:  # the ready file is written just before uvicorn listens
                try:
                    with socket.create_connection(_address(url), timeout=1):
                        break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(
                            f"coordinator {i} does not listen: {self.log(i)}"
                        ) from None
                    time.sleep(0.05)
            self.urls.append(url)

    def log(self, i: int) -> str:
        return (self.dir / f"coordinator-{i}.log").read_text(errors="replace")

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def _address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 80


class Usage:
    """CPU seconds and peak RSS of the coordinator processes over the measured window."""

    def __init__(self, pids: list[int]) -> None:
        self.procs = [psutil.Process(p) for p in pids]
        self.cpu0 = 0.0
        self.rss_mb = 0.0

    def cpu(self) -> float:
        return sum(p.cpu_times().user + p.cpu_times().system for p in self.procs)

    def sample_rss(self) -> None:
        self.rss_mb = max(self.rss_mb, max(p.memory_info().rss for p in self.procs) / 2**20)


def database_cpu() -> float:
    """CPU seconds of this machine's PostgreSQL server processes so far (0 without one):
    with the coordinators and the generator, where the two cores went."""
    total = 0.0
    for proc in psutil.process_iter(["name"]):
        if (proc.info.get("name") or "").startswith("postgres"):
            with contextlib.suppress(psutil.Error):
                t = proc.cpu_times()
                total += t.user + t.system
    return total


def machine_busy() -> float:
    """CPU seconds every process on this machine has used (all cores), so far."""
    t = psutil.cpu_times()
    return t.user + t.nice + t.system + t.irq + t.softirq + getattr(t, "steal", 0.0)


# A sync's stages inside the coordinator (coordinator/metrics.py), each reported as the
# bucket bound under which 99 % of the window's observations fell.
STAGES = {
    "fogwheel_sync_queue_seconds": "server_queue_p99_ms_at_most",
    "fogwheel_store_lock_wait_seconds": "server_lock_wait_p99_ms_at_most",
    "fogwheel_store_transaction_seconds": "server_tx_p99_ms_at_most",
}
SCRAPE_LEAD_S = 5.0  # the window's first counters are read this long before it opens


async def pace_factors(
    pools: list[Pool], admin: str
) -> tuple[list[float | None], dict[str, Any], dict[float, float]]:
    """Each coordinator's sync pace factor (core/pacing.py Pacer) from its /metrics, and its
    garbage collector's pauses over the run (coordinator/gcpause.py), summed over processes."""
    found: list[float | None] = []
    gc: dict[str, Any] = {
        "gc_passes": 0,
        "gc_full_passes": 0,
        "gc_pause_ms": 0.0,
        "gc_passes_over_25ms": 0,
        "gc_pause_ms_by_generation": [0.0, 0.0, 0.0],
    }
    # The coordinators' own view of a sync (arrival to last byte out, every status), as
    # cumulative counts per bucket bound: where the latency is spent, server or client side;
    # and its stages (coordinator/metrics.py): the wait for a worker thread, the wait for the
    # write lock, the write transaction itself.
    sync_buckets: dict[float, float] = defaultdict(float)
    stage_buckets: dict[str, dict[float, float]] = {s: defaultdict(float) for s in STAGES}
    for pool in pools:
        try:
            status, text = await pool.request("GET", "/metrics", admin, text=True)
        except (HttpError, TimeoutError):
            found.append(None)
            continue
        if status != 200:
            found.append(None)
            continue
        value = None
        for line in text.splitlines():
            name, _, rest = line.partition(" ")
            if line.startswith("fogwheel_sync_pace_factor "):
                value = float(rest)
            elif name.startswith("fogwheel_gc_pause_seconds_count"):
                gc["gc_passes"] += int(float(rest))
                if 'generation="2"' in name:
                    gc["gc_full_passes"] += int(float(rest))
            elif name.startswith("fogwheel_gc_pause_seconds_sum"):
                gc["gc_pause_ms"] += 1000 * float(rest)
                generation = int(name.partition('generation="')[2][:1] or 2)
                gc["gc_pause_ms_by_generation"][generation] += round(1000 * float(rest), 1)
            elif name.startswith("fogwheel_http_request_duration_seconds_bucket") and (
                'route="/v1/nodes/me/sync"' in name and 'method="POST"' in name
            ):
                bound = name.partition('le="')[2].partition('"')[0]
                sync_buckets[math.inf if bound == "+Inf" else float(bound)] += float(rest)
            elif name.endswith("}") and name.partition("_bucket{")[0] in STAGES:
                bound = name.partition('le="')[2].partition('"')[0]
                stage = stage_buckets[name.partition("_bucket{")[0]]
                stage[math.inf if bound == "+Inf" else float(bound)] += float(rest)
            elif name.startswith("fogwheel_gc_pause_seconds_bucket") and 'le="0.025"' in name:
                gc["gc_passes_over_25ms"] -= int(float(rest))
            elif name.startswith("fogwheel_gc_pause_seconds_bucket") and 'le="+Inf"' in name:
                gc["gc_passes_over_25ms"] += int(float(rest))
        found.append(value)
    gc["gc_pause_ms"] = round(gc["gc_pause_ms"], 1)
    gc["stages"] = {s: dict(b) for s, b in stage_buckets.items()}
    return found, gc, dict(sync_buckets)


def window_figures(
    before: tuple[Any, dict[str, Any], dict[float, float]],
    after: tuple[Any, dict[str, Any], dict[float, float]],
) -> dict[str, Any]:
    """The collector's pauses and the coordinators' own sync p99 over the measured window:
    the counters at its end less those read SCRAPE_LEAD_S before it opened."""
    gc0, gc1 = before[1], after[1]
    out: dict[str, Any] = {
        k: round(gc1[k] - gc0[k], 1) if isinstance(gc1[k], float) else gc1[k] - gc0[k]
        for k in ("gc_passes", "gc_full_passes", "gc_pause_ms", "gc_passes_over_25ms")
    }
    out["gc_pause_ms_by_generation"] = [
        round(b - a, 1)
        for a, b in zip(
            gc0["gc_pause_ms_by_generation"], gc1["gc_pause_ms_by_generation"], strict=True
        )
    ]
    # the bucket bound below which 99 % of the window's syncs finished, by the coordinators
    out["server_sync_p99_ms_at_most"] = _p99_bound(before[2], after[2])
    for stage, key in STAGES.items():
        out[key] = _p99_bound(before[1]["stages"][stage], after[1]["stages"][stage])
    return out


def _p99_bound(before: dict[float, float], after: dict[float, float]) -> float | None:
    """The bucket bound, ms, under which 99 % of a histogram's window observations fell."""
    counts = {b: n - before.get(b, 0.0) for b, n in after.items()}
    total = counts.get(math.inf, 0.0)
    return next(
        (
            round(1000 * b, 1) if b != math.inf else None
            for b in sorted(counts)
            if total and counts[b] >= 0.99 * total
        ),
        None,
    )


# -- one setup ----------------------------------------------------------------------------


async def drive(
    urls: list[str],
    secrets_: dict[str, str],
    args: argparse.Namespace,
    usage: Usage,
) -> dict[str, Any]:
    pools = [Pool(u, args.conns) for u in urls]
    admin, api_key = secrets_["FOGWHEEL_ADMIN_KEY"], secrets_["FOGWHEEL_API_KEY"]
    # A token of the operator's that admits the whole fleet at once (the default flag token
    # refills at 10 joins a second).
    body = {"max_devices": args.devices, "rate_per_hour": 1_000_000}
    status, tok = await pools[0].request("POST", "/v1/tokens", admin, body)
    if status != 201:
        raise RuntimeError(f"token: {status} {tok}")
    rng = random.Random(args.seed)
    devices = [
        Device(pools[i % len(pools)], f"sim-{i}", random.Random(rng.random()))
        for i in range(args.devices)
    ]
    t0 = time.perf_counter()
    gate = asyncio.Semaphore(32)

    async def join(d: Device) -> None:
        async with gate:
            for attempt in range(5):  # a join that a loaded coordinator dropped is tried again
                try:
                    return await d.join(tok["token"])
                except HttpError:
                    if attempt == 4:
                        raise
                    await asyncio.sleep(0.5 * 2**attempt)

    await asyncio.gather(*(join(d) for d in devices))
    progress(f"  {args.devices} devices joined in {time.perf_counter() - t0:.1f} s")
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    stats = Stats()
    start = loop.time()
    runs = [
        asyncio.create_task(d.run(start + rng.uniform(0, args.ramp), stats, stop)) for d in devices
    ]
    log: list[str] = []
    submitted_box = [0]
    customer = asyncio.create_task(
        submitter(pools[0], api_key, args.queued, args.batch, stop, log, submitted_box)
    )
    measure_from = start + args.ramp + args.warmup
    stats.window = (measure_from, measure_from + args.seconds)
    # The window's counters are read a few seconds before it opens: a scrape of /metrics
    # computes the fleet-wide figures (a quarter of a second at 10,000 devices), which would
    # otherwise stall the coordinator inside the window it measures.
    await asyncio.sleep(max(0.0, measure_from - SCRAPE_LEAD_S - loop.time()))
    before = await pace_factors(pools, admin)
    await asyncio.sleep(max(0.0, measure_from - loop.time()))
    cpu0 = usage.cpu()
    own0 = time.process_time()
    db0, busy0 = database_cpu(), machine_busy()
    w0 = loop.time()
    spies = (
        [
            subprocess.Popen(
                [
                    "py-spy",
                    "record",
                    "-p",
                    str(pr.pid),
                    "-f",
                    "raw",
                    "-r",
                    "200",
                    "-o",
                    f"{args.profile}-{i}.txt",
                    "-d",
                    str(int(args.seconds)),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for i, pr in enumerate(usage.procs)
        ]
        if args.profile
        else []
    )
    while loop.time() < stats.window[1]:
        usage.sample_rss()
        await asyncio.sleep(min(1.0, max(0.01, stats.window[1] - loop.time())))
    cpu = usage.cpu() - cpu0
    wall = loop.time() - w0
    own = time.process_time() - own0
    db_cpu, busy = database_cpu() - db0, machine_busy() - busy0
    after = await pace_factors(pools, admin)
    factors, gc_figures = after[0], window_figures(before, after)
    for spy in spies:
        spy.wait()
    stop.set()
    for t in runs:  # a device still waits for its sync at most SYNC_TIMEOUT_S; no longer
        t.cancel()
    await asyncio.gather(*runs, return_exceptions=True)
    customer.cancel()
    await asyncio.gather(customer, return_exceptions=True)
    submitted = submitted_box[0]
    for p in pools:
        p.close()
    lat = sorted(stats.latencies)

    def pct(q: float) -> float | None:
        return round(1000 * lat[min(len(lat) - 1, int(q * len(lat)))], 1) if lat else None

    return {
        "devices": args.devices,
        "syncs_per_s": round(len(lat) / wall, 1),
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "errors": stats.errors,
        "error_kinds": stats.error_kinds,
        "tasks_per_s": round(stats.tasks_done / wall, 1),
        "leased_per_s": round(stats.leased / wall, 1),
        "lost": stats.lost,
        "idle_next_sync_s": round(statistics.median(stats.next_sync), 2)
        if stats.next_sync
        else None,
        "busy_pace_s": round(statistics.median(stats.pace), 2) if stats.pace else None,
        "coordinator_cpu_pct": round(100 * cpu / wall, 1),
        "coordinator_rss_mb": round(usage.rss_mb, 1),
        "generator_cpu_pct": round(100 * own / wall, 1),
        "database_cpu_pct": round(100 * db_cpu / wall, 1),
        "machine_busy_pct": round(100 * busy / wall, 1),  # of one core: 200 is both cores
        "pace_factor": factors,
        **gc_figures,
        "submitted": submitted,
        "submit_log": log[:5],
    }


def run_setup(name: str, args: argparse.Namespace) -> dict[str, Any]:
    n, on_pg = {"sqlite": (1, False), "pg1": (1, True), "pg3": (3, True)}[name]
    workdir = Path(tempfile.mkdtemp(prefix=f"fogwheel-fleet-{name}-"))
    env = {
        "FOGWHEEL_JOIN_TOKEN": "fwj_" + secrets.token_hex(16),
        "FOGWHEEL_API_KEY": "fwc_" + secrets.token_hex(16),
        "FOGWHEEL_ADMIN_KEY": "fwa_" + secrets.token_hex(16),
    }
    if args.sync_budget:
        env["FOGWHEEL_SYNC_BUDGET"] = str(args.sync_budget)  # per process (the set paces by all)
    if args.gone_after:
        env["FOGWHEEL_GONE_AFTER"] = str(args.gone_after)
    with contextlib.ExitStack() as stack:
        db = stack.enter_context(scratch_database(args.pg)) if on_pg else None
        coords = Coordinators(workdir, n, db, env)
        stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        stack.callback(coords.stop)
        coords.start()
        progress(f"{name}: {n} coordinator(s) at {', '.join(coords.urls)}")
        usage = Usage([p.pid for p in coords.procs])
        try:
            out = asyncio.run(drive(coords.urls, env, args, usage))
        except Exception:
            for i in range(n):  # what the coordinators said, before their directory goes
                text = coords.log(i)
                at = text.rfind("Traceback")
                if at >= 0:
                    progress(f"coordinator {i}'s last traceback:\n{text[at : at + 4000]}")
            raise
        tracebacks = sum(coords.log(i).count("Traceback") for i in range(n))
        out["coordinator_tracebacks"] = tracebacks
        out["setup"] = name
        return out


def raise_fd_limit() -> None:
    """Room for the pools' sockets and the joins' bursts, up to the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def table(rows: list[dict[str, Any]]) -> str:
    cols = [
        ("setup", "setup"),
        ("devices", "devices"),
        ("syncs_per_s", "syncs/s"),
        ("p50_ms", "p50 ms"),
        ("p99_ms", "p99 ms"),
        ("errors", "errors"),
        ("tasks_per_s", "tasks/s"),
        ("idle_next_sync_s", "idle next s"),
        ("busy_pace_s", "busy pace s"),
        ("coordinator_cpu_pct", "coord CPU %"),
        ("coordinator_rss_mb", "coord RSS MB"),
    ]
    lines = [" | ".join(h for _, h in cols), " | ".join("---" for _ in cols)]
    for r in rows:
        lines.append(" | ".join(str(r.get(k)) for k, _ in cols))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--devices", type=int, default=10_000)
    p.add_argument("--setups", default="sqlite,pg1,pg3", help="comma-separated: sqlite,pg1,pg3")
    p.add_argument("--seconds", type=float, default=60.0, help="measured window per setup")
    p.add_argument("--ramp", type=float, default=15.0, help="devices start spread over this")
    p.add_argument("--warmup", type=float, default=10.0, help="seconds after the ramp, unmeasured")
    p.add_argument("--queued", type=int, default=1000, help="no-op tasks kept open")
    p.add_argument("--batch", type=int, default=500, help="tasks per submitted job")
    p.add_argument("--conns", type=int, default=256, help="connections per coordinator URL")
    p.add_argument(
        "--sync-budget", type=float, default=0.0, help="FOGWHEEL_SYNC_BUDGET per process"
    )
    p.add_argument(
        "--gone-after", type=float, default=0.0, help="coordinator --gone-after (0: its default)"
    )
    p.add_argument("--pg", default=PG_URL, help="PostgreSQL server (a database is made per run)")
    p.add_argument("--seed", type=int, default=12)
    p.add_argument("--profile", default="", help="py-spy each coordinator into PREFIX-N.txt")
    p.add_argument("--quick", action="store_true", help="a small smoke run")
    args = p.parse_args(argv)
    if args.quick:
        args.devices = min(args.devices, 300)
        args.seconds, args.ramp, args.warmup = 5.0, 2.0, 2.0
        args.queued, args.batch = 200, 100
    raise_fd_limit()
    # SIGTERM unwinds like Ctrl-C: the coordinators stop and the scratch databases are dropped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    rows = []
    for name in [s.strip() for s in args.setups.split(",") if s.strip()]:
        progress(f"-- {name}: {args.devices} devices, {args.seconds:g} s measured")
        rows.append(run_setup(name, args))
        progress(json.dumps(rows[-1]))
    print(table(rows))
    by = {r["setup"]: r for r in rows}
    head = by.get("sqlite") or rows[0]
    pg1, pg3 = by.get("pg1"), by.get("pg3")
    ratio = (
        round(pg3["tasks_per_s"] / pg1["tasks_per_s"], 2)
        if pg1 and pg3 and pg1["tasks_per_s"]
        else None
    )
    keys = ("devices", "syncs_per_s", "p50_ms", "p99_ms", "errors", "tasks_per_s")
    print(json.dumps({**{k: head[k] for k in keys}, "pg3_vs_pg1": ratio, "setups": by}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
