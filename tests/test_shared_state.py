"""What several coordinator processes share lives where each reaches it (issue 12, item 3).

Two real `fogwheel coordinator` processes, each with a data dir of its own, on one fresh
PostgreSQL database: they sign with one key, serve each other's blobs (and finish each other's
uploads), wake each other's result long-polls and never serve a cancelled job as running. The
database blob store (blobs/db.py) is also tested alone, on both databases: several MiB
streamed, corruption refused and quarantined, an interrupted upload resumed by another
process, one request's partial out of another's reach.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select, update

from fogwheel.blobs.db import CHUNK, DbBlobStore
from fogwheel.blobs.store import (
    PARTIAL_MAX_AGE_S,
    PARTIALS_PER_UPLOADER,
    CorruptBlob,
    UploadBusy,
)
from fogwheel.coordinator.server import KEY_FILE, CoordinatorConfig, signing_key_for
from fogwheel.coordinator.wakeups import PgWakeups
from fogwheel.errors import ConfigError, IntegrityError
from fogwheel.localfog import LocalFog
from fogwheel.signing import key_to_pem, public_key_b64, verify_lease
from fogwheel.store import Store
from fogwheel.store.schema import blob_chunks, blob_partials
from tests.adversarial.hostile import HostileNode
from tests.test_api_errors import scratch_database

MiB = 1 << 20


def blob(n: int, seed: int = 7) -> tuple[bytes, str]:
    data = random.Random(seed).randbytes(n)
    return data, hashlib.sha256(data).hexdigest()


# -- the database blob store alone, on SQLite and PostgreSQL --------------------------------


def test_a_blob_of_several_mib_streams_in_and_out_byte_identical(store: Store) -> None:
    data, sha = blob(5 * MiB + 3)
    blobs = DbBlobStore(store)
    up = blobs.upload(sha, "customer:alice")
    assert up.open() == 0
    for off in range(0, len(data), MiB + 4096):  # the app writes a little over 1 MiB at a time
        up.write(data[off : off + MiB + 4096])
    up.finish()
    up.close()
    with store.read() as c:
        sizes = [len(d) for d in c.execute(select(blob_chunks.c.data)).scalars()]
    assert max(sizes) <= CHUNK and sum(sizes) == len(data)  # rows of at most 1 MiB
    fresh = DbBlobStore(store)  # another process: nothing verified yet
    f = fresh.open_verified(sha)
    assert fresh.size_of(f) == len(data)
    assert b"".join(fresh.chunks(f)) == data
    f = fresh.open_verified(sha)
    f.seek(3 * MiB - 10)  # a Range that starts inside one row and ends in the next
    assert b"".join(fresh.chunks(f, MiB + 20)) == data[3 * MiB - 10 : 4 * MiB + 10]
    assert fresh.has(sha) and fresh.received(sha, "customer:alice") == 0


def test_put_and_get_keep_an_empty_blob_and_refuse_a_wrong_name(store: Store) -> None:
    blobs = DbBlobStore(store)
    empty = blobs.put(b"")
    assert DbBlobStore(store).get(empty) == b""
    with pytest.raises(IntegrityError):
        blobs.put(b"abc", expect="0" * 64)
    with pytest.raises(KeyError):
        blobs.get("0" * 64)


@pytest.mark.parametrize("damage", ["flip a byte", "drop a row"])
def test_a_corrupt_blob_is_refused_quarantined_and_replaced_by_a_correct_upload(
    store: Store, damage: str
) -> None:
    data, sha = blob(2 * MiB + 100)
    DbBlobStore(store).put(data)
    with store.tx() as c:
        row = blob_chunks.c.owner == sha
        if damage == "flip a byte":
            bad = bytearray(data[MiB : 2 * MiB])
            bad[5] ^= 1
            c.execute(
                update(blob_chunks).where(row, blob_chunks.c.off == MiB).values(data=bytes(bad))
            )
        else:
            c.execute(blob_chunks.delete().where(row, blob_chunks.c.off == MiB))
    blobs = DbBlobStore(store)  # a process that has not verified it yet
    with pytest.raises(CorruptBlob):
        blobs.open_verified(sha)
    assert not blobs.has(sha)
    with pytest.raises(KeyError):  # never served afterwards, from any process
        DbBlobStore(store).get(sha)
    with store.read() as c:
        kept = set(c.execute(select(blob_chunks.c.owner)).scalars())
    assert kept and all(o.startswith(f"q:{sha}:") for o in kept)  # kept for the operator
    assert blobs.put(data) == sha
    assert DbBlobStore(store).get(sha) == data


def test_an_interrupted_upload_is_resumed_by_another_process(store: Store) -> None:
    data, sha = blob(3 * MiB + 5, seed=3)
    first = DbBlobStore(store).upload(sha, "customer:alice")
    first.open()
    first.write(data[: 2 * MiB])
    first.close()  # the connection dropped here
    other = DbBlobStore(store)
    assert other.received(sha, "customer:alice") == 2 * MiB
    assert other.received(sha, "customer:bob") == 0  # one uploader's bytes are its own
    up = other.upload(sha, "customer:alice")
    assert up.open(resume=True) == 2 * MiB
    up.write(data[2 * MiB :])
    up.finish()
    up.close()
    assert DbBlobStore(store).get(sha) == data
    with store.read() as c:
        assert c.execute(select(blob_partials.c.id)).first() is None  # nothing left over


def test_a_partial_in_use_is_busy_for_a_resume_and_a_plain_put_writes_its_own(
    store: Store,
) -> None:
    data, sha = blob(MiB + 1, seed=4)
    blobs = DbBlobStore(store)
    busy = blobs.upload(sha, "node:n1")
    busy.open()
    busy.write(data[:1000])
    with pytest.raises(UploadBusy):
        DbBlobStore(store).upload(sha, "node:n1").open(resume=True)
    plain = DbBlobStore(store).upload(sha, "node:n1")
    assert plain.open(resume=False) == 0
    plain.write(data)
    plain.finish()
    plain.close()
    busy.close()
    assert blobs.get(sha) == data
    assert blobs.received(sha, "node:n1") == 1000  # the stalled request's bytes stay its own


def test_two_uploaders_finishing_one_blob_at_once_leave_one_copy(store: Store) -> None:
    data, sha = blob(2 * MiB + 9, seed=6)
    ups = [DbBlobStore(store).upload(sha, who) for who in ("customer:alice", "node:n7")]
    for up in ups:
        up.open()
        up.write(data)
    for up in ups:
        up.finish()
        up.close()
    assert DbBlobStore(store).get(sha) == data
    with store.read() as c:
        owners = list(c.execute(select(blob_chunks.c.owner)).scalars())
    assert owners == [sha] * 3  # the second upload's rows were dropped, not kept beside


def test_a_crashed_requests_hold_lapses_and_its_uploader_resumes(store: Store) -> None:
    data, sha = blob(MiB, seed=8)
    crashed = DbBlobStore(store).upload(sha, "customer:alice")
    crashed.open()
    crashed.write(data[:1000])  # …and its process dies: no close, the hold stays
    with pytest.raises(UploadBusy):
        DbBlobStore(store).upload(sha, "customer:alice").open(resume=True)
    with store.tx() as c:  # HOLD_S later
        c.execute(update(blob_partials).values(held_until=time.time() - 1))
    up = DbBlobStore(store).upload(sha, "customer:alice")
    assert up.open(resume=True) == 1000
    up.write(data[1000:])
    up.finish()
    up.close()
    assert DbBlobStore(store).get(sha) == data
    with pytest.raises(UploadBusy):  # the crashed request, were it only stalled, cannot write
        crashed.write(b"late")


def test_an_uploader_keeps_its_quota_of_partials_and_none_older_than_a_day(store: Store) -> None:
    names = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(PARTIALS_PER_UPLOADER + 2)]
    blobs = DbBlobStore(store)
    for i, name in enumerate(names):
        up = blobs.upload(name, "customer:alice")
        up.open()
        up.write(b"x")
        up.close()
        at = time.time() - 100 + i  # the first is oldest
        if i == 1:
            at -= PARTIAL_MAX_AGE_S  # and this one was left for a day
        with store.tx() as c:
            row = blob_partials.c.sha == name
            c.execute(update(blob_partials).where(row).values(updated_at=at))
    other = blobs.upload(names[0], "customer:bob")
    other.open()
    other.write(b"y")
    other.close()
    kept = [n for n in names if blobs.received(n, "customer:alice")]
    assert kept == names[-PARTIALS_PER_UPLOADER:]  # the day-old one and the oldest dropped
    assert blobs.received(names[0], "customer:bob") == 1  # another uploader's are not counted
    with store.read() as c:
        left = set(c.execute(select(blob_chunks.c.owner)).scalars())
    assert len(left) == PARTIALS_PER_UPLOADER + 1  # the dropped partials' rows went with them


def test_bytes_that_hash_to_another_name_are_refused_and_dropped(store: Store) -> None:
    data, sha = blob(MiB, seed=5)
    blobs = DbBlobStore(store)
    up = blobs.upload(sha, "customer:alice")
    up.open()
    up.write(data[:-1] + b"!")
    with pytest.raises(IntegrityError):
        up.finish()
    up.close()
    assert not blobs.has(sha) and blobs.received(sha, "customer:alice") == 0
    with store.read() as c:
        assert c.execute(select(blob_chunks.c.owner)).first() is None


# -- two coordinator processes on one PostgreSQL database ------------------------------------


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalFog, LocalFog]]:
    with contextlib.ExitStack() as stack:
        db = stack.enter_context(scratch_database())
        a = LocalFog(nodes=0, db=db, workdir=tmp_path_factory.mktemp("coordinator-a"))
        b = LocalFog(nodes=0, db=db, workdir=tmp_path_factory.mktemp("coordinator-b"))
        b.join_token, b.api_key, b.admin_key = a.join_token, a.api_key, a.admin_key
        a.start()
        stack.callback(a.stop)
        b.start()
        stack.callback(b.stop)
        yield a, b
        for fog in (a, b):
            log = (fog.dir / "coordinator.log").read_text(errors="replace")
            assert "Traceback" not in log, f"a coordinator crashed on some request:\n{log}"


def _job(url: str, key: str, n: int = 1) -> int:
    body = {"kind": "command", "tasks": [{"command": ["true"]}] * n, "replicas": 1}
    r = httpx.post(f"{url}/v1/jobs", json=body, headers={"authorization": f"Bearer {key}"})
    assert r.status_code == 201, r.text
    return int(r.json()["id"])


@pytest.mark.postgres
def test_both_coordinators_sign_with_one_key_kept_in_the_database(
    pair: tuple[LocalFog, LocalFog],
) -> None:
    a, b = pair
    keys = [httpx.get(f"{fog.url}/v1/coordinator/key").json() for fog in pair]
    assert keys[0] == keys[1]
    assert a.key_pin == b.key_pin == keys[0]["pin"]  # one join string for the whole set
    assert not (a.dir / "coordinator" / "coordinator.key").exists()
    assert not (b.dir / "coordinator" / "coordinator.key").exists()


@pytest.mark.postgres
def test_a_blob_put_to_one_coordinator_is_read_byte_identical_from_the_other(
    pair: tuple[LocalFog, LocalFog],
) -> None:
    a, b = pair
    data, sha = blob(3 * MiB + 11, seed=11)
    r = httpx.put(f"{a.url}/v1/blobs/{sha}", content=data, headers=a.headers, timeout=60)
    assert r.status_code == 201, r.text
    r = httpx.get(f"{b.url}/v1/blobs/{sha}", headers=b.headers, timeout=60)
    assert r.status_code == 200 and r.content == data
    r = httpx.get(f"{b.url}/v1/blobs/{sha}", headers={**b.headers, "range": "bytes=5-9"})
    assert r.status_code == 206 and r.content == data[5:10]
    assert not (b.dir / "coordinator" / "blobs").exists()  # nothing on either one's disk
    assert not (a.dir / "coordinator" / "blobs").exists()


@pytest.mark.postgres
def test_an_upload_started_on_one_coordinator_is_finished_on_the_other(
    pair: tuple[LocalFog, LocalFog],
) -> None:
    a, b = pair
    data, sha = blob(2 * MiB + 7, seed=12)
    half = MiB + 3
    part = {"content-range": f"bytes 0-{half - 1}/{len(data)}"}
    r = httpx.put(f"{a.url}/v1/blobs/{sha}", content=data[:half], headers={**a.headers, **part})
    assert r.status_code == 202 and r.json()["received"] == half, r.text
    r = httpx.get(f"{b.url}/v1/blobs/{sha}/upload", headers=b.headers)
    assert {k: r.json()[k] for k in ("sha", "complete", "received")} == {
        "sha": sha,
        "complete": False,
        "received": half,
    }
    rest = {"content-range": f"bytes {half}-{len(data) - 1}/{len(data)}"}
    r = httpx.put(f"{b.url}/v1/blobs/{sha}", content=data[half:], headers={**b.headers, **rest})
    assert r.status_code == 201, r.text
    r = httpx.get(f"{a.url}/v1/blobs/{sha}", headers=a.headers, timeout=60)
    assert r.status_code == 200 and r.content == data


@pytest.mark.postgres
def test_a_lease_from_one_verifies_with_the_others_key_and_its_result_wakes_a_poll_there(
    pair: tuple[LocalFog, LocalFog],
) -> None:
    a, b = pair
    job = _job(a.url, a.api_key)
    with HostileNode(b.url, a.join_token, name="shared-1") as node:
        assert node.join().status_code == 201
        [lease] = node.lease()
        pub = httpx.get(f"{a.url}/v1/coordinator/key").json()["public_key"]
        assert verify_lease(pub, lease, lease["signature"])  # B signed it with A's key
        # A long-poll waits on B; the node's result is accepted by A.
        woke: dict[str, Any] = {}

        def poll() -> None:
            r = httpx.post(
                f"{b.url}/v1/results/poll",
                json={"jobs": {str(job): 0}, "wait": 20},
                headers=b.headers,
                timeout=30,
            )
            woke["at"], woke["answer"] = time.monotonic(), r.json()

        waiter = threading.Thread(target=poll)
        waiter.start()
        time.sleep(1.0)  # it is waiting now
        assert "at" not in woke
        via_a = httpx.Client(base_url=a.url, headers=node.http.headers, timeout=30)
        with via_a:
            r = via_a.post("/v1/nodes/me/sync", json={"results": [node.result(lease)]})
        accepted = time.monotonic()
        assert r.status_code == 200 and r.json()["acked"] == [lease["task_id"]], r.text
        waiter.join(30)
    [answer] = woke["answer"]["jobs"]
    assert answer["finished"] == 1 and len(answer["results"]) == 1
    # Woken by A's NOTIFY: well under the 20 s wait, and under B's 3 s safety-net recheck.
    assert woke["at"] - accepted < 2.0


@pytest.mark.postgres
def test_a_job_cancelled_on_one_coordinator_is_cancelled_on_the_other_at_once(
    pair: tuple[LocalFog, LocalFog],
) -> None:
    a, b = pair
    job = _job(a.url, a.api_key, n=3)
    assert httpx.get(f"{b.url}/v1/jobs/{job}", headers=b.headers).json()["state"] == "running"
    r = httpx.post(f"{a.url}/v1/jobs/{job}/cancel", headers=a.headers)
    assert r.status_code == 200 and r.json()["state"] == "cancelled"
    assert httpx.get(f"{b.url}/v1/jobs/{job}", headers=b.headers).json()["state"] == "cancelled"
    with HostileNode(b.url, a.join_token, name="shared-2") as node:
        assert node.join().status_code == 201
        assert node.lease(want=3, timeout=1.0, at_least=1) == []  # B leases none of it


@pytest.mark.postgres
def test_a_key_revoked_on_one_coordinator_stops_working_on_the_other_within_a_round_trip(
    pair: tuple[LocalFog, LocalFog],
) -> None:
    a, b = pair
    admin = {"authorization": f"Bearer {a.admin_key}"}
    made = httpx.post(f"{a.url}/v1/customers", params={"name": "revoked-soon"}, headers=admin)
    assert made.status_code in (200, 201), made.text
    key, customer = made.json()["api_key"], made.json()["customer_id"]
    mine = {"authorization": f"Bearer {key}"}
    assert httpx.get(f"{b.url}/v1/jobs", headers=mine).status_code == 200  # B caches the key
    revoked = httpx.post(f"{a.url}/v1/customers/{customer}/revoke", headers=admin)
    assert revoked.status_code == 200, revoked.text
    t0 = time.monotonic()
    while httpx.get(f"{b.url}/v1/jobs", headers=mine).status_code == 200:
        assert time.monotonic() - t0 < 3.0, "B still takes the key (its cache keeps it 10 s)"
        time.sleep(0.05)
    assert httpx.get(f"{b.url}/v1/jobs", headers=mine).status_code == 401


@pytest.mark.postgres
def test_a_wake_sent_by_one_process_reaches_the_others_listener_and_not_its_own() -> None:
    from tests.conftest import PG_URL, _pg_available

    if why := _pg_available():
        if os.environ.get("FOGWHEEL_REQUIRE_POSTGRES"):
            pytest.fail(why)
        pytest.skip(why)
    woke = {"a": threading.Event(), "b": threading.Event()}
    a = PgWakeups(PG_URL, woke["a"].set)
    b = PgWakeups(PG_URL, woke["b"].set)
    a.start()
    b.start()
    try:
        deadline = time.monotonic() + 10
        while not (a.listening and b.listening) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert a.listening and b.listening
        time.sleep(0.2)
        for e in woke.values():  # each wakes once on connecting (what it may have missed)
            e.clear()
        a.send()
        assert woke["b"].wait(5.0)
        assert not woke["a"].wait(0.5)  # its own NOTIFY comes back to it, and is ignored
    finally:
        a.stop()
        b.stop()


# -- the signing key ----------------------------------------------------------------------


def test_every_process_on_one_database_gets_one_key_and_an_old_key_file_is_imported(
    store: Store, tmp_path: Path
) -> None:
    old = Ed25519PrivateKey.generate()
    first = tmp_path / "a"
    first.mkdir()
    (first / KEY_FILE).write_bytes(key_to_pem(old))
    (first / KEY_FILE).chmod(0o600)
    key, _ = signing_key_for(CoordinatorConfig(data_dir=first), store)
    assert public_key_b64(key) == public_key_b64(old)  # an upgrade keeps the nodes' pin
    other, where = signing_key_for(CoordinatorConfig(data_dir=tmp_path / "b"), store)
    if store.is_sqlite:  # one process, one file: a second data dir is another coordinator
        assert (tmp_path / "b" / KEY_FILE).exists()
        return
    assert public_key_b64(other) == public_key_b64(old) and "database" in where
    assert not (tmp_path / "b" / KEY_FILE).exists()


def test_a_signing_key_file_given_is_used_and_a_bad_one_is_refused_with_a_sentence(
    store: Store, tmp_path: Path
) -> None:
    given = Ed25519PrivateKey.generate()
    path = tmp_path / "shared.key"
    path.write_bytes(key_to_pem(given))
    path.chmod(0o600)
    config = CoordinatorConfig(data_dir=tmp_path / "d", signing_key=path)
    assert public_key_b64(signing_key_for(config, store)[0]) == public_key_b64(given)
    path.write_text("not a key")
    with pytest.raises(ConfigError, match="--signing-key"):
        signing_key_for(config, store)
