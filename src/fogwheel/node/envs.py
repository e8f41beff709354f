"""Python environments on the device: one directory per lock, built offline from blobs.

A python task may name an environment lock (core/envlock.py) in its signed lease. Before its
worker starts, the agent makes sure that environment is here: `EnvCache.ready` fetches the
lock and the wheels this device's platform takes, each through the coordinator's blob API and
each checked against the SHA-256 it is named by before a byte of it is used, and unpacks them
into `<data dir>/envs/<lock sha>/site`, which the worker then imports from (first on its path,
read-only in the sandbox). The device never reaches a package index, and nothing of the
customer's runs while it is built: a wheel is unpacked, never installed by running code
(no setup.py, no build backend, no post-install hook); only its `purelib`/`platlib` parts are
kept.

Every wheel is an attacker's file: names that would lead out of the directory, links and
special files are refused, and what it unpacks to is bounded by the disk quota before and
while it is written (a zip bomb stops at the quota). A build happens in a temporary directory
that is renamed into place only when whole, so a crash leaves no half environment that looks
like one; one lock is never built twice at once (a lock per sha, in this process and across
processes). Environments not used lately are removed, least recently used first, to keep all
of them within `--env-mb`; one in use is never removed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import stat
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fogwheel.core import envlock
from fogwheel.node import safefs

log = logging.getLogger("fogwheel.node")

SITE = "site"  # the directory of an environment that goes on the worker's path
WHOLE = ".whole"  # written last, before the rename: an environment without it is not one
MAX_ENTRIES = 200_000  # files in one wheel
MAX_HELD_REPORTED = 64  # locks a node names in its sync (protocol.SyncIn.envs)
_SHA = re.compile(r"^[0-9a-f]{64}$")
_KEPT_DATA = ("purelib", "platlib")  # of a wheel's .data/ directories, what goes on the path

# fetch(sha, max_bytes, dest): write blob `sha` (at most max_bytes) to the file `dest`
Fetch = Callable[[str, int, Path], None]


class EnvError(Exception):
    """An environment that cannot be made here: what happened and what to do."""


@dataclass(frozen=True)
class Stats:
    installs: int  # environments built on this device, ever
    evictions: int  # environments removed to keep within the quota
    refused: int  # wheels or locks refused for not matching their SHA-256


class EnvCache:
    def __init__(self, root: Path, quota_bytes: int, platform: envlock.Platform) -> None:
        self.root = root
        self.quota_bytes = quota_bytes
        self.platform = platform
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._building: dict[str, threading.Lock] = {}
        self._in_use: dict[str, int] = {}
        for stale in self.root.glob(".tmp-*"):  # a build a killed agent left
            shutil.rmtree(stale, ignore_errors=True)

    # -- what is here -------------------------------------------------------------------------

    def held(self) -> list[str]:
        """The locks whose environments are whole here, most recently used first."""
        envs = sorted(self._whole(), key=lambda p: -_used_at(p))
        return [p.name for p in envs]

    def disk_bytes(self) -> int:
        return sum(_size_of(p) for p in self._whole())

    def stats(self) -> Stats:
        raw = _read_json(self.root / "stats.json")
        return Stats(
            int(raw.get("installs", 0)), int(raw.get("evictions", 0)), int(raw.get("refused", 0))
        )

    def _whole(self) -> list[Path]:
        return [p for p in self.root.iterdir() if _SHA.match(p.name) and (p / WHOLE).exists()]

    # -- making one ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def ready(self, lock_sha: str, fetch: Fetch) -> Iterator[Path]:
        """The `site` directory of environment `lock_sha`, built first if it is not here;
        it is not evicted until the block ends."""
        if not isinstance(lock_sha, str) or not _SHA.match(lock_sha):
            raise EnvError("the task names an environment that is not a SHA-256")
        with self._lock:
            self._in_use[lock_sha] = self._in_use.get(lock_sha, 0) + 1
            building = self._building.setdefault(lock_sha, threading.Lock())
        try:
            with building, self._file_lock(lock_sha):
                home = self.root / lock_sha
                if not (home / WHOLE).exists():
                    self._build(lock_sha, fetch)
                    self._evict(keep=lock_sha)
                with contextlib.suppress(OSError):
                    os.utime(home / WHOLE)  # used now: evicted last
            yield home / SITE
        finally:
            with self._lock:
                self._in_use[lock_sha] -= 1
                if not self._in_use[lock_sha]:
                    del self._in_use[lock_sha]

    def _file_lock(self, lock_sha: str) -> contextlib.AbstractContextManager[None]:
        """Another process on this data dir (a restarted agent's leftover) builds it too."""
        return safefs.locked(self.root / f".build-{lock_sha[:16]}")

    def _build(self, lock_sha: str, fetch: Fetch) -> None:
        t0 = time.monotonic()
        tmp = self.root / f".tmp-{lock_sha[:16]}-{os.getpid()}-{threading.get_ident()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            raw = self._verified(lock_sha, envlock.MAX_LOCK_BYTES, tmp / "lock.json", fetch, None)
            try:
                lock = envlock.parse(raw.read_bytes())
            except envlock.LockError as e:
                raise EnvError(f"environment {lock_sha[:12]}: {e}") from None
            got = envlock.choose(lock, self.platform)
            if isinstance(got, envlock.Unfit):
                raise EnvError(got.reason)
            site = tmp / SITE
            site.mkdir()
            budget = self.quota_bytes
            for w in got.wheels:
                path = self._verified(w.sha256, w.size, tmp / w.file, fetch, w)
                try:
                    budget -= unpack_wheel(path, site, budget)
                except EnvError as e:
                    raise EnvError(
                        f"environment {lock.short()}: {e}; this node keeps environments "
                        f"within --env-mb {self.quota_bytes >> 20}"
                    ) from None
                path.unlink()
            size = self.quota_bytes - budget
            (tmp / WHOLE).write_text(json.dumps({"size": size, "built_at": time.time()}))
            home = self.root / lock_sha
            shutil.rmtree(home, ignore_errors=True)  # a half one from before WHOLE existed
            tmp.rename(home)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        self._count("installs")
        log.info(
            "environment %s built: %d wheels, %.1f MB, %.1f s",
            lock_sha[:12],
            len(got.wheels),
            size / 1e6,
            time.monotonic() - t0,
        )

    def _verified(
        self, sha: str, max_bytes: int, dest: Path, fetch: Fetch, wheel: envlock.Wheel | None
    ) -> Path:
        """Fetch blob `sha` to `dest` and refuse it unless its bytes hash to `sha`."""
        what = f"wheel {wheel.file}" if wheel else f"environment lock {sha[:12]}"
        try:
            fetch(sha, max_bytes, dest)
        except Exception as e:
            raise EnvError(
                f"{what} could not be fetched ({e}): the coordinator lost it or it failed the "
                "coordinator's own hash check (tampered with); submit again and the client "
                "uploads what the coordinator lacks"
            ) from None
        h = hashlib.sha256()
        with open(dest, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        size = dest.stat().st_size
        if h.hexdigest() != sha or (wheel is not None and size != wheel.size):
            self._count("refused")
            raise EnvError(
                f"{what} arrived with bytes that do not match its SHA-256 {sha[:16]}…: refused "
                "and nothing of it installed (tampered with or corrupted on the way); the task "
                "goes back to the queue"
            )
        return dest

    # -- keeping within the quota ---------------------------------------------------------------

    def _evict(self, keep: str) -> None:
        """Remove environments least recently used first until all fit in the quota; those
        in use (and `keep`, just built: unpacking bounded it by the quota) stay."""
        envs = self._whole()
        total = sum(_size_of(p) for p in envs)
        with self._lock:
            busy = set(self._in_use) | {keep}
        for p in sorted(envs, key=_used_at):
            if total <= self.quota_bytes:
                break
            if p.name in busy:
                continue
            size = _size_of(p)
            gone = p.with_name(f".tmp-gone-{p.name[:16]}-{threading.get_ident()}")
            p.rename(gone)  # no longer whole the moment it moves
            shutil.rmtree(gone, ignore_errors=True)
            total -= size
            self._count("evictions")
            log.info("environment %s removed (least recently used; --env-mb)", p.name[:12])

    def _count(self, what: str) -> None:
        with self._lock:
            path = self.root / "stats.json"
            stats = _read_json(path)
            stats[what] = int(stats.get(what, 0)) + 1
            tmp = path.with_name(f".stats-{threading.get_ident()}")
            tmp.write_text(json.dumps(stats))
            tmp.replace(path)


def unpack_wheel(wheel: Path, site: Path, budget: int) -> int:
    """Unpack `wheel`'s importable parts into `site`, never more than `budget` bytes; the
    bytes written. A name that leads outside, a link or a special file refuses the wheel."""
    written = 0
    try:
        zf = zipfile.ZipFile(wheel)
    except (zipfile.BadZipFile, OSError) as e:
        raise EnvError(f"{wheel.name} is not a wheel (a zip file): {e}") from None
    with zf:
        infos = zf.infolist()
        if len(infos) > MAX_ENTRIES:
            raise EnvError(f"{wheel.name} holds more than {MAX_ENTRIES} files")
        claimed = sum(i.file_size for i in infos)
        if claimed > budget:
            raise EnvError(f"{wheel.name} unpacks to {claimed >> 20} MB, more than is left")
        for info in infos:
            rel = _target(wheel.name, info)
            if rel is None:
                continue
            dest = site / rel
            if info.is_dir():
                dest.mkdir(parents=True, exist_ok=True)
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            mode = 0o755 if (info.external_attr >> 16) & 0o111 else 0o644
            with zf.open(info) as src, open(dest, "xb") as out:
                left = min(info.file_size, budget - written)
                while chunk := src.read(1 << 20):
                    left -= len(chunk)
                    if left < 0:
                        raise EnvError(f"{wheel.name}: {info.filename} is larger than it says")
                    out.write(chunk)
                    written += len(chunk)
            os.chmod(dest, mode)
    return written


def _target(wheel_name: str, info: zipfile.ZipInfo) -> str | None:
    """Where an entry goes under site/ (None: not kept), refusing unsafe entries."""
    name = info.filename
    kind = stat.S_IFMT(info.external_attr >> 16)
    if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
        raise EnvError(f"{wheel_name}: {name[:200]!r} is a link or a special file")
    parts = name.rstrip("/").split("/")
    if (
        not name
        or name.startswith("/")
        or "\\" in name
        or "\x00" in name
        or any(p in ("", ".", "..") for p in parts)
    ):
        raise EnvError(f"{wheel_name}: the entry {name[:200]!r} leads outside its directory")
    if parts[0].endswith(".data"):
        if len(parts) < 3 or parts[1] not in _KEPT_DATA:
            return None  # scripts, headers, data: nothing a worker imports
        return "/".join(parts[2:])
    return "/".join(parts)


def _used_at(env: Path) -> float:
    try:
        return (env / WHOLE).stat().st_mtime
    except OSError:
        return 0.0


def _size_of(env: Path) -> int:
    return int(_read_json(env / WHOLE).get("size", 0))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return raw if isinstance(raw, dict) else {}


def this_platform() -> envlock.Platform:
    """The platform this device's Python installs wheels for (what the agent advertises)."""
    import platform
    import sys

    libc, version = platform.libc_ver()
    nums = [int(x) for x in re.findall(r"\d+", version)[:2]] or [0, 0]
    if libc != "glibc":
        libc, nums = "musl", _musl_version() or [1, 2]
    return envlock.Platform(
        f"{sys.version_info.major}.{sys.version_info.minor}",
        platform.machine().lower(),
        libc,
        (nums[0], nums[1] if len(nums) > 1 else 0),
    )


def _musl_version() -> list[int] | None:
    import glob
    import subprocess

    for loader in glob.glob("/lib/ld-musl-*.so.1"):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run([loader], capture_output=True, text=True, timeout=5).stderr
            m = re.search(r"Version (\d+)\.(\d+)", out)
            if m:
                return [int(m[1]), int(m[2])]
    return None
