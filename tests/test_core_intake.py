"""The coordinator's report intake as a specification: given cases for each way a report
ends, and random report batches thrown at random rows (hypothesis), checked against the
invariants the store relies on and against the task lifecycle's transition table."""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fogwheel.core import credit, owners, trust
from fogwheel.core.intake import (
    ATTEMPT_MAX,
    NEVER_HELD,
    RETRYABLE,
    AcceptUnchecked,
    Ack,
    Advance,
    Batch,
    CountNode,
    EndAttempt,
    Finish,
    HoldBlobs,
    HoldKept,
    Instruction,
    KeepResult,
    MarkForCheck,
    Reject,
    Report,
    ReportedError,
    Requeue,
    Row,
    Verify,
    device_failure,
    draws_needed,
    fates_needed,
    intake,
)
from fogwheel.core.tasks import (
    TERMINAL,
    Completed,
    Errored,
    Reported,
    Task,
    TaskState,
    apply,
)
from fogwheel.errors import IllegalTransition

NODE = "n1"
NOW = 1_000.0
MAX_WALL = 7 * 24 * 3600.0
PROVEN = trust.Record(agreed=500, disputed=0, streak=500)  # spot-checked at MIN_CHECK_RATE
NEW = trust.Record()  # every result checked


def leased(attempts: int = 1, max_attempts: int = 3, node: str = NODE) -> Task:
    return Task(TaskState.LEASED, attempts, max_attempts, node, NOW + 15)


def batch(
    reports: list[Report],
    rows: list[Row],
    *,
    held: dict[tuple[int, int], float] | None = None,
    **kw: object,
) -> Batch:
    """A batch in which the node holds attempt 1 of every row, leased 10 s ago."""
    if held is None:
        held = {(r.id, 1): NOW - 10 for r in rows}
    return Batch(NODE, reports, {r.id: r for r in rows}, held, NOW, MAX_WALL, **kw)  # type: ignore[arg-type]


def of(kind: type, out: list[Instruction]) -> list[Instruction]:
    return [i for i in out if isinstance(i, kind)]


# -- given cases ----------------------------------------------------------------------------


def test_a_report_for_a_task_the_node_never_held_is_refused() -> None:
    row = Row(1, leased(node="n2"), job=7)
    out = intake(batch([Report(1, 1, ok=True)], [row], held={}))
    assert out == [Reject(1, NEVER_HELD)]


def test_a_report_for_an_unknown_task_is_refused() -> None:
    out = intake(batch([Report(99, 1, ok=True)], [Row(1, leased(), 7)]))
    assert out == [Reject(99, NEVER_HELD)]


def test_an_output_the_node_did_not_upload_refuses_that_report_alone() -> None:
    rows = [Row(1, leased(), 7), Row(2, leased(), 7)]
    bad = Report(1, 1, ok=True, blobs=(("ab" * 32, 10),))
    out = intake(batch([bad, Report(2, 1, ok=True)], rows, draws={2: 0.99}, record=PROVEN))
    assert isinstance(out[0], Reject) and "was not uploaded by this node" in out[0].reason
    assert of(Ack, out) == [Ack(2, 0.0, 0.0)]


def test_an_attempt_number_past_any_column_is_refused() -> None:
    out = intake(batch([Report(1, ATTEMPT_MAX + 1, ok=True)], [Row(1, leased(), 7)]))
    assert out == [Reject(1, f"attempt {ATTEMPT_MAX + 1} is no attempt of task 1")]


def test_a_first_result_from_a_proven_node_with_a_high_draw_is_accepted_unchecked() -> None:
    out = intake(
        batch(
            [Report(1, 1, ok=True, digest="d")],
            [Row(1, leased(), 7)],
            record=PROVEN,
            draws={1: 0.9},
        )
    )
    accept = of(AcceptUnchecked, out)
    assert len(accept) == 1 and accept[0].settled.state is TaskState.DONE
    assert of(KeepResult, out) == [KeepResult(1, 1, "accepted", "d", False, 0.0, "lost")]
    assert of(Verify, out) == [] and of(Advance, out) == []
    assert of(CountNode, out) == [CountNode(1, 0)]


def test_a_low_draw_writes_the_check_down_and_keeps_the_result_for_a_verdict() -> None:
    out = intake(
        batch([Report(1, 1, ok=True)], [Row(1, leased(), 7)], record=PROVEN, draws={1: 0.0})
    )
    assert of(MarkForCheck, out) == [MarkForCheck(1, 0)]
    (move,) = of(Advance, out)
    assert move.new.state is TaskState.VERIFYING
    assert of(Verify, out) == [Verify(1)]
    (keep,) = of(KeepResult, out)
    assert keep.outcome == "reported" and keep.keep_report


def test_a_new_nodes_result_is_always_checked_whatever_the_draw() -> None:
    out = intake(
        batch([Report(1, 1, ok=True)], [Row(1, leased(), 7)], record=NEW, draws={1: 0.999})
    )
    assert of(MarkForCheck, out) == [MarkForCheck(1, 0)] and of(AcceptUnchecked, out) == []


def test_a_task_already_decided_to_need_a_check_draws_nothing() -> None:
    rows = [Row(1, leased(), 7, quorum=2)]
    b = batch([Report(1, 1, ok=True)], rows, record=PROVEN)
    assert draws_needed(b) == []
    assert of(MarkForCheck, intake(b)) == [] and of(Verify, intake(b)) == [Verify(1)]


def test_a_crash_requeues_the_task_and_counts_a_loss() -> None:
    rep = Report(1, 1, ok=False, error=ReportedError("crash", message="segfault"))
    out = intake(batch([rep], [Row(1, leased(), 7)], fates={1: owners.COUNT}))
    (requeue,) = of(Requeue, out)
    assert requeue.new.state is TaskState.PENDING and requeue.new.max_attempts == 3
    assert requeue.error == '{"kind": "lost", "message": "crash on n1: segfault"}'
    assert of(EndAttempt, out) == [EndAttempt(1, "lost")]
    assert of(CountNode, out) == [CountNode(0, 1)]


def test_a_refunded_crash_gives_the_task_one_more_attempt() -> None:
    rep = Report(1, 1, ok=False)  # no error at all: a crash
    out = intake(batch([rep], [Row(1, leased(attempts=3), 7)], fates={1: owners.REFUND}))
    (requeue,) = of(Requeue, out)
    assert requeue.new.state is TaskState.PENDING and requeue.new.max_attempts == 4
    assert requeue.expected == leased(attempts=3)  # the guard is the row as read


def test_a_counted_crash_on_the_last_attempt_fails_the_task() -> None:
    rep = Report(1, 1, ok=False, error=ReportedError("lost"))
    out = intake(batch([rep], [Row(1, leased(attempts=3), 7)], fates={1: owners.COUNT}))
    (finish,) = of(Finish, out)
    assert finish.new.state is TaskState.FAILED and not finish.own_outputs
    assert of(Requeue, out) == []


def test_a_task_that_failed_everywhere_is_given_up() -> None:
    rep = Report(1, 1, ok=False, error=ReportedError("input", message="gone"))
    out = intake(batch([rep], [Row(1, leased(), 7)], fates={1: owners.GIVE_UP}))
    (finish,) = of(Finish, out)
    assert finish.new.state is TaskState.FAILED and owners.gave_up() in (finish.new.error or "")


def test_a_lost_backup_copy_is_cancelled_and_its_group_verified_again() -> None:
    row = Row(5, leased(), 7, replica_of=1, backup=True)
    out = intake(batch([Report(5, 1, ok=False)], [row]))
    (requeue,) = of(Requeue, out)
    assert requeue.new.state is TaskState.CANCELLED
    assert of(Verify, out) == [Verify(1)]


def test_a_failure_for_a_task_that_moved_on_is_superseded() -> None:
    row = Row(1, Task(TaskState.VERIFYING, 1), 7)
    out = intake(batch([Report(1, 1, ok=False)], [row]))
    assert of(EndAttempt, out) == [EndAttempt(1, "superseded")]
    assert of(CountNode, out) == []


def test_a_replicas_result_completes_it_and_verifies_its_group() -> None:
    row = Row(5, leased(), 7, replica_of=1)
    out = intake(batch([Report(5, 1, ok=True)], [row]))
    (move,) = of(Advance, out)
    assert move.new == apply(row.task, Completed(NODE))
    assert of(Verify, out) == [Verify(1)]


def test_a_late_result_for_a_settled_task_is_still_a_vote() -> None:
    row = Row(1, Task(TaskState.DONE, 1), 7, quorum=2)
    out = intake(batch([Report(1, 1, ok=True, digest="d")], [row]))
    (keep,) = of(KeepResult, out)
    assert keep.reopen == "cancelled" and keep.outcome == "reported"
    assert of(Advance, out) == [] and of(Verify, out) == [Verify(1)]


def test_a_late_result_for_a_cancelled_task_reopens_only_a_lost_attempt() -> None:
    row = Row(1, Task(TaskState.CANCELLED, 1), 7)
    (keep,) = of(KeepResult, intake(batch([Report(1, 1, ok=True)], [row])))
    assert keep.reopen == "lost"


def test_a_task_reported_twice_counts_its_last_report_in_the_first_place() -> None:
    rows = [Row(1, leased(), 7), Row(2, leased(), 7)]
    reps = [Report(1, 1, ok=True), Report(2, 1, ok=True), Report(1, 1, ok=False)]
    out = intake(batch(reps, rows))
    assert [i.task for i in of(Ack, out)] == [1, 2]
    assert of(EndAttempt, out) == [EndAttempt(1, "lost")]


def test_claims_are_held_to_the_lease_age_times_the_cores() -> None:
    rep = Report(1, 1, ok=True, cpu_s=1e6, wall_s=1e9)
    out = intake(batch([rep], [Row(1, leased(), 7)], cores=4))
    assert of(Ack, out) == [Ack(1, 40.0, MAX_WALL)]


def test_a_cpu_claim_that_is_no_number_keeps_no_say() -> None:
    rep = Report(1, 1, ok=True, cpu_s=math.inf)
    (keep,) = of(KeepResult, intake(batch([rep], [Row(1, leased(), 7)])))
    assert keep.cpu_s is None


def test_blobs_and_kept_state_are_held_for_acknowledged_reports_only() -> None:
    sha = "cd" * 32
    rows = [Row(1, leased(), 7), Row(2, leased(), 8)]
    reps = [
        Report(1, 1, ok=True, blobs=((sha, 3),), kept=100),
        Report(2, 1, ok=True, blobs=(("ef" * 32, 1),), kept=5),  # refused: not uploaded
    ]
    out = intake(batch(reps, rows, uploaded=frozenset({sha})))
    assert of(HoldBlobs, out) == [HoldBlobs(((sha, 3),))]
    assert of(HoldKept, out) == [HoldKept(1, 7, 100)]


def test_the_intakes_constants_are_the_stores_and_the_wires() -> None:
    from fogwheel.protocol import SQL_INT_MAX
    from fogwheel.store.base import RETRYABLE as STORE_RETRYABLE

    assert frozenset(STORE_RETRYABLE) == RETRYABLE
    assert ATTEMPT_MAX == SQL_INT_MAX


# -- random batches -------------------------------------------------------------------------

TASK_IDS = st.integers(1, 8)
SHAS = ("a" * 64, "b" * 64, "c" * 64)
KINDS = ("exception", "exit", "limit", "crash", "lost", "input", "cancelled", "disputed")
CLAIMS = st.one_of(
    st.floats(0, 1e7, allow_nan=False), st.sampled_from([math.nan, math.inf, -1.0, 0.0])
)


@st.composite
def tasks_(draw: st.DrawFn) -> Task:
    state = draw(st.sampled_from(list(TaskState)))
    attempts = draw(st.integers(0, 4))
    max_attempts = draw(st.integers(1, 4))
    node = draw(st.sampled_from([NODE, "n2"])) if state is TaskState.LEASED else None
    expires = NOW + 15 if state is TaskState.LEASED else None
    error = draw(st.sampled_from([None, "lease lost on n2"]))
    return Task(state, attempts, max_attempts, node, expires, error)


@st.composite
def rows_(draw: st.DrawFn, tid: int) -> Row:
    replica_of = draw(st.sampled_from([None, None, 100 + tid % 3]))
    backup = replica_of is not None and draw(st.booleans())
    return Row(
        tid,
        draw(tasks_()),
        job=draw(st.sampled_from([7, 8])),
        replica_of=replica_of,
        quorum=draw(st.sampled_from([0, 0, 1, 2])),
        replicas=draw(st.sampled_from([0, 0, 1])),
        backup=backup,
    )


@st.composite
def reports_(draw: st.DrawFn) -> Report:
    ok = draw(st.booleans())
    error = draw(
        st.one_of(
            st.none(),
            st.builds(ReportedError, st.sampled_from(KINDS), st.just("E"), st.text(max_size=5)),
        )
    )
    blobs = tuple(
        (sha, 1) for sha in draw(st.lists(st.sampled_from(SHAS), max_size=2, unique=True))
    )
    return Report(
        draw(st.integers(1, 10)),
        draw(st.sampled_from([1, 1, 2, 0, ATTEMPT_MAX + 1])),
        ok,
        error,
        cpu_s=draw(CLAIMS),
        wall_s=draw(CLAIMS),
        blobs=blobs,
        kept=draw(st.sampled_from([None, 0, 10])),
        digest=draw(st.sampled_from(["d1", "d2"])),
    )


@st.composite
def batches(draw: st.DrawFn) -> Batch:
    ids = draw(st.lists(TASK_IDS, unique=True, max_size=8))
    rows = {tid: draw(rows_(tid)) for tid in ids}
    held_tasks = draw(st.lists(st.sampled_from(range(1, 11)), unique=True, max_size=10))
    held = {
        (t, n): NOW - draw(st.floats(0, 100))
        for t in held_tasks
        for n in (1, 2)[: draw(st.integers(1, 2))]
    }
    return Batch(
        NODE,
        draw(st.lists(reports_(), max_size=10)),
        rows,
        held,
        NOW,
        MAX_WALL,
        uploaded=frozenset(draw(st.lists(st.sampled_from(SHAS), unique=True))),
        fates={
            t: draw(st.sampled_from([owners.COUNT, owners.REFUND, owners.GIVE_UP]))
            for t in range(1, 11)
        },
        record=draw(st.sampled_from([NEW, PROVEN, trust.Record(1, 3, 0, True)])),
        cores=draw(st.integers(1, 8)),
        draws={t: draw(st.floats(0, 1, exclude_max=True)) for t in range(1, 11)},
    )


def per_task(out: list[Instruction]) -> dict[int, list[Instruction]]:
    by: dict[int, list[Instruction]] = {}
    for i in out:
        task = getattr(i, "task", None)
        if task is not None:
            by.setdefault(task, []).append(i)
    return by


def event_for(row: Row) -> Completed | Reported:
    return Completed(NODE) if row.replica_of is not None else Reported(NODE)


def legal(task: Task, event: Completed | Reported | Errored) -> bool:
    try:
        apply(task, event)
    except IllegalTransition:
        return False
    return True


EXAMPLES = settings(max_examples=100, deadline=None)


@EXAMPLES
@given(batches())
def test_every_report_gets_exactly_one_ack_or_reject_in_order(b: Batch) -> None:
    out = intake(b)
    answered = [i.task for i in out if isinstance(i, Ack | Reject)]
    assert answered == list(dict.fromkeys(r.task for r in b.reports))


@EXAMPLES
@given(batches())
def test_a_report_for_a_task_not_held_is_rejected_and_does_nothing(b: Batch) -> None:
    held = {t for t, _ in b.leased}
    out = intake(b)
    for tid, items in per_task(out).items():
        if tid not in b.rows or tid not in held:
            assert items == [Reject(tid, NEVER_HELD)]


@EXAMPLES
@given(batches())
def test_only_an_acknowledged_report_moves_anything(b: Batch) -> None:
    for items in per_task(intake(b)).values():
        if isinstance(items[0], Reject):
            assert len(items) == 1
        else:
            assert isinstance(items[0], Ack)
            # each acknowledged report ends its attempt one way: kept, or ended without
            ends = [i for i in items if isinstance(i, KeepResult | EndAttempt)]
            assert len(ends) == 1


@EXAMPLES
@given(batches())
def test_a_terminal_task_is_never_moved_and_finished_tasks_finish_once(b: Batch) -> None:
    out = intake(b)
    finished = [i.task for i in out if isinstance(i, Finish | AcceptUnchecked)]
    assert len(finished) == len(set(finished))
    for i in out:
        if isinstance(i, Requeue | Advance):
            assert i.expected.state not in TERMINAL
            assert i.expected == b.rows[i.task].task  # guarded by the row as read
        if isinstance(i, Finish | AcceptUnchecked):
            assert b.rows[i.task].task.state not in TERMINAL
            assert (i.new if isinstance(i, Finish) else i.settled).state in TERMINAL


@EXAMPLES
@given(batches())
def test_the_decision_is_a_pure_function(b: Batch) -> None:
    first = intake(b)
    assert intake(copy.deepcopy(b)) == first
    assert intake(b) == first


@EXAMPLES
@given(batches())
def test_the_intake_agrees_with_the_transition_table(b: Batch) -> None:
    out = intake(b)
    for tid, items in per_task(out).items():
        if not isinstance(items[0], Ack):
            continue
        row = b.rows[tid]
        rep = next(r for r in reversed(b.reports) if r.task == tid)
        failure = Errored(NODE, "x", retryable=True)
        superseded = EndAttempt(tid, "superseded") in items
        if device_failure(rep):
            assert superseded == (not legal(row.task, failure))
        else:
            late_vote = row.task.state in TERMINAL and row.replica_of is None
            assert superseded == (not legal(row.task, event_for(row)) and not late_vote)
        for i in items:
            if isinstance(i, Advance):
                assert i.new == apply(row.task, event_for(row))
            if isinstance(i, Requeue):
                assert legal(row.task, failure)
                assert i.new.state in (TaskState.PENDING, TaskState.CANCELLED, TaskState.FAILED)
                assert i.new.node is None and i.new.attempts == row.task.attempts


@EXAMPLES
@given(batches())
def test_counters_claims_and_verifications_add_up(b: Batch) -> None:
    out = intake(b)
    kept = len(of(KeepResult, out))
    lost = sum(1 for i in out if isinstance(i, EndAttempt) and i.outcome == "lost")
    assert of(CountNode, out) == ([CountNode(kept, lost)] if kept or lost else [])
    groups = [i.group for i in of(Verify, out)]
    assert len(groups) == len(set(groups))
    for a in of(Ack, out):
        assert isinstance(a, Ack)
        assert 0 <= a.cpu_s <= b.cores * 100 + 1e-9  # leased at most 100 s ago
        assert 0 <= a.wall_s <= MAX_WALL
    for i in out:
        if isinstance(i, AcceptUnchecked):
            assert credit.well_formed(i.claim.cpu_s) or math.isnan(i.claim.cpu_s)


@EXAMPLES
@given(batches(), st.floats(0, 1, exclude_max=True), st.sampled_from([owners.COUNT, owners.REFUND]))
def test_only_the_draws_and_fates_asked_for_matter(b: Batch, draw: float, fate: str) -> None:
    asked_draws, asked_fates = set(draws_needed(b)), set(fates_needed(b))
    other = Batch(
        b.node,
        b.reports,
        b.rows,
        b.leased,
        b.now,
        b.max_wall_s,
        uploaded=b.uploaded,
        fates={t: (f if t in asked_fates else fate) for t, f in b.fates.items()},
        record=b.record,
        cores=b.cores,
        draws={t: (d if t in asked_draws else draw) for t, d in b.draws.items()},
    )
    assert intake(other) == intake(b)


@pytest.mark.parametrize("kind", KINDS)
def test_which_failures_are_the_devices_fault(kind: str) -> None:
    rep = Report(1, 1, ok=False, error=ReportedError(kind))
    assert device_failure(rep) == (kind in ("crash", "lost", "input"))
    assert not device_failure(Report(1, 1, ok=True, error=ReportedError(kind)))


# -- many syncs in a row ----------------------------------------------------------------------


def carry_out(rows: dict[int, Row], out: list[Instruction], finished: list[int]) -> None:
    """A tiny in-memory shell: the task writes of the instructions, guarded as the store's."""
    for i in out:
        if isinstance(i, Requeue | Advance) and rows[i.task].task == i.expected:
            rows[i.task] = Row(i.task, i.new, rows[i.task].job, rows[i.task].replica_of)
        if isinstance(i, Finish | AcceptUnchecked):
            row = rows[i.task]
            if row.task.state not in TERMINAL:
                new = i.new if isinstance(i, Finish) else i.settled
                rows[i.task] = Row(i.task, new, row.job, row.replica_of)
                finished.append(i.task)


STEPS = st.lists(
    st.tuples(
        st.sampled_from(["report", "lease", "expire"]),
        st.integers(1, 4),
        reports_(),
    ),
    max_size=25,
)


@settings(max_examples=100, deadline=None)
@given(STEPS, st.sampled_from([NEW, PROVEN]), st.floats(0, 1, exclude_max=True))
def test_over_many_syncs_a_task_is_finished_once_and_never_reopened(
    steps: list[tuple[str, int, Report]], record: trust.Record, draw: float
) -> None:
    from fogwheel.core.tasks import Expired, Leased

    rows = {t: Row(t, Task(), job=7) for t in range(1, 5)}
    held: dict[tuple[int, int], float] = {}
    finished: list[int] = []
    now = NOW
    for what, tid, rep in steps:
        now += 1
        row = rows[tid]
        if what == "lease" and row.task.state is TaskState.PENDING:
            new = apply(row.task, Leased(NODE, now, 15))
            rows[tid] = Row(tid, new, row.job)
            held[(tid, new.attempts)] = now
        elif what == "expire" and row.task.state is TaskState.LEASED:
            rows[tid] = Row(tid, apply(row.task, Expired(now + 100)), row.job)
        elif what == "report":
            rep = dataclasses.replace(rep, task=tid)
            was = {t: r.task.state for t, r in rows.items()}
            b = Batch(
                NODE,
                [rep],
                rows,
                held,
                now,
                MAX_WALL,
                uploaded=frozenset(SHAS),
                record=record,
                draws={tid: draw},
            )
            carry_out(rows, intake(b), finished)
            for t, state in was.items():
                if state in TERMINAL:
                    assert rows[t].task.state is state  # a settled task stays as it was
    assert len(finished) == len(set(finished))
