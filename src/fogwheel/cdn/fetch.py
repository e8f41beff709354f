"""Fetching a CDN object: k shares a segment from the nodes that hold them, in parallel,
verified, decoded and decrypted; the origin (the coordinator's blob store) when peers fail.

The plan (`GET /v1/cdn/objects/{id}`) names every share's holders, least loaded first, and
carries a short-lived token signed by the coordinator for this content, which the nodes' chunk
servers demand. For each segment the fetcher asks k holders of k different shares at once; a
share that does not arrive in time (a slow or vanished peer), or arrives with the wrong hash
(a tampered disk: reported, never used), is replaced by another holder or another share of the
segment. When no peer is left for enough shares, the missing ones come from the origin. Used by
the SDK and CLI (`fogwheel cdn get`) and by the coordinator's streaming endpoint.

Every byte from a node is data: a share is read to at most its size (one byte more proves it
too long: a bad share for this fetch, never buffered), with no content coding, through an HTTP
client of its own that sends nothing but the plan's share token, follows no redirect and reads
no proxy or netrc settings — no customer credential ever reaches a node. For every share it
verified from a peer the fetcher signs a receipt (cdn/receipts.py), which pays that node.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

import httpx

from fogwheel.cdn import receipts as receipt
from fogwheel.cdn.codec import CodecError, Manifest, decode_segment

MIN_RATE = 16 * 1024  # bytes/s: a share slower than this (after 15 s) is taken elsewhere
MIN_PATIENCE = 15.0  # seconds any share transfer is given, however small
PEER_TIMEOUT = 5.0  # seconds to connect, and between bytes (a stalled peer)
PER_NODE = 2  # transfers one fetch keeps in flight to one node: a busy uplink is shared
READ_STEP = 64 * 1024  # bytes read from a peer at a time


class ShareRefused(OSError):
    """The peer did not send the share (an error status, or it hung up)."""


class BadShare(ValueError):
    """The peer sent bytes that are not the share: the wrong hash, or more than its size."""


def peer_client(timeout: float = PEER_TIMEOUT) -> httpx.Client:
    """An HTTP client for talking to nodes: no credentials of ours, no redirects followed,
    no proxy or netrc taken from the environment."""
    return httpx.Client(
        timeout=httpx.Timeout(timeout, connect=timeout),
        follow_redirects=False,
        trust_env=False,
        headers={"accept-encoding": "identity"},
    )


def read_share(
    http: httpx.Client, url: str, token: str, sha: str, size: int, deadline: float
) -> bytes:
    """GET share `sha` (`size` bytes) at `url` with the share token; its bytes, verified.

    Reads at most `size + 1` bytes, whatever the peer announces or sends. ShareRefused for an
    answer other than 200, BadShare for wrong or too many bytes, TimeoutError past `deadline`
    (time.monotonic())."""
    h = hashlib.sha256()
    parts: list[bytes] = []
    got = 0
    with http.stream("GET", url, headers={"authorization": f"Bearer {token}"}) as r:
        if r.status_code != 200:
            raise ShareRefused(f"answered {r.status_code} for share {sha[:12]}")
        coding = r.headers.get("content-encoding", "identity").strip().lower()
        if coding not in ("", "identity"):
            raise BadShare(f"sent share {sha[:12]} with content coding {coding[:20]!r}")
        announced = r.headers.get("content-length", "")
        if announced.isdigit() and int(announced) > size:
            raise BadShare(f"announced {announced[:20]} bytes for share {sha[:12]} of {size}")
        for chunk in r.iter_raw(READ_STEP):
            got += len(chunk)
            if got > size:
                raise BadShare(f"sent more than {size} bytes for share {sha[:12]}")
            h.update(chunk)
            parts.append(chunk)
            if time.monotonic() > deadline:
                raise TimeoutError(f"too slow for share {sha[:12]}")
    if h.hexdigest() != sha:
        raise BadShare(f"sent share {sha[:12]} with the wrong bytes")
    return b"".join(parts)


@dataclass
class FetchStats:
    size: int = 0
    from_peers: int = 0
    from_origin: int = 0
    seconds: float = 0.0
    bad: list[tuple[str, str]] = field(default_factory=list)  # (node_id, sha) that lied
    bad_why: dict[tuple[str, str], str] = field(default_factory=dict)  # what was wrong
    receipts: list[dict[str, str]] = field(default_factory=list)  # signed, one a share verified
    plan: str = ""  # the plan the receipts belong to
    failed_peers: int = 0  # transfers abandoned (slow, refused, gone)
    peers: dict[str, list[float]] = field(default_factory=dict)  # node -> [bytes, seconds]
    paths: dict[str, list[int]] = field(default_factory=dict)  # path -> [shares, bytes]
    routes: dict[str, dict[str, int]] = field(default_factory=dict)  # node -> path -> shares
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, peers: int = 0, origin: int = 0) -> None:
        with self.lock:
            self.from_peers += peers
            self.from_origin += origin

    def report(self) -> dict[str, Any]:
        return {
            "size": self.size,
            "from_peers": self.from_peers,
            "from_origin": self.from_origin,
            "seconds": round(self.seconds, 4),
            "bad": [{"node_id": n, "sha": s} for n, s in self.bad],
            "peers": [
                {"node_id": n, "bytes": int(b), "seconds": round(s, 4)}
                for n, (b, s) in self.peers.items()
            ],
            "plan": self.plan,
            "receipts": list(self.receipts),
            "paths": {p: {"shares": n, "bytes": b} for p, (n, b) in self.paths.items()},
        }


class Fetcher:
    """Segments of one object, by plan. Thread-safe; `close()` when done."""

    def __init__(
        self,
        plan: dict[str, Any],
        origin: Callable[[str], bytes],
        *,
        parallel: int = 8,
        token: str | None = None,
        nat: Any = None,
    ) -> None:
        """`nat`: how devices behind NAT (a `nat://` holder) are reached, a cdn/punch.py
        `NatPaths`; without it their shares are taken from other holders or the origin."""
        self.manifest = Manifest.from_dict(plan["manifest"])
        self.key = bytes.fromhex(plan["key"])
        self.holders: dict[str, list[dict[str, str]]] = plan.get("holders", {})
        self.token = token or plan.get("token", "")
        self.origin = origin
        self.nat = nat
        self.stats = FetchStats(size=self.manifest.size)
        signing = plan.get("receipts") or {}
        self._receipt_key: str = signing.get("key", "")
        self.stats.plan = signing.get("plan", "")
        self._sizes = {sha: seg.share_size for seg in self.manifest.segments for sha in seg.shares}
        self._http = peer_client()  # never the SDK's: nodes get no credential of the customer
        self._pool = ThreadPoolExecutor(max_workers=max(2, parallel), thread_name_prefix="cdn")
        self._window = max(1, parallel // 2)  # segments fetched ahead, in parallel
        self._segments = ThreadPoolExecutor(max_workers=self._window)
        self._given_up: set[str] = set()  # nodes gone, refusing or lying: not asked again
        self._node_slots: dict[str, threading.Semaphore] = {}
        self._slots_lock = threading.Lock()

    def close(self) -> None:
        if self.nat is not None:
            self.nat.close()
        self._segments.shutdown(wait=False, cancel_futures=True)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._http.close()

    def __enter__(self) -> Fetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- one share ----------------------------------------------------------------------------

    def _slot(self, node_id: str) -> threading.Semaphore:
        with self._slots_lock:
            return self._node_slots.setdefault(node_id, threading.Semaphore(PER_NODE))

    def _from_peer(self, sha: str, holder: dict[str, str], size: int) -> bytes:
        with self._slot(holder["node_id"]):
            return self._transfer(sha, holder, size)

    def _transfer(self, sha: str, holder: dict[str, str], size: int) -> bytes:
        url = f"{holder['url'].rstrip('/')}/shares/{sha}"
        behind_nat = url.startswith("nat://")  # reached through the rendezvous (core/reach.py)
        if not (behind_nat or url.startswith(("http://", "https://"))):
            raise ShareRefused(f"{holder['node_id']} has no HTTP address")
        if behind_nat and self.nat is None:
            raise ShareRefused(f"{holder['node_id']} is behind NAT and this fetch cannot punch")
        size = self._sizes.get(sha, size)  # the manifest's word, not the peer's
        t0 = time.monotonic()
        deadline = t0 + max(MIN_PATIENCE, size / MIN_RATE)
        try:
            if behind_nat:
                data, path = self.nat.fetch(holder, sha, size, self.token, deadline)
            else:
                data, path = read_share(self._http, url, self.token, sha, size, deadline), "direct"
        except BadShare as e:
            with self.stats.lock:
                self.stats.bad.append((holder["node_id"], sha))
                self.stats.bad_why[(holder["node_id"], sha)] = f"{holder['node_id']} {e}"
            raise
        with self.stats.lock:
            seen = self.stats.peers.setdefault(holder["node_id"], [0, 0.0])
            seen[0] += len(data)
            seen[1] += time.monotonic() - t0
            went = self.stats.paths.setdefault(path, [0, 0])
            went[0] += 1
            went[1] += len(data)
            route = self.stats.routes.setdefault(holder["node_id"], {})
            route[path] = route.get(path, 0) + 1
            if self._receipt_key and self.stats.plan:
                mac = receipt.sign(self._receipt_key, self.stats.plan, holder["node_id"], sha)
                self.stats.receipts.append({"node_id": holder["node_id"], "sha": sha, "mac": mac})
        return data

    def _share(self, sha: str, size: int) -> tuple[bytes, bool]:
        """The share from its peers in rank order; raises LookupError when none delivers."""
        for holder in self.holders.get(sha, []):
            if holder["node_id"] in self._given_up:
                continue
            try:
                data = self._from_peer(sha, holder, size)
            except (httpx.TimeoutException, TimeoutError):
                # slow or stalled: this share goes elsewhere, the node may serve others
                with self.stats.lock:
                    self.stats.failed_peers += 1
                continue
            except (OSError, httpx.HTTPError, httpx.InvalidURL, ValueError):
                # gone, refusing, or sending wrong bytes: not asked again in this fetch
                with self.stats.lock:
                    self.stats.failed_peers += 1
                self._given_up.add(holder["node_id"])
                continue
            self.stats.add(peers=len(data))
            return data, True
        raise LookupError(sha)

    def _cost(self, sha: str) -> int:
        """0 when a holder of `sha` is reached directly (or over a connection punched in this
        fetch), 1 behind NAT, 2 when every holder's punch failed (only the relay is left)."""
        best = 2
        for h in self.holders.get(sha, []):
            if h["node_id"] in self._given_up:
                continue
            if not h["url"].startswith("nat://"):
                return 0
            if self.nat is not None and self.nat.punched(h["node_id"]):
                return 0  # a punched connection is a direct one
            record = self.nat.records.get(h["node_id"]) if self.nat is not None else None
            best = min(best, 2 if record is not None and record.failures else 1)
        return best

    # -- one segment --------------------------------------------------------------------------

    def segment(self, index: int) -> bytes:
        """The plaintext of segment `index`."""
        seg = self.manifest.segments[index]
        k = self.manifest.k
        order = list(range(self.manifest.n))
        random.shuffle(order)
        # held shares first, and of those the ones a direct connection reaches (no punch,
        # no relay: core/reach.py), then those of devices behind NAT not known to refuse it
        order.sort(key=lambda i: (not self.holders.get(seg.shares[i]), self._cost(seg.shares[i])))
        got: dict[int, bytes] = {}
        running: dict[Future[tuple[bytes, bool]], int] = {}
        queue = list(order)
        while len(got) < k and (queue or running):
            while queue and len(running) + len(got) < k:
                i = queue.pop(0)
                running[self._pool.submit(self._share, seg.shares[i], seg.share_size)] = i
            if not running:
                break
            done, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for fut in done:
                i = running.pop(fut)
                with contextlib.suppress(LookupError):  # no peer gave it: try another share
                    got[i] = fut.result()[0]
        for fut in running:
            fut.cancel()
        # Not enough from peers: the origin has every share (asked for them in parallel).
        missing = [i for i in order if i not in got][: max(0, k - len(got))]
        for i, data in zip(
            missing, self._pool.map(lambda i: self.origin(seg.shares[i]), missing), strict=True
        ):
            self.stats.add(origin=len(data))
            got[i] = data
        try:
            return decode_segment(self.manifest, index, dict(list(got.items())[:k]), self.key)
        except CodecError:
            # a share that hashed right but does not decrypt cannot happen unless the manifest
            # lies; take every share from the origin and try once more
            fresh = {i: self.origin(seg.shares[i]) for i in order[:k]}
            self.stats.add(origin=sum(len(v) for v in fresh.values()))
            return decode_segment(self.manifest, index, fresh, self.key)

    def segments(self, first: int = 0, last: int | None = None) -> Iterator[bytes]:
        """Segments `first..last` in order, a few fetched ahead in parallel."""
        last = len(self.manifest.segments) - 1 if last is None else last
        t0 = time.perf_counter()
        ahead: list[Future[bytes]] = []
        nxt = first
        while nxt <= last or ahead:
            while nxt <= last and len(ahead) < self._window:
                ahead.append(self._segments.submit(self.segment, nxt))
                nxt += 1
            yield ahead.pop(0).result()
        self.stats.seconds += time.perf_counter() - t0
