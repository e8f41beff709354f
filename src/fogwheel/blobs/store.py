"""Blob stores: a small interface and the filesystem store the coordinator uses by default.

Blobs are verified when they are served, not only when they arrive: a disk that rots or a hand
that edits a file must never make the coordinator hand out wrong bytes under a right name. A
blob is hashed before its first byte is sent and the file's identity (inode, size, mtime and
ctime, which no write can leave unchanged) is remembered as verified, so a hot blob is not
hashed again on every read; the mark lapses after `REVERIFY_S`, which bounds how long silent
corruption below the file system (a flipped bit that changes no metadata) goes unseen. A file
that does not match its name is moved to `quarantine/` (kept for the operator), never served,
and the next correct upload of that name replaces it.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from fogwheel.errors import IntegrityError, StorageFull

log = logging.getLogger("fogwheel.blobs")

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
REVERIFY_S = 3600.0  # a verified mark is trusted this long, then the blob is hashed again
VERIFIED_MAX = 65_536  # marks kept (least recent dropped): about 10 MB of memory at most
READ_CHUNK = 1 << 20


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def is_sha256(name: str) -> bool:
    return bool(_SHA256.match(name))


def write_atomically(path: Path, data: bytes, prefix: str = ".tmp-") -> None:
    """Write `data` to a temporary name beside `path`, fsync it, then rename it into place:
    a reader sees the whole file or none."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=prefix)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class CorruptBlob(IntegrityError):
    """A stored blob no longer hashes to its name; it has been quarantined."""


class BlobStore(ABC):
    """Put bytes under their own hash; get them back verified."""

    @abstractmethod
    def put(self, data: bytes, expect: str | None = None) -> str:
        """Store `data`, return its SHA-256; raise IntegrityError if it is not `expect`,
        StorageFull when the disk is full."""

    @abstractmethod
    def get(self, sha: str) -> bytes:
        """The bytes named `sha`; KeyError when absent, CorruptBlob when corrupt."""

    @abstractmethod
    def has(self, sha: str) -> bool: ...


_Identity = tuple[int, int, int, int]  # inode, size, mtime_ns, ctime_ns


class FileBlobStore(BlobStore):
    """Blobs as files `root/ab/abcdef…`, written to a temporary name, fsynced, then renamed."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.quarantine_dir = self.root / "quarantine"
        self._verified: OrderedDict[str, tuple[_Identity, float]] = OrderedDict()
        self._lock = threading.Lock()

    def path(self, sha: str) -> Path:
        if not is_sha256(sha):
            raise ValueError(f"not a SHA-256 hex digest: {sha!r}")
        return self.root / sha[:2] / sha

    def put(self, data: bytes, expect: str | None = None) -> str:
        sha = sha256_hex(data)
        if expect is not None and expect != sha:
            raise IntegrityError(f"body hashes to {sha}, not to the name {expect} it was sent as")
        final = self.path(sha)
        try:
            with self.open_verified(sha):
                return sha  # already here, and intact
        except KeyError:
            pass
        except CorruptBlob:
            pass  # quarantined just now: these verified bytes take its place
        try:
            final.parent.mkdir(exist_ok=True)
            write_atomically(final, data)
        except OSError as e:
            if e.errno in DISK_FULL_ERRNOS:
                raise StorageFull(
                    f"the coordinator's disk is full: blob {sha[:12]}… ({len(data)} bytes) "
                    "was not stored; the operator must free space, then upload it again"
                ) from e
            raise
        self._mark(sha, os.stat(final))
        return sha

    def get(self, sha: str) -> bytes:
        with self.open_verified(sha) as f:
            return f.read()

    def has(self, sha: str) -> bool:
        return self.path(sha).exists()

    def open_verified(self, sha: str) -> BinaryIO:
        """The blob's file, open at its start, its bytes known to hash to `sha`.

        KeyError when there is no such blob; CorruptBlob (after moving the file to
        quarantine) when its bytes hash to something else. What is verified is the open file
        itself, so a rename racing this call cannot slip other bytes in between.
        """
        path = self.path(sha)
        try:
            f = open(path, "rb")  # noqa: SIM115 - handed to the caller
        except FileNotFoundError:
            raise KeyError(sha) from None
        try:
            st = os.fstat(f.fileno())
            if not self._still_verified(sha, st):
                h = hashlib.sha256()
                while chunk := f.read(READ_CHUNK):
                    h.update(chunk)
                if h.hexdigest() != sha:
                    self._quarantine(sha, path, st, h.hexdigest())
                    raise CorruptBlob(
                        f"blob {sha} was corrupt on the coordinator's disk and has been "
                        "quarantined: upload it again"
                    )
                self._mark(sha, st)
                f.seek(0)
            return f
        except BaseException:
            f.close()
            raise

    def chunks(self, f: BinaryIO) -> Iterator[bytes]:
        """The rest of an open blob file in pieces; closes it at the end."""
        with f:
            while chunk := f.read(READ_CHUNK):
                yield chunk

    # -- verified marks and quarantine ------------------------------------------------------

    def _still_verified(self, sha: str, st: os.stat_result) -> bool:
        with self._lock:
            mark = self._verified.get(sha)
            if mark is None:
                return False
            identity, at = mark
            if identity != _identity(st) or time.monotonic() - at > REVERIFY_S:
                del self._verified[sha]
                return False
            self._verified.move_to_end(sha)
            return True

    def _mark(self, sha: str, st: os.stat_result) -> None:
        with self._lock:
            self._verified[sha] = (_identity(st), time.monotonic())
            self._verified.move_to_end(sha)
            while len(self._verified) > VERIFIED_MAX:
                self._verified.popitem(last=False)

    def _quarantine(self, sha: str, path: Path, st: os.stat_result, actual: str) -> None:
        with self._lock:
            self._verified.pop(sha, None)
        self.quarantine_dir.mkdir(exist_ok=True)
        kept = self.quarantine_dir / f"{sha}.{time.time_ns()}"
        try:
            if os.stat(path).st_ino == st.st_ino:  # not replaced by a good upload meanwhile
                os.replace(path, kept)
        except FileNotFoundError:
            return
        log.error(
            "blob %s on disk hashes to %s (%d bytes): moved to %s and no longer served; "
            "check the disk; the next correct upload of it replaces it",
            sha,
            actual,
            st.st_size,
            kept,
        )


def _identity(st: os.stat_result) -> _Identity:
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
