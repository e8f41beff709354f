"""The blob store's streamed uploads (blobs/store.py PartialUpload), on a real directory: a
resumed upload hashes what it kept, a wrong whole is dropped, each uploader has its own
partials and at most PARTIALS_PER_UPLOADER of them."""

from __future__ import annotations

import hashlib
import os
import time

import pytest

from fogwheel.blobs.store import (
    PARTIAL_MAX_AGE_S,
    PARTIALS_PER_UPLOADER,
    FileBlobStore,
    UploadBusy,
)
from fogwheel.errors import IntegrityError


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_an_upload_in_two_sittings_is_whole_and_verified(tmp_path) -> None:
    blobs = FileBlobStore(tmp_path)
    data = os.urandom(3 << 20)
    first = blobs.upload(sha(data), "customer:alice")
    assert first.open() == 0
    first.write(data[: 1 << 20])
    first.close()  # the connection dropped: the partial stays
    assert blobs.received(sha(data), "customer:alice") == 1 << 20
    assert not blobs.has(sha(data))

    second = blobs.upload(sha(data), "customer:alice")
    assert second.open() == 1 << 20  # hashes what is there, goes on from it
    second.write(data[1 << 20 :])
    second.finish()
    second.close()
    assert blobs.get(sha(data)) == data
    assert blobs.received(sha(data), "customer:alice") == 0  # the partial became the blob


def test_bytes_that_do_not_match_the_name_are_dropped(tmp_path) -> None:
    blobs = FileBlobStore(tmp_path)
    up = blobs.upload(sha(b"wanted"), "node:n1")
    up.open()
    up.write(b"other")
    with pytest.raises(IntegrityError, match="upload the file again"):
        up.finish()
    up.close()
    assert not blobs.has(sha(b"wanted"))
    assert blobs.received(sha(b"wanted"), "node:n1") == 0


def test_each_uploader_has_its_own_partial(tmp_path) -> None:
    blobs = FileBlobStore(tmp_path)
    name = sha(b"shared bytes")
    alice = blobs.upload(name, "customer:alice")
    alice.open()
    alice.write(b"shared")
    alice.close()
    assert blobs.received(name, "customer:bob") == 0  # bob can neither see nor extend it
    bob = blobs.upload(name, "customer:bob")
    assert bob.open() == 0
    bob.close()


def test_a_resumed_part_while_another_writes_is_busy_but_a_plain_put_goes_on(tmp_path) -> None:
    blobs = FileBlobStore(tmp_path)
    data = b"the same blob, twice at once"
    writing = blobs.upload(sha(data), "customer:alice")
    writing.open()
    writing.write(data[:5])
    with pytest.raises(UploadBusy):
        blobs.upload(sha(data), "customer:alice").open(resume=True)
    plain = blobs.upload(sha(data), "customer:alice")
    assert plain.open(resume=False) == 0  # a partial of its own
    plain.write(data)
    plain.finish()
    plain.close()
    assert blobs.get(sha(data)) == data
    writing.close()
    assert blobs.received(sha(data), "customer:alice") == 5  # the other's bytes untouched


def test_an_uploader_keeps_at_most_its_quota_of_unfinished_uploads(tmp_path) -> None:
    blobs = FileBlobStore(tmp_path)
    names = [sha(str(i).encode()) for i in range(PARTIALS_PER_UPLOADER + 2)]
    for i, name in enumerate(names):
        up = blobs.upload(name, "customer:alice")
        up.open()
        up.write(b"x")
        up.close()
        path = blobs.partial_path(name, "customer:alice")
        at = time.time() - 100 + i  # within the day a partial is kept; the first is oldest
        os.utime(path, (at, at))
    other = blobs.upload(names[0], "customer:bob")
    other.open()
    other.write(b"y")
    other.close()
    kept = [n for n in names if blobs.received(n, "customer:alice")]
    assert kept == names[-PARTIALS_PER_UPLOADER:]  # the oldest dropped
    assert blobs.received(names[0], "customer:bob") == 1  # another uploader's are not counted


def test_a_partial_left_for_a_day_is_dropped(tmp_path) -> None:
    blobs = FileBlobStore(tmp_path)
    stale = blobs.upload(sha(b"stale"), "customer:alice")
    stale.open()
    stale.write(b"st")
    stale.close()
    old = time.time() - PARTIAL_MAX_AGE_S - 60
    os.utime(blobs.partial_path(sha(b"stale"), "customer:alice"), (old, old))
    fresh = blobs.upload(sha(b"fresh"), "customer:alice")
    fresh.open()
    fresh.close()
    assert blobs.received(sha(b"stale"), "customer:alice") == 0
