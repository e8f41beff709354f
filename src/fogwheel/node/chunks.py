"""The node side of the peer-assisted CDN: shares kept on disk within a quota, served by token.

A share is opaque bytes (one erasure-coded, encrypted piece of a customer's content) named by
its SHA-256. `ShareStore` keeps them as `root/ab/<sha>` with a `<sha>.cid` sidecar naming the
content they belong to, and re-hashes on every read so a node never hands out bytes that rotted
or were changed on its disk. `ChunkServer` serves them over plain HTTP to whoever shows a token
the coordinator signed for that content (`signing.sign_token`); `decide` is its policy, kept
apart from the sockets. `GET /health?challenge=NONCE` answers the coordinator's probe of this
node's serve address: the node's id and `probe_answer` (an HMAC under the hash of its
credential), so nobody can announce someone else's host and port as their chunk server.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qs

from fogwheel.blobs.store import is_sha256, sha256_hex, write_atomically
from fogwheel.errors import FogwheelError
from fogwheel.signing import verify_token

CONTENT_ID_MAX = 256
CHALLENGE_MAX = 64  # characters of a probe's nonce
_SIDECAR = ".cid"
_TMP = ".tmp-"


class QuotaExceeded(FogwheelError):
    """A share would take the store over its disk quota; delete shares or raise the quota."""


@dataclass(frozen=True)
class _Held:
    size: int
    content_id: str


class ShareStore:
    """Shares as files `root/ab/<sha>` (plus `<sha>.cid`), within `quota_bytes`; thread-safe.

    The index lives in memory and is rebuilt from the directory on open. A put writes the
    sidecar first and renames the share into place last, so every share on disk has its
    sidecar; whatever a crash leaves half done (temporary files, lone sidecars or shares) is
    removed on the next open.
    """

    def __init__(self, root: Path, quota_bytes: int) -> None:
        self.root = Path(root)
        self.quota_bytes = quota_bytes
        self._lock = threading.Lock()
        self._index: dict[str, _Held] = {}
        self._used = 0
        self._reserved = 0  # bytes of puts being written now
        self._bad: list[str] = []
        self.root.mkdir(parents=True, exist_ok=True)
        self._rebuild()

    @property
    def used_bytes(self) -> int:
        with self._lock:
            return self._used

    def shas(self) -> list[str]:
        with self._lock:
            return sorted(self._index)

    def has(self, sha: str) -> bool:
        with self._lock:
            return sha in self._index

    def content_of(self, sha: str) -> str | None:
        with self._lock:
            held = self._index.get(sha)
        return held.content_id if held else None

    def put(self, sha: str, data: bytes, content_id: str) -> None:
        """Keep `data` as share `sha` of `content_id`; a share already held is left as it is.

        ValueError when `data` does not hash to `sha` (or either name is malformed, or the share
        is held for another content); QuotaExceeded when it does not fit.
        """
        path = self._path(sha)
        _check_content_id(content_id)
        if sha256_hex(data) != sha:
            raise ValueError(f"share bytes hash to {sha256_hex(data)}, not to their name {sha}")
        with self._lock:
            held = self._index.get(sha)
            if held is not None:
                if held.content_id != content_id:
                    raise ValueError(f"share {sha} is held for content {held.content_id!r}")
                return
            if self._used + self._reserved + len(data) > self.quota_bytes:
                raise QuotaExceeded(
                    f"share {sha} ({len(data)} bytes) does not fit: {self._used} of "
                    f"{self.quota_bytes} bytes used; delete shares or raise the quota"
                )
            self._reserved += len(data)
        try:
            path.parent.mkdir(exist_ok=True)
            write_atomically(_sidecar(path), content_id.encode(), prefix=_TMP)
            write_atomically(path, data, prefix=_TMP)
        finally:
            with self._lock:
                self._reserved -= len(data)
        with self._lock:
            if sha not in self._index:
                self._index[sha] = _Held(len(data), content_id)
                self._used += len(data)

    def get(self, sha: str) -> bytes | None:
        """The share's bytes, verified; None when not held or when it no longer hashes to `sha`.

        A share that fails its check (changed on disk) or went missing is dropped from the store
        and reported by `take_bad`, so the coordinator can re-place it elsewhere.
        """
        if not self.has(sha):
            return None
        try:
            data: bytes | None = self._path(sha).read_bytes()
        except FileNotFoundError:
            data = None
        if data is not None and sha256_hex(data) == sha:
            return data
        self._drop(sha, bad=True)
        return None

    def delete(self, sha: str) -> bool:
        """Forget share `sha` and free its space; False when it was not held."""
        return self._drop(sha, bad=False)

    def take_bad(self) -> list[str]:
        """The shares found corrupt or missing since the last call, in the order found."""
        with self._lock:
            bad, self._bad = self._bad, []
        return bad

    def scrub(self) -> list[str]:
        """Re-hash every share (slow: reads them all); the failures also go to `take_bad`."""
        return [sha for sha in self.shas() if self.get(sha) is None]

    def _drop(self, sha: str, *, bad: bool) -> bool:
        with self._lock:
            held = self._index.pop(sha, None)
            if held is None:
                return False
            self._used -= held.size
            if bad and sha not in self._bad:
                self._bad.append(sha)
        path = self._path(sha)
        path.unlink(missing_ok=True)  # the share first: a lone sidecar is cleaned up on open
        _sidecar(path).unlink(missing_ok=True)
        return True

    def _path(self, sha: str) -> Path:
        if not is_sha256(sha):
            raise ValueError(f"not a SHA-256 hex digest: {sha!r}")
        return self.root / sha[:2] / sha

    def _rebuild(self) -> None:
        for sub in self.root.iterdir():
            if len(sub.name) != 2 or not sub.is_dir():
                continue
            for entry in os.scandir(sub):
                name = entry.name
                if name.startswith(_TMP):
                    Path(entry.path).unlink(missing_ok=True)  # a put cut short by a crash
                elif name.endswith(_SIDECAR):
                    sha = name.removesuffix(_SIDECAR)
                    if not (is_sha256(sha) and (sub / sha).exists()):
                        Path(entry.path).unlink(missing_ok=True)
                elif is_sha256(name) and name.startswith(sub.name):
                    self._adopt(Path(entry.path), entry.stat().st_size)

    def _adopt(self, path: Path, size: int) -> None:
        try:
            content_id = _sidecar(path).read_text()
            _check_content_id(content_id)
        except (FileNotFoundError, ValueError):
            path.unlink(missing_ok=True)  # no owner on record: it cannot be served
            _sidecar(path).unlink(missing_ok=True)
            return
        self._index[path.name] = _Held(size, content_id)
        self._used += size


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + _SIDECAR)


def _check_content_id(content_id: str) -> None:
    if not isinstance(content_id, str) or not 0 < len(content_id) <= CONTENT_ID_MAX:
        raise ValueError(f"a content id is 1 to {CONTENT_ID_MAX} characters: {content_id!r}")
    if not content_id.isprintable():
        raise ValueError(f"a content id has no control characters: {content_id!r}")


# -- who gets what: the policy, without sockets ----------------------------------------------


@dataclass(frozen=True)
class Decision:
    """What to answer one request: a status, a one-line reason, and the share to send on 200."""

    status: int
    reason: str
    sha: str | None = None
    content_id: str | None = None


def decide(
    target: str,
    authorization: str | None,
    public_key_b64: str | None,
    content_of: Callable[[str], str | None],
    now: float,
) -> Decision:
    """The answer to `GET target`: 404 for any path but a share's, then the token, then the share.

    The token comes from `?token=` or `Authorization: Bearer`; it is checked before the share is
    looked up, so nobody without a valid token learns which shares a node holds.
    """
    path, _, query = target.partition("?")
    if path == "/health":
        return Decision(200, "ok")
    prefix, _, sha = path.partition("/shares/")
    if prefix or not is_sha256(sha):
        return Decision(404, "not found")
    if public_key_b64 is None:
        return Decision(503, "this node does not know the coordinator's key yet")
    token = _token_from(query, authorization)
    if token is None:
        return Decision(403, "a token is required: ?token= or Authorization: Bearer")
    payload = verify_token(public_key_b64, token, now)
    if payload is None:
        return Decision(403, "the token is malformed, expired or not signed by the coordinator")
    content_id = content_of(sha)
    if content_id is None:
        return Decision(404, "no such share")
    if payload.get("c") != content_id:
        return Decision(403, "the token is for other content")
    return Decision(200, "ok", sha, content_id)


def probe_answer(identity: tuple[str, str] | None, target: str) -> bytes | None:
    """The JSON body answering `GET /health?challenge=NONCE` for `identity` (node id, SHA-256
    hex of its credential); None when `target` is no probe or the node has not joined yet.
    The coordinator's side is cdn/audit.py `probe_proof` (the same HMAC)."""
    path, _, query = target.partition("?")
    if path != "/health" or identity is None:
        return None
    nonces = parse_qs(query).get("challenge", [])
    if len(nonces) != 1 or not 0 < len(nonces[0]) <= CHALLENGE_MAX or not nonces[0].isalnum():
        return None
    node_id, secret_hash = identity
    msg = f"fogwheel serve probe|{node_id}|{nonces[0]}".encode()
    proof = hmac.new(secret_hash.encode(), msg, hashlib.sha256).hexdigest()
    return json.dumps({"node_id": node_id, "proof": proof}).encode()


def _token_from(query: str, authorization: str | None) -> str | None:
    tokens = parse_qs(query, keep_blank_values=True).get("token", [])
    if len(tokens) == 1 and tokens[0]:
        return tokens[0]
    if tokens:
        return None  # empty or given twice
    scheme, _, credentials = (authorization or "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return None


# -- the server --------------------------------------------------------------------------------


class UplinkShaper:
    """A token bucket shared by all transfers: emulates an uplink of `bits_per_second`."""

    def __init__(self, bits_per_second: float) -> None:
        self.rate = bits_per_second / 8  # bytes per second
        self.burst = int(min(64 * 1024, max(1024, self.rate / 10)))
        self._lock = threading.Lock()
        self._tokens = float(self.burst)
        self._last = time.monotonic()

    def take(self, nbytes: int) -> None:
        """Wait until `nbytes` may go out; waits are reserved in order, so senders share fairly."""
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
            self._last = now
            self._tokens -= nbytes
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
        if wait > 0:
            time.sleep(wait)


class ChunkServer:
    """Serves a `ShareStore` over HTTP to holders of coordinator-signed tokens.

    `GET|HEAD /shares/<sha>` and `GET /health` (with `?challenge=`: the probe's answer, once
    `identity` is set); see `decide` and `probe_answer`. `public_key_b64` may be set after
    start (the agent learns it when it joins); until then shares answer 503. Counts the bytes
    sent per content id for `take_served`.
    """

    def __init__(
        self,
        store: ShareStore,
        public_key_b64: str | None,
        host: str = "127.0.0.1",
        port: int = 0,
        upload_limit_bps: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.public_key_b64 = public_key_b64
        self.identity: tuple[str, str] | None = None  # (node id, sha256 of its credential)
        self.host = host
        self.port = port
        self.shaper = UplinkShaper(upload_limit_bps) if upload_limit_bps else None
        self.clock = clock
        self._served: dict[str, int] = {}
        self._served_lock = threading.Lock()
        self._httpd: _ShareHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("the chunk server is not running; call start() first")
        host, port = self._httpd.server_name, self._httpd.server_port
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def start(self) -> str:
        """Listen and serve on a daemon thread; returns the base URL."""
        if self._httpd is not None:
            raise RuntimeError("the chunk server is already running")
        self._httpd = _ShareHTTPServer(self, (self.host, self.port))
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.2},
            name="fogwheel-chunks",
            daemon=True,
        )
        self._thread.start()
        return self.url

    def stop(self) -> None:
        """Stop listening and cut every open connection; quiet, and safe to call twice."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.close_connections()
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def serve_connection(self, sock: socket.socket, address: tuple[str, int]) -> None:
        """Serve HTTP on a connection made elsewhere (one punched through NAT, cdn/punch.py),
        on a thread of its own, as if it had been accepted here."""
        httpd = self._httpd
        if httpd is None:
            sock.close()
            return
        httpd.process_request(sock, address)

    def pieces(self, data: bytes) -> Iterator[memoryview]:
        """`data` in pieces as fast as this server's uplink lets them out (relayed shares)."""
        return _pieces(data, self.shaper)

    def take_served(self) -> dict[str, int]:
        """Bytes sent per content id since the last call."""
        with self._served_lock:
            served, self._served = self._served, {}
        return served

    def __enter__(self) -> ChunkServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _count(self, content_id: str, nbytes: int) -> None:
        with self._served_lock:
            self._served[content_id] = self._served.get(content_id, 0) + nbytes


class _ShareHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 128

    def __init__(self, chunks: ChunkServer, address: tuple[str, int]) -> None:
        self.chunks = chunks
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(address, _ShareHandler)

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)  # HTTPServer's would ask DNS for our name
        host, port = cast(tuple[str, int], self.server_address[:2])
        self.server_name, self.server_port = host, port

    def finish_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        try:
            super().finish_request(request, client_address)
        finally:
            with self._open_lock:
                self._open.discard(request)

    def close_connections(self) -> None:
        with self._open_lock:
            open_now = list(self._open)
        for sock in open_now:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hangs up mid-answer is normal here, not worth a traceback


class _ShareHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fogwheel-node"
    sys_version = ""
    timeout = 30  # seconds a connection may sit idle or trickle

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._answer(send_body=True)

    def do_HEAD(self) -> None:
        self._answer(send_body=False)

    def _method_not_allowed(self) -> None:
        self.close_connection = True  # its body, if any, is left unread
        self._text(405, "method not allowed", send_body=True, allow="GET, HEAD")

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _method_not_allowed

    def _answer(self, *, send_body: bool) -> None:
        chunks = cast(_ShareHTTPServer, self.server).chunks
        answer = probe_answer(chunks.identity, self.path)
        if answer is not None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            if send_body:
                self.wfile.write(answer)
            return
        decision = decide(
            self.path,
            self.headers.get("Authorization"),
            chunks.public_key_b64,
            chunks.store.content_of,
            chunks.clock(),
        )
        if decision.sha is None or decision.content_id is None:
            self._text(decision.status, decision.reason, send_body=send_body)
            return
        data = chunks.store.get(decision.sha)
        if data is None:  # failed its hash check just now: never send bad bytes
            self._text(404, "no such share", send_body=send_body)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Share-Sha256", decision.sha)
        self.end_headers()
        if send_body:
            sent = 0
            try:
                for piece in _pieces(data, chunks.shaper):
                    self.wfile.write(piece)
                    sent += len(piece)
            except OSError:
                self.close_connection = True
            finally:
                chunks._count(decision.content_id, sent)

    def _text(self, status: int, reason: str, *, send_body: bool, allow: str | None = None) -> None:
        body = (reason + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        if allow:
            self.send_header("Allow", allow)
        self.end_headers()
        if send_body:
            self.wfile.write(body)


def _pieces(data: bytes, shaper: UplinkShaper | None) -> Iterator[memoryview]:
    view = memoryview(data)
    step = shaper.burst if shaper else len(data) or 1
    for start in range(0, len(data), step):
        piece = view[start : start + step]
        if shaper:
            shaper.take(len(piece))
        yield piece
