"""A blob store in the coordinator's database, reached alike by every coordinator process.

Several coordinators on several machines share one PostgreSQL database and no disk, so a
blob uploaded through one must be readable through any other: its bytes live in the database
as rows of at most `CHUNK` bytes (`blob_chunks`, keyed by their offset; schema.py), streamed in
and out one row at a time, never the whole blob in memory. It keeps FileBlobStore's promises
(blobs/store.py): a blob is hashed before its first byte is served (then trusted for
`REVERIFY_S` in this process; rows are never rewritten, so only a hand in the database can
change them), one that no longer matches its name is quarantined (its rows renamed, kept for
the operator) and never served, and each uploader's interrupted upload is kept for a resume.

The flock that keeps two requests of one uploader apart becomes a hold in the row: the request
that writes a partial names itself its `holder` until `held_until`, every write is a
compare-and-set on the holder and the bytes received so far, and a process that dies lets go
when the hold lapses (`HOLD_S`), not never.
"""

from __future__ import annotations

import bisect
import hashlib
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, func, insert, select, text, update
from sqlalchemy.dialects import postgresql, sqlite

from fogwheel.blobs.store import (
    PARTIAL_MAX_AGE_S,
    PARTIALS_PER_UPLOADER,
    REVERIFY_S,
    VERIFIED_MAX,
    BlobStore,
    CorruptBlob,
    UploadBusy,
    is_sha256,
    sha256_hex,
)
from fogwheel.errors import IntegrityError
from fogwheel.store.migrate import add_missing_columns
from fogwheel.store.schema import blob_chunks, blob_metadata, blob_partials, db_blobs

if TYPE_CHECKING:
    from fogwheel.store.base import StoreBase

log = logging.getLogger("fogwheel.blobs")

CHUNK = 1 << 20  # one row's bytes: PostgreSQL keeps them out of line (TOAST), 1 MiB at most
HOLD_S = 60.0  # a request's hold on its partial, renewed by each write
_DDL_LOCK = 0x66776462  # "fwdb": the advisory lock around making the tables
_CHUNK_SQL = "SELECT data FROM blob_chunks WHERE owner = %s AND off = %s"


class DbBlobStore(BlobStore):
    """Blobs as rows of the store's database; the same interface as FileBlobStore."""

    read_chunk = CHUNK  # `chunks` reads a row at a time

    def __init__(self, store: StoreBase) -> None:
        self.store = store
        with store.tx() as c:  # its tables, made (or brought up to date) on first use
            if not store.is_sqlite:  # by one process at a time: DDL is transactional there
                c.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _DDL_LOCK})
            blob_metadata.create_all(c)
        add_missing_columns(store.engine, blob_metadata)
        self._dialect = sqlite if store.is_sqlite else postgresql
        self._verified: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    # -- whole blobs -------------------------------------------------------------------------

    def put(self, data: bytes, expect: str | None = None) -> str:
        sha = sha256_hex(data)
        if expect is not None and expect != sha:
            raise IntegrityError(f"body hashes to {sha}, not to the name {expect} it was sent as")
        if self._intact(sha):
            return sha
        with self.store.tx() as c:
            if self._claim_name(c, sha, len(data)):
                for off in range(0, max(len(data), 1), CHUNK):
                    piece = data[off : off + CHUNK]
                    if piece or off == 0:
                        c.execute(insert(blob_chunks).values(owner=sha, off=off, data=piece))
        self._mark(sha)
        return sha

    def get(self, sha: str) -> bytes:
        with self.open_verified(sha) as f:
            return f.read()

    def has(self, sha: str) -> bool:
        if not is_sha256(sha):
            return False
        with self.store.read() as c:
            found = c.execute(select(db_blobs.c.sha).where(db_blobs.c.sha == sha)).first()
        return found is not None

    def open_verified(self, sha: str) -> DbBlobReader:
        """The blob as a file-like reader at its start, its bytes known to hash to `sha`.

        KeyError when there is no such blob; CorruptBlob (after quarantining its rows) when
        they hash to something else, are missing, or overlap."""
        if not is_sha256(sha):
            raise ValueError(f"not a SHA-256 hex digest: {sha!r}")
        with self.store.read() as c:
            size = c.execute(select(db_blobs.c.size).where(db_blobs.c.sha == sha)).scalar()
            if size is None:
                raise KeyError(sha)
            spans = [
                (r.off, r.n)
                for r in c.execute(
                    select(blob_chunks.c.off, func.length(blob_chunks.c.data).label("n"))
                    .where(blob_chunks.c.owner == sha)
                    .order_by(blob_chunks.c.off)
                )
            ]
        reader = DbBlobReader(self, sha, size, spans)
        if not self._still_verified(sha):
            h = hashlib.sha256()
            whole = _contiguous(spans, size)
            if whole:
                for piece in reader.pieces():
                    h.update(piece)
            if not whole or h.hexdigest() != sha:
                self._quarantine(sha, size, h.hexdigest() if whole else "(rows missing)")
                raise CorruptBlob(
                    f"blob {sha} was corrupt in the coordinator's database and has been "
                    "quarantined: upload it again"
                )
            self._mark(sha)
            reader.seek(0)
        return reader

    def size_of(self, f: DbBlobReader) -> int:
        return f.size

    # -- streamed, resumable uploads ---------------------------------------------------------

    def received(self, sha: str, uploader: str) -> int:
        """How many bytes of `sha` this uploader has sent so far (0: none kept)."""
        with self.store.read() as c:
            got = c.execute(
                select(blob_partials.c.received).where(
                    blob_partials.c.id == _partial_id(sha, uploader)
                )
            ).scalar()
        return int(got or 0)

    def upload(self, sha: str, uploader: str) -> DbPartialUpload:
        """Open (or continue) `uploader`'s upload of `sha`; see DbPartialUpload."""
        if not is_sha256(sha):
            raise ValueError(f"not a SHA-256 hex digest: {sha!r}")
        return DbPartialUpload(self, sha, uploader)

    # -- plumbing ----------------------------------------------------------------------------

    def _chunk(self, owner: str, off: int) -> bytes:
        """One chunk row's bytes (b"" when there is none).

        On PostgreSQL through a binary cursor: bytea in the text protocol travels as hex,
        twice its size and parsed again, which halves the rate a blob is read at."""
        with self.store.read() as c:
            if self.store.is_sqlite:
                data = c.execute(
                    select(blob_chunks.c.data).where(
                        blob_chunks.c.owner == owner, blob_chunks.c.off == off
                    )
                ).scalar()
                return bytes(data or b"")
            raw: Any = c.connection.driver_connection
            with raw.cursor(binary=True) as cur:
                cur.execute(_CHUNK_SQL, (owner, off))
                row = cur.fetchone()
        return bytes(row[0]) if row else b""

    def _claim_name(self, c: Any, sha: str, size: int) -> bool:
        """Record `sha` as whole in this transaction; False when another process did first."""
        q = self._dialect.insert(db_blobs).values(sha=sha, size=size, created_at=time.time())
        q = q.on_conflict_do_nothing(index_elements=["sha"]).returning(db_blobs.c.sha)
        return c.execute(q).first() is not None  # (rowcount says 1 either way on psycopg)

    def _intact(self, sha: str) -> bool:
        """True when `sha` is here and verifies; a corrupt one is quarantined on the way."""
        try:
            with self.open_verified(sha):
                return True
        except (KeyError, CorruptBlob):
            return False

    def _still_verified(self, sha: str) -> bool:
        with self._lock:
            at = self._verified.get(sha)
            if at is None or time.monotonic() - at > REVERIFY_S:
                self._verified.pop(sha, None)
                return False
            self._verified.move_to_end(sha)
            return True

    def _mark(self, sha: str) -> None:
        with self._lock:
            self._verified[sha] = time.monotonic()
            self._verified.move_to_end(sha)
            while len(self._verified) > VERIFIED_MAX:
                self._verified.popitem(last=False)

    def _quarantine(self, sha: str, size: int, actual: str) -> None:
        with self._lock:
            self._verified.pop(sha, None)
        kept = f"q:{sha}:{time.time_ns()}"
        with self.store.tx() as c:
            if not c.execute(delete(db_blobs).where(db_blobs.c.sha == sha)).rowcount:
                return  # another process quarantined it (or a good upload replaced it) first
            c.execute(update(blob_chunks).where(blob_chunks.c.owner == sha).values(owner=kept))
        log.error(
            "blob %s in the database hashes to %s (%d bytes): its rows are kept as owner %r "
            "and no longer served; the next correct upload of it replaces it",
            sha,
            actual,
            size,
            kept,
        )


class DbBlobReader:
    """An open blob: read and seek like a file, one chunk row fetched at a time."""

    def __init__(self, blobs: DbBlobStore, sha: str, size: int, spans: list[tuple[int, int]]):
        self._blobs = blobs
        self.sha = sha
        self.size = size
        self._spans = spans
        self._offsets = [off for off, _ in spans]
        self._pos = 0
        self._buf = b""  # the bytes of the chunk row that holds _buf_off …
        self._buf_off = 0

    def pieces(self) -> Iterator[bytes]:
        """Every chunk row in order, from the start."""
        for off, _ in self._spans:
            yield self._fetch(off)

    def seek(self, pos: int) -> int:
        self._pos = max(0, min(pos, self.size))
        return self._pos

    def tell(self) -> int:
        return self._pos

    def read(self, n: int = -1) -> bytes:
        want = self.size - self._pos if n is None or n < 0 else min(n, self.size - self._pos)
        out = bytearray()
        while len(out) < want:
            if not self._buf_off <= self._pos < self._buf_off + len(self._buf):
                at = bisect.bisect_right(self._offsets, self._pos) - 1
                off = self._offsets[at] if at >= 0 else 0
                self._buf, self._buf_off = self._fetch(off), off
                if not self._buf_off <= self._pos < self._buf_off + len(self._buf):
                    break  # the rows end early: only an unverified reader can get here
            start = self._pos - self._buf_off
            piece = self._buf[start : start + want - len(out)]
            out += piece
            self._pos += len(piece)
        return bytes(out)

    def _fetch(self, off: int) -> bytes:
        return self._blobs._chunk(self.sha, off)

    def close(self) -> None:
        self._buf = b""

    def __enter__(self) -> DbBlobReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class DbPartialUpload:
    """One uploader's upload of one blob, streamed into chunk rows and hashed as it grows.

    The same calls as blobs/store.py's PartialUpload: open (-> bytes already received;
    UploadBusy), write, finish (IntegrityError when the bytes hash to another name), discard,
    close. Every write checks, in its own transaction, that this request still holds the
    partial and that nobody else added bytes, so two requests can never interleave theirs.
    """

    def __init__(self, blobs: DbBlobStore, sha: str, uploader: str) -> None:
        self.blobs = blobs
        self.sha = sha
        self.uploader = _who(uploader)
        self.id = _partial_id(sha, uploader)
        self.received = 0
        self._hash = hashlib.sha256()
        self._me = os.urandom(12).hex()
        self._open = False
        self._ephemeral = False

    @property
    def _owner(self) -> str:
        return f"p:{self.id}"

    def open(self, resume: bool = True) -> int:
        """Hold the partial and return how many bytes it holds; `resume=False` empties it
        first. A plain PUT that finds the partial busy writes a partial of its own instead,
        dropped unless it completes; a resumed one raises UploadBusy."""
        now = time.time()
        tx = self.blobs.store.tx
        with tx() as c:
            took = c.execute(
                update(blob_partials)
                .where(
                    blob_partials.c.id == self.id,
                    blob_partials.c.holder.is_(None) | (blob_partials.c.held_until < now),
                )
                .values(holder=self._me, held_until=now + HOLD_S)
            ).rowcount
            is_new = False
            if not took:
                q = self.blobs._dialect.insert(blob_partials).values(**self._row(now))
                q = q.on_conflict_do_nothing(index_elements=["id"]).returning(blob_partials.c.id)
                took = is_new = c.execute(q).first() is not None
        if not took:
            if resume:
                raise UploadBusy(
                    f"an upload of blob {self.sha[:12]}… by you is in progress already: wait "
                    "for it to end, then send what is left"
                )
            self.id, self._ephemeral, is_new = f"{self.id}-{os.urandom(4).hex()}", True, True
            with tx() as c:
                c.execute(insert(blob_partials).values(**self._row(now), ephemeral=True))
        self._open = True
        if is_new:
            self._sweep(now)
        if not resume:
            with tx() as c:
                c.execute(delete(blob_chunks).where(blob_chunks.c.owner == self._owner))
                c.execute(
                    update(blob_partials).where(blob_partials.c.id == self.id).values(received=0)
                )
        with self.blobs.store.read() as c:
            offs = c.execute(
                select(blob_chunks.c.off)
                .where(blob_chunks.c.owner == self._owner)
                .order_by(blob_chunks.c.off)
            ).scalars()
            offsets = list(offs)
        for off in offsets:  # a resumed upload: hash what is already here, row by row
            data = self.blobs._chunk(self._owner, off)
            if off != self.received:  # a gap can only come from a hand in the database
                break
            self._hash.update(data)
            self.received += len(data)
        if offsets and self.received != self._stored_received():
            self._reset()  # what is kept does not add up: start this upload again
        return self.received

    def write(self, chunk: bytes) -> None:
        assert self._open
        now = time.time()
        with self.blobs.store.tx() as c:
            ok = c.execute(
                update(blob_partials)
                .where(
                    blob_partials.c.id == self.id,
                    blob_partials.c.received == self.received,
                    (blob_partials.c.holder == self._me)
                    | blob_partials.c.holder.is_(None)
                    | (blob_partials.c.held_until < now),
                )
                .values(
                    received=self.received + len(chunk),
                    updated_at=now,
                    holder=self._me,
                    held_until=now + HOLD_S,
                )
            ).rowcount
            if not ok:
                raise UploadBusy(
                    f"another request of yours took over the upload of blob {self.sha[:12]}… "
                    "while this one stalled: ask how much it holds, then send the rest"
                )
            rows = [
                {"owner": self._owner, "off": self.received + i, "data": chunk[i : i + CHUNK]}
                for i in range(0, len(chunk), CHUNK)
            ]
            if rows:
                c.execute(insert(blob_chunks), rows)
        self._hash.update(chunk)
        self.received += len(chunk)

    def finish(self) -> None:
        """The blob is whole: keep it if it hashes to its name, drop it (IntegrityError) if not."""
        assert self._open
        actual = self._hash.hexdigest()
        if actual != self.sha:
            self.discard()
            raise IntegrityError(
                f"the body ({self.received} bytes) hashes to {actual}, not to the name "
                f"{self.sha} it was sent as: upload the file again from its start"
            )
        intact = self.blobs._intact(self.sha)  # a corrupt one is quarantined here
        with self.blobs.store.tx() as c:
            if not intact and self.blobs._claim_name(c, self.sha, self.received):
                if self.received == 0:
                    c.execute(insert(blob_chunks).values(owner=self.sha, off=0, data=b""))
                c.execute(
                    update(blob_chunks)
                    .where(blob_chunks.c.owner == self._owner)
                    .values(owner=self.sha)
                )
            self._drop(c)
        self.blobs._mark(self.sha)

    def discard(self) -> None:
        with self.blobs.store.tx() as c:
            self._drop(c)

    def close(self) -> None:
        if not self._open:
            return
        self._open = False
        if self._ephemeral:
            self.discard()
            return
        with self.blobs.store.tx() as c:
            c.execute(
                update(blob_partials)
                .where(blob_partials.c.id == self.id, blob_partials.c.holder == self._me)
                .values(holder=None, held_until=None)
            )

    # -- plumbing ----------------------------------------------------------------------------

    def _row(self, now: float) -> dict[str, Any]:
        return {
            "id": self.id,
            "sha": self.sha,
            "uploader": self.uploader,
            "received": 0,
            "updated_at": now,
            "holder": self._me,
            "held_until": now + HOLD_S,
        }

    def _drop(self, c: Any) -> None:
        c.execute(delete(blob_chunks).where(blob_chunks.c.owner == self._owner))
        c.execute(delete(blob_partials).where(blob_partials.c.id == self.id))

    def _stored_received(self) -> int:
        with self.blobs.store.read() as c:
            got = c.execute(
                select(blob_partials.c.received).where(blob_partials.c.id == self.id)
            ).scalar()
        return int(got or 0)

    def _reset(self) -> None:
        with self.blobs.store.tx() as c:
            c.execute(delete(blob_chunks).where(blob_chunks.c.owner == self._owner))
            c.execute(update(blob_partials).where(blob_partials.c.id == self.id).values(received=0))
        self._hash = hashlib.sha256()
        self.received = 0

    def _sweep(self, now: float) -> None:
        """Drop this uploader's partials past their age, and its oldest beyond the cap; a
        partial that a live request holds is left alone."""
        p = blob_partials.c
        with self.blobs.store.read() as c:
            rows = c.execute(
                select(p.id, p.updated_at, p.holder, p.held_until).where(
                    p.uploader == self.uploader, p.id != self.id
                )
            ).all()
        free = [r for r in rows if r.holder is None or (r.held_until or 0) < now]
        old = [r.id for r in free if now - r.updated_at > PARTIAL_MAX_AGE_S]
        young = sorted((r for r in free if r.id not in old), key=lambda r: r.updated_at)
        over = [r.id for r in young[: max(0, len(young) - (PARTIALS_PER_UPLOADER - 1))]]
        for pid in old + over:
            with self.blobs.store.tx() as c:
                gone = c.execute(
                    delete(blob_partials).where(
                        p.id == pid, p.holder.is_(None) | (p.held_until < now)
                    )
                ).rowcount
                if gone:
                    c.execute(delete(blob_chunks).where(blob_chunks.c.owner == f"p:{pid}"))
            if gone and pid in over:
                log.info("dropped the unfinished upload %s: its uploader started too many", pid)


def _who(uploader: str) -> str:
    return hashlib.sha256(uploader.encode()).hexdigest()[:16]


def _partial_id(sha: str, uploader: str) -> str:
    """The partial of `uploader`'s upload of `sha`: a name nobody else's request can reach."""
    return hashlib.sha256(f"{sha}\0{uploader}".encode()).hexdigest()[:30]


def _contiguous(spans: list[tuple[int, int]], size: int) -> bool:
    """True when the rows cover [0, size) end to end with no gap or overlap."""
    at = 0
    for off, n in spans:
        if off != at:
            return False
        at += n
    return at == size
