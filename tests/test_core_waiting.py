"""core/waiting.py: why a task waits, decided from frozen views of the fleet and the task."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fogwheel.core import waiting as w
from fogwheel.core.owners import Device


def node(
    name: str,
    owner: str | None = None,
    network: str | None = None,
    free: int = 1,
    caps: tuple[str, ...] = (),
    memory_mb: int = 4096,
) -> w.LiveNode:
    return w.LiveNode(Device(name, owner, network), free, memory_mb, frozenset(caps))


def fleet(*nodes: w.LiveNode, quarantined: int = 0) -> w.Fleet:
    return w.Fleet(tuple(nodes), quarantined)


def test_a_result_on_a_fog_of_one_node_waits_for_a_second_node_and_says_replicas_1() -> None:
    task = w.TaskView("verifying", copies_pending=1, ran_on=(Device("n1"),))
    got = w.waiting_for(task, fleet(node("n1")))
    assert got is not None
    assert got.reason == w.CHECKING and got.stuck
    assert (
        got.sentence == "1 live node; adaptive checking needs 2 — add a node or pass --replicas 1"
    )


def test_two_devices_of_one_owner_cannot_check_each_other() -> None:
    task = w.TaskView("verifying", copies_pending=1, ran_on=(Device("n1", "alice"),))
    got = w.waiting_for(task, fleet(node("n1", "alice"), node("n2", "alice")))
    assert got is not None and got.reason == w.CHECKING and got.stuck
    assert "owner alice" in got.sentence and "--replicas 1" in got.sentence


def test_two_operator_devices_check_each_other() -> None:
    task = w.TaskView("verifying", copies_pending=1, ran_on=(Device("n1"),))
    got = w.waiting_for(task, fleet(node("n1"), node("n2")))
    assert got is not None and got.reason == w.QUEUED and not got.stuck


def test_devices_on_one_network_cannot_check_each_other() -> None:
    net = "203.0.113.0/24"
    task = w.TaskView("verifying", copies_pending=1, ran_on=(Device("n1", None, net),))
    got = w.waiting_for(task, fleet(node("n1", None, net), node("n2", None, net)))
    assert got is not None and got.reason == w.CHECKING
    assert "networks" in got.sentence


def test_fixed_replicas_that_the_fog_cannot_place_name_the_option() -> None:
    task = w.TaskView("pending", copies_pending=2, devices_needed=3, adaptive=False)
    got = w.waiting_for(task, fleet(node("n1"), node("n2")))
    assert got is not None and got.reason == w.CHECKING
    assert got.sentence == "2 live nodes; --replicas 3 needs 3 — add a node or pass --replicas 1"


def test_no_live_nodes_says_how_to_start_one() -> None:
    got = w.waiting_for(w.TaskView("pending"), fleet())
    assert got is not None and got.reason == w.NO_LIVE_NODES and got.stuck
    assert "fogwheel node --coordinator" in got.sentence


def test_only_quarantined_nodes_says_so() -> None:
    got = w.waiting_for(w.TaskView("pending"), fleet(quarantined=2))
    assert got is not None and got.reason == w.QUARANTINED
    assert "2 nodes quarantined" in got.sentence


def test_a_task_that_needs_povray_on_a_fog_without_it_names_povray() -> None:
    task = w.TaskView("pending", needs=frozenset({"povray"}))
    got = w.waiting_for(task, fleet(node("n1", caps=("jellyfish",))))
    assert got is not None and got.reason == w.NO_CAPABILITY and got.stuck
    assert "povray" in got.sentence


def test_a_task_larger_than_every_node_says_lower_memory() -> None:
    got = w.waiting_for(w.TaskView("pending", memory_mb=8000), fleet(node("n1", memory_mb=512)))
    assert got is not None and got.reason == w.NO_MEMORY and "--memory" in got.sentence


def test_busy_nodes_are_a_wait_that_passes() -> None:
    got = w.waiting_for(w.TaskView("pending"), fleet(node("n1", free=0), node("n2", free=0)))
    assert got is not None and got.reason == w.ALL_BUSY and not got.stuck
    assert "all 2 live nodes" in got.sentence


@pytest.mark.parametrize(
    "task",
    [
        w.TaskView("done"),
        w.TaskView("failed"),
        w.TaskView("cancelled"),
        w.TaskView("leased"),
        w.TaskView("verifying", copies_running=1, ran_on=(Device("n1"),)),
    ],
)
def test_running_or_finished_tasks_do_not_wait(task: w.TaskView) -> None:
    assert w.waiting_for(task, fleet(node("n1"))) is None


def test_the_summary_names_the_most_telling_reason_and_counts_its_tasks() -> None:
    stuck = w.Waiting(w.CHECKING, "check", True)
    busy = w.Waiting(w.ALL_BUSY, "busy", False)
    got = w.summary([busy, stuck, stuck, None, busy, busy])
    assert got == w.JobWaiting(w.CHECKING, "check", True, 2)
    assert w.summary([None, None]) is None


reasons = st.sampled_from(w.PRIORITY)


@given(st.lists(st.one_of(st.none(), reasons.map(lambda r: w.Waiting(r, r, False)))))
def test_the_summary_never_counts_more_tasks_than_wait(waits: list[w.Waiting | None]) -> None:
    got = w.summary(waits)
    waiting = [x for x in waits if x is not None]
    if not waiting:
        assert got is None
    else:
        assert got is not None and 1 <= got.tasks <= len(waiting)
        assert got.reason == min((x.reason for x in waiting), key=w.PRIORITY.index)


devices = st.builds(
    Device,
    st.sampled_from(["n1", "n2", "n3", "n4"]),
    st.sampled_from([None, "operator", "alice", "bob"]),
    st.sampled_from([None, "203.0.113.0/24", "198.51.100.0/24"]),
)


@given(
    st.lists(devices, max_size=4, unique_by=lambda d: d.node),
    st.lists(st.sampled_from(["n1", "n2", "n3", "n4"]), max_size=2, unique=True),
)
def test_a_check_waits_stuck_exactly_when_no_live_node_may_take_it(
    live: list[Device], ran: list[str]
) -> None:
    by_name = {d.node: d for d in live}
    ran_on = tuple(by_name.get(n, Device(n)) for n in ran)
    task = w.TaskView("verifying", copies_pending=1, ran_on=ran_on)
    got = w.waiting_for(task, w.Fleet(tuple(w.LiveNode(d) for d in live)))
    from fogwheel.core.owners import barred

    may = [d for d in live if not barred(d, ran_on)]
    assert got is not None
    assert got.stuck == (not may)
