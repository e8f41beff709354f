"""The node's round trip as a pure state machine (core/nodestate.py): examples, then random
event sequences thrown at it with hypothesis, checked against the invariants that keep a
node honest: no result lost, no lease run twice, a lost task stopped, goodbye only with
nothing held, back-off that grows and resets, failover through every coordinator."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from fogwheel.core.nodestate import (
    CREDENTIAL_REFUSED,
    REFUSED_UNSIGNED,
    AbortRequested,
    Exit,
    Failover,
    Instruction,
    Kill,
    Log,
    NodeState,
    Phase,
    Run,
    Settings,
    SleepUntil,
    StopRequested,
    SwitchCoordinator,
    Sync,
    SyncAnswered,
    SyncFailed,
    TaskFinished,
    Tick,
)
from fogwheel.errors import IllegalTransition

NOW = 1_000.0


def lease(tid: int, attempt: int = 1, expires: float = NOW + 15) -> dict[str, Any]:
    return {"task_id": tid, "attempt": attempt, "lease_expires": expires, "kind": "python"}


def report(tid: int, attempt: int = 1, wall: float = 0.01) -> dict[str, Any]:
    return {"task_id": tid, "attempt": attempt, "ok": True, "wall_s": wall, "cpu_s": wall}


def of(kind: type, out: list[Instruction]) -> list[Any]:
    return [i for i in out if isinstance(i, kind)]


def synced(m: NodeState, now: float = NOW) -> Sync:
    [sync] = of(Sync, m.handle(Tick(now)))
    return sync


def answer(m: NodeState, now: float = NOW, **kw: Any) -> list[Instruction]:
    tasks = tuple(kw.pop("tasks", ()))
    signed = kw.pop("signed", (True,) * len(tasks))
    return m.handle(SyncAnswered(now, tasks=tasks, signed=tuple(signed), **kw))


def fresh(slots: int = 1, **kw: Any) -> NodeState:
    return NodeState(Settings(slots=slots, **kw))


# -- examples ---------------------------------------------------------------------------------


def test_a_new_node_syncs_at_once_and_asks_for_a_queue_per_slot() -> None:
    m = fresh(slots=2)
    sync = synced(m)
    assert sync.body == {"results": [], "renew": [], "release": [], "want": 10, "slots_free": 2}
    assert not sync.leaving
    assert m.handle(Tick(NOW)) == []  # one sync in flight at a time


def test_leases_run_one_per_free_slot_and_the_rest_wait_queued() -> None:
    m = fresh(slots=2)
    synced(m)
    out = answer(m, tasks=[lease(1), lease(2), lease(3)])
    assert [r.lease["task_id"] for r in of(Run, out)] == [1, 2]
    assert m.phase == {1: Phase.RUNNING, 2: Phase.RUNNING, 3: Phase.QUEUED}
    out = m.handle(TaskFinished(1, NOW + 0.1, report(1)))
    assert [r.lease["task_id"] for r in of(Run, out)] == [3]


def test_a_result_is_sent_until_acked_and_survives_failed_syncs() -> None:
    m = fresh()
    synced(m)
    answer(m, tasks=[lease(1)])
    m.handle(TaskFinished(1, NOW + 0.1, report(1)))
    first = synced(m, NOW + 0.2)
    assert first.body["results"] == [report(1)] and first.body["renew"] == []
    m.handle(SyncFailed(NOW + 0.2, "ConnectError"))
    again = synced(m, NOW + 10)
    assert again.body["results"] == [report(1)]
    answer(m, NOW + 10, acked=(1,))
    assert m.outbox == {} and m.phase == {}


def test_an_ack_for_a_result_not_in_that_sync_does_not_drop_it() -> None:
    m = fresh()
    synced(m)
    answer(m, tasks=[lease(1)])
    synced(m, NOW + 5.1)  # a renewal goes out while task 1 runs
    m.handle(TaskFinished(1, NOW + 5.2, report(1)))
    answer(m, NOW + 5.3, acked=(1,))  # it was not in that sync: kept
    assert 1 in m.outbox


def test_a_rejected_result_is_dropped_and_said_in_the_log() -> None:
    m = fresh()
    synced(m)
    answer(m, tasks=[lease(1)])
    m.handle(TaskFinished(1, NOW, report(1)))
    synced(m, NOW + 1)
    out = answer(m, NOW + 1, rejected=((1, "this node never held that task"),))
    assert m.outbox == {}
    assert Log("warning", "result of task 1 refused: this node never held that task") in out


def test_a_replayed_lease_is_not_run_again() -> None:
    m = fresh(slots=2)
    synced(m)
    answer(m, tasks=[lease(1)])
    m.handle(TaskFinished(1, NOW, report(1)))
    synced(m, NOW + 1)
    answer(m, NOW + 1, acked=(1,))
    synced(m, NOW + 2)
    out = answer(m, NOW + 2, tasks=[lease(1)])
    assert of(Run, out) == [] and 1 not in m.phase
    assert any("already received that lease" in log.message for log in of(Log, out))


def test_a_lease_expired_beyond_the_clock_skew_is_refused_and_handed_back() -> None:
    m = fresh(max_clock_skew_s=60)
    synced(m)
    out = answer(m, tasks=[lease(1, expires=NOW - 61), lease(2, expires=NOW - 59)])
    assert [r.lease["task_id"] for r in of(Run, out)] == [2]
    assert synced(m, NOW + 5.1).body["release"] == [1]


@pytest.mark.parametrize("expires", [None, "soon", float("nan"), True])
def test_a_lease_without_a_readable_expiry_is_refused(expires: Any) -> None:
    m = fresh()
    synced(m)
    assert of(Run, answer(m, tasks=[lease(1, expires=expires)])) == []


def test_an_unsigned_lease_is_never_run_and_reported_as_a_crash() -> None:
    m = fresh()
    synced(m)
    out = answer(m, tasks=[lease(7, attempt=2)], signed=[False])
    assert of(Run, out) == []
    assert any(log.level == "error" and "task 7 refused" in log.message for log in of(Log, out))
    [result] = synced(m, NOW + 0.1).body["results"]
    assert result["task_id"] == 7 and result["attempt"] == 2 and not result["ok"]
    assert result["error"] == {"kind": "crash", "message": REFUSED_UNSIGNED}


def test_an_unsigned_copy_of_a_held_task_spoils_nothing() -> None:
    m = fresh()
    synced(m)
    answer(m, tasks=[lease(1)])
    synced(m, NOW + 5.1)
    answer(m, NOW + 5.1, tasks=[lease(1, attempt=2)], signed=[False])
    assert m.phase == {1: Phase.RUNNING} and m.outbox == {}


def test_a_task_reported_lost_is_killed_when_running_and_dropped_when_queued() -> None:
    m = fresh()
    synced(m)
    answer(m, tasks=[lease(1), lease(2)])
    synced(m, NOW + 5.1)
    out = answer(m, NOW + 5.1, lost=(1, 2))
    assert of(Kill, out) == [Kill(1, "lost")]
    assert m.phase == {1: Phase.KILLED}
    m.handle(TaskFinished(1, NOW + 5.2, report(1)))  # it came back anyway: nobody wants it
    assert m.phase == {} and m.outbox == {}


def test_stop_hands_back_the_queue_at_once_then_leaves_after_reporting() -> None:
    m = fresh()
    synced(m)
    answer(m, tasks=[lease(1), lease(2)])
    m.handle(StopRequested(NOW + 1))
    prompt = synced(m, NOW + 1)
    assert prompt.body["release"] == [2] and prompt.body["renew"] == [1]
    assert prompt.body["want"] == 0 and not prompt.leaving
    answer(m, NOW + 1)
    m.handle(TaskFinished(1, NOW + 2, report(1)))
    bye = synced(m, NOW + 2.1)
    assert bye.leaving and bye.body["results"] == [report(1)] and bye.body["renew"] == []
    assert bye.body["release"] == []  # handed back once, in the answered sync
    assert of(Exit, answer(m, NOW + 2.1, acked=(1,))) == [Exit()]


def test_abort_kills_what_runs_and_hands_it_back() -> None:
    m = fresh(slots=2)
    synced(m)
    answer(m, tasks=[lease(1), lease(2), lease(3)])
    out = m.handle(StopRequested(NOW), AbortRequested(NOW))
    assert sorted(k.task_id for k in of(Kill, out)) == [1, 2]
    bye = synced(m, NOW)
    assert bye.leaving and sorted(bye.body["release"]) == [1, 2, 3]
    assert of(Exit, answer(m, NOW)) == [Exit()]


def test_a_second_stop_is_an_abort() -> None:
    m = fresh()
    synced(m)
    answer(m, tasks=[lease(1)])
    m.handle(StopRequested(NOW))
    assert of(Kill, m.handle(StopRequested(NOW))) == [Kill(1, "abort")]


def test_an_idle_node_polls_at_its_interval_or_slower_when_the_coordinator_asks() -> None:
    m = fresh(poll_s=0.5)
    synced(m)
    answer(m)
    assert m.handle(Tick(NOW)) == [SleepUntil(NOW + 0.5)]
    synced(m, NOW + 0.5)
    answer(m, NOW + 0.5, next_sync_s=30.0)
    assert m.handle(Tick(NOW + 1)) == [SleepUntil(NOW + 30.5)]
    synced(m, NOW + 30.5)
    answer(m, NOW + 30.5, next_sync_s=0.01)  # never faster than its own poll interval
    assert m.handle(Tick(NOW + 30.5)) == [SleepUntil(NOW + 31.0)]


def test_a_busy_node_renews_every_third_of_the_lease_and_batches_results() -> None:
    m = fresh(slots=1)
    synced(m)
    answer(m, tasks=[lease(i) for i in range(1, 11)], lease_seconds=15.0)
    assert m.handle(Tick(NOW + 1)) == [SleepUntil(NOW + 5)]
    m.handle(TaskFinished(1, NOW + 1, report(1, wall=1.0)))
    assert m.handle(Tick(NOW + 1.01)) == [SleepUntil(NOW + 1.05)]  # waits for company
    assert synced(m, NOW + 1.05).body["results"] == [report(1, wall=1.0)]


def test_a_busy_node_under_a_pace_reports_after_it_and_asks_for_enough_work_to_last() -> None:
    m = fresh(slots=1)
    synced(m)
    answer(m, tasks=[lease(1)], lease_seconds=300.0, pace_s=20.0)
    m.handle(TaskFinished(1, NOW + 0.1, report(1, wall=0.1)))
    # Finished and dry, yet it waits for the pace: the coordinator is over its load.
    assert m.handle(Tick(NOW + 0.2)) == [SleepUntil(NOW + 20)]
    sync = synced(m, NOW + 20)
    assert sync.body["results"] == [report(1, wall=0.1)]
    assert sync.body["want"] == 64  # 20 s of 0.1 s tasks, up to its queue's cap


def test_a_pace_never_outlasts_a_third_of_the_lease() -> None:
    m = fresh(slots=1)
    synced(m)
    answer(m, tasks=[lease(1), lease(2)], lease_seconds=15.0, pace_s=1e9)
    assert m.handle(Tick(NOW + 1)) == [SleepUntil(NOW + 5)]  # renewed in time
    answer_to = synced(m, NOW + 5)
    assert answer_to.body["renew"] == [1, 2]


def test_without_a_pace_a_busy_node_reports_at_its_own_pace_again() -> None:
    m = fresh(slots=1)
    synced(m)
    answer(m, tasks=[lease(i) for i in range(1, 4)], lease_seconds=300.0, pace_s=20.0)
    synced(m, NOW + 20)
    answer(m, NOW + 20, pace_s=0.0)
    m.handle(TaskFinished(1, NOW + 20.1, report(1)))
    [sync] = of(Sync, m.handle(Tick(NOW + 20.11)))  # running low: at once, not 20 s later
    assert sync.body["results"] == [report(1)]


def test_a_refused_credential_is_fatal() -> None:
    m = fresh()
    synced(m)
    assert m.handle(SyncFailed(NOW, "unauthorized", 401)) == [Exit(fatal=CREDENTIAL_REFUSED)]
    assert m.handle(Tick(NOW + 1)) == []


def test_a_node_told_429_waits_its_retry_after_and_keeps_its_results() -> None:
    m = fresh()
    synced(m)
    answer(m, tasks=[lease(1)])
    m.handle(TaskFinished(1, NOW + 0.1, report(1)))
    synced(m, NOW + 0.2)
    out = m.handle(SyncFailed(NOW + 0.2, "too fast (HTTP 429)", 429, retry_after_s=7.0))
    assert [i.level for i in of(Log, out)] == ["warning"]  # the coordinator's word, not an error
    assert of(Sync, m.handle(Tick(NOW + 7.1))) == []  # not before Retry-After is over
    [again] = of(Sync, m.handle(Tick(NOW + 7.3)))
    assert again.body["results"] == [report(1)]


@pytest.mark.parametrize("said", [None, -5.0, float("nan"), float("inf"), 1e9])
def test_a_429s_retry_after_is_bounded_whatever_it_says(said: float | None) -> None:
    m = fresh()
    synced(m)
    m.handle(SyncFailed(NOW, "too fast (HTTP 429)", 429, retry_after_s=said))
    assert of(Sync, m.handle(Tick(NOW + 601))), "never more than MAX_PACE_S (600 s)"


def test_a_stopping_node_gives_up_on_a_coordinator_gone_for_a_lease_period() -> None:
    m = fresh(lease_seconds=15.0)
    synced(m)
    answer(m)
    m.handle(StopRequested(NOW))
    t = NOW
    while True:
        out = m.handle(Tick(t))
        if of(Sync, out):
            out = m.handle(SyncFailed(t, "ConnectError"))
            if of(Exit, out):
                break
        t += 1.0
        assert t < NOW + 30
    assert t > NOW + 15


def test_an_answer_is_read_not_trusted_to_be_well_formed() -> None:
    garbage = {
        "acked": [1, "2", None, [3], True],
        "rejected": [{"task_id": 4, "reason": "x"}, {"reason": "no id"}, "junk", {"task_id": []}],
        "lost": "everything",
        "tasks": ["not a lease", lease(5), None],
        "lease_seconds": "forever",
        "next_sync_s": float("inf"),
    }
    ev = SyncAnswered.from_json(garbage, [True, True, True], NOW)
    assert (ev.acked, ev.rejected, ev.lost) == ((1,), ((4, "x"),), ())
    assert ev.tasks == (lease(5),) and ev.signed == (True,)
    assert ev.lease_seconds is None and ev.next_sync_s is None
    m = fresh()
    synced(m)
    assert [r.lease["task_id"] for r in of(Run, m.handle(ev))] == [5]


def test_events_the_shell_could_not_have_sent_are_named_errors() -> None:
    m = fresh()
    with pytest.raises(IllegalTransition):
        m.handle(SyncAnswered(NOW))
    with pytest.raises(IllegalTransition):
        m.handle(TaskFinished(5, NOW, report(5)))


def test_backoff_doubles_to_its_cap_and_resets_on_an_answer() -> None:
    turns = Failover(urls=1, backoff_s=0.2, backoff_max_s=5.0)
    waits = [turns.failed()[1] for _ in range(8)]
    assert waits == [0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0]
    turns.succeeded()
    assert turns.failed() == (None, 0.2)


def test_failover_tries_every_url_before_each_wait() -> None:
    turns = Failover(urls=3, backoff_s=0.2)
    steps = [turns.failed() for _ in range(6)]
    assert steps == [(1, 0.0), (2, 0.0), (0, 0.2), (1, 0.0), (2, 0.0), (0, 0.4)]


def test_the_machine_switches_coordinator_on_a_gateway_error_but_not_on_a_500() -> None:
    m = fresh(coordinators=2)
    synced(m)
    assert of(SwitchCoordinator, m.handle(SyncFailed(NOW, "HTTP 503", 503))) == [
        SwitchCoordinator(1)
    ]
    synced(m, NOW)  # the next URL at once
    out = m.handle(SyncFailed(NOW, "boom (HTTP 500)", 500))
    assert of(SwitchCoordinator, out) == [] and Log("error", "sync refused: boom (HTTP 500)") in out
    assert m.handle(Tick(NOW)) == [SleepUntil(NOW + 0.2)]


# -- random event sequences -------------------------------------------------------------------


class RandomRoundTrips(RuleBasedStateMachine):
    """A node with 2 slots and 3 coordinator URLs, and a coordinator that answers anyhow:
    acks some results and rejects others, loses leases, replays old ones, sends expired and
    unsigned ones, fails at the transport or with an error status."""

    def __init__(self) -> None:
        super().__init__()
        self.m = NodeState(Settings(slots=2, coordinators=3, lease_seconds=15.0))
        self.now = NOW
        self.flight: Sync | None = None
        self.next_tid = 1
        self.given: list[dict[str, Any]] = []  # every lease handed out
        self.runs: set[tuple[int, int]] = set()
        self.started: dict[int, dict[str, Any]] = {}  # Run and not finished
        self.owed: dict[int, dict[str, Any]] = {}  # results the node must keep until answered
        self.url = 0
        self.switches: list[int] = []

    def carry(self, out: list[Instruction]) -> None:
        for ins in out:
            if isinstance(ins, Run):
                key = (ins.lease["task_id"], ins.lease["attempt"])
                assert key not in self.runs, f"{key} run twice"
                self.runs.add(key)
                self.started[ins.lease["task_id"]] = dict(ins.lease)
                assert len(self.started) <= self.m.settings.slots
            elif isinstance(ins, Sync):
                assert self.flight is None
                self.flight = ins
                if ins.leaving:
                    assert self.m.stopping, "only a stopping node says goodbye"
                    assert ins.body["renew"] == [] and ins.body["want"] == 0
                    assert not any(
                        p in (Phase.QUEUED, Phase.RUNNING) for p in self.m.phase.values()
                    )
                assert {r["task_id"] for r in ins.body["results"]} >= set(self.owed)
            elif isinstance(ins, SwitchCoordinator):
                self.url = ins.index
                self.switches.append(ins.index)

    @rule(dt=st.sampled_from([0.0, 0.01, 0.06, 0.5, 5.1]))
    def tick(self, dt: float) -> None:
        self.now += dt
        out = self.m.handle(Tick(self.now))
        assert not (self.m.exited and out), "nothing comes after Exit"
        self.carry(out)

    @precondition(lambda self: self.flight is not None and not self.m.exited)
    @rule(data=st.data())
    def answered(self, data: st.DataObject) -> None:
        assert self.flight is not None
        sent = [r["task_id"] for r in self.flight.body["results"]]
        # ids beyond those sent too: a result that finished after the sync left is not in it
        ackable = [*sent, *self.m.outbox, 998]
        acked = data.draw(st.lists(st.sampled_from(ackable), unique=True))
        rest = [t for t in ackable if t not in acked]
        rejected = data.draw(st.lists(st.sampled_from(rest), unique=True)) if rest else []
        known = [*self.m.phase, 999]
        lost = data.draw(st.lists(st.sampled_from(known), unique=True, max_size=3))
        tasks: list[dict[str, Any]] = []
        signed: list[bool] = []
        for _ in range(data.draw(st.integers(0, min(4, self.flight.body["want"])))):
            kind = data.draw(st.sampled_from(["new", "new", "replay", "replay", "expired", "bad"]))
            if kind == "replay" and self.given:
                tasks.append(data.draw(st.sampled_from(self.given)))
            else:
                expires = self.now - 100 if kind == "expired" else self.now + 15
                new = lease(self.next_tid, data.draw(st.integers(1, 3)), expires)
                self.next_tid += 1
                self.given.append(new)
                tasks.append(new)
            signed.append(kind != "bad")
        running_before = {t for t, p in self.m.phase.items() if p is Phase.RUNNING}
        next_sync = data.draw(st.sampled_from([None, 0.1, 30.0]))
        self.flight = None
        out = self.m.handle(
            SyncAnswered(
                self.now,
                acked=tuple(acked),
                rejected=tuple((t, "no") for t in rejected),
                lost=tuple(lost),
                tasks=tuple(tasks),
                signed=tuple(signed),
                lease_seconds=15.0,
                next_sync_s=next_sync,
            )
        )
        for tid in [*acked, *rejected]:
            if tid in sent:
                self.owed.pop(tid, None)
        kills = {k.task_id for k in of(Kill, out)}
        assert kills == set(lost) & running_before, "a lost task that runs must be stopped"
        self.carry(out)

    @precondition(lambda self: self.flight is not None and not self.m.exited)
    @rule(status=st.sampled_from([None, None, 502, 503, 500, 422]))
    def failed(self, status: int | None) -> None:
        self.flight = None
        out = self.m.handle(SyncFailed(self.now, "x", status))
        self.carry(out)
        if not self.m.stopping:
            assert not of(Exit, out)

    @precondition(lambda self: self.started and not self.m.exited)
    @rule(data=st.data(), ok=st.booleans())
    def finished(self, data: st.DataObject, ok: bool) -> None:
        tid = data.draw(st.sampled_from(sorted(self.started)))
        given = self.started.pop(tid)
        killed = self.m.phase.get(tid) is Phase.KILLED
        rep = {**report(tid, given["attempt"]), "ok": ok}
        self.carry(self.m.handle(TaskFinished(tid, self.now, rep)))
        if not killed:
            self.owed[tid] = rep

    @precondition(lambda self: not self.m.exited)
    @rule()
    def stop(self) -> None:
        self.carry(self.m.handle(StopRequested(self.now)))

    @invariant()
    def results_are_kept_until_acked_or_rejected(self) -> None:
        for tid, rep in self.owed.items():
            assert self.m.outbox.get(tid) == rep, f"the result of task {tid} was lost"

    @invariant()
    def slots_and_phases_agree(self) -> None:
        busy = {t for t, p in self.m.phase.items() if p in (Phase.RUNNING, Phase.KILLED)}
        assert busy == set(self.started)
        assert set(self.m.outbox) == {t for t, p in self.m.phase.items() if p is Phase.REPORTING}
        assert list(self.m.queue) == [t for t, p in self.m.phase.items() if p is Phase.QUEUED]

    def teardown(self) -> None:
        # Failover visits the URLs in order, each in turn.
        for a, b in zip(self.switches, self.switches[1:], strict=False):
            assert b == (a + 1) % 3


RandomRoundTrips.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_random_round_trips = RandomRoundTrips.TestCase
