"""Streamed, resumable blob transfers between this machine and the coordinator.

Never a whole file in memory. An upload hashes the file in one pass (its name is its SHA-256),
asks the coordinator how much of it it holds already (`GET /v1/blobs/{sha}/upload`), then
sends the rest in one `PUT` with `Content-Range: bytes FIRST-LAST/TOTAL`, read from the file
1 MiB at a time; a dropped connection, or this process killed and started again, continues
from what the coordinator kept. A download writes to `FILE.part`, hashing as it goes; one
interrupted continues with `Range: bytes=N-` after the N bytes already there, and the file
gets its name only once the whole of it hashes to the blob's name. The protocol is in
docs/blobs.md; the ranges are parsed in core/byteranges.py.
"""

from __future__ import annotations

import hashlib
import io
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import httpx

from fogwheel.errors import (
    ApiError,
    AuthError,
    CoordinatorUnreachable,
    IntegrityError,
    NotFound,
)

CHUNK = 1 << 20
# progress(phase, name, done, total): phase is "hash", "upload" or "download"
Progress = Callable[[str, str, int, int], None]
_AGAIN = frozenset({408, 409, 429})  # answers after which a transfer asks again and goes on
_TRANSFER_TIMEOUT = httpx.Timeout(120.0, connect=5.0)  # the coordinator hashes, then answers


@dataclass(frozen=True)
class Transfer:
    """What one upload or download did: the blob, and how many bytes crossed the network
    this time (`resumed_from` bytes were there already: `sent` is the rest)."""

    sha: str
    size: int
    sent: int
    resumed_from: int


def hash_file(
    path: str | os.PathLike[str], progress: Progress | None = None, name: str = ""
) -> tuple[str, int]:
    """The SHA-256 and size of a file, read once in 1 MiB pieces."""
    h = hashlib.sha256()
    size = os.stat(path).st_size
    done = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            done += len(chunk)
            if progress:
                progress("hash", name, done, size)
    return h.hexdigest(), done


def upload(
    http: httpx.Client,
    source: str | os.PathLike[str] | bytes,
    *,
    sha: str | None = None,
    retry_for: float = 120.0,
    progress: Progress | None = None,
    name: str = "",
    status: Callable[[str], dict[str, Any]] | None = None,
) -> Transfer:
    """Upload a file (or bytes) as a blob, resuming any upload of it the coordinator kept.

    Transport errors and 5xx answers are retried for `retry_for` seconds, each retry sending
    only what the coordinator lacks; a 4xx raises (AuthError, NotFound, ApiError). `status`
    asks `GET /v1/blobs/{sha}/upload` (the SDK passes its own request, which says on stderr
    when it retries an unreachable coordinator)."""
    if isinstance(source, bytes):
        size = len(source)
        sha = sha or hashlib.sha256(source).hexdigest()
    elif sha is None:
        sha, size = hash_file(source, progress, name)
    else:
        size = os.stat(source).st_size
    deadline = time.monotonic() + retry_for
    counted = _Counter(progress, name, size)
    resumed_from: int | None = None
    delay = 0.2
    while True:
        try:
            path = f"/v1/blobs/{sha}/upload"
            st = status(path) if status else _ok(http.get(path)).json()
            if st["complete"]:
                done = size if resumed_from is None else resumed_from
                return Transfer(sha, size, counted.sent, done)
            offset = int(st["received"])
            # a plain PUT for an empty blob (no range names it) and to start a partial again
            # that cannot be this file's beginning
            plain = size == 0 or offset >= size
            if plain:
                offset = 0
            if resumed_from is None:
                resumed_from = offset
            headers = {"content-type": "application/octet-stream"}
            if not plain:
                headers["content-range"] = f"bytes {offset}-{size - 1}/{size}"
            headers["content-length"] = str(size - offset)
            r = http.put(
                f"/v1/blobs/{sha}",
                content=counted.chunks(_open(source), offset),
                headers=headers,
                timeout=_TRANSFER_TIMEOUT,
            )
            if r.status_code == 201:
                return Transfer(sha, size, counted.sent, resumed_from)
            _ok(r)
            problem: Exception = ApiError(r.status_code, _message(r))  # a 202: not complete
        except ApiError as e:
            # 409: a part at the wrong offset, or another upload of it running: ask again
            if not (e.status >= 500 or e.status in _AGAIN):
                raise
            problem = e
        except httpx.TransportError as e:
            problem = CoordinatorUnreachable(f"cannot reach {http.base_url}: {e}")
        if time.monotonic() > deadline:
            raise problem
        time.sleep(delay)
        delay = min(delay * 2, 2.0)


def download(
    http: httpx.Client,
    sha: str,
    path: str | os.PathLike[str],
    *,
    retry_for: float = 120.0,
    progress: Progress | None = None,
    name: str = "",
) -> Transfer:
    """Stream blob `sha` into `path`, checked against its name, via `path.part` (kept when
    interrupted, continued by the next call); raises IntegrityError (and drops the partial)
    when the whole does not hash to `sha`."""
    path = Path(path)
    part = path.with_name(path.name + ".part")
    h = hashlib.sha256()
    have = 0
    if part.exists():
        with open(part, "rb") as f:
            while chunk := f.read(CHUNK):
                h.update(chunk)
                have += len(chunk)
    resumed_from = have
    sent = 0
    deadline = time.monotonic() + retry_for
    delay = 0.2
    while True:
        try:
            headers = {"range": f"bytes={have}-"} if have else {}
            with http.stream(
                "GET", f"/v1/blobs/{sha}", headers=headers, timeout=_TRANSFER_TIMEOUT
            ) as r:
                if r.status_code == 416:  # the partial is the whole blob already (or more)
                    r.read()
                    total = _total(r.headers.get("content-range", ""))
                    if total is None or have != total:
                        part.unlink(missing_ok=True)
                        h, have, resumed_from = hashlib.sha256(), 0, 0
                        continue
                    break
                if r.status_code >= 400:
                    r.read()
                    if r.status_code < 500:
                        _ok(r)
                    raise ApiError(r.status_code, _message(r))
                if r.status_code == 200 and have:  # the coordinator sent it all again
                    h, have, resumed_from = hashlib.sha256(), 0, 0
                    part.unlink(missing_ok=True)
                total = _total(r.headers.get("content-range", "")) or have + int(
                    r.headers.get("content-length", "0")
                )
                with open(part, "ab") as f:
                    for chunk in r.iter_bytes(CHUNK):
                        f.write(chunk)
                        h.update(chunk)
                        have += len(chunk)
                        sent += len(chunk)
                        if progress:
                            progress("download", name, have, total)
            break
        except (httpx.TransportError, ApiError) as e:
            if isinstance(e, ApiError) and not 500 <= e.status < 600:
                raise
            if time.monotonic() > deadline:
                if isinstance(e, ApiError):
                    raise
                raise CoordinatorUnreachable(f"cannot reach {http.base_url}: {e}") from e
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
    if h.hexdigest() != sha:
        part.unlink(missing_ok=True)
        raise IntegrityError(
            f"blob {sha[:12]}… arrived corrupt ({have} bytes hash to {h.hexdigest()[:12]}…): "
            "nothing was written; fetch it again"
        )
    os.replace(part, path)
    return Transfer(sha, have, sent, resumed_from)


class _Counter:
    """Counts the bytes handed to the connection, for progress and for `Transfer.sent`."""

    def __init__(self, progress: Progress | None, name: str, size: int) -> None:
        self.progress = progress
        self.name = name
        self.size = size
        self.sent = 0  # over every attempt

    def chunks(self, f: BinaryIO, offset: int) -> Iterator[bytes]:
        """The file from `offset` on, in 1 MiB pieces; closes it at the end."""
        with f:
            f.seek(offset)
            at = offset
            while chunk := f.read(CHUNK):
                self.sent += len(chunk)
                at += len(chunk)
                if self.progress:
                    self.progress("upload", self.name, at, self.size)
                yield chunk


def _open(source: str | os.PathLike[str] | bytes) -> BinaryIO:
    if isinstance(source, bytes):
        return io.BytesIO(source)
    return open(source, "rb")


def _total(content_range: str) -> int | None:
    """The complete length of `bytes a-b/TOTAL` or `bytes */TOTAL`."""
    _, _, total = content_range.rpartition("/")
    return int(total) if total.isdigit() else None


def _ok(r: httpx.Response) -> httpx.Response:
    if r.status_code in (401, 403):
        raise AuthError(r.status_code, _message(r))
    if r.status_code == 404:
        raise NotFound(r.status_code, _message(r))
    if r.status_code >= 400:
        raise ApiError(r.status_code, _message(r))
    return r


def _message(r: httpx.Response) -> str:
    try:
        r.read()
        return str(r.json().get("error", r.text[:200]))
    except ValueError:
        return r.text[:200] or r.reason_phrase
