"""The coordinator checks for itself: a customer's "bad share" report, and a node's serve address.

Accusations are not evidence. When a fetching client says a node sent a bad share, the
`ShareAuditor` fetches that share from that node itself — with a token it signs, read to at most
the share's size — and compares it with its hash (the coordinator knows every share's hash).
Only bad bytes it saw itself quarantine the node, with the reason recorded; a node that cannot
be reached is only ranked last in the accuser's own plans (store/cdn.py `cdn_doubt`). Checks
run on one background thread, from a bounded queue, at most `per_minute` for any one customer,
so reports cannot make the coordinator do unbounded work.

A node's serve address (`serve_url` in its sync) must name the address the sync comes from, in
a public range unless the fog is local (`--allow-private-serve`), and its chunk server must
prove it is that node: `GET /health?challenge=<nonce>` answers the node's id and an HMAC of the
nonce under the hash of the node's credential (`probe_proof`), which only that node and the
coordinator know. So a node cannot point the fetchers, or the coordinator, at another host or
port.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import ipaddress
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fogwheel.cdn.fetch import MIN_PATIENCE, BadShare, peer_client, read_share
from fogwheel.signing import sign_token

log = logging.getLogger("fogwheel.cdn")

CHECKS_PER_MINUTE = 10  # checks one customer's reports may cause
PENDING_PER_CUSTOMER = 16  # of one customer's accusations waiting at once
QUEUE_MAX = 256  # accusations waiting, everyone's
PROBE_TIMEOUT = 3.0  # seconds for a serve-address probe
PROBE_BODY_MAX = 4096  # bytes of a probe's answer read
PROBES_PER_MINUTE = 3  # a node that keeps changing its address is refused for a while
CHECK_TOKEN_SECONDS = 300.0  # as long as a plan's token


class AuditStore(Protocol):
    def cdn_audit_target(self, node_id: str, sha: str) -> dict[str, Any] | None: ...
    def cdn_share_failed(self, node_id: str, sha: str, reason: str, now: float) -> None: ...
    def cdn_clear_doubt(self, customer_id: str, node_id: str) -> None: ...


class ShareAuditor:
    """Checks accused shares on a background thread; `accuse` never blocks or fetches."""

    def __init__(
        self,
        store: AuditStore,
        signing_key: Ed25519PrivateKey,
        *,
        per_minute: int = CHECKS_PER_MINUTE,
        pending_per_customer: int = PENDING_PER_CUSTOMER,
        queue_max: int = QUEUE_MAX,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.signing_key = signing_key
        self.per_minute = per_minute
        self.pending_per_customer = pending_per_customer
        self.queue_max = queue_max
        self.clock = clock
        self._queue: collections.deque[tuple[str, str, str]] = collections.deque()
        self._queued: set[tuple[str, str]] = set()  # (node, sha) waiting: asked once
        self._pending: collections.Counter[str] = collections.Counter()
        self._recent: dict[str, collections.deque[float]] = {}  # customer -> check times
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.counts = {
            "accused": 0,  # (node, share) pairs customers called bad
            "refused": 0,  # over a customer's rate or the queue's bound: not checked
            "taken": 0,  # queued for a check
            "good": 0,  # checked: the node sent the right bytes
            "bad": 0,  # checked: wrong bytes (the node is quarantined)
            "unverifiable": 0,  # checked: gone, refusing, slow or no longer holding it
        }

    def accuse(self, customer_id: str, accusations: list[tuple[str, str]]) -> int:
        """Queue checks of `(node_id, sha)` a customer called bad; returns how many were taken
        (the rest are over this customer's rate or the queue's bound, and only rank the node
        last for that customer)."""
        now = self.clock()
        taken = 0
        with self._lock:
            recent = self._recent.setdefault(customer_id, collections.deque())
            while recent and recent[0] < now - 60.0:
                recent.popleft()
            for node_id, sha in accusations:
                self.counts["accused"] += 1
                if (node_id, sha) in self._queued:
                    continue
                if (
                    len(recent) >= self.per_minute
                    or self._pending[customer_id] >= self.pending_per_customer
                    or len(self._queue) >= self.queue_max
                ):
                    self.counts["refused"] += 1
                    continue
                recent.append(now)
                self._pending[customer_id] += 1
                self._queued.add((node_id, sha))
                self._queue.append((customer_id, node_id, sha))
                taken += 1
            if len(self._recent) > 10_000:  # forget customers with no recent checks
                for cust in [c for c, d in self._recent.items() if not d]:
                    del self._recent[cust]
        if taken:
            with self._lock:
                self.counts["taken"] += taken
            self._start()
            self._wake.set()
        return taken

    def figures(self) -> dict[str, int]:
        with self._lock:
            return {**self.counts, "queued": len(self._queue)}

    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="cdn-audit", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        http = peer_client()
        while True:
            with self._lock:
                item = self._queue.popleft() if self._queue else None
            if item is None:
                self._wake.wait(5.0)
                self._wake.clear()
                continue
            customer_id, node_id, sha = item
            try:
                outcome = self.check(http, customer_id, node_id, sha)
            except Exception:
                log.exception("checking share %s on %s failed", sha[:12], node_id)
                outcome = "unverifiable"
            finally:
                with self._lock:
                    self._queued.discard((node_id, sha))
                    self._pending[customer_id] -= 1
                    if self._pending[customer_id] <= 0:
                        del self._pending[customer_id]
            with self._lock:
                self.counts[outcome] += 1

    def check(self, http: Any, customer_id: str, node_id: str, sha: str) -> str:
        """Fetch `sha` from `node_id` as the coordinator and judge it: good | bad | unverifiable."""
        target = self.store.cdn_audit_target(node_id, sha)
        if target is None:
            return "unverifiable"  # it no longer holds it, serves nothing, or is out already
        now = self.clock()
        # the same shape as the accuser's own plan token, so the node cannot tell a check
        # from a fetch by the token (it still may by the address it comes from: see docs)
        token = sign_token(
            self.signing_key,
            {"c": target["content_id"], "exp": now + CHECK_TOKEN_SECONDS, "sub": customer_id},
        )
        url = f"{target['url'].rstrip('/')}/shares/{sha}"
        deadline = time.monotonic() + MIN_PATIENCE + target["size"] / (16 * 1024)
        try:
            read_share(http, url, token, sha, target["size"], deadline)
        except BadShare as e:
            reason = (
                f"the coordinator's own check of CDN share {sha[:12]}… (after a customer's "
                f"report): the node {e}"
            )
            log.warning("node %s quarantined: %s", node_id, reason)
            self.store.cdn_share_failed(node_id, sha, reason, self.clock())
            return "bad"
        except Exception as e:  # gone, refusing, slow: proves nothing either way
            log.info("could not check share %s on %s: %s", sha[:12], node_id, e)
            return "unverifiable"
        self.store.cdn_clear_doubt(customer_id, node_id)
        return "good"


# -- where a node serves from ------------------------------------------------------------------


def probe_proof(secret_hash: str, node_id: str, nonce: str) -> str:
    """What a node's chunk server answers to a probe: an HMAC of the nonce under the SHA-256 of
    its credential (hex), which the node knows and the coordinator keeps."""
    msg = f"fogwheel serve probe|{node_id}|{nonce}".encode()
    return hmac.new(secret_hash.encode(), msg, hashlib.sha256).hexdigest()


def address_refusal(url: str, peer: str | None, *, allow_private: bool) -> str | None:
    """Why `url` cannot be this node's serve address, seen from `peer` (the address its sync
    came from); None when it may be probed. Pure: no socket, no DNS."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return f"{url[:80]!r} is not a URL"
    if parts.scheme not in ("http", "https") or port is None:
        return "the serve address needs a scheme (http or https) and a port"
    try:
        ip = _plain(ipaddress.ip_address(host))
    except ValueError:
        return (
            f"the serve address names {host[:80]!r}: give the IP address this node connects "
            "from (--advertise http://IP:PORT)"
        )
    try:
        seen = _plain(ipaddress.ip_address(peer or ""))
    except ValueError:
        return "the coordinator cannot tell where this node connects from"
    if ip != seen:
        return (
            f"the serve address {ip} is not the address this node connects from ({seen}): "
            "advertise the address others reach you at, on the connection you sync over"
        )
    if not allow_private and not ip.is_global:
        return (
            f"{ip} is a loopback, private or reserved address: refused outside a local fog "
            "(the coordinator's --allow-private-serve)"
        )
    return None


def _plain(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> Any:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


class ServeScreen:
    """Checks a node's announced serve address (`screen`), probing its chunk server."""

    def __init__(
        self,
        secret_hash_of: Callable[[str], str | None],
        *,
        allow_private: bool,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.secret_hash_of = secret_hash_of
        self.allow_private = allow_private
        self.clock = clock
        self._probes: dict[str, collections.deque[float]] = {}
        self._lock = threading.Lock()

    def screen(self, node_id: str, url: str, peer: str | None) -> str | None:
        """None when `url` is `node_id`'s own chunk server at the address it connects from;
        else the reason it is refused. Probes at most PROBES_PER_MINUTE times a node."""
        refusal = address_refusal(url, peer, allow_private=self.allow_private)
        if refusal:
            return refusal
        now = self.clock()
        with self._lock:
            seen = self._probes.setdefault(node_id, collections.deque())
            while seen and seen[0] < now - 60.0:
                seen.popleft()
            if len(seen) >= PROBES_PER_MINUTE:
                return "too many serve addresses announced in a minute: try again later"
            seen.append(now)
            if len(self._probes) > 100_000:
                self._probes = {node_id: seen}
        return self.probe(node_id, url)

    def probe(self, node_id: str, url: str) -> str | None:
        secret_hash = self.secret_hash_of(node_id)
        if secret_hash is None:
            return "this node has no credential on record"
        nonce = secrets.token_hex(16)
        body = b""
        deadline = time.monotonic() + 2 * PROBE_TIMEOUT  # a trickling answer is cut off too
        try:
            with (
                peer_client(PROBE_TIMEOUT) as http,
                http.stream("GET", f"{url.rstrip('/')}/health", params={"challenge": nonce}) as r,
            ):
                if r.status_code != 200:
                    return f"its chunk server answered {r.status_code} to the coordinator's probe"
                for chunk in r.iter_raw(1024):
                    body += chunk
                    if len(body) > PROBE_BODY_MAX:
                        return "its chunk server's answer to the probe is too long"
                    if time.monotonic() > deadline:
                        return "its chunk server is too slow to answer the probe"
        except Exception as e:
            return (
                f"the coordinator cannot reach its chunk server at {url[:120]}: {type(e).__name__}"
            )
        try:
            answer = json.loads(body)
            proof = answer["proof"] if answer.get("node_id") == node_id else None
        except (ValueError, TypeError, KeyError, AttributeError):
            proof = None
        if not isinstance(proof, str) or not hmac.compare_digest(
            proof, probe_proof(secret_hash, node_id, nonce)
        ):
            return f"the server at {url[:120]} did not prove it is this node's chunk server"
        return None
