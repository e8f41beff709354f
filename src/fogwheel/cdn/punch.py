"""Hole punching and the relay, both sides: the fetcher's `NatPaths`, the device's `NodeCalls`.

Issue #16 item 1 (b, c); the coordinator's half is cdn/relay.py, the decisions core/reach.py.

A punch (libp2p DCUtR over TCP): the fetcher binds a local port P and posts `/v1/cdn/punch`
*from P*, so the coordinator sees the address and port P maps to on the fetcher's NAT (if it
has one); the device, told through its long poll, binds Q and posts `/v1/nodes/me/punch/{id}`
from Q. The coordinator answers both at once with the other's observed address, and both
`connect()` from their bound port to it, again and again for a few seconds: the first SYN out
of each NAT opens the mapping the other's SYN comes in by (TCP simultaneous open, RFC 9293
§3.5). An endpoint-independent NAT keeps Q's mapping for the new destination, so it works; a
symmetric NAT gives the new connection another port and the punch fails: then the relay. On
the punched connection the fetcher speaks HTTP to the device's chunk server as it would
directly (the same token, the same bounded read, the hash checked), and keeps it for the
device's other shares in this fetch.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httpx

from fogwheel.core import reach

log = logging.getLogger("fogwheel.cdn")

DIAL_S = 3.0  # seconds both sides keep dialling after the rendezvous answers
ANSWER_MAX = 4096  # bytes of a rendezvous answer read
READ_STEP = 64 * 1024


class PunchFailed(OSError):
    """No connection came of the punch (a symmetric NAT, a device gone): relay instead."""


class RendezvousBusy(TimeoutError):
    """The rendezvous is at a bound (429): no verdict on the device's NAT. A TimeoutError,
    so the fetcher takes the share elsewhere and keeps the device for its other shares."""


def _bound(port: int = 0) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("0.0.0.0", port))
    return s


def post_from(
    sock: socket.socket,
    base_url: str,
    path: str,
    authorization: str,
    body: dict[str, Any] | None,
    timeout: float,
    tls: ssl.SSLContext | None = None,
) -> tuple[int, dict[str, Any]]:
    """POST JSON to the coordinator over `sock` (bound to the port to be observed): its status
    and JSON answer (read to at most ANSWER_MAX bytes)."""
    parts = urlsplit(base_url)
    host, port = parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
    sock.settimeout(timeout)
    sock.connect((host, port))
    conn_sock: socket.socket = sock
    if parts.scheme == "https":
        conn_sock = (tls or ssl.create_default_context()).wrap_socket(sock, server_hostname=host)
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    conn.sock = conn_sock
    data = json.dumps(body or {}).encode()
    conn.request(
        "POST",
        (parts.path.rstrip("/") + path),
        body=data,
        headers={
            "Authorization": authorization,
            "Content-Type": "application/json",
            "Connection": "close",
        },
    )
    r = conn.getresponse()
    raw = r.read(ANSWER_MAX + 1)
    if len(raw) > ANSWER_MAX:
        return 502, {}
    try:
        answer = json.loads(raw) if raw else {}
    except ValueError:
        answer = {}
    return r.status, answer if isinstance(answer, dict) else {}


def _peer(answer: dict[str, Any]) -> tuple[str, int]:
    peer = answer.get("peer")
    if not (isinstance(peer, dict) and isinstance(peer.get("port"), int)):
        raise PunchFailed("the rendezvous named no peer")
    host, port = str(peer.get("host")), int(peer["port"])
    socket.inet_aton(host)  # an IPv4 address, not a name to resolve
    if not 0 < port < 65536:
        raise PunchFailed("the rendezvous named no port")
    return host, port


def dial(local_port: int, peer: tuple[str, int], seconds: float = DIAL_S) -> socket.socket:
    """Connect from `local_port` to `peer` until one attempt completes (a simultaneous open
    counts) or `seconds` pass; PunchFailed then."""
    deadline = time.monotonic() + seconds
    last: Exception | None = None
    while time.monotonic() < deadline:
        s = _bound(local_port)
        s.settimeout(max(0.05, min(1.0, deadline - time.monotonic())))
        try:
            s.connect(peer)
            s.settimeout(None)
            return s
        except OSError as e:  # refused (its SYN came before ours), dropped, timed out
            last = e
            s.close()
            time.sleep(0.02)
    raise PunchFailed(f"no connection to {peer[0]}:{peer[1]} from port {local_port}: {last}")


# -- the fetcher's side ------------------------------------------------------------------------


class NatPaths:
    """Reaches devices behind NAT for one fetch: punched connections (kept per device) and
    the relay; `counts` says how many shares came by which path."""

    def __init__(
        self,
        base_url: str,
        authorization: str,
        content_id: str,
        http: httpx.Client,
        *,
        can_punch: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.authorization = authorization
        self.content_id = content_id
        self.http = http  # the SDK's: relayed shares come from the coordinator
        self.can_punch = can_punch
        self.clock = clock
        self.records: dict[str, reach.PunchRecord] = {}
        self._conns: dict[str, http.client.HTTPConnection] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    def _node_lock(self, node_id: str) -> threading.Lock:
        with self._lock:
            return self._locks.setdefault(node_id, threading.Lock())

    def fetch(
        self, holder: dict[str, str], sha: str, size: int, token: str, deadline: float
    ) -> tuple[bytes, reach.Path]:
        """Share `sha` of a device behind the rendezvous, verified; the path it came by.
        Raises OSError (nothing came) or ValueError (wrong bytes: `fetch.BadShare`)."""
        node_id = holder["node_id"]
        with self._lock:
            record = self.records.get(node_id)
        paths = reach.paths_for("rendezvous", record, self.clock(), can_punch=self.can_punch)
        last: Exception | None = None
        for path in paths:
            try:
                if path == "punch":
                    with self._node_lock(node_id):
                        with self._lock:  # another share's punch may have failed meanwhile
                            record = self.records.get(node_id)
                        now = self.clock()
                        if reach.paths_for("rendezvous", record, now, can_punch=True)[0] != path:
                            continue
                        data = self._over_punched(node_id, sha, size, token, deadline)
                else:
                    data = self._relayed(node_id, sha, size)
                return data, path
            except PunchFailed as e:
                last = e
                with self._lock:
                    self.records[node_id] = reach.after_punch(record, False, self.clock())
            except RendezvousBusy:  # no verdict: another holder or share, not the relay
                raise
        raise OSError(f"{node_id} could not be reached: {last}")

    def punched(self, node_id: str) -> bool:
        """Whether a punched connection to the device is open in this fetch."""
        return node_id in self._conns

    def _over_punched(
        self, node_id: str, sha: str, size: int, token: str, deadline: float
    ) -> bytes:
        conn = self._conns.get(node_id)
        if conn is None:
            conn = self._conns[node_id] = self._punch(node_id)
            with self._lock:
                self.records[node_id] = reach.after_punch(None, True, self.clock())
        try:
            return read_over(conn, sha, size, token, deadline)
        except (OSError, http.client.HTTPException) as e:
            self._conns.pop(node_id, None)
            conn.close()
            if isinstance(e, ShareNotSent):
                raise
            raise PunchFailed(f"the punched connection broke: {e}") from e

    def _punch(self, node_id: str) -> http.client.HTTPConnection:
        rendezvous = _bound()
        port = rendezvous.getsockname()[1]
        try:
            status, answer = post_from(
                rendezvous,
                self.base_url,
                "/v1/cdn/punch",
                self.authorization,
                {"content_id": self.content_id, "node_id": node_id},
                timeout=15.0,
            )
            if status == 429:
                raise RendezvousBusy(answer.get("error", "the rendezvous is busy"))
            if status != 200:
                raise PunchFailed(f"the rendezvous answered {status}: {answer.get('error', '')}")
            peer = _peer(answer)
            sock = dial(port, peer)
        finally:
            rendezvous.close()
        conn = http.client.HTTPConnection(peer[0], peer[1], timeout=15)
        conn.sock = sock
        return conn

    def _relayed(self, node_id: str, sha: str, size: int) -> bytes:
        r = self.http.post(
            "/v1/cdn/relay",
            json={"content_id": self.content_id, "node_id": node_id, "sha": sha},
            timeout=40.0,
        )
        if r.status_code != 200:
            raise ShareNotSent(f"the relay answered {r.status_code} for share {sha[:12]}")
        return _checked(r.content, sha, size)

    def close(self) -> None:
        for conn in list(self._conns.values()):
            conn.close()
        self._conns.clear()


class ShareNotSent(OSError):
    """The device (or the relay) answered but sent no share."""


def _checked(data: bytes, sha: str, size: int) -> bytes:
    from fogwheel.cdn.fetch import BadShare

    if len(data) > size:
        raise BadShare(f"sent more than {size} bytes for share {sha[:12]}")
    if hashlib.sha256(data).hexdigest() != sha:
        raise BadShare(f"sent share {sha[:12]} with the wrong bytes")
    return data


def read_over(
    conn: http.client.HTTPConnection, sha: str, size: int, token: str, deadline: float
) -> bytes:
    """GET share `sha` over a punched connection, read to at most `size + 1` bytes, its hash
    checked: fetch.read_share's rules on a connection of our own."""
    from fogwheel.cdn.fetch import BadShare

    conn.request(
        "GET",
        f"/shares/{sha}",
        headers={"Authorization": f"Bearer {token}", "Accept-Encoding": "identity"},
    )
    r = conn.getresponse()
    if r.status != 200:
        r.read(4096)
        raise ShareNotSent(f"answered {r.status} for share {sha[:12]}")
    if (r.getheader("content-encoding") or "identity").strip().lower() not in ("", "identity"):
        raise BadShare(f"sent share {sha[:12]} with a content coding")
    announced = r.getheader("content-length") or ""
    if not announced.isdigit() or int(announced) > size:
        raise BadShare(f"announced {announced[:20]!r} bytes for share {sha[:12]} of {size}")
    h = hashlib.sha256()
    parts: list[bytes] = []
    got = 0
    while got < int(announced):
        chunk = r.read(min(READ_STEP, int(announced) - got))
        if not chunk:
            raise ShareNotSent(f"hung up in share {sha[:12]}")
        got += len(chunk)
        h.update(chunk)
        parts.append(chunk)
        if time.monotonic() > deadline:
            raise TimeoutError(f"too slow for share {sha[:12]}")
    if h.hexdigest() != sha:
        raise BadShare(f"sent share {sha[:12]} with the wrong bytes")
    return b"".join(parts)


# -- the device's side -------------------------------------------------------------------------


class NodeCalls:
    """A device behind NAT: waits on the coordinator's long poll and carries out its calls.

    `call(method, path, **kw)` is the agent's authenticated request to the coordinator;
    `authorization` its bearer header (for the punch's own socket); `chunks` the ChunkServer
    (a punched connection is served by it; relayed bytes are shaped and counted by it)."""

    def __init__(
        self,
        call: Callable[..., httpx.Response],
        base_url: Callable[[], str],
        authorization: Callable[[], str],
        chunks: Any,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.call = call
        self.base_url = base_url
        self.authorization = authorization
        self.chunks = chunks
        self.tls = tls
        self.stop = threading.Event()
        self.counts = {"punch": 0, "punch_failed": 0, "relay": 0, "relay_failed": 0}
        self._busy = threading.Semaphore(8)  # calls carried out at once

    def start(self) -> NodeCalls:
        threading.Thread(target=self._loop, name="nat-calls", daemon=True).start()
        return self

    def _loop(self) -> None:
        delay = 0.5
        while not self.stop.is_set():
            try:
                r = self.call("GET", "/v1/nodes/me/calls", params={"wait": 20}, timeout=35.0)
                if r.status_code != 200:
                    raise OSError(f"the coordinator answered {r.status_code}")
                calls = r.json().get("calls", [])
                delay = 0.5
            except Exception as e:  # the coordinator restarting, a network blip
                log.debug("rendezvous poll failed: %s", e)
                self.stop.wait(delay)
                delay = min(delay * 2, 10.0)
                continue
            for c in calls[:16]:
                if isinstance(c, dict) and c.get("kind") in ("punch", "relay"):
                    threading.Thread(target=self._carry, args=(c,), daemon=True).start()

    def _carry(self, c: dict[str, Any]) -> None:
        if not self._busy.acquire(timeout=5.0):
            return  # too many at once: the fetcher's wait runs out, it takes another path
        try:
            if c["kind"] == "punch":
                self._punch(c)
            else:
                self._relay(c)
        except Exception as e:
            self.counts[f"{c['kind']}_failed"] += 1
            log.info("%s call %s failed: %s", c["kind"], str(c.get("id"))[:8], e)
        finally:
            self._busy.release()

    def _punch(self, c: dict[str, Any]) -> None:
        sid = str(c["id"])
        rendezvous = _bound()
        port = rendezvous.getsockname()[1]
        try:
            status, answer = post_from(
                rendezvous, self.base_url(), f"/v1/nodes/me/punch/{sid}",
                self.authorization(), None, timeout=10.0, tls=self.tls,
            )  # fmt: skip
            if status != 200:
                raise PunchFailed(f"the rendezvous answered {status}")
            peer = _peer(answer)
            if c.get("peer") != {"host": peer[0], "port": peer[1]}:
                raise PunchFailed("the rendezvous named another peer than it called for")
            sock = dial(port, peer)
        finally:
            rendezvous.close()
        self.counts["punch"] += 1
        self.chunks.serve_connection(sock, peer)

    def _relay(self, c: dict[str, Any]) -> None:
        sha, content_id = str(c["sha"]), str(c["content_id"])
        if self.chunks.store.content_of(sha) != content_id:
            raise ShareNotSent(f"share {sha[:12]} of {content_id} is not held here")
        data = self.chunks.store.get(sha)  # re-hashed: bad bytes are never sent
        if data is None:
            raise ShareNotSent(f"share {sha[:12]} failed its check here")
        sent = 0

        def pieces() -> Any:
            nonlocal sent
            for piece in self.chunks.pieces(data):
                sent += len(piece)
                yield bytes(piece)

        try:
            r = self.call("POST", f"/v1/nodes/me/relay/{c['id']}", content=pieces(), timeout=60.0)
        finally:
            self.chunks._count(content_id, sent)
        if r.status_code != 204:
            raise ShareNotSent(f"the coordinator answered {r.status_code} to the relayed share")
        self.counts["relay"] += 1


def close_quietly(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.close()
