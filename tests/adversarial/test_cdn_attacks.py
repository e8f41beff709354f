"""Attacks on the CDN, against a real coordinator and real nodes (findings 4, 5 and 8 of issue 10).

- A customer who calls every holder of its object bad quarantines nobody honest; a node that
  really serves wrong bytes is still caught, with its reason shown, and the operator (only the
  operator) can pardon it.
- A node that announces someone else's host and port as its chunk server is refused: it is
  never ranked or asked, and no request anywhere carries the customer's API key; the fetcher
  follows no redirect.
- A node that answers 600 MB for an 8 KB share costs a fetch at most the share's size: the
  result stays exact, the coordinator's memory stays bounded, the node is caught.
- A node that claims 2**50 bytes served earns nothing beyond its receipted bytes, and the
  publisher is charged only for those; receipts pay once, and forged ones pay nothing.

Hostile nodes are `HostileNode`s (tests/adversarial/hostile.py) with a chunk server of their own
(`EvilChunks`): they fetch their assigned shares from the origin like an honest node and then
serve whatever the test chooses.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from fogwheel.cdn import receipts as receipt
from fogwheel.cdn.client import fetch, plan, publish
from fogwheel.cdn.codec import build_manifest, encode_file, new_content_id, new_key
from fogwheel.cdn.fetch import Fetcher
from fogwheel.client import Client
from fogwheel.localfog import LocalFog
from fogwheel.node.chunks import probe_answer
from tests.adversarial.hostile import HostileNode

HUGE = 600 << 20  # what the greedy node sends for one share


def wait_for(what: str, check: Callable[[], Any], timeout: float = 90.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting until {what}")


# -- listeners the attacker (or the victim) runs ---------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False


class Recorder:
    """A listener that is nobody's chunk server: it records every request it gets (method,
    path, headers) and answers 200 'ok', or a redirect to `/elsewhere` for share paths."""

    def __init__(self, redirect: bool = False) -> None:
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        rec = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a: Any) -> None:
                pass

            def do_GET(self) -> None:
                rec.requests.append(("GET", self.path, dict(self.headers.items())))
                if redirect and self.path.startswith("/shares/"):
                    self.send_response(302)
                    self.send_header("Location", "/elsewhere")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Length", "3")
                self.end_headers()
                self.wfile.write(b"ok\n")

        self.httpd = _Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def saw(self, secret: str) -> bool:
        return any(secret in f"{p} {h}" for _, p, h in self.requests)


class EvilChunks:
    """A hostile node's own chunk server: answers the coordinator's probe as that node (it has
    its credential) and serves its shares `honest`ly, `wrong` (a byte flipped) or `huge`
    (HUGE bytes, no length announced)."""

    def __init__(self, node: HostileNode, shares: dict[str, bytes], mode: str) -> None:
        self.mode = mode
        self.sent = 0
        self.share_requests = 0
        identity = (node.node_id, hashlib.sha256(node.credential.encode()).hexdigest())
        evil = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a: Any) -> None:
                pass

            def do_GET(self) -> None:
                answer = probe_answer(identity, self.path)
                if answer is not None:
                    self._send(200, answer)
                    return
                sha = self.path.partition("?")[0].removeprefix("/shares/")
                data = shares.get(sha)
                if data is None:
                    self._send(404, b"no such share\n")
                    return
                evil.share_requests += 1
                if evil.mode == "wrong":
                    self._send(200, data[:-1] + bytes([data[-1] ^ 0xFF]))
                elif evil.mode == "huge":
                    self.send_response(200)
                    self.send_header("Connection", "close")
                    self.end_headers()
                    block = os.urandom(1 << 20)
                    try:
                        while evil.sent < HUGE:
                            self.wfile.write(block)
                            evil.sent += len(block)
                    except OSError:
                        pass
                else:
                    self._send(200, data)

            def _send(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                if status == 200 and evil.mode != "huge":
                    evil.sent += len(body)

        self.httpd = _Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class HostileCdnNode:
    """A HostileNode that keeps CDN shares like an honest one (fetched from the origin when
    assigned, confirmed `stored`) and serves them through EvilChunks; it syncs every 0.3 s with
    whatever extra claims `claims` holds (e.g. `served`)."""

    def __init__(self, fog: LocalFog, mode: str = "honest", *, serve_url: str | None = None):
        self.node = HostileNode(fog.url, fog.join_token, name=f"hostile-{mode}")
        r = self.node.join()
        assert r.status_code == 201, r.text
        self.shares: dict[str, bytes] = {}
        self.chunks = EvilChunks(self.node, self.shares, mode)
        self.serve_url = serve_url or self.chunks.url
        self.claims: dict[str, Any] = {}
        self.syncs = 0
        self._to_confirm: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        first = self._sync_once(serve_url=self.serve_url)  # the probe happens in this sync
        assert first.status_code == 200, first.text
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    @property
    def node_id(self) -> str:
        return self.node.node_id

    def _sync_once(self, **extra: Any) -> httpx.Response:
        with self._lock:
            body: dict[str, Any] = {**self.claims, **extra}
            if self._to_confirm:
                body["stored"] = list(self._to_confirm)
            r = self.node.sync(**body)
            if r.status_code == 200:
                self._to_confirm = [s for s in self._to_confirm if s not in body.get("stored", [])]
                self.syncs += 1
                for item in r.json().get("store", []):
                    blob = self.node.get_blob(item["sha"])
                    if blob.status_code == 200:
                        self.shares[item["sha"]] = blob.content
                        self._to_confirm.append(item["sha"])
        return r

    def sync(self, **extra: Any) -> httpx.Response:
        return self._sync_once(**extra)

    def _loop(self) -> None:
        while not self._stop.wait(0.3):
            with contextlib.suppress(httpx.HTTPError):
                self._sync_once()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.chunks.close()
        self.node.close()


# -- the fog -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fog(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFog]:
    with LocalFog(3, lease_seconds=2.0, workdir=tmp_path_factory.mktemp("fog")) as fog:
        yield fog


def new_customer(fog: LocalFog, name: str) -> str:
    r = httpx.post(
        f"{fog.url}/v1/customers",
        params={"name": name},
        headers={"authorization": f"Bearer {fog.admin_key}"},
    )
    assert r.status_code == 201, r.text
    return r.json()["api_key"]


def nodes_by_id(fog: LocalFog) -> dict[str, dict[str, Any]]:
    r = httpx.get(f"{fog.url}/v1/nodes", headers={"authorization": f"Bearer {fog.admin_key}"})
    return {n["id"]: n for n in r.json()["nodes"]}


def holders_of(client: Client, cid: str) -> dict[str, list[str]]:
    p = plan(client, cid)
    shas = [s for seg in p["manifest"]["segments"] for s in seg["shares"]]
    return {s: [h["node_id"] for h in p["holders"].get(s, [])] for s in shas}


def publish_bytes(client: Client, tmp: Path, data: bytes, k: int = 2, n: int = 4) -> str:
    path = tmp / f"obj-{secrets.token_hex(4)}.bin"
    path.write_bytes(data)
    cid = publish(client, path, k=k, n=n)
    wait_for("every share is stored on a node", lambda: all(holders_of(client, cid).values()))
    return cid


def audits(fog: LocalFog) -> dict[str, int]:
    r = httpx.get(f"{fog.url}/v1/cdn/stats", headers={"authorization": f"Bearer {fog.admin_key}"})
    return r.json()["audits"]


def audits_done(fog: LocalFog) -> bool:
    a = audits(fog)
    return a["taken"] > 0 and a["good"] + a["bad"] + a["unverifiable"] >= a["taken"]


# -- finding 4: accusations are not evidence ---------------------------------------------------


def test_a_customer_calling_every_holder_bad_quarantines_nobody(
    fog: LocalFog, tmp_path: Path
) -> None:
    data = os.urandom(100_000)
    with Client(fog.url, fog.api_key) as client:
        cid = publish_bytes(client, tmp_path, data)
        holders = holders_of(client, cid)
        everyone = sorted(nodes_by_id(fog))
        # every holder of every share, and every node for every share for good measure
        bad = [{"node_id": n, "sha": s} for s in holders for n in everyone]
        report = {"size": len(data), "from_peers": 0, "from_origin": 0, "seconds": 0.1, "bad": bad}
        for _ in range(3):  # and again, and again
            r = client._request("POST", f"/v1/cdn/objects/{cid}/fetches", json=report)
            assert r.status_code == 204
        wait_for("the coordinator has checked what it took", lambda: audits_done(fog))
        a = audits(fog)
        assert a["good"] >= 1 and a["bad"] == 0
        assert a["refused"] > 0  # more accusations than a customer may cause checks
        for n in nodes_by_id(fog).values():
            assert n["state"] != "quarantined", n
            assert n["disputed"] == 0 and n["quarantine_reason"] is None, n
        # the accused still serve: a fetch is exact and comes from the peers
        stats = fetch(client, cid, tmp_path / "copy.bin")
        assert (tmp_path / "copy.bin").read_bytes() == data
        assert stats.from_peers > 0


def test_a_node_that_really_serves_wrong_bytes_is_caught_with_its_reason_and_can_be_pardoned(
    fog: LocalFog, tmp_path: Path
) -> None:
    liar = HostileCdnNode(fog, "wrong")
    try:
        key = new_customer(fog, "accuser")
        data = os.urandom(100_000)
        with Client(fog.url, key) as client:
            cid = publish_bytes(client, tmp_path, data)
            wait_for("the liar holds a share", lambda: liar.shares)
            held = holders_of(client, cid)
            mine = [s for s, hs in held.items() if liar.node_id in hs]
            assert mine
            # the customer's fetch stays exact whoever it asks
            fetch(client, cid, tmp_path / "copy.bin")
            assert (tmp_path / "copy.bin").read_bytes() == data
            # and its report (true this time) makes the coordinator look for itself
            honest = next(n for s, hs in held.items() for n in hs if n != liar.node_id)
            report = {
                "size": len(data),
                "from_peers": 0,
                "from_origin": 0,
                "seconds": 0.1,
                "bad": [{"node_id": liar.node_id, "sha": mine[0]}]
                + [{"node_id": honest, "sha": s} for s in held],
            }
            client._request("POST", f"/v1/cdn/objects/{cid}/fetches", json=report)
            caught = wait_for(
                "the liar is quarantined",
                lambda: (
                    nodes_by_id(fog)[liar.node_id]["state"] == "quarantined"
                    and nodes_by_id(fog)[liar.node_id]
                ),
            )
            assert "coordinator's own check" in caught["quarantine_reason"]
            assert nodes_by_id(fog)[honest]["state"] != "quarantined"
            # its shares are placed elsewhere; the fetch is still exact
            wait_for(
                "the liar's share has another holder",
                lambda: any(h != liar.node_id for h in holders_of(client, cid)[mine[0]]),
            )
        env = {**os.environ, "FOGWHEEL_COORDINATOR": fog.url}
        listing = subprocess.run(
            [sys.executable, "-m", "fogwheel", "nodes", "--api-key", fog.api_key],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
        assert listing.returncode == 0, listing.stderr
        assert f"{liar.node_id} quarantined: the coordinator's own check" in " ".join(
            listing.stdout.split()
        )
        # a customer cannot pardon; the operator can
        url = f"{fog.url}/v1/nodes/{liar.node_id}/pardon"
        assert httpx.post(url, headers={"authorization": f"Bearer {key}"}).status_code == 403
        assert httpx.post(url).status_code == 401
        pardon = subprocess.run(
            [
                sys.executable,
                "-m",
                "fogwheel",
                "nodes",
                "pardon",
                liar.node_id,
                "--admin-key",
                fog.admin_key,
            ],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
        assert pardon.returncode == 0, pardon.stderr
        after = nodes_by_id(fog)[liar.node_id]
        assert after["state"] == "up" and after["quarantine_reason"] is None
        assert after["disputed"] == 0 and after["agreed"] == 0  # back on probation
        missing = subprocess.run(
            [
                sys.executable,
                "-m",
                "fogwheel",
                "nodes",
                "pardon",
                "n-nobody",
                "--admin-key",
                fog.admin_key,
            ],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
        assert missing.returncode == 1 and "no node n-nobody" in missing.stderr
    finally:
        liar.close()


# -- finding 8: the CDN talks only to nodes as placed -------------------------------------------


def test_a_node_announcing_another_listener_is_never_used_and_no_key_reaches_it(
    fog: LocalFog, tmp_path: Path
) -> None:
    victim = Recorder()
    squatter = HostileCdnNode(fog, "honest", serve_url=victim.url)  # someone else's port
    turncoat = HostileCdnNode(fog, "honest")  # its own chunk server first: placed, trusted
    try:
        data = os.urandom(100_000)
        with Client(fog.url, fog.api_key) as client:
            cid = publish_bytes(client, tmp_path, data)
            wait_for("the turncoat holds a share", lambda: turncoat.shares)
            wait_for(
                "the turncoat appears in the plan",
                lambda: any(turncoat.node_id in hs for hs in holders_of(client, cid).values()),
            )
            assert not squatter.shares  # refused: nothing placed on it
            assert all(squatter.node_id not in hs for hs in holders_of(client, cid).values())
            # now the trusted one points everyone at the victim's port
            assert turncoat.sync(serve_url=victim.url).status_code == 200
            assert all(turncoat.node_id not in hs for hs in holders_of(client, cid).values())
            fetch(client, cid, tmp_path / "copy.bin")
            assert (tmp_path / "copy.bin").read_bytes() == data
            streamed = httpx.get(
                f"{fog.url}/v1/cdn/objects/{cid}/content",
                headers={"authorization": f"Bearer {fog.api_key}"},
                timeout=60,
            )
            assert streamed.content == data
        # the victim only ever saw the coordinator's probes: no share request, no key
        assert victim.requests, "the coordinator never probed the announced address"
        assert all(p.startswith("/health?challenge=") for _, p, _ in victim.requests)
        assert not victim.saw(fog.api_key)
        assert not victim.saw(fog.admin_key)
    finally:
        squatter.close()
        turncoat.close()
        victim.close()


def local_plan(tmp: Path, data: bytes, url: str, k: int = 2, n: int = 3):
    """A plan made here (no coordinator) whose every share is held by `url`; the origin dict."""
    path = tmp / "local.bin"
    path.write_bytes(data)
    key, cid = new_key(), new_content_id()
    segments, origin = [], {}
    for seg, shares in encode_file(path, key, cid, "local", k, n, 1 << 20):
        segments.append(seg)
        origin.update({hashlib.sha256(s).hexdigest(): s for s in shares})
    manifest = build_manifest(cid, "local", len(data), 1 << 20, k, n, segments)
    holders = {sha: [{"node_id": "n-evil", "url": url}] for sha in origin}
    return {
        "manifest": manifest.to_dict(),
        "key": key.hex(),
        "holders": holders,
        "token": "share-token",
        "receipts": {"plan": f"{int(time.time()) + 60}.{'0' * 16}", "key": "00" * 32},
    }, origin


def test_the_fetcher_sends_only_the_share_token_and_follows_no_redirect(tmp_path: Path) -> None:
    victim = Recorder(redirect=True)
    os.environ["FOGWHEEL_API_KEY_CANARY"] = "fwc-canary"  # nothing from the environment goes
    try:
        data = os.urandom(50_000)
        the_plan, origin = local_plan(tmp_path, data, victim.url)
        with Fetcher(the_plan, origin.__getitem__) as f:
            got = b"".join(f.segments())
            stats = f.stats
        assert got == data and stats.from_origin > 0 and not stats.receipts
        shares = [r for r in victim.requests if r[1].startswith("/shares/")]
        assert shares
        assert not [r for r in victim.requests if r[1] == "/elsewhere"]  # no redirect followed
        for _, _, headers in shares:
            auth = {k.lower(): v for k, v in headers.items()}.get("authorization")
            assert auth == "Bearer share-token"
    finally:
        os.environ.pop("FOGWHEEL_API_KEY_CANARY", None)
        victim.close()


def test_a_share_served_as_600_mb_costs_at_most_its_size(tmp_path: Path) -> None:
    """The fetcher alone (the SDK's path): reads stop at the share's size."""
    data = os.urandom(16_000)  # k=2: shares of about 8 KB
    holder = HostileNode("http://127.0.0.1:1", "x")  # only for EvilChunks' identity
    holder.node_id, holder.credential = "n-greedy", "secret"
    the_plan, origin = local_plan(tmp_path, data, "")
    greedy = EvilChunks(holder, origin, "huge")
    try:
        for hs in the_plan["holders"].values():
            hs[0]["url"] = greedy.url
        with Fetcher(the_plan, origin.__getitem__) as f:
            got = b"".join(f.segments())
            stats = f.stats
        assert got == data
        assert stats.bad and all(n == "n-evil" for n, _ in stats.bad)
        assert not stats.receipts  # nothing to pay for
        time.sleep(0.5)
        assert greedy.sent < 64 << 20, greedy.sent  # the reader hung up long before 600 MB
    finally:
        greedy.close()
        holder.close()


def test_the_coordinators_stream_reads_at_most_a_shares_size_and_stays_small(
    fog: LocalFog, tmp_path: Path
) -> None:
    greedy = HostileCdnNode(fog, "huge")
    try:
        data = os.urandom(16_000)  # one segment, k=2 of n=4: shares of about 8 KB
        proc = psutil.Process(fog.coordinator.pid)  # type: ignore[union-attr]
        with Client(fog.url, fog.api_key) as client:
            cid = publish_bytes(client, tmp_path, data)
            wait_for("the greedy node holds a share", lambda: greedy.shares)
            wait_for(
                "the greedy node is in the plan",
                lambda: any(greedy.node_id in hs for hs in holders_of(client, cid).values()),
            )
        baseline = proc.memory_info().rss
        peak = [baseline]
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.05):
                peak[0] = max(peak[0], proc.memory_info().rss)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        url = f"{fog.url}/v1/cdn/objects/{cid}/content"
        headers = {"authorization": f"Bearer {fog.api_key}"}
        try:
            for _ in range(30):  # until the stream has asked the greedy node (shares go random)
                r = httpx.get(url, headers=headers, timeout=120)
                assert r.status_code == 200 and r.content == data
                if greedy.chunks.share_requests:
                    break
        finally:
            done.set()
            sampler.join()
        assert greedy.chunks.share_requests, "the stream never asked the greedy node"
        time.sleep(0.5)
        assert greedy.chunks.sent < 64 << 20, greedy.chunks.sent
        assert peak[0] - baseline < 200 << 20, (baseline, peak[0])
        # the coordinator saw the bytes itself: evidence
        caught = wait_for(
            "the greedy node is quarantined",
            lambda: (
                nodes_by_id(fog)[greedy.node_id]["state"] == "quarantined"
                and nodes_by_id(fog)[greedy.node_id]
            ),
        )
        assert "more than" in caught["quarantine_reason"]
    finally:
        greedy.close()


# -- finding 5: CDN bytes are paid against receipts -----------------------------------------------


def cdn_entries(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in history if "cdn" in e["memo"]]


def test_inflated_served_counts_earn_nothing_beyond_receipts(fog: LocalFog, tmp_path: Path) -> None:
    boaster = HostileCdnNode(fog, "honest")
    try:
        key = new_customer(fog, "publisher")
        data = os.urandom(100_000)
        with Client(fog.url, key) as client:
            cid = publish_bytes(client, tmp_path, data)
            wait_for("the boaster holds a share", lambda: boaster.shares)
            boaster.claims = {"served": {cid: 1 << 50}}
            wait_for("a few boasting syncs", lambda: boaster.syncs > 8, timeout=60)
            # one honest fetch by the SDK: receipts for what the peers really sent
            stats = fetch(client, cid, tmp_path / "copy.bin")
            assert (tmp_path / "copy.bin").read_bytes() == data
            assert stats.receipts
            # the boaster's own share, fetched and receipted by hand: paid once, not twice
            p = plan(client, cid)
            sha = next(
                s
                for s in boaster.shares
                if any(h["node_id"] == boaster.node_id for h in p["holders"].get(s, []))
            )
            got = httpx.get(
                f"{boaster.chunks.url}/shares/{sha}",
                headers={"authorization": f"Bearer {p['token']}"},
            )
            assert hashlib.sha256(got.content).hexdigest() == sha
            plan_id, rkey = p["receipts"]["plan"], p["receipts"]["key"]
            good = {
                "node_id": boaster.node_id,
                "sha": sha,
                "mac": receipt.sign(rkey, plan_id, boaster.node_id, sha),
            }
            forged = [
                {"node_id": boaster.node_id, "sha": s, "mac": secrets.token_hex(16)}
                for s in boaster.shares
                if s != sha
            ]
            report = {
                "size": 0,
                "from_peers": 0,
                "from_origin": 0,
                "seconds": 0.1,
                "plan": plan_id,
                "receipts": [good, good, *forged],
            }
            for _ in range(3):
                r = client._request("POST", f"/v1/cdn/objects/{cid}/fetches", json=report)
                assert r.status_code == 204
            usage = client._request("GET", "/v1/usage", params={"limit": 1000}).json()
            s = client._request("GET", "/v1/cdn/stats").json()
        share_size = len(got.content)
        by_peer = {n: int(b) for n, (b, _) in stats.peers.items()}
        receipted = sum(by_peer.values()) + share_size
        assert sum(s["served_by_node"].values()) == receipted
        assert (
            s["served_by_node"].get(boaster.node_id, 0)
            == by_peer.get(boaster.node_id, 0) + share_size
        )
        assert s["claimed_by_node"][boaster.node_id] >= 1 << 50  # noted, advisory
        # charged for receipted bytes only: one micro-credit a node a report at most here
        charged = -sum(e["amount"] for e in cdn_entries(usage["history"]))
        assert 0 < charged <= len(by_peer) + 1, usage["history"]
        earned = boaster.node.http.get("/v1/nodes/me/earnings", params={"limit": 1000}).json()
        assert 0 <= earned["balance"] <= 2, earned
    finally:
        boaster.close()


def test_receipts_verify_and_bind_plan_node_and_share() -> None:
    secret = b"s" * 32
    plan_id, key = receipt.new_plan(secret, "cust", "c" + "0" * 24, 1000.0)
    mac = receipt.sign(key, plan_id, "n1", "a" * 64)
    assert receipt.valid(secret, plan_id, "cust", "c" + "0" * 24, "n1", "a" * 64, mac, 1000.0)
    for args in [
        (plan_id, "other", "c" + "0" * 24, "n1", "a" * 64),  # another customer
        (plan_id, "cust", "c" + "1" * 24, "n1", "a" * 64),  # another object
        (plan_id, "cust", "c" + "0" * 24, "n2", "a" * 64),  # another node
        (plan_id, "cust", "c" + "0" * 24, "n1", "b" * 64),  # another share
    ]:
        assert not receipt.valid(secret, *args, mac, 1000.0)
    assert not receipt.valid(secret, plan_id, "cust", "c" + "0" * 24, "n1", "a" * 64, mac, 1e9)
    assert not receipt.valid(
        b"t" * 32, plan_id, "cust", "c" + "0" * 24, "n1", "a" * 64, mac, 1000.0
    )
    assert receipt.plan_expired("junk", 0) is None
    assert json.dumps(receipt.plan_expired(plan_id, 0)) == "false"
