"""The node agent: one outbound loop that reports, renews and leases, and a thread per slot.

Pull, never push: every request goes from the node to the coordinator, so a device behind
NAT needs no open port. One `sync` round trip carries finished results, lease renewals and a
request for more work. Unacknowledged results stay in memory and are sent again until the
coordinator acknowledges them, so a coordinator restart loses nothing the node finished.

Every decision of that round trip (what a sync carries, what an answer means, when to sync
next, back-off and failover, which leases to refuse) is made by `core/nodestate.py`'s pure
`NodeState`; this module carries its instructions out: HTTP, slots, threads and the lock
around the machine. The CDN's shares and the blob cache stay here.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import os
import platform
import queue
import shutil
import signal
import ssl
import threading
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx

from fogwheel import logs
from fogwheel.core import memfit
from fogwheel.core import nodestate as ns
from fogwheel.core.urls import coordinator_base
from fogwheel.node import apps as node_apps
from fogwheel.node import cgroups, control
from fogwheel.node.envs import MAX_HELD_REPORTED, EnvCache, EnvError, this_platform
from fogwheel.node.faults import ENV as FAULT_ENV
from fogwheel.node.faults import Faults
from fogwheel.node.images import ImageCache, ImageRefused, image_capabilities
from fogwheel.node.sandbox import NoSandbox, Sandbox, detect
from fogwheel.node.scratch import can_mount, private_mounts, unmount
from fogwheel.node.selfupdate import SelfUpdater, running_version
from fogwheel.node.slots import Protections, Slot, resident_mb
from fogwheel.signing import fingerprint, parse_join_string, pin_matches, verify_lease

log = logging.getLogger("fogwheel.node")

MAX_DROPPED_REPORTED = 10_000  # evicted blobs named in one sync (protocol.SyncIn.dropped)


def _is_sha(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text)


INLINE_MAX = 64 * 1024  # as in fogwheel.protocol; not imported to keep pydantic out of the agent
PROBED_PROGRAMS = ("python3", "povray", "jellyfish", "bwrap")
SCRUB_EVERY_S = 600.0  # how often kept CDN shares are hashed again
NO_SANDBOX = (
    "no usable sandbox (bubblewrap): install it with `apt-get install bubblewrap`, "
    "or run with --unsafe-no-sandbox to run guest code unconfined"
)
UNSAFE_WARNING = (
    "UNSAFE: --unsafe-no-sandbox: guest code runs UNCONFINED as this user, with network "
    "access and every file this user can read (the node credential included)"
)
REFUSED_UNSIGNED = ns.REFUSED_UNSIGNED
_KEPT_LOCK = threading.Lock()  # kept state is trimmed by one slot at a time


@dataclass
class NodeConfig:
    coordinator: str  # its URL, or several of one fog separated by commas (failover)
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
    images_mb: int = 4096  # unpacked program images (node/images.py), least recent removed
    env_mb: int = 2048  # Python environments (node/envs.py), least recently used removed
    coordinators: list[str] = field(default_factory=list)  # more URLs of the same fog

    def urls(self) -> list[str]:
        """Every coordinator URL, `coordinator`'s first, each normalised, repeats dropped."""
        found: list[str] = []
        for piece in [*self.coordinator.split(","), *self.coordinators]:
            if piece.strip():
                try:
                    url = coordinator_base(piece)
                except ValueError as e:
                    raise FatalNodeError(str(e)) from None
                if url not in found:
                    found.append(url)
        if not found:
            raise FatalNodeError("no coordinator: pass --coordinator URL")
        return found


class FatalNodeError(Exception):
    """The agent cannot go on (credential refused and no join token, say)."""


class Agent:
    def __init__(self, config: NodeConfig, http: httpx.Client | None = None) -> None:
        """`http`: a ready client to send every request through (a
        `starlette.testclient.TestClient(app)` runs the agent against a coordinator app in
        this process, no sockets). The agent adds its credential to each request and never
        changes the client's headers, so an SDK and several agents may share one; its owner
        closes it. With `http` and an empty `config.coordinator`, the client's base URL is
        the coordinator's."""
        if http is not None and not config.coordinator:
            config.coordinator = str(http.base_url).rstrip("/")
        self.config = config
        self.urls = config.urls()
        self._url = self.urls[0]  # the coordinator asked now (failover moves it)
        self._given_http = http
        self.data_dir = config.data_dir
        self.slots_n = config.cores or os.cpu_count() or 1
        self.device_mb = _memory_mb()  # what is resident fits in it (RAM, cgroup limits)
        self.memory_mb = config.memory_mb or self.device_mb  # offered; task limits fit in it
        self._memory_room = threading.RLock()  # around the memory bookkeeping below (memfit)
        self._running_mb: dict[int, tuple[int, Slot, float]] = {}  # task id -> limit, slot, base
        self._parked: list[dict[str, Any]] = []  # leases waiting for memory, oldest first
        self._worker_mb = 0.0  # the leanest resident set a worker was seen at between tasks
        self._stop = threading.Event()
        self._abort = threading.Event()
        # agent roll-outs (node/selfupdate.py): the version to re-execute as, once stopped
        self.updater = SelfUpdater(
            self.data_dir,
            lambda: self.public_key,
            lambda method, path, **kw: self.http.stream(  # type: ignore[union-attr]
                method, f"{self._url}{path}", headers=self._auth(), timeout=60, **kw
            ),
            lambda target: self.request_stop(),
            time.monotonic,
        )
        self._faults = Faults()
        if self._faults.active:
            log.warning("FAULT INJECTION: %s (%s)", self._faults.describe(), FAULT_ENV)
        self._wake = threading.Event()
        self._lock = threading.Lock()  # around the state machine and the bookkeeping below
        self.state: ns.NodeState | None = None  # made once joined (it needs the lease period)
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue()  # Run: to a free slot
        self._running_on: dict[int, Slot] = {}  # task id -> the slot running it
        self._killed: set[int] = set()  # told to stop (Kill): its result is wanted by nobody
        self._slots: list[Slot] = []
        self.node_id: str | None = None
        self.public_key = ""  # the coordinator's Ed25519 key: only specs it signed are run
        self.lease_seconds = 15.0
        self.http: httpx.Client | None = None
        self._credential = ""
        self._tls: ssl.SSLContext | bool = True
        self.sandbox: Sandbox | None = None  # chosen when the agent starts (choose_sandbox)
        self._warned_jobs: set[int] = set()
        self._cache_lock = threading.Lock()
        self._cache_bytes = 0
        self.shares: Any = None  # the CDN's ShareStore, when this node serves (node/chunks.py)
        self.chunks: Any = None  # its ChunkServer
        self.images: ImageCache | None = None  # unpacked program images (node/images.py)
        self._share_jobs: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._stored: list[str] = []  # shares fetched and kept, to confirm in the next sync
        self._share_pending: set[str] = set()
        self._bad_acc: list[str] = []  # shares that failed their hash check here
        self._refused_acc: list[str] = []  # shares that did not fit in the share quota
        self._served_acc: dict[str, int] = {}  # bytes served a content id, not yet reported
        self._sent_cdn: dict[str, Any] = {}
        self._url_sent = False
        self.serve_url = ""
        self.envs: EnvCache | None = None  # Python environments built here (node/envs.py)
        self._envs_told: list[str] | None = None  # what the coordinator last heard of them
        self._envs_sent: list[str] | None = None
        # Cached blobs, images and kept state evicted here, told on the next sync so that
        # placement stops preferring this node for them (protocol.SyncIn.dropped).
        self._dropped: set[str] = set()
        self._dropped_lock = threading.Lock()
        # the owner's pause and the status `fogwheel node status` reads (node/control.py)
        self._pause_watch: control.PauseWatcher | None = None
        self._pause_applied: control.PauseOrder | None = None
        self._status = control.StatusWriter(config.data_dir)
        self._finished_n = 0
        self._started_at = time.time()
        self._answered_wall: float | None = None

    # -- joining ----------------------------------------------------------------------------

    def _identity_path(self) -> Path:
        return self.data_dir / "node.json"

    def join(self) -> None:
        """Load or make this node's identity, with the coordinator's key checked against the
        join string's pin before anything signed by it is trusted."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._tls = self._tls_context()
        if self._given_http is not None:
            self.http = self._given_http
        elif self.http is None:
            self.http = httpx.Client(timeout=httpx.Timeout(30.0, connect=5.0), verify=self._tls)
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
                    self._url,
                )
        elif pin is not None and not pin_matches(ident["public_key"], pin):
            raise FatalNodeError(
                f"{self._identity_path()} trusts coordinator key "
                f"{fingerprint(ident['public_key'])}, not the key this join string pins: it "
                "was learnt from an impostor or belongs to another fog; delete the file and "
                "join again with the join string"
            )
        self.node_id = ident["node_id"]
        logs.bind_process(node_id=self.node_id)  # on every log line from now on (logs.py)
        self.public_key = ident["public_key"]
        self.lease_seconds = ident.get("lease_seconds", 15.0)
        self._credential = ident["credential"]
        self.state = ns.NodeState(
            ns.Settings(
                slots=self.slots_n,
                lease_seconds=self.lease_seconds,
                poll_s=self.config.poll_s,
                coordinators=len(self.urls),
                max_clock_skew_s=self.config.max_clock_skew_s,
                key_name=f"coordinator key {fingerprint(self.public_key)}"
                if self.public_key
                else "no coordinator key",
            )
        )
        # Go on where joining got through: the failover machine starts at that URL.
        self.state.failover.current = self.urls.index(self._url)

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
                self._url,
                where,
            )
            return
        if not pin_matches(key, pin):
            raise FatalNodeError(
                f"the coordinator at {self._url} answered ({where}) with signing "
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
        if ident.get("coordinator") not in self.urls:
            return None  # it joined another fog
        return dict(ident)

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
            "memory_mb": self.memory_mb,
            "disk_mb": shutil.disk_usage(self.data_dir).free // (1024 * 1024),
            "platform": platform.platform(),
            "capabilities": sorted(
                {p for p in PROBED_PROGRAMS if shutil.which(p)}
                | set(self.config.capabilities)
                | ({"sandbox"} if self.sandbox and self.sandbox.confined else set())
                | image_capabilities(self.sandbox)  # arch:x86_64, images (node/images.py)
            ),
        }
        r = self._until_reachable("POST", "/v1/nodes/join", "the node could join", json=body)
        if r.status_code != 201:
            raise FatalNodeError(f"join refused: {_problem(r)}")
        joined = r.json()
        self._check_pin(joined.get("public_key"), pin, "its join answer")
        ident = {
            "coordinator": self._url,
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
        """One unauthenticated request, retried until a coordinator answers: the next URL at
        once after a failure, a wait (doubling) once every URL failed in a row."""
        turns = ns.Failover(len(self.urls))
        turns.current = self.urls.index(self._url)
        assert self.http is not None
        while True:
            try:
                r = self.http.request(method, f"{self._url}{path}", timeout=30, **kw)
                if r.status_code not in ns.UNREACHABLE_STATUS:
                    return r
                problem = f"HTTP {r.status_code}"
            except httpx.TransportError as e:
                bad_cert = _certificate_refused(e)
                if bad_cert:
                    raise FatalNodeError(
                        f"the coordinator's TLS certificate does not verify ({bad_cert}): pass "
                        "--ca-cert FILE with the CA that signed it, or check the URL"
                    ) from None
                problem = str(e)
            if self._stop.is_set():
                raise FatalNodeError(f"stopped before {what}")
            switch, delay = turns.failed()
            log.warning(
                "coordinator %s unreachable (%s); %s",
                self._url,
                problem,
                f"retrying in {delay:.1f} s" if delay else "trying the next one",
            )
            if switch is not None:
                self._url = self.urls[switch]
            self._stop.wait(delay)

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
        self.images = ImageCache(
            self.data_dir / "images", self.config.images_mb << 20, self._note_dropped
        )
        if self.config.serve:
            self._start_chunks()
        self.envs = EnvCache(self.data_dir / "envs", self.config.env_mb << 20, this_platform())
        self._pause_watch = control.PauseWatcher(self.data_dir, self._wake.set).start()
        self._cache_bytes = sum(e.stat().st_size for e in os.scandir(self.data_dir / "cache"))
        threads = []
        for i in range(self.slots_n):
            guest = sandbox.for_slot(i, self.data_dir)
            slot = Slot(i, scratch, self.data_dir / "worker.log", guest, protections)
            self._slots.append(slot)
            t = threading.Thread(target=self._slot_loop, name=f"slot-{i}", daemon=True)
            t.start()
            threads.append(t)
        try:
            self._loop()
        finally:
            if self._pause_watch is not None:
                self._pause_watch.stop()
            self._status.maybe_write({**self._status_now(), "state": "stopped"}, force=True)
            self._share_jobs.put(None)
            if self.chunks is not None:
                self.chunks.stop()
            for _ in threads:
                self._queue.put(None)
            for slot in self._slots:
                slot.close()
            if self.http is not None and self._given_http is None:
                self.http.close()
        log.info("node %s stopped", self.node_id)

    # -- carrying out the state machine's instructions ----------------------------------------

    def _handle(self, *events: ns.Event) -> list[ns.Instruction]:
        """Feed the machine under the lock; carry out what needs no round trip at once."""
        assert self.state is not None
        to_stop: list[tuple[Slot, str]] = []
        with self._lock:
            instructions = self.state.handle(*events)
            self.lease_seconds = self.state.lease_seconds
            for ev in events:
                if isinstance(ev, ns.TaskFinished):
                    self._killed.discard(ev.task_id)  # the machine is done with it
                    self._finished_n += ev.report is not None
            for ins in instructions:
                if isinstance(ins, ns.Kill):
                    # Under the lock, so a slot that finishes at this moment sees it.
                    self._killed.add(ins.task_id)
                    slot = self._running_on.get(ins.task_id)
                    if slot is not None:  # else not started yet: its slot drops it
                        to_stop.append((slot, ins.why))
        for slot, why in to_stop:
            if why == "abort":
                slot.stop()
            else:
                slot.abort()
        rest = []
        for ins in instructions:
            if isinstance(ins, ns.Run):
                self._queue.put(dict(ins.lease))
            elif isinstance(ins, ns.Log):
                log.log(_LEVELS[ins.level], "%s", ins.message)
            elif isinstance(ins, ns.SwitchCoordinator):
                self._url = self.urls[ins.index]
                log.warning("moving to coordinator %s", self._url)
            elif not isinstance(ins, ns.Kill):
                rest.append(ins)
        return rest

    def _loop(self) -> None:
        stop_told = abort_told = False
        while True:
            events: list[ns.Event] = []
            now = time.monotonic()
            if self._stop.is_set() and not stop_told:
                stop_told = True
                events.append(ns.StopRequested(now))
            if self._abort.is_set() and not abort_told:
                abort_told = True
                events.append(ns.AbortRequested(now))
            events.extend(self._pause_events(now))
            self._wake.clear()
            instructions = self._handle(*events, ns.Tick(now))
            self._status.maybe_write(self._status_now(), force=bool(events))
            for ins in instructions:
                if isinstance(ins, ns.Sync):
                    for after in self._sync(ins):
                        if isinstance(after, ns.Exit):
                            self._exit(after)
                            return
                elif isinstance(ins, ns.SleepUntil):
                    self._wake.wait(max(0.001, ins.t - time.monotonic()))
                elif isinstance(ins, ns.Exit):
                    self._exit(ins)
                    return

    def _pause_events(self, now: float) -> list[ns.Event]:
        """The owner's pause file, as events: a new or changed order pauses, none resumes."""
        order = self._pause_watch.order if self._pause_watch is not None else None
        if order == self._pause_applied:
            return []
        self._pause_applied = order
        if order is None:
            return [ns.ResumeRequested(now)]
        return [ns.PauseRequested(now, finish=order.finish)]

    def _status_now(self) -> dict[str, Any]:
        """What `fogwheel node status` shows of this agent (no secret in it)."""
        order = self._pause_applied
        with self._lock:
            st = self.state
            held = (
                {}
                if st is None
                else {
                    "state": "stopping" if st.stopping else "paused" if st.paused else "running",
                    "paused": st.paused,
                    "running": len(st.running),
                    "queued": len(st.queue),
                    "reporting": len(st.outbox),
                    "handing_back": len(st.release),
                }
            )
        return {
            "pid": os.getpid(),
            "node_id": self.node_id,
            "coordinator": self._url,
            "slots": self.slots_n,
            "sandbox": self.sandbox.describe() if self.sandbox else None,
            "finish": bool(order and order.finish),
            "paused_at": order.at if order else None,
            "tasks_finished": self._finished_n,
            "started_at": self._started_at,
            "last_answer_at": self._answered_wall,
            **held,
        }

    def _exit(self, ins: ns.Exit) -> None:
        if ins.fatal == ns.CREDENTIAL_REFUSED:
            raise FatalNodeError(
                f"{ins.fatal}: delete {self._identity_path()} and rejoin with --token"
            )
        if ins.fatal:
            raise FatalNodeError(ins.fatal)

    def _sync(self, ins: ns.Sync) -> list[ns.Instruction]:
        """One round trip: the machine's body (and the CDN's news) out, the answer back in."""
        body = dict(ins.body)
        body.update(self._cdn_report())
        body.update(self._env_report())
        with self._dropped_lock:
            dropped = sorted(self._dropped)[:MAX_DROPPED_REPORTED]
        if dropped:
            body["dropped"] = dropped
        body["agent_version"] = running_version()  # agent roll-outs (docs/rollouts.md)
        assert self.http is not None
        try:
            r = self.http.post(
                f"{self._url}/v1/nodes/me/sync",
                params={"leaving": ins.leaving},
                json=body,
                headers=self._auth(),
            )
        except httpx.TransportError as e:
            return self._handle(ns.SyncFailed(time.monotonic(), type(e).__name__))
        if r.status_code >= 400:
            failed = ns.SyncFailed(
                time.monotonic(), _problem(r), r.status_code, _retry_after(r.headers)
            )
            return self._handle(failed)
        try:
            answer = r.json()
            tasks = answer["tasks"]
            # Checked before queueing, outside the lock (about 0.1 ms a lease): a spec is run
            # only if the coordinator signed exactly it.
            signed = [
                isinstance(t, dict) and verify_lease(self.public_key, t, t.get("signature"))
                for t in tasks
            ]
            event = ns.SyncAnswered.from_json(answer, signed, time.monotonic(), wall=time.time())
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            why = f"not a sync answer ({type(e).__name__})"
            return self._handle(ns.SyncFailed(time.monotonic(), why))
        after = self._handle(event)
        if dropped:  # heard
            with self._dropped_lock:
                self._dropped.difference_update(dropped)
        if self._envs_sent is not None:  # heard: said again only when it changes
            self._envs_told, self._envs_sent = self._envs_sent, None
        self._answered_wall = time.time()
        self._cdn_absorb(answer)
        self.updater.offered(answer.get("agent"))  # a version to change to, checked first
        return after

    def _note_dropped(self, sha: str) -> None:
        """A cached blob, an image or kept state named `sha` was evicted here."""
        if _is_sha(sha):
            with self._dropped_lock:
                self._dropped.add(sha)

    def _env_report(self) -> dict[str, Any]:
        """The environments held here and this Python's platform, when the coordinator has
        not heard them yet (placement prefers holders and skips nodes that cannot install)."""
        if self.envs is None:
            return {}
        held = self.envs.held()[:MAX_HELD_REPORTED]
        if held == self._envs_told:
            return {}
        self._envs_sent = held
        report: dict[str, Any] = {"envs": held}
        if self._envs_told is None:
            report["env_platform"] = self.envs.platform.describe()
        return report

    @contextlib.contextmanager
    def _env_for(self, lease: dict[str, Any]) -> Any:
        """The site dir of the lease's Python environment (None: it names none), built first
        when it is not here, and kept from eviction while the task runs."""
        if not lease.get("env") or self.envs is None:
            yield None
            return
        with self.envs.ready(lease["env"], self._fetch_blob_to) as site:
            self._wake.set()  # the next sync tells the coordinator it holds it
            yield site

    def _fetch_blob_to(self, sha: str, max_bytes: int, dest: Path) -> None:
        """Stream blob `sha` into `dest`, at most `max_bytes` (node/envs.py checks the hash)."""
        assert self.http is not None
        with self.http.stream(
            "GET", f"{self._url}/v1/blobs/{sha}", headers=self._auth(), timeout=60
        ) as r:
            if r.status_code != 200:
                r.read()
                raise EnvError(f"the coordinator answered {_problem(r)}")
            got = 0
            with open(dest, "wb") as f:
                for chunk in r.iter_bytes(1 << 20):
                    got += len(chunk)
                    if got > max_bytes:
                        raise EnvError(f"more than the {max_bytes} bytes the lock names")
                    f.write(chunk)

    def _auth(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self._credential}"}

    def _call(self, method: str, path: str, **kw: Any) -> httpx.Response:
        """One authenticated request to the coordinator asked now."""
        assert self.http is not None
        return self.http.request(method, f"{self._url}{path}", headers=self._auth(), **kw)

    # -- slots ------------------------------------------------------------------------------

    def _slot_loop(self) -> None:
        """One of the agent's task threads, as many as slots. A lease runs on the free slot
        whose worker is warmest for it (`_admit`), not on a slot of the thread's own: a warm
        worker is never stopped, nor a fresh one started, while a warm one sits free."""
        while True:
            lease, slot = self._next_lease()
            if lease is None:
                return
            tid = lease["task_id"]
            logs.set_ids(job_id=lease.get("job_id"), task_id=tid)  # this slot's lines name it
            with self._lock:
                killed = tid in self._killed
            if killed and slot is not None:
                self._release(tid)
            elif not killed and slot is None:
                slot = self._admit(lease, park=True)
                if slot is None:  # parked: the thread that next frees memory runs it
                    logs.set_ids()
                    continue
            if not killed:
                assert slot is not None
                with self._lock:
                    self._running_on[tid] = slot
            report: dict[str, Any] | None = None
            if not killed and slot is not None:
                try:  # one killed while it waited is not run: its result is dropped below
                    report = {"ok": False} if tid in self._killed else self._execute(slot, lease)
                    self._faults.slow_down(
                        report.get("wall_s", 0.0), partial(self._killed.__contains__, tid)
                    )
                except Exception as e:  # a bug or an unreachable blob: the task goes back
                    log.exception("task %s could not run", tid)
                    report = {
                        "ok": False,
                        "error": {"kind": "input", "message": f"{type(e).__name__}: {e}"},
                    }
                finally:
                    self._release(tid, slot)
                report.update(task_id=tid, attempt=lease["attempt"])
                report = self._faults.tamper(report)
                report.setdefault("cpu_s", 0.0)
                report.setdefault("wall_s", 0.0)
            with self._lock:
                self._running_on.pop(tid, None)
                if tid in self._killed:  # stopped on purpose: nobody waits for this result
                    self._killed.discard(tid)
                    report = None
            if report is not None:
                outcome = "ok" if report.get("ok") else (report.get("error") or {}).get("kind")
                log.info("task %s finished: %s in %.2f s", tid, outcome, report["wall_s"])
            self._handle(ns.TaskFinished(tid, time.monotonic(), report))
            logs.set_ids()
            self._wake.set()

    def _next_lease(self) -> tuple[dict[str, Any] | None, Slot | None]:
        """The oldest parked lease that fits now, with the slot it is admitted on (or one
        killed while it waited, to drop); else the queue's next, not yet admitted. A thread
        that has just finished a task asks first, so what waited for the memory it gave back
        runs in the worker it left warm."""
        with self._memory_room:
            for i, lease in enumerate(self._parked):
                if lease["task_id"] in self._killed:
                    return self._parked.pop(i), None
                slot = self._admit(lease, park=False)
                if slot is not None:
                    return self._parked.pop(i), slot
        return self._queue.get(), None

    def _admit(self, lease: dict[str, Any], *, park: bool) -> Slot | None:
        """The free slot the lease's task now runs on, counted as running there, if it fits
        the device now (memfit), once the workers the plan names have exited; else None and,
        with `park`, the lease held back. The slot is the one whose worker last ran the job,
        else one with a worker, else the first."""
        tid, mb = lease["task_id"], int(lease["limits"].get("memory_mb") or 0)
        with self._memory_room:
            busy = {s for _, s, _ in self._running_mb.values()}
            free = [s for s in self._slots if s not in busy]
            slot = min(
                free,
                key=lambda s: (s.last_job != lease["job_id"], s.worker_pid is None, s.index),
            )
            idle = {s.index: s.resident_mb() for s in free}
            plan = memfit.plan_start(
                mb,
                slot=slot.index,
                offered_mb=self.memory_mb,
                device_mb=self.device_mb,
                agent_mb=resident_mb(os.getpid()),
                worker_mb=self._worker_mb,
                running=[
                    memfit.Running(m, base, s.resident_mb())
                    for m, s, base in self._running_mb.values()
                ],
                idle={i: m for i, m in idle.items() if m > 0},
                own_warm=slot.last_job == lease["job_id"],
            )
            if not plan.starts:
                if park:
                    log.info("task %s waits for memory: %s", tid, plan.reason)
                    self._parked.append(lease)
                return None
            for i in plan.stop:
                log.info(
                    "task %s: the worker kept by slot %s (%.0f MB resident) exits to make room",
                    tid, i, idle[i],
                )  # fmt: skip
                self._slots[i].stop()  # its slot starts a fresh one for its next task
            self._running_mb[tid] = (mb, slot, plan.base_mb)
            return slot

    def _release(self, tid: int, slot: Slot | None = None) -> None:
        """The task no longer holds memory; note how lean `slot`'s worker is between tasks."""
        lean = slot.resident_mb() if slot is not None and slot.worker_pid else 0.0
        with self._memory_room:
            self._running_mb.pop(tid, None)
            if lean > 0:
                self._worker_mb = min(self._worker_mb or lean, lean)

    def _execute(self, slot: Slot, lease: dict[str, Any]) -> dict[str, Any]:
        limits = lease["limits"]
        if not slot.sandbox.confined and lease["job_id"] not in self._warned_jobs:
            self._warned_jobs.add(lease["job_id"])
            log.warning("job %s: %s", lease["job_id"], UNSAFE_WARNING)
        app = None
        if lease.get("app") is not None:  # an app's version: checked first (node/apps.py)
            try:
                app = node_apps.check_lease(lease, self.public_key)
            except node_apps.AppRefused as e:
                return self._app_refused(lease, e)
        inputs = {name: self._blob_path(v) for name, v in lease["inputs"].items()}
        if app is not None and app.code is not None:
            try:
                node_apps.check_code(app, inputs[node_apps.core.CODE_FILE])
            except node_apps.AppRefused as e:
                inputs[node_apps.core.CODE_FILE].unlink(missing_ok=True)
                return self._app_refused(lease, e)
        inputs = self._faults.swap_inputs(inputs, self.data_dir / "faults")  # tests only
        if lease["kind"] == "python":
            fn = lease["fn"] if app is None else self._app_call(lease, app)
            msg = {
                "fn_sha": fn["sha"],
                "fn_path": fn.get("path") or str(self._blob_path(fn)),
                "args": self._blob_bytes(lease["args"]) if lease["args"] else None,
                "limits": limits,
            }
            with self._env_for(lease) as site:  # its Python environment, built here once
                res = slot.run_python(
                    lease["job_id"],
                    msg,
                    limits["wall_s"],
                    inputs=inputs,
                    outputs=lease["outputs"],
                    keep=self.data_dir / "cache",
                    state_in=self._state_dir(lease.get("keep_in")),
                    state_out=self._state_dir(lease.get("keep_out")),
                    # one worker a version: two versions' modules never meet in one process
                    tenant=str(lease.get("tenant") or "") + (f"|{fn['sha']}" if app else ""),
                    env_site=site,
                )
            if res.get("kept") is not None:
                self._trim_kept()
        elif lease.get("image") and self.images is not None:
            try:  # its program image, unpacked here once (node/images.py)
                with self.images.use(lease["image"], self._fetch_image_blob) as root:
                    res = slot.run_command(
                        lease["task_id"],
                        lease["command"],
                        inputs,
                        limits,
                        outputs=lease["outputs"],
                        keep=self.data_dir / "cache",
                        image=root,
                    )
            except ImageRefused as e:
                log.warning("task %s: %s", lease["task_id"], e)
                kind = "input" if e.retryable else "exception"  # a bad image: no retry
                err = {"kind": kind, "type": "ImageRefused", "message": str(e)}
                return {"ok": False, "error": err}
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
            self._faults.poison_outputs(files)  # tests only: FOGWHEEL_FAULT=poison:ATTACK
            res["outputs"] = {name: self._value_file(p) for name, p in files.items()}
        finally:
            for p in files.values():
                p.unlink(missing_ok=True)
        return self._wire_result(res)

    def _app_refused(self, lease: dict[str, Any], e: Exception) -> dict[str, Any]:
        log.warning("task %s: %s", lease["task_id"], e)
        return {"ok": False, "error": {"kind": "input", "type": "AppRefused", "message": str(e)}}

    def _app_call(self, lease: dict[str, Any], app: Any) -> dict[str, Any]:
        """The worker's function for a function app's version (node/apps.py: AppCall)."""
        import pickle

        version = lease["app"]["version"]
        path = self.data_dir / "apps" / f"{version}.call"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            call = node_apps.AppCall(version, app.entry, app.code is not None)
            tmp = path.with_name(f".{version}.{threading.get_ident()}")
            tmp.write_bytes(pickle.dumps(call))
            tmp.replace(path)
        return {"sha": version, "path": str(path)}

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
        self._retrying(lambda: self._call("PUT", f"/v1/blobs/{sha}", content=data))
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
        if not self.config.advertise:
            self._behind_nat(url)
        self._stored.extend(self.shares.shas())  # confirm what survived a restart
        threading.Thread(target=self._share_loop, name="shares", daemon=True).start()
        log.info("serving CDN shares at %s", self.serve_url)

    def _behind_nat(self, url: str) -> None:
        """A chunk server on a LAN address: ask the router to forward a port (UPnP-IGD) and
        advertise that, and wait on the coordinator's rendezvous for fetchers that cannot
        connect (punch or relay): cdn/upnp.py, cdn/punch.py."""
        from fogwheel.cdn import punch, upnp

        if not upnp.behind_nat(url):
            return
        mapping = upnp.try_map(url, time.time())
        if mapping is not None:
            self.serve_url = mapping.url
            upnp.keep(mapping, self._stop)
            log.info("the router forwards %s to this chunk server (UPnP-IGD)", mapping.url)
        tls = self._tls if isinstance(self._tls, ssl.SSLContext) else None
        auth = lambda: self._auth()["authorization"]  # noqa: E731
        punch.NodeCalls(self._call, lambda: self._url, auth, self.chunks, tls).start()

    def _cdn_report(self) -> dict[str, Any]:
        """What this sync tells of the CDN. Cleared only when the coordinator answers, so a
        failed round trip loses no confirmation and no served byte."""
        if self.shares is None or self.chunks is None:
            return {}
        if self.chunks.public_key_b64 != self.public_key:
            self.chunks.public_key_b64 = self.public_key
        if self.chunks.identity is None and self._credential and self.node_id:
            # the chunk server proves it is this node to the coordinator's probe (cdn/audit.py)
            cred = self._credential
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
                assert self.shares is not None
                r = self._retrying(lambda s=sha: self._call("GET", f"/v1/blobs/{s}"))  # type: ignore[misc]
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
                    self._note_dropped(os.path.basename(path))

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

        def put() -> httpx.Response:
            with open(cached, "rb") as f:
                return self._call("PUT", f"/v1/blobs/{sha}", content=_chunks(f))

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
            r = self._retrying(lambda: self._call("GET", f"/v1/blobs/{sha}"))
            data = r.content
            if hashlib.sha256(data).hexdigest() != sha:
                raise ValueError(f"blob {sha} arrived corrupt")
        tmp = path.with_name(f".{sha}.{threading.get_ident()}")
        tmp.write_bytes(data)
        tmp.replace(path)
        self._cached(len(data))
        return path

    def _fetch_image_blob(self, sha: str, dest: Path) -> None:
        """Stream blob `sha` of a program image to `dest` (node/images.py checks its hash)."""
        assert self.http is not None
        url = f"{self._url}/v1/blobs/{sha}"
        with self.http.stream("GET", url, headers=self._auth(), timeout=60) as r:
            if r.status_code != 200:
                r.read()
                why = f"blob {sha[:12]} of the image could not be fetched: {_problem(r)}"
                raise ImageRefused(why, retryable=True)
            with open(dest, "wb") as f:
                for chunk in r.iter_bytes(1 << 20):
                    f.write(chunk)

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
                    self._note_dropped(os.path.basename(path))
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
    """The device's memory: MemTotal, or less where a cgroup above the agent limits it."""
    total = None
    with contextlib.suppress(OSError, ValueError), open("/proc/meminfo") as f:
        total = next((int(ln.split()[1]) for ln in f if ln.startswith("MemTotal:")), None)
    limits = []
    with contextlib.suppress(OSError):
        own, mounts = Path("/proc/self/cgroup").read_text(), Path("/proc/self/mounts").read_text()
        for name in memfit.limit_files(own, mounts):
            with contextlib.suppress(OSError):
                limits.append(memfit.parse_limit(Path(name).read_text()))
    return memfit.device_memory_mb(total, limits)


_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def _problem(r: httpx.Response) -> str:
    try:
        return f"{r.json().get('error')} (HTTP {r.status_code})"
    except (ValueError, AttributeError):  # not JSON, or JSON but not an object
        return f"HTTP {r.status_code}"


def _retry_after(headers: httpx.Headers) -> float | None:
    """Retry-After in seconds (RFC 9110 §10.2.3; an HTTP date is not worth a clock here)."""
    try:
        return float(headers.get("retry-after", ""))
    except ValueError:
        return None
