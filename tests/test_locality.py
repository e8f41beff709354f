"""Locality (MapReduce, Dean & Ghemawat 2004 §3.4): a task goes preferably to a node that already
holds its input blobs. Store-level, on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib

from fastapi.testclient import TestClient
from sqlalchemy import event, select

from fogwheel.coordinator.server import CoordinatorConfig, build_app, open_store
from fogwheel.protocol import JobIn, Limits, SyncIn, TaskIn, TaskReport, Value
from fogwheel.store import Store
from fogwheel.store.schema import blob_holders
from tests.test_store import FN, T0, job, join

MB = 1_000_000


def blob(name: str, size: int = 5 * MB) -> Value:
    """A value carried as a blob (no inline data), as the SDK sends a large argument."""
    return Value(sha=hashlib.sha256(name.encode()).hexdigest(), size=size)


def blob_job(*args: Value) -> JobIn:
    return JobIn(
        name="t", kind="python", fn=FN, tasks=[TaskIn(args=v) for v in args], limits=Limits()
    )


def reason(store: Store, task_id: int) -> str:
    return store.get_task("c1", task_id)["history"][-1]["reason"]


def test_a_node_leaves_tasks_whose_input_another_node_holds_to_that_node(store: Store) -> None:
    a, b = join(store, "a", cores=1), join(store, "b", cores=2)
    held, fresh = [blob("b1"), blob("b2")], [blob("x1"), blob("x2")]
    store.hold_blobs(b, [(v.sha, v.size) for v in held])
    store.create_job("c1", blob_job(*held, *fresh), T0)  # b's inputs first in the queue
    # a asks first: it gets the tasks whose input nobody holds
    got_a = store.sync(a, SyncIn(want=2, slots_free=1), T0).tasks
    assert [t["args"]["sha"] for t in got_a] == [v.sha for v in fresh]
    assert all("already here" not in reason(store, t["task_id"]) for t in got_a)
    # b gets its own
    got_b = store.sync(b, SyncIn(want=2, slots_free=2), T0).tasks
    assert [t["args"]["sha"] for t in got_b] == [v.sha for v in held]
    for t in got_b:
        assert reason(store, t["task_id"]).endswith("; 5.0 MB of its input already here")


def test_a_node_that_dropped_a_blob_from_its_cache_is_no_longer_preferred_for_it(
    store: Store,
) -> None:
    a, b = join(store, "a", cores=1), join(store, "b", cores=1)
    kept, evicted = blob("k"), blob("e")
    store.hold_blobs(b, [(kept.sha, kept.size), (evicted.sha, evicted.size)])
    # b's cache evicted one of them: its next sync (which asks for nothing) says so
    assert store.sync(b, SyncIn(dropped=[evicted.sha], slots_free=1), T0).tasks == []
    with store.read() as c:
        held = c.execute(select(blob_holders.c.sha).where(blob_holders.c.node_id == b)).all()
    assert [sha for (sha,) in held] == [kept.sha]
    store.create_job("c1", blob_job(evicted, kept), T0)
    # a now takes the task whose input nobody holds, and leaves b the one it still holds
    [got_a] = store.sync(a, SyncIn(want=1, slots_free=1), T0).tasks
    assert got_a["args"]["sha"] == evicted.sha
    assert "already here" not in reason(store, got_a["task_id"])
    [got_b] = store.sync(b, SyncIn(want=1, slots_free=1), T0).tasks
    assert got_b["args"]["sha"] == kept.sha
    assert reason(store, got_b["task_id"]).endswith("; 5.0 MB of its input already here")


def test_a_node_takes_its_own_inputs_first_most_bytes_first(store: Store) -> None:
    a = join(store, "a", cores=1)
    small, big, other = blob("s", 1 * MB), blob("b", 9 * MB), blob("o")
    store.hold_blobs(a, [(small.sha, small.size), (big.sha, big.size)])
    store.create_job("c1", blob_job(other, small, big), T0)
    got = store.sync(a, SyncIn(want=3, slots_free=1), T0).tasks
    assert [t["args"]["sha"] for t in got] == [big.sha, small.sha, other.sha]


def test_a_holder_that_is_gone_does_not_hold_tasks_back(store: Store) -> None:
    a, gone = join(store, "a", cores=1), join(store, "gone", cores=1)
    held, fresh = blob("h"), blob("f")
    store.hold_blobs(gone, [(held.sha, held.size)])
    store.create_job("c1", blob_job(held, fresh), T0)
    later = T0 + store.lease_seconds * 10  # "gone" has not synced since it joined
    [t] = store.sync(a, SyncIn(want=1, slots_free=1), later).tasks
    assert t["args"]["sha"] == held.sha  # queue order: nobody live holds either input


def test_a_node_that_reported_a_blob_result_holds_it(store: Store) -> None:
    a, b = join(store, "a", cores=1), join(store, "b", cores=1)
    store.create_job("c1", job(1), T0)
    [t] = store.sync(a, SyncIn(want=1, slots_free=1), T0).tasks
    produced = blob("result of the first step", 3 * MB)
    store.note_upload(a, produced.sha, T0)  # the agent PUTs a large result before reporting it
    store.sync(
        a,
        SyncIn(results=[TaskReport(task_id=t["task_id"], attempt=1, ok=True, value=produced)]),
        T0,
    )
    # a second step reads it: b, asking first, leaves it to a
    store.create_job("c1", blob_job(produced, blob("unrelated")), T0 + 1)
    [on_b] = store.sync(b, SyncIn(want=1, slots_free=1), T0 + 1).tasks
    [on_a] = store.sync(a, SyncIn(want=1, slots_free=1), T0 + 1).tasks
    assert on_a["args"]["sha"] == produced.sha and on_b["args"]["sha"] != produced.sha
    assert reason(store, on_a["task_id"]).endswith("; 3.0 MB of its input already here")


def test_recording_a_holder_twice_is_harmless(store: Store) -> None:
    a = join(store, "a")
    v = blob("twice")
    store.hold_blobs(a, [(v.sha, v.size)])
    store.hold_blobs(a, [(v.sha, v.size), (v.sha, v.size)])


def test_jobs_without_blob_inputs_never_ask_who_holds_what(store: Store) -> None:
    a = join(store, "a", cores=2)
    store.create_job("c1", job(4), T0)  # inline arguments only
    statements: list[str] = []

    def seen(conn, cursor, statement, *args) -> None:
        statements.append(statement)

    event.listen(store.engine, "before_cursor_execute", seen)
    try:
        assert len(store.sync(a, SyncIn(want=4, slots_free=2), T0).tasks) == 4
    finally:
        event.remove(store.engine, "before_cursor_execute", seen)
    assert statements and not any("blob_holders" in s or "task_blobs" in s for s in statements)


def test_a_node_that_fetches_a_blob_through_the_api_is_recorded_as_its_holder(tmp_path) -> None:
    config = CoordinatorConfig(data_dir=tmp_path, api_key="fwc_" + "k" * 32, join_token="fwj_join")
    store, _ = open_store(config)
    data = b"an argument too large to send inline" * 10
    sha = hashlib.sha256(data).hexdigest()
    customer = {"authorization": f"Bearer {config.api_key}"}
    with TestClient(build_app(config, store)) as http:
        assert http.put(f"/v1/blobs/{sha}", content=data, headers=customer).status_code == 201
        spec = {"kind": "python", "fn": {"sha": sha, "size": len(data)}, "tasks": [{}]}
        assert http.post("/v1/jobs", json=spec, headers=customer).status_code == 201
        info = {"token": "fwj_join", "name": "n", "cores": 1, "memory_mb": 1024, "disk_mb": 0}
        joined = http.post("/v1/nodes/join", json=info).json()
        node = {"authorization": f"Bearer {joined['credential']}"}
        leased = http.post("/v1/nodes/me/sync", json={"want": 1}, headers=node).json()
        assert len(leased["tasks"]) == 1
        assert http.get(f"/v1/blobs/{sha}", headers=customer).content == data  # not a node
        assert http.get(f"/v1/blobs/{sha}", headers=node).content == data
    with store.read() as c:
        holders = c.execute(select(blob_holders.c.node_id, blob_holders.c.size)).all()
    store.close()
    assert [tuple(h) for h in holders] == [(joined["node_id"], len(data))]
