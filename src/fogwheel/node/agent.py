"""The node agent: one outbound loop that reports, renews and leases, and a thread per slot.

Pull, never push: every request goes from the node to the coordinator, so a device behind
NAT needs no open port. One `sync` round trip carries finished results, lease renewals and a
request for more work. Unacknowledged results stay in memory and are sent again until the
coordinator acknowledges them, so a coordinator restart loses nothing the node finished.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import math
import os
import platform
import queue
import shutil
import signal
import ssl
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx

from fogwheel.node import cgroups
from fogwheel.node.faults import ENV as FAULT_ENV
from fogwheel.node.faults import Faults
from fogwheel.node.sandbox import NoSandbox, Sandbox, detect
from fogwheel.node.scratch import can_mount, private_mounts, unmount
from fogwheel.node.slots import Protections, Slot
from fogwheel.signing import fingerprint, parse_join_string, pin_matches, verify_lease

log = logging.getLogger("fogwheel.node")

INLINE_MAX = 64 * 1024  # as in fogwheel.protocol; not imported to keep pydantic out of the agent
PROBED_PROGRAMS = ("python3", "povray", "jellyfish", "bwrap")
TARGET_QUEUE_SECONDS = 0.5  # keep about this much work queued per slot
MAX_QUEUE_PER_SLOT = 64
REPORT_DELAY = 0.05  # hold a finished result at most this long to batch it with others
REPORT_BATCH = 64
SCRUB_EVERY_S = 600.0  # how often kept CDN shares are hashed again
NO_SANDBOX = (
    "no usable sandbox (bubblewrap): install it with `apt-get install bubblewrap`, "
    "or run with --unsafe-no-sandbox to run guest code unconfined"
)
UNSAFE_WARNING = (
    "UNSAFE: --unsafe-no-sandbox: guest code runs UNCONFINED as this user, with network "
    "access and every file this user can read (the node credential included)"
)
REFUSED_UNSIGNED = "refused: task spec signature does not verify"
_KEPT_LOCK = threading.Lock()  # kept state is trimmed by one slot at a time
SEEN_LEASES_MAX = 100_000  # (task, attempt) pairs remembered, so a replayed lease never runs


@dataclass
class NodeConfig:
    coordinator: str
    token: str | None = None  # the join string `TOKEN#sha256:PIN` (or a bare token: TOFU)
    ca_cert: Path | None = None  # CA file for an https coordinator (default: system store)
    max_clock_skew_s: float = 60.0  # a lease expired longer ago than this is refused
    cores: int | None = None
    memory_mb: int | None = None
    data_dir: Path = field(default_factory=lambda: Path.home() / ".fogwheel" / "node")
    name: str | None = None
    poll_s: float = 0.5
    capabilities: list[str] = field(default_factory=list)
    unsafe_no_sandbox: bool = False  # run guest code unconfined (no bubblewrap)
    cache_mb: int = 2048  # blobs kept for later tasks (inputs, outputs), least recent dropped
    serve: bool = True  # keep CDN shares and serve them (node/chunks.py)
    serve_host: str = "127.0.0.1"
    serve_port: int = 0
    advertise: str | None = None  # the chunk server's URL as others reach it (NAT, proxies)
    share_quota_mb: int = 1024
    uplink_mbit: float | None = None  # emulate a shaped uplink for the chunk server
    scratch_mb: int = 1024  # each slot's scratch (a tmpfs where the agent can mount one)
    keep_mb: int = 1024  # kept state (TaskIn.keep_out) for all jobs, least recent dropped
    keep_hours: float = 24.0  # kept state unused this long is removed


class FatalNodeError(Exception):
    """The agent cannot go on (credential refused and no join token, say)."""


class Agent:
    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.data_dir = config.data_dir
        self.slots_n = config.cores or os.cpu_count() or 1
        self._stop = threading.Event()
        self._abort = threading.Event()
        self._faults = Faults()
        if self._faults.active:
            log.warning("FAULT INJECTION: %s (%s)", self._faults.describe(), FAULT_ENV)
        self._stop_seen = False
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._held: dict[int, dict[str, Any]] = {}  # leased and not yet reported
        self._running: set[int] = set()
        self._running_on: dict[int, Slot] = {}  # task id -> the slot running it
        self._outbox: dict[int, dict[str, Any]] = {}  # finished, waiting for an acknowledgement
        self._outbox_since: float | None = None
        self._avg_wall = 0.1
        self._slots: list[Slot] = []
        self.node_id: str | None = None
        self.public_key = ""  # the coordinator's Ed25519 key: only specs it signed are run
        self.lease_seconds = 15.0
        self.http: httpx.Client | None = None
        self._tls: ssl.SSLContext | bool = True
        # every (task, attempt) leased to this process: a lease seen again is a replay
        self._seen_leases: OrderedDict[tuple[Any, Any], None] = OrderedDict()
        self._release_next: list[int] = []  # expired leases to hand back in the next sync
        self.sandbox: Sandbox | None = None  # chosen when the agent starts (choose_sandbox)
        self._warned_jobs: set[int] = set()
        self._cache_lock = threading.Lock()
        self._cache_bytes = 0
        self.shares: Any = None  # the CDN's ShareStore, when this node serves (node/chunks.py)
        self.chunks: Any = None  # its ChunkServer
        self._share_jobs: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._stored: list[str] = []  # shares fetched and kept, to confirm in the next sync
        self._share_pending: set[str] = set()
        self._bad_acc: list[str] = []  # shares that failed their hash check here
        self._refused_acc: list[str] = []  # shares that did not fit in the share quota
        self._served_acc: dict[str, int] = {}  # bytes served a content id, not yet reported
        self._sent_cdn: dict[str, Any] = {}
        self._url_sent = False
        self.serve_url = ""

    # -- joining ----------------------------------------------------------------------------

    def _identity_path(self) -> Path:
        return self.data_dir / "node.json"

    def join(self) -> None:
        """Load or make this node's identity, with the coordinator's key checked against the
        join string's pin before anything signed by it is trusted."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._tls = self._tls_context()
        secret, pin = self._join_secret()
        ident = self._load_identity()
        if ident is None:
            ident = self._join_with_token(secret, pin)
        elif not ident.get("public_key"):
            key = self._fetch_public_key()
            self._check_pin(key, pin, "/v1/coordinator/key")
            ident["public_key"] = key
            self._save_identity(ident)
            if pin is None:
                log.warning(
                    "node.json held no coordinator key: trusting %s on first use (from %s)",
                    fingerprint(key),
                    self.config.coordinator,
                )
        elif pin is not None and not pin_matches(ident["public_key"], pin):
            raise FatalNodeError(
                f"{self._identity_path()} trusts coordinator key "
                f"{fingerprint(ident['public_key'])}, not the key this join string pins: it "
                "was learnt from an impostor or belongs to another fog; delete the file and "
                "join again with the join string"
            )
        self.node_id = ident["node_id"]
        self.public_key = ident["public_key"]
        self.lease_seconds = ident.get("lease_seconds", 15.0)
        self.http = httpx.Client(
            base_url=self.config.coordinator,
            headers={"authorization": f"Bearer {ident['credential']}"},
            timeout=httpx.Timeout(30.0, connect=5.0),
            verify=self._tls,
        )

    def _tls_context(self) -> ssl.SSLContext:
        """How an https coordinator's certificate is checked: the system's CA store, or the
        one CA file the owner named with --ca-cert."""
        cafile = str(self.config.ca_cert) if self.config.ca_cert else None
        try:
            return ssl.create_default_context(cafile=cafile)
        except (OSError, ssl.SSLError) as e:
            raise FatalNodeError(f"cannot use --ca-cert {cafile}: {e}") from None

    def _join_secret(self) -> tuple[str | None, str | None]:
        """(token, pin) from the join string; the pin is never sent, only checked."""
        if not self.config.token:
            return None, None
        try:
            return parse_join_string(self.config.token)
        except ValueError as e:
            raise FatalNodeError(str(e)) from None

    def _check_pin(self, key: Any, pin: str | None, where: str) -> None:
        """Refuse a coordinator key that is not the pinned one; without a pin, say loudly
        that the key is trusted on first use."""
        if pin is None:
            log.warning(
                "TRUST ON FIRST USE: the join token pins no coordinator key, so key %s from %s "
                "(%s) is trusted unchecked, and anyone on the way could have given their own; "
                "join with the join string TOKEN#sha256:PIN that the coordinator printed",
                fingerprint(key) if isinstance(key, str) else "(not a key)",
                self.config.coordinator,
                where,
            )
            return
        if not pin_matches(key, pin):
            raise FatalNodeError(
                f"the coordinator at {self.config.coordinator} answered ({where}) with signing "
                f"key {fingerprint(key) if isinstance(key, str) else '(not a key)'}, not the "
                f"key the join string pins ({pin[:23]}…): something between this node and the "
                "coordinator may be impersonating it; nothing was run or saved; check the URL "
                "and the join string"
            )

    def _load_identity(self) -> dict[str, Any] | None:
        path = self._identity_path()
        if not path.exists():
            return None
        ident = json.loads(path.read_text())
        if ident.get("coordinator") != self.config.coordinator.rstrip("/"):
            return None
        return ident

    def _join_with_token(self, secret: str | None, pin: str | None) -> dict[str, Any]:
        if not secret:
            raise FatalNodeError(
                "this node has not joined the fog yet: pass --token JOIN_TOKEN "
                "(the operator's `fogwheel coordinator` printed it)"
            )
        body = {
            "token": secret,
            "name": self.config.name or platform.node() or "node",
            "cores": self.slots_n,
            "memory_mb": self.config.memory_mb or _memory_mb(),
            "disk_mb": shutil.disk_usage(self.data_dir).free // (1024 * 1024),
            "platform": platform.platform(),
            "capabilities": sorted(
                {p for p in PROBED_PROGRAMS if shutil.which(p)}
                | set(self.config.capabilities)
                | ({"sandbox"} if self.sandbox and self.sandbox.confined else set())
            ),
        }
        r = self._until_reachable("POST", "/v1/nodes/join", "the node could join", json=body)
        if r.status_code != 201:
            raise FatalNodeError(f"join refused: {_problem(r)}")
        joined = r.json()
        self._check_pin(joined.get("public_key"), pin, "its join answer")
        ident = {
            "coordinator": self.config.coordinator.rstrip("/"),
            "node_id": joined["node_id"],
            "credential": joined["credential"],
            "lease_seconds": joined["lease_seconds"],
            "public_key": joined["public_key"],
        }
        self._save_identity(ident)
        log.info(
            "joined as %s with %d slots; coordinator key %s",
            joined["node_id"],
            self.slots_n,
            fingerprint(joined["public_key"]),
        )
        return ident

    def _until_reachable(self, method: str, path: str, what: str, **kw: Any) -> httpx.Response:
        """One unauthenticated request, retried with back-off until the coordinator answers."""
        delay = 0.2
        while True:
            try:
                return httpx.request(
                    method, f"{self.config.coordinator}{path}", timeout=30, verify=self._tls, **kw
                )
            except httpx.TransportError as e:
                bad_cert = _certificate_refused(e)
                if bad_cert:
                    raise FatalNodeError(
                        f"the coordinator's TLS certificate does not verify ({bad_cert}): pass "
                        "--ca-cert FILE with the CA that signed it, or check the URL"
                    ) from None
                if self._stop.is_set():
                    raise FatalNodeError(f"stopped before {what}") from e
                log.warning("coordinator unreachable (%s); retrying in %.1f s", e, delay)
                self._stop.wait(delay)
                delay = min(delay * 2, 5.0)

    def _save_identity(self, ident: dict[str, Any]) -> None:
        path = self._identity_path()
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(ident, f)
        tmp.replace(path)

    def _fetch_public_key(self) -> str:
        """The coordinator's signing key, for a node that joined before specs were signed."""
        r = self._until_reachable("GET", "/v1/coordinator/key", "the coordinator's key arrived")
        if r.status_code != 200:
            raise FatalNodeError(f"cannot get the coordinator's signing key: {_problem(r)}")
        return str(r.json()["public_key"])

    # -- running ----------------------------------------------------------------------------

    def request_stop(self, *_: Any) -> None:
        """First signal: finish what is running, hand back the rest. Second: abort now."""
        if self._stop.is_set():
            self._abort.set()
        self._stop.set()
        self._wake.set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)

    def choose_sandbox(self) -> Sandbox:
        """bubblewrap when it works here; without it, guest work only on the owner's say-so."""
        if self.config.unsafe_no_sandbox:
            self.sandbox = NoSandbox()
            log.warning(UNSAFE_WARNING)
            return self.sandbox
        found = detect()
        if found is None:
            raise FatalNodeError(NO_SANDBOX)
        self.sandbox = found
        log.info("guest code runs under %s", found.describe())
        return found

    def run(self) -> None:
        self._private_mounts = threading.active_count() == 1 and private_mounts()
        sandbox = self.choose_sandbox()
        self.join()
        scratch = self.data_dir / "scratch"
        for stale in scratch.glob("*") if scratch.is_dir() else ():
            unmount(stale)  # a tmpfs a killed agent left mounted
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True)
        protections = self._protections(sandbox)
        self._trim_kept()
        (self.data_dir / "cache").mkdir(exist_ok=True)
        if self.config.serve:
            self._start_chunks()
        self._cache_bytes = sum(e.stat().st_size for e in os.scandir(self.data_dir / "cache"))
        threads = []
        for i in range(self.slots_n):
            guest = sandbox.for_slot(i, self.data_dir)
            slot = Slot(i, scratch, self.data_dir / "worker.log", guest, protections)
            self._slots.append(slot)
            t = threading.Thread(
                target=self._slot_loop, args=(slot,), name=f"slot-{i}", daemon=True
            )
            t.start()
            threads.append(t)
        try:
            self._loop()
        finally:
            self._share_jobs.put(None)
            if self.chunks is not None:
                self.chunks.stop()
            for _ in threads:
                self._queue.put(None)
            for slot in self._slots:
                slot.close()
            if self.http:
                self.http.close()
        log.info("node %s stopped", self.node_id)

    def _loop(self) -> None:
        backoff = 0.2
        unreachable_since: float | None = None
        while True:
            if self._abort.is_set():
                for slot in self._slots:
                    slot.stop()
            stopping = self._stop.is_set()
            with self._lock:
                results = list(self._outbox.values())
                renew = [t for t in self._held if t not in self._outbox]
                release = self._drain_queue() if stopping else []
                release += self._release_next
                self._release_next = []
                if self._abort.is_set():
                    release += [t for t in self._running if t not in self._outbox]
                # Results reported in this round trip no longer occupy the queue.
                active = len(self._held) - len(results)
            depth = self._queue_depth()
            want = 0 if stopping else max(0, depth - active)
            with self._lock:
                leaving = stopping and not (set(self._held) - set(release) - set(self._outbox))
            body = {
                "results": results,
                "renew": [t for t in renew if t not in release],
                "release": release,
                "want": want,
                "slots_free": max(0, self.slots_n - len(self._running)),
            }
            cdn_report = self._cdn_report()
            body.update(cdn_report)
            try:
                assert self.http is not None
                r = self.http.post("/v1/nodes/me/sync", params={"leaving": leaving}, json=body)
            except httpx.TransportError as e:
                if unreachable_since is None:
                    unreachable_since = time.monotonic()
                    log.warning(
                        "coordinator unreachable (%s); keeping %d results, retrying",
                        type(e).__name__,
                        len(results),
                    )
                if stopping and time.monotonic() - unreachable_since > self.lease_seconds:
                    log.warning("giving up on the coordinator while stopping")
                    return
                self._stop.wait(backoff) if not stopping else time.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            if r.status_code == 401:
                raise FatalNodeError(
                    "the coordinator no longer knows this node's credential: "
                    f"delete {self._identity_path()} and rejoin with --token"
                )
            if r.status_code >= 400:
                log.error("sync refused: %s", _problem(r))
                time.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            if unreachable_since is not None:
                log.info("coordinator reachable again")
            unreachable_since = None
            backoff = 0.2
            answer = r.json()
            got = self._absorb(answer, release)
            self._cdn_absorb(answer)
            if leaving:
                return
            self._wait_for_reason_to_sync(idle=want > 0 and got < want and not self._held)

    def _absorb(self, out: dict[str, Any], released: list[int]) -> int:
        # Checked before queueing, outside the lock (about 0.1 ms a lease): a spec is run only
        # if the coordinator signed exactly it.
        signed = [verify_lease(self.public_key, t, t.get("signature")) for t in out["tasks"]]
        now = time.time()
        with self._lock:
            for tid in out["acked"]:
                self._outbox.pop(tid, None)
                self._held.pop(tid, None)
            for rej in out["rejected"]:
                log.warning("result of task %s refused: %s", rej["task_id"], rej["reason"])
                self._outbox.pop(rej["task_id"], None)
                self._held.pop(rej["task_id"], None)
            for tid in released:
                self._held.pop(tid, None)
            for tid in out["lost"]:
                # The coordinator gave this task to someone else, or another copy of it won
                # (a backup): drop it, and stop it if it is running.
                lease = self._held.get(tid)
                if lease is not None and tid not in self._outbox:
                    lease["lost"] = True
                    slot = self._running_on.get(tid)
                    if slot is not None:
                        log.info("task %s is no longer ours: stopping it", tid)
                        slot.abort()
            if not self._outbox:
                self._outbox_since = None
            for lease, ok in zip(out["tasks"], signed, strict=True):
                if not ok:
                    self._refuse(lease)
                elif self._fresh(lease, now):
                    self._held[lease["task_id"]] = lease
                    self._queue.put(lease)
            self.lease_seconds = out.get("lease_seconds", self.lease_seconds)
        return len(out["tasks"])

    def _fresh(self, lease: dict[str, Any], now: float) -> bool:
        """A signed lease is run only once, and only while it is current.

        A proxy can keep a genuine, signed sync answer and send it again later: the signature
        still verifies. So a (task, attempt) this process has already received is dropped, and
        so is a lease whose signed `lease_expires` lies further in the past than the clock
        skew allowed (which also covers replays across a restart of this agent, when the
        memory is gone). An expired lease is handed back unless this node holds the task
        under another attempt; a replay is only logged. Called with the lock held.
        """
        tid, attempt = lease.get("task_id"), lease.get("attempt")
        seen = (tid, attempt)
        if seen in self._seen_leases:
            log.warning(
                "task %s attempt %s refused: this node already received that lease "
                "(replayed?); not running it again",
                tid,
                attempt,
            )
            return False
        self._seen_leases[seen] = None
        while len(self._seen_leases) > SEEN_LEASES_MAX:
            self._seen_leases.popitem(last=False)
        expires = lease.get("lease_expires")
        late = (
            now - expires
            if isinstance(expires, int | float) and not isinstance(expires, bool)
            else math.inf
        )
        if not late <= self.config.max_clock_skew_s:  # NaN and a missing expiry fail too
            log.warning(
                "task %s attempt %s refused: its lease expired %.0f s ago (allowed clock skew "
                "%g s; replayed, or this device's clock is wrong); handing it back",
                tid,
                attempt,
                late,
                self.config.max_clock_skew_s,
            )
            if type(tid) is int and tid not in self._held:
                self._release_next.append(tid)
            return False
        return True

    def _refuse(self, lease: dict[str, Any]) -> None:
        """Never run a spec the coordinator did not sign; report the attempt as failed.

        The report goes out like a finished task's, so the coordinator queues the task again
        and counts the failure against this node. Called with the lock held.
        """
        tid, attempt = lease.get("task_id"), lease.get("attempt")
        log.error(
            "task %s refused: its spec's signature does not verify against coordinator key %s "
            "(changed in transit?); not running it",
            tid,
            fingerprint(self.public_key) if self.public_key else "(none)",
        )
        if type(tid) is not int or type(attempt) is not int or attempt < 1 or tid in self._held:
            return  # nothing that could be reported without spoiling a genuine lease
        self._held[tid] = lease
        self._outbox[tid] = {
            "task_id": tid,
            "attempt": attempt,
            "ok": False,
            "error": {"kind": "crash", "message": REFUSED_UNSIGNED},
            "cpu_s": 0.0,
            "wall_s": 0.0,
        }
        if self._outbox_since is None:
            self._outbox_since = time.monotonic()

    def _drain_queue(self) -> list[int]:
        drained = []
        while True:
            try:
                lease = self._queue.get_nowait()
            except queue.Empty:
                return drained
            if lease is None:
                self._queue.put(None)
                return drained
            drained.append(lease["task_id"])

    def _queue_depth(self) -> int:
        per_slot = math.ceil(TARGET_QUEUE_SECONDS / max(self._avg_wall, 0.001))
        return self.slots_n * min(MAX_QUEUE_PER_SLOT, max(2, per_slot))

    def _wait_for_reason_to_sync(self, idle: bool) -> None:
        """Sleep until there is something worth a round trip: results, an empty queue, a renewal."""
        renew_by = time.monotonic() + self.lease_seconds / 3
        poll_by = time.monotonic() + (self.config.poll_s if idle else self.lease_seconds / 3)
        while True:
            if self._abort.is_set():
                return
            if self._stop.is_set() and not self._stop_seen:
                self._stop_seen = True  # one prompt round trip to hand back the queue
                return
            now = time.monotonic()
            with self._lock:
                n_out = len(self._outbox)
                since = self._outbox_since
                queued = self._queue.qsize()
                running = len(self._running)
            if n_out >= REPORT_BATCH or (since is not None and now - since >= REPORT_DELAY):
                return
            if not idle and n_out and queued < self._queue_depth() // 2:
                return  # running low: report and ask for more before the slots go dry
            if not idle and queued == 0 and running == 0:
                return
            if now >= min(renew_by, poll_by):
                return
            timeout = min(renew_by, poll_by) - now
            if since is not None:
                timeout = min(timeout, since + REPORT_DELAY - now)
            self._wake.wait(max(0.001, timeout))
            self._wake.clear()

    # -- slots ------------------------------------------------------------------------------

    def _slot_loop(self, slot: Slot) -> None:
        while True:
            lease = self._queue.get()
            if lease is None:
                return
            tid = lease["task_id"]
            if lease.get("lost"):
                with self._lock:
                    self._held.pop(tid, None)
                continue
            with self._lock:
                self._running.add(tid)
                self._running_on[tid] = slot
            try:
                report = self._execute(slot, lease)
                self._faults.slow_down(report.get("wall_s", 0.0), partial(lease.get, "lost"))
            except Exception as e:  # a bug or an unreachable blob: the task goes back
                log.exception("task %s could not run", tid)
                report = {
                    "ok": False,
                    "error": {"kind": "input", "message": f"{type(e).__name__}: {e}"},
                }
            if lease.get("lost"):  # stopped on purpose: nobody waits for this result
                with self._lock:
                    self._running.discard(tid)
                    self._running_on.pop(tid, None)
                    self._held.pop(tid, None)
                continue
            report.update(task_id=tid, attempt=lease["attempt"])
            report = self._faults.tamper(report)
            report.setdefault("cpu_s", 0.0)
            report.setdefault("wall_s", 0.0)
            self._avg_wall = 0.8 * self._avg_wall + 0.2 * report["wall_s"]
            with self._lock:
                self._running.discard(tid)
                self._running_on.pop(tid, None)
                self._outbox[tid] = report
                if self._outbox_since is None:
                    self._outbox_since = time.monotonic()
            self._wake.set()

    def _execute(self, slot: Slot, lease: dict[str, Any]) -> dict[str, Any]:
        limits = lease["limits"]
        if not slot.sandbox.confined and lease["job_id"] not in self._warned_jobs:
            self._warned_jobs.add(lease["job_id"])
            log.warning("job %s: %s", lease["job_id"], UNSAFE_WARNING)
        inputs = {name: self._blob_path(v) for name, v in lease["inputs"].items()}
        if lease["kind"] == "python":
            fn = lease["fn"]
            msg = {
                "fn_sha": fn["sha"],
                "fn_path": str(self._blob_path(fn)),
                "args": self._blob_bytes(lease["args"]) if lease["args"] else None,
                "limits": limits,
            }
            res = slot.run_python(
                lease["job_id"],
                msg,
                limits["wall_s"],
                inputs=inputs,
                outputs=lease["outputs"],
                keep=self.data_dir / "cache",
                state_in=self._state_dir(lease.get("keep_in")),
                state_out=self._state_dir(lease.get("keep_out")),
                tenant=str(lease.get("tenant") or ""),
            )
            if res.get("kept") is not None:
                self._trim_kept()
        else:
            res = slot.run_command(
                lease["task_id"],
                lease["command"],
                inputs,
                limits,
                outputs=lease["outputs"],
                keep=self.data_dir / "cache",
            )
        files: dict[str, Path] = res.pop("files", {})
        try:
            res["outputs"] = {name: self._value_file(p) for name, p in files.items()}
        finally:
            for p in files.values():
                p.unlink(missing_ok=True)
        return self._wire_result(res)

    def _wire_result(self, res: dict[str, Any]) -> dict[str, Any]:
        """Turn the slot's bytes into protocol Values (inline when small, uploaded when not)."""
        out = {k: v for k, v in res.items() if k in ("ok", "cpu_s", "wall_s", "outputs", "kept")}
        if res.get("value") is not None:
            out["value"] = self._value(res["value"])
        if res.get("error"):
            err = dict(res["error"])
            exc = err.pop("exc", None)
            if exc is not None and len(exc) <= INLINE_MAX:
                err["exc"] = _inline(exc)
            out["error"] = err
        return out

    def _value(self, data: bytes) -> dict[str, Any]:
        if len(data) <= INLINE_MAX:
            return _inline(data)
        sha = hashlib.sha256(data).hexdigest()
        assert self.http is not None
        self._retrying(lambda: self.http.put(f"/v1/blobs/{sha}", content=data))  # type: ignore[union-attr]
        return {"sha": sha, "size": len(data)}

    # -- the CDN: shares kept and served ------------------------------------------------------

    def _start_chunks(self) -> None:
        from fogwheel.node.chunks import ChunkServer, ShareStore

        self.shares = ShareStore(self.data_dir / "shares", self.config.share_quota_mb << 20)
        bps = self.config.uplink_mbit * 1e6 if self.config.uplink_mbit else None
        self.chunks = ChunkServer(
            self.shares,
            self.public_key or None,
            host=self.config.serve_host,
            port=self.config.serve_port,
            upload_limit_bps=bps,
        )
        url = self.chunks.start()
        self.serve_url = self.config.advertise or url
        self._stored.extend(self.shares.shas())  # confirm what survived a restart
        threading.Thread(target=self._share_loop, name="shares", daemon=True).start()
        log.info("serving CDN shares at %s", self.serve_url)

    def _cdn_report(self) -> dict[str, Any]:
        """What this sync tells of the CDN. Cleared only when the coordinator answers, so a
        failed round trip loses no confirmation and no served byte."""
        if self.shares is None or self.chunks is None:
            return {}
        if self.chunks.public_key_b64 != self.public_key:
            self.chunks.public_key_b64 = self.public_key
        if self.chunks.identity is None and self.http is not None and self.node_id:
            # the chunk server proves it is this node to the coordinator's probe (cdn/audit.py)
            cred = self.http.headers.get("authorization", "").removeprefix("Bearer ")
            self.chunks.identity = (self.node_id, hashlib.sha256(cred.encode()).hexdigest())
        with self._lock:
            for content_id, n in self.chunks.take_served().items():
                self._served_acc[content_id] = self._served_acc.get(content_id, 0) + n
            self._bad_acc.extend(self.shares.take_bad())
            report: dict[str, Any] = {}
            if not self._url_sent:
                report["serve_url"] = self.serve_url
            if self._stored:
                report["stored"] = list(self._stored)
            if self._bad_acc:
                report["bad"] = list(self._bad_acc)
            if self._refused_acc:
                report["refused"] = list(self._refused_acc)
            if self._served_acc:
                report["served"] = dict(self._served_acc)
            self._sent_cdn = report
        return report

    def _cdn_absorb(self, answer: dict[str, Any]) -> None:
        if self.shares is None:
            return
        with self._lock:
            sent, self._sent_cdn = self._sent_cdn, {}
            if "serve_url" in sent:
                self._url_sent = True
            done = set(sent.get("stored", []))
            self._stored = [s for s in self._stored if s not in done]
            gone = set(sent.get("bad", []))
            self._bad_acc = [s for s in self._bad_acc if s not in gone]
            told = set(sent.get("refused", []))
            self._refused_acc = [s for s in self._refused_acc if s not in told]
            for content_id, n in sent.get("served", {}).items():
                left = self._served_acc.get(content_id, 0) - n
                if left > 0:
                    self._served_acc[content_id] = left
                else:
                    self._served_acc.pop(content_id, None)
        for sha in answer.get("drop", []):
            self.shares.delete(sha)
        for item in answer.get("store", []):
            sha = item["sha"]
            if sha in self._share_pending:
                continue
            if self.shares.has(sha):
                with self._lock:
                    if sha not in self._stored:
                        self._stored.append(sha)
                continue
            self._share_pending.add(sha)
            self._share_jobs.put(item)

    def _share_loop(self) -> None:
        """Fetch assigned shares from the origin, one at a time, and keep them."""
        next_scrub = time.monotonic() + SCRUB_EVERY_S
        while True:
            try:
                item = self._share_jobs.get(timeout=max(1.0, next_scrub - time.monotonic()))
            except queue.Empty:
                # re-hash every kept share now and then: a disk that rots or a hand that
                # tampers is found before a client asks (bad shares go out in the next sync)
                assert self.shares is not None
                bad = self.shares.scrub()
                if bad:
                    log.warning("%d CDN shares failed their hash check and were dropped", len(bad))
                next_scrub = time.monotonic() + SCRUB_EVERY_S
                continue
            if item is None:
                return
            sha = item["sha"]
            try:
                assert self.http is not None and self.shares is not None
                r = self._retrying(lambda s=sha: self.http.get(f"/v1/blobs/{s}"))  # type: ignore[union-attr,misc]
                self.shares.put(sha, r.content, item["content_id"])
                with self._lock:
                    self._stored.append(sha)
                self._wake.set()
            except Exception as e:
                from fogwheel.node.chunks import QuotaExceeded

                if isinstance(e, QuotaExceeded):  # tell the coordinator to place it elsewhere
                    with self._lock:
                        self._refused_acc.append(sha)
                log.warning("could not keep CDN share %s: %s", sha[:12], e)
            finally:
                self._share_pending.discard(sha)

    def _protections(self, sandbox: Sandbox) -> Protections:
        """Find what confines guests beyond the sandbox here, and say it in the log."""
        groups = cgroups.detect() if sandbox.confined else None
        if groups is not None and groups.sweep():
            log.info("removed the control groups of agents that died without removing theirs")
        # tmpfs scratch only in a mount namespace of our own: it dies with us, even killed
        tmpfs = sandbox.confined and self._private_mounts and can_mount()
        keep = self.config.keep_mb << 20
        scratch_bytes = self.config.scratch_mb << 20 if tmpfs else None
        log.info(
            "slot limits: %s; scratch: %s; kept state: %d MB, unused for %g h removed",
            groups.describe()
            if groups
            else "NO control groups (memory, processes and CPU limited per process only)",
            f"a tmpfs of {self.config.scratch_mb} MB per slot"
            if tmpfs
            else "on disk, NO quota (only root agents mount a tmpfs); files up to 1 GiB each",
            self.config.keep_mb,
            self.config.keep_hours,
        )
        if sandbox.confined and not groups:
            log.warning("no usable cgroup (v2 or v1 memory+pids): limits are per process only")
        return Protections(
            groups=groups, scratch_bytes=scratch_bytes, keep_bytes=keep, tag=self.data_dir
        )

    def _trim_kept(self) -> None:
        """Keep kept state within --keep-mb (least recently used dropped first) and drop
        what no task used for --keep-hours: the agent cannot know when a job has ended
        (it may be offline then, and a job's next phase may come hours later), so age and
        size bound it instead."""
        root = self.data_dir / "kept"
        if not root.is_dir():
            return
        entries = []
        for e in os.scandir(root):
            if e.name.startswith("."):
                with contextlib.suppress(OSError):  # half-written: a killed agent's
                    if time.time() - e.stat(follow_symlinks=False).st_mtime > 3600:
                        shutil.rmtree(e.path, ignore_errors=True)
                continue
            with contextlib.suppress(OSError):
                size = sum(f.stat().st_size for f in Path(e.path).rglob("*") if f.is_file())
                entries.append((e.stat(follow_symlinks=False).st_mtime, size, e.path))
        limit = self.config.keep_mb << 20
        old = time.time() - self.config.keep_hours * 3600
        total = sum(size for _, size, _ in entries)
        with _KEPT_LOCK:
            for mtime, size, path in sorted(entries):
                if total > limit or mtime < old:
                    shutil.rmtree(path, ignore_errors=True)
                    total -= size

    def _state_dir(self, name: Any) -> Path | None:
        """Where kept state of this name lives (names are hex hashes the coordinator made)."""
        if (
            not isinstance(name, str)
            or len(name) != 64
            or not all(ch in "0123456789abcdef" for ch in name)
        ):
            return None
        path = self.data_dir / "kept" / name
        with contextlib.suppress(OSError):
            os.utime(path)  # used now: dropped last when kept state is over its quota
        return path

    def _value_file(self, path: Path) -> dict[str, Any]:
        """A task's output file as a Value: hashed and uploaded in pieces (never whole in
        memory), and kept in the blob cache, since the next phase of a job (a MapReduce
        reduce, say) may read it here, and the coordinator prefers such a node for it."""
        size = path.stat().st_size
        if size <= INLINE_MAX:
            return _inline(path.read_bytes())
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        sha = h.hexdigest()
        cached = self.data_dir / "cache" / sha
        if not cached.exists():
            os.replace(path, cached)
            self._cached(size)
        assert self.http is not None

        def put() -> httpx.Response:
            with open(cached, "rb") as f:
                return self.http.put(f"/v1/blobs/{sha}", content=_chunks(f))  # type: ignore[union-attr]

        self._retrying(put)
        return {"sha": sha, "size": size}

    def _blob_bytes(self, value: dict[str, Any]) -> bytes:
        if value.get("data") is not None:
            data = base64.b64decode(value["data"])
            if hashlib.sha256(data).hexdigest() != value["sha"]:
                raise ValueError(f"inline value does not match its SHA-256 {value['sha']}")
            return data
        return self._blob_path(value).read_bytes()

    def _blob_path(self, value: dict[str, Any]) -> Path:
        """The verified local copy of a blob, fetched once and kept in the cache."""
        sha = value["sha"]
        path = self.data_dir / "cache" / sha
        if path.exists():
            with contextlib.suppress(OSError):
                os.utime(path)  # recently used: the cache drops least recent first
            return path
        if value.get("data") is not None:
            data = self._blob_bytes(value)
        else:
            assert self.http is not None
            r = self._retrying(lambda: self.http.get(f"/v1/blobs/{sha}"))  # type: ignore[union-attr]
            data = r.content
            if hashlib.sha256(data).hexdigest() != sha:
                raise ValueError(f"blob {sha} arrived corrupt")
        tmp = path.with_name(f".{sha}.{threading.get_ident()}")
        tmp.write_bytes(data)
        tmp.replace(path)
        self._cached(len(data))
        return path

    def _cached(self, size: int) -> None:
        """Count a new cache entry; over `cache_mb`, drop the least recently used down to
        80 % of it, sparing what was used in the last minute (a running task's inputs)."""
        limit = self.config.cache_mb << 20
        with self._cache_lock:
            self._cache_bytes += size
            if self._cache_bytes <= limit:
                return
            entries = []
            for e in os.scandir(self.data_dir / "cache"):
                if not e.name.startswith("."):
                    with contextlib.suppress(OSError):
                        st = e.stat()
                        entries.append((st.st_mtime, st.st_size, e.path))
            total = sum(size for _, size, _ in entries)
            fresh = time.time() - 60
            for mtime, size, path in sorted(entries):
                if total <= limit * 0.8 or mtime > fresh:
                    break
                with contextlib.suppress(OSError):
                    os.unlink(path)
                    total -= size
            self._cache_bytes = total

    def _retrying(self, call: Any) -> httpx.Response:
        delay = 0.2
        deadline = time.monotonic() + self.lease_seconds
        while True:
            try:
                r = call()
                if r.status_code < 500:
                    r.raise_for_status()
                    return r
                err: Exception = httpx.HTTPStatusError(
                    f"HTTP {r.status_code}", request=r.request, response=r
                )
            except httpx.TransportError as e:
                err = e
            if time.monotonic() > deadline:
                raise err
            time.sleep(delay)
            delay = min(delay * 2, 2.0)


def _certificate_refused(e: BaseException) -> str | None:
    """The reason, when a transport error is a TLS certificate that did not verify."""
    seen: BaseException | None = e
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return seen.verify_message or str(seen)
        seen = seen.__cause__ or seen.__context__
    return None


def _chunks(f: Any, size: int = 1 << 20) -> Any:
    while chunk := f.read(size):
        yield chunk


def _inline(data: bytes) -> dict[str, Any]:
    return {
        "sha": hashlib.sha256(data).hexdigest(),
        "size": len(data),
        "data": base64.b64encode(data).decode(),
    }


def _memory_mb() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    return 512


def _problem(r: httpx.Response) -> str:
    try:
        return f"{r.json().get('error')} (HTTP {r.status_code})"
    except ValueError:
        return f"HTTP {r.status_code}"
