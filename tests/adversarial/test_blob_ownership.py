"""B never reads A's blob: ownership of an output follows only an accepted result of the
owner's own task, and a node may name as its output only a blob it uploaded itself.

Before: a report's output shas were given to the customer of every job in the batch, rejected
reports included, so a node could make customer B the owner of A's blob by naming its SHA-256,
and an honest node that reported A's and B's tasks in one sync did the same."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import pytest

from fogwheel.localfog import LocalFog
from tests.adversarial.customers import Customer
from tests.adversarial.hostile import INLINE_MAX, HostileNode


def secret_of_a() -> bytes:
    """A's result: large enough to travel as a blob the node uploads."""
    return b"A's secret result " * 8000


def b_work(x: int) -> int:
    return x + 1


@pytest.fixture
def fog(tmp_path) -> Iterator[LocalFog]:
    with LocalFog(0, lease_seconds=30.0, workdir=tmp_path) as f:
        yield f


def _blob_ref(data: bytes) -> dict:
    return {"sha": hashlib.sha256(data).hexdigest(), "size": len(data)}


def test_a_hostile_node_cannot_make_b_the_owner_of_as_blobs(fog: LocalFog) -> None:
    a = Customer(fog.url, fog.api_key)
    b = Customer.create(fog.url, fog.admin_key, "b")
    # A's blobs: an input A uploaded, and an output an honest node produced for A's task.
    a_input = b"A's private input " * 5000
    a_in_sha = a.put_blob(a_input)
    fog.add_node()
    fog.wait_for_nodes(1)
    job_a = a.submit(secret_of_a, [()])
    [res] = a.results(job_a["id"])
    a_out = res["value"]
    assert a_out["data"] is None and a_out["size"] > INLINE_MAX
    got = a.blob(a_out["sha"])  # A reads its own: the test can fail
    assert got.status_code == 200 and secret_of_a() in got.content
    fog.kill_node(0)

    job_b = b.submit(b_work, [(1,), (2,)])
    with HostileNode(fog.url, fog.join_token) as h:
        assert h.join().status_code == 201
        leases = h.lease(2, at_least=2)  # a new device's in-flight quota is small
        assert {t["job_id"] for t in leases} == {job_b["id"]}
        t1, t2 = leases
        a_out_ref = {"sha": a_out["sha"], "size": a_out["size"]}
        a_in_ref = {"sha": a_in_sha, "size": len(a_input)}

        # 1. B's task, "answered" with A's output and A's input, which this node never uploaded.
        named = h.result(t1)
        named["value"] = a_out_ref
        named["outputs"] = {"loot.bin": a_in_ref}
        r = h.report(named)
        assert r.status_code == 200, r.text
        body = r.json()
        assert t1["task_id"] not in body["acked"]
        [rej] = body["rejected"]
        assert rej["task_id"] == t1["task_id"] and "not uploaded by this node" in rej["reason"]

        # 2. Reports the coordinator rejects (a task never held: A's) beside a good one of B's.
        a_task = a.task_ids(job_a["id"])[0]
        never_held = {"task_id": a_task, "attempt": 1, "ok": True, "value": a_out_ref}
        good = h.result(t2, value=b"\x80\x04K\x03.")  # B's task, an inline value
        good["outputs"] = {"copy.bin": a_in_ref}  # ... that also names A's input
        fine = h.result(t1, value=b"\x80\x04K\x04.")  # t1 again, answered plainly now
        r = h.report(never_held, good, fine)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["acked"] == [t1["task_id"]]
        assert {x["task_id"] for x in body["rejected"]} == {a_task, t2["task_id"]}
        # the hostile node itself may not read them either (it holds no task that reads them)
        assert h.get_blob(a_out["sha"]).status_code == 404

    for sha in (a_out["sha"], a_in_sha):
        assert b.blob(sha).status_code == 404, "B reads A's blob"
    assert a.blob(a_out["sha"]).status_code == 200 and a.blob(a_in_sha).status_code == 200


def test_an_honest_node_reporting_a_and_b_in_one_sync_gives_each_only_its_own(
    fog: LocalFog,
) -> None:
    a = Customer(fog.url, fog.api_key)
    b = Customer.create(fog.url, fog.admin_key, "b")
    job_a = a.submit(b_work, [(10,)])
    job_b = b.submit(b_work, [(20,)])
    a_bytes, b_bytes = b"A" * (INLINE_MAX + 10), b"B" * (INLINE_MAX + 10)
    with HostileNode(fog.url, fog.join_token, name="honest") as n:
        assert n.join().status_code == 201
        leases = {t["job_id"]: t for t in n.lease(2, at_least=2)}
        # It uploads what it produced, as the agent does, and reports both tasks at once.
        rep_a = n.result(leases[job_a["id"]], value=a_bytes)
        rep_b = n.result(leases[job_b["id"]], value=b_bytes)
        r = n.report(rep_a, rep_b)
        assert r.status_code == 200, r.text
        assert sorted(r.json()["acked"]) == sorted(t["task_id"] for t in leases.values())
    [ra], [rb] = a.results(job_a["id"]), b.results(job_b["id"])
    assert ra["value"]["sha"] == _blob_ref(a_bytes)["sha"]
    assert a.blob(ra["value"]["sha"]).content == a_bytes  # each reads its own ...
    assert b.blob(rb["value"]["sha"]).content == b_bytes
    assert b.blob(ra["value"]["sha"]).status_code == 404  # ... and never the other's
    assert a.blob(rb["value"]["sha"]).status_code == 404


def test_an_output_awaiting_its_quorum_is_nobodys(fog: LocalFog) -> None:
    """Under replication an output becomes the customer's only once the quorum agreed on it:
    a lone replica's upload is not B's while the task waits for its check."""
    b = Customer.create(fog.url, fog.admin_key, "b")
    b.submit(b_work, [(1,)], replicas=2)
    junk = b"not the answer " * 6000
    with HostileNode(fog.url, fog.join_token, name="h1") as h:
        assert h.join().status_code == 201
        [lease] = h.lease(1)
        assert h.report(h.result(lease, value=junk)).json()["acked"] == [lease["task_id"]]
    assert b.blob(hashlib.sha256(junk).hexdigest()).status_code == 404
