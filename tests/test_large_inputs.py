"""Large inputs travel by themselves, streamed and resumable (issue 11, finding 5): a 200 MB
file through `fogwheel run -i` and through the SDK, with the client's memory small; an upload
killed half-way continues where it stopped; `fogwheel blobs put|get|ls`, each customer's own.

Real processes throughout: a coordinator and one node (LocalFog), the `fogwheel` command and
SDK scripts run as subprocesses. The 200 MB files live in tmp directories and are removed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from fogwheel.localfog import LocalFog

FOGWHEEL = [sys.executable, "-m", "fogwheel"]
BIG = 200 * 1024 * 1024
PEAK_LIMIT_MB = 100

# Runs argv, then prints the peak RSS (MB) of what it ran: resource's RUSAGE_CHILDREN counts
# only this wrapper's own children, so nothing else the test machine runs gets in.
MEASURED = textwrap.dedent(
    """
    import resource, subprocess, sys
    rc = subprocess.run(sys.argv[1:]).returncode
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"PEAK_MB {peak_mb:.1f}", file=sys.stderr)
    sys.exit(rc)
    """
)

# What the task does with the big input: hash it as it reads, print sha and size.
HASH_IT = (
    "import hashlib,sys\n"
    "h=hashlib.sha256(); n=0\n"
    "f=open(sys.argv[1],'rb')\n"
    "while True:\n"
    "    b=f.read(1<<20)\n"
    "    if not b: break\n"
    "    h.update(b); n+=len(b)\n"
    "print(h.hexdigest(), n)\n"
)


def write_random(path: Path, size: int, seed: int) -> str:
    """`size` pseudo-random bytes (incompressible, seeded) written 1 MiB at a time; their sha."""
    h = hashlib.sha256()
    block = hashlib.sha256(str(seed).encode()).digest() * (1 << 15)  # 1 MiB
    with open(path, "wb") as f:
        for i in range(size // len(block)):
            piece = i.to_bytes(8, "big") + block[8:]
            f.write(piece)
            h.update(piece)
    return h.hexdigest()


@pytest.fixture(scope="module")
def fog(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFog]:
    with LocalFog(0, workdir=tmp_path_factory.mktemp("fog")) as fog:
        fog.add_node()
        fog.wait_for_nodes(1)
        yield fog


@pytest.fixture(scope="module")
def other_key(fog: LocalFog) -> str:
    r = httpx.post(
        f"{fog.url}/v1/customers",
        params={"name": "eve"},
        headers={"authorization": f"Bearer {fog.admin_key}"},
        timeout=30,
    )
    r.raise_for_status()
    return str(r.json()["api_key"])


@pytest.fixture
def big_file(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    path = tmp_path / "big.bin"
    sha = write_random(path, BIG, seed=time.time_ns())
    yield path, sha
    path.unlink(missing_ok=True)


def env_for(fog: LocalFog, key: str | None = None) -> dict[str, str]:
    return {
        **os.environ,
        "FOGWHEEL_COORDINATOR": fog.url,
        "FOGWHEEL_API_KEY": key or fog.api_key,
        "COLUMNS": "200",
    }


def fogwheel(
    fog: LocalFog, *args: str, key: str | None = None, cwd: Path | None = None, timeout=300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*FOGWHEEL, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env_for(fog, key),
        cwd=cwd,
    )


def measured(
    fog: LocalFog, argv: list[str], cwd: Path, timeout: float = 400
) -> tuple[subprocess.CompletedProcess[str], float]:
    res = subprocess.run(
        [sys.executable, "-c", MEASURED, *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env_for(fog),
        cwd=cwd,
    )
    peaks = [ln for ln in res.stderr.splitlines() if ln.startswith("PEAK_MB ")]
    assert peaks, res.stderr[-3000:]
    return res, float(peaks[-1].split()[1])


def upload_status(fog: LocalFog, sha: str, key: str | None = None) -> dict:
    r = httpx.get(
        f"{fog.url}/v1/blobs/{sha}/upload",
        headers={"authorization": f"Bearer {key or fog.api_key}"},
        timeout=30,
    )
    r.raise_for_status()
    return r.json()


# -- 200 MB through the CLI and the SDK -----------------------------------------------------------


def test_a_200_mb_input_goes_through_fogwheel_run_streamed(fog, big_file, tmp_path) -> None:
    path, sha = big_file
    argv = [*FOGWHEEL, "run", "--replicas", "1", "-i", str(path), "--"]
    res, peak = measured(fog, [*argv, "python3", "-c", HASH_IT, "big.bin"], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.split() == [sha, str(BIG)]  # the task got every byte, in order
    assert "big.bin: sent 209.7 MB" in res.stderr  # told on stderr what went up
    print(f"fogwheel run -i, 200 MB input: client peak RSS {peak:.1f} MB")
    assert peak < PEAK_LIMIT_MB, f"the client peaked at {peak:.0f} MB for a 200 MB input"


SDK_SCRIPT = """
import hashlib, sys
from fogwheel import Client

def digest(name):
    h = hashlib.sha256(); n = 0
    with open(name, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk); n += len(chunk)
    return h.hexdigest(), n

with Client(replicas=1) as fog:
    [fut] = fog.submit_many(digest, [(("big.bin",), {})], inputs=[{"big.bin": sys.argv[1]}])
    sha, n = fut.result(timeout=300)
    print(sha, n)
"""


def test_a_200_mb_input_goes_through_the_sdk_streamed(fog, big_file, tmp_path) -> None:
    path, sha = big_file
    script = tmp_path / "submit_big.py"
    script.write_text(SDK_SCRIPT)
    res, peak = measured(fog, [sys.executable, str(script), str(path)], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.split() == [sha, str(BIG)]
    print(f"Client.submit_many(inputs=), 200 MB input: client peak RSS {peak:.1f} MB")
    assert peak < PEAK_LIMIT_MB, f"the SDK peaked at {peak:.0f} MB for a 200 MB input"


# -- resumable ---------------------------------------------------------------------------------


def test_an_upload_killed_half_way_sends_only_the_rest_when_run_again(fog, big_file) -> None:
    path, sha = big_file
    proc = subprocess.Popen(
        [*FOGWHEEL, "blobs", "put", str(path)],
        env=env_for(fog),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while upload_status(fog, sha)["received"] < 8 << 20:  # at least 8 MiB arrived
            assert proc.poll() is None, "the upload ended before it could be interrupted"
            assert time.monotonic() < deadline, "no upload began"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(30)
    kept = upload_status(fog, sha)
    assert not kept["complete"] and 0 < kept["received"] < BIG

    res = fogwheel(fog, "blobs", "put", "--json", str(path))
    assert res.returncode == 0, res.stderr[-3000:]
    line = json.loads(res.stdout.strip().splitlines()[-1])
    assert line["sha"] == sha and line["size"] == BIG
    assert line["resumed_from"] >= kept["received"] > 0
    assert line["sent"] == BIG - line["resumed_from"] < BIG  # only the rest went again
    assert "resumed at" in res.stderr
    print(f"killed at {kept['received']} bytes; the rerun sent {line['sent']} of {BIG}")
    assert upload_status(fog, sha)["complete"]


class DroppingProxy:
    """A TCP proxy to the coordinator that cuts its first `drops` connections after `cut`
    bytes in `direction` ("up": client to coordinator, "down": back): a connection that drops
    half-way, with real sockets. `heads` keeps the start of every request it forwarded."""

    def __init__(self, target: str, cut: int, direction: str, drops: int = 1) -> None:
        import socket
        import threading

        host, port = target.removeprefix("http://").split(":")
        self.target = (host, int(port))
        self.cut, self.direction, self.drops = cut, direction, drops
        self.heads: list[bytes] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self._socket, self._threading = socket, threading
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            cut = self.cut if self.drops > 0 else None
            self.drops -= 1
            upstream = self._socket.create_connection(self.target)
            up_cut, down_cut = (cut, None) if self.direction == "up" else (None, cut)
            for src, dst, limit, log in (
                (client, upstream, up_cut, True),
                (upstream, client, down_cut, False),
            ):
                self._threading.Thread(
                    target=self._pump, args=(src, dst, limit, log, client, upstream), daemon=True
                ).start()

    def _pump(self, src, dst, limit, log, *both) -> None:
        moved = 0
        try:
            while data := src.recv(65536):
                if log and data[:4] in (b"GET ", b"PUT ", b"POST", b"HEAD"):
                    self.heads.append(data[:1000])
                if limit is not None and moved + len(data) > limit:
                    dst.sendall(data[: limit - moved])
                    break
                dst.sendall(data)
                moved += len(data)
        except OSError:
            pass
        for s in both:  # one side ended or was cut: end the connection
            with contextlib.suppress(OSError):
                s.shutdown(self._socket.SHUT_RDWR)
            s.close()

    def close(self) -> None:
        self.listener.close()


def test_a_download_cut_half_way_goes_on_from_where_it_stopped(fog, tmp_path) -> None:
    from fogwheel import Client

    data = tmp_path / "five.bin"
    sha = write_random(data, 5 << 20, seed=19)
    with Client(fog.url, fog.api_key) as client:
        blob = client.put_blob(data)
    proxy = DroppingProxy(fog.url, cut=2 << 20, direction="down", drops=2)
    try:
        with Client(proxy.url, fog.api_key) as client:
            got = tmp_path / "got.bin"
            assert client.fetch_to(blob, got) == 5 << 20
            assert got.read_bytes() == data.read_bytes()
            ranged = [h for h in proxy.heads if b"range: bytes=" in h.lower()]
            assert ranged, "the second try asked for the whole blob again"
            proxy.drops = 1
            tr = client.download(sha, tmp_path / "again.bin")
            assert (tmp_path / "again.bin").read_bytes() == data.read_bytes()
            assert tr.sent == 5 << 20 and tr.resumed_from == 0  # all of it, over two requests
    finally:
        proxy.close()


def test_an_upload_cut_half_way_sends_only_the_rest(fog, tmp_path) -> None:
    from fogwheel import Client

    data = tmp_path / "six.bin"
    sha = write_random(data, 6 << 20, seed=23)
    proxy = DroppingProxy(fog.url, cut=3 << 20, direction="up")
    try:
        with Client(proxy.url, fog.api_key) as client:
            tr = client.upload(data)
    finally:
        proxy.close()
    assert tr.sha == sha and tr.size == 6 << 20
    puts = [h.lower() for h in proxy.heads if h.startswith(b"PUT ")]
    assert len(puts) == 2 and b"content-range: bytes 0-" in puts[0]
    [resumed_at] = re.findall(rb"content-range: bytes (\d+)-", puts[1])
    assert 0 < int(resumed_at) < 6 << 20  # the second try went on from what had arrived
    assert tr.sent < 2 * (6 << 20)  # the cut part, then only the rest
    assert upload_status(fog, sha)["complete"]


# -- fogwheel blobs put | get | ls ------------------------------------------------------------


def test_blobs_put_ls_get_round_trip_and_resume_a_download(fog, tmp_path) -> None:
    data = tmp_path / "data.bin"
    sha = write_random(data, 3 << 20, seed=7)
    put = fogwheel(fog, "blobs", "put", str(data))
    assert put.returncode == 0, put.stderr
    assert put.stdout.split() == [sha, str(3 << 20), str(data)]

    ls = fogwheel(fog, "blobs", "ls", "--json")
    assert ls.returncode == 0, ls.stderr
    rows = {r["sha"]: r for r in map(json.loads, ls.stdout.splitlines())}
    assert rows[sha]["size"] == 3 << 20 and rows[sha]["created"] > 0
    table = fogwheel(fog, "blobs", "ls")
    assert sha in table.stdout

    got = tmp_path / "got.bin"
    res = fogwheel(fog, "blobs", "get", sha, "-o", str(got))
    assert res.returncode == 0, res.stderr
    assert got.read_bytes() == data.read_bytes()

    # an interrupted download left a partial: the next get fetches only the rest
    again = tmp_path / "again.bin"
    (tmp_path / "again.bin.part").write_bytes(data.read_bytes()[: 1 << 20])
    res = fogwheel(fog, "blobs", "get", sha, "-o", str(again))
    assert res.returncode == 0, res.stderr
    assert "resumed at 1.0 MB" in res.stderr
    assert again.read_bytes() == data.read_bytes()
    assert not (tmp_path / "again.bin.part").exists()

    # a partial that is not the blob's beginning is caught by the hash: no file written
    bad = tmp_path / "bad.bin"
    (tmp_path / "bad.bin.part").write_bytes(b"\0" * 1000)
    res = fogwheel(fog, "blobs", "get", sha, "-o", str(bad))
    assert res.returncode == 1 and "arrived corrupt" in res.stderr
    assert not bad.exists() and not (tmp_path / "bad.bin.part").exists()


def test_a_blob_is_usable_as_a_task_input_by_its_sha(fog, tmp_path) -> None:
    data = tmp_path / "data.bin"
    sha = write_random(data, 2 << 20, seed=11)
    assert fogwheel(fog, "blobs", "put", str(data)).returncode == 0
    res = fogwheel(
        fog,
        "run",
        "--replicas",
        "1",
        "-i",
        f"in.bin=blob:{sha}",
        "--",
        "python3",
        "-c",
        HASH_IT,
        "in.bin",
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.split() == [sha, str(2 << 20)]


def test_another_customer_can_neither_get_list_nor_use_your_blob(fog, other_key, tmp_path) -> None:
    data = tmp_path / "secret.bin"
    sha = write_random(data, 1 << 20, seed=13)
    assert fogwheel(fog, "blobs", "put", str(data)).returncode == 0

    res = fogwheel(fog, "blobs", "get", sha, "-o", str(tmp_path / "stolen"), key=other_key)
    assert res.returncode == 1 and "404" in res.stderr
    assert not (tmp_path / "stolen").exists()
    r = httpx.get(
        f"{fog.url}/v1/blobs/{sha}", headers={"authorization": f"Bearer {other_key}"}, timeout=30
    )
    assert r.status_code == 404
    ls = fogwheel(fog, "blobs", "ls", "--json", key=other_key)
    assert sha not in ls.stdout
    # knowing the name is not having the bytes: the status says nothing of someone else's
    mine = upload_status(fog, sha, other_key)  # UploadState: `size` only once it is whole
    assert mine == {"sha": sha, "complete": False, "received": 0, "size": None}
    res = fogwheel(fog, "run", "-i", f"x=blob:{sha}", "--", "true", key=other_key)
    assert res.returncode == 1 and "no blob" in res.stderr


def test_putting_again_a_blob_corrupted_on_the_coordinator_replaces_it(fog, tmp_path) -> None:
    data = tmp_path / "precious.bin"
    sha = write_random(data, 1 << 20, seed=17)
    assert fogwheel(fog, "blobs", "put", str(data)).returncode == 0
    again = fogwheel(fog, "blobs", "put", str(data))
    assert "already on the coordinator: nothing sent" in again.stderr  # intact: not sent twice
    stored = fog.dir / "coordinator" / "blobs" / sha[:2] / sha
    rotten = bytearray(stored.read_bytes())
    rotten[4321] ^= 1
    stored.write_bytes(bytes(rotten))

    res = fogwheel(fog, "blobs", "put", str(data))
    assert res.returncode == 0 and "sent 1.0 MB" in res.stderr  # the correct bytes went up
    got = tmp_path / "got.bin"
    assert fogwheel(fog, "blobs", "get", sha, "-o", str(got)).returncode == 0
    assert got.read_bytes() == data.read_bytes()


# -- the coordinator's side of the protocol -------------------------------------------------------


def test_parts_must_follow_each_other_and_the_whole_must_match_its_name(fog) -> None:
    auth = {"authorization": f"Bearer {fog.api_key}"}
    data = os.urandom(3000)
    sha = hashlib.sha256(data).hexdigest()
    url = f"{fog.url}/v1/blobs/{sha}"
    r = httpx.put(url, content=data[:1000], headers={**auth, "content-range": "bytes 0-999/3000"})
    assert r.status_code == 202 and r.json()["received"] == 1000
    r = httpx.put(
        url, content=data[2000:], headers={**auth, "content-range": "bytes 2000-2999/3000"}
    )
    assert r.status_code == 409 and "send from byte 1000" in r.json()["error"]
    r = httpx.put(
        url, content=data[1000:], headers={**auth, "content-range": "bytes 1000-2999/3000"}
    )
    assert r.status_code == 201
    assert r.json() == {"sha": sha, "size": 3000, "complete": True, "received": 3000}
    assert httpx.get(url, headers=auth).content == data

    wrong = hashlib.sha256(b"something else").hexdigest()
    bad = f"{fog.url}/v1/blobs/{wrong}"
    r = httpx.put(bad, content=data, headers={**auth, "content-range": "bytes 0-2999/3000"})
    assert r.status_code == 400 and "upload the file again" in r.json()["error"]
    assert upload_status(fog, wrong)["received"] == 0  # the bad partial is gone

    r = httpx.put(bad, content=b"x", headers={**auth, "content-range": "bytes 0-0/3000000000"})
    assert r.status_code == 413 and "--max-blob-mb" in r.json()["error"]
    r = httpx.put(bad, content=b"x", headers={**auth, "content-range": "bytes 5-1/10"})
    assert r.status_code == 400
    r = httpx.get(url, headers={**auth, "range": "bytes=2990-"})
    assert r.status_code == 206 and r.content == data[2990:]
    assert r.headers["content-range"] == "bytes 2990-2999/3000"
    r = httpx.get(url, headers={**auth, "range": "bytes=3000-"})
    assert r.status_code == 416 and r.headers["content-range"] == "bytes */3000"


def test_a_blob_over_the_blob_limit_is_refused_and_leaves_nothing_behind(
    tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv("FOGWHEEL_MAX_BLOB_MB", "1")
    with LocalFog(0, workdir=tmp_path / "small") as small:
        auth = {"authorization": f"Bearer {small.api_key}"}
        data = bytes(2 << 20)
        url = f"{small.url}/v1/blobs/{hashlib.sha256(data).hexdigest()}"

        def streamed() -> Iterator[bytes]:  # no Content-Length: counted as it comes
            for i in range(0, len(data), 1 << 16):
                yield data[i : i + (1 << 16)]

        r = httpx.put(url, content=streamed(), headers=auth, timeout=30)
        assert r.status_code == 413 and "--max-blob-mb" in r.json()["error"]
        assert not list((tmp_path / "small" / "coordinator" / "blobs").rglob("partial/*"))
        r = httpx.put(url, content=data, headers=auth, timeout=30)  # Content-Length: at once
        assert r.status_code == 413

        from fogwheel import Client
        from fogwheel.errors import ApiError

        big = tmp_path / "two.bin"
        big.write_bytes(data)
        with Client(small.url, small.api_key) as client, pytest.raises(ApiError) as caught:
            client.put_blob(big)
        assert caught.value.status == 413 and "--max-blob-mb" in str(caught.value)


# -- the listing, on both databases ---------------------------------------------------------------


def test_a_customers_blob_list_is_its_own_newest_first(store) -> None:
    store.own_blob("alice", "a" * 64, 10, 1000.0)
    store.own_blob("alice", "b" * 64, 20, 2000.0)
    store.own_blob("alice", "c" * 64, 30)  # owned before the column existed: no time
    store.own_blob("bob", "d" * 64, 40, 3000.0)
    store.own_blob("alice", "a" * 64, 10, 5000.0)  # owned already: its time stays
    rows = store.list_blobs("alice")
    assert [(r["sha"][0], r["size"], r["created"]) for r in rows] == [
        ("b", 20, 2000.0),
        ("a", 10, 1000.0),
        ("c", 30, None),
    ]
    assert [r["sha"][0] for r in store.list_blobs("alice", limit=1, offset=1)] == ["a"]
    assert [r["sha"] for r in store.list_blobs("bob")] == ["d" * 64]
    assert store.list_blobs("carol") == []
