"""The wire and the disk: corrupt blobs are never served, a full disk is 507, slow bodies get
408, and a node joins over HTTPS only a coordinator whose certificate and key it can check."""

from __future__ import annotations

import contextlib
import datetime
import errno
import hashlib
import ipaddress
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fogwheel import Client
from fogwheel.localfog import LocalFog
from fogwheel.store.sql import new_secret

# -- a coordinator process with options LocalFog does not pass -------------------------------


@dataclass
class Coordinator:
    url: str
    key_pin: str
    join_token: str
    api_key: str
    admin_key: str
    dir: Path

    @property
    def join_string(self) -> str:
        return f"{self.join_token}#{self.key_pin}"


@contextlib.contextmanager
def coordinator(
    workdir: Path, *extra: str, verify: ssl.SSLContext | bool = True
) -> Iterator[Coordinator]:
    """`fogwheel coordinator` as a process on `workdir`, with `extra` options; stopped after."""
    workdir.mkdir(parents=True, exist_ok=True)
    ready = workdir / "coordinator.ready"
    keys = {k: new_secret(p) for k, p in [("join", "fwj"), ("api", "fwc"), ("admin", "fwa")]}
    cmd = [sys.executable, "-m", "fogwheel", "coordinator", "--data-dir", str(workdir / "data")]
    cmd += ["--port", "0", "--lease-seconds", "5", "--ready-file", str(ready), "--quiet"]
    cmd += ["--join-token", keys["join"], "--api-key", keys["api"], "--admin-key", keys["admin"]]
    with open(workdir / "coordinator.log", "ab") as log:
        proc = subprocess.Popen(
            [*cmd, *extra], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert proc.poll() is None, (workdir / "coordinator.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "the coordinator did not start"
            time.sleep(0.05)
        info = json.loads(ready.read_text())
        while True:
            try:
                if httpx.get(f"{info['url']}/v1/health", verify=verify).status_code == 200:
                    break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the coordinator does not answer"
                time.sleep(0.05)
        yield Coordinator(
            info["url"], info["key_pin"], keys["join"], keys["api"], keys["admin"], workdir
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def node_command(url: str, data_dir: Path, token: str, *extra: str) -> list[str]:
    cmd = [sys.executable, "-m", "fogwheel", "node", "--coordinator", url, "--token", token]
    cmd += ["--cores", "1", "--data-dir", str(data_dir), "--name", data_dir.name, "--poll", "0.1"]
    return [*cmd, *extra]


def node_that_exits(url: str, data_dir: Path, token: str, *extra: str) -> tuple[int, str]:
    done = subprocess.run(
        node_command(url, data_dir, token, *extra), capture_output=True, text=True,
        timeout=90, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    return done.returncode, " ".join((done.stdout + done.stderr).split())


# -- blobs are verified when served ----------------------------------------------------------


@pytest.fixture
def fog(tmp_path: Path) -> Iterator[LocalFog]:
    with LocalFog(0, workdir=tmp_path) as f:
        yield f


def blob_file(fog: LocalFog, sha: str) -> Path:
    return fog.dir / "coordinator" / "blobs" / sha[:2] / sha


def put(fog: LocalFog, data: bytes) -> httpx.Response:
    sha = hashlib.sha256(data).hexdigest()
    return httpx.put(f"{fog.url}/v1/blobs/{sha}", content=data, headers=fog.headers, timeout=30)


def get(fog: LocalFog, sha: str) -> httpx.Response:
    return httpx.get(f"{fog.url}/v1/blobs/{sha}", headers=fog.headers, timeout=30)


@pytest.mark.parametrize("keep_mtime", [False, True])
def test_a_blob_corrupted_on_disk_is_never_served_and_a_correct_upload_replaces_it(
    fog: LocalFog, keep_mtime: bool
) -> None:
    data = os.urandom(300_000)
    sha = hashlib.sha256(data).hexdigest()
    assert put(fog, data).status_code == 201
    first = get(fog, sha)
    assert first.status_code == 200 and first.content == data  # served once: marked verified
    path = blob_file(fog, sha)
    st = path.stat()
    rotten = bytearray(data)
    rotten[123_456] ^= 0x40  # one flipped bit, same size
    with open(path, "r+b") as f:
        f.write(rotten)
    if keep_mtime:  # a careful hand puts the modification time back
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    r = get(fog, sha)
    assert r.status_code == 404 and "corrupt" in r.json()["error"]
    assert get(fog, sha).status_code == 404  # and stays unserved
    [kept] = (fog.dir / "coordinator" / "blobs" / "quarantine").iterdir()
    assert kept.read_bytes() == bytes(rotten)  # kept for the operator, not deleted
    assert f"blob {sha} on disk hashes to" in (fog.dir / "coordinator.log").read_text()
    assert put(fog, data).status_code == 201  # a correct upload takes its place
    again = get(fog, sha)
    assert again.status_code == 200 and again.content == data


def test_an_upload_replaces_a_corrupt_blob_nobody_has_read_yet(fog: LocalFog) -> None:
    data = os.urandom(100_000)
    sha = hashlib.sha256(data).hexdigest()
    assert put(fog, data).status_code == 201
    blob_file(fog, sha).write_bytes(b"\0" * len(data))  # rotted before anyone asked
    fog.stop()
    fog.start()  # a fresh coordinator: no verified mark in memory
    assert put(fog, data).status_code == 201  # found corrupt while storing: replaced
    r = get(fog, sha)
    assert r.status_code == 200 and r.content == data
    assert len(list((fog.dir / "coordinator" / "blobs" / "quarantine").iterdir())) == 1


def test_a_wrong_upload_never_replaces_a_blob(fog: LocalFog) -> None:
    data = b"the real bytes" * 10_000
    sha = hashlib.sha256(data).hexdigest()
    assert put(fog, data).status_code == 201
    r = httpx.put(f"{fog.url}/v1/blobs/{sha}", content=b"x" * len(data), headers=fog.headers)
    assert r.status_code == 400
    assert get(fog, sha).content == data


# -- a full disk is 507 ----------------------------------------------------------------------


@contextlib.contextmanager
def small_disk(where: Path, size: str) -> Iterator[Path]:
    where.mkdir(parents=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
        capture_output=True, text=True,
    )  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (root needed): {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(path: Path) -> None:
    """Write `path` until the disk is full."""
    with open(path, "wb", buffering=0) as f, contextlib.suppress(OSError):
        while f.write(b"\0" * 4096):
            pass


def test_a_full_disk_is_507_with_a_sentence_and_the_coordinator_recovers(
    tmp_path: Path,
) -> None:
    fog = LocalFog(0, workdir=tmp_path)
    with small_disk(tmp_path / "coordinator", "3m") as disk, fog:
        statuses = []
        for _ in range(40):  # 40 of 256 KB: over the 3 MB disk
            r = put(fog, os.urandom(256 * 1024))
            statuses.append(r.status_code)
            if r.status_code == 507:
                assert "disk is full" in r.json()["error"]
                break
        assert statuses[-1] == 507 and set(statuses) <= {201, 507}, statuses
        assert not [p for p in disk.rglob(".tmp-*")]  # no half-written blob left behind
        # the database's turn: fill what is left and write rows
        fill(disk / "filler")
        admin = {"authorization": f"Bearer {fog.admin_key}"}
        answers = []
        for i in range(30):
            r = httpx.post(
                f"{fog.url}/v1/customers", params={"name": f"c{i}-" + "x" * 60},
                headers=admin, timeout=30,
            )  # fmt: skip
            answers.append(r.status_code)
            if r.status_code == 507:
                assert "disk is full" in r.json()["error"]
                break
        assert answers[-1] == 507 and set(answers) <= {201, 507}, answers
        # space again: both kinds of write work
        (disk / "filler").unlink()
        assert put(fog, os.urandom(1000)).status_code == 201
        r = httpx.post(f"{fog.url}/v1/customers", params={"name": "after"}, headers=admin)
        assert r.status_code == 201


# -- slow request bodies are cut off ---------------------------------------------------------


def stalled_request(
    url: str, api_key: str, sent: bytes, declared: int, json_route: bool = False
) -> socket.socket:
    """A request whose headers promise `declared` bytes of body, of which only `sent` come:
    a blob upload (an async route), or a job submission (JSON parsed before a worker thread
    runs the route)."""
    host, port = url.removeprefix("http://").split(":")
    s = socket.create_connection((host, int(port)), timeout=60)
    line, kind = (
        ("POST /v1/jobs", "application/json")
        if json_route
        else (f"PUT /v1/blobs/{'ab' * 32}", "application/octet-stream")
    )
    head = (
        f"{line} HTTP/1.1\r\nhost: {host}\r\nauthorization: Bearer {api_key}\r\n"
        f"content-type: {kind}\r\ncontent-length: {declared}\r\n\r\n"
    )
    s.sendall(head.encode() + sent)
    return s


def answer_of(s: socket.socket) -> tuple[int, dict, bool]:
    """The status and JSON body of the answer on `s`, and whether the server then closed it."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        assert chunk, "closed without an answer"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    headers = dict(line.lower().partition(": ")[::2] for line in lines[1:])
    length = int(headers["content-length"])
    while len(body) < length:
        body += s.recv(65536)
    closed = s.recv(1) == b""
    return status, json.loads(body[:length]), closed


def test_a_stalled_or_trickled_body_gets_408_and_holds_no_worker_thread(tmp_path: Path) -> None:
    with coordinator(tmp_path, "--body-timeout", "6") as c:
        # More stalled uploads than the coordinator has worker threads (40)
        stalled = [
            stalled_request(c.url, c.api_key, b'{"kind": "co', 100_000, json_route=i % 2 == 0)
            for i in range(60)
        ]
        trickler = stalled_request(c.url, c.api_key, b"", 100_000)
        # …and still a route that needs a worker thread answers at once
        r = httpx.get(
            f"{c.url}/v1/jobs", headers={"authorization": f"Bearer {c.api_key}"}, timeout=5
        )
        assert r.status_code == 200
        trickler.settimeout(0.5)
        sent = 0
        deadline = time.monotonic() + 60
        while True:  # one byte a second: never idle for long, but far below 1 KB/s
            try:
                trickler.sendall(b"y")
                sent += 1
                if trickler.recv(1, socket.MSG_PEEK):
                    break
            except TimeoutError:
                pass
            except (BrokenPipeError, ConnectionResetError):
                break
            assert time.monotonic() < deadline, "the trickled body was never cut off"
            time.sleep(0.5)
        trickler.settimeout(30)
        status, body, closed = answer_of(trickler)
        assert status == 408 and "too slowly" in body["error"] and closed
        assert sent > 6  # it kept sending past the idle limit: the rate rule cut it off
        for s in stalled:
            status, body, closed = answer_of(s)
            assert status == 408 and "too slowly" in body["error"] and closed
            s.close()
        trickler.close()
        # a body that comes in time is taken as always
        data = os.urandom(200_000)
        sha = hashlib.sha256(data).hexdigest()
        r = httpx.put(
            f"{c.url}/v1/blobs/{sha}", content=data,
            headers={"authorization": f"Bearer {c.api_key}"},
        )  # fmt: skip
        assert r.status_code == 201


def test_disk_full_is_told_apart_from_other_failures() -> None:
    import sqlite3

    import psycopg.errors
    from sqlalchemy.exc import OperationalError

    from fogwheel.coordinator.diskfull import is_disk_full
    from fogwheel.errors import StorageFull

    sqlite_full = OperationalError(
        "INSERT …", {}, sqlite3.OperationalError("database or disk is full")
    )
    assert is_disk_full(sqlite_full)
    assert is_disk_full(OperationalError("INSERT …", {}, psycopg.errors.DiskFull("no space")))
    assert is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert is_disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert is_disk_full(StorageFull("full"))
    wrapped = RuntimeError("while storing")
    wrapped.__cause__ = OSError(errno.ENOSPC, "No space left on device")
    assert is_disk_full(wrapped)
    locked = OperationalError("INSERT …", {}, sqlite3.OperationalError("database is locked"))
    assert not is_disk_full(locked)
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied"))
    assert not is_disk_full(ValueError("disk"))


# -- HTTPS, with the key pin on top ----------------------------------------------------------


def self_signed(where: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (an IP SAN) and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fogwheel test coordinator")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = where / "cert.pem", where / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_a_node_joins_over_https_with_its_ca_and_pin_and_runs_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = self_signed(tmp_path)
    trust = ssl.create_default_context(cafile=str(cert))
    with coordinator(
        tmp_path / "c", "--tls-cert", str(cert), "--tls-key", str(key), verify=trust
    ) as c:
        assert c.url.startswith("https://127.0.0.1:")
        data_dir = tmp_path / "node-tls"
        log = tmp_path / "node-tls.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                node_command(c.url, data_dir, c.join_string, "--ca-cert", str(cert)),
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )  # fmt: skip
        try:
            monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # the SDK trusts it the usual way
            with Client(c.url, c.api_key, replicas=1) as client:
                assert client.run(["echo", "over tls"]).result(timeout=90).stdout == "over tls\n"
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
        assert "TRUST ON FIRST USE" not in log.read_text()
        # Plain HTTP to the TLS port is no way in
        with pytest.raises(httpx.TransportError):
            httpx.get(c.url.replace("https", "http") + "/v1/health", timeout=5)


def test_an_https_node_refuses_an_unverified_certificate_and_a_wrong_pin(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    trust = ssl.create_default_context(cafile=str(cert))
    with coordinator(
        tmp_path / "c", "--tls-cert", str(cert), "--tls-key", str(key), verify=trust
    ) as c:
        rc, text = node_that_exits(c.url, tmp_path / "node-no-ca", c.join_string)
        assert rc != 0 and "TLS certificate does not verify" in text and "--ca-cert" in text
        wrong = c.join_token + "#sha256:" + "0" * 64
        data_dir = tmp_path / "node-wrong-pin"
        rc, text = node_that_exits(c.url, data_dir, wrong, "--ca-cert", str(cert))
        assert rc != 0 and "not the key the join string pins" in text
        assert not (data_dir / "node.json").exists()


def test_a_coordinator_given_a_bad_certificate_says_so_and_does_not_start(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    cmd = [sys.executable, "-m", "fogwheel", "coordinator", "--data-dir", str(tmp_path / "c")]
    cmd += ["--port", "0", "--quiet", "--tls-cert", str(junk), "--tls-key", str(junk)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    text = " ".join((done.stdout + done.stderr).split())
    assert done.returncode != 0 and "cannot serve HTTPS with --tls-cert" in text
    assert "Traceback" not in text
