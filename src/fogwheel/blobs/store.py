"""Blob stores: a small interface and the filesystem store the coordinator uses by default.

Blobs are verified when they are served, not only when they arrive: a disk that rots or a hand
that edits a file must never make the coordinator hand out wrong bytes under a right name. A
blob is hashed before its first byte is sent and the file's identity (inode, size, mtime and
ctime, which no write can leave unchanged) is remembered as verified, so a hot blob is not
hashed again on every read; the mark lapses after `REVERIFY_S`, which bounds how long silent
corruption below the file system (a flipped bit that changes no metadata) goes unseen. A file
that does not match its name is moved to `quarantine/` (kept for the operator), never served,
and the next correct upload of that name replaces it.

Uploads stream to disk (`PartialUpload`): the bytes go to `partial/<sha>.<uploader>`, hashed
as they arrive, and only a whole blob that hashes to its name is renamed into place. What an
interrupted upload sent is kept, so the same uploader can send the rest (a `Content-Range`
part, core/byteranges.py); each uploader has its own partial (no one can add bytes to
another's), at most `PARTIALS_PER_UPLOADER` of them, each dropped after `PARTIAL_MAX_AGE_S`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
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
from typing import Any, BinaryIO

from fogwheel.errors import IntegrityError, StorageFull

log = logging.getLogger("fogwheel.blobs")

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
REVERIFY_S = 3600.0  # a verified mark is trusted this long, then the blob is hashed again
VERIFIED_MAX = 65_536  # marks kept (least recent dropped): about 10 MB of memory at most
READ_CHUNK = 1 << 20
PARTIALS_PER_UPLOADER = 4  # a fifth upload in progress drops the uploader's oldest partial
PARTIAL_MAX_AGE_S = 24 * 3600.0  # an upload not finished in a day starts again


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


class UploadBusy(Exception):
    """Another request of the same uploader is writing this blob's partial right now."""


def _disk_full(sha: str, size: int) -> StorageFull:
    return StorageFull(
        f"the coordinator's disk is full: blob {sha[:12]}… ({size} bytes) "
        "was not stored; the operator must free space, then upload it again"
    )


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

    # The coordinator streams blobs in and out through these: FileBlobStore on one disk,
    # blobs/db.py's DbBlobStore in a database that several coordinator processes share.

    @abstractmethod
    def open_verified(self, sha: str) -> Any:
        """A readable, seekable handle at the blob's start, its bytes known to hash to `sha`
        (a context manager); KeyError when absent, CorruptBlob when corrupt."""

    @abstractmethod
    def size_of(self, f: Any) -> int:
        """The size of a blob opened with open_verified."""

    read_chunk = READ_CHUNK  # the size of the pieces `chunks` reads

    def chunks(self, f: Any, limit: int | None = None) -> Iterator[bytes]:
        """The rest of an open blob (at most `limit` bytes) in pieces; closes it at the end."""
        left = limit
        size = self.read_chunk
        with f:
            while left is None or left > 0:
                chunk = f.read(size if left is None else min(size, left))
                if not chunk:
                    return
                if left is not None:
                    left -= len(chunk)
                yield chunk

    @abstractmethod
    def received(self, sha: str, uploader: str) -> int:
        """How many bytes of `sha` this uploader's unfinished upload holds."""

    @abstractmethod
    def upload(self, sha: str, uploader: str) -> Any:
        """Open (or continue) `uploader`'s upload: open, write, finish, discard, close."""


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
                raise _disk_full(sha, len(data)) from e
            raise
        self._mark(sha, os.stat(final))
        return sha

    # -- streamed, resumable uploads --------------------------------------------------------

    def partial_path(self, sha: str, uploader: str) -> Path:
        """Where `uploader`'s bytes of blob `sha` so far are kept."""
        self.path(sha)  # checks the name
        who = hashlib.sha256(uploader.encode()).hexdigest()[:16]
        return self.root / "partial" / f"{sha}.{who}"

    def received(self, sha: str, uploader: str) -> int:
        """How many bytes of `sha` this uploader has sent so far (0: none kept)."""
        try:
            return self.partial_path(sha, uploader).stat().st_size
        except FileNotFoundError:
            return 0

    def upload(self, sha: str, uploader: str) -> PartialUpload:
        """Open (or continue) `uploader`'s upload of `sha`; see PartialUpload."""
        return PartialUpload(self, sha, uploader)

    def _adopt(self, partial: Path, sha: str) -> None:
        """Move a partial whose bytes hash to `sha` into place (fsynced by the caller)."""
        try:
            with self.open_verified(sha):
                partial.unlink(missing_ok=True)  # already here, and intact
                return
        except KeyError:
            pass
        except CorruptBlob:
            pass  # quarantined just now: these verified bytes take its place
        final = self.path(sha)
        final.parent.mkdir(exist_ok=True)
        os.replace(partial, final)
        self._mark(sha, os.stat(final))

    def _sweep_partials(self, uploader_suffix: str, keep: Path) -> None:
        """Drop this uploader's partials past their age, and its oldest beyond the cap."""
        now = time.time()
        mine = []
        for p in keep.parent.glob(f"*.{uploader_suffix}"):
            try:
                mtime = p.stat().st_mtime
            except FileNotFoundError:
                continue
            if p == keep:
                continue
            if now - mtime > PARTIAL_MAX_AGE_S:
                _drop_unless_busy(p)
            else:
                mine.append((mtime, p))
        mine.sort()
        for _, p in mine[: max(0, len(mine) - (PARTIALS_PER_UPLOADER - 1))]:
            if _drop_unless_busy(p):
                log.info("dropped the unfinished upload %s: its uploader started too many", p.name)

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

    def size_of(self, f: BinaryIO) -> int:
        return os.fstat(f.fileno()).st_size

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


class PartialUpload:
    """One uploader's upload of one blob, streamed to disk and hashed as it grows.

        up = blobs.upload(sha, who)
        up.open()            # -> bytes already received (a resumed upload); UploadBusy
        up.write(chunk) ...  # append; StorageFull (and the partial dropped) on a full disk
        up.finish()          # whole: hash checked, renamed into place; IntegrityError if not
        up.close()           # always: the partial stays for a later resume unless finished

    The partial is locked (flock) while open, so two requests of one uploader cannot interleave
    their bytes, in one coordinator process or several sharing the directory.
    """

    def __init__(self, store: FileBlobStore, sha: str, uploader: str) -> None:
        self.store = store
        self.sha = sha
        self.path = store.partial_path(sha, uploader)
        self.received = 0
        self._hash = hashlib.sha256()
        self._file: BinaryIO | None = None
        self._ephemeral = False  # a partial of this request's own: never resumed

    def open(self, resume: bool = True) -> int:
        """Lock the partial and return how many bytes it holds; `resume=False` empties it
        first (a plain PUT sends the whole blob again). A plain PUT that finds the partial
        busy goes to a partial of its own instead, dropped unless it completes; a resumed one
        raises UploadBusy."""
        self.path.parent.mkdir(exist_ok=True)
        is_new = not self.path.exists()
        f = open(self.path, "a+b")  # noqa: SIM115 - closed in close()
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            if resume:
                raise UploadBusy(
                    f"an upload of blob {self.sha[:12]}… by you is in progress already: wait "
                    "for it to end, then send what is left"
                ) from None
            sha, who = self.path.name.split(".")
            self.path = self.path.with_name(f"{sha}-{os.urandom(6).hex()}.{who}")
            self._ephemeral = True
            f = open(self.path, "w+b")  # noqa: SIM115 - closed in close()
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._file = f
        if is_new:
            self.store._sweep_partials(self.path.suffix[1:], self.path)
        if not resume:
            f.truncate(0)
        f.seek(0)
        while chunk := f.read(READ_CHUNK):  # a resumed upload: hash what is already here
            self._hash.update(chunk)
            self.received += len(chunk)
        return self.received

    def write(self, chunk: bytes) -> None:
        assert self._file is not None
        try:
            self._file.write(chunk)
        except OSError as e:
            if e.errno in DISK_FULL_ERRNOS:
                self.discard()
                raise _disk_full(self.sha, self.received + len(chunk)) from e
            raise
        self._hash.update(chunk)
        self.received += len(chunk)

    def finish(self) -> None:
        """The blob is whole: keep it if it hashes to its name, drop it (IntegrityError) if not."""
        assert self._file is not None
        actual = self._hash.hexdigest()
        if actual != self.sha:
            self.discard()
            raise IntegrityError(
                f"the body ({self.received} bytes) hashes to {actual}, not to the name "
                f"{self.sha} it was sent as: upload the file again from its start"
            )
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as e:
            if e.errno in DISK_FULL_ERRNOS:
                self.discard()
                raise _disk_full(self.sha, self.received) from e
            raise
        self.store._adopt(self.path, self.sha)

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)

    def close(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.flush()
            self._file.close()  # releases the lock
            self._file = None
        if self._ephemeral:
            self.discard()


def _drop_unless_busy(path: Path) -> bool:
    """Remove a partial that no request is writing now; True if removed."""
    try:
        with open(path, "rb") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            path.unlink(missing_ok=True)
            return True
    except (BlockingIOError, FileNotFoundError):
        return False


def _identity(st: os.stat_result) -> _Identity:
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
