"""An upgraded coordinator opens a database made by an older version: missing columns are added
(store/migrate.py), on SQLite and PostgreSQL."""

from __future__ import annotations

from sqlalchemy import text

from fogwheel.protocol import NodeJoin
from fogwheel.store import Store
from fogwheel.store.migrate import add_missing_columns, missing_columns
from fogwheel.store.schema import metadata


def test_columns_an_older_database_lacks_are_added_with_their_defaults(store: Store) -> None:
    info = NodeJoin(token="x" * 8, name="old", cores=2, memory_mb=512, disk_mb=10)
    old, _ = store.join_node(info, 1.0)
    with store.engine.begin() as c:
        c.execute(text("DROP INDEX ix_nodes_owner_id"))
        for col in ("quota", "owner_id", "revoked"):
            c.execute(text(f"ALTER TABLE nodes DROP COLUMN {col}"))
    assert {(t, c.name) for t, c in missing_columns(store.engine, metadata)} == {
        ("nodes", "quota"),
        ("nodes", "owner_id"),
        ("nodes", "revoked"),
    }
    assert sorted(add_missing_columns(store.engine, metadata)) == [
        "index ix_nodes_owner_id",
        "nodes.owner_id",
        "nodes.quota",
        "nodes.revoked",
    ]
    assert missing_columns(store.engine, metadata) == []
    assert add_missing_columns(store.engine, metadata) == []  # twice is harmless
    [n] = store.list_nodes(2.0)
    assert (n["id"], n["owner_id"], n["state"], n["quota"]) == (old, "operator", "up", 2)
    store.join_node(info, 3.0)  # and new rows go in
    assert len(store.list_nodes(3.0)) == 2


def test_attempts_of_an_older_database_get_their_jobs_and_the_median_counts_them(
    store: Store,
) -> None:
    from fogwheel.protocol import SyncIn, TaskReport
    from tests.test_store import T0, job, join, value

    node = join(store)
    job_id = store.create_job("c1", job(3), T0)
    leased = store.sync(node, SyncIn(want=3, slots_free=2), T0).tasks
    reports = [
        TaskReport(task_id=t["task_id"], attempt=1, ok=True, value=value(b"r"), cpu_s=0.1)
        for t in leased
    ]
    store.sync(node, SyncIn(results=reports), T0 + 4)
    with store.engine.begin() as c:  # as an older version left them: no job on attempts
        c.execute(text("DROP INDEX ix_attempts_job_id"))
        c.execute(text("ALTER TABLE attempts DROP COLUMN job_id"))
    assert "attempts.job_id" in add_missing_columns(store.engine, metadata)
    with store.read() as c:
        jobs_of = c.execute(text("SELECT DISTINCT job_id FROM attempts")).scalars().all()
        assert jobs_of == [job_id]
        assert store._job_median(c, job_id) == 4.0
