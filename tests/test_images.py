"""Program images: command tasks run in a root built in the test from Debian's busybox-static.

Real coordinator, real node agents (LocalFog), real bubblewrap: the image is pushed as blobs,
unpacked once per node, used as `/` with no network, placed only on nodes of its architecture;
a tampered layer and a hostile tarball are refused.
"""

from __future__ import annotations

import hashlib
import io
import os
import platform
import secrets
import shutil
import socket
import subprocess
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fogwheel import Client
from fogwheel.core import images as core
from fogwheel.errors import TaskFailed
from fogwheel.image_build import build, pack_dir
from fogwheel.localfog import LocalFog
from fogwheel.node.images import ImageCache, ImageRefused
from fogwheel.node.sandbox import detect

BUSYBOX = "/bin/busybox"
HOST_ARCH = core.normalise_arch(platform.machine())
OTHER_ARCH = "aarch64" if HOST_ARCH != "aarch64" else "x86_64"


def _static_busybox() -> str | None:
    """Why the test cannot run here, or None: busybox-static must be at /bin/busybox."""
    if not os.path.isfile(BUSYBOX):
        return "no /bin/busybox: apt-get install busybox-static"
    head = Path(BUSYBOX).read_bytes()[:4096]
    if b"ld-linux" in head or b"ld-musl" in head:
        return "/bin/busybox is dynamically linked: apt-get install busybox-static"
    if detect() is None:
        return "no working bubblewrap: images run only under it"
    return None


_WHY = _static_busybox()
if _WHY and os.environ.get("FOGWHEEL_REQUIRE_BUSYBOX"):
    pytest.fail(_WHY, pytrace=False)
pytestmark = pytest.mark.skipif(_WHY is not None, reason=_WHY or "")


def busybox_root(dest: Path) -> Path:
    """A root of busybox and its applet links: its own /bin/sh, no /etc/os-release."""
    (dest / "bin").mkdir(parents=True)
    shutil.copy2(BUSYBOX, dest / "bin" / "busybox")
    applets = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True, check=True)
    for name in applets.stdout.split():
        if name != "busybox":
            os.symlink("busybox", dest / "bin" / name)
    (dest / "etc").mkdir()
    (dest / "etc" / "hostname").write_text("busybox-image\n")
    (dest / "tmp").mkdir()
    return dest


@pytest.fixture(scope="module")
def fog(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFog]:
    with LocalFog(2, lease_seconds=5.0, workdir=tmp_path_factory.mktemp("fog")) as f:
        yield f


@pytest.fixture
def client(fog: LocalFog) -> Iterator[Client]:
    with Client(fog.url, fog.api_key, replicas=1) as c:
        yield c


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return busybox_root(tmp_path_factory.mktemp("img") / "root")


class Listener:
    """A TCP server on the host's loopback that counts who connected to it."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()


def test_a_command_runs_in_a_busybox_image_with_no_network(client: Client, root: Path) -> None:
    image = client.push_image(root)
    assert image.arch == HOST_ARCH and image.id in {i.id for i in client.images()}
    host = Listener()
    script = (
        "test -e /etc/os-release && echo HAS-OS-RELEASE || echo no-os-release; "
        "readlink /bin/sh; cat /etc/hostname; pwd; echo $HOME; "
        "echo made > out.txt; "
        f"nc -w 3 127.0.0.1 {host.port} </dev/null && echo CONNECTED || echo connect-failed; "
        "touch /bin/x 2>/dev/null && echo WROTE-ROOT || echo root-read-only"
    )
    assert os.path.exists("/etc/os-release")  # the host has one; the image does not
    res = client.run(["/bin/sh", "-c", script], outputs=["out.txt"], image=image).result(120)
    lines = res.stdout.split()
    assert lines[:5] == [
        "no-os-release",
        "busybox",
        "busybox-image",
        "/.fogwheel/task",
        "/.fogwheel/task",
    ]
    assert "connect-failed" in lines and "CONNECTED" not in lines
    assert "root-read-only" in lines
    assert host.accepted == 0
    assert res.outputs["out.txt"] == b"made\n"


def test_the_next_task_goes_to_the_node_that_unpacked_the_image_and_says_so(
    client: Client, root: Path
) -> None:
    image = client.push_image(root)
    first = client.run(["/bin/true"], image=image.id)
    first.result(120)
    holder = client.tasks(first.job_id)[0]["node_id"]
    later = client.run(["/bin/true"], image=image.id)
    later.result(120)
    [task] = client.tasks(later.job_id)
    assert task["node_id"] == holder
    assert "its image is already unpacked here" in task["history"][-1]["reason"], task


def test_an_image_of_another_architecture_is_never_placed_on_this_host(
    client: Client, root: Path
) -> None:
    image = client.push_image(root, arch=OTHER_ARCH)
    assert image.arch == OTHER_ARCH
    fut = client.run(["/bin/true"], image=image)
    deadline = time.monotonic() + 6  # several polls of both nodes
    while time.monotonic() < deadline:
        assert not fut.done()
        time.sleep(0.5)
    [task] = client.tasks(fut.job_id)
    assert task["state"] == "pending" and task["history"] == []
    waiting = client.job(fut.job_id)["waiting"]
    assert waiting["stuck"] and f"built for {OTHER_ARCH}" in waiting["sentence"], waiting
    assert HOST_ARCH in waiting["sentence"]
    fut.cancel()


def test_an_unknown_image_is_refused_with_a_422_that_says_what_to_do(client: Client) -> None:
    with pytest.raises(Exception, match="images push"):
        client.run(["/bin/true"], image="0" * 64).result(30)


def test_a_tampered_layer_blob_is_refused(fog: LocalFog, client: Client, tmp_path: Path) -> None:
    root = busybox_root(tmp_path / "root")
    (root / "etc" / "unique").write_text(secrets.token_hex(8))  # a layer no other test has
    image = client.push_image(root)
    [layer] = image.layers
    [stored] = [p for p in (fog.dir / "coordinator").rglob(layer) if p.is_file()]
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0xFF
    stored.write_bytes(bytes(data))
    with pytest.raises(TaskFailed, match=r"(?i)refused|could not be fetched"):
        client.run(["/bin/true"], image=image).result(120)


def _tar(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for ti, data in members:
            ti.size = len(data) if data is not None else 0
            tf.addfile(ti, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type, ti.linkname, ti.mode = kind, link, 0o644
    return ti


def _push_unchecked(client: Client, layer: bytes) -> str:
    """Register a layer as an image without the client's own checks (as a hostile SDK would)."""
    blob = client.put_blob(layer, upload=True)
    m = core.make_manifest([(blob.sha, len(layer))], HOST_ARCH, 1 << 20)
    manifest = client.put_blob(m.canonical(), upload=True)
    return str(client._request("POST", "/v1/images", json={"manifest": manifest.sha}).json()["id"])


@pytest.mark.parametrize("attack", ["dotdot", "symlink"])
def test_a_malicious_tarball_is_refused_by_push_and_by_the_node(
    client: Client, tmp_path: Path, attack: str
) -> None:
    target = Path(f"/tmp/fogwheel-escape-{secrets.token_hex(6)}")
    target.mkdir()
    try:
        if attack == "dotdot":
            members = [(_member(f"../../../../../..{target}/pwned"), b"x")]
        else:  # an absolute symlink, then a file written through it
            members = [
                (_member("etc", tarfile.SYMTYPE, str(target)), None),
                (_member("etc/pwned"), b"x"),
            ]
        tarball = tmp_path / "evil.tar"
        tarball.write_bytes(_tar(members))
        with pytest.raises(core.UnsafeMember):
            client.push_image(tarball)
        image_id = _push_unchecked(client, tarball.read_bytes())
        with pytest.raises(TaskFailed, match="unsafe layer"):
            client.run(["/bin/true"], image=image_id).result(120)
        assert not (target / "pwned").exists()
    finally:
        shutil.rmtree(target, ignore_errors=True)


# -- the node's cache, driven directly --------------------------------------------------------


def _blobs_of(root: Path, tmp: Path) -> tuple[str, dict[str, bytes]]:
    """An image of `root` as the blobs a coordinator would serve: (id, sha -> bytes)."""
    built = build(root)
    try:
        blobs = {hashlib.sha256(p.read_bytes()).hexdigest(): p.read_bytes() for p in built.layers}
    finally:
        built.cleanup()
    raw = built.manifest.canonical()
    blobs[hashlib.sha256(raw).hexdigest()] = raw
    return built.manifest.image_id(), blobs


def _fetcher(blobs: dict[str, bytes], log: list[str]) -> object:
    def fetch(sha: str, dest: Path) -> None:
        log.append(sha)
        dest.write_bytes(blobs[sha])

    return fetch


def test_the_node_hashes_every_blob_and_refuses_one_that_does_not_match(
    root: Path, tmp_path: Path
) -> None:
    image_id, blobs = _blobs_of(root, tmp_path)
    layer = next(s for s in blobs if s != image_id)
    tampered = dict(blobs)
    tampered[layer] = blobs[layer][:-1] + bytes([blobs[layer][-1] ^ 1])
    cache = ImageCache(tmp_path / "images", 1 << 30)
    fetch = _fetcher(tampered, [])
    with (
        pytest.raises(ImageRefused, match="does not match its SHA-256"),
        cache.use(image_id, fetch),  # type: ignore[arg-type]
    ):
        pass
    assert cache.held() == [] and not any((tmp_path / "images").glob(".tmp-*"))


def test_an_image_is_unpacked_once_even_by_concurrent_tasks(root: Path, tmp_path: Path) -> None:
    image_id, blobs = _blobs_of(root, tmp_path)
    cache = ImageCache(tmp_path / "images", 1 << 30)
    fetched: list[str] = []
    seen: list[Path] = []

    def task() -> None:
        with cache.use(image_id, _fetcher(blobs, fetched)) as path:  # type: ignore[arg-type]
            seen.append(path)

    threads = [threading.Thread(target=task) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(fetched) == len(blobs)  # each blob once: one unpack
    assert len(set(seen)) == 1 and (seen[0] / "bin" / "busybox").is_file()
    assert os.readlink(seen[0] / "bin" / "sh") == "busybox"


def test_images_over_the_quota_evict_the_least_recently_used(root: Path, tmp_path: Path) -> None:
    ids = []
    all_blobs: dict[str, bytes] = {}
    for i in range(3):
        r = tmp_path / f"r{i}"
        shutil.copytree(root, r, symlinks=True)
        (r / "etc" / "n").write_text(str(i))
        image_id, blobs = _blobs_of(r, tmp_path)
        ids.append(image_id)
        all_blobs.update(blobs)
    one = core.parse_manifest(all_blobs[ids[0]]).unpacked
    cache = ImageCache(tmp_path / "images", int(one * 2.5))  # room for two
    for image_id in ids[:2]:
        with cache.use(image_id, _fetcher(all_blobs, [])):  # type: ignore[arg-type]
            pass
        time.sleep(0.05)
    with cache.use(ids[0], _fetcher(all_blobs, [])):  # type: ignore[arg-type]
        pass  # used again: now ids[1] is the least recent
    with cache.use(ids[2], _fetcher(all_blobs, [])):  # type: ignore[arg-type]
        pass
    assert sorted(cache.held()) == sorted([ids[0], ids[2]])


def test_oci_whiteouts_are_applied_layer_over_layer(tmp_path: Path) -> None:
    lower = tmp_path / "lower"
    (lower / "etc").mkdir(parents=True)
    (lower / "etc" / "keep").write_text("k")
    (lower / "etc" / "gone").write_text("g")
    (lower / "var" / "cache").mkdir(parents=True)
    (lower / "var" / "cache" / "old").write_text("o")
    pack_dir(lower, tmp_path / "l1.tar.gz")
    upper = _tar(
        [
            (_member("etc/.wh.gone"), b""),
            (_member("var/cache/.wh..wh..opq"), b""),
            (_member("var/cache/new"), b"n"),
        ]
    )
    l1 = (tmp_path / "l1.tar.gz").read_bytes()
    blobs = {hashlib.sha256(b).hexdigest(): b for b in (l1, upper)}
    m = core.make_manifest(
        [(hashlib.sha256(b).hexdigest(), len(b)) for b in (l1, upper)], HOST_ARCH, 100
    )
    blobs[m.image_id()] = m.canonical()
    cache = ImageCache(tmp_path / "images", 1 << 20)
    with cache.use(m.image_id(), _fetcher(blobs, [])) as path:  # type: ignore[arg-type]
        assert (path / "etc" / "keep").read_text() == "k"
        assert not (path / "etc" / "gone").exists()
        assert sorted(os.listdir(path / "var" / "cache")) == ["new"]


# -- the store, on SQLite and PostgreSQL ------------------------------------------------------


def test_an_image_registers_once_per_customer_and_adds_its_needs(store) -> None:  # type: ignore[no-untyped-def]
    from fogwheel.store import images as rows

    m = core.make_manifest([("a" * 64, 10), ("b" * 64, 20)], "arm64", 99)
    with store.tx() as c:
        first = rows.add_image(c, "cust-1", m, 1.0)
        again = rows.add_image(c, "cust-1", m, 2.0)
    assert first == again and first["arch"] == "aarch64" and first["size"] == 30
    with store.read() as c:
        assert [i["id"] for i in rows.list_images(c, "cust-1")] == [m.image_id()]
        assert (
            rows.list_images(c, "cust-2") == []
            and rows.get_image(c, "cust-2", m.image_id()) is None
        )
        needs, blobs = rows.image_refs(c, "cust-1", m.image_id()) or (set(), {})
    assert needs == {"arch:aarch64", "images"}
    assert blobs == {"a" * 64: 10, "b" * 64: 20, m.image_id(): 1}
