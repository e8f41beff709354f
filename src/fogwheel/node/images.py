"""The device's image cache: each program image unpacked once, verified, within a disk quota.

A command task that names an image (docs/images.md) runs with that image as `/`. The lease
that names it is signed, and the image id is the SHA-256 of its manifest, which lists every
layer's SHA-256: so the manifest and then every layer are hashed before a single member is
unpacked, and a blob that does not match its name is refused (`ImageRefused`). Layers are
unpacked in order into a temporary directory, each member judged first by
`core/images.Unpacking` (no absolute names, no `..`, no devices, nothing written through a
link, the size the manifest declared), and the whole tree is renamed into place only when it
is complete, so a crash leaves no half image that a later task would use.

One image is unpacked by one thread at a time (a lock per image, and a file lock for another
process on the same data dir); images in use are pinned; when the quota would be exceeded the
least recently used unpinned images are removed first.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import secrets
import shutil
import stat
import tarfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from fogwheel.core import images as core
from fogwheel.node import safefs
from fogwheel.node.imageroot import host_runtime
from fogwheel.node.sandbox import Sandbox

log = logging.getLogger("fogwheel.node")

IMAGES = "images"  # the capability of a node that runs command tasks in program images
META = ".meta"  # per image: {"unpacked": bytes}; its mtime is when the image was last used
Fetch = Callable[[str, Path], None]  # fetch(sha, dest): write the blob named sha to dest


class ImageRefused(Exception):
    """An image this node will not run: a blob that does not match its hash, an unsafe layer,
    or one larger than the node's quota. The message says which; `retryable` when another
    node (or a later try) may do better: a fetch that failed, a corrupt copy, no room here."""

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


def image_capabilities(sandbox: Sandbox | None) -> set[str]:
    """What a node advertises for images: its architecture (`arch:x86_64`), always, and
    `images` where its sandbox can run one as `/` (bubblewrap and a findable loader)."""
    caps = set()
    with contextlib.suppress(core.ImageError):
        caps.add(core.arch_need(platform.machine()))
    if sandbox is not None and sandbox.confined and host_runtime() is not None:
        caps.add(IMAGES)
    return caps


class ImageCache:
    """Unpacked images under `root`, at most `quota_bytes` of them together."""

    def __init__(
        self, root: Path, quota_bytes: int, on_evict: Callable[[str], None] | None = None
    ) -> None:
        self.root = root
        self.quota_bytes = quota_bytes
        self.on_evict = on_evict  # told each image id evicted (the agent tells the coordinator)
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        self._pins: Counter[str] = Counter()
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(".*"):  # a killed agent's half unpack or fetch
            if stale.name.startswith((".tmp-", ".gone-", ".fetch-")):
                shutil.rmtree(stale, ignore_errors=True)

    def held(self) -> list[str]:
        """The ids of the images unpacked here."""
        return sorted(p.name for p in self.root.iterdir() if (p / META).exists())

    @contextlib.contextmanager
    def use(self, image_id: str, fetch: Fetch) -> Iterator[Path]:
        """The image's root directory, unpacked first if it is not here; pinned (never
        evicted) until the block ends."""
        if not _is_sha(image_id):
            raise ImageRefused(f"{image_id[:80]!r} is not an image id")
        with self._guard:
            lock = self._locks.setdefault(image_id, threading.Lock())
            self._pins[image_id] += 1
        try:
            with lock, self._file_lock(image_id):
                path = self.root / image_id
                if not (path / META).exists():
                    self._unpack(image_id, fetch)
                with contextlib.suppress(OSError):
                    os.utime(path / META)  # recently used: evicted last
            yield path
        finally:
            with self._guard:
                self._pins[image_id] -= 1
                if self._pins[image_id] <= 0:
                    del self._pins[image_id]

    def _file_lock(self, image_id: str) -> contextlib.AbstractContextManager[None]:
        return safefs.locked(self.root / f".lock-{image_id}")

    def _unpack(self, image_id: str, fetch: Fetch) -> None:
        work = self.root / f".fetch-{image_id[:16]}-{secrets.token_hex(4)}"
        work.mkdir()
        try:
            manifest = _verified(fetch, image_id, work / "manifest", core.MAX_MANIFEST_BYTES)
            try:
                m = core.parse_manifest(manifest.read_bytes())
            except core.ImageError as e:
                raise ImageRefused(f"image {image_id[:12]}: {e}") from None
            if m.unpacked > self.quota_bytes:
                raise ImageRefused(
                    f"image {image_id[:12]} unpacks to {m.unpacked >> 20} MB, more than this "
                    f"node's image quota of {self.quota_bytes >> 20} MB (--images-mb)",
                    retryable=True,
                )
            started = time.perf_counter()
            layers = [_verified(fetch, x.sha, work / x.sha, x.size) for x in m.layers]
            self._make_room(m.unpacked)
            tmp = self.root / f".tmp-{image_id[:16]}-{secrets.token_hex(4)}"
            tmp.mkdir(mode=0o755)
            try:
                state = core.Unpacking(max_bytes=m.unpacked)
                for layer in layers:
                    apply_layer(layer, tmp, state)
                    layer.unlink()
                os.chmod(tmp, 0o755)
                (tmp / META).write_text(json.dumps({"unpacked": state.bytes}))
                os.rename(tmp, self.root / image_id)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            log.info(
                "image %s unpacked: %d layers, %.1f MB, %.2f s",
                image_id[:12],
                len(layers),
                state.bytes / 1e6,
                time.perf_counter() - started,
            )
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _make_room(self, need: int) -> None:
        """Remove least recently used images not in use until `need` more bytes fit."""
        entries = []
        for p in self.root.iterdir():
            meta = p / META
            if not meta.exists():
                continue
            try:
                size = int(json.loads(meta.read_text()).get("unpacked", 0))
                entries.append((meta.stat().st_mtime, size, p))
            except (OSError, ValueError):
                entries.append((0.0, 0, p))
        used = sum(size for _, size, _ in entries)
        with self._guard:
            pinned = set(self._pins)
        for _, size, p in sorted(entries):
            if used + need <= self.quota_bytes:
                break
            if p.name in pinned:
                continue
            gone = self.root / f".gone-{p.name[:16]}-{secrets.token_hex(4)}"
            os.rename(p, gone)  # vanishes whole, then is deleted at leisure
            shutil.rmtree(gone, ignore_errors=True)
            used -= size
            log.info("image %s evicted (least recently used, quota)", p.name[:12])
            if self.on_evict is not None:
                self.on_evict(p.name)
        if used + need > self.quota_bytes:
            raise ImageRefused(
                f"no room for an image of {need >> 20} MB: this node's image quota is "
                f"{self.quota_bytes >> 20} MB and the images in use take {used >> 20} MB",
                retryable=True,
            )


def _verified(fetch: Fetch, sha: str, dest: Path, size: int) -> Path:
    """Fetch blob `sha` to `dest` and hash it; ImageRefused unless it is that blob."""
    try:
        fetch(sha, dest)
    except ImageRefused:
        raise
    except Exception as e:
        why = f"blob {sha[:12]} of the image could not be fetched: {e}"
        raise ImageRefused(why, retryable=True) from e
    h = hashlib.sha256()
    n = 0
    with open(dest, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            n += len(chunk)
            if n > size and size != core.MAX_MANIFEST_BYTES:
                break
    if h.hexdigest() != sha or (size != core.MAX_MANIFEST_BYTES and n != size):
        why = f"blob {sha[:12]} of the image does not match its SHA-256: refused"
        raise ImageRefused(why, retryable=True)  # a corrupt copy: another fetch may be whole
    return dest


def _kind(ti: tarfile.TarInfo) -> core.Kind:
    if ti.isreg():
        return "file"
    if ti.isdir():
        return "dir"
    if ti.issym():
        return "symlink"
    if ti.islnk():
        return "hardlink"
    if ti.ischr():
        return "char"
    if ti.isblk():
        return "block"
    if ti.isfifo():
        return "fifo"
    return "other"


def apply_layer(layer: Path, dest: Path, state: core.Unpacking) -> None:
    """Apply one tar layer (plain, gzip, bzip2 or xz) over the tree in `dest`.

    Every member is judged by `state` before anything is written; the writes never follow a
    link (O_NOFOLLOW, and no member is ever written beneath one), so a layer reaches nothing
    outside `dest`. Raises ImageRefused with the member that was refused."""
    this_layer: set[str] = set()
    try:
        with tarfile.open(layer, mode="r|*") as tf:
            for i, ti in enumerate(tf):
                if i % 1000 == 999:
                    vars(tf)["members"].clear()  # stream mode: no need to keep every header
                member = core.Member(ti.name, _kind(ti), ti.size, ti.linkname, ti.mode)
                action = state.admit(member)
                if isinstance(action, core.Write):
                    this_layer.add(action.path)
                    src = tf.extractfile(ti) if member.kind == "file" else None
                    _write(dest, action, src)
                elif isinstance(action, core.Remove):
                    _remove(dest / action.path)
                elif isinstance(action, core.Empty):
                    _empty(dest, action.path, this_layer)
    except core.UnsafeMember as e:
        raise ImageRefused(f"unsafe layer {layer.name[:12]}: {e}") from None
    except (tarfile.TarError, EOFError, OSError) as e:
        raise ImageRefused(f"layer {layer.name[:12]} is not a readable tar archive: {e}") from None


def _parents(dest: Path, path: str) -> Path:
    """Make the directories above `path` (real ones: never through a link) and return its
    full path."""
    parts = path.split("/")
    here = dest
    for part in parts[:-1]:
        here = here / part
        try:
            st = os.lstat(here)
        except FileNotFoundError:
            os.mkdir(here, 0o755)
            continue
        if stat.S_ISLNK(st.st_mode):
            raise ImageRefused(f"{path!r} would be written through a link")  # admit refuses first
        if not stat.S_ISDIR(st.st_mode):
            os.unlink(here)  # a later layer puts a directory where a file was
            os.mkdir(here, 0o755)
    return here / parts[-1]


def _write(dest: Path, w: core.Write, src: IO[bytes] | None) -> None:
    full = _parents(dest, w.path)
    kind = w.member.kind
    try:
        st = os.lstat(full)
    except FileNotFoundError:
        st = None
    if st is not None:
        if stat.S_ISDIR(st.st_mode) and not stat.S_ISLNK(st.st_mode):
            if kind == "dir":
                os.chmod(full, w.mode)
                return
            shutil.rmtree(full)
        else:
            os.unlink(full)
    if kind == "dir":
        os.mkdir(full, w.mode)
        os.chmod(full, w.mode)  # past the umask
    elif kind == "symlink":
        os.symlink(w.member.link, full)
    elif kind == "hardlink":
        os.link(dest / w.link, full, follow_symlinks=False)
    else:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
        fd = os.open(full, flags, 0o600)
        with os.fdopen(fd, "wb") as out:
            left = w.member.size
            while left > 0 and src is not None:
                chunk = src.read(min(left, 1 << 20))
                if not chunk:
                    raise ImageRefused(f"{w.path!r} is cut short in its layer")
                out.write(chunk)
                left -= len(chunk)
            os.fchmod(out.fileno(), w.mode)


def _remove(full: Path) -> None:
    try:
        st = os.lstat(full)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(full)
    else:
        os.unlink(full)


def _empty(dest: Path, path: str, this_layer: set[str]) -> None:
    """An opaque directory: what lower layers put in it goes; this layer's entries stay."""
    full = dest / path if path else dest
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for name in os.listdir(full):
            child = f"{path}/{name}" if path else name
            if child not in this_layer and name != META:
                _remove(full / name)


def _is_sha(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text)
