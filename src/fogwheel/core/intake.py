"""The coordinator's intake of a node's reports: reports and the rows they concern in,
instructions out.

Each result a node sends in its sync is refused, superseded (its task moved on without it),
lost (a retryable failure, the device's fault: the task is queued again, given one more attempt,
given up, or failed), kept for a verdict, accepted unchecked (the fast path: a first result that
its node's record lets go unchecked, core/trust.py), or kept and marked for a check. This module
makes those decisions from frozen views that the store loads, and the store
(`store/leasing.py`) carries the instructions out, one batched statement per kind. The shape is
dask distributed's `WorkerState.handle_stimulus(events) -> instructions` and h11's sans-IO state
machine: nothing here touches a database, reads the clock or draws a random number; `now` and
the draws come in as data, so the same batch always gives the same instructions.

Every byte of a report is the node's word (DESIGN.md, principle 7): its claims are bounded
(core/credit.py) before anything is kept, a report that names an output blob the node did not
upload itself is refused (naming another customer's blob by its SHA-256 must not hand it over),
and one bad report is refused alone while the rest of the sync goes on.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace

from fogwheel.core import credit, owners, trust
from fogwheel.core.tasks import (
    TERMINAL,
    Cancelled,
    Completed,
    Errored,
    Reported,
    Settled,
    Task,
    TaskState,
    apply,
)
from fogwheel.errors import IllegalTransition

# Error kinds that are the device's fault, not the task's; the store's RETRYABLE (the tests
# hold the two equal).
RETRYABLE = frozenset({"crash", "lost", "input"})
ATTEMPT_MAX = 2**31 - 1  # attempt numbers live in a SQL INTEGER (protocol.SQL_INT_MAX)
NEVER_HELD = "this node never held that task"
SUPERSEDED, LOST = "superseded", "lost"  # how an attempt ends without a kept result

# -- what comes in ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReportedError:
    """The failure a report carries, as far as the intake reads it."""

    kind: str
    type: str = ""
    message: str = ""


@dataclass(frozen=True, slots=True)
class Report:
    """One result as the node sent it; `digest` is what replicas must agree on
    (store/verify.py: result_digest), worked out by the shell."""

    task: int
    attempt: int
    ok: bool
    error: ReportedError | None = None
    cpu_s: float = 0.0
    wall_s: float = 0.0
    blobs: tuple[tuple[str, int], ...] = ()  # (sha, size) of the value and outputs sent as blobs
    kept: int | None = None  # bytes of state the node kept under the lease's keep_out
    digest: str = ""


@dataclass(frozen=True, slots=True)
class Row:
    """A task row that a report concerns: its lifecycle, and where it sits in its group."""

    id: int
    task: Task
    job: int
    replica_of: int | None = None  # set on replica rows (and on backup copies, which are replicas)
    quorum: int = 0  # 0: not decided yet
    replicas: int = 0  # replica rows made for this task
    backup: bool = False

    @property
    def group(self) -> int:
        """The task whose verdict this row's result counts towards."""
        return self.id if self.replica_of is None else self.replica_of


@dataclass(frozen=True, slots=True)
class Batch:
    """Everything one sync's intake decides from.

    `leased` maps this node's attempts `(task, n)` to when each was leased (coordinator clock);
    `uploaded` holds the reported blob shas this node uploaded itself; `fates` the verdict of
    core/owners.py on each device failure (`fates_needed`); `draws` a uniform number in [0, 1)
    per task that may take the fast path (`draws_needed`)."""

    node: str
    reports: Sequence[Report]
    rows: Mapping[int, Row]
    leased: Mapping[tuple[int, int], float]
    now: float
    max_wall_s: float
    uploaded: frozenset[str] = frozenset()
    fates: Mapping[int, str] = field(default_factory=dict)
    record: trust.Record = field(default_factory=trust.Record)
    cores: int = 1
    draws: Mapping[int, float] = field(default_factory=dict)
    # tasks that ran a version under canary (an app's, or the agent's): a failure of theirs is
    # the version's, not the task's: queued again with one more attempt (docs/rollouts.md)
    canary: frozenset[int] = frozenset()


# -- what goes out ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reject:
    """Refuse the report; the node drops it and the rest of its sync goes on."""

    task: int
    reason: str


@dataclass(frozen=True, slots=True)
class Ack:
    """Acknowledge the report, its claims held to `cpu_s` and `wall_s`."""

    task: int
    cpu_s: float
    wall_s: float


@dataclass(frozen=True, slots=True)
class EndAttempt:
    """Close the node's open attempt of the task with `outcome` (superseded or lost)."""

    task: int
    outcome: str


@dataclass(frozen=True, slots=True)
class KeepResult:
    """Write the result on attempt `attempt`: its outcome, digest and CPU claim (None: no
    number); the whole report too when a verdict will read it. An attempt already ended as
    `lost` or as `reopen` takes the result as well (a late result still counts)."""

    task: int
    attempt: int
    outcome: str  # reported | accepted
    digest: str
    keep_report: bool
    cpu_s: float | None
    reopen: str  # lost | cancelled


@dataclass(frozen=True, slots=True)
class Requeue:
    """A device failure moved the task from `expected` to `new` (queued again, cancelled as a
    lost backup copy, or a failed replica); `error` is the JSON of its error column."""

    task: int
    expected: Task
    new: Task
    error: str


@dataclass(frozen=True, slots=True)
class Advance:
    """A result moved the task from `expected` to `new` (verifying, or a replica done)."""

    task: int
    expected: Task
    new: Task


@dataclass(frozen=True, slots=True)
class Finish:
    """The task is terminal as `new` (a head that failed for good); its outputs are owned by
    its customer only if `own_outputs`."""

    task: int
    job: int
    new: Task
    own_outputs: bool = False


@dataclass(frozen=True, slots=True)
class AcceptUnchecked:
    """Settle the task as `settled` on this one result, unchecked; pay it as one lone claim."""

    task: int
    job: int
    settled: Task
    digest: str
    claim: credit.Claim


@dataclass(frozen=True, slots=True)
class MarkForCheck:
    """The draw asks for a check: the task's quorum, `expected_quorum` until now, becomes
    trust.QUORUM (the draw is made once, so it is written down)."""

    task: int
    expected_quorum: int


@dataclass(frozen=True, slots=True)
class CountNode:
    """Add to the node's counters: results kept, tasks lost (which also shrinks its quota)."""

    done: int
    lost: int


@dataclass(frozen=True, slots=True)
class HoldBlobs:
    """The node keeps these output blobs (sha, size) in its cache: tasks that read them may
    go there. They become the customer's only with an accepted result."""

    blobs: tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True)
class HoldKept:
    """The node kept `size` bytes of state for a later task, under the task's keep_out name."""

    task: int
    job: int
    size: int


@dataclass(frozen=True, slots=True)
class Verify:
    """Let the verifier look at this group: its results or its copies changed."""

    group: int


Instruction = (
    Reject
    | Ack
    | EndAttempt
    | KeepResult
    | Requeue
    | Advance
    | Finish
    | AcceptUnchecked
    | MarkForCheck
    | CountNode
    | HoldBlobs
    | HoldKept
    | Verify
)

# -- the decision -------------------------------------------------------------------------


def device_failure(rep: Report) -> bool:
    """Whether the report is a failure that is the device's fault (a crash, a lost input):
    the task goes back to the queue. Anything else is a result, the task's own exception too."""
    return (not rep.ok) and (rep.error is None or rep.error.kind in RETRYABLE)


def settle_reason(rep: Report) -> str:
    """The reason a failed result settles its task with (as store/verify.py words it)."""
    if rep.error is None:
        return "failed"
    return f"{rep.error.kind}: {rep.error.type} {rep.error.message}".strip()


def fates_needed(batch: Batch) -> list[int]:
    """The tasks whose failure fate (core/owners.py) the store must load for this batch."""
    return [rep.task for rep, _ in _admitted(batch) if device_failure(rep)]


def draws_needed(batch: Batch) -> list[int]:
    """The tasks that may take the fast path and so need a random draw."""
    return [
        rep.task
        for rep, row in _admitted(batch)
        if not device_failure(rep) and _may_go_unchecked(row)
    ]


def intake(batch: Batch) -> list[Instruction]:
    """The instructions that carry out a node's reports: exactly one Reject or Ack per task
    reported, then what each acknowledged report does, then the node's counters, the blobs it
    holds, and the groups to verify. A task reported twice counts its last report."""
    reports = _unique(batch.reports)
    latest = _latest_leases(batch.leased)
    held = {task for task, _ in batch.leased}
    out: list[Instruction] = []
    acked: list[Report] = []
    for rep in reports:
        row = batch.rows.get(rep.task)
        if row is None or rep.task not in held:
            out.append(Reject(rep.task, NEVER_HELD))
            continue
        refusal = _refusal(batch, rep)
        if refusal is not None:
            out.append(Reject(rep.task, refusal))
            continue
        cpu, wall, claim = _bounded(batch, rep, latest)
        out.append(Ack(rep.task, cpu, wall))
        acked.append(rep)
        if device_failure(rep) or (not rep.ok and rep.task in batch.canary):
            out.extend(_lost(batch, rep, row))
        else:
            out.extend(_result(batch, rep, row, claim))
    return _with_totals(out, acked, batch.rows)


def _unique(reports: Sequence[Report]) -> list[Report]:
    """One report per task, in the order the tasks first appear; a repeat replaces it."""
    return list({rep.task: rep for rep in reports}.values())


def _admitted(batch: Batch) -> Iterator[tuple[Report, Row]]:
    """The reports that will be acknowledged, with their rows."""
    held = {task for task, _ in batch.leased}
    for rep in _unique(batch.reports):
        row = batch.rows.get(rep.task)
        if row is not None and rep.task in held and _refusal(batch, rep) is None:
            yield rep, row


def _refusal(batch: Batch, rep: Report) -> str | None:
    """Why a report of a task the node held is refused, if it is."""
    reason = None
    missing = sorted(sha for sha, _ in rep.blobs if sha not in batch.uploaded)
    if missing:
        reason = (
            f"output {missing[0][:12]}… was not uploaded by this node: a node reports "
            "only blobs it uploaded itself (PUT /v1/blobs/<sha> first)"
        )
    if not 1 <= rep.attempt <= ATTEMPT_MAX:  # the wire refuses it; the intake too
        reason = f"attempt {rep.attempt} is no attempt of task {rep.task}"
    return reason


def _latest_leases(leased: Mapping[tuple[int, int], float]) -> dict[int, float]:
    """When each task's latest attempt (the highest number) of this node was leased."""
    latest: dict[int, float] = {}
    for (task, _), at in sorted(leased.items()):
        latest[task] = at
    return latest


def _bounded(
    batch: Batch, rep: Report, latest: Mapping[int, float]
) -> tuple[float, float, credit.Claim]:
    """The report's CPU-seconds held to what the coordinator saw (the lease's age x the
    node's cores, core/credit.py), its wall time to `max_wall_s`, and its claim for the
    credit, in which a CPU figure that is no number keeps no say (NaN)."""
    at = batch.leased.get((rep.task, rep.attempt), latest.get(rep.task))
    claim = credit.Claim(batch.node, rep.cpu_s, 0.0 if at is None else batch.now - at, batch.cores)
    cpu = credit.capped(claim)
    wall = credit.finite(rep.wall_s, batch.max_wall_s)
    said = cpu if credit.well_formed(claim.cpu_s) else math.nan
    return cpu, wall, replace(claim, cpu_s=said)


def _lost(batch: Batch, rep: Report, row: Row) -> list[Instruction]:
    """A device failure: the task is queued again (one more attempt when the failure does not
    count, core/owners.py: failure_verdict), given up, or failed; a lost backup copy is
    cancelled and its group verified again. A failure for a task that moved on is superseded."""
    node, task = batch.node, row.task
    kind = rep.error.kind if rep.error is not None else "crash"
    reason = f"{kind} on {node}: {rep.error.message if rep.error else ''}"
    fate = owners.REFUND if rep.task in batch.canary else batch.fates.get(rep.task, owners.COUNT)
    try:
        if fate == owners.REFUND and task.state is TaskState.LEASED:
            task = replace(task, max_attempts=task.max_attempts + 1)
            new = apply(task, Errored(node, reason[:500], retryable=True))
        elif fate == owners.GIVE_UP:
            why = f"{reason[:400]}; {owners.gave_up()}"
            new = apply(task, Errored(node, why, retryable=False))
        else:
            new = apply(task, Errored(node, reason[:500], retryable=True))
    except IllegalTransition:
        return [EndAttempt(rep.task, SUPERSEDED)]
    out: list[Instruction] = [EndAttempt(rep.task, LOST)]
    if new.state in TERMINAL and row.replica_of is None:
        out.append(Finish(rep.task, row.job, new))
    elif new != task:
        if row.backup and new.state is TaskState.PENDING:
            new = apply(new, Cancelled(f"backup copy lost: {reason}"[:500]))
            out.append(Verify(row.group))  # the verdict may need another check now
        error = json.dumps({"kind": "lost", "message": new.error})
        out.append(Requeue(rep.task, row.task, new, error))
    return out


def _may_go_unchecked(row: Row) -> bool:
    """Whether a first result for this row could settle it alone: a head with no replicas
    whose quorum is undecided (the draw decides) or one."""
    return (
        row.replica_of is None
        and row.replicas == 0
        and row.quorum <= 1
        and row.task.state in (TaskState.PENDING, TaskState.LEASED)
    )


def _result(batch: Batch, rep: Report, row: Row, claim: credit.Claim) -> list[Instruction]:
    """A result (the task's own failure included): kept on its attempt for a verdict, or
    accepted unchecked, or superseded when its task moved on without it."""
    task = row.task
    event = Completed(batch.node) if row.replica_of is not None else Reported(batch.node)
    reopen = LOST  # only a result for an open attempt (or one written off as lost) is kept ...
    try:
        new = apply(task, event)
    except IllegalTransition:
        if task.state not in TERMINAL or row.replica_of is not None:
            return [EndAttempt(rep.task, SUPERSEDED)]
        new = task  # a late result for a settled task is still a vote on the verdict
        if task.state is not TaskState.CANCELLED:
            # ... or, once a verdict settled the task (a backup copy won), one that the
            # verdict cancelled: it is compared with the verdict like any late result.
            reopen = "cancelled"
    out: list[Instruction] = []
    outcome = "reported"
    if new.state is TaskState.VERIFYING and row.replicas == 0 and row.quorum <= 1:
        # The fast path: a first result that its node's record lets go unchecked. A missing
        # draw is taken as 0, which asks for a check: the safe side.
        draw = batch.draws.get(rep.task, 0.0)
        quorum = row.quorum or trust.quorum_for(batch.record, draw)
        if quorum > 1:
            out.append(MarkForCheck(rep.task, row.quorum))
        else:
            settled = apply(new, Settled(rep.ok, None if rep.ok else settle_reason(rep)))
            out.append(AcceptUnchecked(rep.task, row.job, settled, rep.digest, claim))
            outcome = "accepted"
    if outcome == "reported":
        if new != task:
            out.append(Advance(rep.task, task, new))
        out.append(Verify(row.group))
    cpu = claim.cpu_s if credit.well_formed(claim.cpu_s) else None
    keep = outcome == "reported"
    out.append(KeepResult(rep.task, rep.attempt, outcome, rep.digest, keep, cpu, reopen))
    return out


def _with_totals(
    out: list[Instruction], acked: Sequence[Report], rows: Mapping[int, Row]
) -> list[Instruction]:
    """The per-report instructions (each group verified once, where it first came up), then
    the node's counters and the blobs and kept state it now holds, then the verifications."""
    verify = [i.group for i in out if isinstance(i, Verify)]
    body: list[Instruction] = [i for i in out if not isinstance(i, Verify)]
    done = sum(isinstance(i, KeepResult) for i in body)
    lost = sum(isinstance(i, EndAttempt) and i.outcome == LOST for i in body)
    if done or lost:
        body.append(CountNode(done, lost))
    blobs = tuple(b for rep in acked for b in rep.blobs)
    if blobs:
        body.append(HoldBlobs(blobs))
    body.extend(
        HoldKept(rep.task, rows[rep.task].job, rep.kept)
        for rep in acked
        if rep.kept is not None and rep.ok
    )
    body.extend(Verify(g) for g in dict.fromkeys(verify))
    return body
