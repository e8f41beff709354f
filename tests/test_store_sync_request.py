"""The store's sync takes its own type (store/base.py: SyncRequest), not the wire model.

Any object with a sync's fields will do: here a frozen dataclass holding tuples, so a store
that leaned on pydantic (`model_dump`, `model_copy`) or edited the request's lists in place
fails these, on both databases.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from fogwheel.protocol import SyncIn, TaskReport
from fogwheel.store import Store
from fogwheel.store.base import SyncRequest
from tests.test_store import T0, job, join, ok


@dataclass(frozen=True)
class Sync:
    """A sync built in process, as the simulator or a bench would: no validation, tuples."""

    results: Sequence[TaskReport] = ()
    renew: Sequence[int] = ()
    release: Sequence[int] = ()
    want: int = 0
    slots_free: int = 0
    serve_url: str | None = None
    stored: Sequence[str] = ()
    bad: Sequence[str] = ()
    refused: Sequence[str] = ()
    served: dict[str, int] = field(default_factory=dict)


def test_a_sync_that_is_not_the_wire_model_leases_renews_hands_back_and_reports(
    store: Store,
) -> None:
    node = join(store)
    job_id = store.create_job("c1", job(3), T0)
    request: SyncRequest = Sync(want=3, slots_free=3)
    leased = [t["task_id"] for t in store.sync(node, request, T0).tasks]
    assert len(leased) == 3
    done, kept, back = leased
    out = store.sync(
        node, Sync(results=(ok(done, 1),), renew=(kept,), release=(back,), slots_free=2), T0 + 1
    )
    assert out.acked == [done]
    assert out.lost == []
    assert out.tasks == []  # it asked for none
    assert [r["task_id"] for r in store.results_since("c1", job_id, 0)["results"]] == [done]
    states = {t["id"]: t["state"] for t in store.list_tasks("c1", job_id, None, 10, 0) or []}
    assert states == {done: "done", kept: "leased", back: "pending"}


def test_the_same_sync_as_a_dataclass_or_as_the_wire_model_leases_the_same(
    store: Store,
) -> None:
    a, b = join(store, "a"), join(store, "b")
    store.create_job("c1", job(2), T0)
    by_wire = store.sync(a, SyncIn(want=1, slots_free=1), T0).tasks
    by_dataclass = store.sync(b, Sync(want=1, slots_free=1), T0).tasks
    assert len(by_wire) == len(by_dataclass) == 1
    assert by_wire[0]["task_id"] != by_dataclass[0]["task_id"]
    assert sorted(by_wire[0]) == sorted(by_dataclass[0])  # the same lease fields
