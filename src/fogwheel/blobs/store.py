"""Blob stores: a small interface and the filesystem store the coordinator uses by default."""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from abc import ABC, abstractmethod
from pathlib import Path

from fogwheel.errors import IntegrityError

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


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


class BlobStore(ABC):
    """Put bytes under their own hash; get them back verified."""

    @abstractmethod
    def put(self, data: bytes, expect: str | None = None) -> str:
        """Store `data`, return its SHA-256; raise IntegrityError if it is not `expect`."""

    @abstractmethod
    def get(self, sha: str) -> bytes:
        """The bytes named `sha`; KeyError when absent, IntegrityError when corrupt."""

    @abstractmethod
    def has(self, sha: str) -> bool: ...


class FileBlobStore(BlobStore):
    """Blobs as files `root/ab/abcdef…`, written to a temporary name, fsynced, then renamed."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, sha: str) -> Path:
        if not is_sha256(sha):
            raise ValueError(f"not a SHA-256 hex digest: {sha!r}")
        return self.root / sha[:2] / sha

    def put(self, data: bytes, expect: str | None = None) -> str:
        sha = sha256_hex(data)
        if expect is not None and expect != sha:
            raise IntegrityError(f"body hashes to {sha}, not to the name {expect} it was sent as")
        final = self.path(sha)
        if final.exists():
            return sha
        final.parent.mkdir(exist_ok=True)
        write_atomically(final, data)
        return sha

    def get(self, sha: str) -> bytes:
        try:
            data = self.path(sha).read_bytes()
        except FileNotFoundError:
            raise KeyError(sha) from None
        if sha256_hex(data) != sha:
            raise IntegrityError(f"blob {sha} on disk is corrupt")
        return data

    def has(self, sha: str) -> bool:
        return self.path(sha).exists()
