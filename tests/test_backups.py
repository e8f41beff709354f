"""Backup tasks (MapReduce, Dean & Ghemawat 2004 §3.6): near the end of a job an idle node runs a
copy of the slowest running task; the first result wins and the other copy is cancelled.

Store-level, on SQLite and PostgreSQL: two fake nodes drive `sync` with the `now` they pass in.
"""

from __future__ import annotations

import base64

from fogwheel.protocol import JobIn, SyncIn, TaskReport
from fogwheel.store import Store
from fogwheel.store.ledger import task_txn
from tests.test_store import T0, join, value
from tests.test_store import job as make_job


def job(n: int, *, backups: bool = True, replicas: int | str = 1) -> JobIn:
    return make_job(n, replicas=replicas).model_copy(update={"backups": backups})


def report(lease: dict, data: bytes) -> TaskReport:
    return TaskReport(
        task_id=lease["task_id"], attempt=lease["attempt"], ok=True, value=value(data), cpu_s=1.0
    )


def straggling(store: Store, **kw) -> tuple[str, str, int, dict]:
    """A job of 4: node b holds one task since T0, node a finished the other 3 in 1 s each."""
    a, b = join(store, "a", cores=4), join(store, "b", cores=1)
    job_id = store.create_job("c1", job(4, **kw), T0)
    [slow] = store.sync(b, SyncIn(want=1, slots_free=1), T0).tasks
    quick = store.sync(a, SyncIn(want=3, slots_free=4), T0).tasks
    assert len(quick) == 3
    store.sync(a, SyncIn(results=[report(t, b"quick") for t in quick]), T0 + 1)
    return a, b, job_id, slow


def test_an_idle_node_gets_a_backup_of_the_straggler_when_nothing_is_pending(store: Store) -> None:
    a, b, job_id, slow = straggling(store)
    [backup] = store.sync(a, SyncIn(want=4, slots_free=4), T0 + 5).tasks
    assert backup["task_id"] != slow["task_id"]  # a copy of it, as a replica row
    assert backup["args"] == slow["args"] and backup["attempt"] == 1
    reason = store.get_task("c1", slow["task_id"])["history"][-1]["reason"]
    assert reason.startswith(f"{a}: reliability")
    assert reason.endswith(
        f"; backup copy of task {slow['task_id']}, running 5.0 s on {b} (job median 1.0 s)"
    )
    assert store.count_backups(job_id) == {"started": 1, "won": 0, "running": 1, "wasted": 0}
    # one backup at a time: asking again gives nothing more
    assert store.sync(a, SyncIn(want=4, slots_free=3), T0 + 5.5).tasks == []


def test_the_backup_wins_the_straggler_loses_its_lease_and_its_late_result_changes_nothing(
    store: Store,
) -> None:
    a, b, job_id, slow = straggling(store)
    [backup] = store.sync(a, SyncIn(want=1, slots_free=4), T0 + 5).tasks
    # when the backup reports first
    out = store.sync(a, SyncIn(results=[report(backup, b"backup")]), T0 + 6)
    assert out.acked == [backup["task_id"]]
    # then the task is done with the backup's result and the job counted it once
    results = store.results_since("c1", job_id, 0)["results"]
    assert len(results) == 4 and {r["state"] for r in results} == {"done"}
    mine = next(r for r in results if r["task_id"] == slow["task_id"])
    assert base64.b64decode(mine["value"]["data"]) == b"backup"
    done = store.get_job("c1", job_id)
    assert (done["state"], done["finished"], done["failed"]) == ("done", 4, 0)
    # the straggler finds its lease gone at its next renewal
    assert store.sync(b, SyncIn(renew=[slow["task_id"]]), T0 + 7).lost == [slow["task_id"]]
    paid = {acc: store.balance(acc) for acc in ("customer:c1", f"node:{a}", f"node:{b}")}
    # and its late result is acknowledged, superseded, and changes nothing
    late = store.sync(b, SyncIn(results=[report(slow, b"late")]), T0 + 8)
    assert late.acked == [slow["task_id"]] and late.rejected == []
    assert store.get_job("c1", job_id) == done
    assert store.results_since("c1", job_id, 0)["results"] == results
    assert {acc: store.balance(acc) for acc in paid} == paid
    assert paid[f"node:{b}"] == 0
    assert {e.account for e in store.entries(task_txn(slow["task_id"]))} >= {f"node:{a}"}
    assert f"node:{b}" not in {e.account for e in store.entries(task_txn(slow["task_id"]))}
    history = store.get_task("c1", slow["task_id"])["history"]
    assert [(h["node_id"], h["outcome"]) for h in history] == [(b, "superseded"), (a, "accepted")]
    assert store.count_backups(job_id) == {"started": 1, "won": 1, "running": 0, "wasted": 0}


def test_when_the_original_finishes_first_the_backup_is_cancelled(store: Store) -> None:
    a, b, job_id, slow = straggling(store)
    [backup] = store.sync(a, SyncIn(want=1, slots_free=4), T0 + 5).tasks
    store.sync(b, SyncIn(results=[report(slow, b"original")]), T0 + 6)
    job_out = store.get_job("c1", job_id)
    assert (job_out["state"], job_out["finished"]) == ("done", 4)
    [mine] = [
        r
        for r in store.results_since("c1", job_id, 0)["results"]
        if r["task_id"] == slow["task_id"]
    ]
    assert base64.b64decode(mine["value"]["data"]) == b"original"
    # the backup's holder learns that its lease is gone; its late result is superseded
    assert store.sync(a, SyncIn(renew=[backup["task_id"]]), T0 + 7).lost == [backup["task_id"]]
    late = store.sync(a, SyncIn(results=[report(backup, b"original")]), T0 + 8)
    assert late.acked == [backup["task_id"]]
    assert store.get_job("c1", job_id) == job_out
    history = store.get_task("c1", slow["task_id"])["history"]
    assert [(h["node_id"], h["outcome"]) for h in history] == [(b, "accepted"), (a, "superseded")]
    assert store.count_backups(job_id) == {"started": 1, "won": 0, "running": 0, "wasted": 1}


def test_a_job_submitted_with_backups_off_gets_none(store: Store) -> None:
    a, _, job_id, _ = straggling(store, backups=False)
    assert store.sync(a, SyncIn(want=4, slots_free=4), T0 + 9).tasks == []
    assert store.count_backups(job_id)["started"] == 0


def test_no_backup_before_the_task_has_run_well_past_the_jobs_median(store: Store) -> None:
    a, *_ = straggling(store)
    # the job's median is 1 s, so the floor of 2 s applies: at T0 + 2 the task is not slow yet
    assert store.sync(a, SyncIn(want=4, slots_free=4), T0 + 2).tasks == []
    assert len(store.sync(a, SyncIn(want=4, slots_free=4), T0 + 2.1).tasks) == 1


def test_no_backup_before_the_job_has_a_finished_attempt(store: Store) -> None:
    a, b = join(store, "a", cores=4), join(store, "b", cores=1)
    store.create_job("c1", job(2), T0)
    store.sync(b, SyncIn(want=1, slots_free=1), T0)
    # a takes the last pending task; nothing has finished, so there is no measure of slow yet
    [t] = store.sync(a, SyncIn(want=4, slots_free=4), T0 + 5).tasks
    assert store.sync(a, SyncIn(want=4, slots_free=3), T0 + 5.5).tasks == []
    # once a's task is done (in 1 s), b's has run far past the job's median
    out = store.sync(a, SyncIn(results=[report(t, b"x")], want=4, slots_free=4), T0 + 6)
    [backup] = out.tasks
    assert backup["task_id"] > t["task_id"]


def test_no_backup_while_the_job_still_has_a_task_pending(store: Store) -> None:
    a, b = join(store, "a", cores=4), join(store, "b", cores=1)
    spec = job(3)
    spec.tasks[2].needs.append("gpu")  # nobody here can run it: it stays pending
    store.create_job("c1", spec, T0)
    store.sync(b, SyncIn(want=1, slots_free=1), T0)
    [t] = store.sync(a, SyncIn(want=4, slots_free=4), T0).tasks
    store.sync(a, SyncIn(results=[report(t, b"x")]), T0 + 1)
    assert store.sync(a, SyncIn(want=4, slots_free=4), T0 + 9).tasks == []


def test_a_lost_backup_is_cancelled_not_queued_and_the_task_may_be_backed_up_again(
    store: Store,
) -> None:
    a, b, job_id, slow = straggling(store)
    c = join(store, "c", cores=1)
    [backup] = store.sync(a, SyncIn(want=1, slots_free=4), T0 + 5).tasks
    store.sync(b, SyncIn(renew=[slow["task_id"]]), T0 + 8)  # b keeps its lease
    store.expire_leases(T0 + 16)  # a vanished with the backup
    assert store.counts().get("pending", 0) == 0
    assert store.count_backups(job_id) == {"started": 1, "won": 0, "running": 0, "wasted": 1}
    [again] = store.sync(c, SyncIn(want=1, slots_free=1), T0 + 17).tasks
    assert again["task_id"] not in (slow["task_id"], backup["task_id"])
    store.sync(c, SyncIn(results=[report(again, b"c")]), T0 + 18)
    assert store.get_job("c1", job_id)["finished"] == 4


def test_when_the_task_is_checked_both_copies_are_votes(store: Store) -> None:
    # given new nodes, whose every result is checked on another node (adaptive replication)
    a, b, c = (join(store, n, cores=2) for n in "abc")
    job_id = store.create_job("c1", job(2, replicas="adaptive"), T0)
    [slow] = store.sync(b, SyncIn(want=1, slots_free=2), T0).tasks
    [quick] = store.sync(a, SyncIn(want=1, slots_free=2), T0).tasks
    store.sync(a, SyncIn(results=[report(quick, b"q")]), T0 + 1)
    [check] = store.sync(c, SyncIn(want=1, slots_free=2), T0 + 1).tasks
    store.sync(c, SyncIn(results=[report(check, b"q")]), T0 + 2)
    assert store.get_job("c1", job_id)["finished"] == 1
    # when a backs up b's task and reports first, the backup's result waits for a second vote
    [backup] = store.sync(a, SyncIn(want=1, slots_free=2), T0 + 5).tasks
    store.sync(a, SyncIn(results=[report(backup, b"s")]), T0 + 6)
    assert store.get_job("c1", job_id)["finished"] == 1
    # then the straggler's matching result is that vote, and the task is done once
    store.sync(b, SyncIn(results=[report(slow, b"s")]), T0 + 7)
    job_out = store.get_job("c1", job_id)
    assert (job_out["state"], job_out["finished"], job_out["failed"]) == ("done", 2, 0)
    history = store.get_task("c1", slow["task_id"])["history"]
    assert [(h["node_id"], h["outcome"]) for h in history] == [(b, "agreed"), (a, "agreed")]
    assert store.count_backups(job_id) == {"started": 1, "won": 1, "running": 0, "wasted": 0}
    paid = {e.account for e in store.entries(task_txn(slow["task_id"]))}
    assert {f"node:{a}", f"node:{b}"} <= paid


def test_a_search_that_finds_no_straggler_due_is_not_run_again_until_one_can_be(
    store: Store,
) -> None:
    from sqlalchemy import event

    a, *_ = straggling(store)  # the straggler can be backed up from T0 + 2 (median 1 s)
    searches: list[str] = []

    def count(conn, cursor, statement, *args) -> None:  # the search orders by lease time
        if "ORDER BY attempts.leased_at" in statement:
            searches.append(statement)

    event.listen(store.engine, "before_cursor_execute", count)
    try:
        assert store.sync(a, SyncIn(want=4, slots_free=4), T0 + 1.2).tasks == []
        assert len(searches) == 1  # it says: none before T0 + 2
        for t in (1.4, 1.6, 1.9):
            assert store.sync(a, SyncIn(want=4, slots_free=4), T0 + t).tasks == []
        assert len(searches) == 1  # skipped meanwhile
        assert len(store.sync(a, SyncIn(want=4, slots_free=4), T0 + 2.1).tasks) == 1
        assert len(searches) == 2  # due: searched, and backed up at once
    finally:
        event.remove(store.engine, "before_cursor_execute", count)
