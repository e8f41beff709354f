"""What a job may cost before it runs, and the sentences that refuse one, as pure functions.

A customer pays every verified run of a task at the price of its granted CPU-seconds
(core/ledger.py); a run's granted figure is held to the job's CPU limit, or, without one, to its
wall-time limit times the node's cores (core/credit.py). So before a job runs, what its limits
allow is known:

    estimate = tasks x runs a task x (limits.cpu_s, else limits.wall_s) x price a CPU-second

with runs a task = N for `replicas=N`, and 1 for adaptive replication (the least it runs:
checks of new or doubtful nodes' results add runs — about 6 % on the measured benchmark, see
docs/benchmarks.md — and they are what `max_cost` stops at while the job runs). Without a CPU
limit the figure is one core busy for the whole wall time: a multi-core run can be granted more,
and the running stop covers that too.

Amounts are integers in micro-credits; nothing here reads a clock or a database.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fogwheel.core.ledger import MICRO, Price, format_credits


@dataclass(frozen=True, slots=True)
class Estimate:
    """What a job's limits let it cost, and how that figure was made."""

    micro: int  # micro-credits
    tasks: int
    runs_per_task: int
    cpu_s_per_run: float
    bound: str  # "cpu" (limits.cpu_s) or "wall" (limits.wall_s, one core)

    def how(self, price: Price) -> str:
        """`10 tasks x 1 run x 600 CPU-s (the wall-time limit, one core) x 0.001 credits`."""
        limit = "the CPU limit" if self.bound == "cpu" else "the wall-time limit, one core"
        runs = f"{self.runs_per_task} run{'s' * (self.runs_per_task != 1)}"
        tasks = f"{self.tasks} task{'s' * (self.tasks != 1)}"
        return (
            f"{tasks} x {runs} x {self.cpu_s_per_run:g} CPU-s ({limit}) x "
            f"{price.per_cpu_second / MICRO:g} credits a CPU-second"
        )


def estimate(
    tasks: int,
    replicas: int | str,
    *,
    cpu_s: float | None,
    wall_s: float,
    price: Price,
) -> Estimate:
    """The most a job's limits let its runs cost (adaptive replication counted as one run)."""
    if tasks < 0:
        raise ValueError(f"a job has 0 or more tasks, not {tasks}")
    runs = replicas if isinstance(replicas, int) else 1
    bound, per_run = ("cpu", cpu_s) if cpu_s else ("wall", wall_s)
    if not math.isfinite(per_run) or per_run < 0:
        raise ValueError(f"a limit is a finite number of seconds >= 0, not {per_run!r}")
    micro = tasks * runs * price.for_cpu(per_run)
    return Estimate(micro, tasks, runs, per_run, bound)


def to_micro(credits: float) -> int:
    """Credits (as a customer writes them, e.g. `--max-cost 2.5`) in micro-credits, rounded
    down: a cap is never raised by rounding."""
    if not math.isfinite(credits) or credits < 0:
        raise ValueError(f"credits are a finite number >= 0, not {credits!r}")
    return math.floor(credits * MICRO)


def over_max_cost(est: Estimate, max_cost: int, price: Price) -> str | None:
    """Why a job whose limits let it cost more than `max_cost` is refused; None when it fits."""
    if est.micro <= max_cost:
        return None
    return (
        f"this job may cost up to {format_credits(est.micro)} ({est.how(price)}), more than "
        f"its max_cost of {format_credits(max_cost)}: raise --max-cost, or lower the limit "
        "a run is paid up to (the wall-time limit --wall; a CPU limit, cpu_s= in the SDK), "
        "or submit fewer tasks"
    )


def over_credit_limit(balance: int, limit: int) -> str | None:
    """Why a customer whose balance is past its credit limit may start no job; None if not.

    `balance` is the customer's account (negative: what it owes); `limit` how far below zero
    it may go."""
    if balance > -limit:
        return None
    return (
        f"your balance is {format_credits(balance)}, past your credit limit of "
        f"{format_credits(limit)}: no new job can start until the operator raises the limit "
        "(`fogwheel keys credit-limit`) or your account is settled; `fogwheel usage` shows "
        "what was charged"
    )


def max_cost_reached(charged: int, max_cost: int) -> str | None:
    """The reason a running job is stopped once its charges reach its cap; None below it."""
    if charged < max_cost:
        return None
    return (
        f"max cost reached: charged {format_credits(charged)} of its max_cost "
        f"{format_credits(max_cost)}"
    )
