"""Signed work: the coordinator signs every task spec, and a node runs only what verifies."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fogwheel import Client
from fogwheel.errors import TaskFailed
from fogwheel.localfog import LocalFog
from fogwheel.signing import (
    SIGNED_FIELDS,
    canonical,
    fingerprint,
    join_string,
    key_pin,
    load_or_create_key,
    parse_join_string,
    pin_matches,
    public_key_b64,
    sign_lease,
    verify_lease,
)

REFUSAL = "refused: task spec signature does not verify"

# -- sign and verify ----------------------------------------------------------------------

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))  # fixed, so failures repeat
PUB = public_key_b64(KEY)


def a_lease(**changes: Any) -> dict[str, Any]:
    lease = {
        "task_id": 17,
        "job_id": 4,
        "attempt": 1,
        "kind": "command",
        "fn": None,
        "args": None,
        "command": ["echo", "hello"],
        "inputs": {"in.txt": {"sha": "ab" * 32, "size": 3, "data": "eHl6"}},
        "outputs": ["out.txt"],
        "limits": {"wall_s": 600.0, "cpu_s": None, "memory_mb": 256},
        "lease_expires": 1_700_000_000.1 + 0.2,
    }
    lease.update(changes)
    return lease


def test_a_signed_lease_verifies() -> None:
    lease = a_lease()
    assert verify_lease(PUB, lease, sign_lease(KEY, lease))


def test_a_signed_lease_still_verifies_after_a_trip_through_json() -> None:
    lease = a_lease()
    signature = sign_lease(KEY, lease)
    assert verify_lease(PUB, json.loads(json.dumps({**lease, "signature": signature})), signature)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("task_id", 18),
        ("job_id", 5),
        ("attempt", 2),
        ("kind", "python"),
        ("fn", {"sha": "cd" * 32, "size": 1, "data": "eA=="}),
        ("args", {"sha": "ef" * 32, "size": 1, "data": "eQ=="}),
        ("command", ["echo", "pwned"]),
        ("inputs", {"in.txt": {"sha": "ab" * 32, "size": 3, "data": "cHdu"}}),
        ("outputs", ["/etc/passwd"]),
        ("limits", {"wall_s": 600.0, "cpu_s": None, "memory_mb": 4096}),
        ("lease_expires", 1_800_000_000.0),
        ("keep_in", "ab" * 32),  # another customer's kept state
        ("keep_out", "cd" * 32),
    ],
)
def test_changing_any_signed_field_breaks_the_signature(field: str, value: Any) -> None:
    signature = sign_lease(KEY, a_lease())
    assert field in SIGNED_FIELDS
    assert not verify_lease(PUB, a_lease(**{field: value}), signature)


def test_dropping_a_signed_field_breaks_the_signature() -> None:
    lease = a_lease(command=["true"])
    signature = sign_lease(KEY, lease)
    del lease["command"]
    assert not verify_lease(PUB, lease, signature)


@pytest.mark.parametrize("byte", [0, 31, 63])
def test_a_changed_signature_does_not_verify(byte: int) -> None:
    lease = a_lease()
    raw = bytearray(base64.b64decode(sign_lease(KEY, lease)))
    raw[byte] ^= 0x01
    assert not verify_lease(PUB, lease, base64.b64encode(bytes(raw)).decode())


@pytest.mark.parametrize(
    "signature", [None, "", "not base64!", "AAAA", base64.b64encode(b"x" * 64)]
)
def test_a_missing_or_malformed_signature_does_not_verify(signature: Any) -> None:
    assert not verify_lease(PUB, a_lease(), signature)


def test_a_signature_by_another_key_does_not_verify() -> None:
    lease = a_lease()
    other = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
    assert not verify_lease(PUB, lease, sign_lease(other, lease))
    assert not verify_lease(public_key_b64(other), lease, sign_lease(KEY, lease))


@pytest.mark.parametrize("pubkey", ["", "not a key", base64.b64encode(b"short").decode()])
def test_a_malformed_public_key_verifies_nothing(pubkey: str) -> None:
    lease = a_lease()
    assert not verify_lease(pubkey, lease, sign_lease(KEY, lease))


def test_the_canonical_form_ignores_key_order_and_unsigned_fields() -> None:
    lease = a_lease()
    shuffled = dict(reversed(list(lease.items())))
    shuffled["limits"] = dict(reversed(list(lease["limits"].items())))
    shuffled["signature"] = "anything"
    shuffled["lost"] = True  # the agent's own bookkeeping
    assert canonical(shuffled) == canonical(lease)
    assert (
        canonical(lease)
        == json.dumps(
            {k: lease.get(k) for k in SIGNED_FIELDS}, sort_keys=True, separators=(",", ":")
        ).encode()
    )


def test_the_key_is_created_once_private_to_its_owner(tmp_path: Path) -> None:
    path = tmp_path / "data" / "coordinator.key"
    first = load_or_create_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert public_key_b64(load_or_create_key(path)) == public_key_b64(first)
    assert [p.name for p in path.parent.iterdir()] == ["coordinator.key"]  # no temporary left
    assert fingerprint(public_key_b64(first)).startswith("SHA256:")


# -- join strings: the token and the pin of the coordinator's key --------------------------


def test_a_join_string_carries_the_token_and_the_keys_pin() -> None:
    text = join_string("fwj_secret", PUB)
    assert text == "fwj_secret#sha256:" + hashlib.sha256(base64.b64decode(PUB)).hexdigest()
    assert parse_join_string(text) == ("fwj_secret", key_pin(PUB))
    assert pin_matches(PUB, key_pin(PUB))


def test_a_bare_token_has_no_pin() -> None:
    assert parse_join_string("fwj_secret") == ("fwj_secret", None)


def test_a_pin_names_one_key_only() -> None:
    other = public_key_b64(Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33))))
    assert not pin_matches(other, key_pin(PUB))
    assert not pin_matches("not a key", key_pin(PUB))


@pytest.mark.parametrize(
    "text",
    [
        "fwj_secret#",
        "fwj_secret#sha256:",
        "fwj_secret#sha256:" + "ab" * 31,  # one byte short
        "fwj_secret#sha256:" + "zz" * 32,
        "fwj_secret#md5:" + "ab" * 32,
        "#sha256:" + "ab" * 32,
    ],
)
def test_a_malformed_pin_is_an_error_not_a_bare_token(text: str) -> None:
    with pytest.raises(ValueError, match="join string"):
        parse_join_string(text)


def test_a_token_cannot_hold_the_separator() -> None:
    with pytest.raises(ValueError):
        join_string("fwj#x", PUB)


# -- a real coordinator, a tampering proxy and node agents as processes ----------------------


class TamperingProxy:
    """A man in the middle on a loopback port: forwards everything to the coordinator and,
    while it has tampers left, rewrites "hello" to "pwned" in the first leased command of a
    sync answer, keeping the coordinator's signature. It can also hand out its own key in
    place of the coordinator's (`swap_key`), and keep genuine signed leases to send again
    later (`replay`), while it counts what the nodes report."""

    def __init__(self, upstream: str) -> None:
        self.upstream = httpx.Client(base_url=upstream, timeout=30)
        self.tampered: list[int] = []  # task ids whose spec was changed
        self._left = 0
        self._lock = threading.Lock()
        self.swap_key: str | None = None  # public key to put in join and key answers
        self.leases: dict[int, dict[str, Any]] = {}  # every signed lease seen, by task id
        self.reports: list[tuple[int, int]] = []  # (task id, attempt) of each reported result
        self.syncs = 0
        self.replayed_at: int | None = None  # the sync count when a replay went out
        self._replay: list[dict[str, Any]] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                headers = {
                    k: v
                    for k, v in self.headers.items()
                    if k.lower() in ("authorization", "content-type")
                }
                r = proxy.upstream.request(self.command, self.path, content=body, headers=headers)
                data = r.content
                if self.path.startswith("/v1/nodes/me/sync") and r.status_code == 200:
                    proxy._observe(body, data)
                    data = proxy._rewrite(data)
                    data = proxy._inject(data)
                keyed = ("/v1/nodes/join", "/v1/coordinator/key")
                if self.path in keyed and r.status_code < 300 and proxy.swap_key:
                    data = json.dumps({**json.loads(data), "public_key": proxy.swap_key}).encode()
                self.send_response(r.status_code)
                self.send_header("content-type", r.headers.get("content-type", "text/plain"))
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = forward

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def replay(self, *leases: dict[str, Any]) -> None:
        """Add these (genuine, signed) leases to the next sync answer."""
        with self._lock:
            self._replay += leases

    def _observe(self, request: bytes, answer: bytes) -> None:
        with self._lock:
            self.syncs += 1
            for rep in json.loads(request or b"{}").get("results", []):
                self.reports.append((rep["task_id"], rep["attempt"]))
            for lease in json.loads(answer)["tasks"]:
                self.leases[lease["task_id"]] = lease

    def _inject(self, data: bytes) -> bytes:
        with self._lock:
            if not self._replay:
                return data
            out = json.loads(data)
            out["tasks"] += self._replay
            self._replay = []
            self.replayed_at = self.syncs
            return json.dumps(out).encode()

    def syncs_after_replay(self) -> int:
        with self._lock:
            return -1 if self.replayed_at is None else self.syncs - self.replayed_at

    def tamper(self, times: int) -> None:
        with self._lock:
            self._left = times

    def _rewrite(self, data: bytes) -> bytes:
        with self._lock:
            if self._left <= 0:
                return data
            out = json.loads(data)
            for lease in out["tasks"]:
                if lease["command"] and "hello" in lease["command"]:
                    lease["command"] = ["pwned" if a == "hello" else a for a in lease["command"]]
                    self.tampered.append(lease["task_id"])
                    self._left -= 1
                    return json.dumps(out).encode()
            return data

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.upstream.close()


@pytest.fixture(scope="module")
def fog() -> Iterator[LocalFog]:
    with LocalFog(nodes=0, lease_seconds=5.0) as f:
        yield f


@pytest.fixture
def proxy(fog: LocalFog) -> Iterator[TamperingProxy]:
    p = TamperingProxy(fog.url)
    yield p
    p.close()


@pytest.fixture
def client(fog: LocalFog) -> Iterator[Client]:
    with Client(fog.url, fog.api_key) as c:
        yield c


def node_command(
    coordinator: str, data_dir: Path, token: str | None = None, *extra: str
) -> list[str]:
    cmd = [sys.executable, "-m", "fogwheel", "node", "--coordinator", coordinator]
    cmd += ["--cores", "1", "--data-dir", str(data_dir), "--name", data_dir.name, "--poll", "0.1"]
    if token:
        cmd += ["--token", token]
    return [*cmd, *extra]


def node_that_exits(
    coordinator: str, data_dir: Path, token: str | None = None, *extra: str
) -> tuple[int, str]:
    """Run a node agent that is expected to give up; its exit status and its output."""
    done = subprocess.run(
        node_command(coordinator, data_dir, token, *extra),
        capture_output=True, text=True, timeout=90, stdin=subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    return done.returncode, " ".join((done.stdout + done.stderr).split())  # unwrapped


@contextmanager
def node_agent(
    coordinator: str, data_dir: Path, token: str | None = None, *extra: str
) -> Iterator[Path]:
    """A node agent process on `data_dir`; yields its log file and stops it (SIGTERM) after."""
    log = data_dir.with_suffix(".log")
    cmd = node_command(coordinator, data_dir, token, *extra)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
    try:
        yield log
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def saved_identity(
    data_dir: Path, holding: str = "node_id", timeout: float = 30.0
) -> dict[str, Any]:
    """The node.json the agent on `data_dir` saved, once it holds `holding`."""
    path = data_dir / "node.json"
    deadline = time.monotonic() + timeout
    while True:
        ident = json.loads(path.read_text()) if path.exists() else {}
        if holding in ident:
            return ident
        assert time.monotonic() < deadline, f"{path} never held {holding!r}"
        time.sleep(0.05)


def joined_identity(fog: LocalFog, data_dir: Path, **changes: Any) -> dict[str, Any]:
    """Join over HTTP and write the node.json an agent would keep, with `changes` applied."""
    r = httpx.post(
        f"{fog.url}/v1/nodes/join",
        json={"token": fog.join_token, "name": data_dir.name, "cores": 1, "memory_mb": 512,
              "disk_mb": 1024},
    )  # fmt: skip
    assert r.status_code == 201, r.text
    joined = r.json()
    ident = {
        "coordinator": fog.url,
        "node_id": joined["node_id"],
        "credential": joined["credential"],
        "lease_seconds": joined["lease_seconds"],
        "public_key": joined["public_key"],
        **changes,
    }
    ident = {k: v for k, v in ident.items() if v is not None}
    data_dir.mkdir(parents=True)
    (data_dir / "node.json").write_text(json.dumps(ident))
    return ident


def test_the_coordinator_keeps_its_key_private_and_publishes_the_public_half(
    fog: LocalFog,
) -> None:
    path = fog.dir / "coordinator" / "coordinator.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    r = httpx.get(f"{fog.url}/v1/coordinator/key")  # no credentials needed
    assert r.status_code == 200
    assert r.json()["public_key"] == public_key_b64(load_or_create_key(path))
    assert r.json()["fingerprint"] == fingerprint(r.json()["public_key"])


def test_a_spec_changed_in_transit_is_refused_and_runs_once_the_link_is_clean(
    fog: LocalFog, proxy: TamperingProxy, client: Client, tmp_path: Path
) -> None:
    proxy.tamper(times=1)
    # Three nodes: whichever refuses, two others remain to run the task and check its result.
    dirs = [tmp_path / f"node-{x}" for x in "abc"]
    with ExitStack() as nodes:
        logs = [nodes.enter_context(node_agent(proxy.url, d, token=fog.join_token)) for d in dirs]
        ids = [saved_identity(d)["node_id"] for d in dirs]
        fut = client.run(["echo", "hello"])
        result = fut.result(timeout=60)
        stats = {n["id"]: n for n in client.nodes() if n["id"] in ids}
    [task] = client.tasks(fut.job_id)
    assert proxy.tampered == [task["id"]]  # the proxy did change the spec, once
    assert result.returncode == 0 and result.stdout == "hello\n"  # the one result is genuine
    texts = [log.read_text() for log in logs]
    [refuser] = [i for i, text in enumerate(texts) if f"task {task['id']} refused" in text]
    assert "ERROR" in texts[refuser] and not any("pwned" in text for text in texts)
    # The tampered lease was attempt 1; its refusal counted against the node and the task was
    # leased again. (Its outcome is not checked: when the same node then finishes the task,
    # the store rewrites that node's earlier "lost" attempt as "done".)
    assert task["history"][0]["node_id"] == ids[refuser] and len(task["history"]) >= 2
    assert stats[ids[refuser]]["lost"] == 1


def test_a_node_with_the_wrong_coordinator_key_refuses_everything(
    fog: LocalFog, client: Client, tmp_path: Path
) -> None:
    wrong = public_key_b64(Ed25519PrivateKey.generate())
    data_dir = tmp_path / "node-wrong-key"
    joined_identity(fog, data_dir, public_key=wrong)
    with node_agent(fog.url, data_dir) as log:
        futures = client.run_many([["echo", "hello"], ["echo", "world"]])
        for fut in futures:
            # a new device's failures do not use up attempts (core/owners.py): the task
            # ends at the poison bound instead
            with pytest.raises(TaskFailed, match=f"{REFUSAL}; gave up after"):
                fut.result(timeout=60)
    text = log.read_text()
    for task in client.tasks(futures[0].job_id):
        attempts = len(task["history"])  # every one of them leased to this node and refused
        assert attempts >= 3
        assert text.count(f"task {task['id']} refused") == attempts
    assert fingerprint(wrong) in text


def test_nodes_that_joined_before_signing_trust_the_key_on_first_use(
    fog: LocalFog, client: Client, tmp_path: Path
) -> None:
    dirs = [tmp_path / "node-tofu-a", tmp_path / "node-tofu-b"]
    for d in dirs:
        joined_identity(fog, d, public_key=None)
    with ExitStack() as nodes:
        logs = [nodes.enter_context(node_agent(fog.url, d)) for d in dirs]
        keys = [saved_identity(d, holding="public_key")["public_key"] for d in dirs]
        assert client.run(["echo", "hello"]).result(timeout=60).stdout == "hello\n"
    published = httpx.get(f"{fog.url}/v1/coordinator/key").json()["public_key"]
    assert keys == [published, published]
    for d, log in zip(dirs, logs, strict=True):
        assert stat.S_IMODE((d / "node.json").stat().st_mode) == 0o600
        text = log.read_text()
        assert "trusting" in text and fingerprint(published) in text


# -- authenticated join: the join string pins the coordinator's key ---------------------------


@pytest.fixture
def solo(fog: LocalFog) -> Iterator[Client]:
    """A client whose tasks run once, unchecked: the tests below run a single node."""
    with Client(fog.url, fog.api_key, replicas=1) as c:
        yield c


def pinned(fog: LocalFog) -> str:
    published = httpx.get(f"{fog.url}/v1/coordinator/key").json()
    assert published["pin"] == key_pin(published["public_key"])
    return join_string(fog.join_token, published["public_key"])


def test_a_node_joins_with_the_join_string_and_sends_only_the_token(
    fog: LocalFog, proxy: TamperingProxy, solo: Client, tmp_path: Path
) -> None:
    data_dir = tmp_path / "node-pinned"
    with node_agent(proxy.url, data_dir, pinned(fog)) as log:
        ident = saved_identity(data_dir)
        assert solo.run(["echo", "hello"]).result(timeout=60).stdout == "hello\n"
    published = httpx.get(f"{fog.url}/v1/coordinator/key").json()["public_key"]
    assert ident["public_key"] == published
    assert "TRUST ON FIRST USE" not in log.read_text()


def test_a_bare_token_warns_that_the_key_is_trusted_on_first_use(
    fog: LocalFog, tmp_path: Path
) -> None:
    data_dir = tmp_path / "node-bare"
    with node_agent(fog.url, data_dir, fog.join_token) as log:
        saved_identity(data_dir)
    assert "TRUST ON FIRST USE" in log.read_text()


def test_a_pinned_node_refuses_a_proxy_that_swaps_the_coordinators_key(
    fog: LocalFog, proxy: TamperingProxy, tmp_path: Path
) -> None:
    proxy.swap_key = public_key_b64(Ed25519PrivateKey.generate())
    data_dir = tmp_path / "node-swapped"
    rc, text = node_that_exits(proxy.url, data_dir, pinned(fog))
    assert rc != 0
    assert "not the key the join string pins" in text and fingerprint(proxy.swap_key) in text
    assert not (data_dir / "node.json").exists()  # no credential kept, nothing leased


def test_a_node_that_joined_before_signing_refuses_a_swapped_key_when_pinned(
    fog: LocalFog, proxy: TamperingProxy, tmp_path: Path
) -> None:
    data_dir = tmp_path / "node-old-swapped"
    joined_identity(fog, data_dir, public_key=None, coordinator=proxy.url)
    proxy.swap_key = public_key_b64(Ed25519PrivateKey.generate())
    rc, text = node_that_exits(proxy.url, data_dir, pinned(fog))
    assert rc != 0 and "not the key the join string pins" in text
    assert "public_key" not in json.loads((data_dir / "node.json").read_text())


def test_a_node_whose_saved_key_is_not_the_pinned_one_refuses_to_start(
    fog: LocalFog, tmp_path: Path
) -> None:
    data_dir = tmp_path / "node-saved-wrong"
    joined_identity(fog, data_dir, public_key=public_key_b64(Ed25519PrivateKey.generate()))
    rc, text = node_that_exits(fog.url, data_dir, pinned(fog))
    assert rc != 0 and "not the key this join string pins" in text


def test_the_coordinator_refuses_a_join_string_that_pins_another_key(fog: LocalFog) -> None:
    wrong = join_string(fog.join_token, public_key_b64(Ed25519PrivateKey.generate()))
    body = {"token": wrong, "name": "x", "cores": 1, "memory_mb": 512, "disk_mb": 1}
    r = httpx.post(f"{fog.url}/v1/nodes/join", json=body)
    assert r.status_code == 401 and "pins another coordinator's key" in r.json()["error"]
    r = httpx.post(f"{fog.url}/v1/nodes/join", json={**body, "token": pinned(fog)})
    assert r.status_code == 201  # the right pin: the token is checked as usual


# -- leases are run once, and only while current -------------------------------------------


def wait_for_syncs_after_replay(proxy: TamperingProxy, n: int = 10, timeout: float = 60) -> None:
    """Until the replay went out and the node synced `n` more times (time to have run it)."""
    deadline = time.monotonic() + timeout
    while proxy.syncs_after_replay() < n:
        assert time.monotonic() < deadline, "the node stopped syncing after the replay"
        time.sleep(0.1)
    time.sleep(2.0)  # and a little longer, for a slow slot
    while proxy.syncs_after_replay() < 2 * n:
        assert time.monotonic() < deadline, "the node stopped syncing after the replay"
        time.sleep(0.1)


def test_a_replayed_signed_lease_is_never_run_twice(
    fog: LocalFog, proxy: TamperingProxy, solo: Client, tmp_path: Path
) -> None:
    data_dir = tmp_path / "node-replayed"
    with node_agent(proxy.url, data_dir, pinned(fog)) as log:
        saved_identity(data_dir)
        fut = solo.run(["echo", "hello"])
        assert fut.result(timeout=60).stdout == "hello\n"
        [task] = solo.tasks(fut.job_id)
        lease = proxy.leases[task["id"]]
        proxy.replay(lease)  # the same genuine signed answer, again
        wait_for_syncs_after_replay(proxy)
    seen = (lease["task_id"], lease["attempt"])
    assert proxy.reports.count(seen) == 1  # run and reported once, not again
    assert "already received that lease" in log.read_text()


def test_an_expired_lease_replayed_after_a_restart_is_refused(
    fog: LocalFog, proxy: TamperingProxy, solo: Client, tmp_path: Path
) -> None:
    data_dir = tmp_path / "node-restarted"
    with node_agent(proxy.url, data_dir, pinned(fog), "--max-clock-skew", "0.5"):
        saved_identity(data_dir)
        fut = solo.run(["echo", "hello"])
        assert fut.result(timeout=60).stdout == "hello\n"
    [task] = solo.tasks(fut.job_id)
    lease = proxy.leases[task["id"]]
    while time.time() < lease["lease_expires"] + 1.0:
        time.sleep(0.1)
    reported = len(proxy.reports)
    # A new agent process on the same identity remembers no lease: only the expiry stops it.
    with node_agent(proxy.url, data_dir, None, "--max-clock-skew", "0.5") as log:
        proxy.replay(lease)
        wait_for_syncs_after_replay(proxy)
    seen = (lease["task_id"], lease["attempt"])
    assert seen not in proxy.reports[reported:]
    assert f"task {lease['task_id']} attempt {lease['attempt']} refused: its lease expired" in (
        log.read_text()
    )
