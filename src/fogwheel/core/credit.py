"""Credit for a task: what its quorum proves, never what one device says.

A node reports the CPU-seconds its run took; it could report anything. BOINC's answer
(Anderson, "BOINC: A Platform for Volunteer Computing", 2019, §7) is that the credit *granted*
for a task comes from the quorum: the least of the agreeing replicas' claims, so one liar can
lower it but never raise it. fogwheel bounds every claim further by what the coordinator saw
and the customer agreed to:

- **wall time x cores**: a run cannot use more CPU than the node's cores for as long as the
  coordinator saw it leased (report time - lease time, on the coordinator's clock);
- **the job's CPU limit** (`Limits.cpu_s`): the customer's ceiling per run;
- **MAX_CPU_S**: a week on 1,024 cores, the most the wire accepts (protocol.py);
- for a result **nobody checked** (one replica: a trusted node's fast path, or a job with
  `replicas=1`): the *typical* credit of checked runs of the same function (CreditNew's
  per-application average, BOINC 2010), when there are any, with `UNCHECKED_SLACK` (10 %) for
  the noise of CPU time: a lone claim further above what checked runs of the same code were
  granted is not believed.

Every agreeing replica is then paid that one granted figure, not its own claim, and the
customer is charged for exactly those runs. Pure: nothing here reads a clock or a database.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

MAX_CPU_S = 7 * 24 * 3600 * 1024  # a week on 1,024 cores: the wire's bound (protocol.py)
UNCHECKED_SLACK = 1.1  # a lone, unchecked claim is granted at most this times the typical


@dataclass(frozen=True, slots=True)
class Claim:
    """One replica's word: `cpu_s` as it says; `wall_s` and `cores` as the coordinator knows
    them (the lease's age when the report came, the cores the node joined with)."""

    node: str
    cpu_s: float
    wall_s: float
    cores: int


def finite(x: float, high: float = MAX_CPU_S) -> float:
    """`x` as a number in [0, high]: NaN and negatives are 0, infinities `high`."""
    if not isinstance(x, int | float) or math.isnan(x) or x <= 0:
        return 0.0
    return float(min(x, high))


def well_formed(x: float) -> bool:
    """Whether `x` is a number a node could honestly claim: finite and not negative."""
    return isinstance(x, int | float) and math.isfinite(x) and x >= 0


def claim_cap(claim: Claim, cpu_limit: float | None = None) -> float:
    """The most a run can have used: wall time x cores, the job's CPU limit, MAX_CPU_S."""
    cap = finite(claim.wall_s) * max(1, min(int(claim.cores), 1024))
    if cpu_limit is not None:
        cap = min(cap, finite(cpu_limit))
    return min(cap, MAX_CPU_S)


def capped(claim: Claim, cpu_limit: float | None = None) -> float:
    """The claim, bounded by `claim_cap`."""
    return min(finite(claim.cpu_s), claim_cap(claim, cpu_limit))


def granted_cpu(
    claims: Sequence[Claim], *, cpu_limit: float | None = None, typical: float | None = None
) -> float:
    """The CPU-seconds every agreeing replica of a task is paid for.

    The least of the capped claims (BOINC's min-of-claims): adding a claim never raises it,
    so one liar cannot. A claim that is no number (NaN, infinite, negative) is malformed and
    has no say in the figure, or a liar could zero every replica's pay by sending NaN; its
    run's cap still bounds the figure, as every run's does (all are paid the same). A
    single claim (nobody checked it) is also held to `typical`, the typical granted credit of
    checked runs of the same function, when that is known."""
    said = [c for c in claims if well_formed(c.cpu_s)]
    if not said:
        return 0.0
    granted = min(capped(c, cpu_limit) for c in said)
    granted = min(granted, *(claim_cap(c, cpu_limit) for c in claims))  # every run's bound
    if len(claims) == 1 and typical is not None:
        granted = min(granted, finite(typical) * UNCHECKED_SLACK)
    return granted
