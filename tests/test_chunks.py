"""Peer-assisted CDN, node side: shares kept within a quota and served only against tokens."""

from __future__ import annotations

import base64
import hashlib
import json
import random
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fogwheel.node.chunks import ChunkServer, QuotaExceeded, ShareStore, decide
from fogwheel.signing import (
    TOKEN_MAX_CHARS,
    public_key_b64,
    sign_lease,
    sign_token,
    verify_token,
)

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))  # fixed, so failures repeat
PUB = public_key_b64(KEY)
OTHER_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
NOW = 1_700_000_000.0


def a_share(size: int = 1000, seed: int = 0) -> tuple[str, bytes]:
    data = random.Random(seed).randbytes(size)
    return hashlib.sha256(data).hexdigest(), data


def token_for(content_id: str, ttl: float = 60.0, key: Ed25519PrivateKey = KEY) -> str:
    return sign_token(key, {"c": content_id, "exp": time.time() + ttl, "sub": "tester"})


# -- tokens -----------------------------------------------------------------------------------


def test_a_signed_token_verifies_and_returns_its_payload() -> None:
    token = sign_token(KEY, {"c": "movie-1", "exp": NOW + 60, "sub": "viewer-7"})
    assert verify_token(PUB, token, NOW) == {"c": "movie-1", "exp": NOW + 60, "sub": "viewer-7"}


def test_a_token_is_url_safe_and_compact() -> None:
    token = sign_token(KEY, {"c": "movie-1", "exp": NOW + 60})
    assert len(token) < 200
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")


@pytest.mark.parametrize("exp", [NOW, NOW - 1, NOW - 3600])
def test_an_expired_token_does_not_verify(exp: float) -> None:
    assert verify_token(PUB, sign_token(KEY, {"c": "x", "exp": exp}), NOW) is None


@pytest.mark.parametrize("part", [0, 1])
def test_a_token_changed_anywhere_does_not_verify(part: int) -> None:
    token = sign_token(KEY, {"c": "movie-1", "exp": NOW + 60})
    parts = token.split(".")
    for i in range(len(parts[part])):
        changed = list(parts)
        swapped = "A" if changed[part][i] != "A" else "B"
        changed[part] = changed[part][:i] + swapped + changed[part][i + 1 :]
        assert verify_token(PUB, ".".join(changed), NOW) is None, (part, i)


def test_a_token_with_a_forged_payload_does_not_verify() -> None:
    token = sign_token(KEY, {"c": "movie-1", "exp": NOW + 60})
    forged = base64.urlsafe_b64encode(b'{"c":"movie-2","exp":1800000000}').rstrip(b"=").decode()
    assert verify_token(PUB, forged + "." + token.split(".")[1], NOW) is None


def test_a_token_signed_by_another_key_does_not_verify() -> None:
    assert verify_token(PUB, sign_token(OTHER_KEY, {"c": "x", "exp": NOW + 60}), NOW) is None


def test_a_token_over_the_size_limit_does_not_verify() -> None:
    token = sign_token(KEY, {"c": "x", "exp": NOW + 60, "sub": "s" * TOKEN_MAX_CHARS})
    assert len(token) > TOKEN_MAX_CHARS
    assert verify_token(PUB, token, NOW) is None


@pytest.mark.parametrize(
    "payload",
    [
        {"c": "x"},
        {"c": "x", "exp": "1800000000"},
        {"c": "x", "exp": True},
        {"c": "x", "exp": None},
    ],
)
def test_a_token_without_a_numeric_expiry_does_not_verify(payload: dict[str, Any]) -> None:
    assert verify_token(PUB, sign_token(KEY, payload), NOW) is None


@pytest.mark.parametrize("raw", [b'["c","x"]', b"1800000000", b'{"exp":Infinity}', b"not json"])
def test_a_signed_body_that_is_not_a_payload_does_not_verify(raw: bytes) -> None:
    body = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    sig = KEY.sign(b"fogwheel-token-v1\n" + raw)
    assert verify_token(PUB, body + "." + base64.urlsafe_b64encode(sig).decode(), NOW) is None


@pytest.mark.parametrize(
    "token", ["", ".", "abc", "a.b", "a.b.c", "a b.c", "éé.éé", "=.=", None, 42, b"a.b"]
)
def test_a_malformed_token_does_not_verify_and_does_not_raise(token: Any) -> None:
    assert verify_token(PUB, token, NOW) is None


@pytest.mark.parametrize("pubkey", ["", "not base64!", base64.b64encode(b"short").decode()])
def test_a_malformed_public_key_verifies_no_token(pubkey: str) -> None:
    assert verify_token(pubkey, sign_token(KEY, {"c": "x", "exp": NOW + 60}), NOW) is None


def test_a_lease_signature_never_passes_for_a_token() -> None:
    payload = {"c": "x", "exp": NOW + 60}
    body = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    sig = KEY.sign(body)  # the same key signing bare JSON, as it signs leases
    b64 = base64.urlsafe_b64encode
    assert verify_token(PUB, f"{b64(body).decode()}.{b64(sig).decode()}", NOW) is None
    assert sign_lease(KEY, {"task_id": 1}) not in sign_token(KEY, payload)


# -- the store --------------------------------------------------------------------------------


def test_a_stored_share_comes_back_with_its_content(tmp_path: Path) -> None:
    store = ShareStore(tmp_path, quota_bytes=10_000)
    sha, data = a_share()
    store.put(sha, data, "movie-1")
    assert store.get(sha) == data
    assert store.has(sha) and store.content_of(sha) == "movie-1"
    assert store.shas() == [sha] and store.used_bytes == len(data)


def test_a_share_whose_bytes_do_not_match_its_name_is_refused(tmp_path: Path) -> None:
    store = ShareStore(tmp_path, quota_bytes=10_000)
    sha, data = a_share()
    with pytest.raises(ValueError, match="hash"):
        store.put(sha, data + b"!", "movie-1")
    assert not store.has(sha) and store.used_bytes == 0


@pytest.mark.parametrize("sha", ["", "../../etc/passwd", "AB" * 32, "ab" * 31, "zz" * 32])
def test_a_malformed_share_name_is_refused(tmp_path: Path, sha: str) -> None:
    store = ShareStore(tmp_path, quota_bytes=10_000)
    with pytest.raises(ValueError):
        store.put(sha, b"x", "movie-1")
    assert store.get(sha) is None


@pytest.mark.parametrize("content_id", ["", "x" * 257, "a\nb"])
def test_a_malformed_content_id_is_refused(tmp_path: Path, content_id: str) -> None:
    sha, data = a_share()
    with pytest.raises(ValueError):
        ShareStore(tmp_path, quota_bytes=10_000).put(sha, data, content_id)


def test_the_quota_is_enforced_and_freed_by_delete(tmp_path: Path) -> None:
    store = ShareStore(tmp_path, quota_bytes=2500)
    (a, da), (b, db), (c, dc) = (a_share(1000, seed) for seed in range(3))
    store.put(a, da, "m")
    store.put(b, db, "m")
    with pytest.raises(QuotaExceeded, match="does not fit"):
        store.put(c, dc, "m")
    assert not store.has(c) and store.used_bytes == 2000
    assert store.delete(a) and not store.delete(a)
    store.put(c, dc, "m")
    assert store.shas() == sorted([b, c]) and store.used_bytes == 2000


def test_putting_a_held_share_again_changes_nothing(tmp_path: Path) -> None:
    store = ShareStore(tmp_path, quota_bytes=1500)
    sha, data = a_share(1000)
    store.put(sha, data, "m")
    store.put(sha, data, "m")  # would not fit twice
    assert store.used_bytes == 1000
    with pytest.raises(ValueError, match="held for content"):
        store.put(sha, data, "other")


def test_the_store_survives_a_restart(tmp_path: Path) -> None:
    store = ShareStore(tmp_path, quota_bytes=10_000)
    shares = [a_share(100 * (i + 1), i) for i in range(5)]
    for i, (sha, data) in enumerate(shares):
        store.put(sha, data, f"movie-{i % 2}")
    store.delete(shares[0][0])
    again = ShareStore(tmp_path, quota_bytes=10_000)
    assert again.shas() == store.shas()
    assert again.used_bytes == store.used_bytes == sum(len(d) for _, d in shares[1:])
    for i, (sha, data) in enumerate(shares[1:], start=1):
        assert again.get(sha) == data and again.content_of(sha) == f"movie-{i % 2}"


def test_a_restart_cleans_up_what_a_crash_left_half_done(tmp_path: Path) -> None:
    store = ShareStore(tmp_path, quota_bytes=10_000)
    (kept, kd), (lone, _), (orphan, od) = (a_share(100, seed) for seed in range(3))
    store.put(kept, kd, "m")
    (tmp_path / kept[:2] / ".tmp-abc").write_bytes(b"half a share")
    (tmp_path / lone[:2]).mkdir(exist_ok=True)
    (tmp_path / lone[:2] / f"{lone}.cid").write_text("m")  # sidecar written, share never renamed
    (tmp_path / orphan[:2]).mkdir(exist_ok=True)
    (tmp_path / orphan[:2] / orphan).write_bytes(od)  # a share nobody recorded an owner for
    again = ShareStore(tmp_path, quota_bytes=10_000)
    assert again.shas() == [kept] and again.used_bytes == 100
    leftovers = {p.name for p in tmp_path.rglob("*") if p.is_file()}
    assert leftovers == {kept, f"{kept}.cid"}


def test_a_share_changed_on_disk_is_dropped_and_reported_once(tmp_path: Path) -> None:
    store = ShareStore(tmp_path, quota_bytes=10_000)
    (sha, data), (good, gd) = a_share(seed=1), a_share(seed=2)
    store.put(sha, data, "m")
    store.put(good, gd, "m")
    (tmp_path / sha[:2] / sha).write_bytes(b"X" + data[1:])
    assert store.get(sha) is None
    assert store.take_bad() == [sha] and store.take_bad() == []
    assert not store.has(sha) and store.used_bytes == len(gd)
    assert ShareStore(tmp_path, quota_bytes=10_000).shas() == [good]


def test_a_scrub_finds_every_damaged_or_missing_share(tmp_path: Path) -> None:
    store = ShareStore(tmp_path, quota_bytes=100_000)
    shares = [a_share(100, seed) for seed in range(6)]
    for sha, data in shares:
        store.put(sha, data, "m")
    (tmp_path / shares[1][0][:2] / shares[1][0]).write_bytes(b"")
    (tmp_path / shares[4][0][:2] / shares[4][0]).unlink()
    assert sorted(store.scrub()) == sorted([shares[1][0], shares[4][0]])
    assert sorted(store.take_bad()) == sorted([shares[1][0], shares[4][0]])


# -- the policy -------------------------------------------------------------------------------

SHA, _ = a_share()


def _content_of(sha: str) -> str | None:
    return "movie-1" if sha == SHA else None


def _token(content: str = "movie-1", exp: float = NOW + 60, key: Any = KEY) -> str:
    return sign_token(key, {"c": content, "exp": exp})


@pytest.mark.parametrize(
    ("target", "authorization", "status"),
    [
        ("/health", None, 200),
        (f"/shares/{SHA}?token={_token()}", None, 200),
        (f"/shares/{SHA}", f"Bearer {_token()}", 200),
        (f"/shares/{SHA}", f"bearer  {_token()}", 200),
        (f"/shares/{SHA}", None, 403),
        (f"/shares/{SHA}?token=", None, 403),
        (f"/shares/{SHA}?token={_token()}&token={_token()}", None, 403),
        (f"/shares/{SHA}", f"Basic {_token()}", 403),
        (f"/shares/{SHA}?token=garbage", None, 403),
        (f"/shares/{SHA}?token={_token(exp=NOW)}", None, 403),
        (f"/shares/{SHA}?token={_token(key=OTHER_KEY)}", None, 403),
        (f"/shares/{SHA}?token={_token('movie-2')}", None, 403),
        (f"/shares/{'0' * 64}?token={_token()}", None, 404),
        (f"/shares/{'0' * 64}", None, 403),  # no token: nothing learned about what is held
        (f"/shares/{SHA.upper()}?token={_token()}", None, 404),
        (f"/shares/{SHA}/?token={_token()}", None, 404),
        (f"/x/shares/{SHA}?token={_token()}", None, 404),
        ("/shares/../../etc/passwd", None, 404),
        ("/", None, 404),
        ("/shares/", None, 404),
    ],
)
def test_who_gets_a_share(target: str, authorization: str | None, status: int) -> None:
    assert decide(target, authorization, PUB, _content_of, NOW).status == status


def test_a_node_without_the_coordinator_key_serves_nothing_yet() -> None:
    decision = decide(f"/shares/{SHA}?token={_token()}", None, None, _content_of, NOW)
    assert decision.status == 503


# -- the server, over real HTTP ---------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> ShareStore:
    return ShareStore(tmp_path / "shares", quota_bytes=10_000_000)


@pytest.fixture
def server(store: ShareStore) -> Iterator[ChunkServer]:
    with ChunkServer(store, PUB) as server:
        yield server


@pytest.fixture
def http(server: ChunkServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as client:
        yield client


def raw_get(url: str, target: str) -> int:
    """The status for a request line sent byte for byte, with no client normalizing the path."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return int(answer.split(b" ", 2)[1])


def served_settled(server: ChunkServer, expect: dict[str, int]) -> dict[str, int]:
    """`take_served` summed until it reaches `expect`: a handler counts after its last write."""
    total: dict[str, int] = {}
    deadline = time.monotonic() + 5
    while total != expect and time.monotonic() < deadline:
        for content, nbytes in server.take_served().items():
            total[content] = total.get(content, 0) + nbytes
        time.sleep(0.01)
    return total


def test_health_answers_ok(http: httpx.Client) -> None:
    r = http.get("/health")
    assert r.status_code == 200 and r.text == "ok\n"


def test_a_valid_token_gets_the_exact_bytes(store: ShareStore, http: httpx.Client) -> None:
    sha, data = a_share(300_000)
    store.put(sha, data, "movie-1")
    r = http.get(f"/shares/{sha}", params={"token": token_for("movie-1")})
    assert r.status_code == 200 and r.content == data
    assert r.headers["content-type"] == "application/octet-stream"
    assert r.headers["content-length"] == str(len(data))
    assert r.headers["x-share-sha256"] == sha
    r = http.get(f"/shares/{sha}", headers={"Authorization": f"Bearer {token_for('movie-1')}"})
    assert r.content == data


def test_head_answers_the_headers_only(store: ShareStore, http: httpx.Client) -> None:
    sha, data = a_share()
    store.put(sha, data, "movie-1")
    r = http.head(f"/shares/{sha}", params={"token": token_for("movie-1")})
    assert r.status_code == 200 and r.content == b""
    assert r.headers["content-length"] == str(len(data)) and r.headers["x-share-sha256"] == sha
    assert http.head(f"/shares/{sha}").status_code == 403


@pytest.mark.parametrize(
    "token",
    [
        None,
        "garbage",
        "a.b",
        token_for("movie-1", ttl=-1),
        token_for("movie-2"),
        token_for("movie-1", key=OTHER_KEY),
    ],
    ids=["none", "garbage", "malformed", "expired", "other-content", "other-key"],
)
def test_a_bad_token_gets_403_and_no_bytes(
    store: ShareStore, http: httpx.Client, token: str | None
) -> None:
    sha, data = a_share()
    store.put(sha, data, "movie-1")
    r = http.get(f"/shares/{sha}", params={"token": token} if token else None)
    assert r.status_code == 403
    assert data not in r.content and r.headers["content-type"].startswith("text/plain")
    assert r.text.count("\n") == 1


def test_an_unknown_share_gets_404(http: httpx.Client) -> None:
    r = http.get(f"/shares/{'0' * 64}", params={"token": token_for("movie-1")})
    assert r.status_code == 404


def test_a_share_tampered_on_disk_is_never_served(
    store: ShareStore, server: ChunkServer, http: httpx.Client
) -> None:
    sha, data = a_share()
    store.put(sha, data, "movie-1")
    (store.root / sha[:2] / sha).write_bytes(data[:-1] + b"\x00")
    for _ in range(3):
        r = http.get(f"/shares/{sha}", params={"token": token_for("movie-1")})
        assert r.status_code == 404 and data[:100] not in r.content
    assert store.take_bad() == [sha]
    assert server.take_served() == {}


@pytest.mark.parametrize(
    "target",
    [
        "/shares/../../etc/passwd",
        "/shares/%2e%2e/%2e%2e/etc/passwd",
        "/shares/..%2f..%2fetc%2fpasswd",
        "/../../../../etc/passwd",
        "/shares/" + "g" * 64,
        "/shares/",
        "/shares",
        "/",
    ],
)
def test_path_traversal_and_other_paths_get_404(server: ChunkServer, target: str) -> None:
    assert raw_get(server.url, target) == 404


def test_a_share_named_in_capitals_or_with_a_suffix_gets_404(
    store: ShareStore, server: ChunkServer
) -> None:
    sha, data = a_share()
    store.put(sha, data, "movie-1")
    token = token_for("movie-1")
    assert raw_get(server.url, f"/shares/{sha}?token={token}") == 200
    for target in (sha.upper(), f"{sha}/", f"{sha}/..", f"{sha}%00", f"./{sha}"):
        assert raw_get(server.url, f"/shares/{target}?token={token}") == 404, target


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_other_methods_get_405(http: httpx.Client, method: str) -> None:
    r = http.request(method, "/health", content=b"x" * 10)
    assert r.status_code == 405 and r.headers["allow"] == "GET, HEAD"


def test_bytes_served_are_counted_per_content(store: ShareStore, server: ChunkServer) -> None:
    (a, da), (b, db) = a_share(1000, 1), a_share(3000, 2)
    store.put(a, da, "movie-1")
    store.put(b, db, "movie-2")
    with httpx.Client(base_url=server.url) as http:
        for _ in range(2):
            http.get(f"/shares/{a}", params={"token": token_for("movie-1")})
        http.get(f"/shares/{b}", params={"token": token_for("movie-2")})
        http.head(f"/shares/{b}", params={"token": token_for("movie-2")})
        http.get(f"/shares/{b}", params={"token": token_for("movie-1")})  # refused: not counted
    expect = {"movie-1": 2000, "movie-2": 3000}
    assert served_settled(server, expect) == expect
    assert server.take_served() == {}


def test_many_clients_at_once_all_get_their_bytes(store: ShareStore, server: ChunkServer) -> None:
    shares = [a_share(50_000, seed) for seed in range(8)]
    for sha, data in shares:
        store.put(sha, data, "movie-1")

    limits = httpx.Limits(max_connections=32)
    with httpx.Client(base_url=server.url, limits=limits) as http:

        def fetch(i: int) -> bool:
            sha, data = shares[i % len(shares)]
            r = http.get(f"/shares/{sha}", params={"token": token_for("movie-1")})
            return r.content == data

        with ThreadPoolExecutor(max_workers=32) as pool:
            assert all(pool.map(fetch, range(256)))
    expect = {"movie-1": 256 * 50_000}
    assert served_settled(server, expect) == expect


def test_the_coordinator_key_can_be_learned_after_start(store: ShareStore) -> None:
    sha, data = a_share()
    store.put(sha, data, "movie-1")
    with ChunkServer(store, None) as server:
        url = f"{server.url}/shares/{sha}"
        assert httpx.get(url, params={"token": token_for("movie-1")}).status_code == 503
        server.public_key_b64 = PUB
        assert httpx.get(url, params={"token": token_for("movie-1")}).content == data


def test_stop_closes_the_port_and_open_connections(store: ShareStore) -> None:
    server = ChunkServer(store, PUB)
    url = server.start()
    with httpx.Client(base_url=url) as kept_alive:
        assert kept_alive.get("/health").status_code == 200
        started = time.monotonic()
        server.stop()
        assert time.monotonic() - started < 2
        with pytest.raises(httpx.TransportError):
            kept_alive.get("/health")
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/health")
    server.stop()  # twice is fine


def test_an_upload_limit_shapes_the_uplink(store: ShareStore) -> None:
    sha, data = a_share(100_000)
    store.put(sha, data, "movie-1")
    with ChunkServer(store, PUB, upload_limit_bps=8 * 400_000) as server:
        started = time.monotonic()
        r = httpx.get(f"{server.url}/shares/{sha}", params={"token": token_for("movie-1")})
        elapsed = time.monotonic() - started
    assert r.content == data
    assert 0.12 < elapsed < 2  # 100 kB at 400 kB/s, less one 40 kB burst: about 0.15 s


def test_the_server_logs_nothing_per_request(
    store: ShareStore, server: ChunkServer, capsys: pytest.CaptureFixture[str]
) -> None:
    sha, data = a_share()
    store.put(sha, data, "movie-1")
    threads = [
        threading.Thread(target=httpx.get, args=(f"{server.url}/shares/{sha}",)) for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
