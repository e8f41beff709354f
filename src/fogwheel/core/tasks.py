"""The task lifecycle as a transition table: pending → leased → done | failed | cancelled.

With verification, a result first moves its task to `verifying`; the task is `done` (or
`failed`) only when a verdict settles it (core/trust.py), which may take results from other
nodes' replicas of the same task.

Leases follow BOINC's deadline model: a node holds a task until `lease_expires`; a node that
vanishes simply stops renewing, and the expired task goes back to the queue. Every function
here is pure: it takes the task, the event and `now`, and returns the next task.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from fogwheel.core.frozen import fast_init
from fogwheel.errors import IllegalTransition


class TaskState(StrEnum):
    PENDING = "pending"
    LEASED = "leased"
    VERIFYING = "verifying"  # a result is in; waiting for a verdict
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL = frozenset({TaskState.DONE, TaskState.FAILED, TaskState.CANCELLED})


@fast_init
@dataclass(frozen=True, slots=True)
class Task:
    """What the lifecycle needs to know of a task; the store keeps the rest.

    Each transition below builds the next Task whole, field by field in this order (1 µs
    where `dataclasses.replace` took 4, and the simulator moves tasks a few million times a
    run): a field added here must be carried in each of them."""

    state: TaskState = TaskState.PENDING
    attempts: int = 0  # leases handed out that counted (a voluntary hand-back does not count)
    max_attempts: int = 3
    node: str | None = None  # the holder while leased
    lease_expires: float | None = None
    error: str | None = None


# -- events -------------------------------------------------------------------------------


@fast_init
@dataclass(frozen=True, slots=True)
class Leased:
    node: str
    now: float
    lease_seconds: float


@dataclass(frozen=True, slots=True)
class Renewed:
    node: str
    now: float
    lease_seconds: float


@dataclass(frozen=True, slots=True)
class Completed:
    """A node reports a result. `node` must have held an attempt (the shell checks that)."""

    node: str


@dataclass(frozen=True, slots=True)
class Reported:
    """A node reports a result (or the task's own failure) that still needs a verdict."""

    node: str


@dataclass(frozen=True, slots=True)
class Settled:
    """A verdict: the task is done (`ok`) or failed with `reason`; replicas may settle it."""

    ok: bool
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Errored:
    """The attempt failed. `retryable` is False for the task's own exception or exit status."""

    node: str
    reason: str
    retryable: bool


@fast_init
@dataclass(frozen=True, slots=True)
class Expired:
    now: float


@dataclass(frozen=True, slots=True)
class Released:
    """The holder hands the task back unrun (it is shutting down): the attempt does not count."""

    node: str


@dataclass(frozen=True, slots=True)
class Cancelled:
    reason: str = "cancelled by the customer"


Event = Leased | Renewed | Completed | Reported | Settled | Errored | Expired | Released | Cancelled


def lease_expired(task: Task, now: float) -> bool:
    return (
        task.state is TaskState.LEASED
        and task.lease_expires is not None
        and task.lease_expires <= now
    )


def attempts_left(task: Task) -> int:
    return max(0, task.max_attempts - task.attempts)


# -- transitions (each builds the next Task whole: see Task) ------------------------------


def _lease(task: Task, ev: Leased) -> Task:
    return Task(
        TaskState.LEASED,
        task.attempts + 1,
        task.max_attempts,
        ev.node,
        ev.now + ev.lease_seconds,
        task.error,
    )


def _renew(task: Task, ev: Renewed) -> Task:
    _require_holder(task, ev.node, "renew")
    return Task(
        task.state,
        task.attempts,
        task.max_attempts,
        task.node,
        ev.now + ev.lease_seconds,
        task.error,
    )


def _complete(task: Task, ev: Completed) -> Task:
    return Task(TaskState.DONE, task.attempts, task.max_attempts)


def _report(task: Task, ev: Reported) -> Task:
    return Task(TaskState.VERIFYING, task.attempts, task.max_attempts, None, None, task.error)


def _settle(task: Task, ev: Settled) -> Task:
    state = TaskState.DONE if ev.ok else TaskState.FAILED
    return Task(state, task.attempts, task.max_attempts, None, None, ev.reason)


def _error(task: Task, ev: Errored) -> Task:
    if task.state is TaskState.LEASED:
        _require_holder(task, ev.node, "report a failure of")
    if ev.retryable and task.attempts < task.max_attempts:
        return Task(TaskState.PENDING, task.attempts, task.max_attempts, None, None, ev.reason)
    reason = f"{ev.reason}; gave up after {task.attempts} attempts" if ev.retryable else ev.reason
    return Task(TaskState.FAILED, task.attempts, task.max_attempts, None, None, reason)


def _late_error(task: Task, ev: Errored) -> Task:
    """A failure from an earlier holder of a task that is queued again changes nothing."""
    return task


def _expire(task: Task, ev: Expired) -> Task:
    if not lease_expired(task, ev.now):
        raise IllegalTransition(
            f"the lease runs until {task.lease_expires}, not expired at {ev.now}"
        )
    reason = f"lease lost on {task.node}"
    if task.attempts < task.max_attempts:
        return Task(TaskState.PENDING, task.attempts, task.max_attempts, None, None, reason)
    return Task(
        TaskState.FAILED,
        task.attempts,
        task.max_attempts,
        None,
        None,
        f"{reason}; gave up after {task.attempts} attempts",
    )


def _release(task: Task, ev: Released) -> Task:
    _require_holder(task, ev.node, "release")
    return Task(TaskState.PENDING, task.attempts - 1, task.max_attempts, None, None, task.error)


def _cancel(task: Task, ev: Cancelled) -> Task:
    return Task(TaskState.CANCELLED, task.attempts, task.max_attempts, None, None, ev.reason)


def _require_holder(task: Task, node: str, verb: str) -> None:
    if task.node != node:
        raise IllegalTransition(f"{node} cannot {verb} a task held by {task.node}")


P, L, V = TaskState.PENDING, TaskState.LEASED, TaskState.VERIFYING
TRANSITIONS: dict[tuple[TaskState, type[Any]], Callable[[Task, Any], Task]] = {
    (P, Leased): _lease,
    (P, Completed): _complete,  # a late result from an earlier holder still counts
    (P, Reported): _report,
    (P, Settled): _settle,  # a replica's agreement settles a task waiting to run again
    (P, Errored): _late_error,
    (P, Cancelled): _cancel,
    (L, Renewed): _renew,
    (L, Completed): _complete,
    (L, Reported): _report,
    (L, Settled): _settle,
    (L, Errored): _error,
    (L, Expired): _expire,
    (L, Released): _release,
    (L, Cancelled): _cancel,
    (V, Settled): _settle,
    (V, Cancelled): _cancel,
}


def apply(task: Task, event: Event) -> Task:
    """The task after `event`; raises IllegalTransition when the state does not allow it."""
    step = TRANSITIONS.get((task.state, type(event)))
    if step is None:
        raise IllegalTransition(f"a {task.state} task cannot take {type(event).__name__}")
    return step(task, event)
