"""The task lifecycle as a specification: each row of TRANSITIONS, each pair outside it, and
random event sequences thrown at a task (in the manner of h2's state-machine tests)."""

from __future__ import annotations

import dataclasses
import re
import typing

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from fogwheel.core.tasks import (
    TERMINAL,
    TRANSITIONS,
    Cancelled,
    Completed,
    Errored,
    Event,
    Expired,
    Leased,
    Released,
    Renewed,
    Reported,
    Settled,
    Task,
    TaskState,
    apply,
    attempts_left,
    lease_expired,
)
from fogwheel.errors import FogwheelError, IllegalTransition

NOW = 1_000.0
LEASE = 30.0
NODES = ("n1", "n2", "n3")
EVENT_TYPES: tuple[type, ...] = typing.get_args(Event)

# One instance of each event, from holder n1 at NOW, for table-driven tests.
EXAMPLE_EVENTS: dict[type, Event] = {
    Leased: Leased("n1", NOW, LEASE),
    Renewed: Renewed("n1", NOW, LEASE),
    Completed: Completed("n1"),
    Reported: Reported("n1"),
    Settled: Settled(ok=True),
    Errored: Errored("n1", "worker crashed", retryable=True),
    Expired: Expired(NOW + LEASE),
    Released: Released("n1"),
    Cancelled: Cancelled(),
}


def leased_task(
    node: str = "n1", attempts: int = 1, max_attempts: int = 3, expires: float = NOW + LEASE
) -> Task:
    return Task(TaskState.LEASED, attempts, max_attempts, node, expires)


def task_in(state: TaskState) -> Task:
    """A consistent task in `state`, as the lifecycle itself would have left it."""
    if state is TaskState.PENDING:
        return Task()
    if state is TaskState.LEASED:
        return leased_task()
    return Task(state=state, attempts=1, error=None if state is TaskState.DONE else "why")


# -- the table ----------------------------------------------------------------------------

ILLEGAL_PAIRS = [
    (state, event_type)
    for state in TaskState
    for event_type in EVENT_TYPES
    if (state, event_type) not in TRANSITIONS
]


def test_the_table_speaks_only_of_real_states_and_events() -> None:
    assert set(EXAMPLE_EVENTS) == set(EVENT_TYPES)
    for state, event_type in TRANSITIONS:
        assert state in TaskState
        assert event_type in EVENT_TYPES
    assert not any(state in TERMINAL for state, _ in TRANSITIONS)
    assert len(ILLEGAL_PAIRS) == len(TaskState) * len(EVENT_TYPES) - len(TRANSITIONS)


@pytest.mark.parametrize(
    ("state", "event_type"), ILLEGAL_PAIRS, ids=[f"{s}-{t.__name__}" for s, t in ILLEGAL_PAIRS]
)
def test_every_pair_outside_the_table_raises_illegal_transition(
    state: TaskState, event_type: type
) -> None:
    # given a task in `state`
    task = task_in(state)
    # when an event the table has no row for arrives, then it is refused by name
    expected = f"a {state} task cannot take {event_type.__name__}"
    with pytest.raises(IllegalTransition, match=re.escape(expected)):
        apply(task, EXAMPLE_EVENTS[event_type])


def test_illegal_transition_belongs_to_the_one_exception_tree() -> None:
    assert issubclass(IllegalTransition, FogwheelError)


# -- Leased -------------------------------------------------------------------------------


@pytest.mark.parametrize("attempts_before", [0, 1, 2])
def test_leasing_counts_an_attempt_and_runs_until_now_plus_lease_seconds(
    attempts_before: int,
) -> None:
    task = Task(attempts=attempts_before, max_attempts=3)
    after = apply(task, Leased("n2", now=NOW, lease_seconds=12.5))
    assert after.state is TaskState.LEASED
    assert after.attempts == attempts_before + 1
    assert after.node == "n2"
    assert after.lease_expires == NOW + 12.5


# -- Renewed ------------------------------------------------------------------------------


def test_renewal_by_the_holder_extends_the_lease_from_now() -> None:
    task = leased_task(node="n1", attempts=2, expires=NOW + 5)
    after = apply(task, Renewed("n1", now=NOW + 4, lease_seconds=LEASE))
    assert after == dataclasses.replace(task, lease_expires=NOW + 4 + LEASE)


@pytest.mark.parametrize(
    ("event", "verb"),
    [
        (Renewed("n2", NOW, LEASE), "renew"),
        (Released("n2"), "release"),
        (Errored("n2", "worker crashed", retryable=True), "report a failure of"),
        (Errored("n2", "exit status 1", retryable=False), "report a failure of"),
    ],
    ids=["renew", "release", "retryable-error", "fatal-error"],
)
def test_a_node_that_does_not_hold_the_lease_cannot_act_on_it(event: Event, verb: str) -> None:
    task = leased_task(node="n1")
    with pytest.raises(IllegalTransition, match=re.escape(f"n2 cannot {verb} a task held by n1")):
        apply(task, event)


# -- Released -----------------------------------------------------------------------------


def test_release_by_the_holder_requeues_and_gives_the_attempt_back() -> None:
    task = leased_task(node="n1", attempts=2)
    after = apply(task, Released("n1"))
    assert after.state is TaskState.PENDING
    assert after.attempts == 1
    assert after.node is None and after.lease_expires is None


def test_lease_and_release_can_repeat_without_ever_exhausting_attempts() -> None:
    task = Task(max_attempts=1)
    for i in range(10):
        task = apply(task, Leased(NODES[i % 3], NOW + i, LEASE))
        task = apply(task, Released(NODES[i % 3]))
    assert task == Task(max_attempts=1)


# -- Completed ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "task",
    [
        leased_task(node="n1"),
        # a late result from an earlier holder, after the lease was lost and the task requeued
        Task(TaskState.PENDING, attempts=1, error="lease lost on n1"),
    ],
    ids=["from-leased", "late-result-while-pending"],
)
def test_a_result_finishes_the_task_and_clears_lease_and_error(task: Task) -> None:
    after = apply(task, Completed("n1"))
    assert after.state is TaskState.DONE
    assert after.node is None and after.lease_expires is None and after.error is None
    assert after.attempts == task.attempts


# -- Errored ------------------------------------------------------------------------------


@pytest.mark.parametrize(("attempts", "max_attempts"), [(1, 2), (1, 3), (2, 3), (4, 5)])
def test_a_retryable_error_requeues_while_attempts_remain(attempts: int, max_attempts: int) -> None:
    task = leased_task(attempts=attempts, max_attempts=max_attempts)
    after = apply(task, Errored("n1", "worker crashed", retryable=True))
    assert after == Task(TaskState.PENDING, attempts, max_attempts, error="worker crashed")


@pytest.mark.parametrize("max_attempts", [1, 2, 3, 5])
def test_a_retryable_error_on_the_last_attempt_gives_up(max_attempts: int) -> None:
    task = leased_task(attempts=max_attempts, max_attempts=max_attempts)
    after = apply(task, Errored("n1", "worker crashed", retryable=True))
    assert after.state is TaskState.FAILED
    assert after.error == f"worker crashed; gave up after {max_attempts} attempts"
    assert after.node is None and after.lease_expires is None


@pytest.mark.parametrize("max_attempts", [1, 2, 3, 5])
def test_retryable_errors_run_a_task_exactly_max_attempts_times(max_attempts: int) -> None:
    # given a fresh task; when every attempt crashes
    task, leases = Task(max_attempts=max_attempts), 0
    while task.state is TaskState.PENDING:
        task = apply(task, Leased("n1", NOW + leases, LEASE))
        leases += 1
        task = apply(task, Errored("n1", "worker crashed", retryable=True))
    # then it was handed out max_attempts times and then given up
    assert leases == max_attempts
    assert task.state is TaskState.FAILED
    assert task.error == f"worker crashed; gave up after {max_attempts} attempts"


@pytest.mark.parametrize("attempts", [1, 2, 3])
def test_a_non_retryable_error_fails_at_once_with_its_own_reason(attempts: int) -> None:
    task = leased_task(attempts=attempts, max_attempts=3)
    after = apply(task, Errored("n1", "exit status 1", retryable=False))
    assert after == Task(TaskState.FAILED, attempts, 3, error="exit status 1")


@pytest.mark.parametrize("retryable", [True, False])
def test_a_late_error_for_a_requeued_task_changes_nothing(retryable: bool) -> None:
    task = Task(TaskState.PENDING, attempts=1, error="lease lost on n1")
    assert apply(task, Errored("n1", "exit status 1", retryable=retryable)) == task


# -- Expired ------------------------------------------------------------------------------


@pytest.mark.parametrize("early", [LEASE, 1.0, 0.001])
def test_expiry_before_the_deadline_is_refused(early: float) -> None:
    task = leased_task(expires=NOW + LEASE)
    with pytest.raises(IllegalTransition, match="not expired"):
        apply(task, Expired(NOW + LEASE - early))


@pytest.mark.parametrize("late", [0.0, 0.001, 1_000.0], ids=["at-deadline", "just-after", "long"])
def test_expiry_at_or_after_the_deadline_requeues_while_attempts_remain(late: float) -> None:
    task = leased_task(node="n2", attempts=2, max_attempts=3, expires=NOW)
    after = apply(task, Expired(NOW + late))
    assert after == Task(TaskState.PENDING, 2, 3, error="lease lost on n2")


def test_expiry_on_the_last_attempt_gives_up() -> None:
    task = leased_task(node="n2", attempts=3, max_attempts=3, expires=NOW)
    after = apply(task, Expired(NOW + 1))
    assert after == Task(TaskState.FAILED, 3, 3, error="lease lost on n2; gave up after 3 attempts")


# -- Cancelled ----------------------------------------------------------------------------


@pytest.mark.parametrize("task", [Task(), leased_task()], ids=["pending", "leased"])
@pytest.mark.parametrize(
    ("event", "reason"),
    [(Cancelled(), "cancelled by the customer"), (Cancelled("job deleted"), "job deleted")],
    ids=["default-reason", "given-reason"],
)
def test_cancelling_a_live_task_ends_it_with_the_reason(
    task: Task, event: Cancelled, reason: str
) -> None:
    after = apply(task, event)
    assert after == dataclasses.replace(
        task, state=TaskState.CANCELLED, node=None, lease_expires=None, error=reason
    )


# -- helpers and immutability -------------------------------------------------------------


@pytest.mark.parametrize(
    ("task", "now", "expired"),
    [
        (leased_task(expires=NOW), NOW - 0.5, False),
        (leased_task(expires=NOW), NOW, True),
        (leased_task(expires=NOW), NOW + 0.5, True),
        (Task(), NOW, False),
        (Task(TaskState.DONE, 1), NOW, False),
    ],
    ids=["leased-before", "leased-at", "leased-after", "pending", "done"],
)
def test_lease_expired_only_for_a_leased_task_whose_deadline_has_come(
    task: Task, now: float, expired: bool
) -> None:
    assert lease_expired(task, now) is expired


@pytest.mark.parametrize(("attempts", "left"), [(0, 3), (1, 2), (3, 0), (4, 0)])
def test_attempts_left_never_goes_below_zero(attempts: int, left: int) -> None:
    assert attempts_left(Task(attempts=attempts, max_attempts=3)) == left


def test_a_task_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Task().state = TaskState.DONE  # type: ignore[misc]


# -- property tests -----------------------------------------------------------------------

nodes = st.sampled_from(NODES)
times = st.floats(0, 10_000, allow_nan=False, allow_infinity=False)
lease_seconds = st.floats(1, 60, allow_nan=False, allow_infinity=False)
reasons = st.sampled_from(["worker crashed", "exit status 1", "out of memory"])
pauses = st.floats(0, 40, allow_nan=False, allow_infinity=False)
HOLDER = "the holder"
senders = st.sampled_from((HOLDER, HOLDER, HOLDER, *NODES))

events: st.SearchStrategy[Event] = st.one_of(
    st.builds(Leased, nodes, times, lease_seconds),
    st.builds(Renewed, nodes, times, lease_seconds),
    st.builds(Completed, nodes),
    st.builds(Reported, nodes),
    st.builds(Settled, st.booleans(), st.none() | reasons),
    st.builds(Errored, nodes, reasons, st.booleans()),
    st.builds(Expired, times),
    st.builds(Released, nodes),
    st.builds(Cancelled, reasons),
)


@st.composite
def tasks(draw: st.DrawFn) -> Task:
    """Any task the lifecycle can leave behind: leased iff held, attempts within bounds."""
    max_attempts = draw(st.integers(1, 5))
    state = draw(st.sampled_from(TaskState))
    low = 1 if state is TaskState.LEASED else 0
    high = max_attempts if state is not TaskState.PENDING else max_attempts - 1
    attempts = draw(st.integers(low, high))
    if state is TaskState.LEASED:
        return Task(state, attempts, max_attempts, draw(nodes), draw(times))
    return Task(state, attempts, max_attempts, error=draw(st.none() | reasons))


def refusal_is_justified(task: Task, event: Event) -> bool:
    """IllegalTransition is right only off the table, from a non-holder, or before expiry."""
    if (task.state, type(event)) not in TRANSITIONS:
        return True
    if isinstance(event, Renewed | Released | Errored):
        return task.state is TaskState.LEASED and event.node != task.node
    if isinstance(event, Expired):
        return not lease_expired(task, event.now)
    return False


def check_step(before: Task, event: Event, after: Task) -> None:
    """What every accepted event must leave true of the task."""
    assert 0 <= after.attempts <= after.max_attempts
    assert after.max_attempts == before.max_attempts
    held = after.node is not None and after.lease_expires is not None
    assert (after.state is TaskState.LEASED) == held
    expected_delta = {Leased: 1, Released: -1}.get(type(event), 0)
    assert after.attempts == before.attempts + expected_delta
    if after.state is TaskState.FAILED and before.state is not TaskState.FAILED:
        fatal = isinstance(event, Errored) and not event.retryable
        refuted = isinstance(event, Settled) and not event.ok
        assert fatal or refuted or after.attempts == after.max_attempts
    if after.state is TaskState.VERIFYING:
        assert isinstance(event, Reported) or before.state is TaskState.VERIFYING


@settings(max_examples=300, deadline=None)
@given(task=tasks(), event=events)
def test_any_event_on_any_task_is_either_refused_by_name_or_keeps_the_invariants(
    task: Task, event: Event
) -> None:
    snapshot = dataclasses.astuple(task)
    try:
        after = apply(task, event)
    except IllegalTransition:
        assert refusal_is_justified(task, event)
    else:
        assert not refusal_is_justified(task, event)
        check_step(task, event, after)
    assert dataclasses.astuple(task) == snapshot


@settings(max_examples=200, deadline=None)
@given(state=st.sampled_from(sorted(TERMINAL)), attempts=st.integers(0, 3), event=events)
def test_terminal_states_refuse_every_event(state: TaskState, attempts: int, event: Event) -> None:
    with pytest.raises(IllegalTransition):
        apply(Task(state, attempts), event)


class TaskLifecycle(RuleBasedStateMachine):
    """Random events from a few nodes at a task, on a clock that never runs backwards.

    Node events come from the holder about half the time and from any node otherwise, so that
    both accepted and refused moves are common; a task that has ended is replaced by a fresh
    one, so that one run walks through many lifecycles.
    """

    def __init__(self) -> None:
        super().__init__()
        self.task = Task()
        self.now = 0.0

    @initialize(max_attempts=st.integers(1, 4))
    def a_fresh_task(self, max_attempts: int) -> None:
        self.task = Task(max_attempts=max_attempts)

    @precondition(lambda self: self.task.state in TERMINAL)
    @rule(max_attempts=st.integers(1, 4))
    def the_next_task_arrives(self, max_attempts: int) -> None:
        self.task = Task(max_attempts=max_attempts)

    @rule(who=senders, dt=pauses, seconds=lease_seconds)
    def a_node_leases(self, who: str, dt: float, seconds: float) -> None:
        self.offer(Leased(self.sender(who), self.tick(dt), seconds))

    @rule(who=senders, dt=pauses, seconds=lease_seconds)
    def a_node_renews(self, who: str, dt: float, seconds: float) -> None:
        self.offer(Renewed(self.sender(who), self.tick(dt), seconds))

    @rule(who=senders)
    def a_node_reports_a_result(self, who: str) -> None:
        self.offer(Completed(self.sender(who)))

    @rule(who=senders)
    def a_node_reports_a_result_to_verify(self, who: str) -> None:
        self.offer(Reported(self.sender(who)))

    @rule(ok=st.booleans())
    def a_verdict_settles_the_task(self, ok: bool) -> None:
        self.offer(Settled(ok, None if ok else "results disagree"))

    @rule(who=senders, reason=reasons, retryable=st.booleans())
    def a_node_reports_a_failure(self, who: str, reason: str, retryable: bool) -> None:
        self.offer(Errored(self.sender(who), reason, retryable))

    @rule(dt=pauses)
    def the_sweeper_looks_for_expired_leases(self, dt: float) -> None:
        self.offer(Expired(self.tick(dt)))

    @rule(who=senders)
    def a_node_hands_the_task_back(self, who: str) -> None:
        self.offer(Released(self.sender(who)))

    @rule()
    def the_customer_cancels(self) -> None:
        self.offer(Cancelled())

    def sender(self, who: str) -> str:
        return (self.task.node or NODES[0]) if who == HOLDER else who

    def tick(self, dt: float) -> float:
        self.now += dt
        return self.now

    def offer(self, event: Event) -> None:
        before = self.task
        snapshot = dataclasses.astuple(before)
        try:
            after = apply(before, event)
        except IllegalTransition:
            assert refusal_is_justified(before, event)
            after = before
        else:
            assert not refusal_is_justified(before, event)
            check_step(before, event, after)
        assert dataclasses.astuple(before) == snapshot
        self.task = after

    @invariant()
    def attempts_stay_within_bounds(self) -> None:
        assert 0 <= self.task.attempts <= self.task.max_attempts

    @invariant()
    def leased_exactly_when_held(self) -> None:
        held = self.task.node is not None and self.task.lease_expires is not None
        assert (self.task.state is TaskState.LEASED) == held

    @invariant()
    def terminal_states_are_absorbing(self) -> None:
        if self.task.state not in TERMINAL:
            return
        for event in EXAMPLE_EVENTS.values():
            with pytest.raises(IllegalTransition):
                apply(self.task, event)


TestTaskLifecycle = TaskLifecycle.TestCase
TestTaskLifecycle.settings = settings(max_examples=200, stateful_step_count=30, deadline=None)


# -- verification -----------------------------------------------------------------------------


@pytest.mark.parametrize("state", [TaskState.LEASED, TaskState.PENDING])
def test_a_reported_result_waits_for_a_verdict(state: TaskState) -> None:
    task = leased_task() if state is TaskState.LEASED else Task(attempts=1)
    after = apply(task, Reported("n1"))
    assert (after.state, after.node, after.lease_expires) == (TaskState.VERIFYING, None, None)
    assert after.attempts == task.attempts


@pytest.mark.parametrize(("ok", "state"), [(True, TaskState.DONE), (False, TaskState.FAILED)])
def test_a_verdict_settles_a_verifying_task(ok: bool, state: TaskState) -> None:
    after = apply(Task(TaskState.VERIFYING, 1), Settled(ok, None if ok else "no quorum"))
    assert after.state is state and after.error == (None if ok else "no quorum")


def test_a_replicas_agreement_settles_a_task_still_queued_or_running() -> None:
    assert apply(Task(attempts=1), Settled(True)).state is TaskState.DONE
    done = apply(leased_task(), Settled(True))
    assert (done.state, done.node) == (TaskState.DONE, None)


def test_a_verifying_task_can_be_cancelled_but_not_leased() -> None:
    assert apply(Task(TaskState.VERIFYING, 1), Cancelled()).state is TaskState.CANCELLED
    with pytest.raises(IllegalTransition):
        apply(Task(TaskState.VERIFYING, 1), Leased("n2", NOW, LEASE))
